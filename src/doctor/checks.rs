//! The kernel decisions (descriptors, listen queues, ephemeral ports,
//! buffers, conntrack): each function takes values already read (or why
//! they could not be) and the target load, and returns a [`Check`];
//! `kernel` only gathers the readings from a [`Probe`] and calls them.
//! Also the [`Check`] builder the memory checks share.

use super::apply::{self, Scope};
use super::parse::{self, Max, Nofile, PortRange};
use super::probe::{Probe, ReadError, Reading};
use super::text::bytes;
use super::{BURST_CAP, Check, Role, Status, Target};

/// The widest sensible ephemeral range: everything above the privileged
/// ports.
const WIDE_RANGE: PortRange = PortRange {
    low: 1024,
    high: 65535,
};
/// A page when the kernel's page size could not be read.
const DEFAULT_PAGE: u64 = 4096;

impl Check {
    pub(super) fn new(
        name: &str,
        value: impl ToString,
        status: Status,
        why: impl Into<String>,
    ) -> Check {
        Check {
            name: name.to_owned(),
            value: value.to_string(),
            needed: None,
            status,
            why: why.into(),
            recommendation: None,
            how_to_apply: Vec::new(),
        }
    }

    /// Reported for information: always ok, nothing needed.
    pub(super) fn info(name: &str, value: impl ToString, why: impl Into<String>) -> Check {
        Check::new(name, value, Status::Ok, why)
    }

    pub(super) fn unknown(name: &str, e: &ReadError, meaning: &str) -> Check {
        Check::new(
            name,
            "unknown",
            Status::Unknown,
            format!("could not read it: {e}. {meaning}"),
        )
    }

    pub(super) fn needs(mut self, needed: impl Into<String>) -> Check {
        self.needed = Some(needed.into());
        self
    }

    pub(super) fn fix(
        mut self,
        status: Status,
        recommendation: impl Into<String>,
        how: Vec<String>,
    ) -> Check {
        self.status = status;
        self.recommendation = Some(recommendation.into());
        self.how_to_apply = how;
        self
    }
}

/// A round value at or above `need` to recommend (multiples of 65536).
fn suggest(need: u64) -> u64 {
    need.div_ceil(65_536).saturating_mul(65_536).max(65_536)
}

pub(super) fn with<T>(
    name: &str,
    r: &Reading<T>,
    meaning: &str,
    decide: impl FnOnce(&T) -> Check,
) -> Check {
    match r {
        Ok(v) => decide(v),
        Err(e) => Check::unknown(name, e, meaning),
    }
}

// ---- open files -------------------------------------------------------

const NOFILE_MEANING: &str = "The open-file limit: every socket is a descriptor.";

/// Soft and hard RLIMIT_NOFILE of this process (`pid` None) or another.
pub fn nofile(r: &Reading<Nofile>, t: &Target, pid: Option<u32>) -> Vec<Check> {
    let suffix = pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    let soft_name = format!("RLIMIT_NOFILE soft{suffix}");
    let hard_name = format!("RLIMIT_NOFILE hard{suffix}");
    vec![
        with(&soft_name, r, NOFILE_MEANING, |n| {
            nofile_soft(&soft_name, n, t)
        }),
        with(&hard_name, r, NOFILE_MEANING, |n| {
            nofile_hard(&hard_name, n.hard, t, pid)
        }),
    ]
}

fn nofile_hard(name: &str, hard: Max, t: &Target, pid: Option<u32>) -> Check {
    let need = t.fds();
    let c = Check::new(
        name,
        hard,
        Status::Ok,
        "mqttlb raises its soft limit to the hard limit at start, so the hard limit is what caps it: \
         past it accept() fails with EMFILE and new connections wait in the listen queue.",
    )
    .needs(format!(">= {need} ({})", t.fds_formula()));
    if hard.covers(need) {
        return c;
    }
    let v = suggest(need);
    c.fix(
        Status::Error,
        format!(
            "Raise the open-file limit (soft and hard) to {v}: {} connections need {need} descriptors. \
             The hard limit cannot exceed fs.nr_open.",
            t.connections
        ),
        apply::nofile(v, pid),
    )
}

