//! `conn --reconnect` accounting: the outages of a run whose clients
//! reconnect at once whenever their connection ends.
//!
//! An outage starts when, after all `--count` clients were connected at
//! least once, a held connection ends; it ends when all of them are
//! connected again. Each outage counts what happened during it: the
//! connections lost, the lowest number still connected, the reconnect
//! attempts, CONNACK refusals by code and other failures by kind. That is
//! what a reconnect storm costs the clients (a node dies, its clients come
//! back through the proxy) and how long it lasts. [`Tracker`] is the pure
//! core, fed with times since the run started; [`Watch`] is its shell,
//! shared by the client tasks.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::stats::ErrorKind;

/// Outages reported one by one; later ones only count (and the longest).
pub const MAX_KEPT: usize = 64;

/// One outage: from the first lost connection to all connected again.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Outage {
    /// Seconds from the start of the run.
    pub start_s: f64,
    /// `None` while it lasts (still open when the run ended).
    pub end_s: Option<f64>,
    /// `end_s - start_s`, or up to the end of the run when it never ended.
    pub duration_s: f64,
    /// Held connections that ended during it.
    pub dropped: u64,
    /// Fewest clients connected during it.
    pub min_connected: u64,
    /// Connection attempts started during it.
    pub attempts: u64,
    /// CONNACK refusals during it, by return/reason code ("0x89").
    pub refused: BTreeMap<String, u64>,
    /// Failed attempts by kind (a CONNACK refusal is `refused`).
    pub failures: BTreeMap<&'static str, u64>,
}

/// A CONNACK code as reported: `0x03`, `0x89`.
pub fn code_label(code: u8) -> String {
    format!("{code:#04x}")
}

/// Outages of one run (pure: times are given).
#[derive(Debug)]
pub struct Tracker {
    target: u64,
    connected: u64,
    full_once: bool,
    current: Option<Outage>,
    kept: Vec<Outage>,
    ended: u64,
    longest: Option<Outage>,
    refused: BTreeMap<String, u64>,
}

impl Tracker {
    /// `target`: the clients that count as "all connected".
    pub fn new(target: u64) -> Tracker {
        Tracker {
            target,
            connected: 0,
            full_once: false,
            current: None,
            kept: Vec::new(),
            ended: 0,
            longest: None,
            refused: BTreeMap::new(),
        }
    }

    /// A client got its CONNACK.
    pub fn up(&mut self, at: Duration) {
        self.connected = self.connected.saturating_add(1);
        if self.connected >= self.target {
            self.full_once = true;
            if let Some(mut o) = self.current.take() {
                let end = at.as_secs_f64();
                o.end_s = Some(end);
                o.duration_s = (end - o.start_s).max(0.0);
                self.finish(o);
            }
        }
    }

    /// A held connection ended.
    pub fn down(&mut self, at: Duration) {
        self.connected = self.connected.saturating_sub(1);
        if self.current.is_none() && self.full_once {
            self.current = Some(Outage {
                start_s: at.as_secs_f64(),
                min_connected: self.connected,
                ..Outage::default()
            });
        }
        if let Some(o) = &mut self.current {
            o.dropped += 1;
            o.min_connected = o.min_connected.min(self.connected);
        }
    }

    /// A client starts connecting.
    pub fn attempt(&mut self) {
        if let Some(o) = &mut self.current {
            o.attempts += 1;
        }
    }

    /// An attempt failed; `connack` is the refusing CONNACK's code.
    pub fn failed(&mut self, kind: ErrorKind, connack: Option<u8>) {
        if let Some(code) = connack {
            *self.refused.entry(code_label(code)).or_default() += 1;
        }
        if let Some(o) = &mut self.current {
            match connack {
                Some(code) => *o.refused.entry(code_label(code)).or_default() += 1,
                None => *o.failures.entry(kind.as_str()).or_default() += 1,
            }
        }
    }

    pub fn connected(&self) -> u64 {
        self.connected
    }

    fn finish(&mut self, o: Outage) {
        self.ended += 1;
        if self
            .longest
            .as_ref()
            .is_none_or(|l| o.duration_s > l.duration_s)
        {
            self.longest = Some(o.clone());
        }
        if self.kept.len() < MAX_KEPT {
            self.kept.push(o);
        }
    }

    /// The report at `end` (an outage still open counts up to it).
    pub fn report(&self, end: Duration) -> OutageReport {
        let mut outages = self.kept.clone();
        let mut longest = self.longest.clone();
        let open = self.current.clone().map(|mut o| {
            o.duration_s = (end.as_secs_f64() - o.start_s).max(0.0);
            o
        });
        if let Some(o) = &open {
            if outages.len() < MAX_KEPT {
                outages.push(o.clone());
            }
            if longest.as_ref().is_none_or(|l| o.duration_s > l.duration_s) {
                longest = Some(o.clone());
            }
        }
        OutageReport {
            all_connected_once: self.full_once,
            outages_total: self.ended + u64::from(open.is_some()),
            still_open: open.is_some(),
            refused: self.refused.clone(),
            longest,
            outages,
        }
    }
}

