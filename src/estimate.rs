//! `mqttlb estimate`: CPU cores and memory for the proxy and `mqttlb broker`
//! from a workload, by a linear cost model whose coefficients come from a
//! calibration measured on the target machine (`mqttlb bench calibrate`).
//!
//! # The model
//!
//! Every cost is *rate × unit cost*; the unit costs are the calibration's
//! coefficients. `docs/sizing.md` explains it for operators. With `N`
//! connections, TLS share `s`, `M` messages published per second, fan-out
//! `F` (so `D = M·F` deliveries per second), payload `B`, `C` new
//! connections per second, keep-alive `K` seconds, and `k` nodes carrying
//! the load:
//!
//! * **QoS.** A PUBLISH exchange adds `a` acknowledgement packets: 0 at
//!   QoS 0, 1 at QoS 1 (PUBACK), 3 at QoS 2 (PUBREC, PUBREL, PUBCOMP).
//! * **Proxy CPU** (CPU-seconds per second, per node):
//!   - handshakes: `C/k × (s·tls_connect + (1−s)·plain_connect)`;
//!   - PUBLISH relay: `(M + D)/k × relay(B)`: every published message
//!     crosses the proxy once client→broker, every delivery once
//!     broker→client;
//!   - acknowledgement relay: `a·(M + D)/k × relay(0)`;
//!   - keep-alive: `2·N/K/k × relay(0)` (PINGREQ and PINGRESP, charged as
//!     if every client were otherwise idle: conservative);
//!   - `relay(b) = max(0, relay_cpu_us_per_packet + (b − payload_bytes) ×
//!     relay_cpu_ns_per_byte / 1000)`: the per-packet figure was measured at
//!     the calibration's `payload_bytes`, the per-byte one is the extra
//!     beyond it. There is no plain-relay coefficient, so every packet is
//!     charged at the TLS rate (conservative when `s < 1`).
//! * **Proxy memory** (per node): `rss_base + N/k × (s·rss_per_tls +
//!   (1−s)·rss_per_plain) + 2·N/k × 4 KiB` of kernel socket memory (two
//!   sockets per client, about 4 KiB each when idle: `struct tcp_sock`,
//!   inode, file, epoll entry; charged to the container's memory cgroup
//!   but not part of RSS).
//! * **Broker CPU** (per node; `e = qos1_extra_cpu_us / 2` is the cost of
//!   one acknowledged exchange, because `bench calibrate` measures
//!   `qos1_extra_cpu_us` per delivery at fan-out 1, where each delivery
//!   comes with two exchanges: publisher → broker and broker → subscriber):
//!   - connects: `C/k × connect_cpu_us`;
//!   - publish in: `M/k × cpu_us_per_publish_in`;
//!   - deliveries: `D/k × cpu_us_per_delivery`;
//!   - QoS acknowledgements: `(M + D)/k × a·e`;
//!   - mesh: `M·(k−1)/k × (publish_in + delivery + 2·a·e)`: in a full
//!     mesh every node forwards what its own clients publish to each of
//!     the `k−1` others, which parse it like a local publish, so every
//!     node handles every message whatever the node count;
//!   - keep-alive: `N/K/k × (publish_in + delivery)` (PINGREQ read,
//!     PINGRESP written).
//! * **Broker memory** (per node): `rss_base + N/k × rss_per_connection +
//!   N/k × 4 KiB` (one kernel socket per client).
//!
//! Clients and subscribers are assumed spread evenly over the nodes (what
//! `client-id` and `round-robin` balancing give). A node is sized for the
//! load it carries when one node of the group is lost (`k = nodes − 1`):
//! `cores = ⌈cpu / headroom⌉` (at least 1), `memory = total / headroom`.
//!
//! The **bottleneck** is the group of terms that takes the largest share
//! of the node, with memory converted to cores at the machine shape
//! (`--gib-per-core`, 4 GiB per core by default, as general-purpose cloud
//! instances): handshakes, message relay, keep-alive, connects, message
//! routing, mesh, memory per connection, or the base footprint when the
//! load is small.
//!
//! Layout: [`EstimateArgs`] → [`Workload`] (validated inputs) and
//! [`Calibration`] → [`estimate`] (pure) → [`Estimate`] → [`render_text`]
//! or [`render_json`].

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, ConfigErrors, parse_toml};

/// Exit code of bad flags and invalid calibration files.
const EXIT_USAGE: u8 = 64;
/// Exit code when the report could not be written.
const EXIT_FAILED: u8 = 1;

/// The calibration shipped with the binary (used without `--calibration`).
pub const DEFAULT_CALIBRATION: &str = include_str!("../config/calibration.toml");
/// How the built-in calibration is named in reports and errors.
pub const DEFAULT_CALIBRATION_SOURCE: &str = "config/calibration.toml (built in)";

/// Kernel memory per idle TCP socket (not in RSS; charged to the memory
/// cgroup): `struct tcp_sock` (~2.3 KiB), inode and dentry, `struct file`,
/// epoll entry. Socket buffers with data in flight come on top.
pub const KERNEL_SOCKET_KIB: f64 = 4.0;
/// Largest MQTT keep-alive (a 16-bit number of seconds).
const MAX_KEEP_ALIVE_S: u64 = 65_535;
/// Largest MQTT packet (variable byte integer limit), hence payload.
const MAX_PAYLOAD: u64 = 268_435_455;
/// Default steady churn: every client reconnects once an hour.
const CHURN_PERIOD_S: f64 = 3600.0;

/// Flags of `mqttlb estimate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EstimateArgs {
    /// Concurrent client connections [default: 10000, or publishers +
    /// subscribers].
    #[arg(long, value_name = "N")]
    pub connections: Option<u64>,
    /// Share of the clients connecting over TLS, 0.0 to 1.0.
    #[arg(long, value_name = "SHARE", default_value = "1.0", value_parser = parse_share)]
    pub tls_share: f64,
    /// Messages published per second, all clients together [default: 0].
    #[arg(long, value_name = "MSG/S", value_parser = parse_rate,
          conflicts_with_all = ["publishers", "subscribers", "rate_per_publisher", "topics"])]
    pub publish_rate: Option<f64>,
    /// Deliveries per published message (subscribers each reaches)
    /// [default: 1].
    #[arg(long, value_name = "F", value_parser = parse_fan_out,
          conflicts_with_all = ["publishers", "subscribers", "rate_per_publisher", "topics"])]
    pub fan_out: Option<f64>,
    /// Publishing clients; with --subscribers and --rate-per-publisher,
    /// instead of --publish-rate and --fan-out.
    #[arg(long, value_name = "P", requires_all = ["subscribers", "rate_per_publisher"])]
    pub publishers: Option<u64>,
    /// Subscribing clients, spread evenly over --topics.
    #[arg(long, value_name = "S", requires_all = ["publishers", "rate_per_publisher"])]
    pub subscribers: Option<u64>,
    /// Messages per second of each publisher.
    #[arg(long, value_name = "MSG/S", value_parser = parse_rate,
          requires_all = ["publishers", "subscribers"])]
    pub rate_per_publisher: Option<f64>,
    /// Topics the subscribers spread over evenly: each message reaches
    /// subscribers / topics of them [default: 1].
    #[arg(long, value_name = "T", requires = "subscribers",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub topics: Option<u64>,
    /// Payload of each message, e.g. 64B, 1KiB.
    #[arg(long, value_name = "SIZE", default_value = "64B", value_parser = parse_payload)]
    pub payload: u64,
    /// QoS of the messages: 0, 1 or 2.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// New client connections per second [default: connections / 3600,
    /// every client reconnecting once an hour].
    #[arg(long, value_name = "C", value_parser = parse_rate)]
    pub new_connections_per_second: Option<f64>,
    /// MQTT keep-alive of the clients (PINGREQ/PINGRESP); 0s for none.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_keep_alive)]
    pub keep_alive: Duration,
    /// Target utilisation: the load may use this share of a node's cores
    /// and memory, in (0, 1].
    #[arg(long, value_name = "SHARE", default_value = "0.7", value_parser = parse_headroom)]
    pub headroom: f64,
    /// Proxy replicas (at least 2 for availability); each is sized for one
    /// of them lost.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub proxy_nodes: u32,
    /// Broker nodes (at least 3 for availability); each is sized for one of
    /// them lost.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub broker_nodes: u32,
    /// Memory per core of the machine type, in GiB: weighs memory against
    /// CPU when naming the bottleneck.
    #[arg(long, value_name = "GIB", default_value = "4", value_parser = parse_gib_per_core)]
    pub gib_per_core: f64,
    /// Calibration file (TOML) written by `mqttlb bench calibrate`
    /// [default: the one built in, a placeholder].
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
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