fn nofile_soft(name: &str, n: &Nofile, t: &Target) -> Check {
    let need = t.fds();
    if n.soft.covers(need) {
        return Check::new(name, n.soft, Status::Ok, "The limit a program starts with.")
            .needs(format!(">= {need} ({})", t.fds_formula()));
    }
    Check::new(
        name,
        n.soft,
        Status::Ok,
        "The limit a program starts with; mqttlb (proxy, broker and bench) raises it to the hard limit \
         at start, so the hard limit decides.",
    )
    .needs("(raised to hard)")
}

/// `fs.nr_open`: the ceiling for any process's hard RLIMIT_NOFILE.
pub fn nr_open(r: &Reading<u64>, t: &Target) -> Check {
    const NAME: &str = "fs.nr_open";
    let meaning =
        "The most descriptors one process may be allowed (the ceiling for the hard RLIMIT_NOFILE).";
    with(NAME, r, meaning, |&v| {
        let need = t.fds();
        let c = Check::new(NAME, v, Status::Ok, meaning)
            .needs(format!(">= {need} ({})", t.fds_formula()));
        if v >= need {
            return c;
        }
        let s = suggest(need);
        c.fix(
            Status::Error,
            format!("Raise fs.nr_open to {s}: no process here can hold {need} descriptors, whatever its rlimit."),
            apply::sysctl(NAME, &s.to_string(), Scope::Host),
        )
    })
}

/// `fs.file-max` with the handles already allocated (`fs.file-nr`).
pub fn file_max(r: &Reading<u64>, allocated: Option<u64>, t: &Target) -> Check {
    const NAME: &str = "fs.file-max";
    let meaning = "Open files allowed system-wide, all processes together.";
    with(NAME, r, meaning, |&v| {
        let need = t.fds();
        let used = allocated.unwrap_or(0);
        let needed = match allocated {
            Some(a) => format!(">= {need} + {a} in use"),
            None => format!(">= {need}"),
        };
        let c = Check::new(NAME, v, Status::Ok, meaning).needs(needed);
        let status = if v < need {
            Status::Error
        } else if v < need.saturating_add(used) {
            Status::Warn
        } else {
            return c;
        };
        let s = suggest(need.saturating_add(used));
        c.fix(
            status,
            format!("Raise fs.file-max to {s}: {need} descriptors for the connections on top of {used} already open."),
            apply::sysctl(NAME, &s.to_string(), Scope::Host),
        )
    })
}

// ---- listen queues ----------------------------------------------------

/// `net.core.somaxconn`: the cap on every listen() backlog.
pub fn somaxconn(r: &Reading<u64>, t: &Target) -> Check {
    const NAME: &str = "net.core.somaxconn";
    let meaning = "Caps the accept queue of every listening socket (connections the kernel completed \
                   and the program has not accepted yet); the backlog used is min(listen backlog, somaxconn).";
    with(NAME, r, meaning, |&v| {
        let (need, extra) = match t.role {
            Role::Bench => {
                return Check::info(
                    NAME,
                    v,
                    format!(
                        "{meaning} It matters on the machine that accepts, not on a load generator."
                    ),
                );
            }
            Role::Proxy => (
                t.burst(),
                format!(
                    " and set backlog = {} in each [[listener]] (default 1024)",
                    t.burst()
                ),
            ),
            // `mqttlb broker` listens with a fixed backlog of 1024.
            Role::Broker => (t.connections.min(1024), String::new()),
        };
        let c = Check::new(NAME, v, Status::Ok, meaning)
            .needs(format!(">= {need} (min(N, {BURST_CAP}))"));
        if v >= need {
            return c;
        }
        c.fix(
            Status::Warn,
            format!(
                "Raise net.core.somaxconn to {need}{extra}: when many clients reconnect at once \
                 (restart, network blip) a full accept queue drops their handshakes and they retry later."
            ),
            apply::sysctl(NAME, &need.to_string(), Scope::PodUnsafe),
        )
    })
}

/// `net.ipv4.tcp_max_syn_backlog`: half-open connections per listener.
pub fn syn_backlog(r: &Reading<u64>, t: &Target) -> Check {
    const NAME: &str = "net.ipv4.tcp_max_syn_backlog";
    let meaning = "Half-open connections (SYN received, handshake not finished) kept per listener; \
                   beyond it, with net.ipv4.tcp_syncookies=1 (the default), the kernel answers with SYN cookies instead of dropping.";
    with(NAME, r, meaning, |&v| {
        if t.role == Role::Bench {
            return Check::info(
                NAME,
                v,
                format!("{meaning} It matters on the machine that accepts."),
            );
        }
        let need = t.burst();
        let c = Check::new(NAME, v, Status::Ok, meaning)
            .needs(format!(">= {need} (min(N, {BURST_CAP}))"));
        if v >= need {
            return c;
        }
        c.fix(
            Status::Warn,
            format!("Raise net.ipv4.tcp_max_syn_backlog to {need} for reconnect storms."),
            apply::sysctl(NAME, &need.to_string(), Scope::PodUnsafe),
        )
    })
}

