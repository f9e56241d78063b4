//! `mqttlb bench calibrate`: measure what the proxy and `mqttlb broker`
//! cost on this machine, for `mqttlb estimate`.
//!
//! It starts a broker and a proxy (TLS and plain MQTT listeners) as child
//! processes of this binary on loopback, drives them with this process's
//! own load generator, and divides each child's CPU time (user + system,
//! from `/proc/PID/stat`) by the operations it did, and its resident memory
//! growth (`VmRSS`) by the connections it held:
//!
//! 1. idle: resident memory of both processes;
//! 2. `handshake` on the TLS listener, then on the plain one: proxy (and
//!    broker) CPU per connection;
//! 3. the relay at twelve message rates and connection shapes (many slow
//!    publishers, few fast ones, fan-in to one or two subscribers,
//!    fan-out 1, 1 KiB payloads, QoS 1; [`RELAY_POINTS`]): each run's CPU
//!    is sampled only once every client is connected (the proxy's own
//!    metrics say so) and publishing has settled, and the relay model of
//!    `estimate::relay` is fitted to them (`estimate::fit`) for the proxy
//!    and for the broker; the file records each run, the fitted value and
//!    the error;
//! 4. 4,000 idle TLS clients, then 4,000 plain subscribers: memory per
//!    connection of the proxy and the broker.
//!
//! The proxy runs one worker thread pinned to the first CPU, the broker
//! and this process (the load generator) on the second (`taskset`, where
//! the machine has two CPUs): the setup `scripts/sizing-check` checks the
//! estimate in. Linux only (it reads `/proc`). Each step lasts `--duration`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::time::Instant;

use super::{BenchArgs, Summary};
use crate::config::raw::{RawListener, RawPool};
use crate::estimate::fit::{self, Fit};
use crate::estimate::relay::{self, Shape};
use crate::estimate::{
    BrokerCosts, Calibration, FitPoint, FitRecord, Measured, ProxyCosts, PubSub, Qos, Term,
    Wakeups, Workload,
};

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    args: BenchArgs,
}

/// Connections held by the memory steps: enough that the handshakes'
/// passing memory at the ramp is a small share of the growth (with 1,000
/// the per-connection figure read 20 % above the marginal cost that
/// `scripts/sizing-check` and `scripts/bench-compare` see at 2,000-4,000).
const HELD: usize = 4000;

/// One relay run: publishers at a rate each, subscribers spread over
/// `topics` (1: each receives everything; = publishers: each follows one),
/// and `idle` connections held beside them.
#[derive(Debug, Clone, Copy)]
struct RelayPoint {
    name: &'static str,
    publishers: u64,
    subscribers: u64,
    rate: f64,
    topics: u64,
    qos: u8,
    payload: u64,
    idle: u64,
}

#[allow(clippy::too_many_arguments)]
const fn point(
    name: &'static str,
    publishers: u64,
    subscribers: u64,
    rate: f64,
    topics: u64,
    qos: u8,
    payload: u64,
    idle: u64,
) -> RelayPoint {
    RelayPoint {
        name,
        publishers,
        subscribers,
        rate,
        topics,
        qos,
        payload,
        idle,
    }
}

/// The relay runs, 500 to 14,000 msg/s published: unlike the runs
/// `scripts/sizing-check` checks the estimate against, so that check is on
/// workloads the fit never saw. The slow publishers are 2,000 or more, so
/// that each wake-up finds its connection's state cold, as in production.
const RELAY_POINTS: [RelayPoint; 13] = [
    point("many slow, 500/s", 2000, 2, 0.25, 1, 0, 64, 0),
    point("many slow, 1.5k/s", 3000, 1, 0.5, 1, 0, 64, 0),
    point("many slow, 3k/s", 2500, 2, 1.2, 1, 0, 64, 0),
    point("many slow, 8k/s", 2000, 1, 4.0, 1, 0, 64, 0),
    point("many slow, 14k/s", 2000, 1, 7.0, 1, 0, 64, 0),
    point("few fast, 500/s", 1, 1, 500.0, 1, 0, 64, 0),
    point("few fast, 2k/s + idle", 4, 4, 500.0, 4, 0, 64, 2000),
    point("few fast, 12k/s", 8, 8, 1500.0, 8, 0, 64, 0),
    point("few fast, 6k/s fan-in + idle", 2, 1, 3000.0, 1, 0, 64, 2000),
    point("few fast, 4k/s, 1 KiB", 4, 4, 1000.0, 4, 0, 1024, 0),
    point("many slow, 2k/s, 1 KiB", 2000, 2, 1.0, 1, 0, 1024, 0),
    point("many slow, 3k/s, QoS 1", 2500, 2, 1.2, 1, 1, 64, 0),
    point("few fast, 4k/s, QoS 1 + idle", 4, 4, 1000.0, 4, 1, 64, 2000),
];

