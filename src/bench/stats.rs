//! What a bench run counts: live counters (atomics, read by the progress
//! line every second), latency histograms (HDR), message stamps and the
//! per-publisher sequence trackers that find lost, duplicated and
//! reordered messages.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Why a client operation failed; each kind has its own counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    ConnectRefused,
    ConnectTimeout,
    /// Source address or port exhaustion, EMFILE and other local limits.
    LocalLimit,
    Connect,
    Tls,
    /// CONNACK or SUBACK refused us.
    Refused,
    /// No CONNACK / SUBACK / PINGRESP in time.
    NoAnswer,
    /// The server sent something that is not valid MQTT here.
    Protocol,
    /// The server closed the connection or reset it.
    Closed,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::ConnectRefused,
        ErrorKind::ConnectTimeout,
        ErrorKind::LocalLimit,
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Refused,
        ErrorKind::NoAnswer,
        ErrorKind::Protocol,
        ErrorKind::Closed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ConnectRefused => "connect_refused",
            ErrorKind::ConnectTimeout => "connect_timeout",
            ErrorKind::LocalLimit => "local_limit",
            ErrorKind::Connect => "connect_error",
            ErrorKind::Tls => "tls",
            ErrorKind::Refused => "refused",
            ErrorKind::NoAnswer => "no_answer",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Closed => "closed",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// Classify a failed TCP connect.
    pub fn from_connect(e: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::ConnectionRefused => ErrorKind::ConnectRefused,
            K::TimedOut => ErrorKind::ConnectTimeout,
            K::AddrInUse | K::AddrNotAvailable | K::OutOfMemory => ErrorKind::LocalLimit,
            // EMFILE / ENFILE have no stable ErrorKind.
            _ if matches!(e.raw_os_error(), Some(23 | 24)) => ErrorKind::LocalLimit,
            _ => ErrorKind::Connect,
        }
    }
}

/// Live counters of a run.
#[derive(Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub connects: AtomicU64,
    pub disconnected: AtomicU64,
    pub subscribed: AtomicU64,
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub received: AtomicU64,
    pub handshakes: AtomicU64,
    /// `conn --reconnect`: attempts after a client's first.
    pub reconnects: AtomicU64,
    errors: [AtomicU64; 9],
    /// CONNACK refusals by code (rare: a lock is fine).
    refused: Mutex<BTreeMap<u8, u64>>,
}

