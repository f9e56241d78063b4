//! The configuration of a pool, as the balancer uses it: its nodes, how
//! one is chosen, and how their health is checked. Built and validated by
//! [`crate::config`]; owned here so that this layer depends on nothing
//! above it.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use crate::mqtt::ProtocolVersion;
use crate::proxy_protocol::{IdentityTlvs, ProxyCommand, ProxyProtocol};
use crate::secret::Secret;

/// Where DNS names of pool servers are resolved (`[resolver]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Name servers asked over UDP (TCP when an answer is truncated);
    /// empty: the system's (`/etc/resolv.conf`, and `/etc/hosts` first).
    pub nameservers: Vec<SocketAddr>,
    /// Per query and name server.
    pub timeout: Duration,
}

/// How a pool chooses a node for a new client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    LeastConnections,
    ClientId,
}

/// What the `client-id` strategy hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKey {
    ClientId,
    Username,
    CertCn,
}

/// How a node's health is checked actively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthCheckKind {
    Tcp,
    Mqtt,
}

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub check: HealthCheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: NonZeroU32,
    pub fall: NonZeroU32,
    pub mqtt_version: ProtocolVersion,
    pub proxy_command: ProxyCommand,
    /// Credentials of the MQTT check's CONNECT, for brokers that refuse
    /// anonymous clients.
    pub username: Option<String>,
    pub password: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub name: String,
    pub addr: SocketAddr,
    pub weight: NonZeroU32,
    /// Client connections the node takes at most (0: no cap).
    pub max_connections: u32,
}

/// A server given by DNS name: every address the name resolves to becomes
/// a node named `{name}/{ip}` (a Kubernetes headless Service lists every
/// broker pod), re-resolved every `resolve_interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsServerConfig {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub weight: NonZeroU32,
    /// Each node's cap (0: none).
    pub max_connections: u32,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub name: String,
    pub strategy: Strategy,
    pub hash_key: HashKey,
    pub proxy_protocol: ProxyProtocol,
    /// Client-identity TLVs of v2 headers.
    pub identity: IdentityTlvs,
    pub connect_timeout: Duration,
    pub connect_attempts: NonZeroU32,
    /// MQTT listeners: how long a node has to answer a client's CONNECT
    /// with a CONNACK before the next candidate gets it.
    pub connack_timeout: Duration,
    pub health: HealthConfig,
    pub servers: Vec<ServerConfig>,
    pub dns: Vec<DnsServerConfig>,
    pub resolve_interval: Duration,
    /// On drain, send MQTT 5 clients DISCONNECT 0x9C "use another server".
    pub drain_disconnect: bool,
    /// Spread those DISCONNECTs over this window (no reconnect storm).
    pub drain_window: Duration,
    /// A node entering rotation takes a share growing from nothing to its
    /// full weight over this window (zero: at once).
    pub slow_start: Duration,
    /// Moving clients home once a node is back (`None`: only by hand).
    pub rebalance: Option<RebalanceConfig>,
    pub admission: AdmissionConfig,
}

/// `rebalance = { after, rate }`: see [`super::rebalance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebalanceConfig {
    /// A node in rotation again (back up, added, enabled) this long (and
    /// past its slow start) has its clients moved home.
    pub after: Duration,
    /// Clients asked to move per second.
    pub rate: u32,
}

/// How a pool lets new clients reach its nodes (`max_connect_rate`,
/// `queue`; the per-node caps are the servers'): see
/// [`super::admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionConfig {
    /// New client connections per second to the pool's nodes, all
    /// together (0: no limit).
    pub max_connect_rate: u32,
    /// CONNECTs waiting for admission at most (0: none wait, refused at
    /// once).
    pub queue_size: usize,
    /// How long one waits at most.
    pub queue_timeout: Duration,
}

/// A pool of `servers` (name, port on 127.0.0.1) with defaults, for tests.
#[cfg(test)]
pub fn test_pool(name: &str, servers: &[(&str, u16)]) -> PoolConfig {
    PoolConfig {
        name: name.into(),
        strategy: Strategy::RoundRobin,
        hash_key: HashKey::ClientId,
        proxy_protocol: ProxyProtocol::Off,
        identity: IdentityTlvs::default(),
        connect_timeout: Duration::from_secs(1),
        connect_attempts: NonZeroU32::MIN,
        connack_timeout: Duration::from_secs(1),
        health: HealthConfig {
            check: HealthCheckKind::Tcp,
            interval: Duration::from_secs(3600),
            timeout: Duration::from_secs(1),
            rise: NonZeroU32::MIN,
            fall: NonZeroU32::MIN,
            mqtt_version: ProtocolVersion::V311,
            proxy_command: ProxyCommand::Proxy,
            username: None,
            password: None,
        },
        servers: servers
            .iter()
            .map(|(n, port)| ServerConfig {
                name: (*n).into(),
                addr: SocketAddr::from(([127, 0, 0, 1], *port)),
                weight: NonZeroU32::MIN,
                max_connections: 0,
            })
            .collect(),
        dns: Vec::new(),
        resolve_interval: Duration::from_secs(10),
        drain_disconnect: false,
        drain_window: Duration::from_secs(30),
        admission: AdmissionConfig {
            max_connect_rate: 0,
            queue_size: 10_000,
            queue_timeout: Duration::from_secs(10),
        },
        slow_start: Duration::ZERO,
        rebalance: None,
    }
}