pub async fn run(args: &BenchArgs) -> u8 {
    match calibrate(args).await {
        Ok(c) => {
            let text = match toml::to_string_pretty(&c) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("mqttlb bench calibrate: {e}");
                    return 1;
                }
            };
            let header = "# mqttlb calibration: costs measured on one machine by `mqttlb bench calibrate`.\n# `mqttlb estimate --calibration FILE` uses it; see docs/sizing.md.\n";
            if let Err(e) = std::fs::write(&args.out, format!("{header}{text}")) {
                eprintln!("mqttlb bench calibrate: {}: {e}", args.out.display());
                return 1;
            }
            println!("{text}");
            eprintln!("wrote {}", args.out.display());
            0
        }
        Err(e) => {
            eprintln!("mqttlb bench calibrate: {e}");
            1
        }
    }
}

/// A child process of this binary with its CPU and memory readings.
struct Proc {
    child: Child,
    pid: u32,
}

impl Proc {
    /// Start this binary with `args`, on CPU `cpu` when given (`taskset`
    /// execs it, so the child's pid is the program's).
    async fn spawn(args: &[&str], log: &Path, cpu: Option<usize>) -> Result<Proc, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = on_cpu(exe, cpu)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(out))
            .spawn()
            .map_err(|e| format!("start mqttlb {}: {e}", args.join(" ")))?;
        let pid = child.id();
        Ok(Proc { child, pid })
    }

    /// CPU seconds so far: the sum of every thread's on-CPU time from
    /// `/proc/PID/task/*/schedstat` (nanoseconds; the proxy's and broker's
    /// threads live as long as the process), or user + system clock ticks
    /// from `/proc/PID/stat` where schedstat is missing.
    fn cpu_s(&self) -> Result<f64, String> {
        if let Some(s) = schedstat_s(self.pid) {
            return Ok(s);
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map_err(|e| format!("/proc/{}/stat: {e}", self.pid))?;
        let after = stat
            .rsplit_once(") ")
            .map(|(_, r)| r)
            .ok_or("bad /proc stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let get = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .ok_or_else(|| "bad /proc stat".to_string())
        };
        // Fields 14 and 15 of stat(5), counted from the state (field 3).
        Ok((get(11)? + get(12)?) / clock_ticks())
    }

    /// Start this binary with `args` as a generator: stdout to `out`,
    /// stderr to `log`, on CPU `cpu` when given; the caller waits for it.
    fn spawn_to(
        args: &[&str],
        log: &Path,
        out: &Path,
        cpu: Option<usize>,
    ) -> Result<Generator, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let stdout = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
        on_cpu(exe, cpu)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(err))
            .spawn()
            .map(|child| Generator { child })
            .map_err(|e| format!("start mqttlb {}: {e}", args.join(" ")))
    }

    /// Voluntary context switches of all its threads so far: how often a
    /// thread went to sleep (and was woken again).
    fn thread_wakeups(&self) -> Result<f64, String> {
        let dir = format!("/proc/{}/task", self.pid);
        let mut total = 0u64;
        for task in std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))? {
            let path = task
                .map_err(|e| format!("{dir}: {e}"))?
                .path()
                .join("status");
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            total += text
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(total as f64)
    }

    /// Resident set size in KiB.
    fn rss_kib(&self) -> Result<f64, String> {
        Proc::rss_of(self.pid)
            .map(|kib| kib as f64)
            .ok_or_else(|| format!("/proc/{}/status: no VmRSS", self.pid))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn schedstat_s(pid: u32) -> Option<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        let text = std::fs::read_to_string(path).ok()?;
        ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(ns as f64 / 1e9)
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("free port: {e}"))
}

async fn wait_port(port: u16) -> Result<(), String> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("nothing listens on 127.0.0.1:{port} after 10 s"))
}