// ---- ephemeral ports --------------------------------------------------

/// `net.ipv4.ip_local_port_range` against the ports per (source IP,
/// destination) pair.
pub fn port_range(r: &Reading<PortRange>, t: &Target) -> Check {
    const NAME: &str = "net.ipv4.ip_local_port_range";
    let meaning = "Ports the kernel picks for outgoing connections (IPv4 and IPv6). One port serves one \
                   connection per (source IP, destination IP:port), so the range size caps connections to one destination from one source IP.";
    with(NAME, r, meaning, |&range| {
        let size = range.size();
        let why = format!("{meaning} This range holds {size} ports.");
        match t.role {
            Role::Broker => Check::info(
                NAME,
                range,
                format!(
                    "{why} A broker only accepts: inbound connections share its listening port."
                ),
            ),
            Role::Proxy => proxy_ports(range, t, why),
            Role::Bench => bench_ports(range, t, why),
        }
    })
}

fn proxy_ports(range: PortRange, t: &Target, why: String) -> Check {
    const NAME: &str = "net.ipv4.ip_local_port_range";
    let per = t.ports_per_pair().unwrap_or(0);
    let c =
        Check::new(NAME, range, Status::Ok, why).needs(format!(">= {per} (N/B ports per pair)"));
    if range.size() >= per {
        return c;
    }
    let wide = WIDE_RANGE.size();
    let brokers = t.connections.div_ceil(wide);
    let more = if per > wide {
        format!(
            " Even that holds only {wide} ports per (proxy IP, broker address): the brokers need at least {brokers} \
             addresses (IPs or ports; tell doctor with --backends), or run more proxy replicas."
        )
    } else {
        String::new()
    };
    c.fix(
        Status::Error,
        format!(
            "Each proxied client takes one ephemeral port towards its broker: {} clients over {} broker address(es) \
             need {per} ports per pair, the range has {}; connect() to the broker fails with EADDRNOTAVAIL beyond that. \
             Widen the range to \"{WIDE_RANGE}\" ({wide} ports).{more}",
            t.connections,
            t.backends,
            range.size()
        ),
        apply::sysctl(NAME, &WIDE_RANGE.to_string(), Scope::PodSafe),
    )
}

fn bench_ports(range: PortRange, t: &Target, why: String) -> Check {
    const NAME: &str = "net.ipv4.ip_local_port_range";
    let size = range.size();
    let c = Check::new(NAME, range, Status::Ok, why)
        .needs(format!(">= {} (N ports per source IP)", t.connections));
    if size >= t.connections {
        return c;
    }
    let sources = t.connections.div_ceil(size);
    let wide = t.connections.div_ceil(WIDE_RANGE.size());
    let mut how = vec![format!(
        "bench:      mqttlb bench ... --source-ips <{sources} addresses>, e.g. 127.0.0.2-127.0.0.{} for a loopback target \
         (other targets: add addresses to an interface, ip addr add)",
        (1 + sources).min(254)
    )];
    how.extend(apply::sysctl(NAME, &WIDE_RANGE.to_string(), Scope::PodSafe));
    c.fix(
        Status::Error,
        format!(
            "One source IP reaches one target with at most {size} connections; {} need {sources} source IPs \
             (mqttlb bench --source-ips), or {wide} after widening the range to \"{WIDE_RANGE}\".",
            t.connections
        ),
        how,
    )
}

