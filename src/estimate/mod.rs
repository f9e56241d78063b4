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
//!   - the relay, by wake-ups ([`relay`] explains the mechanism): every
//!     connection's streams (a publisher's PUBLISHes and their acks, a
//!     subscriber's deliveries and its acks, PINGREQ and PINGRESP) wake
//!     the proxy `r/(1 + r·τ)` times a second each; those connection
//!     wake-ups `E` wake its threads `E/(1 + E·τₜ)` times (per thread,
//!     the node's threads sharing `E`); CPU is thread wake-ups ×
//!     `thread_wakeup_cpu_us` + `E × wakeup_cpu_us` + packets ×
//!     `packet_cpu_us` + payload bytes × `byte_cpu_ns`. Publishers,
//!     subscribers and per-publisher rates come from `--publishers`,
//!     `--subscribers`, `--rate-per-publisher`, `--topics`; with
//!     `--publish-rate` every connection is taken to publish and receive
//!     an equal share (the most wake-ups those rates allow). There is no
//!     plain-relay coefficient, so every packet is charged at the TLS rate
//!     (conservative when `s < 1`).
//! * **Proxy memory** (per node): `rss_base + N/k × (s·rss_per_tls +
//!   (1−s)·rss_per_plain) + 2·N/k × 4 KiB` of kernel socket memory (two
//!   sockets per client, about 4 KiB each when idle: `struct tcp_sock`,
//!   inode, file, epoll entry; charged to the container's memory cgroup
//!   but not part of RSS).
//! * **Broker CPU** (per node; `e = a × cpu_us_per_ack`, the
//!   acknowledgements of one exchange):
//!   - wake-ups: the same shape as the proxy's over what the broker reads
//!     (PUBLISHes, its subscribers' acknowledgements, PINGREQs), with its
//!     own costs and coalescing times;
//!   - connects: `C/k × connect_cpu_us`;
//!   - publish in: `M/k × cpu_us_per_publish_in`;
//!   - deliveries: `D/k × cpu_us_per_delivery`;
//!   - QoS acknowledgements: `(M + D)/k × e`;
//!   - mesh: `M·(k−1)/k × (publish_in + delivery + 2·e)`: in a full
//!     mesh every node forwards what its own clients publish to each of
//!     the `k−1` others, which parse it like a local publish, so every
//!     node handles every message whatever the node count;
//!   - keep-alive: `N/K/k × (publish_in + delivery)` (PINGREQ read,
//!     PINGRESP written).
//! * **Broker memory** (per node): `rss_base + N/k × rss_per_connection +
//!   N/k × 4 KiB` (one kernel socket per client).
//!
//! * **Losing a broker node** (`docs/sizing.md`, "Losing a node: the
//!   reconnect storm"): its `L = N/n` clients come back through the `P`
//!   proxies, whose handshakes are not paced: each takes them at
//!   `a = spare cores / handshake cost`. Each proxy's admission lets
//!   `r = --max-connect-rate` through (per replica: the brokers get
//!   `P·r`, or `P·a` unpaced), each survivor taking its share `÷ (n−1)` on
//!   top of its steady load. Each proxy's queue (fluid, FIFO) would grow
//!   to `Q = L/P·(1 − r/a)`, its last client waiting `Q/r`; it carries
//!   `min(size, r·timeout)` of them through, the rest are refused and
//!   retry. A waiter holds its connection, one socket and
//!   [`WAITER_EXTRA_BYTES`].
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
//! or [`render_json`]. Files: `workload` (the inputs), `calibration`,
//! `figures` (what an estimate says: terms, bottlenecks, node and
//! component figures), `model` (the arithmetic and the warnings), `render`
//! (the reports); `model` and `render` both read `workload` and `figures`,
//! and `render` never calls into `model`; `num` (number conversion and
//! formatting) sits below them all.

mod calibration;
mod figures;
pub mod fit;
mod model;
mod num;
pub mod relay;
mod render;
mod workload;

pub use calibration::{
    BrokerCosts, Calibration, DEFAULT_CALIBRATION, DEFAULT_CALIBRATION_SOURCE, FitPoint, FitRecord,
    Measured, ProxyCosts, Wakeups, load_calibration,
};
pub use figures::{
    Bottleneck, ComponentEstimate, CpuTerm, Estimate, MemTerm, NodeFigures, PacedStorm, QueueLimit,
    ReconnectStorm, StormQueue, Term,
};
pub use model::{KERNEL_SOCKET_KIB, WAITER_EXTRA_BYTES, estimate, warnings};
pub use render::{CalibrationInfo, Inputs, Report, render_json, render_text};
pub use workload::{PubSub, Qos, Workload};

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigErrors;
use crate::config::defaults;
use num::{to_f64, to_u64};
use workload::CHURN_PERIOD_S;

/// Exit code of bad flags and invalid calibration files.
const EXIT_USAGE: u8 = 64;
/// Exit code when the report could not be written.
const EXIT_FAILED: u8 = 1;