/// A command running `exe`, on CPU `cpu` when given (`taskset` execs it,
/// so the child's pid is the program's).
fn on_cpu(exe: std::path::PathBuf, cpu: Option<usize>) -> Command {
    match cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

/// A load generator child; killed if dropped before it ends.
struct Generator {
    child: Child,
}

impl Generator {
    fn wait(mut self) -> Result<std::process::ExitStatus, String> {
        self.child.wait().map_err(|e| format!("generator: {e}"))
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What one relay run measured, per second of its window.
#[derive(Debug, Clone, Copy)]
struct RelaySample {
    proxy_cores: f64,
    broker_cores: f64,
    proxy_thread_wakeups: f64,
    broker_thread_wakeups: f64,
    /// As the generator counted it over its whole run.
    publish_rate: f64,
}

/// Connections the proxy counts as active (`mqttlb_connections_active`,
/// summed over listeners), from its admin listener.
async fn active_connections(admin_port: u16) -> Option<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", admin_port))
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("mqttlb_connections_active{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// Whether to pin the proxy and the rest to CPUs of their own: with two
/// CPUs or more and `taskset` (util-linux) at hand.
fn pinning() -> Option<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let taskset = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    (cpus >= 2 && taskset).then_some(())
}

/// What one step cost each child.
struct Cost {
    summary: Summary,
    proxy_cpu: f64,
    broker_cpu: f64,
    proxy_peak_kib: f64,
    broker_peak_kib: f64,
}

struct Lab {
    proxy: Proc,
    broker: Proc,
    dir: std::path::PathBuf,
    pin: Option<()>,
    admin_port: u16,
    tls_port: u16,
    plain_port: u16,
    ca: String,
    duration: Duration,
    threads: usize,
}

impl Lab {
    /// Start a fresh broker and proxy (TLS and plain listeners) on free
    /// loopback ports; certificates are in `dir`.
    async fn start(
        dir: &Path,
        duration: Duration,
        threads: usize,
        pin: Option<()>,
    ) -> Result<Lab, String> {
        let (broker_port, tls_port, plain_port) = (free_port()?, free_port()?, free_port()?);
        let admin_port = free_port()?;
        let p = |f: &str| dir.join(f).display().to_string();
        let broker = format!("127.0.0.1:{broker_port}");
        let mut raw = crate::config::raw::RawConfig::default();
        raw.listener.push(
            RawListener::mqtt("tls", &format!("127.0.0.1:{tls_port}"), "b")
                .with_tls(&p("server.pem"), &p("server.key")),
        );
        raw.listener.push(RawListener::mqtt(
            "plain",
            &format!("127.0.0.1:{plain_port}"),
            "b",
        ));
        raw.pool
            .insert("b".into(), RawPool::of(&[("broker", &broker)]));
        raw.limits.worker_threads = Some(1);
        raw.admin = Some(crate::config::raw::RawAdmin {
            listen: Some(format!("127.0.0.1:{admin_port}")),
            ..Default::default()
        });
        raw.log = Some(crate::config::raw::RawLog {
            access: Some("off".into()),
            ..Default::default()
        });
        let config = raw.to_toml();
        std::fs::write(dir.join("proxy.toml"), config).map_err(|e| format!("proxy.toml: {e}"))?;
        let broker_listen = format!("127.0.0.1:{broker_port}");
        let broker = Proc::spawn(
            &["broker", "--listen", &broker_listen],
            &dir.join("broker.log"),
            pin.map(|_| 1),
        )
        .await?;
        wait_port(broker_port).await?;
        let proxy_config = p("proxy.toml");
        let proxy = Proc::spawn(
            &["proxy", "--config", &proxy_config],
            &dir.join("proxy.log"),
            pin.map(|_| 0),
        )
        .await?;
        wait_port(tls_port).await?;
        wait_port(plain_port).await?;
        // Let both settle before anything is read off them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        wait_port(admin_port).await?;
        Ok(Lab {
            proxy,
            broker,
            dir: dir.to_path_buf(),
            pin,
            admin_port,
            tls_port,
            plain_port,
            ca: p("ca.pem"),
            duration,
            threads,
        })
    }

    /// Run the generator with `flags`, measuring both children.
    async fn step(&self, what: &str, flags: &[&str]) -> Result<Cost, String> {
        let duration = format!("{}ms", self.duration.as_millis());
        let mut argv: Vec<&str> =
            vec!["bench", "--quiet", "--duration", &duration, "--drain", "1s"];
        argv.extend_from_slice(flags);
        let args = Wrap::try_parse_from(&argv)
            .map_err(|e| format!("{what}: {e}"))?
            .args;
        let (p0, b0) = (self.proxy.cpu_s()?, self.broker.cpu_s()?);
        let peak_p = Arc::new(AtomicU64::new(0));
        let peak_b = Arc::new(AtomicU64::new(0));
        let sampler = {
            let (pp, bp) = (self.proxy.pid, self.broker.pid);
            let (peak_p, peak_b) = (peak_p.clone(), peak_b.clone());
            tokio::spawn(async move {
                let mut t = tokio::time::interval(Duration::from_millis(100));
                loop {
                    t.tick().await;
                    for (pid, peak) in [(pp, &peak_p), (bp, &peak_b)] {
                        let p = Proc::rss_of(pid).unwrap_or(0);
                        peak.fetch_max(p, Ordering::Relaxed);
                    }
                }
            })
        };
        let summary = super::run(&args, self.threads).await;
        sampler.abort();
        let summary = summary.map_err(|e| format!("{what}: {e}"))?;
        let failures: u64 = summary.errors.values().sum();
        if failures > 0 || summary.messages.lost > 0 {
            return Err(format!(
                "{what}: the run was not clean ({failures} errors, {} lost): {:?}",
                summary.messages.lost, summary.errors
            ));
        }
        let cost = Cost {
            proxy_cpu: self.proxy.cpu_s()? - p0,
            broker_cpu: self.broker.cpu_s()? - b0,
            proxy_peak_kib: peak_p.load(Ordering::Relaxed) as f64,
            broker_peak_kib: peak_b.load(Ordering::Relaxed) as f64,
            summary,
        };
        eprintln!(
            "calibrate: {what}: proxy {:.2} CPU-s, broker {:.2} CPU-s",
            cost.proxy_cpu, cost.broker_cpu
        );
        Ok(cost)
    }

    /// One relay run: the clients connect, publishing settles, then the
    /// proxy's and broker's CPU and the proxy's thread wake-ups are
    /// sampled over `duration`.
    async fn relay_step(&self, p: &RelayPoint) -> Result<RelaySample, String> {
        // Idle clients first, held by a generator of their own until the
        // run is over.
        let idle = if p.idle > 0 {
            let flags: Vec<String> = [
                "bench",
                "--quiet",
                "conn",
                "--tls",
                "--client-id-prefix",
                "idle-",
            ]
            .iter()
            .map(|s| (*s).to_string())
            .chain(self.tls())
            .chain([
                "-c".into(),
                p.idle.to_string(),
                "--connect-rate".into(),
                "2000".into(),
                "--duration".into(),
                "600s".into(),
            ])
            .collect();
            let out = self.dir.join("idle.out");
            let g = Proc::spawn_to(
                &refs(&flags),
                &self.dir.join("idle.log"),
                &out,
                self.pin.map(|_| 1),
            )?;
            self.wait_connected(p.idle).await?;
            Some(g)
        } else {
            None
        };
        let clients = p.idle + p.publishers + p.subscribers;
        let offered = p.publishers as f64 * p.rate;
        // Connect the publishers over about one period, so their phases
        // spread (bounded: the handshakes must not crowd the window).
        let connect_rate = offered.clamp(100.0, 2000.0);
        let settle = (1.0 / p.rate).max(2.0) + 1.0;
        let window = self.duration.as_secs_f64();
        let total = (p.publishers + p.subscribers) as f64 / connect_rate + 5.0 + settle + window;
        let filter = if p.topics == 1 { "cal/#" } else { "cal/%i" };
        let flags: Vec<String> = [
            "bench", "--quiet", "--json", "--drain", "1s", "pubsub", "--tls", "--topic", "cal/%i",
            "--filter", filter,
        ]
        .iter()
        .map(|s| (*s).to_string())
        .chain(self.tls())
        .chain([
            "--publishers".into(),
            p.publishers.to_string(),
            "--subscribers".into(),
            p.subscribers.to_string(),
            "--rate".into(),
            p.rate.to_string(),
            "--qos".into(),
            p.qos.to_string(),
            "--payload".into(),
            p.payload.to_string(),
            "--connect-rate".into(),
            format!("{connect_rate:.0}"),
            "--duration".into(),
            format!("{:.0}ms", total * 1000.0),
        ])
        .collect();
        // The generator is a process of its own beside the broker, as in
        // `scripts/sizing-check`: how it batches its sends shapes what the
        // proxy sees, so the calibration and the check must share it.
        let out = self.dir.join("relay.json");
        let generator = Proc::spawn_to(
            &refs(&flags),
            &self.dir.join("generator.log"),
            &out,
            self.pin.map(|_| 1),
        )?;
        let sample = self.sample(clients, settle, window).await;
        drop(idle);
        let status = tokio::task::spawn_blocking(move || generator.wait())
            .await
            .map_err(|e| format!("{}: {e}", p.name))??;
        let sample = sample.map_err(|e| format!("{}: {e}", p.name))?;
        if !status.success() {
            return Err(format!("{}: the generator failed ({status})", p.name));
        }
        let summary: serde_json::Value = std::fs::read_to_string(&out)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .ok_or_else(|| format!("{}: no summary from the generator", p.name))?;
        let field = |path: &str| summary.pointer(path);
        let lost = field("/messages/lost")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(u64::MAX);
        let errors = field("/errors").cloned().unwrap_or_default();
        let failures: u64 = errors.as_object().map_or(0, |m| {
            m.values().filter_map(serde_json::Value::as_u64).sum()
        });
        if failures > 0 || lost > 0 {
            return Err(format!(
                "{}: the run was not clean ({failures} errors, {lost} lost): {errors}",
                p.name
            ));
        }
        let publish_rate = field("/messages/publish_rate")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0);
        eprintln!(
            "calibrate: relay, {}: proxy {:.3} cores, {:.0} thread wake-ups/s; broker {:.3} cores",
            p.name, sample.proxy_cores, sample.proxy_thread_wakeups, sample.broker_cores
        );
        Ok(RelaySample {
            publish_rate,
            ..sample
        })
    }

    /// Wait until `clients` connections are through the proxy, `settle`
    /// seconds more, then measure over `window` seconds.
    async fn sample(&self, clients: u64, settle: f64, window: f64) -> Result<RelaySample, String> {
        self.wait_connected(clients).await?;
        tokio::time::sleep(Duration::from_secs_f64(settle)).await;
        let (p0, b0, w0, bw0) = (
            self.proxy.cpu_s()?,
            self.broker.cpu_s()?,
            self.proxy.thread_wakeups()?,
            self.broker.thread_wakeups()?,
        );
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(window)).await;
        let dt = started.elapsed().as_secs_f64();
        Ok(RelaySample {
            proxy_cores: (self.proxy.cpu_s()? - p0) / dt,
            broker_cores: (self.broker.cpu_s()? - b0) / dt,
            proxy_thread_wakeups: (self.proxy.thread_wakeups()? - w0) / dt,
            broker_thread_wakeups: (self.broker.thread_wakeups()? - bw0) / dt,
            publish_rate: 0.0,
        })
    }

    /// Wait until the proxy counts `clients` connections.
    async fn wait_connected(&self, clients: u64) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let active = active_connections(self.admin_port).await.unwrap_or(0.0);
            if active >= clients as f64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {active} of {clients} clients connected after 120 s"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn tls(&self) -> [String; 4] {
        [
            "--target".into(),
            format!("127.0.0.1:{}", self.tls_port),
            "--cafile".into(),
            self.ca.clone(),
        ]
    }
}