/// `net.ipv4.tcp_tw_reuse`, which matters when closed outgoing
/// connections' ports sit in TIME_WAIT.
pub fn tw_reuse(r: &Reading<u64>, range: Option<PortRange>, t: &Target) -> Check {
    const NAME: &str = "net.ipv4.tcp_tw_reuse";
    let meaning = "0 = off, 1 = new outgoing connections may reuse a port in TIME_WAIT (safe with TCP timestamps), \
                   2 = only for loopback. TIME_WAIT lasts 60 s on Linux (tcp_fin_timeout does not change it).";
    with(NAME, r, meaning, |&v| {
        let c = Check::new(NAME, v, Status::Ok, meaning);
        let Some(per) = t.ports_per_pair() else {
            return Check::info(
                NAME,
                v,
                format!("{meaning} Only outgoing connections are affected; a broker makes none."),
            );
        };
        let c = c.needs("1 when 2 x ports per pair > range");
        let tight = range.is_some_and(|r| per.saturating_mul(2) > r.size());
        if v == 1 || !tight {
            return c;
        }
        c.fix(
            Status::Warn,
            format!(
                "Set net.ipv4.tcp_tw_reuse=1: after a client leaves, the side that closed first keeps its port in TIME_WAIT for 60 s, \
                 so a mass reconnect needs up to 2 x {per} ports per pair at once; the range has fewer."
            ),
            apply::sysctl(NAME, "1", Scope::PodUnsafe),
        )
    })
}

// ---- buffers ----------------------------------------------------------

fn buffer_info(name: &str, r: &Reading<String>, meaning: &str) -> Check {
    with(name, r, meaning, |v| Check::info(name, v, meaning))
}

/// `net.ipv4.tcp_mem` (pages) against N sockets each holding the minimum
/// buffers while data is in flight.
pub fn tcp_mem(
    r: &Reading<[u64; 3]>,
    rmem: Option<[u64; 3]>,
    wmem: Option<[u64; 3]>,
    page: Option<u64>,
    t: &Target,
) -> Check {
    const NAME: &str = "net.ipv4.tcp_mem";
    let meaning = "Pages all TCP sockets together may use for queued data: low, pressure, high. Above \
                   'pressure' the kernel shrinks buffers towards tcp_rmem[0]/tcp_wmem[0]; above 'high' it drops data. \
                   Idle connections queue nothing.";
    with(NAME, r, meaning, |&[low, pressure, high]| {
        let page = page.unwrap_or(DEFAULT_PAGE);
        let per_socket = rmem
            .map_or(4096, |r| r[0])
            .saturating_add(wmem.map_or(4096, |w| w[0]));
        let need = t.socket_count().saturating_mul(per_socket).div_ceil(page);
        let value = format!("{low} {pressure} {high}");
        let c = Check::new(NAME, &value, Status::Ok, format!(
            "{meaning} Needed if every connection had data in flight at once: sockets x (tcp_rmem[0] + tcp_wmem[0]) / page = \
             {} x {per_socket} / {page}.",
            t.socket_count()
        ))
        .needs(format!("pressure >= {need} pages ({})", bytes(need.saturating_mul(page))));
        if pressure >= need {
            return c;
        }
        let v = format!("{} {need} {}", need / 4 * 3, need / 2 * 3);
        c.fix(
            Status::Warn,
            format!(
                "If most connections carry traffic at once, TCP enters memory pressure at {} and stops growing buffers; \
                 for busy connections raise it to \"{v}\" (pages of {page} bytes; keep 'high' well below RAM).",
                bytes(pressure.saturating_mul(page))
            ),
            apply::sysctl(NAME, &v, Scope::Host),
        )
    })
}

// ---- conntrack --------------------------------------------------------

/// `net.netfilter.nf_conntrack_max`, when the conntrack module is loaded.
pub fn conntrack(r: Option<&Reading<u64>>, count: Option<u64>, t: &Target) -> Check {
    const NAME: &str = "net.netfilter.nf_conntrack_max";
    let meaning = "Connections netfilter tracks (for NAT and stateful firewalls); when the table is full new \
                   connections are dropped (\"nf_conntrack: table full, dropping packet\" in dmesg).";
    let Some(r) = r else {
        return Check::info(
            NAME,
            "not loaded",
            "No connection tracking here, so no table to fill.",
        );
    };
    with(NAME, r, meaning, |&v| {
        let need = t.socket_count();
        let mut why =
            format!("{meaning} Each socket is one tracked flow; closed ones stay tracked ~2 min.");
        if let Some(n) = count {
            why.push_str(&format!(" Tracked now: {n}."));
        }
        let c = Check::new(NAME, v, Status::Ok, why)
            .needs(format!(">= {need} (flows: {} x N)", t.sockets()));
        let status = if v < need {
            Status::Error
        } else if v < need.saturating_add(need / 5) {
            Status::Warn
        } else {
            return c;
        };
        let s = suggest(need.saturating_add(need / 5));
        let mut how = apply::sysctl(NAME, &s.to_string(), Scope::Host);
        how.push(format!(
            "also:       net.netfilter.nf_conntrack_buckets = {} (hash size, about max/4)",
            s / 4
        ));
        c.fix(
            status,
            format!(
                "Raise net.netfilter.nf_conntrack_max to {s} ({need} flows + 20% for closed ones), or exempt the MQTT ports from tracking \
                 (iptables -t raw ... -j NOTRACK) if no NAT or stateful rule needs them."
            ),
            how,
        )
    })
}

