//! `mqttlb doctor`: the operating-system limits that cap a stress test or a
//! production node, each compared with what N connections need, with the
//! change to make and the exact way to apply it.
//!
//! Why: the first wall a high-connection MQTT deployment hits is rarely
//! mqttlb itself but a descriptor limit, an exhausted ephemeral port range,
//! a full conntrack table or a container memory limit, and each fails in
//! its own obscure way (EMFILE, EADDRNOTAVAIL, silently dropped SYNs, an OOM
//! kill). Doctor reads them all up front and says which one stops N.
//!
//! Layout: `parse` turns kernel files into values (pure); `probe` reads
//! them under a root directory (`/`, or a fixture in tests) and never
//! panics, a missing or unreadable file becomes an "unknown" row;
//! `checks` (descriptors, queues, ports, buffers, conntrack) and
//! `memory` (MemAvailable, cgroups) decide ok / warn / error per value
//! (pure functions, plus a small `gather` reading their inputs); `apply`
//! writes the commands; `text` renders the table. [`main`] is the I/O
//! shell: the real `/` and this process's rlimits.

mod apply;
mod checks;
mod memory;
mod parse;
mod probe;
mod text;

use std::io::Write;
use std::path::PathBuf;

use serde::Serialize;

pub use parse::{Max, Nofile};
pub use probe::{Probe, ReadError, Reading};

/// Flags of `mqttlb doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Connections the node (or the load generator) must carry.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// What runs here: the proxy (two sockets per client), the load
    /// generator (`mqttlb bench`) or a broker node.
    #[arg(long, value_enum, default_value_t = Role::Proxy)]
    pub role: Role,
    /// Broker addresses (IP:port) the proxy spreads clients over; each
    /// (proxy IP, broker address) pair has its own ephemeral port range.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub backends: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also read the limits and cgroup of this running process (e.g. a
    /// running mqttlb).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Read every file under DIR instead of `/` (tests); this process's
    /// limits then come from DIR/proc/self/limits.
    #[arg(long, hide = true)]
    pub root: Option<PathBuf>,
}

/// What the checked machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Proxy,
    Bench,
    Broker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Proxy => "proxy",
            Role::Bench => "bench",
            Role::Broker => "broker",
        }
    }
}

/// Verdict of one check. Ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Unknown,
    Warn,
    Error,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unknown => "unknown",
            Status::Warn => "warn",
            Status::Error => "error",
        }
    }
}

/// One limit: its value, what N connections need, the verdict and the fix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// The sysctl, file or limit, e.g. `net.core.somaxconn`.
    pub name: String,
    /// As read (normalised whitespace), or "unknown".
    pub value: String,
    /// What N needs, with the formula; `None` for values reported for
    /// information only.
    pub needed: Option<String>,
    pub status: Status,
    /// What the value means (and, when unknown, why it could not be read).
    pub why: String,
    /// What to change, for a warn or an error.
    pub recommendation: Option<String>,
    /// Exact commands or configuration lines, one per launcher.
    pub how_to_apply: Vec<String>,
}

/// Everything doctor found, for the table or `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub connections: u64,
    pub role: Role,
    pub backends: u64,
    /// The worst status of all checks.
    pub status: Status,
    /// Estimates behind the numbers, stated so they can be judged.
    pub assumptions: Vec<String>,
    pub notes: Vec<String>,
    pub checks: Vec<Check>,
}

impl Report {
    /// 1 when something would stop N connections, else 0.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.status == Status::Error)
    }
}

/// Descriptors beyond the connections: listeners, admin, health checks,
/// certificates, epoll, logs.
pub const FD_MARGIN: u64 = 1024;
/// Kernel memory of an idle TCP socket (tcp_sock ~2.3 KiB, socket inode,
/// file, dentry, epoll entry); buffers are charged only while data queues.
pub const KERNEL_BYTES_PER_SOCKET: u64 = 4 << 10;
/// mqttlb's resident memory per idle TLS connection (README: 13.6 KiB
/// measured for the proxy).
pub const MQTTLB_BYTES_PER_CONN: u64 = 14 << 10;
/// The process itself: runtime, TLS configuration, metrics.
pub const BASE_BYTES: u64 = 64 << 20;
/// Accept and SYN queues sized for a reconnect storm, capped at what large
/// MQTT deployments use.
pub const BURST_CAP: u64 = 16_384;

/// The load to check for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub connections: u64,
    pub role: Role,
    /// Broker addresses the proxy spreads over (≥ 1).
    pub backends: u64,
}