/// Why `mqttlb estimate` refused (all exit 64).
#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    /// A flag's value, named.
    #[error("{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error("calibration {file}: cannot read it: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// Invalid calibration: file, key path and reason.
    #[error("{0}")]
    Calibration(ConfigErrors),
    /// A result is not a finite number (absurdly large inputs).
    #[error(
        "the {0} estimate overflows: the workload or calibration figures are too large to compute"
    )]
    Overflow(&'static str),
}

// ---------------------------------------------------------------------------
// Flag values

fn check_share(v: f64) -> Result<f64, String> {
    if v.is_finite() && (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 0.0 and 1.0, got {v}"))
    }
}

fn check_headroom(v: f64) -> Result<f64, String> {
    if v.is_finite() && v > 0.0 && v <= 1.0 {
        Ok(v)
    } else {
        Err(format!(
            "must be in (0, 1]: the share of a node the load may use, got {v}"
        ))
    }
}

fn check_non_negative(v: f64) -> Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number ≥ 0, got {v}"))
    }
}

fn check_positive(v: f64) -> Result<f64, String> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a finite number > 0, got {v}"))
    }
}

fn check_payload(v: u64) -> Result<u64, String> {
    if v <= MAX_PAYLOAD {
        Ok(v)
    } else {
        Err(format!(
            "at most {MAX_PAYLOAD} bytes (the largest MQTT packet), got {v}"
        ))
    }
}

fn check_keep_alive(d: Duration) -> Result<Duration, String> {
    if d <= Duration::from_secs(MAX_KEEP_ALIVE_S) {
        Ok(d)
    } else {
        Err(format!(
            "at most {MAX_KEEP_ALIVE_S}s in MQTT, got {}",
            humantime::format_duration(d)
        ))
    }
}

fn number(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .map_err(|e| format!("expected a number, got {s:?} ({e})"))
}

fn parse_share(s: &str) -> Result<f64, String> {
    check_share(number(s)?)
}

fn parse_headroom(s: &str) -> Result<f64, String> {
    check_headroom(number(s)?)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    check_non_negative(number(s)?)
}

fn parse_fan_out(s: &str) -> Result<f64, String> {
    check_non_negative(number(s)?)
}

fn parse_gib_per_core(s: &str) -> Result<f64, String> {
    check_positive(number(s)?)
}

fn parse_payload(s: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|e| format!("expected a size such as 64B or 4KiB, got {s:?} ({e})"))?;
    check_payload(size.as_u64())
}

fn parse_keep_alive(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration such as 60s or 5m, got {s:?} ({e})"))?;
    check_keep_alive(d)
}

// ---------------------------------------------------------------------------
// Workload

/// MQTT quality of service of the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u8")]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl Qos {
    pub fn from_level(level: u8) -> Option<Qos> {
        match level {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }

    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }

    /// Acknowledgement packets per PUBLISH exchange: none, PUBACK, or
    /// PUBREC + PUBREL + PUBCOMP.
    pub fn ack_packets(self) -> f64 {
        match self {
            Qos::AtMostOnce => 0.0,
            Qos::AtLeastOnce => 1.0,
            Qos::ExactlyOnce => 3.0,
        }
    }
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        q.level()
    }
}

/// Traffic given as publishers and subscribers (`--publishers`, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PubSub {
    pub publishers: u64,
    pub subscribers: u64,
    pub rate_per_publisher: f64,
    pub topics: u64,
}

/// The validated inputs of the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    pub connections: u64,
    pub tls_share: f64,
    /// Messages published per second, all clients together.
    pub publish_rate: f64,
    /// Deliveries per published message.
    pub fan_out: f64,
    /// Set when the traffic was given as publishers and subscribers.
    pub pubsub: Option<PubSub>,
    pub payload_bytes: u64,
    pub qos: Qos,
    pub new_connections_per_s: f64,
    /// The new-connection rate is the default churn (connections / 3600).
    pub new_connections_default: bool,
    /// 0: no keep-alive pings.
    pub keep_alive_s: f64,
    pub headroom: f64,
    pub proxy_nodes: u32,
    pub broker_nodes: u32,
    pub gib_per_core: f64,
}

impl Default for Workload {
    /// The defaults of the flags.
    fn default() -> Workload {
        Workload {
            connections: 10_000,
            tls_share: 1.0,
            publish_rate: 0.0,
            fan_out: 1.0,
            pubsub: None,
            payload_bytes: 64,
            qos: Qos::AtMostOnce,
            new_connections_per_s: 10_000.0 / CHURN_PERIOD_S,
            new_connections_default: true,
            keep_alive_s: 60.0,
            headroom: 0.7,
            proxy_nodes: 2,
            broker_nodes: 3,
            gib_per_core: 4.0,
        }
    }
}

fn bad(flag: &'static str, reason: impl Into<String>) -> EstimateError {
    EstimateError::Flag {
        flag,
        reason: reason.into(),
    }
}

/// `check` a flag's value; a failure names the flag.
fn checked<T>(
    flag: &'static str,
    v: T,
    check: impl FnOnce(T) -> Result<T, String>,
) -> Result<T, EstimateError> {
    check(v).map_err(|reason| bad(flag, reason))
}

/// Messages in, fan-out, the publishers/subscribers they came from, and
/// the connection count those imply.
type Traffic = (f64, f64, Option<PubSub>, u64);

fn traffic(a: &EstimateArgs) -> Result<Traffic, EstimateError> {
    match (a.publishers, a.subscribers, a.rate_per_publisher) {
        (None, None, None) => {
            if a.topics.is_some() {
                return Err(bad(
                    "--topics",
                    "only with --publishers, --subscribers and --rate-per-publisher",
                ));
            }
            let rate = checked(
                "--publish-rate",
                a.publish_rate.unwrap_or(0.0),
                check_non_negative,
            )?;
            let fan_out = checked("--fan-out", a.fan_out.unwrap_or(1.0), check_non_negative)?;
            Ok((rate, fan_out, None, 10_000))
        }
        (Some(publishers), Some(subscribers), Some(rate)) => {
            if a.publish_rate.is_some() || a.fan_out.is_some() {
                return Err(bad(
                    "--publishers",
                    "give either --publish-rate and --fan-out, or --publishers, \
                     --subscribers and --rate-per-publisher",
                ));
            }
            let rate = checked("--rate-per-publisher", rate, check_non_negative)?;
            let topics = a.topics.unwrap_or(1);
            if topics == 0 {
                return Err(bad("--topics", "must be at least 1"));
            }
            let publish_rate = to_f64(publishers) * rate;
            if !publish_rate.is_finite() {
                return Err(bad(
                    "--rate-per-publisher",
                    "publishers × rate is too large",
                ));
            }
            // Subscribers spread evenly over the topics, each on one: a
            // message reaches subscribers / topics of them.
            let fan_out = to_f64(subscribers) / to_f64(topics);
            let pubsub = PubSub {
                publishers,
                subscribers,
                rate_per_publisher: rate,
                topics,
            };
            Ok((
                publish_rate,
                fan_out,
                Some(pubsub),
                publishers.saturating_add(subscribers),
            ))
        }
        _ => Err(bad(
            "--publishers",
            "--publishers, --subscribers and --rate-per-publisher go together",
        )),
    }
}

