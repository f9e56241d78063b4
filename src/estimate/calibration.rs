//! The calibration: costs measured on one machine by `mqttlb bench
//! calibrate`, read from a TOML file or the one built in, and checked.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EstimateError;
use crate::config::{ConfigError, ConfigErrors, parse_toml};

/// The calibration shipped with the binary (used without `--calibration`).
pub const DEFAULT_CALIBRATION: &str = include_str!("../../config/calibration.toml");
/// How the built-in calibration is named in reports and errors.
pub const DEFAULT_CALIBRATION_SOURCE: &str = "config/calibration.toml (built in)";

/// Costs measured on one machine by `mqttlb bench calibrate`. Every CPU
/// figure is CPU time of the measured process (user + system) divided by
/// the operations it did; memory figures are resident set size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    pub measured: Measured,
    pub proxy: ProxyCosts,
    pub broker: BrokerCosts,
    /// How well the relay model explains the runs it was fitted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fit: Option<FitRecord>,
}

/// Where and how a calibration was measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    /// The exact command that produced the file.
    pub command: String,
    /// RFC 3339 UTC time of the measurement.
    pub date: String,
    pub mqttlb_version: String,
    /// e.g. "Intel(R) Xeon(R) ..." from /proc/cpuinfo, or "unknown".
    pub cpu_model: String,
    /// Logical CPUs of the machine.
    pub cpus: u32,
    /// Payload size (bytes) of the relay measurements.
    pub payload_bytes: u32,
}

/// What wake-ups cost a process, and how packets share them (see
/// `estimate::relay`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wakeups {
    /// CPU a second of the process's own timers whatever the traffic
    /// (health checks, watchers, the runtime's housekeeping), µs per s.
    pub background_cpu_us_per_s: f64,
    /// CPU a second of each connection held, beyond its packets (timers,
    /// the memory it keeps warm); not fitted for the broker (0).
    #[serde(default)]
    pub connection_cpu_us_per_s: f64,
    /// CPU per thread woken from waiting for sockets (context switch,
    /// `epoll_wait`, the runtime's bookkeeping).
    pub thread_wakeup_cpu_us: f64,
    /// CPU per connection wake-up: a socket read with what it had (for the
    /// proxy's TLS side: a record decrypted or encrypted, and the write on
    /// the other side).
    pub wakeup_cpu_us: f64,
    /// A stream of `r` packets a second wakes its reader `r / (1 + r·τ)`
    /// times a second; τ in µs.
    pub coalesce_us: f64,
    /// `e` connection wake-ups a second wake an idle thread `e / (1 +
    /// e·τₜ)` times (a thread busy a share ρ: times 1 − ρ); τₜ in µs.
    pub thread_coalesce_us: f64,
}

/// Proxy (TLS offload) costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyCosts {
    /// Proxy CPU per TLS client connection: accept, TLS 1.3 handshake
    /// (ECDSA P-256), CONNECT → backend connect → CONNACK, DISCONNECT, close.
    pub tls_connect_cpu_us: f64,
    /// The same without TLS.
    pub plain_connect_cpu_us: f64,
    /// Proxy CPU per MQTT packet relayed, beyond its wake-ups (parse,
    /// copy, the packet's share of a TLS record).
    pub packet_cpu_us: f64,
    /// Proxy CPU per payload byte relayed.
    pub byte_cpu_ns: f64,
    /// Resident memory of an idle proxy.
    pub rss_base_mib: f64,
    /// Resident memory per idle TLS MQTT connection (client TLS + backend TCP).
    pub rss_per_tls_connection_kib: f64,
    /// Resident memory per idle plain MQTT connection.
    pub rss_per_plain_connection_kib: f64,
    pub wakeups: Wakeups,
}

/// `mqttlb broker` costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerCosts {
    /// Broker CPU per PUBLISH received, beyond its wake-up (parse, route).
    pub cpu_us_per_publish_in: f64,
    /// Broker CPU per delivery to a subscriber (encode, write).
    pub cpu_us_per_delivery: f64,
    /// Broker CPU per QoS acknowledgement packet (sent or received).
    pub cpu_us_per_ack: f64,
    /// Broker CPU per client connection (CONNECT → CONNACK → close).
    pub connect_cpu_us: f64,
    /// Resident memory of an idle broker.
    pub rss_base_mib: f64,
    /// Resident memory per idle connected client with one subscription.
    pub rss_per_connection_kib: f64,
    pub wakeups: Wakeups,
}

