//! `mqttlb bench`: an MQTT load generator, as emqtt-bench is for EMQX
//! users, built on the project's own codec ([`crate::mqtt::codec`]) and
//! tokio-rustls.
//!
//! Scenarios: `conn` (open N connections at a rate, hold them with
//! keep-alive pings), `pub`, `sub`, `pubsub` (subscribers first, then
//! publishers, in one process, so loss is exact) and `handshake` (C
//! concurrent loops of connect → TLS → CONNECT/CONNACK → DISCONNECT →
//! close). Every message carries publisher id, sequence number and send
//! time ([`stats::stamp`]): the summary counts lost, duplicated and
//! reordered messages and end-to-end latency (HDR histograms). A progress
//! line goes to stderr every second; `--json` prints the summary on
//! stdout. The generator reports its own CPU use, so a run limited by the
//! generator says so. `calibrate` measures this machine for `mqttlb
//! estimate` ([`calibrate`]).
//!
//! Exit code: 0 when the run completed with no error and no loss, 1 when
//! clients failed or messages were lost, 64 for bad arguments.

pub mod calibrate;
pub mod net;
pub mod outage;
pub mod report;
pub mod scenario;
pub mod session;
pub mod stats;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::mqtt::ProtocolVersion;
use crate::proxy_protocol::ProxyProtocol;
use net::{Connector, TlsOptions};
pub use report::Summary;
use report::{Connections, Generator, Handshakes, Messages, Reconnect};
use scenario::{Run, RunOptions};
use stats::{Counters, STAMP_LEN};

const EXIT_OK: u8 = 0;
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Open --count connections at --connect-rate and hold them.
    Conn,
    /// --count publishers at --rate messages/s each.
    Pub,
    /// --count subscribers on --filter.
    Sub,
    /// --subscribers first, then --publishers; exact loss accounting.
    Pubsub,
    /// --concurrency loops of connect, CONNECT/CONNACK, DISCONNECT, close.
    Handshake,
    /// Measure this machine for `mqttlb estimate` (writes --out).
    Calibrate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    #[value(name = "3.1.1")]
    V311,
    #[value(name = "5.0")]
    V5,
}

/// `--proxy-protocol`: the PROXY header sent before anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProxyHeader {
    Off,
    V1,
    V2,
}

/// Flags of `mqttlb bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// conn | pub | sub | pubsub | handshake | calibrate
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker or proxy to load, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub target: String,
    /// MQTT protocol version.
    #[arg(long, value_enum, default_value = "3.1.1")]
    pub protocol: Protocol,
    /// Speak TLS to the target.
    #[arg(long)]
    pub tls: bool,
    /// CA file (PEM) that signed the server certificate.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// Accept any server certificate (still a full handshake).
    #[arg(long)]
    pub insecure: bool,
    /// Server name sent as SNI [default: the target's host].
    #[arg(long)]
    pub sni: Option<String>,
    /// Client certificate (PEM chain) for mutual TLS.
    #[arg(long)]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// ALPN protocol to offer (repeatable), e.g. mqtt.
    #[arg(long)]
    pub alpn: Vec<String>,
    /// TLS session resumption across a client's reconnects.
    #[arg(long)]
    pub tls_resumption: bool,
    /// Send a PROXY header (v1 or v2, naming the connection's own
    /// addresses) before anything else, as a cloud balancer does in front
    /// of a listener with `proxy_protocol`.
    #[arg(long, value_enum, default_value = "off")]
    pub proxy_protocol: ProxyHeader,
    /// Source addresses: list or IPv4 range, e.g. 127.0.0.2-127.0.0.50
    /// (each gives a full ephemeral port range).
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Clients (conn, pub, sub).
    #[arg(short = 'c', long, default_value_t = 10)]
    pub count: usize,
    /// Publishers (pubsub).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers (pubsub).
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Concurrent loops (handshake).
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 500.0)]
    pub connect_rate: f64,
    /// Messages per second per publisher.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Messages per publisher, then it stops [default: until --duration].
    #[arg(long)]
    pub messages: Option<u64>,
    /// Measured phase, after every client connected (or subscribed).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// After publishers stop: how long subscribers may still receive.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub inflight: u16,
    /// Payload bytes (at least 24: the stamp).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Publish topic; %i is the client index.
    #[arg(long, default_value = "bench/%i")]
    pub topic: String,
    /// Subscription filter; %i is the client index [default: --topic].
    #[arg(long)]
    pub filter: Option<String>,
    /// Client id prefix (ids are PREFIX + c|p|s|h + index).
    #[arg(long, default_value = "bench-")]
    pub client_id_prefix: String,
    /// conn: reconnect at once, without back-off, whenever a connection
    /// ends, fails or is refused; report reconnect attempts, CONNACK
    /// refusals by code and every outage (from a lost connection until all
    /// --count clients are connected again). The measured phase ends after
    /// --duration or at SIGINT/SIGTERM, and the summary is printed.
    #[arg(long)]
    pub reconnect: bool,
    /// Persistent sessions (clean session off; MQTT 5 expiry 1 h).
    #[arg(long)]
    pub persistent: bool,
    #[arg(long)]
    pub username: Option<String>,
    #[arg(long)]
    pub password: Option<String>,
    /// Keep-alive of every client.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub keep_alive: Duration,
    /// Deadline for TCP, TLS and the CONNACK (and SUBACK).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Worker threads [default: logical CPUs].
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// calibrate: calibration file to write.
    #[arg(long, default_value = "calibration.toml")]
    pub out: PathBuf,
}