impl Target {
    /// Sockets per connection: the proxy holds the client's and the
    /// broker's.
    pub fn sockets(&self) -> u64 {
        match self.role {
            Role::Proxy => 2,
            Role::Bench | Role::Broker => 1,
        }
    }

    /// All sockets (= descriptors for connections, = conntrack flows).
    pub fn socket_count(&self) -> u64 {
        self.connections.saturating_mul(self.sockets())
    }

    /// Descriptors one process needs.
    pub fn fds(&self) -> u64 {
        self.socket_count().saturating_add(FD_MARGIN)
    }

    /// "2 x N + 1024".
    pub fn fds_formula(&self) -> String {
        match self.sockets() {
            1 => format!("N + {FD_MARGIN}"),
            s => format!("{s} x N + {FD_MARGIN}"),
        }
    }

    pub fn bytes_per_conn(&self) -> u64 {
        self.sockets() * KERNEL_BYTES_PER_SOCKET + MQTTLB_BYTES_PER_CONN
    }

    /// Memory for N idle connections and the process.
    pub fn memory(&self) -> u64 {
        self.connections
            .saturating_mul(self.bytes_per_conn())
            .saturating_add(BASE_BYTES)
    }

    pub fn memory_formula(&self) -> String {
        format!(
            "N x {} + {}",
            text::bytes(self.bytes_per_conn()),
            text::bytes(BASE_BYTES)
        )
    }

    /// Connections arriving at once after a restart or a network blip that
    /// the listen queues should absorb.
    pub fn burst(&self) -> u64 {
        self.connections.min(BURST_CAP)
    }

    /// Ephemeral ports needed per (source IP, destination address) pair:
    /// the proxy's clients spread over the brokers, a load generator's all
    /// go to one address, a broker makes no outgoing connections.
    pub fn ports_per_pair(&self) -> Option<u64> {
        match self.role {
            Role::Proxy => Some(self.connections.div_ceil(self.backends.max(1))),
            Role::Bench => Some(self.connections),
            Role::Broker => None,
        }
    }
}

/// What the shell knows besides the files under the root.
#[derive(Debug, Clone)]
pub struct Host {
    /// RLIMIT_NOFILE of this process.
    pub nofile: Reading<Nofile>,
    /// Whether the kernel files (`/proc`, `/sys`) exist here.
    pub linux: bool,
    /// `std::env::consts::OS`, for the "Linux only" note.
    pub os: &'static str,
    /// CPUs this process may use.
    pub cpus: Option<u64>,
}

/// The pure core: read everything under the probe's root and decide.
pub fn diagnose(probe: &Probe, host: &Host, target: &Target, pid: Option<u32>) -> Report {
    let mut checks = checks::nofile(&host.nofile, target, None);
    if let Some(pid) = pid {
        checks.extend(checks::nofile(
            &probe.nofile(&pid.to_string()),
            target,
            Some(pid),
        ));
    }
    let mut notes = vec![
        "RLIMIT_NOFILE above is this process's, inherited from the shell that ran doctor; a service \
         started by systemd, Docker or Kubernetes gets its own: use --pid, or run doctor inside the container."
            .to_owned(),
    ];
    if host.linux {
        checks.extend(checks::kernel(probe, target));
        let who = pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
        checks.extend(memory::gather(probe, target, &who, host.cpus));
    } else {
        notes.push(format!(
            "This is {}: the kernel limits (sysctls, conntrack, memory, cgroups) are Linux-only and were not checked.",
            host.os
        ));
    }
    let status = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
    Report {
        connections: target.connections,
        role: target.role,
        backends: target.backends,
        status,
        assumptions: assumptions(target),
        notes,
        checks,
    }
}

fn assumptions(t: &Target) -> Vec<String> {
    let mut out = vec![
        format!(
            "Each {} connection holds {} socket(s), so {} descriptors ({}; the margin covers listeners, health checks and files).",
            t.role.as_str(),
            t.sockets(),
            t.fds(),
            t.fds_formula()
        ),
        format!(
            "Memory per connection ~{}: {} x ~{} kernel per idle TCP socket (socket, inode, file, epoll entry; \
             buffers only while data is queued) + ~{} mqttlb (measured: an idle TLS client of the proxy), \
             plus {} for the process; connections moving data need more.",
            text::bytes(t.bytes_per_conn()),
            t.sockets(),
            text::bytes(KERNEL_BYTES_PER_SOCKET),
            text::bytes(MQTTLB_BYTES_PER_CONN),
            text::bytes(BASE_BYTES)
        ),
    ];
    match t.role {
        Role::Proxy => out.push(format!(
            "Clients spread evenly over {} broker address(es) (--backends); the kernel picks a proxy->broker \
             port per (source IP, broker IP:port), so each pair needs N/B ports.",
            t.backends
        )),
        Role::Bench => out.push(
            "The load generator connects to one address, so each source IP needs one ephemeral port per connection."
                .to_owned(),
        ),
        Role::Broker => {}
    }
    out
}