/// The relay runs the model was fitted to, and its error on each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitRecord {
    /// Root mean square of the relative errors of the proxy's CPU, with
    /// the measured thread wake-ups (the cost fit) and with the model's
    /// own (what estimates carry).
    pub proxy_rms_error: f64,
    pub proxy_estimate_rms_error: f64,
    pub proxy_estimate_max_error: f64,
    /// The largest relative error of the proxy's CPU (signed).
    pub proxy_max_error: f64,
    pub broker_rms_error: f64,
    pub broker_max_error: f64,
    #[serde(default)]
    pub points: Vec<FitPoint>,
}

/// One calibration run of the relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitPoint {
    pub name: String,
    pub connections: u64,
    pub publishers: u64,
    pub subscribers: u64,
    pub rate_per_publisher: f64,
    pub topics: u64,
    pub qos: u8,
    pub payload_bytes: u64,
    /// Messages published per second, as measured.
    pub publish_rate: f64,
    /// Proxy CPU (cores busy): measured, and the fitted model's.
    pub proxy_cores: f64,
    pub proxy_fitted_cores: f64,
    /// Held idle beside the publishers and subscribers.
    #[serde(default)]
    pub idle: u64,
    /// Thread wake-ups a second: measured (voluntary context switches),
    /// and the model's.
    pub proxy_thread_wakeups: f64,
    pub proxy_fitted_thread_wakeups: f64,
    /// Proxy CPU the model gives with its own thread wake-ups (not the
    /// measured ones): what `mqttlb estimate` would say for this run.
    pub proxy_estimated_cores: f64,
    pub broker_cores: f64,
    pub broker_fitted_cores: f64,
    pub broker_thread_wakeups: f64,
    pub broker_fitted_thread_wakeups: f64,
}

impl Calibration {
    /// Parse and check a calibration file's text; errors name `source`,
    /// the key and, for syntax and type errors, the line.
    pub fn parse(source: &str, text: &str) -> Result<Calibration, EstimateError> {
        let cal: Calibration = parse_toml(source, text).map_err(EstimateError::Calibration)?;
        let errors: Vec<ConfigError> = cal
            .coefficients()
            .into_iter()
            .filter(|(_, v)| !(v.is_finite() && *v >= 0.0))
            .map(|(key, v)| ConfigError {
                file: source.to_string(),
                key: key.to_string(),
                reason: format!("expected a finite number ≥ 0, got {v}"),
            })
            .collect();
        if errors.is_empty() {
            Ok(cal)
        } else {
            Err(EstimateError::Calibration(ConfigErrors(errors)))
        }
    }

