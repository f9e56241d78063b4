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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// At most `burst` admissions at once per key, refilled at `per_second`.
/// Long-lived: [`KeyedLimiter::set_rate`] applies a new limit to the
/// buckets it already holds (a reload does not hand out fresh budgets).
#[derive(Debug)]
pub struct KeyedLimiter<K> {
    /// Rate 0: every key admitted, without touching the lock.
    enabled: AtomicBool,
    inner: Mutex<Inner<K>>,
}

#[derive(Debug)]
struct Inner<K> {
    per_second: f64,
    burst: f64,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl<K: Eq + Hash + Clone> KeyedLimiter<K> {
    /// `rate` admissions per `period` per key, bursts of `burst`; rate 0
    /// admits everything.
    pub fn new(rate: u32, period: Duration, burst: u32, max_keys: usize) -> KeyedLimiter<K> {
        let l = KeyedLimiter {
            enabled: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                per_second: 0.0,
                burst: 1.0,
                max_keys: max_keys.max(1),
                buckets: HashMap::new(),
            }),
        };
        l.set_rate(rate, period, burst);
        l
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Change the limit in place: keys keep what they have spent (tokens
    /// above a lower burst are cut to it). Rate 0 turns the limit off and
    /// forgets every key.
    pub fn set_rate(&self, rate: u32, period: Duration, burst: u32) {
        let secs = period.as_secs_f64().max(1e-3);
        let mut inner = self.lock();
        inner.per_second = f64::from(rate) / secs;
        inner.burst = f64::from(burst.max(1));
        if rate == 0 {
            inner.buckets.clear();
        } else {
            let cap = inner.burst;
            for b in inner.buckets.values_mut() {
                b.tokens = b.tokens.min(cap);
            }
        }
        self.enabled.store(rate > 0, Ordering::Release);
    }

    /// Whether the limit is on (rate > 0).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Take a token for `key`: `false` when it has none left.
    pub fn admit(&self, key: &K) -> bool {
        if !self.enabled() {
            return true;
        }
        let now = Instant::now();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let (per_second, burst) = (inner.per_second, inner.burst);
        let refill = |b: &Bucket| {
            (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * per_second).min(burst)
        };
        if let Some(b) = inner.buckets.get_mut(key) {
            let tokens = refill(b);
            *b = Bucket { tokens, at: now };
            if tokens >= 1.0 {
                b.tokens -= 1.0;
                return true;
            }
            return false;
        }
        if inner.buckets.len() >= inner.max_keys {
            inner.buckets.retain(|_, b| refill(b) < burst);
            if inner.buckets.len() >= inner.max_keys {
                return true;
            }
        }
        inner.buckets.insert(
            key.clone(),
            Bucket {
                tokens: burst - 1.0,
                at: now,
            },
        );
        true
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.lock().buckets.len()
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

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_to_what_was_spent() {
        let l = KeyedLimiter::new(1, Duration::from_secs(60), 2, 100);
        assert!(l.admit(&"a") && l.admit(&"a"));
        assert!(!l.admit(&"a"));
        // Raised: the spent budget stays spent until it refills.
        l.set_rate(2, Duration::from_secs(60), 2);
        assert!(!l.admit(&"a"), "still refused right after the change");
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(l.admit(&"a"), "refilled at the new rate");
        // Lowered: a fresh key gets the new, smaller burst.
        l.set_rate(1, Duration::from_secs(60), 1);
        assert!(l.admit(&"b"));
        assert!(!l.admit(&"b"));
        // Off: everyone passes and nothing is tracked.
        l.set_rate(0, Duration::from_secs(60), 0);
        assert!(l.admit(&"b") && l.admit(&"b"));
        assert!(l.is_empty());
        assert!(!l.enabled());
    }
}