/// This process's RLIMIT_NOFILE from the OS.
#[cfg(unix)]
fn own_nofile() -> Reading<Nofile> {
    let to_max = |v: u64| {
        if v == rlimit::INFINITY {
            Max::Unlimited
        } else {
            Max::Limited(v)
        }
    };
    rlimit::Resource::NOFILE
        .get()
        .map(|(soft, hard)| Nofile {
            soft: to_max(soft),
            hard: to_max(hard),
        })
        .map_err(|e| ReadError::Io {
            path: "getrlimit(RLIMIT_NOFILE)".into(),
            reason: e.to_string(),
        })
}

/// Windows has no per-process descriptor limit of that kind.
#[cfg(not(unix))]
fn own_nofile() -> Reading<Nofile> {
    Err(ReadError::Unsupported(
        "no RLIMIT_NOFILE on this OS; sockets are limited by memory".into(),
    ))
}

/// Run `mqttlb doctor`; returns the exit code (1 when something would stop
/// the requested connections).
pub fn main(args: DoctorArgs) -> u8 {
    let target = Target {
        connections: args.connections,
        role: args.role,
        backends: args.backends,
    };
    let cpus = std::thread::available_parallelism()
        .ok()
        .and_then(|n| u64::try_from(n.get()).ok());
    let (probe, host) = match &args.root {
        Some(root) => {
            let probe = Probe::new(root);
            let nofile = probe.nofile("self");
            (
                probe,
                Host {
                    nofile,
                    linux: true,
                    os: std::env::consts::OS,
                    cpus,
                },
            )
        }
        None => (
            Probe::new("/"),
            Host {
                nofile: own_nofile(),
                linux: cfg!(target_os = "linux"),
                os: std::env::consts::OS,
                cpus,
            },
        ),
    };
    let report = diagnose(&probe, &host, &target, args.pid);
    let out = if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("mqttlb doctor: {e}");
                return 1;
            }
        }
    } else {
        text::render(&report)
    };
    // A closed pipe (doctor | head) is not an error worth a panic.
    let _ = writeln!(std::io::stdout().lock(), "{out}");
    report.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(linux: bool) -> Host {
        Host {
            nofile: Ok(Nofile {
                soft: Max::Limited(1024),
                hard: Max::Limited(4096),
            }),
            linux,
            os: "macos",
            cpus: Some(4),
        }
    }

    fn target(connections: u64, role: Role) -> Target {
        Target {
            connections,
            role,
            backends: 3,
        }
    }

    #[test]
    fn target_arithmetic() {
        let p = target(100_000, Role::Proxy);
        assert_eq!((p.sockets(), p.fds(), p.burst()), (2, 201_024, BURST_CAP));
        assert_eq!(p.ports_per_pair(), Some(33_334));
        assert_eq!(p.memory(), 100_000 * (22 << 10) + (64 << 20));
        assert_eq!(p.fds_formula(), "2 x N + 1024");
        let b = target(10, Role::Bench);
        assert_eq!(
            (b.fds(), b.ports_per_pair(), b.burst()),
            (1034, Some(10), 10)
        );
        assert_eq!(target(10, Role::Broker).ports_per_pair(), None);
        let huge = target(u64::MAX, Role::Proxy);
        assert_eq!((huge.fds(), huge.memory()), (u64::MAX, u64::MAX));
    }

    #[test]
    fn elsewhere_only_rlimits_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let r = diagnose(
            &Probe::new(dir.path()),
            &host(false),
            &target(2000, Role::Proxy),
            None,
        );
        let names: Vec<_> = r.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["RLIMIT_NOFILE soft", "RLIMIT_NOFILE hard"]);
        assert_eq!((r.status, r.exit_code()), (Status::Error, 1));
        assert!(
            r.notes
                .iter()
                .any(|n| n.contains("This is macos") && n.contains("Linux-only"))
        );
    }

    #[test]
    fn the_worst_status_decides_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let r = diagnose(
            &Probe::new(dir.path()),
            &host(true),
            &target(10, Role::Broker),
            None,
        );
        // Nothing readable under an empty root: unknowns, no error.
        assert_eq!((r.status, r.exit_code()), (Status::Unknown, 0));
        assert_eq!(r.checks.len(), 21);
    }
}