impl Proc {
    fn rss_of(pid: u32) -> Option<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

fn per(total_s: f64, ops: u64) -> f64 {
    if ops == 0 {
        0.0
    } else {
        total_s * 1e6 / ops as f64
    }
}

async fn calibrate(args: &BenchArgs) -> Result<Calibration, String> {
    if !Path::new("/proc/self/stat").exists() {
        return Err("calibrate reads /proc: it runs on Linux only".into());
    }
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    crate::certs::DevCerts::generate(&[], crate::certs::CLIENT_CN)
        .and_then(|c| c.write(dir.path()))
        .map_err(|e| format!("certificates: {e}"))?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Decided once, before this process pins itself: afterwards it sees
    // one CPU, and its children would inherit that CPU.
    let pin = pinning();
    if pin.is_some() {
        // The generator (this process, every thread) on the second CPU,
        // beside the broker; the proxy gets the first to itself.
        let pinned = Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !pinned {
            eprintln!("calibrate: warning: could not pin the generator to CPU 1");
        }
    }
    let duration = args
        .duration
        .clamp(Duration::from_secs(1), Duration::from_secs(120));
    let lab = Lab::start(dir.path(), duration, threads, pin).await?;
    let proxy_base = lab.proxy.rss_kib()?;
    let broker_base = lab.broker.rss_kib()?;

    let tls = lab.tls();
    let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
    let plain_target = format!("127.0.0.1:{}", lab.plain_port);
    let plain = ["--target", plain_target.as_str()];
    let with = |base: &[&str], target: &[&str], extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(target.iter())
            .chain(extra.iter())
            .map(|s| (*s).to_string())
            .collect()
    };