/// Run `mqttlb bench`; returns the exit code.
pub fn main(args: BenchArgs) -> u8 {
    if let Err(e) = validate(&args) {
        eprintln!("mqttlb bench: {e}");
        return EXIT_USAGE;
    }
    // Before any thread starts: raise the open-file limit and grow the
    // descriptor table for the run, so connecting never waits for the
    // kernel to grow it (sys::reserve_fd_table).
    if let Ok(l) = crate::sys::raise_nofile() {
        let want = (clients(&args) as u64)
            .saturating_mul(2)
            .saturating_add(256);
        let _ = crate::sys::reserve_fd_table(want.min(l.soft));
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("mqttlb bench: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    if args.scenario == Scenario::Calibrate {
        return runtime.block_on(calibrate::run(&args));
    }
    match runtime.block_on(run(&args, threads)) {
        Ok(summary) => {
            if args.json {
                match serde_json::to_string_pretty(&summary) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("mqttlb bench: {e}"),
                }
            } else {
                print!("{}", summary.text());
            }
            if summary.clean() {
                EXIT_OK
            } else {
                EXIT_FAILED
            }
        }
        Err(e) => {
            eprintln!("mqttlb bench: {e}");
            EXIT_FAILED
        }
    }
}

fn validate(a: &BenchArgs) -> Result<(), String> {
    if a.payload < STAMP_LEN {
        return Err(format!(
            "--payload {}: at least {STAMP_LEN} bytes (the message stamp)",
            a.payload
        ));
    }
    if a.payload > 16 * 1024 * 1024 {
        return Err("--payload: at most 16 MiB".into());
    }
    for (flag, v) in [("--rate", a.rate), ("--connect-rate", a.connect_rate)] {
        if !(v.is_finite() && v > 0.0 && v <= 10_000_000.0) {
            return Err(format!(
                "{flag} {v}: expected a positive number up to 10000000"
            ));
        }
    }
    for (flag, v) in [
        ("--count", a.count),
        ("--publishers", a.publishers),
        ("--subscribers", a.subscribers),
        ("--concurrency", a.concurrency),
    ] {
        if v == 0 || v > 10_000_000 {
            return Err(format!("{flag} {v}: expected 1 to 10000000"));
        }
    }
    for (flag, d) in [
        ("--duration", a.duration),
        ("--drain", a.drain),
        ("--keep-alive", a.keep_alive),
        ("--connect-timeout", a.connect_timeout),
    ] {
        if d > Duration::from_secs(7 * 24 * 3600) {
            return Err(format!("{flag}: at most a week"));
        }
    }
    if a.keep_alive.as_secs() > u64::from(u16::MAX) {
        return Err("--keep-alive: at most 65535s".into());
    }
    crate::mqtt::topic::validate_name(&scenario::expand(&a.topic, 0))
        .map_err(|e| format!("--topic {:?}: {e}", a.topic))?;
    if let Some(f) = &a.filter {
        crate::mqtt::topic::validate_filter(&scenario::expand(f, 0))
            .map_err(|e| format!("--filter {f:?}: {e}"))?;
    }
    if a.reconnect && a.scenario != Scenario::Conn {
        return Err("--reconnect is for the conn scenario".into());
    }
    if a.tls && a.cafile.is_none() && !a.insecure {
        return Err("--tls needs --cafile or --insecure".into());
    }
    if let Some(spec) = &a.source_ips {
        net::parse_sources(spec)?;
    }
    if a.cert.is_some() != a.key.is_some() {
        return Err("--cert and --key go together".into());
    }
    Ok(())
}