/// What `--reconnect` adds to the summary.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OutageReport {
    /// All `--count` clients were connected at some point.
    pub all_connected_once: bool,
    pub outages_total: u64,
    /// The run ended during an outage.
    pub still_open: bool,
    /// CONNACK refusals over the whole run, by code.
    pub refused: BTreeMap<String, u64>,
    pub longest: Option<Outage>,
    /// The first [`MAX_KEPT`] outages, in order.
    pub outages: Vec<Outage>,
}

/// A [`Tracker`] shared by the clients of a run, timed from its start.
pub struct Watch {
    started: Instant,
    tracker: Mutex<Tracker>,
}

impl Watch {
    pub fn new(target: u64, started: Instant) -> Watch {
        Watch {
            started,
            tracker: Mutex::new(Tracker::new(target)),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tracker, Duration) -> T) -> T {
        let at = self.started.elapsed();
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut t, at)
    }

    pub fn up(&self) {
        self.with(|t, at| t.up(at));
    }

    pub fn down(&self) {
        self.with(|t, at| t.down(at));
    }

    pub fn attempt(&self) {
        self.with(|t, _| t.attempt());
    }

    pub fn failed(&self, kind: ErrorKind, connack: Option<u8>) {
        self.with(|t, _| t.failed(kind, connack));
    }

    pub fn report(&self) -> OutageReport {
        self.with(|t, at| t.report(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn no_outage_before_all_were_connected() {
        let mut t = Tracker::new(3);
        t.up(s(0.1));
        t.up(s(0.2));
        // A client lost during the ramp is no outage.
        t.down(s(0.3));
        t.attempt();
        t.failed(ErrorKind::Closed, None);
        t.up(s(0.4));
        t.up(s(0.5));
        let r = t.report(s(1.0));
        assert!(r.all_connected_once);
        assert_eq!(r.outages_total, 0);
        assert!(r.outages.is_empty());
        assert_eq!(r.longest, None);
    }

    #[test]
    fn an_outage_lasts_until_all_are_back_and_counts_what_happened() {
        let mut t = Tracker::new(3);
        for i in 0..3 {
            t.up(s(f64::from(i) * 0.1));
        }
        // A node dies: two of three lose their connection.
        t.down(s(1.0));
        t.down(s(1.0));
        for _ in 0..5 {
            t.attempt();
        }
        t.failed(ErrorKind::Refused, Some(0x89));
        t.failed(ErrorKind::Refused, Some(0x89));
        t.failed(ErrorKind::Refused, Some(3));
        t.failed(ErrorKind::Closed, None);
        t.up(s(1.5));
        assert_eq!(t.connected(), 2);
        t.up(s(2.25));
        // Before and after: not counted in the outage.
        t.attempt();
        t.failed(ErrorKind::Refused, Some(0x89));
        let r = t.report(s(3.0));
        assert_eq!(r.outages_total, 1);
        assert!(!r.still_open);
        let o = &r.outages[0];
        assert_eq!(o.start_s, 1.0);
        assert_eq!(o.end_s, Some(2.25));
        assert_eq!(o.duration_s, 1.25);
        assert_eq!(o.dropped, 2);
        assert_eq!(o.min_connected, 1);
        assert_eq!(o.attempts, 5);
        assert_eq!(o.refused.get("0x89"), Some(&2));
        assert_eq!(o.refused.get("0x03"), Some(&1));
        assert_eq!(o.failures.get("closed"), Some(&1));
        assert_eq!(o.failures.get("refused"), None);
        // The run's refusals include those outside outages.
        assert_eq!(r.refused.get("0x89"), Some(&3));
        assert_eq!(r.longest.as_ref(), Some(o));
    }

    #[test]
    fn an_open_outage_counts_to_the_end_and_the_longest_is_kept() {
        let mut t = Tracker::new(2);
        t.up(s(0.0));
        t.up(s(0.0));
        t.down(s(1.0));
        t.up(s(1.1));
        t.down(s(2.0));
        t.up(s(2.5));
        t.down(s(4.0));
        t.down(s(4.0));
        let r = t.report(s(10.0));
        assert_eq!(r.outages_total, 3);
        assert!(r.still_open);
        assert_eq!(r.outages.len(), 3);
        let open = r.outages.last().expect("three");
        assert_eq!(open.end_s, None);
        assert_eq!(open.duration_s, 6.0);
        assert_eq!(open.min_connected, 0);
        assert_eq!(r.longest.as_ref(), Some(open));
    }

    #[test]
    fn only_the_first_outages_are_kept_one_by_one() {
        let mut t = Tracker::new(1);
        t.up(s(0.0));
        for i in 0..(MAX_KEPT + 10) {
            let at = 1.0 + i as f64;
            t.down(s(at));
            t.up(s(at + if i == 70 { 0.5 } else { 0.25 }));
        }
        let r = t.report(s(100.0));
        assert_eq!(r.outages_total, (MAX_KEPT + 10) as u64);
        assert_eq!(r.outages.len(), MAX_KEPT);
        assert_eq!(r.longest.map(|o| o.duration_s), Some(0.5));
    }

    #[test]
    fn codes_are_labelled_in_hex() {
        assert_eq!(code_label(3), "0x03");
        assert_eq!(code_label(0x89), "0x89");
    }
}