impl Workload {
    /// Convert and check the flags (again: they may not come from clap).
    pub fn from_args(a: &EstimateArgs) -> Result<Workload, EstimateError> {
        let qos = Qos::from_level(a.qos)
            .ok_or_else(|| bad("--qos", format!("must be 0, 1 or 2, got {}", a.qos)))?;
        let at_least_one = |n: u32| {
            if n >= 1 {
                Ok(n)
            } else {
                Err("must be at least 1".to_string())
            }
        };
        let (publish_rate, fan_out, pubsub, default_connections) = traffic(a)?;
        let connections = a.connections.unwrap_or(default_connections);
        let (new_connections_per_s, new_connections_default) = match a.new_connections_per_second {
            Some(c) => (
                checked("--new-connections-per-second", c, check_non_negative)?,
                false,
            ),
            None => (to_f64(connections) / CHURN_PERIOD_S, true),
        };
        Ok(Workload {
            connections,
            tls_share: checked("--tls-share", a.tls_share, check_share)?,
            publish_rate,
            fan_out,
            pubsub,
            payload_bytes: checked("--payload", a.payload, check_payload)?,
            qos,
            new_connections_per_s,
            new_connections_default,
            keep_alive_s: checked("--keep-alive", a.keep_alive, check_keep_alive)?.as_secs_f64(),
            headroom: checked("--headroom", a.headroom, check_headroom)?,
            proxy_nodes: checked("--proxy-nodes", a.proxy_nodes, at_least_one)?,
            broker_nodes: checked("--broker-nodes", a.broker_nodes, at_least_one)?,
            gib_per_core: checked("--gib-per-core", a.gib_per_core, check_positive)?,
        })
    }

    /// Messages delivered to subscribers per second.
    pub fn deliveries_per_s(&self) -> f64 {
        self.publish_rate * self.fan_out
    }

    /// PINGREQs per second, all clients together (as many PINGRESPs).
    pub fn pingreqs_per_s(&self) -> f64 {
        if self.keep_alive_s > 0.0 {
            to_f64(self.connections) / self.keep_alive_s
        } else {
            0.0
        }
    }
}

// ---------------------------------------------------------------------------
// The model (pure)

/// One cost term: what it counts and how much it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Term {
    /// Proxy: client connections accepted (TLS handshake, CONNECT → CONNACK).
    Handshakes,
    /// Proxy: PUBLISH packets relayed (both directions).
    RelayPublish,
    /// Proxy: QoS acknowledgement packets relayed.
    RelayAcks,
    /// PINGREQ and PINGRESP.
    KeepAlive,
    /// Broker: CONNECT → CONNACK.
    Connects,
    /// Broker: PUBLISH received from its own clients.
    PublishIn,
    /// Broker: deliveries to its own subscribers.
    Deliveries,
    /// Broker: QoS acknowledgements with its own clients.
    QosAcks,
    /// Broker: forwarding to and receiving from the other nodes.
    Mesh,
    /// Memory of an idle process.
    BaseMemory,
    /// Resident memory of the connections.
    ConnectionMemory,
    /// Kernel memory of the sockets.
    KernelSockets,
}

impl Term {
    pub fn as_str(self) -> &'static str {
        match self {
            Term::Handshakes => "handshakes",
            Term::RelayPublish => "relay_publish",
            Term::RelayAcks => "relay_acks",
            Term::KeepAlive => "keep_alive",
            Term::Connects => "connects",
            Term::PublishIn => "publish_in",
            Term::Deliveries => "deliveries",
            Term::QosAcks => "qos_acks",
            Term::Mesh => "mesh",
            Term::BaseMemory => "base_memory",
            Term::ConnectionMemory => "connection_memory",
            Term::KernelSockets => "kernel_sockets",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Term::Handshakes => "handshakes",
            Term::RelayPublish => "relay PUBLISH",
            Term::RelayAcks => "relay acks",
            Term::KeepAlive => "keep-alive",
            Term::Connects => "connects",
            Term::PublishIn => "publish in",
            Term::Deliveries => "deliveries",
            Term::QosAcks => "QoS acks",
            Term::Mesh => "mesh",
            Term::BaseMemory => "base",
            Term::ConnectionMemory => "connections",
            Term::KernelSockets => "kernel sockets",
        }
    }

    /// The bottleneck this term counts towards.
    pub fn bottleneck(self) -> Bottleneck {
        match self {
            Term::Handshakes => Bottleneck::Handshakes,
            Term::RelayPublish | Term::RelayAcks => Bottleneck::MessageRelay,
            Term::KeepAlive => Bottleneck::KeepAlive,
            Term::Connects => Bottleneck::Connects,
            Term::PublishIn | Term::Deliveries | Term::QosAcks => Bottleneck::MessageRouting,
            Term::Mesh => Bottleneck::Mesh,
            Term::BaseMemory => Bottleneck::BaseFootprint,
            Term::ConnectionMemory | Term::KernelSockets => Bottleneck::ConnectionMemory,
        }
    }
}

/// What limits a node: the group of terms with the largest share of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bottleneck {
    Handshakes,
    MessageRelay,
    KeepAlive,
    Connects,
    MessageRouting,
    Mesh,
    ConnectionMemory,
    BaseFootprint,
}

impl Bottleneck {
    const ALL: [Bottleneck; 8] = [
        Bottleneck::Handshakes,
        Bottleneck::MessageRelay,
        Bottleneck::KeepAlive,
        Bottleneck::Connects,
        Bottleneck::MessageRouting,
        Bottleneck::Mesh,
        Bottleneck::ConnectionMemory,
        Bottleneck::BaseFootprint,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Bottleneck::Handshakes => "handshakes",
            Bottleneck::MessageRelay => "message_relay",
            Bottleneck::KeepAlive => "keep_alive",
            Bottleneck::Connects => "connects",
            Bottleneck::MessageRouting => "message_routing",
            Bottleneck::Mesh => "mesh",
            Bottleneck::ConnectionMemory => "connection_memory",
            Bottleneck::BaseFootprint => "base_footprint",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Bottleneck::Handshakes => "handshakes (new connections: TLS and CONNECT)",
            Bottleneck::MessageRelay => "message relay (PUBLISH and acknowledgements)",
            Bottleneck::KeepAlive => "keep-alive pings",
            Bottleneck::Connects => "connects (CONNECT → CONNACK)",
            Bottleneck::MessageRouting => "message routing (publishes, deliveries, acks)",
            Bottleneck::Mesh => "the mesh (every node handles every message)",
            Bottleneck::ConnectionMemory => "memory per connection",
            Bottleneck::BaseFootprint => "the base footprint (the load is small)",
        }
    }
}

/// A CPU term: `rate_per_s × unit_cpu_us` = `cores` busy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuTerm {
    pub term: Term,
    pub rate_per_s: f64,
    pub unit_cpu_us: f64,
    /// CPU-seconds per second.
    pub cores: f64,
}

impl CpuTerm {
    fn new(term: Term, rate_per_s: f64, unit_cpu_us: f64) -> CpuTerm {
        CpuTerm {
            term,
            rate_per_s,
            unit_cpu_us,
            cores: rate_per_s * unit_cpu_us / 1e6,
        }
    }
}

/// A memory term: `count × unit_kib` = `mib`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemTerm {
    pub term: Term,
    pub count: f64,
    pub unit_kib: f64,
    pub mib: f64,
}

impl MemTerm {
    fn new(term: Term, count: f64, unit_kib: f64) -> MemTerm {
        MemTerm {
            term,
            count,
            unit_kib,
            mib: count * unit_kib / 1024.0,
        }
    }
}

/// The load of one node while `live_nodes` nodes share the work.
#[derive(Debug, Clone, PartialEq)]
struct NodeLoad {
    connections: f64,
    cpu: Vec<CpuTerm>,
    memory: Vec<MemTerm>,
}

/// What one node needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeFigures {
    /// Nodes sharing the load.
    pub live_nodes: u32,
    /// Client connections on this node.
    pub connections: f64,
    /// CPU-seconds per second of the load.
    pub cpu_busy: f64,
    /// `⌈cpu_busy / headroom⌉`, at least 1.
    pub cores: u64,
    /// Memory the load uses.
    pub memory_used_mib: f64,
    /// `memory_used_mib / headroom`: what to provision.
    pub memory_mib: f64,
}