    // 2. Connections.
    let hs_tls = with(&["handshake", "--tls", "--concurrency", "8"], &tls, &[]);
    let hs_tls = lab.step("TLS handshakes", &refs(&hs_tls)).await?;
    let hs_plain = with(&["handshake", "--concurrency", "8"], &plain, &[]);
    let hs_plain = lab.step("plain connects", &refs(&hs_plain)).await?;

    // 3. The relay at several rates and shapes.
    // Each on a fresh proxy and broker, as `scripts/sizing-check` runs
    // them (a process's history, thousands of handshakes before, changes
    // what the same relay load costs it).
    drop(lab);
    let mut samples = Vec::with_capacity(RELAY_POINTS.len());
    for p in &RELAY_POINTS {
        let lab = Lab::start(dir.path(), duration, threads, pin).await?;
        samples.push(lab.relay_step(p).await?);
    }

    // 4. Memory per connection, each on fresh processes: memory a process
    //    freed is not always returned to the system, so an earlier step
    //    would hide the growth.
    let (idle_tls, tls_proxy_base, _) =
        memory_step(dir.path(), duration, threads, pin, true).await?;
    let (subs, plain_proxy_base, subs_broker_base) =
        memory_step(dir.path(), duration, threads, pin, false).await?;

    let relay = fit_relay(&samples)?;
    let held_n = HELD as f64;
    let costs = |f: &Fit, i: usize| f.costs.get(i).copied().unwrap_or(0.0);
    let wakeups = |f: &Fit, connections: bool| Wakeups {
        background_cpu_us_per_s: costs(f, 0),
        connection_cpu_us_per_s: if connections { costs(f, 3) } else { 0.0 },
        thread_wakeup_cpu_us: costs(f, 1),
        wakeup_cpu_us: costs(f, 2),
        coalesce_us: f.coalescing.stream * 1e6,
        thread_coalesce_us: f.coalescing.thread * 1e6,
    };
    let proxy = ProxyCosts {
        tls_connect_cpu_us: per(hs_tls.proxy_cpu, hs_tls.summary.handshakes.completed),
        plain_connect_cpu_us: per(hs_plain.proxy_cpu, hs_plain.summary.handshakes.completed),
        packet_cpu_us: costs(&relay.proxy, 4),
        byte_cpu_ns: costs(&relay.proxy, 5),
        rss_base_mib: proxy_base / 1024.0,
        rss_per_tls_connection_kib: ((idle_tls.proxy_peak_kib - tls_proxy_base) / held_n).max(0.0),
        rss_per_plain_connection_kib: ((subs.proxy_peak_kib - plain_proxy_base) / held_n).max(0.0),
        wakeups: wakeups(&relay.proxy, true),
    };
    let broker = BrokerCosts {
        cpu_us_per_publish_in: costs(&relay.broker, 3),
        cpu_us_per_delivery: costs(&relay.broker, 4),
        cpu_us_per_ack: costs(&relay.broker, 5),
        connect_cpu_us: per(hs_plain.broker_cpu, hs_plain.summary.handshakes.completed),
        rss_base_mib: broker_base / 1024.0,
        rss_per_connection_kib: ((subs.broker_peak_kib - subs_broker_base) / held_n).max(0.0),
        wakeups: wakeups(&relay.broker, false),
    };
    let measured = Measured {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        mqttlb_version: env!("CARGO_PKG_VERSION").to_string(),
        cpu_model: cpu_model(),
        cpus: u32::try_from(threads).unwrap_or(u32::MAX),
        payload_bytes: 64,
    };
    let mut cal = Calibration {
        measured,
        proxy,
        broker,
        fit: None,
    };
    // The thread coalescing times again, now with the estimate's own busy
    // share (its fixed point) instead of the measured one: chosen so the
    // estimate's CPU is closest to the measured one over the runs.
    let cpu_of = |cal: &Calibration, proxy: bool| -> Vec<f64> {
        RELAY_POINTS
            .iter()
            .map(|p| {
                crate::estimate::estimate(&workload_of(p), cal).map_or(f64::NAN, |e| {
                    if proxy {
                        e.proxy.per_node.cpu_busy
                    } else {
                        e.broker.per_node.cpu_busy
                    }
                })
            })
            .collect()
    };
    for proxy in [true, false] {
        let measured: Vec<f64> = samples
            .iter()
            .map(|s| if proxy { s.proxy_cores } else { s.broker_cores })
            .collect();
        let mut best: Option<(f64, f64)> = None;
        for tau in fit::grid() {
            let mut trial = cal.clone();
            let wk = if proxy {
                &mut trial.proxy.wakeups
            } else {
                &mut trial.broker.wakeups
            };
            wk.thread_coalesce_us = tau * 1e6;
            let sse: f64 = cpu_of(&trial, proxy)
                .iter()
                .zip(&measured)
                .map(|(e, m)| (e / m - 1.0).powi(2))
                .sum();
            if sse.is_finite() && best.is_none_or(|(b, _)| sse < b) {
                best = Some((sse, tau));
            }
        }
        if let Some((_, tau)) = best {
            if proxy {
                cal.proxy.wakeups.thread_coalesce_us = tau * 1e6;
            } else {
                cal.broker.wakeups.thread_coalesce_us = tau * 1e6;
            }
        }
    }
    // What the estimate itself says for each run (its own thread
    // wake-ups): the error an operator gets.
    let mut estimate_errors = Vec::with_capacity(samples.len());
    let mut points = Vec::with_capacity(samples.len());
    for (i, (p, m)) in RELAY_POINTS.iter().zip(&samples).enumerate() {
        let w = workload_of(p);
        let e = crate::estimate::estimate(&w, &cal).map_err(|e| format!("{}: {e}", p.name))?;
        let estimated = e.proxy.per_node.cpu_busy;
        let rate_of = |terms: &[crate::estimate::CpuTerm], t: Term| {
            terms
                .iter()
                .find(|x| x.term == t)
                .map_or(0.0, |x| x.rate_per_s)
        };
        estimate_errors.push(estimated / m.proxy_cores - 1.0);
        let fitted = |f: &Fit| f.errors.get(i).map_or(0.0, |e| 1.0 + e);
        points.push(
            FitPoint {
                name: p.name.to_string(),
                connections: p.idle + p.publishers + p.subscribers,
                publishers: p.publishers,
                subscribers: p.subscribers,
                rate_per_publisher: p.rate,
                topics: p.topics,
                qos: p.qos,
                payload_bytes: p.payload,
                idle: p.idle,
                publish_rate: m.publish_rate,
                proxy_cores: m.proxy_cores,
                proxy_fitted_cores: m.proxy_cores * fitted(&relay.proxy),
                proxy_thread_wakeups: m.proxy_thread_wakeups,
                proxy_fitted_thread_wakeups: rate_of(&e.proxy.cpu, Term::RelayThreadWakeups),
                proxy_estimated_cores: estimated,
                broker_cores: m.broker_cores,
                broker_fitted_cores: m.broker_cores * fitted(&relay.broker),
                broker_thread_wakeups: m.broker_thread_wakeups,
                broker_fitted_thread_wakeups: rate_of(&e.broker.cpu, Term::BrokerThreadWakeups),
            }
            .rounded(),
        );
    }
    let rms = |v: &[f64]| (v.iter().map(|e| e * e).sum::<f64>() / v.len().max(1) as f64).sqrt();
    let largest = |v: &[f64]| {
        v.iter()
            .copied()
            .fold(0.0, |m: f64, e| if e.abs() > m.abs() { e } else { m })
    };
    let fit = FitRecord {
        proxy_rms_error: round4(relay.proxy.rms_error()),
        proxy_max_error: round4(relay.proxy.max_error()),
        proxy_estimate_rms_error: round4(rms(&estimate_errors)),
        proxy_estimate_max_error: round4(largest(&estimate_errors)),
        broker_rms_error: round4(relay.broker.rms_error()),
        broker_max_error: round4(relay.broker.max_error()),
        points,
    };
    eprintln!(
        "calibrate: relay fit: proxy rms error {:.1} %, largest {:+.1} % (with its own thread wake-ups: rms {:.1} %, largest {:+.1} %); broker rms {:.1} %, largest {:+.1} %",
        100.0 * fit.proxy_rms_error,
        100.0 * fit.proxy_max_error,
        100.0 * fit.proxy_estimate_rms_error,
        100.0 * fit.proxy_estimate_max_error,
        100.0 * fit.broker_rms_error,
        100.0 * fit.broker_max_error
    );
    cal.fit = Some(fit);
    Ok(cal)
}

