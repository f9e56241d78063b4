//! The cost model (pure): a [`Workload`] and a [`Calibration`] give the
//! cores and memory of each component ([`estimate`]), and the notes the
//! reader must know ([`warnings`]).

use super::EstimateError;
use super::calibration::{Calibration, Wakeups};
use super::figures::{
    Bottleneck, ComponentEstimate, CpuTerm, Estimate, MemTerm, NodeFigures, PacedStorm, QueueLimit,
    ReconnectStorm, StormQueue, Term,
};
use super::num::{fmt_num, to_f64};
use super::relay::{Shape, Stream, wakeup_rates};
use super::workload::Workload;
use crate::config::defaults::{MAX_QUEUE_SIZE, MAX_QUEUE_TIMEOUT, MAX_RATE};

/// Kernel memory per idle TCP socket (not in RSS; charged to the memory
/// cgroup): `struct tcp_sock` (~2.3 KiB), inode and dentry, `struct file`,
/// epoll entry. Socket buffers with data in flight come on top.
pub const KERNEL_SOCKET_KIB: f64 = 4.0;

/// Heap memory of one client waiting for admission beyond its connection:
/// the boxed `wait` future of `proxy::conn::queue` (712 bytes, ARCHITECTURE
/// 4b: the only allocation a waiter adds) and its buffered CONNECT (read
/// 256 bytes at a time, `INITIAL_CONNECT_READ` in `proxy::conn::admit`;
/// the wait's read behind it grows the buffer once, to 512). A client that
/// sends packets behind its CONNECT while it waits may hold up to
/// `QUEUED_READ` (4 KiB) more.
pub const WAITER_EXTRA_BYTES: f64 = 712.0 + 512.0;

/// The load of one node while `live_nodes` nodes share the work.
#[derive(Debug, Clone, PartialEq)]
struct NodeLoad {
    connections: f64,
    cpu: Vec<CpuTerm>,
    memory: Vec<MemTerm>,
}

/// `⌈x⌉` as a count, at least 1, ignoring float noise (1.4 / 0.7 is
/// 2.0000000000000004, which must be 2 cores, not 3). `x` is finite and
/// ≥ 0 here; `as` saturates anyway.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn cores_for(x: f64) -> u64 {
    let rounded = (x * (1.0 - 1e-12)).ceil();
    (rounded as u64).max(1)
}

/// Proxy CPU per packet of `payload` bytes (µs), beyond its wake-ups.
fn packet_us(cal: &Calibration, payload: f64) -> f64 {
    let p = &cal.proxy;
    p.packet_cpu_us + payload * p.byte_cpu_ns / 1000.0
}

/// Most threads a node is assumed to spread its wake-ups over (the
/// iteration below stops long before for any real load).
const MAX_THREADS: f64 = 1024.0;

/// The wake-up terms of a node whose other terms keep `other_cores` busy
/// and that holds `connections`: its threads (as many as the node keeps
/// busy, at least one) share the socket wake-ups, and a thread is woken
/// only while idle, so the thread wake-ups depend on how busy the node is;
/// iterated until the thread count and the busy share settle.
fn wakeup_terms(
    streams: &[Stream],
    wk: &Wakeups,
    other_cores: f64,
    connections: f64,
    terms: (Term, Term),
) -> [CpuTerm; 4] {
    let c = wk.coalescing();
    let mut threads = 1.0_f64;
    let mut busy = other_cores;
    let mut rates = wakeup_rates(streams, c, threads, busy);
    for _ in 0..64 {
        let next = other_cores + wk.cpu_us(rates, connections) / 1e6;
        let need = next.ceil().clamp(1.0, MAX_THREADS);
        let settled = need <= threads && (next - busy).abs() <= 1e-9 * next.max(1e-9);
        threads = threads.max(need);
        busy = next;
        rates = wakeup_rates(streams, c, threads, busy);
        if settled {
            break;
        }
    }
    [
        CpuTerm::new(terms.0, rates.thread, wk.thread_wakeup_cpu_us),
        CpuTerm::new(terms.1, rates.connection, wk.wakeup_cpu_us),
        CpuTerm::new(
            Term::HeldConnections,
            connections,
            wk.connection_cpu_us_per_s,
        ),
        CpuTerm::new(Term::Background, 1.0, wk.background_cpu_us_per_s),
    ]
}

