//! `mqttlb broker` configuration: the `[broker]` table of a TOML file and
//! the `broker` command's flags → typed [`BrokerConfig`].

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

pub use super::Secret;
use super::{ConfigErrors, Cx, parse_toml, read_file};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBrokerFile {
    #[serde(default)]
    pub broker: RawBroker,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBroker {
    pub listen: Option<String>,
    pub node_name: Option<String>,
    #[serde(default)]
    pub peers: Vec<String>,
    pub proxy_protocol: Option<String>,
    pub cn_as_username: Option<bool>,
    pub max_packet_size: Option<String>,
    pub max_connections: Option<u64>,
    pub receive_maximum: Option<u16>,
    pub max_queued_messages: Option<u32>,
    pub topic_alias_maximum: Option<u16>,
    pub keepalive_factor: Option<f64>,
    pub connect_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub peer_reconnect_max: Option<String>,
    pub mesh_secret: Option<String>,
    pub admin: Option<String>,
    pub admin_token_file: Option<String>,
    #[serde(default)]
    pub deny_subscribe: Vec<String>,
}

/// Whether the listener expects a PROXY protocol header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyIn {
    /// Never read one (a header would be a malformed CONNECT).
    Off,
    /// Read one when the connection starts with a v1 or v2 signature.
    Optional,
    /// Refuse connections without one.
    Required,
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub source: String,
    pub listen: SocketAddr,
    /// Identity in logs and peer links; defaults to the listen address.
    pub node_name: String,
    /// Other nodes of the mesh (their MQTT listeners).
    pub peers: Vec<SocketAddr>,
    pub proxy_protocol: ProxyIn,
    /// Use the client-certificate CN from a PROXY v2 SSL TLV as the user name.
    pub cn_as_username: bool,
    /// Largest packet accepted and sent (bytes).
    pub max_packet_size: usize,
    pub max_connections: usize,
    /// QoS 1/2 messages in flight per direction per client.
    pub receive_maximum: u16,
    /// Messages queued per session (online backlog and offline queue).
    pub max_queued_messages: usize,
    pub topic_alias_maximum: u16,
    pub keepalive_factor: f64,
    pub connect_timeout: Duration,
    pub drain_timeout: Duration,
    pub peer_reconnect_max: Duration,
    /// Password mesh links present and require. Without one, a mesh link
    /// is accepted only from the IP address of a configured peer.
    pub mesh_secret: Option<Secret>,
    /// Admin HTTP listener (metrics, health); off when `None`.
    pub admin: Option<SocketAddr>,
    /// Bearer token its API requires, from `broker.admin_token_file`.
    pub admin_token: Option<Secret>,
    /// Topic filters refused with SUBACK 0x80 (matched as filters against
    /// the requested filter, so `secret/#` denies `secret/a` and `secret/#`).
    pub deny_subscribe: Vec<String>,
}

/// Flags of `mqttlb broker`; they override the file.
#[derive(Debug, Default, Clone)]
pub struct BrokerOverrides {
    pub listen: Option<String>,
    pub peers: Vec<String>,
    pub admin: Option<String>,
}

impl BrokerConfig {
    pub fn load(path: Option<&Path>, o: &BrokerOverrides) -> Result<BrokerConfig, ConfigErrors> {
        let (source, mut raw) = match path {
            Some(path) => {
                let (source, text) = read_file(path)?;
                let raw = parse_toml::<RawBrokerFile>(&source, &text)?.broker;
                (source, raw)
            }
            None => ("<command line>".to_string(), RawBroker::default()),
        };
        if o.listen.is_some() {
            raw.listen = o.listen.clone();
        }
        if !o.peers.is_empty() {
            raw.peers = o.peers.clone();
        }
        if o.admin.is_some() {
            raw.admin = o.admin.clone();
        }
        // Relative paths (the admin token file) resolve against the file.
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        BrokerConfig::from_raw_in(&source, &base, raw)
    }

    pub fn from_raw(source: &str, raw: RawBroker) -> Result<BrokerConfig, ConfigErrors> {
        BrokerConfig::from_raw_in(source, Path::new(""), raw)
    }

