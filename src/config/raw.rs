//! The configuration file as written: serde structs mirroring the TOML, with
//! every table `deny_unknown_fields`. Nothing here is validated; see
//! [`super::Config::from_raw`] for the conversion into typed values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub listener: Vec<RawListener>,
    #[serde(default)]
    pub pool: BTreeMap<String, RawPool>,
    #[serde(default)]
    pub limits: RawLimits,
    pub admin: Option<RawAdmin>,
    pub upgrade: Option<RawUpgrade>,
    pub resolver: Option<RawResolver>,
    pub log: Option<RawLog>,
}

/// `[log]`: the access log.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub access: Option<String>,
    pub access_username: Option<bool>,
}

/// `[resolver]`: where pool servers' DNS names are resolved.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawResolver {
    pub nameservers: Option<Vec<String>>,
    pub timeout: Option<String>,
}

/// `[upgrade]`: hand the listening sockets to a new process.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpgrade {
    pub socket: Option<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_file: Option<String>,
    pub max_connections: Option<u32>,
    pub max_connections_per_source: Option<u32>,
    pub local_reserve: Option<u32>,
    pub first_byte_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub client_index: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Option<String>,
    pub listen: Option<String>,
    pub pool: Option<String>,
    pub backlog: Option<u32>,
    pub accept_sockets: Option<u32>,
    pub tls: Option<RawTls>,
    pub mqtt: Option<RawMqtt>,
    pub websocket: Option<RawWebSocket>,
    pub proxy_protocol: Option<String>,
    pub proxy_protocol_from: Option<Vec<String>>,
    pub proxy_protocol_timeout: Option<String>,
    #[serde(default)]
    pub route: Vec<RawRoute>,
}

/// `[[listener.route]]`: send matching clients to another pool.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<String>,
    pub sni: Option<String>,
    pub client_id_prefix: Option<String>,
    pub username_prefix: Option<String>,
    pub cert_cn_prefix: Option<String>,
    pub pool: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebSocket {
    pub path: Option<String>,
    pub subprotocols: Option<Vec<String>>,
    pub require_subprotocol: Option<bool>,
    pub to: Option<String>,
    pub upgrade_timeout: Option<String>,
    pub max_request_size: Option<String>,
    pub max_message_size: Option<String>,
    pub max_frame_size: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub ocsp: Option<String>,
    #[serde(default)]
    pub sni: Vec<RawCertPair>,
    pub client_auth: Option<String>,
    pub client_ca: Option<String>,
    pub crl: Option<String>,
    pub max_client_chain: Option<u32>,
    pub max_client_chain_size: Option<String>,
    pub min_version: Option<String>,
    pub cipher_suites: Option<Vec<String>>,
    pub kx_groups: Option<Vec<String>>,
    pub prefer_server_order: Option<bool>,
    pub session_tickets: Option<u8>,
    pub ticket_keys: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertPair {
    pub cert: String,
    pub key: String,
    pub ocsp: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqtt {
    pub connect_timeout: Option<String>,
    pub max_connect_size: Option<String>,
    pub keepalive_factor: Option<f64>,
    pub max_idle_timeout: Option<String>,
    pub client_id_match: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    pub strategy: Option<String>,
    pub hash_key: Option<String>,
    pub proxy_protocol: Option<String>,
    pub connect_timeout: Option<String>,
    pub connect_attempts: Option<u32>,
    pub connack_timeout: Option<String>,
    pub resolve_interval: Option<String>,
    pub drain_disconnect: Option<bool>,
    pub drain_window: Option<String>,
    pub max_connect_rate: Option<u32>,
    pub queue: Option<RawQueue>,
    pub slow_start: Option<String>,
    pub rebalance: Option<RawRebalance>,
    pub health: Option<RawHealth>,
    pub identity: Option<RawIdentity>,
    #[serde(default)]
    pub servers: Vec<RawServer>,
}

/// `queue = { size, timeout }`: CONNECTs waiting for admission to a pool.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub size: Option<u64>,
    pub timeout: Option<String>,
}

/// `rebalance = { after, rate }`: moving clients home once a node is back.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRebalance {
    pub after: Option<String>,
    pub rate: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub cn: Option<bool>,
    pub cipher: Option<bool>,
    pub subject: Option<bool>,
    pub san: Option<bool>,
    pub fingerprint: Option<bool>,
    pub cert: Option<bool>,
    pub cert_type: Option<u8>,
    pub pass_tlvs: Option<Vec<u8>>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub check: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub mqtt_version: Option<String>,
    pub proxy_command: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub name: Option<String>,
    pub addr: String,
    pub weight: Option<u32>,
    pub max_connections: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_connections: Option<u64>,
    pub tls_handshake_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub worker_threads: Option<u64>,
    pub source_connect_rate: Option<u32>,
    pub client_connect_rate: Option<u32>,
}