/// Resolve `host:port` (first address).
async fn resolve(target: &str) -> Result<(SocketAddr, String), String> {
    let host = target
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| format!("--target {target:?}: expected host:port"))?;
    let addr = tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("--target {target:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--target {target:?}: no address"))?;
    Ok((addr, host))
}

/// Clients the run opens at once (for the limit checks).
fn clients(a: &BenchArgs) -> usize {
    match a.scenario {
        Scenario::Conn | Scenario::Pub | Scenario::Sub => a.count,
        Scenario::Pubsub => a.publishers.saturating_add(a.subscribers),
        Scenario::Handshake => a.concurrency,
        Scenario::Calibrate => 0,
    }
}

/// Warn when the open-file limit or the ephemeral port range cannot carry
/// the requested connections (after raising the soft limit to the hard
/// one, as the proxy does).
fn preflight(clients: usize, sources: usize) -> Vec<String> {
    let mut w = Vec::new();
    let need = clients as u64 + 64;
    if let Ok(l) = crate::sys::raise_nofile() {
        if l.soft < need {
            w.push(format!(
                "open-file limit {} < {need} needed for {clients} connections: raise it (ulimit -n, LimitNOFILE=, docker --ulimit nofile=); see mqttlb doctor",
                l.soft
            ));
        }
    }
    if let Some((lo, hi)) = read_port_range() {
        let range = u64::from(hi.saturating_sub(lo)) + 1;
        let per_source = (clients as u64).div_ceil(sources.max(1) as u64);
        if per_source > range {
            w.push(format!(
                "{per_source} connections per source address to one target, but net.ipv4.ip_local_port_range gives {range} ports ({lo}-{hi}): use --source-ips (e.g. 127.0.0.2-127.0.0.50) or widen the range"
            ));
        }
    }
    w
}

fn read_port_range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text
        .split_whitespace()
        .filter_map(|v| v.parse::<u16>().ok());
    Some((it.next()?, it.next()?))
}

