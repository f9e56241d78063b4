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

/// Proxy (TLS offload) costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyCosts {
    /// Proxy CPU per TLS client connection: accept, TLS 1.3 handshake
    /// (ECDSA P-256), CONNECT → backend connect → CONNACK, DISCONNECT, close.
    pub tls_connect_cpu_us: f64,
    /// The same without TLS.
    pub plain_connect_cpu_us: f64,
    /// Proxy CPU per MQTT packet relayed in one direction between a TLS
    /// client and a backend (decrypt or encrypt + two socket operations),
    /// at `payload_bytes`.
    pub relay_cpu_us_per_packet: f64,
    /// Extra proxy CPU per payload byte relayed (from a second payload size).
    pub relay_cpu_ns_per_byte: f64,
    /// Resident memory of an idle proxy.
    pub rss_base_mib: f64,
    /// Resident memory per idle TLS MQTT connection (client TLS + backend TCP).
    pub rss_per_tls_connection_kib: f64,
    /// Resident memory per idle plain MQTT connection.
    pub rss_per_plain_connection_kib: f64,
}

/// `mqttlb broker` costs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerCosts {
    /// Broker CPU per QoS 0 PUBLISH received (parse, route).
    pub cpu_us_per_publish_in: f64,
    /// Broker CPU per QoS 0 delivery to a subscriber (encode, write).
    pub cpu_us_per_delivery: f64,
    /// Extra broker CPU per message for QoS 1 (PUBACKs both ways), per
    /// delivery.
    pub qos1_extra_cpu_us: f64,
    /// Broker CPU per client connection (CONNECT → CONNACK → close).
    pub connect_cpu_us: f64,
    /// Resident memory of an idle broker.
    pub rss_base_mib: f64,
    /// Resident memory per idle connected client with one subscription.
    pub rss_per_connection_kib: f64,
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
    pub fn coefficients(&self) -> [(&'static str, f64); 13] {
        let (p, b) = (&self.proxy, &self.broker);
        [
            ("proxy.tls_connect_cpu_us", p.tls_connect_cpu_us),
            ("proxy.plain_connect_cpu_us", p.plain_connect_cpu_us),
            ("proxy.relay_cpu_us_per_packet", p.relay_cpu_us_per_packet),
            ("proxy.relay_cpu_ns_per_byte", p.relay_cpu_ns_per_byte),
            ("proxy.rss_base_mib", p.rss_base_mib),
            (
                "proxy.rss_per_tls_connection_kib",
                p.rss_per_tls_connection_kib,
            ),
            (
                "proxy.rss_per_plain_connection_kib",
                p.rss_per_plain_connection_kib,
            ),
            ("broker.cpu_us_per_publish_in", b.cpu_us_per_publish_in),
            ("broker.cpu_us_per_delivery", b.cpu_us_per_delivery),
            ("broker.qos1_extra_cpu_us", b.qos1_extra_cpu_us),
            ("broker.connect_cpu_us", b.connect_cpu_us),
            ("broker.rss_base_mib", b.rss_base_mib),
            ("broker.rss_per_connection_kib", b.rss_per_connection_kib),
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
        assert_eq!(cal.coefficients().len(), 13);
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
relay_cpu_us_per_packet = 10.0
relay_cpu_ns_per_byte = 0.5
rss_base_mib = 12.0
rss_per_tls_connection_kib = 14.0
rss_per_plain_connection_kib = 7.0

[broker]
cpu_us_per_publish_in = 5.0
cpu_us_per_delivery = 8.0
qos1_extra_cpu_us = 5.0
connect_cpu_us = 60.0
rss_base_mib = 7.0
rss_per_connection_kib = 12.0
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

        let nan = SAMPLE.replace("relay_cpu_ns_per_byte = 0.5", "relay_cpu_ns_per_byte = nan");
        let e = Calibration::parse("cal.toml", &nan)
            .unwrap_err()
            .to_string();
        assert!(e.contains("proxy.relay_cpu_ns_per_byte"), "{e}");

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
