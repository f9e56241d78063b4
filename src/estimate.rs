//! `mqttlb estimate`: CPU cores and memory for the proxy and `mqttlb broker`
//! from a workload, by a linear cost model whose coefficients come from a
//! calibration measured on the target machine (`mqttlb bench calibrate`).
//! (Being written.)

use serde::{Deserialize, Serialize};

/// Flags of `mqttlb estimate`.
#[derive(Debug, clap::Args)]
pub struct EstimateArgs {
    /// Calibration file (TOML) written by `mqttlb bench calibrate`.
    #[arg(long)]
    pub calibration: Option<std::path::PathBuf>,
}

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

/// Run `mqttlb estimate`; returns the exit code.
pub fn main(_args: EstimateArgs) -> u8 {
    0
}