/// After losing a node, its clients reconnect to the others.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconnectStorm {
    /// Clients of the lost node.
    pub clients: f64,
    /// CPU the reconnects cost this component.
    pub cpu_seconds: f64,
    /// Time to absorb them on the survivors' spare cores (`None`: no spare).
    pub seconds_at_spare: Option<f64>,
}

/// The proxy or the broker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentEstimate {
    pub nodes: u32,
    /// CPU terms of one node when one node is lost (the sized case).
    pub cpu: Vec<CpuTerm>,
    /// Memory terms of one node when one node is lost (the sized case).
    pub memory: Vec<MemTerm>,
    /// Size each node for this: one node lost (all of them if `nodes` is 1).
    pub per_node: NodeFigures,
    /// Each node while all are up.
    pub per_node_all_up: NodeFigures,
    /// A single node carrying everything.
    pub single_node: NodeFigures,
    pub bottleneck: Bottleneck,
    /// Share of the sized node (cores, memory at `gib_per_core`) the
    /// bottleneck takes, 0 to 1.
    pub bottleneck_share: f64,
    /// `None` with a single node.
    pub reconnect_storm: Option<ReconnectStorm>,
}

/// Both components.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub proxy: ComponentEstimate,
    pub broker: ComponentEstimate,
}

/// `u64` → `f64`; above 2^53 the nearest value, which is what a count
/// that large needs.
#[allow(clippy::cast_precision_loss)]
fn to_f64(n: u64) -> f64 {
    n as f64
}

/// `⌈x⌉` as a count, at least 1, ignoring float noise (1.4 / 0.7 is
/// 2.0000000000000004, which must be 2 cores, not 3). `x` is finite and
/// ≥ 0 here; `as` saturates anyway.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn cores_for(x: f64) -> u64 {
    let rounded = (x * (1.0 - 1e-12)).ceil();
    (rounded as u64).max(1)
}

/// Proxy CPU per packet of `payload` bytes (µs).
fn relay_unit_us(cal: &Calibration, payload: f64) -> f64 {
    let p = &cal.proxy;
    let extra = payload - f64::from(cal.measured.payload_bytes);
    (p.relay_cpu_us_per_packet + extra * p.relay_cpu_ns_per_byte / 1000.0).max(0.0)
}

fn proxy_load(w: &Workload, cal: &Calibration, live: u32) -> NodeLoad {
    let p = &cal.proxy;
    let k = f64::from(live.max(1));
    let s = w.tls_share;
    let publishes = (w.publish_rate + w.deliveries_per_s()) / k;
    let connections = to_f64(w.connections) / k;
    let handshake_us = s * p.tls_connect_cpu_us + (1.0 - s) * p.plain_connect_cpu_us;
    let ack_us = relay_unit_us(cal, 0.0);
    let per_conn_kib =
        s * p.rss_per_tls_connection_kib + (1.0 - s) * p.rss_per_plain_connection_kib;
    NodeLoad {
        connections,
        cpu: vec![
            CpuTerm::new(Term::Handshakes, w.new_connections_per_s / k, handshake_us),
            CpuTerm::new(
                Term::RelayPublish,
                publishes,
                relay_unit_us(cal, to_f64(w.payload_bytes)),
            ),
            CpuTerm::new(Term::RelayAcks, publishes * w.qos.ack_packets(), ack_us),
            CpuTerm::new(Term::KeepAlive, 2.0 * w.pingreqs_per_s() / k, ack_us),
        ],
        memory: vec![
            MemTerm::new(Term::BaseMemory, 1.0, p.rss_base_mib * 1024.0),
            MemTerm::new(Term::ConnectionMemory, connections, per_conn_kib),
            MemTerm::new(Term::KernelSockets, 2.0 * connections, KERNEL_SOCKET_KIB),
        ],
    }
}

fn broker_load(w: &Workload, cal: &Calibration, live: u32) -> NodeLoad {
    let b = &cal.broker;
    let k = f64::from(live.max(1));
    let m = w.publish_rate;
    let d = w.deliveries_per_s();
    // One acknowledged exchange; `qos1_extra_cpu_us` covers two (see the
    // module documentation).
    let exchange_us = w.qos.ack_packets() * b.qos1_extra_cpu_us / 2.0;
    // Messages this node forwards to the others, and receives from them.
    let forwards = m * (k - 1.0) / k;
    let connections = to_f64(w.connections) / k;
    NodeLoad {
        connections,
        cpu: vec![
            CpuTerm::new(
                Term::Connects,
                w.new_connections_per_s / k,
                b.connect_cpu_us,
            ),
            CpuTerm::new(Term::PublishIn, m / k, b.cpu_us_per_publish_in),
            CpuTerm::new(Term::Deliveries, d / k, b.cpu_us_per_delivery),
            CpuTerm::new(Term::QosAcks, (m + d) / k, exchange_us),
            CpuTerm::new(
                Term::Mesh,
                forwards,
                b.cpu_us_per_publish_in + b.cpu_us_per_delivery + 2.0 * exchange_us,
            ),
            CpuTerm::new(
                Term::KeepAlive,
                w.pingreqs_per_s() / k,
                b.cpu_us_per_publish_in + b.cpu_us_per_delivery,
            ),
        ],
        memory: vec![
            MemTerm::new(Term::BaseMemory, 1.0, b.rss_base_mib * 1024.0),
            MemTerm::new(
                Term::ConnectionMemory,
                connections,
                b.rss_per_connection_kib,
            ),
            MemTerm::new(Term::KernelSockets, connections, KERNEL_SOCKET_KIB),
        ],
    }
}

fn figures(load: &NodeLoad, live: u32, headroom: f64) -> NodeFigures {
    let cpu_busy: f64 = load.cpu.iter().map(|t| t.cores).sum();
    let memory_used_mib: f64 = load.memory.iter().map(|t| t.mib).sum();
    NodeFigures {
        live_nodes: live,
        connections: load.connections,
        cpu_busy,
        cores: cores_for(cpu_busy / headroom),
        memory_used_mib,
        memory_mib: memory_used_mib / headroom,
    }
}

/// The bottleneck of a node and its share: CPU terms in cores, memory
/// terms in cores' worth of memory at `gib_per_core`.
fn bottleneck(load: &NodeLoad, gib_per_core: f64) -> (Bottleneck, f64) {
    let weights = load
        .cpu
        .iter()
        .map(|t| (t.term.bottleneck(), t.cores))
        .chain(
            load.memory
                .iter()
                .map(|t| (t.term.bottleneck(), t.mib / 1024.0 / gib_per_core)),
        );
    let mut sums = Bottleneck::ALL.map(|b| (b, 0.0_f64));
    for (b, v) in weights {
        if let Some(slot) = sums.iter_mut().find(|(s, _)| *s == b) {
            slot.1 += v;
        }
    }
    let total: f64 = sums.iter().map(|(_, v)| v).sum();
    let (b, top) = sums
        .iter()
        .copied()
        .fold((Bottleneck::BaseFootprint, 0.0), |best, cur| {
            if cur.1 > best.1 { cur } else { best }
        });
    let share = if total > 0.0 { top / total } else { 0.0 };
    (b, share)
}

