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
    /// Proxy: sockets read with what they had (a TLS record each way).
    RelayWakeups,
    /// Proxy: threads woken from waiting for sockets.
    RelayThreadWakeups,
    /// Broker: sockets read with what they had.
    BrokerWakeups,
    /// Broker: threads woken from waiting for sockets.
    BrokerThreadWakeups,
    /// The process's own timers, whatever the traffic.
    Background,
    /// CPU of each connection held beyond its packets (timers, memory
    /// kept warm).
    HeldConnections,
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
            Term::RelayWakeups => "relay_wakeups",
            Term::RelayThreadWakeups => "relay_thread_wakeups",
            Term::BrokerWakeups => "broker_wakeups",
            Term::BrokerThreadWakeups => "broker_thread_wakeups",
            Term::Background => "background",
            Term::HeldConnections => "connections_held",
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
            Term::RelayWakeups | Term::BrokerWakeups => "wake-ups",
            Term::RelayThreadWakeups | Term::BrokerThreadWakeups => "thread wake-ups",
            Term::Background => "background",
            Term::HeldConnections => "connections held",
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
            Term::RelayPublish
            | Term::RelayAcks
            | Term::RelayWakeups
            | Term::RelayThreadWakeups => Bottleneck::MessageRelay,
            Term::KeepAlive | Term::HeldConnections => Bottleneck::KeepAlive,
            Term::Connects => Bottleneck::Connects,
            Term::PublishIn
            | Term::Deliveries
            | Term::QosAcks
            | Term::BrokerWakeups
            | Term::BrokerThreadWakeups => Bottleneck::MessageRouting,
            Term::Mesh => Bottleneck::Mesh,
            Term::BaseMemory | Term::Background => Bottleneck::BaseFootprint,
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
            Bottleneck::KeepAlive => "keep-alive pings and held connections",
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
    /// Losing a broker node, through the proxies' admission (broker only).
    pub admission: Option<PacedStorm>,
}

/// Losing a broker node: its clients come back through every proxy
/// replica, whose handshakes are not paced, and reach the surviving brokers
/// at the pool's `max_connect_rate` (per replica) if one is set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PacedStorm {
    /// Proxy replicas the clients come back through (each paces its own
    /// share: replicas share no state).
    pub proxies: u32,
    /// Clients of the lost node coming back through each proxy.
    pub clients_per_proxy: f64,
    /// Handshakes per second all proxies can do on their spare cores: how
    /// fast the wave arrives. `None`: no spare cores, taken as all at once.
    pub arrival_per_s: Option<f64>,
    /// `max_connect_rate × proxies`; `None` without a rate.
    pub paced_rate_per_s: Option<f64>,
    /// The rate is below the arrival: clients wait in the queues.
    pub paced: bool,
    /// Connects per second reaching the brokers during the storm
    /// (`None`: as fast as the clients come, not bounded by the model).
    pub broker_rate_per_s: Option<f64>,
    /// Seconds until every client of the lost node is on a survivor
    /// (`clients / broker_rate`), refused clients coming back in time.
    pub seconds: Option<f64>,
    /// Surviving broker nodes.
    pub survivors: u32,
    /// Cores of each survivor (as sized).
    pub broker_cores: u64,
    /// Broker CPU per connect (the calibration's `connect_cpu_us`).
    pub broker_connect_cpu_us: f64,
    /// Cores busy on each survivor with its steady load (one node lost).
    pub broker_cpu_steady: f64,
    /// Cores busy on each survivor during the storm at `broker_rate_per_s`.
    pub broker_cpu_peak: Option<f64>,
    /// The same if nothing paced: the clients at the arrival rate.
    pub broker_cpu_peak_unpaced: Option<f64>,
    /// Cores of each proxy (as sized).
    pub proxy_cores: u64,
    /// Proxy CPU per handshake (TLS and plain, at the TLS share).
    pub proxy_handshake_cpu_us: f64,
    /// Cores busy on each proxy with its steady load (all proxies up).
    pub proxy_cpu_steady: f64,
    /// Cores busy on each proxy during the wave (handshakes are not paced:
    /// all of its cores while the wave arrives).
    pub proxy_cpu_peak: f64,
    /// Seconds the wave keeps each proxy's spare cores busy (`None`: no
    /// spare cores).
    pub proxy_busy_seconds: Option<f64>,
    /// Each proxy's admission queue (`None`: nothing waits).
    pub queue: Option<StormQueue>,
}

/// One proxy's admission queue during the storm.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StormQueue {
    /// Most clients waiting at once.
    pub peak_waiting: f64,
    /// The longest wait of an admitted client, seconds.
    pub longest_wait_s: f64,
    /// Without `queue.size` and `queue.timeout`: the wave's peak and
    /// longest wait.
    pub unbounded_peak_waiting: f64,
    pub unbounded_longest_wait_s: f64,
    /// Clients refused "server busy" (all proxies together): they come
    /// back as a retry wave.
    pub refused: f64,
    /// What refuses them (`None`: the queue holds the wave).
    pub refused_by: Option<QueueLimit>,
    /// CPU-seconds of the retry wave's handshakes (all proxies together).
    pub retry_cpu_seconds: f64,
    /// Memory one waiting client holds (KiB).
    pub waiter_kib: f64,
    /// `peak_waiting × waiter_kib`.
    pub peak_memory_mib: f64,
    /// `max_connect_rate` of each proxy with which the queue holds the
    /// wave as it is (`None`: no rate does, the size is too small).
    pub fitting_rate_per_s: Option<f64>,
}

/// The queue limit that refuses clients first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueLimit {
    /// `queue.size`: refused at once ("queue_full").
    Size,
    /// `queue.timeout`: refused after waiting ("queue_timeout").
    Timeout,
}

impl QueueLimit {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueLimit::Size => "size",
            QueueLimit::Timeout => "timeout",
        }
    }
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