impl Counters {
    pub fn error(&self, kind: ErrorKind) {
        if let Some(c) = self.errors.get(kind.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        ErrorKind::ALL
            .iter()
            .map(|k| {
                let n = self
                    .errors
                    .get(k.index())
                    .map_or(0, |c| c.load(Ordering::Relaxed));
                (k.as_str(), n)
            })
            .collect()
    }

    /// A CONNACK refused a client with `code` (its `Refused` error is
    /// counted apart).
    pub fn refused_with(&self, code: u8) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    /// CONNACK refusals by code, labelled "0x89".
    pub fn refusals(&self) -> BTreeMap<String, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, n)| (super::outage::code_label(*c), *n))
            .collect()
    }

    pub fn total_errors(&self) -> u64 {
        self.errors.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A latency histogram in microseconds (1 µs to 1 h, 3 significant
/// digits), shared by the tasks of a run; tasks record in batches.
pub struct Latency(Mutex<Histogram<u64>>);

impl Latency {
    pub fn new() -> Latency {
        // 1 µs .. 1 h with 3 significant figures is a valid configuration.
        let h = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
        Latency(Mutex::new(h))
    }

    pub fn record_all(&self, samples: &[u64]) {
        let mut h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for &s in samples {
            h.saturating_record(s.max(1));
        }
    }

    pub fn summary(&self) -> LatencySummary {
        let h = self.0.lock().unwrap_or_else(|p| p.into_inner());
        LatencySummary {
            count: h.len(),
            min_us: if h.is_empty() { 0 } else { h.min() },
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of a latency histogram.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Every bench message starts with this stamp: magic, publisher id,
/// sequence number, send time (Unix nanoseconds, so publishers and
/// subscribers in different processes on one machine agree).
pub const STAMP_LEN: usize = 24;
const MAGIC: &[u8; 4] = b"MLB1";

pub fn stamp(out: &mut [u8], publisher: u32, seq: u64, sent_unix_ns: u64) {
    if let Some(s) = out.get_mut(..STAMP_LEN) {
        let fields = MAGIC
            .iter()
            .copied()
            .chain(publisher.to_be_bytes())
            .chain(seq.to_be_bytes())
            .chain(sent_unix_ns.to_be_bytes());
        for (d, b) in s.iter_mut().zip(fields) {
            *d = b;
        }
    }
}

/// (publisher, sequence, send time) of a stamped payload.
pub fn read_stamp(payload: &[u8]) -> Option<(u32, u64, u64)> {
    let s = payload.get(..STAMP_LEN)?;
    if s.get(..4)? != MAGIC {
        return None;
    }
    let u32_at = |i: usize| {
        s.get(i..i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    };
    let u64_at = |i: usize| {
        s.get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes)
    };
    Some((u32_at(4)?, u64_at(8)?, u64_at(16)?))
}

pub fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Messages of one publisher as seen by one subscriber. Sequence numbers
/// start at 0. A sliding window of the last [`WINDOW`] sequence numbers
/// tells a duplicate from a late (reordered) arrival; anything older than
/// the window counts as reordered.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    /// Distinct messages received.
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
    /// Highest sequence number seen + 1 (0 before the first).
    pub next: u64,
    window: [u64; WINDOW_WORDS],
}

const WINDOW_WORDS: usize = 16;
pub const WINDOW: u64 = 64 * WINDOW_WORDS as u64;

impl SeqTracker {
    pub fn observe(&mut self, seq: u64) {
        if seq >= self.next {
            // Slide: clear the bits of sequence numbers entering the window.
            let from = self.next.max(seq.saturating_sub(WINDOW - 1));
            if seq - self.next >= WINDOW {
                self.window = [0; WINDOW_WORDS];
            } else {
                for s in from..seq {
                    self.clear(s);
                }
            }
            self.set(seq);
            self.next = seq + 1;
            self.unique += 1;
        } else if self.next - seq > WINDOW {
            self.reordered += 1;
            self.unique += 1;
        } else if self.is_set(seq) {
            self.duplicates += 1;
        } else {
            self.set(seq);
            self.reordered += 1;
            self.unique += 1;
        }
    }

    fn slot(seq: u64) -> (usize, u64) {
        let bit = seq % WINDOW;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn set(&mut self, seq: u64) {
        let (w, m) = Self::slot(seq);
        if let Some(word) = self.window.get_mut(w) {
            *word |= m;
        }
    }

    fn clear(&mut self, seq: u64) {
        let (w, m) = Self::slot(seq);
        if let Some(word) = self.window.get_mut(w) {
            *word &= !m;
        }
    }

    fn is_set(&self, seq: u64) -> bool {
        let (w, m) = Self::slot(seq);
        self.window.get(w).is_some_and(|word| word & m != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip() {
        let mut p = vec![0u8; 64];
        stamp(&mut p, 7, 42, 123_456_789);
        assert_eq!(read_stamp(&p), Some((7, 42, 123_456_789)));
        assert_eq!(read_stamp(&p[..10]), None);
        assert_eq!(read_stamp(&[0u8; 30]), None);
    }

    #[test]
    fn tracker_counts_duplicates_reorders_and_gaps() {
        let mut t = SeqTracker::default();
        for s in [0, 1, 2, 2, 4, 3, 3, 5] {
            t.observe(s);
        }
        assert_eq!((t.unique, t.duplicates, t.reordered, t.next), (6, 2, 1, 6));
        // A jump far ahead, then a very late one.
        t.observe(5000);
        t.observe(10);
        assert_eq!((t.unique, t.reordered), (8, 2));
        // In-order streams have nothing to report.
        let mut t = SeqTracker::default();
        for s in 0..10_000 {
            t.observe(s);
        }
        assert_eq!((t.unique, t.duplicates, t.reordered), (10_000, 0, 0));
        // Lost messages are the gap between published and unique.
        let mut t = SeqTracker::default();
        for s in (0..100).filter(|s| s % 10 != 0) {
            t.observe(s);
        }
        assert_eq!((t.unique, t.next), (90, 100));
    }

    #[test]
    fn duplicates_after_the_window_slid_are_still_caught_inside_it() {
        let mut t = SeqTracker::default();
        for s in 0..(WINDOW + 10) {
            t.observe(s);
        }
        t.observe(WINDOW + 5);
        assert_eq!(t.duplicates, 1);
        t.observe(WINDOW + 11);
        t.observe(WINDOW + 10);
        assert_eq!((t.duplicates, t.reordered), (1, 1));
    }
}