fn component(
    w: &Workload,
    cal: &Calibration,
    nodes: u32,
    load: fn(&Workload, &Calibration, u32) -> NodeLoad,
    connect_us: f64,
) -> ComponentEstimate {
    let nodes = nodes.max(1);
    let carrying = if nodes > 1 { nodes - 1 } else { 1 };
    let sized = load(w, cal, carrying);
    let per_node = figures(&sized, carrying, w.headroom);
    let per_node_all_up = figures(&load(w, cal, nodes), nodes, w.headroom);
    let single_node = figures(&load(w, cal, 1), 1, w.headroom);
    let (bottleneck, bottleneck_share) = bottleneck(&sized, w.gib_per_core);
    let reconnect_storm = (nodes > 1).then(|| {
        let clients = to_f64(w.connections) / f64::from(nodes);
        let cpu_seconds = clients * connect_us / 1e6;
        let spare = f64::from(carrying) * (to_f64(per_node.cores) - per_node.cpu_busy);
        ReconnectStorm {
            clients,
            cpu_seconds,
            seconds_at_spare: (spare > 1e-9).then(|| cpu_seconds / spare),
        }
    });
    ComponentEstimate {
        nodes,
        cpu: sized.cpu,
        memory: sized.memory,
        per_node,
        per_node_all_up,
        single_node,
        bottleneck,
        bottleneck_share,
        reconnect_storm,
    }
}

impl ComponentEstimate {
    fn is_finite(&self) -> bool {
        let figures = [&self.per_node, &self.per_node_all_up, &self.single_node]
            .iter()
            .all(|f| {
                f.connections.is_finite()
                    && f.cpu_busy.is_finite()
                    && f.memory_used_mib.is_finite()
                    && f.memory_mib.is_finite()
            });
        let storm = self.reconnect_storm.as_ref().is_none_or(|s| {
            s.cpu_seconds.is_finite() && s.seconds_at_spare.is_none_or(f64::is_finite)
        });
        figures
            && storm
            && self.bottleneck_share.is_finite()
            && self.cpu.iter().all(|t| {
                t.rate_per_s.is_finite() && t.unit_cpu_us.is_finite() && t.cores.is_finite()
            })
            && self
                .memory
                .iter()
                .all(|t| t.count.is_finite() && t.unit_kib.is_finite() && t.mib.is_finite())
    }
}

/// Cores and memory for the proxy and the broker (pure).
pub fn estimate(w: &Workload, cal: &Calibration) -> Result<Estimate, EstimateError> {
    let proxy_connect_us = w.tls_share * cal.proxy.tls_connect_cpu_us
        + (1.0 - w.tls_share) * cal.proxy.plain_connect_cpu_us;
    let proxy = component(w, cal, w.proxy_nodes, proxy_load, proxy_connect_us);
    if !proxy.is_finite() {
        return Err(EstimateError::Overflow("proxy"));
    }
    let broker = component(
        w,
        cal,
        w.broker_nodes,
        broker_load,
        cal.broker.connect_cpu_us,
    );
    if !broker.is_finite() {
        return Err(EstimateError::Overflow("broker"));
    }
    Ok(Estimate { proxy, broker })
}

/// Things the reader must know about this estimate.
pub fn warnings(w: &Workload, cal: &Calibration, e: &Estimate) -> Vec<String> {
    let mut out = Vec::new();
    if cal.is_placeholder() {
        out.push(
            "the calibration is a placeholder, not a measurement: run `mqttlb bench calibrate \
             --out calibration.toml` on the target machine and pass --calibration"
                .to_string(),
        );
    }
    if w.proxy_nodes < 2 {
        out.push(
            "one proxy node is a single point of failure: run at least 2 (--proxy-nodes)"
                .to_string(),
        );
    }
    if w.broker_nodes < 3 {
        out.push(format!(
            "{} broker node{}: run at least 3 (--broker-nodes), so that losing one still leaves \
             two during repairs and upgrades",
            w.broker_nodes,
            if w.broker_nodes == 1 { "" } else { "s" }
        ));
    }
    for (name, c) in [("proxy", &e.proxy), ("broker", &e.broker)] {
        if cal.measured.cpus > 0 && c.per_node.cores > u64::from(cal.measured.cpus) {
            out.push(format!(
                "each {name} node needs {} cores, more than the {} CPUs the calibration was \
                 measured on: the model assumes CPU cost scales linearly across cores",
                c.per_node.cores, cal.measured.cpus
            ));
        }
    }
    if w.tls_share < 1.0 {
        out.push(
            "relay costs of plain (non-TLS) clients are charged at the TLS rate: the calibration \
             has no plain relay figure (conservative)"
                .to_string(),
        );
    }
    if w.pubsub
        .as_ref()
        .is_some_and(|ps| ps.subscribers < ps.topics)
    {
        out.push(format!(
            "fewer subscribers than topics: a message reaches {} subscribers on average",
            fmt_num(w.fan_out)
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// Output

/// Everything `--json` prints.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    pub inputs: Inputs<'a>,
    pub calibration: CalibrationInfo<'a>,
    pub proxy: &'a ComponentEstimate,
    pub broker: &'a ComponentEstimate,
    pub warnings: &'a [String],
}

/// The workload with its derived rates.
#[derive(Debug, Serialize)]
pub struct Inputs<'a> {
    #[serde(flatten)]
    pub workload: &'a Workload,
    pub deliveries_per_s: f64,
    pub pingreqs_per_s: f64,
}

/// The calibration used and where it came from.
#[derive(Debug, Serialize)]
pub struct CalibrationInfo<'a> {
    pub source: &'a str,
    #[serde(flatten)]
    pub calibration: &'a Calibration,
}

/// The `--json` report.
pub fn render_json(
    w: &Workload,
    source: &str,
    cal: &Calibration,
    e: &Estimate,
    warnings: &[String],
) -> String {
    let report = Report {
        inputs: Inputs {
            workload: w,
            deliveries_per_s: w.deliveries_per_s(),
            pingreqs_per_s: w.pingreqs_per_s(),
        },
        calibration: CalibrationInfo {
            source,
            calibration: cal,
        },
        proxy: &e.proxy,
        broker: &e.broker,
        warnings,
    };
    // Serialising plain structs of finite numbers and strings cannot fail;
    // fall back to an empty object rather than panic.
    let mut s = serde_json::to_string_pretty(&report).unwrap_or_else(|_| "{}".to_string());
    s.push('\n');
    s
}

/// A count or rate for people: 1,234,567 / 123 / 12.3 / 1.23.
fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if !x.is_finite() {
        x.to_string()
    } else if a >= 999.5 {
        let digits = format!("{:.0}", a);
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if x < 0.0 { format!("-{out}") } else { out }
    } else if a >= 99.95 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else if a >= 9.995 {
        format!("{x:.1}")
    } else if a >= 0.01 {
        format!("{x:.2}")
    } else {
        format!("{x:.4}")
    }
}

/// Memory given in MiB, in the unit that reads best.
fn fmt_mib(mib: f64) -> String {
    if mib < 1.0 {
        format!("{} KiB", fmt_num(mib * 1024.0))
    } else if mib < 1024.0 {
        format!("{} MiB", fmt_num(mib))
    } else if mib < 1024.0 * 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{:.2} TiB", mib / 1024.0 / 1024.0)
    }
}

fn fmt_cores(n: u64) -> String {
    match n {
        1 => "1 core".to_string(),
        2..1000 => format!("{n} cores"),
        _ => format!("{} cores", fmt_num(to_f64(n))),
    }
}

fn fmt_payload(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else {
        fmt_mib(to_f64(bytes) / 1024.0 / 1024.0)
    }
}