fn proxy_load(w: &Workload, cal: &Calibration, live: u32) -> NodeLoad {
    let p = &cal.proxy;
    let k = f64::from(live.max(1));
    let s = w.tls_share;
    let shape = Shape::of(w, live);
    let publishes = shape.published() + shape.delivered();
    let connections = to_f64(w.connections) / k;
    let handshake_us = s * p.tls_connect_cpu_us + (1.0 - s) * p.plain_connect_cpu_us;
    let ack_us = packet_us(cal, 0.0);
    let per_conn_kib =
        s * p.rss_per_tls_connection_kib + (1.0 - s) * p.rss_per_plain_connection_kib;
    let mut cpu = vec![
        CpuTerm::new(Term::Handshakes, w.new_connections_per_s / k, handshake_us),
        CpuTerm::new(
            Term::RelayPublish,
            publishes,
            packet_us(cal, shape.payload_bytes),
        ),
        CpuTerm::new(Term::RelayAcks, publishes * shape.acks, ack_us),
        CpuTerm::new(Term::KeepAlive, 2.0 * shape.pings(), ack_us),
    ];
    let other: f64 = cpu.iter().map(|t| t.cores).sum();
    cpu.extend(wakeup_terms(
        &shape.proxy_streams(),
        &p.wakeups,
        other,
        connections,
        (Term::RelayThreadWakeups, Term::RelayWakeups),
    ));
    NodeLoad {
        connections,
        cpu,
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
    let shape = Shape::of(w, live);
    // The acknowledgements of one exchange.
    let exchange_us = shape.acks * b.cpu_us_per_ack;
    // Messages this node forwards to the others, and receives from them.
    let forwards = m * (k - 1.0) / k;
    let connections = to_f64(w.connections) / k;
    let mut cpu = vec![
        CpuTerm::new(
            Term::Connects,
            w.new_connections_per_s / k,
            b.connect_cpu_us,
        ),
        CpuTerm::new(Term::PublishIn, shape.published(), b.cpu_us_per_publish_in),
        CpuTerm::new(Term::Deliveries, shape.delivered(), b.cpu_us_per_delivery),
        CpuTerm::new(
            Term::QosAcks,
            shape.published() + shape.delivered(),
            exchange_us,
        ),
        CpuTerm::new(
            Term::Mesh,
            forwards,
            b.cpu_us_per_publish_in + b.cpu_us_per_delivery + 2.0 * exchange_us,
        ),
        CpuTerm::new(
            Term::KeepAlive,
            shape.pings(),
            b.cpu_us_per_publish_in + b.cpu_us_per_delivery,
        ),
    ];
    let other: f64 = cpu.iter().map(|t| t.cores).sum();
    cpu.extend(wakeup_terms(
        &shape.broker_streams(),
        &b.wakeups,
        other,
        connections,
        (Term::BrokerThreadWakeups, Term::BrokerWakeups),
    ));
    NodeLoad {
        connections,
        cpu,
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
            admission: None,
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
            s.cpu_seconds.is_finite()
                && s.seconds_at_spare.is_none_or(f64::is_finite)
                && s.admission.as_ref().is_none_or(PacedStorm::is_finite)
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

impl PacedStorm {
    fn is_finite(&self) -> bool {
        let opt = |v: Option<f64>| v.is_none_or(f64::is_finite);
        let queue = self.queue.as_ref().is_none_or(|q| {
            [
                q.peak_waiting,
                q.longest_wait_s,
                q.unbounded_peak_waiting,
                q.unbounded_longest_wait_s,
                q.refused,
                q.retry_cpu_seconds,
                q.waiter_kib,
                q.peak_memory_mib,
            ]
            .iter()
            .all(|v| v.is_finite())
                && opt(q.fitting_rate_per_s)
        });
        queue
            && self.clients_per_proxy.is_finite()
            && [
                self.arrival_per_s,
                self.paced_rate_per_s,
                self.broker_rate_per_s,
                self.seconds,
                self.broker_cpu_peak,
                self.broker_cpu_peak_unpaced,
                self.proxy_busy_seconds,
            ]
            .into_iter()
            .all(opt)
            && self.broker_cpu_steady.is_finite()
            && self.proxy_cpu_steady.is_finite()
            && self.proxy_cpu_peak.is_finite()
    }
}

/// One proxy's queue while `n` clients arrive at `arrival` per second
/// (`None`: all at once) and leave it at `rate` per second (below the
/// arrival), with at most `size` waiting, each at most `timeout` seconds.
///
/// A fluid model, FIFO, ignoring the bucket's one-second burst (at most
/// `rate` clients more go at once: conservative). Unbounded, the queue
/// grows at `arrival − rate` while the wave arrives, to
/// `n × (1 − rate / arrival)`, and its last client waits that divided by
/// `rate`. With the limits, it carries at most `min(size, rate × timeout)`
/// of them through to admission: beyond `size` clients are refused at
/// once, and a client with more than `rate × timeout` ahead of it times
/// out (everyone ahead of it either goes or times out first, so in
/// overload the queue serves `rate` per second of clients who waited
/// `timeout`). Whatever is beyond that is refused.
#[derive(Debug, Clone, PartialEq)]
struct Wave {
    unbounded_peak: f64,
    unbounded_wait_s: f64,
    peak: f64,
    longest_wait_s: f64,
    refused: f64,
    refused_by: Option<QueueLimit>,
    /// The smallest rate with which nobody is refused (`None`: the size
    /// is too small for the wave arriving all at once).
    fitting_rate: Option<f64>,
}

fn wave(n: f64, arrival: Option<f64>, rate: f64, size: f64, timeout_s: f64) -> Wave {
    let unbounded_peak = match arrival {
        Some(a) => n * (1.0 - rate / a),
        None => n,
    }
    .max(0.0);
    let unbounded_wait_s = unbounded_peak / rate;
    let hold = size.min(rate * timeout_s);
    let refused = (unbounded_peak - hold).max(0.0);
    let refused_by = (refused > 0.0).then_some(if size <= rate * timeout_s {
        QueueLimit::Size
    } else {
        QueueLimit::Timeout
    });
    let arriving_within_timeout = arrival.map_or(f64::INFINITY, |a| a * timeout_s);
    // n × (1 − r/a) ≤ size and n × (1 − r/a) ≤ r × timeout.
    let fitting_rate = match arrival {
        _ if n <= 0.0 => Some(0.0),
        Some(a) => Some((a * (1.0 - size / n)).max(n / (timeout_s + n / a))),
        None => (size >= n).then(|| n / timeout_s),
    };
    Wave {
        unbounded_peak,
        unbounded_wait_s,
        peak: unbounded_peak.min(size).min(arriving_within_timeout),
        longest_wait_s: unbounded_wait_s.min(timeout_s).min(size / rate),
        refused,
        refused_by,
        fitting_rate,
    }
}

/// Losing a broker node with the proxies' admission: `None` with a single
/// broker node (no survivors). The clients of the lost node come back
/// through the `P` proxies evenly, each at the handshake rate of its spare
/// cores (all proxies are up: spare = sized cores − all-up load); each
/// proxy paces its share to `max_connect_rate`, so the brokers get
/// `P × rate`, spread over the `k − 1` survivors.
fn paced_storm(
    w: &Workload,
    cal: &Calibration,
    proxy: &ComponentEstimate,
    broker: &ComponentEstimate,
    handshake_us: f64,
) -> Option<PacedStorm> {
    let clients = broker.reconnect_storm.as_ref()?.clients;
    let proxies = w.proxy_nodes.max(1);
    let p = f64::from(proxies);
    let n = clients / p;
    let proxy_cores = to_f64(proxy.per_node.cores);
    let proxy_cpu_steady = proxy.per_node_all_up.cpu_busy;
    let spare = proxy_cores - proxy_cpu_steady;
    // Handshakes per second of one proxy; `None`: unbounded here.
    let arrival = (spare > 1e-9 && handshake_us > 0.0).then(|| spare * 1e6 / handshake_us);
    let rate = f64::from(w.max_connect_rate);
    let paced = rate > 0.0 && arrival.is_none_or(|a| rate < a);
    let broker_rate = if paced {
        Some(rate * p)
    } else {
        arrival.map(|a| a * p)
    };
    let survivors = broker.per_node.live_nodes;
    let broker_cpu_steady = broker.per_node.cpu_busy;
    let broker_peak = |total_rate: f64| {
        broker_cpu_steady + total_rate / f64::from(survivors) * cal.broker.connect_cpu_us / 1e6
    };
    let queue = paced.then(|| {
        let v = wave(n, arrival, rate, to_f64(w.queue_size), w.queue_timeout_s);
        let s = w.tls_share;
        let connection_kib = s * cal.proxy.rss_per_tls_connection_kib
            + (1.0 - s) * cal.proxy.rss_per_plain_connection_kib;
        // One socket: the node's is opened once the client is let through.
        let waiter_kib = connection_kib + KERNEL_SOCKET_KIB + WAITER_EXTRA_BYTES / 1024.0;
        let refused = v.refused * p;
        StormQueue {
            peak_waiting: v.peak,
            longest_wait_s: v.longest_wait_s,
            unbounded_peak_waiting: v.unbounded_peak,
            unbounded_longest_wait_s: v.unbounded_wait_s,
            refused,
            refused_by: v.refused_by,
            retry_cpu_seconds: refused * handshake_us / 1e6,
            waiter_kib,
            peak_memory_mib: v.peak * waiter_kib / 1024.0,
            fitting_rate_per_s: v.fitting_rate,
        }
    });
    Some(PacedStorm {
        proxies,
        clients_per_proxy: n,
        arrival_per_s: arrival.map(|a| a * p),
        paced_rate_per_s: (rate > 0.0).then_some(rate * p),
        paced,
        broker_rate_per_s: broker_rate,
        seconds: broker_rate.map(|r| if clients > 0.0 { clients / r } else { 0.0 }),
        survivors,
        broker_cores: broker.per_node.cores,
        broker_connect_cpu_us: cal.broker.connect_cpu_us,
        broker_cpu_steady,
        broker_cpu_peak: broker_rate.map(broker_peak),
        broker_cpu_peak_unpaced: arrival.map(|a| broker_peak(a * p)),
        proxy_cores: proxy.per_node.cores,
        proxy_handshake_cpu_us: handshake_us,
        proxy_cpu_steady,
        // Handshakes are not paced: the wave takes every spare core.
        proxy_cpu_peak: if n > 0.0 && handshake_us > 0.0 {
            proxy_cores.max(proxy_cpu_steady)
        } else {
            proxy_cpu_steady
        },
        proxy_busy_seconds: arrival.map(|a| n / a),
        queue,
    })
}

/// Cores and memory for the proxy and the broker (pure).
pub fn estimate(w: &Workload, cal: &Calibration) -> Result<Estimate, EstimateError> {
    let proxy_connect_us = w.tls_share * cal.proxy.tls_connect_cpu_us
        + (1.0 - w.tls_share) * cal.proxy.plain_connect_cpu_us;
    let proxy = component(w, cal, w.proxy_nodes, proxy_load, proxy_connect_us);
    if !proxy.is_finite() {
        return Err(EstimateError::Overflow("proxy"));
    }
    let mut broker = component(
        w,
        cal,
        w.broker_nodes,
        broker_load,
        cal.broker.connect_cpu_us,
    );
    let admission = paced_storm(w, cal, &proxy, &broker, proxy_connect_us);
    if let Some(storm) = broker.reconnect_storm.as_mut() {
        storm.admission = admission;
    }
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
    if let Some(storm) = e
        .broker
        .reconnect_storm
        .as_ref()
        .and_then(|s| s.admission.as_ref())
    {
        storm_warnings(w, cal, storm, &mut out);
    }
    out
}

/// `max_connect_rate` per proxy that keeps the surviving brokers within
/// their cores during the storm (`None`: they have no spare core).
fn rate_within_cores(cal: &Calibration, storm: &PacedStorm) -> Option<f64> {
    let spare = to_f64(storm.broker_cores) - storm.broker_cpu_steady;
    (spare > 1e-9 && cal.broker.connect_cpu_us > 0.0).then(|| {
        spare * f64::from(storm.survivors) * 1e6
            / cal.broker.connect_cpu_us
            / f64::from(storm.proxies)
    })
}

fn storm_warnings(w: &Workload, cal: &Calibration, storm: &PacedStorm, out: &mut Vec<String>) {
    let cores = to_f64(storm.broker_cores);
    let over = storm
        .broker_cpu_peak
        .filter(|&peak| peak > cores * (1.0 + 1e-9));
    if let Some(peak) = over {
        let fix = match rate_within_cores(cal, storm) {
            Some(r) if r >= 1.0 => format!(
                "{} max_connect_rate to at most {}/s (--max-connect-rate)",
                if storm.paced { "lower" } else { "set" },
                fmt_num(r.floor())
            ),
            _ => "give the broker nodes more cores".to_string(),
        };
        out.push(format!(
            "losing a broker node: its clients reach the {} survivors at {}/s{}, which then need \
             {} cores each, more than their {}: {fix}",
            storm.survivors,
            fmt_num(storm.broker_rate_per_s.unwrap_or(0.0)),
            if storm.paced {
                " (max_connect_rate × proxies)"
            } else {
                " (as fast as the proxies handshake)"
            },
            fmt_num(peak),
            storm.broker_cores,
        ));
    }
    let Some(q) = storm.queue.as_ref().filter(|q| q.refused > 0.0) else {
        return;
    };
    let mut fixes = Vec::new();
    if let Some(r) = q.fitting_rate_per_s.filter(|&r| r <= f64::from(MAX_RATE)) {
        let r = r.ceil();
        let peak = storm.broker_cpu_steady
            + r * f64::from(storm.proxies) / f64::from(storm.survivors) * cal.broker.connect_cpu_us
                / 1e6;
        fixes.push(format!(
            "raise max_connect_rate to {}/s (--max-connect-rate; the survivors then peak at {} \
             cores each, of {})",
            fmt_num(r),
            fmt_num(peak),
            storm.broker_cores
        ));
    }
    let mut queue_fix = Vec::new();
    if q.unbounded_peak_waiting > to_f64(w.queue_size) {
        let size = q.unbounded_peak_waiting.ceil();
        if size <= to_f64(MAX_QUEUE_SIZE) {
            queue_fix.push(format!("queue.size to {}", fmt_num(size)));
        }
    }
    if q.unbounded_longest_wait_s > w.queue_timeout_s {
        let t = q.unbounded_longest_wait_s.ceil();
        if t <= MAX_QUEUE_TIMEOUT.as_secs_f64() {
            queue_fix.push(format!("queue.timeout to {} s", fmt_num(t)));
        } else {
            queue_fix.clear();
        }
    }
    if !queue_fix.is_empty() {
        fixes.push(format!(
            "raise {} (--queue-size, --queue-timeout)",
            queue_fix.join(" and ")
        ));
    }
    let fix = if fixes.is_empty() {
        "no setting within the bounds holds it: add proxy replicas or broker nodes".to_string()
    } else {
        fixes.join(", or ")
    };
    out.push(format!(
        "losing a broker node: the admission queues do not hold the wave ({} clients a proxy \
         at {}/s each, queue.size {}, queue.timeout {} s): about {} are refused \"server busy\" \
         (queue.{}) and come back, a retry wave of {} CPU-s of handshakes; {fix}",
        fmt_num(storm.clients_per_proxy),
        w.max_connect_rate,
        fmt_num(to_f64(w.queue_size)),
        fmt_num(w.queue_timeout_s),
        fmt_num(q.refused),
        q.refused_by.map_or("size", QueueLimit::as_str),
        fmt_num(q.retry_cpu_seconds),
    ));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::float_cmp)]
pub(super) mod tests {
    use super::*;
    use crate::estimate::{BrokerCosts, Measured, ProxyCosts, Qos};

    /// Round numbers, to check the arithmetic by hand.
    pub(in crate::estimate) fn round() -> Calibration {
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
                packet_cpu_us: 9.0,
                byte_cpu_ns: 10.0,
                rss_base_mib: 10.0,
                rss_per_tls_connection_kib: 16.0,
                rss_per_plain_connection_kib: 8.0,
                wakeups: no_wakeups(),
            },
            broker: BrokerCosts {
                cpu_us_per_publish_in: 5.0,
                cpu_us_per_delivery: 4.0,
                cpu_us_per_ack: 1.0,
                connect_cpu_us: 50.0,
                rss_base_mib: 20.0,
                rss_per_connection_kib: 10.0,
                wakeups: no_wakeups(),
            },
            fit: None,
        }
    }

    /// Wake-ups that cost nothing: the by-hand tests count packets only.
    fn no_wakeups() -> Wakeups {
        Wakeups {
            background_cpu_us_per_s: 0.0,
            connection_cpu_us_per_s: 0.0,
            thread_wakeup_cpu_us: 0.0,
            wakeup_cpu_us: 0.0,
            coalesce_us: 0.0,
            thread_coalesce_us: 0.0,
        }
    }

    pub(in crate::estimate) fn workload() -> Workload {
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

    pub(in crate::estimate) fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    fn cpu_rate(c: &ComponentEstimate, term: Term) -> f64 {
        c.cpu
            .iter()
            .find(|t| t.term == term)
            .map_or(0.0, |t| t.rate_per_s)
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

    fn storm(e: &Estimate) -> &PacedStorm {
        e.broker
            .reconnect_storm
            .as_ref()
            .and_then(|s| s.admission.as_ref())
            .unwrap()
    }

    #[test]
    fn a_wave_the_queue_holds() {
        // 1000 clients at 200/s, let through at 100/s: the queue grows at
        // 100/s for 5 s, to 500, and the last waits 500 / 100 = 5 s.
        let v = wave(1000.0, Some(200.0), 100.0, 10_000.0, 10.0);
        assert!(close(v.unbounded_peak, 500.0));
        assert!(close(v.unbounded_wait_s, 5.0));
        assert_eq!(
            (v.peak, v.longest_wait_s),
            (v.unbounded_peak, v.unbounded_wait_s)
        );
        assert_eq!((v.refused, v.refused_by), (0.0, None));
        // The lowest rate that holds it: 1000 / (10 s + 1000 / 200).
        assert!(close(v.fitting_rate.unwrap(), 1000.0 / 15.0));
    }

    #[test]
    fn a_wave_beyond_the_timeout_or_the_size() {
        // Timeout 2 s: the queue carries 100/s × 2 s = 200 through; the
        // other 300 of the 500 time out. It holds the last 2 s of
        // arrivals, 400, and nobody admitted waited more than 2 s.
        let v = wave(1000.0, Some(200.0), 100.0, 10_000.0, 2.0);
        assert!(close(v.refused, 300.0));
        assert_eq!(v.refused_by, Some(QueueLimit::Timeout));
        assert!(close(v.peak, 400.0));
        assert!(close(v.longest_wait_s, 2.0));
        // n / (timeout + n / arrival): 1000 / 7.
        assert!(close(v.fitting_rate.unwrap(), 1000.0 / 7.0));

        // Size 100: 400 refused at once; the last admitted waited 1 s.
        let v = wave(1000.0, Some(200.0), 100.0, 100.0, 10.0);
        assert!(close(v.refused, 400.0));
        assert_eq!(v.refused_by, Some(QueueLimit::Size));
        assert!(close(v.peak, 100.0));
        assert!(close(v.longest_wait_s, 1.0));
        // 200/s × (1 − 100 / 1000) leaves exactly 100 waiting.
        assert!(close(v.fitting_rate.unwrap(), 180.0));
        let fits = wave(1000.0, Some(200.0), 180.0, 100.0, 10.0);
        assert!(fits.refused < 1e-9, "{fits:?}");
    }

    #[test]
    fn a_wave_all_at_once() {
        let v = wave(1000.0, None, 100.0, 300.0, 10.0);
        assert_eq!((v.peak, v.refused), (300.0, 700.0));
        assert_eq!(v.refused_by, Some(QueueLimit::Size));
        assert_eq!(v.fitting_rate, None, "no rate fits 1000 in 300 places");
        let v = wave(1000.0, None, 100.0, 10_000.0, 5.0);
        assert_eq!((v.peak, v.refused, v.longest_wait_s), (1000.0, 500.0, 5.0));
        assert_eq!(v.fitting_rate, Some(200.0));
    }

    /// The fluid model against a FIFO queue simulated client by client in
    /// 1 ms steps: arrivals at a rate, one admission per token, a size,
    /// waits that time out.
    #[test]
    fn the_wave_matches_a_simulated_queue() {
        fn simulate(n: u32, arrival: f64, rate: f64, size: usize, timeout: f64) -> (u32, usize) {
            let dt = 1e-3;
            let (mut queue, mut arrived, mut refused, mut peak) =
                (std::collections::VecDeque::new(), 0_u32, 0_u32, 0_usize);
            let (mut tokens, mut step) = (0.0_f64, 0_u32);
            while arrived < n || !queue.is_empty() {
                let t = f64::from(step) * dt;
                while arrived < n && f64::from(arrived) < arrival * (t + dt) {
                    arrived += 1;
                    if queue.len() >= size {
                        refused += 1;
                    } else {
                        queue.push_back(t);
                    }
                }
                while queue.front().is_some_and(|&joined| t - joined > timeout) {
                    queue.pop_front();
                    refused += 1;
                }
                tokens = if queue.is_empty() {
                    0.0
                } else {
                    (tokens + rate * dt).min(1.0)
                };
                if tokens >= 1.0 && queue.pop_front().is_some() {
                    tokens -= 1.0;
                }
                peak = peak.max(queue.len());
                step += 1;
            }
            (refused, peak)
        }
        let cases = [
            (5000, 2000.0, 500.0, 10_000, 10.0),
            (5000, 2000.0, 500.0, 10_000, 3.0),
            (5000, 2000.0, 500.0, 1000, 10.0),
            (16_667, 2587.0, 500.0, 10_000, 10.0),
        ];
        for (n, a, r, size, timeout) in cases {
            let (refused, peak) = simulate(n, a, r, size, timeout);
            let v = wave(f64::from(n), Some(a), r, to_f64(size as u64), timeout);
            let near = |sim: f64, model: f64| (sim - model).abs() <= 2.0 + 0.01 * model;
            assert!(
                near(f64::from(refused), v.refused),
                "{n} {a} {r} {size} {timeout}: {refused} vs {v:?}"
            );
            assert!(
                near(to_f64(peak as u64), v.peak),
                "{n} {a} {r} {size} {timeout}: {peak} vs {v:?}"
            );
        }
    }

    #[test]
    fn losing_a_broker_node_without_a_rate() {
        let e = estimate(&workload(), &round()).unwrap();
        let s = storm(&e);
        // 1000 / 3 clients, through 2 proxies of 7 cores with 1.505 busy:
        // 5495 handshakes/s each at 1000 µs.
        assert!(close(s.clients_per_proxy, 1000.0 / 6.0));
        assert!(close(s.arrival_per_s.unwrap(), 2.0 * 5495.0));
        assert!(!s.paced);
        assert_eq!((s.paced_rate_per_s, s.queue.as_ref()), (None, None));
        assert!(close(s.broker_rate_per_s.unwrap(), 10_990.0));
        assert!(close(s.seconds.unwrap(), 1000.0 / 3.0 / 10_990.0));
        // Survivors: 1.10025 + 10,990/s ÷ 2 × 50 µs.
        assert_eq!((s.survivors, s.broker_cores), (2, 3));
        assert!(close(s.broker_cpu_peak.unwrap(), 1.10025 + 0.27475));
        assert_eq!(s.broker_cpu_peak, s.broker_cpu_peak_unpaced);
        // The proxies run flat out until the wave is in.
        assert_eq!(s.proxy_cpu_peak, 7.0);
        assert!(close(s.proxy_busy_seconds.unwrap(), 1000.0 / 6.0 / 5495.0));
        assert!(warnings(&workload(), &round(), &e).is_empty());
    }

    #[test]
    fn losing_a_broker_node_paced() {
        let w = Workload {
            max_connect_rate: 10,
            queue_timeout_s: 10.0,
            ..workload()
        };
        let e = estimate(&w, &round()).unwrap();
        let s = storm(&e);
        assert!(s.paced);
        assert_eq!(s.paced_rate_per_s, Some(20.0));
        assert_eq!(s.broker_rate_per_s, Some(20.0));
        assert!(close(s.seconds.unwrap(), 1000.0 / 3.0 / 20.0));
        assert!(close(
            s.broker_cpu_peak.unwrap(),
            1.10025 + 10.0 * 50.0 / 1e6
        ));
        assert!(close(s.broker_cpu_peak_unpaced.unwrap(), 1.375));
        // Each proxy: 166.7 clients at 5495/s, 10/s let through; 100 of
        // them fit in 10 s.
        let q = s.queue.as_ref().unwrap();
        let waiting = 1000.0 / 6.0 * (1.0 - 10.0 / 5495.0);
        assert!(close(q.unbounded_peak_waiting, waiting));
        assert!(close(q.refused, 2.0 * (waiting - 100.0)));
        assert_eq!(q.refused_by, Some(QueueLimit::Timeout));
        assert!(close(q.retry_cpu_seconds, q.refused * 1000.0 / 1e6));
        // A waiter: 16 KiB of TLS connection, one 4 KiB socket, 1224 B.
        assert!(close(q.waiter_kib, 20.0 + 1224.0 / 1024.0));
        assert!(close(q.peak_memory_mib, waiting * q.waiter_kib / 1024.0));
        let notes = warnings(&w, &round(), &e);
        let note = notes.iter().find(|n| n.contains("server busy")).unwrap();
        for fix in [
            "--max-connect-rate",
            "queue.timeout to 17 s",
            "--queue-timeout",
        ] {
            assert!(note.contains(fix), "{fix} in {note}");
        }
        assert!(!note.contains("queue.size to"), "{note}");

        // A rate above the handshakes' pace paces nothing.
        let w = Workload {
            max_connect_rate: 6000,
            ..workload()
        };
        let e = estimate(&w, &round()).unwrap();
        let s = storm(&e);
        assert!(!s.paced && s.queue.is_none());
        assert!(close(s.broker_rate_per_s.unwrap(), 10_990.0));
        assert_eq!(s.paced_rate_per_s, Some(12_000.0));
    }

    #[test]
    fn survivors_beyond_their_cores_get_a_rate_that_fits() {
        let mut cal = round();
        cal.broker.connect_cpu_us = 1000.0;
        let e = estimate(&workload(), &cal).unwrap();
        let s = storm(&e);
        // 1.105 (connects now 5/s × 1000 µs) + 5495/s × 1000 µs on 3 cores.
        assert!(s.broker_cpu_peak.unwrap() > 3.0);
        let notes = warnings(&workload(), &cal, &e);
        // (3 − 1.105) × 2 survivors / 1000 µs / 2 proxies = 1895.
        assert!(
            notes
                .iter()
                .any(|n| n.contains("set max_connect_rate to at most 1,895/s")),
            "{notes:?}"
        );
        let w = Workload {
            max_connect_rate: 1895,
            ..workload()
        };
        let e = estimate(&w, &cal).unwrap();
        assert!(storm(&e).broker_cpu_peak.unwrap() <= 3.0 + 1e-9);
        assert!(
            !warnings(&w, &cal, &e)
                .iter()
                .any(|n| n.contains("more than their"))
        );
    }

    #[test]
    fn one_broker_node_has_no_storm_to_pace() {
        let w = Workload {
            broker_nodes: 1,
            max_connect_rate: 10,
            ..workload()
        };
        assert!(
            estimate(&w, &round())
                .unwrap()
                .broker
                .reconnect_storm
                .is_none()
        );
    }

    #[test]
    fn cores_round_up_without_float_noise() {
        assert_eq!(cores_for(0.0), 1);
        assert_eq!(cores_for(1.4 / 0.7), 2);
        assert_eq!(cores_for(2.01), 3);
        assert_eq!(cores_for(f64::MAX), u64::MAX);
    }

    /// The same message rate from many slow publishers costs more than
    /// from a few fast ones: they wake the proxy once per message.
    #[test]
    fn wakeups_follow_the_connection_shape() {
        let mut cal = round();
        cal.proxy.wakeups = Wakeups {
            background_cpu_us_per_s: 0.0,
            connection_cpu_us_per_s: 0.0,
            thread_wakeup_cpu_us: 10.0,
            wakeup_cpu_us: 10.0,
            coalesce_us: 1000.0,
            thread_coalesce_us: 100.0,
        };
        let shaped = |publishers: u64, rate: f64| Workload {
            connections: publishers + 2,
            publish_rate: to_f64(publishers) * rate,
            fan_out: 2.0,
            pubsub: Some(crate::estimate::PubSub {
                publishers,
                subscribers: 2,
                rate_per_publisher: rate,
                topics: 1,
            }),
            proxy_nodes: 1,
            ..workload()
        };
        let many = estimate(&shaped(2000, 2.0), &cal).unwrap();
        let few = estimate(&shaped(2, 2000.0), &cal).unwrap();
        let wakeups = |e: &Estimate| cpu_rate(&e.proxy, Term::RelayWakeups);
        assert_eq!(
            cpu(&many.proxy, Term::RelayPublish),
            cpu(&few.proxy, Term::RelayPublish)
        );
        assert!(wakeups(&many) > 4000.0, "{}", wakeups(&many));
        assert!(wakeups(&few) < 3000.0, "{}", wakeups(&few));
        assert!(many.proxy.per_node.cpu_busy > few.proxy.per_node.cpu_busy);
    }

    /// A busy node's threads find work waiting: fewer thread wake-ups per
    /// socket wake-up than a light one's, but never none while they idle.
    #[test]
    fn busy_nodes_are_woken_less_per_socket_read() {
        let mut cal = round();
        cal.proxy.wakeups = Wakeups {
            background_cpu_us_per_s: 0.0,
            connection_cpu_us_per_s: 0.0,
            thread_wakeup_cpu_us: 10.0,
            wakeup_cpu_us: 1.0,
            coalesce_us: 0.0,
            thread_coalesce_us: 100.0,
        };
        let ratio = |rate: f64| {
            let w = Workload {
                publish_rate: rate,
                proxy_nodes: 1,
                ..workload()
            };
            let e = estimate(&w, &cal).unwrap();
            let t = cpu_rate(&e.proxy, Term::RelayThreadWakeups);
            assert!(t > 0.0);
            (
                t / cpu_rate(&e.proxy, Term::RelayWakeups),
                e.proxy.per_node.cpu_busy,
            )
        };
        let (light, light_busy) = ratio(1000.0);
        let (heavy, heavy_busy) = ratio(1_000_000.0);
        assert!(
            light_busy < 0.1 && heavy_busy > 20.0,
            "{light_busy} {heavy_busy}"
        );
        assert!(heavy < light, "{heavy} {light}");
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
}
