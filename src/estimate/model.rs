//! The cost model (pure): a [`Workload`] and a [`Calibration`] give the
//! cores and memory of each component ([`estimate`]), and the notes the
//! reader must know ([`warnings`]).

use super::EstimateError;
use super::calibration::Calibration;
use super::figures::{
    Bottleneck, ComponentEstimate, CpuTerm, Estimate, MemTerm, NodeFigures, ReconnectStorm, Term,
};
use super::num::{fmt_num, to_f64};
use super::workload::Workload;

/// Kernel memory per idle TCP socket (not in RSS; charged to the memory
/// cgroup): `struct tcp_sock` (~2.3 KiB), inode and dentry, `struct file`,
/// epoll entry. Socket buffers with data in flight come on top.
pub const KERNEL_SOCKET_KIB: f64 = 4.0;

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
}