/// Hold [`HELD`] idle clients on fresh processes: TLS clients on the TLS
/// listener, or plain subscribers (one filter each) on the plain one.
/// Returns the step and the proxy's and broker's resident memory before it.
async fn memory_step(
    dir: &Path,
    duration: Duration,
    threads: usize,
    pin: Option<()>,
    tls: bool,
) -> Result<(Cost, f64, f64), String> {
    let lab = Lab::start(dir, duration, threads, pin).await?;
    let (proxy_base, broker_base) = (lab.proxy.rss_kib()?, lab.broker.rss_kib()?);
    let held = HELD.to_string();
    let mut argv: Vec<String> = if tls {
        let mut v = vec!["conn".to_string(), "--tls".to_string()];
        v.extend(lab.tls());
        v
    } else {
        ["sub", "--filter", "idle/%i", "--target"]
            .iter()
            .map(|s| (*s).to_string())
            .chain([format!("127.0.0.1:{}", lab.plain_port)])
            .collect()
    };
    argv.extend(["-c".into(), held, "--connect-rate".into(), "2000".into()]);
    let what = if tls {
        "idle TLS connections"
    } else {
        "idle plain subscribers"
    };
    let cost = lab.step(what, &refs(&argv)).await?;
    Ok((cost, proxy_base, broker_base))
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The estimate's view of a relay run: one proxy, one broker, no churn,
/// the generator's 60 s keep-alive.
fn workload_of(p: &RelayPoint) -> Workload {
    Workload {
        connections: p.idle + p.publishers + p.subscribers,
        publish_rate: p.publishers as f64 * p.rate,
        fan_out: p.subscribers as f64 / p.topics.max(1) as f64,
        pubsub: Some(PubSub {
            publishers: p.publishers,
            subscribers: p.subscribers,
            rate_per_publisher: p.rate,
            topics: p.topics,
        }),
        payload_bytes: p.payload,
        qos: Qos::from_level(p.qos).unwrap_or(Qos::AtMostOnce),
        keep_alive_s: 60.0,
        new_connections_per_s: 0.0,
        new_connections_default: false,
        proxy_nodes: 1,
        broker_nodes: 1,
        ..Workload::default()
    }
}

/// The fitted relay model of both processes.
struct RelayFit {
    proxy: Fit,
    broker: Fit,
}

/// Fit the relay model to the runs: the costs and both coalescing times
/// at once, with the thread wake-ups the model gives at each run's
/// measured busy share (what the estimate does with its own), so the fit
/// minimises the error the estimate will have, not that of a model fed
/// the measured thread wake-ups.
fn fit_relay(samples: &[RelaySample]) -> Result<RelayFit, String> {
    let shapes: Vec<Shape> = RELAY_POINTS
        .iter()
        .map(|p| Shape::of(&workload_of(p), 1))
        .collect();
    let proxy: Vec<f64> = samples.iter().map(|s| s.proxy_cores * 1e6).collect();
    let broker: Vec<f64> = samples.iter().map(|s| s.broker_cores * 1e6).collect();
    // The fit asks for points 0..samples.len(), which are the shapes'.
    let proxy = fit::fit(&proxy, true, |i, c| {
        let (Some(shape), Some(sample)) = (shapes.get(i), samples.get(i)) else {
            return Vec::new();
        };
        let t = relay::wakeup_rates(&shape.proxy_streams(), c, 1.0, sample.proxy_cores);
        relay::proxy_features(shape, c.stream, t.thread)
    })
    .ok_or("the relay runs could not be fitted (proxy)")?;
    let broker = fit::fit(&broker, true, |i, c| {
        let (Some(shape), Some(sample)) = (shapes.get(i), samples.get(i)) else {
            return Vec::new();
        };
        let t = relay::wakeup_rates(&shape.broker_streams(), c, 1.0, sample.broker_cores);
        relay::broker_features(shape, c.stream, t.thread)
    })
    .ok_or("the relay runs could not be fitted (broker)")?;
    Ok(RelayFit { proxy, broker })
}

fn round4(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

impl FitPoint {
    /// Four significant decimals: the file is read by people.
    fn rounded(mut self) -> FitPoint {
        for v in [
            &mut self.publish_rate,
            &mut self.proxy_cores,
            &mut self.proxy_fitted_cores,
            &mut self.proxy_thread_wakeups,
            &mut self.proxy_fitted_thread_wakeups,
            &mut self.proxy_estimated_cores,
            &mut self.broker_cores,
            &mut self.broker_fitted_cores,
            &mut self.broker_thread_wakeups,
            &mut self.broker_fitted_thread_wakeups,
        ] {
            *v = round4(*v);
        }
        self
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into())
}
