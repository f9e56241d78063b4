//! The summary of a bench run: what `--json` prints, and its text form.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::Scenario;
use super::outage::OutageReport;
use super::stats::LatencySummary;

/// Summary of a run (`--json`).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub scenario: Scenario,
    pub target: String,
    pub protocol: &'static str,
    pub tls: bool,
    pub qos: u8,
    pub payload_bytes: usize,
    /// Wall time of the whole run (ramp, measured phase, drain).
    pub elapsed_s: f64,
    /// The measured phase.
    pub measured_s: f64,
    pub connections: Connections,
    pub messages: Messages,
    pub handshakes: Handshakes,
    pub errors: HashMap<&'static str, u64>,
    /// CONNACK refusals by return/reason code ("0x89"); part of
    /// `errors.refused`.
    pub refused_by_code: BTreeMap<String, u64>,
    /// `conn --reconnect` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconnect: Option<Reconnect>,
    pub generator: Generator,
    pub warnings: Vec<String>,
}

/// `conn --reconnect`: how the clients fared when their connections ended.
#[derive(Debug, Serialize)]
pub struct Reconnect {
    /// Unix time (seconds) of the run's start, the origin of the
    /// outages' `start_s` and `end_s`.
    pub started_unix_s: f64,
    /// Attempts after each client's first.
    pub attempts: u64,
    #[serde(flatten)]
    pub outages: OutageReport,
}

#[derive(Debug, Serialize)]
pub struct Connections {
    pub requested: usize,
    /// CONNACKs received (every connect, for `handshake`).
    pub connected: u64,
    /// Still open at the end of the measured phase.
    pub open_at_end: u64,
    /// Connections lost after their CONNACK.
    pub dropped: u64,
    /// TCP + TLS + CONNECT/CONNACK.
    pub connect_latency: LatencySummary,
}

#[derive(Debug, Serialize)]
pub struct Messages {
    pub published: u64,
    /// PUBACK/PUBCOMP received (QoS 1/2).
    pub acked: u64,
    pub received: u64,
    /// Deliveries the subscribers should have had (pubsub: exact; sub:
    /// the highest sequence number seen per publisher).
    pub expected: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub publish_rate: f64,
    pub receive_rate: f64,
    /// Publish to delivery, from the stamp's send time.
    pub latency: LatencySummary,
}

#[derive(Debug, Serialize)]
pub struct Handshakes {
    pub completed: u64,
    pub rate: f64,
}

#[derive(Debug, Serialize)]
pub struct Generator {
    pub threads: usize,
    pub cpu_s: f64,
    /// CPU seconds per second: 1.0 is one core busy.
    pub cores_used: f64,
    /// The generator used most of its threads: the numbers measure it as
    /// much as the target.
    pub saturated: bool,
}

impl Summary {
    /// A run without failures or loss.
    pub fn clean(&self) -> bool {
        self.errors.values().all(|&n| n == 0)
            && self.messages.lost == 0
            && self.connections.dropped == 0
    }

    pub fn text(&self) -> String {
        let mut s = String::new();
        let l = &self.connections.connect_latency;
        let m = &self.messages;
        let ms = |us: u64| us as f64 / 1000.0;
        s.push_str(&format!(
            "{:?} against {} (MQTT {}, {}), {:.1}s measured of {:.1}s\n",
            self.scenario,
            self.target,
            self.protocol,
            if self.tls { "TLS" } else { "TCP" },
            self.measured_s,
            self.elapsed_s
        ));
        let connected = if self.scenario == Scenario::Handshake {
            format!(
                "{} connects by {} loops",
                self.connections.connected, self.connections.requested
            )
        } else {
            format!(
                "{} of {} connected, {} open at the end, {} dropped",
                self.connections.connected,
                self.connections.requested,
                self.connections.open_at_end,
                self.connections.dropped
            )
        };
        s.push_str(&format!(
            "connections: {connected}; connect p50 {:.2} ms p99 {:.2} ms max {:.2} ms\n",
            ms(l.p50_us),
            ms(l.p99_us),
            ms(l.max_us)
        ));
        if self.scenario == Scenario::Handshake {
            s.push_str(&format!(
                "handshakes: {} ({:.0}/s)\n",
                self.handshakes.completed, self.handshakes.rate
            ));
        }
        if m.published + m.received > 0 {
            s.push_str(&format!(
                "messages: {} published ({:.0}/s), {} acked, {} received ({:.0}/s), {} expected, {} lost, {} duplicated, {} reordered\n",
                m.published, m.publish_rate, m.acked, m.received, m.receive_rate, m.expected, m.lost, m.duplicated, m.reordered
            ));
            s.push_str(&format!(
                "latency: p50 {:.2} ms p90 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms\n",
                ms(m.latency.p50_us),
                ms(m.latency.p90_us),
                ms(m.latency.p99_us),
                ms(m.latency.p999_us),
                ms(m.latency.max_us)
            ));
        }
        let errors: Vec<String> = self
            .errors
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        s.push_str(&format!(
            "errors: {}\n",
            if errors.is_empty() {
                "none".to_string()
            } else {
                errors.join(" ")
            }
        ));
        s.push_str(&format!(
            "generator: {:.2} CPU-s, {:.2} cores of {} threads{}\n",
            self.generator.cpu_s,
            self.generator.cores_used,
            self.generator.threads,
            if self.generator.saturated {
                " (saturated: the generator limited this run)"
            } else {
                ""
            }
        ));
        if !self.refused_by_code.is_empty() {
            let codes: Vec<String> = self
                .refused_by_code
                .iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect();
            s.push_str(&format!("CONNACK refusals: {}\n", codes.join(" ")));
        }
        if let Some(r) = &self.reconnect {
            let o = &r.outages;
            s.push_str(&format!(
                "reconnects: {} attempts; {} outage(s){}",
                r.attempts,
                o.outages_total,
                if o.still_open {
                    ", the last still open at the end"
                } else {
                    ""
                }
            ));
            if let Some(l) = &o.longest {
                s.push_str(&format!(
                    "; longest {:.2} s from {:.2} s ({} dropped, {} attempts, down to {} connected)",
                    l.duration_s, l.start_s, l.dropped, l.attempts, l.min_connected
                ));
            }
            s.push('\n');
        }
        for w in &self.warnings {
            s.push_str(&format!("warning: {w}\n"));
        }
        s
    }
}
