//! Per-key admission rates (token buckets): new connections per source
//! address, CONNECTs per client id. Bounded memory: at most `max_keys`
//! buckets; when full, buckets that have refilled completely (their key has
//! been quiet) are dropped, and if none has, the key is let through rather
//! than tracked (a limit must not become a way to exhaust memory).
//!
//! Written here rather than taken from a crate: the governor crate's keyed
//! limiter is lock-free but unbounded unless pruned by a timer, and the
//! proxy needs a hard cap and a cheap check on the accept path only.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most `burst` admissions at once per key, refilled at `per_second`.
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    per_second: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    /// `rate` admissions per `period`, bursts of `burst`.
    pub fn new(rate: u32, period: Duration, burst: u32, max_keys: usize) -> KeyedLimiter<K> {
        let secs = period.as_secs_f64().max(1e-3);
        KeyedLimiter {
            per_second: f64::from(rate) / secs,
            burst: f64::from(burst.max(1)),
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` may be admitted now (and count it if so).
    pub fn admit(&self, key: &K) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.per_second)
                .min(self.burst)
        };
        if let Some(b) = buckets.get_mut(key) {
            let tokens = refill(b);
            *b = Bucket { tokens, at: now };
            if tokens >= 1.0 {
                b.tokens -= 1.0;
                return true;
            }
            return false;
        }
        if buckets.len() >= self.max_keys {
            buckets.retain(|_, b| refill(b) < self.burst);
            if buckets.len() >= self.max_keys {
                return true;
            }
        }
        buckets.insert(
            key.clone(),
            Bucket {
                tokens: self.burst - 1.0,
                at: now,
            },
        );
        true
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_the_rate() {
        let l = KeyedLimiter::new(2, Duration::from_secs(1), 4, 100);
        let admitted = (0..6).filter(|_| l.admit(&"a")).count();
        assert_eq!(admitted, 4, "the burst");
        assert!(l.admit(&"b"), "keys are independent");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(l.admit(&"a"), "one token back after 0.5 s at 2/s");
        assert!(!l.admit(&"a"));
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_bounded_and_quiet_keys_are_dropped() {
        let l = KeyedLimiter::new(1, Duration::from_secs(1), 2, 3);
        for k in 0..3 {
            assert!(l.admit(&k));
        }
        assert_eq!(l.len(), 3);
        // Full and nobody quiet yet: a new key is let through untracked.
        assert!(l.admit(&99));
        assert_eq!(l.len(), 3);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(l.admit(&100));
        assert_eq!(l.len(), 1, "refilled buckets were dropped");
    }
}
