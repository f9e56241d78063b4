//! What an estimate says: the cost terms, what limits a node, and the
//! figures of a node and of each component. Plain data; the model fills it
//! in, the report reads it.

use serde::Serialize;

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

    pub(super) fn label(self) -> &'static str {
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
    pub(super) const ALL: [Bottleneck; 8] = [
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

    pub(super) fn describe(self) -> &'static str {
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
    pub(super) fn new(term: Term, rate_per_s: f64, unit_cpu_us: f64) -> CpuTerm {
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
    pub(super) fn new(term: Term, count: f64, unit_kib: f64) -> MemTerm {
        MemTerm {
            term,
            count,
            unit_kib,
            mib: count * unit_kib / 1024.0,
        }
    }
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