    fn from_raw_in(
        source: &str,
        base: &Path,
        raw: RawBroker,
    ) -> Result<BrokerConfig, ConfigErrors> {
        let mut cx = Cx {
            file: source.to_string(),
            base: base.to_path_buf(),
            errors: Vec::new(),
        };
        let k = |s: &str| format!("broker.{s}");
        let listen = cx
            .addr(
                &k("listen"),
                raw.listen.as_deref().unwrap_or("0.0.0.0:1883"),
            )
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 1883)));
        let peers = raw
            .peers
            .iter()
            .enumerate()
            .filter_map(|(i, p)| cx.addr(&format!("broker.peers[{i}]"), p))
            .collect();
        let proxy_protocol = cx.choice(
            &k("proxy_protocol"),
            raw.proxy_protocol.as_deref(),
            ProxyIn::Off,
            &[
                ("off", ProxyIn::Off),
                ("optional", ProxyIn::Optional),
                ("required", ProxyIn::Required),
            ],
        );
        let max_packet_size = cx
            .size(
                &k("max_packet_size"),
                raw.max_packet_size.as_deref(),
                1 << 20,
            )
            .min(268_435_455);
        let keepalive_factor = match raw.keepalive_factor {
            None => 1.5,
            Some(f) if (1.0..=10.0).contains(&f) => f,
            Some(f) => {
                cx.err(
                    &k("keepalive_factor"),
                    &format!("must be 1.0 to 10.0, got {f}"),
                );
                1.5
            }
        };
        let receive_maximum = match raw.receive_maximum {
            Some(0) => {
                cx.err(&k("receive_maximum"), "must be at least 1");
                32
            }
            v => v.unwrap_or(32),
        };
        let max_queued_messages = match raw.max_queued_messages {
            Some(0) => {
                cx.err(&k("max_queued_messages"), "must be at least 1");
                1000
            }
            v => v.unwrap_or(1000) as usize,
        };
        let max_connections = match raw.max_connections {
            Some(0) => {
                cx.err(&k("max_connections"), "must be at least 1");
                100_000
            }
            v => usize::try_from(v.unwrap_or(100_000)).unwrap_or(usize::MAX),
        };
        let deny_subscribe = raw
            .deny_subscribe
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match crate::mqtt::topic::validate_filter(f) {
                Ok(()) => Some(f.clone()),
                Err(e) => {
                    cx.err(
                        &format!("broker.deny_subscribe[{i}]"),
                        &format!("{f:?}: {e}"),
                    );
                    None
                }
            })
            .collect();
        let config = BrokerConfig {
            source: source.to_string(),
            node_name: raw.node_name.unwrap_or_else(|| default_node_name(listen)),
            listen,
            peers,
            proxy_protocol,
            cn_as_username: raw.cn_as_username.unwrap_or(false),
            max_packet_size,
            max_connections,
            receive_maximum,
            max_queued_messages,
            topic_alias_maximum: raw.topic_alias_maximum.unwrap_or(64),
            keepalive_factor,
            connect_timeout: cx.duration(
                &k("connect_timeout"),
                raw.connect_timeout.as_deref(),
                Duration::from_secs(10),
            ),
            drain_timeout: cx.duration_or_zero(
                &k("drain_timeout"),
                raw.drain_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            peer_reconnect_max: cx.duration(
                &k("peer_reconnect_max"),
                raw.peer_reconnect_max.as_deref(),
                Duration::from_secs(5),
            ),
            deny_subscribe,
            mesh_secret: raw.mesh_secret.map(Secret),
            admin: raw.admin.as_deref().and_then(|a| cx.addr(&k("admin"), a)),
            admin_token: raw
                .admin_token_file
                .as_deref()
                .and_then(|f| cx.secret_file(&k("admin_token_file"), f)),
        };
        if cx.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(cx.errors))
        }
    }

    /// Defaults listening on `listen` (tests and the demo).
    pub fn with_listen(listen: SocketAddr) -> BrokerConfig {
        let mut c = BrokerConfig::from_raw("<defaults>", RawBroker::default())
            .unwrap_or_else(|_| unreachable!("defaults are valid"));
        c.listen = listen;
        c.node_name = listen.to_string();
        c
    }
}

/// A node's default name: its listen address, or, when that is a wildcard
/// (`0.0.0.0:1883` in every container of a cluster), the host name with
/// the port, so that meshed nodes never share a name (their peer links
/// would take each other's sessions over).
fn default_node_name(listen: SocketAddr) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("{h}:{}", listen.port()),
        None => listen.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_broker_config_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/broker.toml");
        let c = BrokerConfig::load(Some(Path::new(path)), &BrokerOverrides::default()).unwrap();
        assert_eq!(c.listen, "0.0.0.0:1883".parse().unwrap());
        assert_eq!(c.proxy_protocol, ProxyIn::Optional);
    }

    #[test]
    fn wildcard_listeners_are_named_after_the_host() {
        let named = default_node_name("0.0.0.0:1883".parse().unwrap());
        assert!(
            named.ends_with(":1883") && !named.starts_with("0.0.0.0"),
            "{named}"
        );
        assert_eq!(
            default_node_name("10.0.0.5:1883".parse().unwrap()),
            "10.0.0.5:1883"
        );
    }

    #[test]
    fn admin_token_file_is_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(dir.path().join("token"), "0123456789abcdef-broker\n").unwrap();
        std::fs::write(&path, "[broker]\nadmin_token_file = \"token\"\n").unwrap();
        let c = BrokerConfig::load(Some(&path), &BrokerOverrides::default()).unwrap();
        assert!(
            c.admin_token
                .is_some_and(|t| t.matches(b"0123456789abcdef-broker"))
        );
        std::fs::write(dir.path().join("token"), "short").unwrap();
        let e = BrokerConfig::load(Some(&path), &BrokerOverrides::default()).unwrap_err();
        assert_eq!(e.0[0].key, "broker.admin_token_file");
    }

    #[test]
    fn errors_name_keys() {
        let text = "[broker]\nlisten = \"nope\"\nreceive_maximum = 0\ndeny_subscribe = [\"a/#/b\"]\nbogus = 1\n";
        let e = parse_toml::<RawBrokerFile>("b.toml", text).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        let text =
            "[broker]\nlisten = \"nope\"\nreceive_maximum = 0\ndeny_subscribe = [\"a/#/b\"]\n";
        let raw = parse_toml::<RawBrokerFile>("b.toml", text).unwrap();
        let e = BrokerConfig::from_raw("b.toml", raw.broker).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "broker.listen",
                "broker.receive_maximum",
                "broker.deny_subscribe[0]"
            ]
        );
    }
}