// ---- gathering --------------------------------------------------------

fn sysctl_num(p: &Probe, name: &str) -> Reading<u64> {
    p.sysctl(name, parse::number, "a number")
}

fn sysctl_text(p: &Probe, name: &str) -> Reading<String> {
    p.sysctl(
        name,
        |s| Some(s.split_whitespace().collect::<Vec<_>>().join(" ")),
        "text",
    )
}

fn sysctl_triple(p: &Probe, name: &str) -> Reading<[u64; 3]> {
    p.sysctl(name, parse::triple, "three numbers")
}

/// Descriptor, queue, port, buffer and conntrack sysctls.
pub fn kernel(p: &Probe, t: &Target) -> Vec<Check> {
    let file_nr = p
        .sysctl("fs.file-nr", parse::file_nr_allocated, "three numbers")
        .ok();
    let range = p.sysctl(
        "net.ipv4.ip_local_port_range",
        parse::port_range,
        "\"low high\" ports",
    );
    let rmem = sysctl_triple(p, "net.ipv4.tcp_rmem");
    let wmem = sysctl_triple(p, "net.ipv4.tcp_wmem");
    let page = p
        .parsed(
            "/proc/self/smaps",
            parse::kernel_page_size,
            "a KernelPageSize line",
        )
        .ok();
    let ct_name = "net.netfilter.nf_conntrack_max";
    let ct = p
        .exists(&super::probe::sysctl_path(ct_name))
        .then(|| sysctl_num(p, ct_name));
    let ct_count = sysctl_num(p, "net.netfilter.nf_conntrack_count").ok();
    let triple_text = |r: &Reading<[u64; 3]>| r.clone().map(|[a, b, c]| format!("{a} {b} {c}"));
    vec![
        nr_open(&sysctl_num(p, "fs.nr_open"), t),
        file_max(&sysctl_num(p, "fs.file-max"), file_nr, t),
        somaxconn(&sysctl_num(p, "net.core.somaxconn"), t),
        syn_backlog(&sysctl_num(p, "net.ipv4.tcp_max_syn_backlog"), t),
        port_range(&range, t),
        tw_reuse(
            &sysctl_num(p, "net.ipv4.tcp_tw_reuse"),
            range.clone().ok(),
            t,
        ),
        {
            let m = "Seconds an orphaned connection waits in FIN_WAIT_2 for the peer's FIN; not the TIME_WAIT length (60 s, fixed).";
            buffer_info(
                "net.ipv4.tcp_fin_timeout",
                &sysctl_text(p, "net.ipv4.tcp_fin_timeout"),
                m,
            )
        },
        buffer_info(
            "net.core.rmem_default",
            &sysctl_text(p, "net.core.rmem_default"),
            "Initial receive buffer of non-TCP sockets (TCP starts at tcp_rmem[1]).",
        ),
        buffer_info(
            "net.core.rmem_max",
            &sysctl_text(p, "net.core.rmem_max"),
            "Largest receive buffer a program may set with SO_RCVBUF; mqttlb does not set it, TCP autotuning is capped by tcp_rmem[2] instead.",
        ),
        buffer_info(
            "net.core.wmem_default",
            &sysctl_text(p, "net.core.wmem_default"),
            "Initial send buffer of non-TCP sockets (TCP starts at tcp_wmem[1]).",
        ),
        buffer_info(
            "net.core.wmem_max",
            &sysctl_text(p, "net.core.wmem_max"),
            "Largest send buffer a program may set with SO_SNDBUF; mqttlb does not set it, TCP autotuning is capped by tcp_wmem[2] instead.",
        ),
        buffer_info(
            "net.ipv4.tcp_rmem",
            &triple_text(&rmem),
            "TCP receive buffer per socket in bytes: min (kept under memory pressure), initial, max (autotuning). Allocated only while data waits to be read.",
        ),
        buffer_info(
            "net.ipv4.tcp_wmem",
            &triple_text(&wmem),
            "TCP send buffer per socket in bytes: min, initial, max. Allocated only while data waits to be sent.",
        ),
        tcp_mem(
            &sysctl_triple(p, "net.ipv4.tcp_mem"),
            rmem.ok(),
            wmem.ok(),
            page,
            t,
        ),
        conntrack(ct.as_ref(), ct_count, t),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(n: u64, backends: u64) -> Target {
        Target {
            connections: n,
            role: Role::Proxy,
            backends,
        }
    }

    fn role(n: u64, role: Role) -> Target {
        Target {
            connections: n,
            role,
            backends: 1,
        }
    }

    fn missing() -> ReadError {
        ReadError::Missing {
            path: "/proc/sys/x".into(),
        }
    }

    fn nf(soft: u64, hard: u64) -> Reading<Nofile> {
        Ok(Nofile {
            soft: Max::Limited(soft),
            hard: Max::Limited(hard),
        })
    }

    #[test]
    fn the_hard_nofile_limit_caps_the_proxy_at_two_descriptors_per_client() {
        let t = proxy(10_000, 1);
        assert_eq!(t.fds(), 21_024);
        let [soft, hard] = <[Check; 2]>::try_from(nofile(&nf(1024, 21_024), &t, None)).unwrap();
        assert_eq!((soft.status, hard.status), (Status::Ok, Status::Ok));
        assert_eq!(soft.needed.as_deref(), Some("(raised to hard)"));
        let checks = nofile(&nf(1024, 21_023), &t, Some(7));
        let hard = &checks[1];
        assert_eq!(hard.name, "RLIMIT_NOFILE hard (pid 7)");
        assert_eq!(hard.status, Status::Error);
        assert_eq!(hard.needed.as_deref(), Some(">= 21024 (2 x N + 1024)"));
        assert!(
            hard.how_to_apply
                .iter()
                .any(|l| l.contains("LimitNOFILE=65536"))
        );
        assert!(
            hard.how_to_apply
                .iter()
                .any(|l| l.contains("prlimit --pid 7"))
        );
        let unl = Ok(Nofile {
            soft: Max::Unlimited,
            hard: Max::Unlimited,
        });
        assert!(
            nofile(&unl, &t, None)
                .iter()
                .all(|c| c.status == Status::Ok)
        );
    }

    #[test]
    fn unreadable_values_are_unknown_with_the_reason() {
        let t = proxy(1000, 1);
        let c = somaxconn(&Err(missing()), &t);
        assert_eq!((c.status, c.value.as_str()), (Status::Unknown, "unknown"));
        assert!(c.why.contains("/proc/sys/x does not exist"), "{}", c.why);
        assert_eq!(nofile(&Err(missing()), &t, None)[1].status, Status::Unknown);
    }

    #[test]
    fn nr_open_and_file_max() {
        let t = proxy(100_000, 1);
        assert_eq!(nr_open(&Ok(1 << 20), &t).status, Status::Ok);
        let c = nr_open(&Ok(100_000), &t);
        assert_eq!(c.status, Status::Error);
        assert!(c.how_to_apply[0].ends_with("sysctl -w fs.nr_open=262144"));
        assert_eq!(
            file_max(&Ok(u64::MAX >> 1), Some(2000), &t).status,
            Status::Ok
        );
        assert_eq!(file_max(&Ok(201_024), Some(2000), &t).status, Status::Warn);
        assert_eq!(file_max(&Ok(201_023), None, &t).status, Status::Error);
    }

    #[test]
    fn small_listen_queues_warn_never_error() {
        let t = proxy(100_000, 1);
        let c = somaxconn(&Ok(128), &t);
        assert_eq!(c.status, Status::Warn);
        assert!(c.recommendation.unwrap().contains("backlog = 16384"));
        assert!(c.how_to_apply[0].ends_with("sysctl -w net.core.somaxconn=16384"));
        assert_eq!(somaxconn(&Ok(16_384), &t).status, Status::Ok);
        assert_eq!(somaxconn(&Ok(64), &proxy(100, 1)).status, Status::Warn);
        assert_eq!(somaxconn(&Ok(100), &proxy(100, 1)).status, Status::Ok);
        assert_eq!(
            somaxconn(&Ok(1024), &role(100_000, Role::Broker)).status,
            Status::Ok
        );
        assert_eq!(
            somaxconn(&Ok(1), &role(100_000, Role::Bench)).status,
            Status::Ok
        );
        assert_eq!(syn_backlog(&Ok(2048), &t).status, Status::Warn);
    }

    #[test]
    fn proxy_ports_are_per_broker_address() {
        let r = Ok(parse::port_range("32768 60999").unwrap());
        // 100000 clients over 4 brokers: 25000 per pair fits in 28232.
        assert_eq!(port_range(&r, &proxy(100_000, 4)).status, Status::Ok);
        let c = port_range(&r, &proxy(100_000, 3));
        assert_eq!(c.status, Status::Error);
        assert_eq!(c.needed.as_deref(), Some(">= 33334 (N/B ports per pair)"));
        let rec = c.recommendation.unwrap();
        assert!(rec.contains("\"1024 65535\""), "{rec}");
        assert!(!rec.contains("at least"), "{rec}");
        // Beyond even the widest range: more broker addresses.
        let rec = port_range(&r, &proxy(200_000, 1)).recommendation.unwrap();
        assert!(rec.contains("at least 4 addresses"), "{rec}");
        assert_eq!(
            port_range(&r, &role(1 << 20, Role::Broker)).status,
            Status::Ok
        );
    }

    #[test]
    fn a_load_generator_needs_source_ips() {
        let r = Ok(parse::port_range("32768 60999").unwrap());
        let c = port_range(&r, &role(100_000, Role::Bench));
        assert_eq!(c.status, Status::Error);
        assert!(c.recommendation.unwrap().contains("need 4 source IPs"));
        assert!(
            c.how_to_apply[0].contains("--source-ips") && c.how_to_apply[0].contains("127.0.0.5")
        );
        assert_eq!(
            port_range(&r, &role(28_232, Role::Bench)).status,
            Status::Ok
        );
    }

    #[test]
    fn tw_reuse_matters_only_when_ports_are_tight() {
        let range = parse::port_range("32768 60999");
        assert_eq!(
            tw_reuse(&Ok(2), range, &proxy(100_000, 1)).status,
            Status::Warn
        );
        assert_eq!(
            tw_reuse(&Ok(1), range, &proxy(100_000, 1)).status,
            Status::Ok
        );
        assert_eq!(tw_reuse(&Ok(0), range, &proxy(1000, 1)).status, Status::Ok);
        assert_eq!(
            tw_reuse(&Ok(0), range, &role(1 << 20, Role::Broker)).status,
            Status::Ok
        );
    }

    #[test]
    fn tcp_mem_compares_pages_with_minimum_buffers() {
        let t = proxy(100_000, 1);
        // 200000 sockets x (4096 + 4096) / 4096 = 400000 pages.
        let c = tcp_mem(
            &Ok([287_898, 383_867, 575_796]),
            Some([4096, 131_072, 1 << 25]),
            Some([4096, 16_384, 1 << 22]),
            Some(4096),
            &t,
        );
        assert_eq!(c.status, Status::Warn);
        assert!(
            c.needed
                .as_deref()
                .unwrap()
                .starts_with("pressure >= 400000 pages")
        );
        assert!(c.how_to_apply[0].ends_with("sysctl -w net.ipv4.tcp_mem=\"300000 400000 600000\""));
        let ok = tcp_mem(&Ok([1, 400_000, 2]), None, None, None, &t);
        assert_eq!(ok.status, Status::Ok);
    }

    #[test]
    fn conntrack_counts_flows_when_loaded() {
        let t = proxy(100_000, 1);
        assert_eq!(conntrack(None, None, &t).value, "not loaded");
        assert_eq!(
            conntrack(Some(&Ok(262_144)), Some(10), &t).status,
            Status::Ok
        );
        assert_eq!(conntrack(Some(&Ok(230_000)), None, &t).status, Status::Warn);
        let c = conntrack(Some(&Ok(65_536)), None, &t);
        assert_eq!(c.status, Status::Error);
        assert!(c.how_to_apply[0].ends_with("sysctl -w net.netfilter.nf_conntrack_max=262144"));
    }

    #[test]
    fn suggestions_round_up() {
        assert_eq!(suggest(1), 65_536);
        assert_eq!(suggest(201_024), 262_144);
        assert_eq!(suggest(262_144), 262_144);
    }
}