async fn run(a: &BenchArgs, threads: usize) -> Result<Summary, String> {
    let (target, host) = resolve(&a.target).await?;
    let sources: Vec<IpAddr> = match &a.source_ips {
        Some(spec) => net::parse_sources(spec)?,
        None => Vec::new(),
    };
    let mut warnings = preflight(clients(a), sources.len());
    for w in &warnings {
        eprintln!("warning: {w}");
    }
    let tls = a.tls.then(|| TlsOptions {
        cafile: a.cafile.clone(),
        insecure: a.insecure,
        sni: a.sni.clone(),
        cert: a.cert.clone(),
        key: a.key.clone(),
        alpn: a.alpn.clone(),
        resumption: a.tls_resumption,
    });
    let connector = Connector::new(target, &host, tls.as_ref(), sources, a.connect_timeout)?
        .with_proxy_header(match a.proxy_protocol {
            ProxyHeader::Off => ProxyProtocol::Off,
            ProxyHeader::V1 => ProxyProtocol::V1,
            ProxyHeader::V2 => ProxyProtocol::V2,
        });
    let protocol = match a.protocol {
        Protocol::V311 => ProtocolVersion::V311,
        Protocol::V5 => ProtocolVersion::V5,
    };
    let run = Arc::new(Run {
        connector,
        protocol,
        counters: Counters::default(),
        connect_latency: stats::Latency::new(),
        message_latency: stats::Latency::new(),
        stop_publishing: CancellationToken::new(),
        stop: CancellationToken::new(),
        opts: RunOptions {
            client_id_prefix: a.client_id_prefix.clone(),
            clean: !a.persistent,
            keep_alive: a.keep_alive,
            connect_timeout: a.connect_timeout,
            qos: a.qos,
            inflight: a.inflight,
            payload: a.payload,
            rate: a.rate,
            messages: a.messages,
            topic: a.topic.clone(),
            filter: a.filter.clone().unwrap_or_else(|| a.topic.clone()),
            username: a.username.clone(),
            password: a.password.clone(),
        },
        published: Default::default(),
        received: Default::default(),
        outages: a
            .reconnect
            .then(|| outage::Watch::new(a.count as u64, Instant::now())),
    });
    let started_unix_s = stats::unix_ns() as f64 / 1e9;
    let cpu_start = cpu_time::ProcessTime::try_now().ok();
    let started = Instant::now();
    // --reconnect runs end early on a stop signal, with their summary.
    let stop_signal = CancellationToken::new();
    if a.reconnect {
        let s = stop_signal.clone();
        tokio::spawn(async move {
            crate::signals::wait_for_stop(|| async {}, || {}).await;
            s.cancel();
        });
    }
    let progress = (!a.quiet).then(|| tokio::spawn(progress(run.clone(), started)));
    let tasks = TaskTracker::new();
    let measured = drive(a, &run, &tasks, &stop_signal).await;
    let open_at_end = Counters::get(&run.counters.connected);
    run.stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    if let Some(p) = progress {
        p.abort();
    }
    let elapsed = started.elapsed();
    let cpu_s = cpu_start
        .and_then(|c| c.try_elapsed().ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let cores_used = cpu_s / elapsed.as_secs_f64().max(1e-9);
    let saturated = cores_used > 0.85 * threads as f64;
    if saturated {
        warnings.push(format!(
            "the generator used {cores_used:.2} of {threads} cores: it limited this run; give it more cores or machines"
        ));
    }
    let c = &run.counters;
    let (expected, lost, duplicated, reordered) = accounting(a.scenario, &run);
    let secs = measured.as_secs_f64().max(1e-9);
    Ok(Summary {
        scenario: a.scenario,
        target: a.target.clone(),
        protocol: protocol.as_str(),
        tls: run.connector.is_tls(),
        qos: a.qos,
        payload_bytes: a.payload,
        elapsed_s: elapsed.as_secs_f64(),
        measured_s: measured.as_secs_f64(),
        connections: Connections {
            requested: clients(a),
            connected: Counters::get(&c.connects),
            open_at_end,
            dropped: Counters::get(&c.disconnected),
            connect_latency: run.connect_latency.summary(),
        },
        messages: Messages {
            published: Counters::get(&c.published),
            acked: Counters::get(&c.acked),
            received: Counters::get(&c.received),
            expected,
            lost,
            duplicated,
            reordered,
            publish_rate: Counters::get(&c.published) as f64 / secs,
            receive_rate: Counters::get(&c.received) as f64 / secs,
            latency: run.message_latency.summary(),
        },
        handshakes: Handshakes {
            completed: Counters::get(&c.handshakes),
            rate: Counters::get(&c.handshakes) as f64 / secs,
        },
        errors: c.errors().into_iter().collect(),
        refused_by_code: c.refusals(),
        reconnect: run.outages.as_ref().map(|w| Reconnect {
            started_unix_s,
            attempts: Counters::get(&c.reconnects),
            outages: w.report(),
        }),
        generator: Generator {
            threads,
            cpu_s,
            cores_used,
            saturated,
        },
        warnings,
    })
}

/// Start the clients of the scenario and run its phases; returns the
/// length of the measured phase.
async fn drive(
    a: &BenchArgs,
    run: &Arc<Run>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Duration {
    let pace = Duration::from_secs_f64(1.0 / a.connect_rate);
    match a.scenario {
        Scenario::Conn if a.reconnect => {
            let ramped = async {
                ramp(a.count, pace, tasks, |i| {
                    scenario::reconnecting_holder(run.clone(), i)
                })
                .await;
                let all = a.count as u64;
                settle(
                    run,
                    |c| Counters::get(&c.connected) >= all,
                    a.connect_timeout,
                )
                .await;
            };
            tokio::select! {
                _ = stop.cancelled() => return Duration::ZERO,
                _ = ramped => {}
            }
            let started = Instant::now();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = measure(run, a.duration, None) => {}
            }
            started.elapsed()
        }
        Scenario::Conn => {
            ramp(a.count, pace, tasks, |i| scenario::holder(run.clone(), i)).await;
            let all = a.count as u64;
            settle(
                run,
                |c| Counters::get(&c.connects) + c.total_errors() >= all,
                a.connect_timeout,
            )
            .await;
            measure(run, a.duration, None).await
        }
        Scenario::Sub => {
            ramp(a.count, pace, tasks, |i| {
                scenario::subscriber(run.clone(), i)
            })
            .await;
            measure(run, a.duration, None).await
        }
        Scenario::Pub => {
            ramp(a.count, pace, tasks, |i| {
                scenario::publisher(run.clone(), i, id32(i))
            })
            .await;
            let took = measure(run, a.duration, a.messages.map(|m| m * a.count as u64)).await;
            finish_publishing(run, a.drain).await;
            took
        }
        Scenario::Pubsub => {
            ramp(a.subscribers, pace, tasks, |i| {
                scenario::subscriber(run.clone(), i)
            })
            .await;
            let subs = a.subscribers as u64;
            settle(
                run,
                |c| Counters::get(&c.subscribed) + c.total_errors() >= subs,
                a.connect_timeout * 2,
            )
            .await;
            ramp(a.publishers, pace, tasks, |i| {
                scenario::publisher(run.clone(), i, id32(i))
            })
            .await;
            let took = measure(run, a.duration, a.messages.map(|m| m * a.publishers as u64)).await;
            finish_publishing(run, a.drain).await;
            drain(run, a.drain).await;
            took
        }
        Scenario::Handshake => {
            for lane in 0..a.concurrency {
                tasks.spawn(scenario::handshake_loop(run.clone(), lane, a.concurrency));
            }
            measure(run, a.duration, None).await
        }
        Scenario::Calibrate => Duration::ZERO,
    }
}

fn id32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// Spawn `n` clients, `pace` apart (ticks, not sleeps per client, so the
/// rate holds), unless the run is stopped.
async fn ramp<F, Fut>(n: usize, pace: Duration, tasks: &TaskTracker, mut client: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut ticks = tokio::time::interval(pace);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..n {
        ticks.tick().await;
        tasks.spawn(client(i));
    }
}

/// Wait (bounded) until `done` holds over the counters.
async fn settle(run: &Run, done: impl Fn(&Counters) -> bool, limit: Duration) {
    let end = Instant::now() + limit;
    while !done(&run.counters) && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The measured phase: `duration`, or until `messages` were published.
async fn measure(run: &Run, duration: Duration, messages: Option<u64>) -> Duration {
    let started = Instant::now();
    let end = started + duration;
    while Instant::now() < end {
        if messages.is_some_and(|m| Counters::get(&run.counters.published) >= m) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10).min(end - Instant::now())).await;
    }
    started.elapsed()
}