/// Largest MQTT keep-alive (a 16-bit number of seconds).
const MAX_KEEP_ALIVE_S: u64 = 65_535;
/// Largest MQTT packet (variable byte integer limit), hence payload.
const MAX_PAYLOAD: u64 = 268_435_455;

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
    /// The broker pool's `max_connect_rate` on each proxy replica: new
    /// connections per second it sends to the brokers; 0 for none. Sizes
    /// the reconnect storm of a lost broker node.
    #[arg(long, value_name = "RATE", default_value_t = 0, value_parser = parse_connect_rate)]
    pub max_connect_rate: u32,
    /// The pool's `queue.size`: clients that may wait for admission on
    /// each replica (0: none wait).
    #[arg(long, value_name = "N", default_value_t = defaults::QUEUE_SIZE, value_parser = parse_queue_size)]
    pub queue_size: usize,
    /// The pool's `queue.timeout`: the longest wait for admission.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_queue_timeout)]
    pub queue_timeout: Duration,
    /// Calibration file (TOML) written by `mqttlb bench calibrate`
    /// [default: the one built in, measured on this project's 2-CPU machine].
    #[arg(long, value_name = "FILE")]
    pub calibration: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
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

fn check_connect_rate(v: u32) -> Result<u32, String> {
    if v <= defaults::MAX_RATE {
        Ok(v)
    } else {
        Err(format!(
            "at most {} connections per second (0 = no limit), as max_connect_rate; got {v}",
            defaults::MAX_RATE
        ))
    }
}

fn check_queue_size(v: usize) -> Result<usize, String> {
    if to_u64(v) <= defaults::MAX_QUEUE_SIZE {
        Ok(v)
    } else {
        Err(format!(
            "at most {} (0 = no waiting), as queue.size; got {v}",
            defaults::MAX_QUEUE_SIZE
        ))
    }
}

fn check_queue_timeout(d: Duration) -> Result<Duration, String> {
    if (defaults::MIN_QUEUE_TIMEOUT..=defaults::MAX_QUEUE_TIMEOUT).contains(&d) {
        Ok(d)
    } else {
        Err(format!(
            "must be {} to {}, as queue.timeout; got {}",
            humantime::format_duration(defaults::MIN_QUEUE_TIMEOUT),
            humantime::format_duration(defaults::MAX_QUEUE_TIMEOUT),
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

fn parse_connect_rate(s: &str) -> Result<u32, String> {
    let v = s
        .trim()
        .parse::<u32>()
        .map_err(|e| format!("expected connections per second, 0 or more, got {s:?} ({e})"))?;
    check_connect_rate(v)
}

fn parse_queue_size(s: &str) -> Result<usize, String> {
    let v = s
        .trim()
        .parse::<usize>()
        .map_err(|e| format!("expected a count of clients, 0 or more, got {s:?} ({e})"))?;
    check_queue_size(v)
}

fn parse_queue_timeout(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration such as 10s or 1m, got {s:?} ({e})"))?;
    check_queue_timeout(d)
}

fn parse_keep_alive(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration such as 60s or 5m, got {s:?} ({e})"))?;
    check_keep_alive(d)
}

// ---------------------------------------------------------------------------
// Workload from the flags

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
            max_connect_rate: checked(
                "--max-connect-rate",
                a.max_connect_rate,
                check_connect_rate,
            )?,
            queue_size: to_u64(checked("--queue-size", a.queue_size, check_queue_size)?),
            queue_timeout_s: checked("--queue-timeout", a.queue_timeout, check_queue_timeout)?
                .as_secs_f64(),
        })
    }
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
    use model::tests::close;

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
            max_connect_rate: 0,
            queue_size: 10_000,
            queue_timeout: Duration::from_secs(10),
            calibration: None,
            json: false,
        }
    }

    /// `EstimateArgs` as clap fills them in.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: EstimateArgs,
    }

    fn parse(flags: &[&str]) -> Result<EstimateArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(std::iter::once("estimate").chain(flags.iter().copied()))
            .map(|c| c.args)
    }

    #[test]
    fn clap_defaults_are_the_config_defaults() {
        let w = Workload::from_args(&parse(&[]).unwrap()).unwrap();
        assert_eq!(w, Workload::default());
        assert_eq!(w.max_connect_rate, 0);
        assert_eq!(w.queue_size, 10_000);
        assert_eq!(w.queue_timeout_s, 10.0);
        let a = parse(&[
            "--max-connect-rate",
            "500",
            "--queue-size",
            "0",
            "--queue-timeout",
            "250ms",
        ])
        .unwrap();
        let w = Workload::from_args(&a).unwrap();
        assert_eq!(
            (w.max_connect_rate, w.queue_size, w.queue_timeout_s),
            (500, 0, 0.25)
        );
        for (flag, value) in [
            ("--max-connect-rate", "1000001"),
            ("--max-connect-rate", "-1"),
            ("--max-connect-rate", "fast"),
            ("--queue-size", "1000001"),
            ("--queue-timeout", "50ms"),
            ("--queue-timeout", "6m"),
            ("--queue-timeout", "soon"),
        ] {
            let e = parse(&[&format!("{flag}={value}")])
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains(flag), "{flag} {value}: {e}");
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
        let cases: [Case; 20] = [
            ("--max-connect-rate", |a| a.max_connect_rate = 1_000_001),
            ("--queue-size", |a| a.queue_size = 1_000_001),
            ("--queue-timeout", |a| {
                a.queue_timeout = Duration::from_millis(99);
            }),
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
}