fn render_component(out: &mut String, name: &str, c: &ComponentEstimate, w: &Workload) {
    let (title, sized) = if c.nodes > 1 {
        (
            format!(
                "{} nodes, each sized for one lost ({} carrying the load)",
                c.nodes, c.per_node.live_nodes
            ),
            "one node, one lost",
        )
    } else {
        ("1 node: no redundancy".to_string(), "the node")
    };
    let node = |label: &str, f: &NodeFigures| {
        format!(
            "  {label:<20} {}, {}  ({} cores busy, {} used)\n",
            fmt_cores(f.cores),
            fmt_mib(f.memory_mib),
            fmt_num(f.cpu_busy),
            fmt_mib(f.memory_used_mib)
        )
    };
    let _ = writeln!(out, "{name}: {title}");
    out.push_str(&node("size each node", &c.per_node));
    if c.nodes > 1 {
        out.push_str(&node(
            &format!("all {} up, each", c.nodes),
            &c.per_node_all_up,
        ));
    }
    out.push_str(&node("one node for all", &c.single_node));
    let _ = writeln!(
        out,
        "  {:<20} {} ({:.0} % of a node's cost)",
        "bottleneck",
        c.bottleneck.describe(),
        c.bottleneck_share * 100.0
    );
    let _ = writeln!(out, "  CPU of {sized}: rate × cost = cores busy");
    for t in &c.cpu {
        let _ = writeln!(
            out,
            "    {:<16} {:>10} × {:>8} µs = {:>7.3}",
            t.term.label(),
            format!("{}/s", fmt_num(t.rate_per_s)),
            fmt_num(t.unit_cpu_us),
            t.cores
        );
    }
    let _ = writeln!(
        out,
        "    {:<44}{:>7.3} / {} → {}",
        "total",
        c.per_node.cpu_busy,
        w.headroom,
        fmt_cores(c.per_node.cores)
    );
    let _ = writeln!(out, "  memory of {sized}: count × size");
    for t in &c.memory {
        if t.term == Term::BaseMemory {
            let _ = writeln!(out, "    {:<16} {:>38}", t.term.label(), fmt_mib(t.mib));
        } else {
            let _ = writeln!(
                out,
                "    {:<16} {:>10} × {:>8} KiB = {:>10}",
                t.term.label(),
                fmt_num(t.count),
                fmt_num(t.unit_kib),
                fmt_mib(t.mib)
            );
        }
    }
    let _ = writeln!(
        out,
        "    {:<44}{:>11} / {} → {}",
        "total",
        fmt_mib(c.per_node.memory_used_mib),
        w.headroom,
        fmt_mib(c.per_node.memory_mib)
    );
    if let Some(s) = &c.reconnect_storm {
        let time = match s.seconds_at_spare {
            Some(t) => format!("≈ {} s on the survivors' spare cores", fmt_num(t)),
            None => "the survivors have no spare cores (--headroom 1)".to_string(),
        };
        let _ = writeln!(
            out,
            "  {:<20} {} clients reconnect: {} CPU-s, {time}",
            "losing a node",
            fmt_num(s.clients),
            fmt_num(s.cpu_seconds)
        );
    }
    let _ = writeln!(out);
}

/// The human-readable report.
pub fn render_text(
    w: &Workload,
    source: &str,
    cal: &Calibration,
    e: &Estimate,
    warnings: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Workload");
    let _ = writeln!(
        out,
        "  connections          {}, {:.0} % over TLS",
        fmt_num(to_f64(w.connections)),
        w.tls_share * 100.0
    );
    if let Some(ps) = &w.pubsub {
        let _ = writeln!(
            out,
            "  publishers           {} × {} msg/s; {} subscribers over {} topic{}",
            fmt_num(to_f64(ps.publishers)),
            fmt_num(ps.rate_per_publisher),
            fmt_num(to_f64(ps.subscribers)),
            fmt_num(to_f64(ps.topics)),
            if ps.topics == 1 { "" } else { "s" }
        );
    }
    let _ = writeln!(
        out,
        "  messages             {} published/s × fan-out {} = {} deliveries/s",
        fmt_num(w.publish_rate),
        fmt_num(w.fan_out),
        fmt_num(w.deliveries_per_s())
    );
    let _ = writeln!(
        out,
        "  payload, QoS         {}, QoS {}",
        fmt_payload(w.payload_bytes),
        w.qos.level()
    );
    let _ = writeln!(
        out,
        "  new connections      {}/s{}",
        fmt_num(w.new_connections_per_s),
        if w.new_connections_default {
            " (default: each client reconnects once an hour)"
        } else {
            ""
        }
    );
    if w.keep_alive_s > 0.0 {
        let _ = writeln!(
            out,
            "  keep-alive           {} s: {} PINGREQ/s and as many PINGRESP/s",
            fmt_num(w.keep_alive_s),
            fmt_num(w.pingreqs_per_s())
        );
    } else {
        let _ = writeln!(out, "  keep-alive           off");
    }
    let _ = writeln!(
        out,
        "  headroom             the load may use {:.0} % of a node's cores and memory",
        w.headroom * 100.0
    );
    let _ = writeln!(
        out,
        "  nodes                {} proxy, {} broker; {} GiB per core",
        w.proxy_nodes,
        w.broker_nodes,
        fmt_num(w.gib_per_core)
    );
    let _ = writeln!(out);
    let m = &cal.measured;
    let _ = writeln!(out, "Calibration          {source}");
    let _ = writeln!(out, "  measured by        {}", m.command);
    let _ = writeln!(
        out,
        "  on                 {}, {} CPUs ({}), mqttlb {}",
        m.date, m.cpus, m.cpu_model, m.mqttlb_version
    );
    let _ = writeln!(out);
    render_component(&mut out, "Proxy", &e.proxy, w);
    render_component(&mut out, "Broker (mqttlb broker)", &e.broker, w);
    if !warnings.is_empty() {
        let _ = writeln!(out, "Notes");
        for n in warnings {
            let _ = writeln!(out, "  - {n}");
        }
        let _ = writeln!(out);
    }
    let _ = writeln!(
        out,
        "OS limits for this load: mqttlb doctor --connections {:.0}",
        e.proxy.per_node.connections.ceil()
    );
    out
}

/// Calibration, workload, estimate, report.
pub fn run(args: &EstimateArgs) -> Result<String, EstimateError> {
    let (source, cal) = load_calibration(args.calibration.as_deref())?;
    let w = Workload::from_args(args)?;
    let e = estimate(&w, &cal)?;
    let warnings = warnings(&w, &cal, &e);
    Ok(if args.json {
        render_json(&w, &source, &cal, &e, &warnings)
    } else {
        render_text(&w, &source, &cal, &e, &warnings)
    })
}