/// Stop publishers; give them `limit` to collect their acknowledgements.
async fn finish_publishing(run: &Run, limit: Duration) {
    run.stop_publishing.cancel();
    let end = Instant::now() + limit;
    while Instant::now() < end {
        let c = &run.counters;
        if run.opts.qos == 0 || Counters::get(&c.acked) >= Counters::get(&c.published) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Let deliveries in flight arrive: until nothing arrived for 300 ms, at
/// most `limit`.
async fn drain(run: &Run, limit: Duration) {
    let end = Instant::now() + limit;
    let mut last = Counters::get(&run.counters.received);
    let mut quiet_since = Instant::now();
    while Instant::now() < end && quiet_since.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = Counters::get(&run.counters.received);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
}

/// (expected, lost, duplicated, reordered) from what publishers sent and
/// subscribers saw. With publishers in this process the expectation is
/// exact: every publisher whose topic matches a subscriber's filter owes
/// it every message it sent. Without (`sub`), a publisher's highest
/// sequence number seen stands in for what it sent.
fn accounting(scenario: Scenario, run: &Run) -> (u64, u64, u64, u64) {
    let published = run.published.lock().unwrap_or_else(|p| p.into_inner());
    let received = run.received.lock().unwrap_or_else(|p| p.into_inner());
    let (mut expected, mut unique, mut dups, mut reordered) = (0u64, 0u64, 0u64, 0u64);
    for (filter, trackers) in received.iter() {
        for t in trackers.values() {
            unique += t.unique;
            dups += t.duplicates;
            reordered += t.reordered;
        }
        if scenario == Scenario::Pubsub {
            expected += published
                .values()
                .filter(|(topic, _)| crate::mqtt::topic::matches(filter, topic))
                .map(|(_, sent)| sent)
                .sum::<u64>();
        } else {
            expected += trackers.values().map(|t| t.next).sum::<u64>();
        }
    }
    (expected, expected.saturating_sub(unique), dups, reordered)
}

/// One line per second on stderr: rates, totals, errors by kind.
async fn progress(run: Arc<Run>, started: Instant) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    let c = &run.counters;
    let (mut last_pub, mut last_recv, mut last_conn) = (0u64, 0u64, 0u64);
    loop {
        ticks.tick().await;
        let (p, r, n) = (
            Counters::get(&c.published),
            Counters::get(&c.received),
            Counters::get(&c.connects),
        );
        let errors: Vec<String> = c
            .errors()
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        eprintln!(
            "[{:>4}s] conn {} open ({}/s, {} total) | pub {}/s ({}) | recv {}/s ({}) | errors {}",
            started.elapsed().as_secs(),
            Counters::get(&c.connected),
            n - last_conn,
            n,
            p - last_pub,
            p,
            r - last_recv,
            r,
            if errors.is_empty() {
                "0".into()
            } else {
                errors.join(" ")
            }
        );
        (last_pub, last_recv, last_conn) = (p, r, n);
    }
}