    /// Every cost coefficient with its key path.
    pub fn coefficients(&self) -> [(&'static str, f64); 25] {
        let (p, b) = (&self.proxy, &self.broker);
        let (pw, bw) = (&p.wakeups, &b.wakeups);
        [
            ("proxy.tls_connect_cpu_us", p.tls_connect_cpu_us),
            ("proxy.plain_connect_cpu_us", p.plain_connect_cpu_us),
            ("proxy.packet_cpu_us", p.packet_cpu_us),
            ("proxy.byte_cpu_ns", p.byte_cpu_ns),
            ("proxy.rss_base_mib", p.rss_base_mib),
            (
                "proxy.rss_per_tls_connection_kib",
                p.rss_per_tls_connection_kib,
            ),
            (
                "proxy.rss_per_plain_connection_kib",
                p.rss_per_plain_connection_kib,
            ),
            (
                "proxy.wakeups.background_cpu_us_per_s",
                pw.background_cpu_us_per_s,
            ),
            (
                "proxy.wakeups.connection_cpu_us_per_s",
                pw.connection_cpu_us_per_s,
            ),
            (
                "proxy.wakeups.thread_wakeup_cpu_us",
                pw.thread_wakeup_cpu_us,
            ),
            ("proxy.wakeups.wakeup_cpu_us", pw.wakeup_cpu_us),
            ("proxy.wakeups.coalesce_us", pw.coalesce_us),
            ("proxy.wakeups.thread_coalesce_us", pw.thread_coalesce_us),
            ("broker.cpu_us_per_publish_in", b.cpu_us_per_publish_in),
            ("broker.cpu_us_per_delivery", b.cpu_us_per_delivery),
            ("broker.cpu_us_per_ack", b.cpu_us_per_ack),
            ("broker.connect_cpu_us", b.connect_cpu_us),
            ("broker.rss_base_mib", b.rss_base_mib),
            ("broker.rss_per_connection_kib", b.rss_per_connection_kib),
            (
                "broker.wakeups.background_cpu_us_per_s",
                bw.background_cpu_us_per_s,
            ),
            (
                "broker.wakeups.connection_cpu_us_per_s",
                bw.connection_cpu_us_per_s,
            ),
            (
                "broker.wakeups.thread_wakeup_cpu_us",
                bw.thread_wakeup_cpu_us,
            ),
            ("broker.wakeups.wakeup_cpu_us", bw.wakeup_cpu_us),
            ("broker.wakeups.coalesce_us", bw.coalesce_us),
            ("broker.wakeups.thread_coalesce_us", bw.thread_coalesce_us),
        ]
    }

    /// Whether this is the shipped placeholder rather than a measurement.
    pub fn is_placeholder(&self) -> bool {
        self.measured.command.starts_with("PLACEHOLDER")
    }
}

/// Read `--calibration`, or the built-in one; returns its name for reports.
pub fn load_calibration(path: Option<&Path>) -> Result<(String, Calibration), EstimateError> {
    match path {
        None => Ok((
            DEFAULT_CALIBRATION_SOURCE.to_string(),
            Calibration::parse(DEFAULT_CALIBRATION_SOURCE, DEFAULT_CALIBRATION)?,
        )),
        Some(path) => {
            let file = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| EstimateError::Read {
                file: file.clone(),
                source,
            })?;
            let cal = Calibration::parse(&file, &text)?;
            Ok((file, cal))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;

    #[test]
    fn shipped_calibration_parses() {
        let cal = Calibration::parse("c", DEFAULT_CALIBRATION).unwrap();
        assert!(
            !cal.is_placeholder(),
            "the shipped calibration was measured"
        );
        assert!(cal.measured.command.contains("bench calibrate"));
        assert_eq!(cal.coefficients().len(), 25);
        let (source, loaded) = load_calibration(None).unwrap();
        assert_eq!((source.as_str(), loaded), (DEFAULT_CALIBRATION_SOURCE, cal));
    }

    /// A calibration text with round values, independent of the shipped one.
    const SAMPLE: &str = r#"
[measured]
command = "mqttlb bench calibrate --out c.toml"
date = "2026-01-01T00:00:00Z"
mqttlb_version = "0.1.0"
cpu_model = "test"
cpus = 8
payload_bytes = 64

[proxy]
tls_connect_cpu_us = 200.0
plain_connect_cpu_us = 80.0
packet_cpu_us = 10.0
byte_cpu_ns = 0.5
rss_base_mib = 12.0
rss_per_tls_connection_kib = 14.0
rss_per_plain_connection_kib = 7.0

[proxy.wakeups]
background_cpu_us_per_s = 1000.0
thread_wakeup_cpu_us = 10.0
wakeup_cpu_us = 5.0
coalesce_us = 1000.0
thread_coalesce_us = 100.0

[broker]
cpu_us_per_publish_in = 5.0
cpu_us_per_delivery = 8.0
cpu_us_per_ack = 2.5
connect_cpu_us = 60.0
rss_base_mib = 7.0
rss_per_connection_kib = 12.0

[broker.wakeups]
background_cpu_us_per_s = 1000.0
thread_wakeup_cpu_us = 10.0
wakeup_cpu_us = 5.0
coalesce_us = 1000.0
thread_coalesce_us = 100.0
"#;

    #[test]
    fn calibration_errors_name_file_key_and_line() {
        assert!(Calibration::parse("sample", SAMPLE).is_ok());
        let unknown = SAMPLE.replace("cpus = 8", "cpus = 8\ncores = 8");
        let e = Calibration::parse("cal.toml", &unknown)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cal.toml: measured"), "{e}");
        assert!(e.contains("cores") && e.contains("(line "), "{e}");

        let wrong_type = SAMPLE.replace("connect_cpu_us = 60.0", "connect_cpu_us = \"fast\"");
        let e = Calibration::parse("cal.toml", &wrong_type)
            .unwrap_err()
            .to_string();
        assert!(e.contains("broker.connect_cpu_us"), "{e}");

        let negative = SAMPLE.replace("rss_base_mib = 12.0", "rss_base_mib = -1.0");
        let e = Calibration::parse("cal.toml", &negative)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "cal.toml: proxy.rss_base_mib: expected a finite number ≥ 0, got -1"
        );

        let nan = SAMPLE.replace("byte_cpu_ns = 0.5", "byte_cpu_ns = nan");
        let e = Calibration::parse("cal.toml", &nan)
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.byte_cpu_ns"), "{e}");

        let e = Calibration::parse("cal.toml", "[measured\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cal.toml: invalid TOML") && e.contains("line 1"),
            "{e}"
        );

        let e = load_calibration(Some(Path::new("/nonexistent/cal.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/cal.toml"), "{e}");
    }
}