/// Run `mqttlb estimate`; returns the exit code.
pub fn main(args: EstimateArgs) -> u8 {
    use std::io::Write as _;
    match run(&args) {
        Ok(report) => {
            let mut stdout = std::io::stdout().lock();
            if stdout
                .write_all(report.as_bytes())
                .and_then(|()| stdout.flush())
                .is_ok()
            {
                0
            } else {
                EXIT_FAILED
            }
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "mqttlb estimate: {e}");
            EXIT_USAGE
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
mod tests {
    use super::*;

    /// Round numbers, to check the arithmetic by hand.
    fn round() -> Calibration {
        Calibration {
            measured: Measured {
                command: "test".into(),
                date: "2026-01-01T00:00:00Z".into(),
                mqttlb_version: "0.1.0".into(),
                cpu_model: "test".into(),
                cpus: 64,
                payload_bytes: 100,
            },
            proxy: ProxyCosts {
                tls_connect_cpu_us: 1000.0,
                plain_connect_cpu_us: 100.0,
                relay_cpu_us_per_packet: 10.0,
                relay_cpu_ns_per_byte: 10.0,
                rss_base_mib: 10.0,
                rss_per_tls_connection_kib: 16.0,
                rss_per_plain_connection_kib: 8.0,
            },
            broker: BrokerCosts {
                cpu_us_per_publish_in: 5.0,
                cpu_us_per_delivery: 4.0,
                qos1_extra_cpu_us: 2.0,
                connect_cpu_us: 50.0,
                rss_base_mib: 20.0,
                rss_per_connection_kib: 10.0,
            },
        }
    }

    fn workload() -> Workload {
        Workload {
            connections: 1000,
            publish_rate: 100_000.0,
            fan_out: 2.0,
            payload_bytes: 100,
            new_connections_per_s: 10.0,
            new_connections_default: false,
            keep_alive_s: 0.0,
            headroom: 0.5,
            ..Workload::default()
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    fn cpu(c: &ComponentEstimate, term: Term) -> f64 {
        c.cpu.iter().find(|t| t.term == term).unwrap().cores
    }

    #[test]
    fn proxy_by_hand() {
        let e = estimate(&workload(), &round()).unwrap();
        let p = &e.proxy;
        // 2 nodes, sized for 1: 10 conn/s × 1000 µs = 0.01; (100k + 200k)
        // packets × 10 µs = 3.0; QoS 0: no acks; no keep-alive.
        assert!(close(cpu(p, Term::Handshakes), 0.01));
        assert!(close(cpu(p, Term::RelayPublish), 3.0));
        assert_eq!(cpu(p, Term::RelayAcks), 0.0);
        assert_eq!(cpu(p, Term::KeepAlive), 0.0);
        assert!(close(p.per_node.cpu_busy, 3.01));
        assert_eq!(p.per_node.cores, 7); // 3.01 / 0.5 = 6.02
        assert_eq!(p.per_node_all_up.cores, 4); // 1.505 / 0.5 = 3.01
        // 10 MiB + 1000 × 16 KiB + 2000 × 4 KiB = 33.4375 MiB; / 0.5.
        assert!(close(p.per_node.memory_used_mib, 33.4375));
        assert!(close(p.per_node.memory_mib, 66.875));
        assert_eq!(p.bottleneck, Bottleneck::MessageRelay);
        // Losing one of two: 500 clients × 1000 µs = 0.5 CPU-s on
        // 7 − 3.01 spare cores.
        let s = p.reconnect_storm.as_ref().unwrap();
        assert!(close(s.clients, 500.0));
        assert!(close(s.cpu_seconds, 0.5));
        assert!(close(s.seconds_at_spare.unwrap(), 0.5 / 3.99));
    }

    #[test]
    fn broker_by_hand_with_mesh() {
        let e = estimate(&workload(), &round()).unwrap();
        let b = &e.broker;
        // 3 nodes, sized for 2: publish in 50k × 5 = 0.25; deliveries
        // 100k × 4 = 0.4; mesh 50k forwards × (5 + 4) = 0.45; connects
        // 5/s × 50 = 0.00025.
        assert!(close(cpu(b, Term::PublishIn), 0.25));
        assert!(close(cpu(b, Term::Deliveries), 0.4));
        assert!(close(cpu(b, Term::Mesh), 0.45));
        assert!(close(cpu(b, Term::Connects), 0.00025));
        assert_eq!(cpu(b, Term::QosAcks), 0.0);
        assert!(close(b.per_node.cpu_busy, 1.10025));
        assert_eq!(b.per_node.cores, 3);
        // 20 MiB + 500 × 10 KiB + 500 × 4 KiB.
        assert!(close(
            b.per_node.memory_used_mib,
            20.0 + 500.0 * 14.0 / 1024.0
        ));
        // One node for everything: no mesh.
        assert!(close(b.single_node.cpu_busy, 0.5 + 0.8 + 0.0005));
        assert_eq!(b.bottleneck, Bottleneck::MessageRouting);
    }

    #[test]
    fn qos_by_hand() {
        let mut w = workload();
        w.qos = Qos::AtLeastOnce;
        let e = estimate(&w, &round()).unwrap();
        // Acks carry no payload: 10 µs − 100 B × 10 ns = 9 µs, 300k/s.
        assert!(close(cpu(&e.proxy, Term::RelayAcks), 2.7));
        // One exchange costs 2 / 2 = 1 µs: (50k + 100k) exchanges; the
        // mesh adds two per forward: 50k × (9 + 2).
        assert!(close(cpu(&e.broker, Term::QosAcks), 0.15));
        assert!(close(cpu(&e.broker, Term::Mesh), 0.55));
        w.qos = Qos::ExactlyOnce;
        let e = estimate(&w, &round()).unwrap();
        assert!(close(cpu(&e.proxy, Term::RelayAcks), 8.1));
        assert!(close(cpu(&e.broker, Term::QosAcks), 0.45));
    }

    #[test]
    fn payload_and_tls_share() {
        let mut w = workload();
        w.payload_bytes = 1100; // 10 µs + 1000 B × 10 ns = 20 µs
        w.tls_share = 0.5; // handshakes (1000 + 100) / 2; memory (16 + 8) / 2
        let e = estimate(&w, &round()).unwrap();
        assert!(close(cpu(&e.proxy, Term::RelayPublish), 6.0));
        assert!(close(cpu(&e.proxy, Term::Handshakes), 0.0055));
        assert!(close(e.proxy.memory[1].mib, 1000.0 * 12.0 / 1024.0));
    }

    #[test]
    fn keep_alive_pings() {
        let mut w = workload();
        w.publish_rate = 0.0;
        w.keep_alive_s = 10.0; // 100 PINGREQ/s
        let e = estimate(&w, &round()).unwrap();
        assert!(close(cpu(&e.proxy, Term::KeepAlive), 200.0 * 9.0 / 1e6));
        // Broker sized for 2 nodes: 50/s × (5 + 4).
        assert!(close(cpu(&e.broker, Term::KeepAlive), 50.0 * 9.0 / 1e6));
    }

    #[test]
    fn more_connections_more_memory() {
        let mut last = (0.0, 0.0);
        for n in [0, 1, 1000, 100_000, 10_000_000] {
            let w = Workload {
                connections: n,
                ..workload()
            };
            let e = estimate(&w, &round()).unwrap();
            let now = (e.proxy.per_node.memory_mib, e.broker.per_node.memory_mib);
            assert!(
                now.0 > last.0 && now.1 > last.1,
                "{n}: {now:?} after {last:?}"
            );
            last = now;
        }
    }

    #[test]
    fn higher_qos_costs_more() {
        let cost = |qos| {
            let e = estimate(&Workload { qos, ..workload() }, &round()).unwrap();
            (e.proxy.per_node.cpu_busy, e.broker.per_node.cpu_busy)
        };
        let (q0, q1, q2) = (
            cost(Qos::AtMostOnce),
            cost(Qos::AtLeastOnce),
            cost(Qos::ExactlyOnce),
        );
        assert!(q1.0 > q0.0 && q2.0 > q1.0);
        assert!(q1.1 > q0.1 && q2.1 > q1.1);
    }

    #[test]
    fn zero_load_costs_only_the_base() {
        let w = Workload {
            connections: 0,
            publish_rate: 0.0,
            new_connections_per_s: 0.0,
            keep_alive_s: 60.0,
            ..workload()
        };
        let e = estimate(&w, &round()).unwrap();
        for c in [&e.proxy, &e.broker] {
            assert_eq!(c.per_node.cpu_busy, 0.0);
            assert_eq!(c.per_node.cores, 1);
            assert_eq!(c.bottleneck, Bottleneck::BaseFootprint);
            assert!(c.bottleneck_share > 0.999);
        }
        assert!(close(e.proxy.per_node.memory_used_mib, 10.0));
        assert!(close(e.broker.per_node.memory_used_mib, 20.0));
    }

    #[test]
    fn bottleneck_names_the_dominant_term() {
        let idle = Workload {
            connections: 1_000_000,
            publish_rate: 0.0,
            new_connections_per_s: 0.0,
            ..workload()
        };
        let e = estimate(&idle, &round()).unwrap();
        assert_eq!(e.proxy.bottleneck, Bottleneck::ConnectionMemory);
        assert_eq!(e.broker.bottleneck, Bottleneck::ConnectionMemory);

        let storm = Workload {
            new_connections_per_s: 5000.0,
            publish_rate: 10.0,
            ..workload()
        };
        let e = estimate(&storm, &round()).unwrap();
        assert_eq!(e.proxy.bottleneck, Bottleneck::Handshakes);
        assert_eq!(e.broker.bottleneck, Bottleneck::Connects);

        // Publish acks and PUBLISH relay add up: together they outweigh
        // handshakes that each of them alone would not.
        let cal = round();
        let mixed = Workload {
            publish_rate: 1000.0,
            fan_out: 1.0,
            qos: Qos::AtLeastOnce,
            new_connections_per_s: 30.0, // 0.03 cores vs 2000 × 10 + 2000 × 9
            ..workload()
        };
        let e = estimate(&mixed, &cal).unwrap();
        assert!(cpu(&e.proxy, Term::Handshakes) > cpu(&e.proxy, Term::RelayPublish));
        assert_eq!(e.proxy.bottleneck, Bottleneck::MessageRelay);

        // Many nodes, no local subscribers: the mesh dominates the broker.
        let fan_in = Workload {
            fan_out: 0.0,
            broker_nodes: 9,
            ..workload()
        };
        let e = estimate(&fan_in, &round()).unwrap();
        assert_eq!(e.broker.bottleneck, Bottleneck::Mesh);
    }

    #[test]
    fn nodes_share_the_load_and_one_may_be_lost() {
        let w = Workload {
            proxy_nodes: 1,
            broker_nodes: 1,
            ..workload()
        };
        let e = estimate(&w, &round()).unwrap();
        assert_eq!(e.proxy.per_node, e.proxy.per_node_all_up);
        assert_eq!(e.proxy.per_node, e.proxy.single_node);
        assert!(e.proxy.reconnect_storm.is_none());
        assert_eq!(cpu(&e.broker, Term::Mesh), 0.0);
        let notes = warnings(&w, &round(), &e);
        assert!(notes.iter().any(|n| n.contains("--proxy-nodes")));
        assert!(notes.iter().any(|n| n.contains("--broker-nodes")));

        let e = estimate(&workload(), &round()).unwrap();
        for c in [&e.proxy, &e.broker] {
            assert!(c.per_node.cpu_busy > c.per_node_all_up.cpu_busy);
            assert!(c.per_node.memory_mib > c.per_node_all_up.memory_mib);
            assert_eq!(c.per_node.live_nodes + 1, c.nodes);
        }
        assert!(warnings(&workload(), &round(), &e).is_empty());
    }

    #[test]
    fn cores_round_up_without_float_noise() {
        assert_eq!(cores_for(0.0), 1);
        assert_eq!(cores_for(1.4 / 0.7), 2);
        assert_eq!(cores_for(2.01), 3);
        assert_eq!(cores_for(f64::MAX), u64::MAX);
    }

    #[test]
    fn relay_cost_below_the_calibration_payload_never_goes_negative() {
        let mut cal = round();
        cal.proxy.relay_cpu_ns_per_byte = 1e6;
        assert_eq!(relay_unit_us(&cal, 0.0), 0.0);
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        let mut cal = round();
        cal.proxy.rss_per_tls_connection_kib = f64::MAX;
        let w = Workload {
            connections: u64::MAX,
            ..workload()
        };
        assert!(matches!(
            estimate(&w, &cal),
            Err(EstimateError::Overflow("proxy"))
        ));
        let w = Workload {
            connections: u64::MAX,
            publish_rate: f64::MAX,
            fan_out: f64::MAX,
            new_connections_per_s: f64::MAX,
            ..workload()
        };
        assert!(estimate(&w, &round()).is_err());
    }

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

    fn args() -> EstimateArgs {
        EstimateArgs {
            connections: None,
            tls_share: 1.0,
            publish_rate: None,
            fan_out: None,
            publishers: None,
            subscribers: None,
            rate_per_publisher: None,
            topics: None,
            payload: 64,
            qos: 0,
            new_connections_per_second: None,
            keep_alive: Duration::from_secs(60),
            headroom: 0.7,
            proxy_nodes: 2,
            broker_nodes: 3,
            gib_per_core: 4.0,
            calibration: None,
            json: false,
        }
    }

    #[test]
    fn defaults_match_the_flags() {
        assert_eq!(Workload::from_args(&args()).unwrap(), Workload::default());
    }

    #[test]
    fn publishers_and_subscribers_give_rate_and_fan_out() {
        let a = EstimateArgs {
            publishers: Some(100),
            subscribers: Some(1000),
            rate_per_publisher: Some(2.0),
            topics: Some(10),
            ..args()
        };
        let w = Workload::from_args(&a).unwrap();
        assert_eq!(
            (w.publish_rate, w.fan_out, w.deliveries_per_s()),
            (200.0, 100.0, 20_000.0)
        );
        assert_eq!(w.connections, 1100);
        assert!(close(w.new_connections_per_s, 1100.0 / 3600.0));
        let w = Workload::from_args(&EstimateArgs { topics: None, ..a }).unwrap();
        assert_eq!(w.fan_out, 1000.0);
    }

    #[test]
    fn bad_values_name_the_flag() {
        type Case = (&'static str, fn(&mut EstimateArgs));
        let cases: [Case; 17] = [
            ("--tls-share", |a| a.tls_share = 1.5),
            ("--tls-share", |a| a.tls_share = f64::NAN),
            ("--headroom", |a| a.headroom = 0.0),
            ("--headroom", |a| a.headroom = 1.01),
            ("--publish-rate", |a| a.publish_rate = Some(-1.0)),
            ("--fan-out", |a| a.fan_out = Some(f64::INFINITY)),
            ("--qos", |a| a.qos = 3),
            ("--payload", |a| a.payload = MAX_PAYLOAD + 1),
            ("--keep-alive", |a| {
                a.keep_alive = Duration::from_secs(70_000)
            }),
            ("--proxy-nodes", |a| a.proxy_nodes = 0),
            ("--broker-nodes", |a| a.broker_nodes = 0),
            ("--gib-per-core", |a| a.gib_per_core = 0.0),
            ("--new-connections-per-second", |a| {
                a.new_connections_per_second = Some(f64::NAN);
            }),
            ("--topics", |a| a.topics = Some(3)),
            ("--publishers", |a| a.publishers = Some(3)),
            ("--publishers", |a| {
                (a.publishers, a.subscribers) = (Some(1), Some(1));
                (a.rate_per_publisher, a.publish_rate) = (Some(1.0), Some(1.0));
            }),
            ("--rate-per-publisher", |a| {
                (a.publishers, a.subscribers) = (Some(u64::MAX), Some(1));
                a.rate_per_publisher = Some(f64::MAX);
            }),
        ];
        for (flag, break_it) in cases {
            let mut a = args();
            break_it(&mut a);
            let e = Workload::from_args(&a).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{flag}: ")), "{flag}: {e}");
        }
    }

    #[test]
    fn flag_parsers() {
        assert_eq!(parse_payload("256B"), Ok(256));
        assert_eq!(parse_payload("1KiB"), Ok(1024));
        assert_eq!(parse_payload("64"), Ok(64));
        assert!(parse_payload("lots").is_err());
        assert!(parse_payload("1GiB").is_err());
        assert_eq!(parse_keep_alive("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_keep_alive("0s"), Ok(Duration::ZERO));
        assert!(parse_keep_alive("1d").is_err());
        assert!(parse_share("1.5").is_err());
        assert!(parse_share("NaN").is_err());
        assert_eq!(parse_share(" 0.25 "), Ok(0.25));
        assert!(parse_headroom("0").is_err());
        assert!(parse_rate("-1").is_err());
        assert!(parse_rate("inf").is_err());
    }

    #[test]
    fn number_formatting() {
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(27.78), "27.8");
        assert_eq!(fmt_num(1234567.4), "1,234,567");
        assert_eq!(fmt_num(999.6), "1,000");
        assert_eq!(fmt_num(100.0), "100");
        assert_eq!(fmt_num(15.0), "15");
        assert_eq!(fmt_num(0.5), "0.50");
        assert_eq!(fmt_mib(0.5), "512 KiB");
        assert_eq!(fmt_mib(2048.0), "2.00 GiB");
    }

    #[test]
    fn reports_render_every_figure() {
        let (w, cal) = (workload(), round());
        let e = estimate(&w, &cal).unwrap();
        let text = render_text(&w, "cal.toml", &cal, &e, &[]);
        assert!(text.contains("Calibration          cal.toml"), "{text}");
        assert!(text.contains("size each node       7 cores"), "{text}");
        assert!(text.contains("message relay"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&w, "cal.toml", &cal, &e, &[])).unwrap();
        assert_eq!(json["proxy"]["per_node"]["cores"], 7);
        assert_eq!(json["proxy"]["bottleneck"], "message_relay");
        assert_eq!(json["inputs"]["deliveries_per_s"], 200_000.0);
        assert_eq!(json["inputs"]["qos"], 0);
        assert_eq!(json["calibration"]["measured"]["command"], "test");
    }
}
