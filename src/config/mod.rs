//! Configuration: TOML file and command-line flags → one typed [`Config`].
//!
//! The file is deserialised into [`raw`] structs (unknown keys are errors),
//! flags are applied on top ([`Overrides`]), and [`Config::from_raw`]
//! converts everything once into typed values. Every problem found is
//! reported with the file, the key path and the reason; conversion does not
//! stop at the first one, so `mqttlb check` can print them all.
//!
//! # Layout
//!
//! * this file — the typed proxy configuration, errors, loading;
//! * [`raw`] — the file schema; [`template`] — configurations built in code;
//! * `overrides` — the flags; `validate` — raw values to typed ones;
//!   `routes` — a listener's `[[listener.route]]` rules; `admission` — a
//!   pool's `max_connect_rate`, `queue` and its servers' `max_connections`;
//! * [`defaults`] — defaults and bounds; [`broker`] — `mqttlb broker`'s file.

mod admission;
pub mod broker;
pub mod defaults;
mod overrides;
pub mod raw;
mod routes;
pub mod template;
mod validate;

pub use overrides::Overrides;
pub(crate) use validate::Cx;
pub use validate::parse_duration;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use std::path::Path;
use std::time::Duration;

use crate::mqtt::ProtocolVersion;

// Types a lower layer owns, re-exported: the configuration schema in one
// place for callers, the definitions beside the code that uses them.
pub use crate::accesslog::{AccessConfig, Destination as AccessDestination};
pub use crate::balance::config::{
    AdmissionConfig, DnsServerConfig, HashKey, HealthCheckKind, HealthConfig, PoolConfig,
    ResolverConfig, ServerConfig, Strategy,
};
pub use crate::balance::route::{RouteConfig, RouteMatch, SniPattern};
pub use crate::proxy_protocol::{InboundProxy, ProxyCommand, ProxyProtocol, TlvTypes, Trusted};
pub use crate::secret::Secret;
pub use crate::tls::{CertKeyPaths, ClientAuth, TlsConfig, TlsVersion};
use raw::RawConfig;

/// One configuration problem: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or `<command line>` for flags).
    pub file: String,
    /// Key path such as `pool.brokers.servers[1].addr`.
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.key, self.reason)
        }
    }
}

impl ConfigError {
    /// A TLS file problem found while building a listener of `file`.
    pub fn tls(file: &str, e: crate::tls::TlsSetupError) -> ConfigError {
        ConfigError {
            file: file.to_string(),
            key: e.key,
            reason: e.reason,
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration came from (for error messages and reloads).
    pub source: String,
    pub listeners: Vec<ListenerConfig>,
    pub pools: BTreeMap<String, PoolConfig>,
    pub limits: Limits,
    /// Admin HTTP listener (metrics, health, API); off when `None`.
    pub admin: Option<SocketAddr>,
    /// Bearer token the admin API (`/api/v1/…`) requires, from
    /// `admin.token_file`.
    pub admin_token: Option<Secret>,
    /// `[admin]` connection bounds.
    pub admin_limits: AdminLimits,
    /// `[upgrade]`: serve the listening sockets to a new process
    /// (`mqttlb proxy --takeover PATH`); off when `None`. Read at start.
    pub upgrade: Option<UpgradeConfig>,
    /// `[resolver]`: where pool servers' DNS names are resolved.
    pub resolver: ResolverConfig,
    /// `[log]`: the access log.
    pub log: AccessConfig,
}

/// Bounds on admin connections (`[admin]`). The admin port shares the
/// process's file descriptors with client traffic, and `/healthz` must
/// answer while anything else holds the port: connections are capped in
/// all and per source address, a connection that says nothing is closed
/// quickly, and connections from the host itself (`127.0.0.1`, `::1`: an
/// exec probe, `mqttlb health`, a sidecar) have slots of their own that
/// nobody outside can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Open admin connections from anywhere; more are closed at accept.
    pub max_connections: usize,
    /// Open admin connections from one source address (not the host
    /// itself).
    pub max_connections_per_source: usize,
    /// Further connections from the host itself, admitted when
    /// `max_connections` are held.
    pub local_reserve: usize,
    /// From connect to the first request byte.
    pub first_byte_timeout: Duration,
    /// From connect (or the end of the previous response) to a complete
    /// request head.
    pub header_timeout: Duration,
    /// `admin.client_index`: keep the index behind `/api/v1/clients`.
    pub client_index: bool,
    /// Longest life of one keep-alive connection (a scraper reconnects).
    pub max_connection_age: Duration,
}

impl Default for AdminLimits {
    fn default() -> AdminLimits {
        AdminLimits {
            max_connections: defaults::ADMIN_MAX_CONNECTIONS,
            max_connections_per_source: defaults::ADMIN_MAX_CONNECTIONS_PER_SOURCE,
            local_reserve: defaults::ADMIN_LOCAL_RESERVE,
            first_byte_timeout: defaults::ADMIN_FIRST_BYTE_TIMEOUT,
            header_timeout: defaults::ADMIN_REQUEST_TIMEOUT,
            max_connection_age: Duration::from_secs(300),
            client_index: true,
        }
    }
}

/// `[upgrade]`: where a running proxy offers its listening sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeConfig {
    /// The Unix socket (created 0600; a stale file is replaced).
    pub socket: std::path::PathBuf,
    /// How long to wait for the new process to confirm it serves.
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub pool: String,
    pub backlog: u32,
    /// Listening sockets on this address, each with its own accept task
    /// (`SO_REUSEPORT`, Linux); 0 = one per worker thread.
    pub accept_sockets: u32,
    pub tls: Option<TlsConfig>,
    /// `Some` = MQTT-aware (read the CONNECT before routing); `None` = plain
    /// pass-through.
    pub mqtt: Option<MqttListenerConfig>,
    /// `Some` = clients speak MQTT over WebSockets (after TLS, if any).
    pub websocket: Option<WebSocketConfig>,
    /// `Some` = read a PROXY header from the peer first (`optional` or
    /// `required`), and only from `proxy_protocol_from`.
    pub proxy_protocol: Option<InboundProxy>,
    /// `[[listener.route]]`, in order: the first that matches names the
    /// client's pool; none → `pool`.
    pub routes: Vec<RouteConfig>,
    /// Key path of this listener in the file, for later error messages.
    pub key: String,
}

/// What a WebSocket listener sends to the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsForward {
    /// Unwrap: brokers get plain MQTT on their TCP listener; the CONNECT is
    /// read as on a TCP listener (routing, CONNACK checks, drain).
    Tcp,
    /// Forward the WebSocket (upgrade request included) to the brokers'
    /// WebSocket listeners, as HAProxy and NGINX do.
    Ws,
}

/// MQTT over WebSockets on a listener (`[listener.websocket]`).
#[derive(Debug, Clone)]
pub struct WebSocketConfig {
    /// Request path that may upgrade (the query string is ignored).
    pub path: String,
    /// Subprotocols accepted, in the server's order of preference.
    pub subprotocols: Vec<String>,
    /// Refuse clients that offer no subprotocol.
    pub require_subprotocol: bool,
    pub to: WsForward,
    /// From the end of the TLS handshake (or accept) to a complete upgrade
    /// request.
    pub upgrade_timeout: Duration,
    /// Upgrade request head, request line and headers.
    pub max_request_size: usize,
    /// Largest WebSocket message (`to = "tcp"`; policy, not a buffer:
    /// payload is streamed as it arrives).
    pub max_message_size: usize,
    pub max_frame_size: usize,
}

#[derive(Debug, Clone)]
pub struct MqttListenerConfig {
    pub connect_timeout: Duration,
    pub max_connect_size: usize,
    pub keepalive_factor: f64,
    pub max_idle_timeout: Duration,
    /// Refuse a CONNECT whose client id the client certificate does not
    /// name (CONNACK "not authorized", before any broker is touched).
    pub client_id_match: ClientIdMatch,
}

/// `listener.mqtt.client_id_match`: which certificate names a client id
/// must equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientIdMatch {
    Off,
    /// The subject CN.
    Cn,
    /// The subject CN or a DNS, email or URI SAN.
    CnOrSan,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub tls_handshake_timeout: Duration,
    pub drain_timeout: Duration,
    /// Idle timeout of pass-through connections and of MQTT clients that
    /// disabled keep-alive.
    pub idle_timeout: Duration,
    /// Runtime worker threads; 0 = one per CPU the process may use
    /// (affinity and cgroup quota aware). Read at start only.
    pub worker_threads: usize,
    /// New connections per second per source address (bursts of twice
    /// that), checked right after accept, before TLS; 0 = no limit.
    pub source_connect_rate: u32,
    /// CONNECTs per minute per client id (bursts of that many), answered
    /// with a CONNACK refusal before any broker is touched; 0 = no limit.
    pub client_connect_rate: u32,
}

impl Config {
    /// Read and convert a configuration file, then apply flags.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
        let (source, mut raw) = match path {
            Some(path) => {
                let (source, text) = read_file(path)?;
                let raw = parse_toml::<RawConfig>(&source, &text)?;
                (source, raw)
            }
            None => ("<command line>".to_string(), RawConfig::default()),
        };
        overrides.apply(&mut raw);
        let base = path.and_then(Path::parent).unwrap_or(Path::new(""));
        Config::from_raw(&source, base, raw)
    }

    /// Convert raw structs into a typed configuration. Relative file paths
    /// are resolved against `base` (the config file's directory).
    pub fn from_raw(source: &str, base: &Path, raw: RawConfig) -> Result<Config, ConfigErrors> {
        let mut cx = Cx {
            file: source.to_string(),
            base: base.to_path_buf(),
            errors: Vec::new(),
        };
        let limits = Limits {
            max_connections: match raw.limits.max_connections {
                Some(0) => {
                    cx.err("limits.max_connections", "must be at least 1");
                    1
                }
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => defaults::MAX_CONNECTIONS,
            },
            tls_handshake_timeout: cx.duration(
                "limits.tls_handshake_timeout",
                raw.limits.tls_handshake_timeout.as_deref(),
                defaults::TLS_HANDSHAKE_TIMEOUT,
            ),
            drain_timeout: cx.duration_or_zero(
                "limits.drain_timeout",
                raw.limits.drain_timeout.as_deref(),
                defaults::DRAIN_TIMEOUT,
            ),
            idle_timeout: cx.duration(
                "limits.idle_timeout",
                raw.limits.idle_timeout.as_deref(),
                defaults::IDLE_TIMEOUT,
            ),
            worker_threads: usize::try_from(cx.zero_or_at_most(
                "limits.worker_threads",
                raw.limits.worker_threads,
                defaults::MAX_WORKER_THREADS,
                "one per CPU",
            ))
            .unwrap_or(0),
            source_connect_rate: cx
                .rate("limits.source_connect_rate", raw.limits.source_connect_rate),
            client_connect_rate: cx
                .rate("limits.client_connect_rate", raw.limits.client_connect_rate),
        };

        let mut pools = BTreeMap::new();
        for (name, pool) in raw.pool {
            let p = cx.pool(&name, pool);
            pools.insert(name, p);
        }

        if raw.listener.is_empty() {
            cx.err("listener", "at least one [[listener]] is required");
        }
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        for (i, l) in raw.listener.into_iter().enumerate() {
            let l = cx.listener(i, l, &pools);
            if listeners.iter().any(|o| o.name == l.name) {
                cx.err(
                    &format!("{}.name", l.key),
                    &format!("duplicate listener name {:?}", l.name),
                );
            }
            listeners.push(l);
        }

        let admin_token = raw
            .admin
            .as_ref()
            .and_then(|a| a.token_file.as_deref())
            .and_then(|f| cx.secret_file("admin.token_file", f));
        let admin_limits = raw
            .admin
            .as_ref()
            .map(|a| cx.admin_limits(a))
            .unwrap_or_default();
        let admin = raw.admin.and_then(|a| {
            cx.addr(
                "admin.listen",
                a.listen.as_deref().unwrap_or(defaults::ADMIN_LISTEN),
            )
        });
        let upgrade = raw.upgrade.and_then(|u| cx.upgrade(u));
        let resolver = cx.resolver(raw.resolver.as_ref());
        let log = cx.log(raw.log.unwrap_or_default());
        if cx.errors.is_empty() {
            Ok(Config {
                source: source.to_string(),
                listeners,
                pools,
                limits,
                admin,
                admin_token,
                admin_limits,
                upgrade,
                resolver,
                log,
            })
        } else {
            Err(ConfigErrors(cx.errors))
        }
    }
}

/// Read a configuration file: its name for messages, and its text.
pub(crate) fn read_file(path: &Path) -> Result<(String, String), ConfigErrors> {
    let source = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => Ok((source, text)),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: source,
            key: String::new(),
            reason: format!("cannot read: {e}"),
        }])),
    }
}

/// Parse TOML into raw structs; errors carry the key path and line.
pub fn parse_toml<T: serde::de::DeserializeOwned>(
    source: &str,
    text: &str,
) -> Result<T, ConfigErrors> {
    let fail = |key: String, reason: String| {
        ConfigErrors(vec![ConfigError {
            file: source.to_string(),
            key,
            reason,
        }])
    };
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| {
            let line = text.get(..s.start).map_or(0, |t| t.matches('\n').count()) + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default()
    };
    let de = toml::Deserializer::parse(text).map_err(|e| {
        fail(
            String::new(),
            format!("invalid TOML: {}{}", e.message(), line_of(e.span())),
        )
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let key = if path == "." { String::new() } else { path };
        fail(key, format!("{}{}", inner.message(), line_of(inner.span())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroU32;
    use validate::parse_host_port;

    fn load_str(text: &str) -> Result<Config, ConfigErrors> {
        let raw = parse_toml("test.toml", text)?;
        Config::from_raw("test.toml", Path::new(""), raw)
    }

    const MINIMAL: &str = r#"
        [[listener]]
        name = "plain"
        listen = "127.0.0.1:1884"
        pool = "b"
        [listener.mqtt]
        [pool.b]
        strategy = "client-id"
        servers = [ { name = "n1", addr = "127.0.0.1:1883" }, { addr = "127.0.0.1:1885", weight = 3 } ]
    "#;

    #[test]
    fn minimal_config_with_defaults() {
        let c = load_str(MINIMAL).expect("valid");
        let l = &c.listeners[0];
        assert_eq!(l.listen, "127.0.0.1:1884".parse().unwrap());
        assert!(l.tls.is_none());
        let m = l.mqtt.as_ref().expect("mqtt-aware");
        assert_eq!(m.max_connect_size, defaults::MAX_CONNECT_SIZE);
        let p = &c.pools["b"];
        assert_eq!(p.strategy, Strategy::ClientId);
        assert_eq!(p.servers[1].name, "127.0.0.1:1885");
        assert_eq!(p.servers[1].weight.get(), 3);
        assert_eq!(c.limits.drain_timeout, defaults::DRAIN_TIMEOUT);
    }

    #[test]
    fn absurd_durations_are_refused_with_their_key() {
        let text = format!(
            "{MINIMAL}\nhealth = {{ interval = \"1000000000d\" }}\n[limits]\ndrain_timeout = \"2y\""
        );
        let errors = load_str(&text).expect_err("out of bounds").0;
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            ["limits.drain_timeout", "pool.b.health.interval"],
            "{errors:?}"
        );
        assert!(
            errors[0]
                .reason
                .contains("longer than the longest duration accepted, 366 days"),
            "{errors:?}"
        );
        assert_eq!(parse_duration("366d"), Ok(defaults::MAX_DURATION));
        assert!(parse_duration("1y").is_ok(), "a year is 365.25 days");
        assert!(parse_duration("367d").is_err());
    }

    #[test]
    fn admin_token_comes_from_a_file_and_is_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let load = |token: &str| {
            std::fs::write(dir.path().join("token"), token).unwrap();
            let text = format!("{MINIMAL}\n[admin]\ntoken_file = \"token\"\n");
            let raw = parse_toml("t.toml", &text).unwrap();
            Config::from_raw("t.toml", dir.path(), raw)
        };
        let c = load("0123456789abcdef-token\n").expect("valid");
        assert!(
            c.admin_token
                .as_ref()
                .is_some_and(|t| t.matches(b"0123456789abcdef-token"))
        );
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "never in Debug"
        );
        let e = load("short").expect_err("too short").0;
        assert_eq!(e[0].key, "admin.token_file");
    }

    #[test]
    fn dns_names_become_dns_servers() {
        let c = load_str(&MINIMAL.replace(
            "{ addr = \"127.0.0.1:1885\", weight = 3 }",
            "{ addr = \"brokers.mqtt.svc.cluster.local:1883\", weight = 2 }",
        ))
        .expect("valid");
        let p = &c.pools["b"];
        assert_eq!(p.servers.len(), 1);
        assert_eq!(
            p.dns,
            vec![DnsServerConfig {
                name: "brokers.mqtt.svc.cluster.local".into(),
                host: "brokers.mqtt.svc.cluster.local".into(),
                port: 1883,
                weight: NonZeroU32::new(2).unwrap(),
                max_connections: 0,
            }]
        );
        assert_eq!(p.resolve_interval, defaults::RESOLVE_INTERVAL);
        for bad in [
            "no-port",
            "bad_host:1883",
            "host:0",
            "host:99999",
            "-x:1883",
            "1.2.3:1883",
        ] {
            assert_eq!(parse_host_port(bad), None, "{bad}");
        }
    }

    #[test]
    fn unknown_key_names_its_path() {
        let e = load_str(&MINIMAL.replace("strategy =", "stratgy =")).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].key, "pool.b.stratgy");
        assert!(e.0[0].reason.contains("unknown field"), "{}", e.0[0].reason);
        assert!(e.0[0].reason.contains("line"), "{}", e.0[0].reason);
    }

    #[test]
    fn every_problem_is_reported() {
        let text = MINIMAL
            .replace("\"client-id\"", "\"random\"")
            .replace("127.0.0.1:1885", "nowhere")
            .replace("pool = \"b\"", "pool = \"c\"")
            .replace(
                "[listener.mqtt]",
                "[listener.mqtt]\nconnect_timeout = \"soon\"\nmax_connect_size = \"0\"",
            );
        let e = load_str(&text).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "pool.b.strategy",
                "pool.b.servers[1].addr",
                "listener[0].pool",
                "listener[0].mqtt.connect_timeout",
                "listener[0].mqtt.max_connect_size",
            ]
        );
        assert!(
            e.to_string()
                .starts_with("test.toml: pool.b.strategy: expected one of round-robin")
        );
    }

    #[test]
    fn inbound_proxy_protocol_keys() {
        let c = load_str(MINIMAL).expect("valid");
        assert!(c.listeners[0].proxy_protocol.is_none(), "off by default");
        let with = |keys: &str| MINIMAL.replace("pool = \"b\"", &format!("pool = \"b\"\n{keys}"));
        let c = load_str(&with(
            "proxy_protocol = \"required\"\nproxy_protocol_from = [\"10.0.0.0/8\", \"192.0.2.7\", \"2001:db8::/32\"]",
        ))
        .expect("valid");
        let p = c.listeners[0].proxy_protocol.as_ref().expect("on");
        assert!(p.required);
        assert_eq!(p.timeout, defaults::PROXY_HEADER_TIMEOUT);
        assert_eq!(p.from.len(), 3);
        assert!(p.from.contains("192.0.2.7".parse().unwrap()));
        assert!(!p.from.contains("192.0.2.8".parse().unwrap()));

        let keys = |text: &str| -> Vec<String> {
            load_str(text)
                .expect_err("invalid")
                .0
                .into_iter()
                .map(|e| format!("{}: {}", e.key, e.reason))
                .collect()
        };
        let e = keys(&with(
            "proxy_protocol = \"optional\"\nproxy_protocol_from = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\nproxy_protocol_timeout = \"2m\"",
        ));
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            e[0],
            "listener[0].proxy_protocol_from[1]: \"10.0.0.0/33\" is not a CIDR block or an IP address \
             (e.g. \"10.0.0.0/8\", \"2001:db8::/32\")"
        );
        assert!(
            e[1].starts_with("listener[0].proxy_protocol_timeout: at most"),
            "{e:?}"
        );
        let e = keys(&with("proxy_protocol = \"required\""));
        assert!(
            e[0].starts_with("listener[0].proxy_protocol_from: expected 1 to 256"),
            "{e:?}"
        );
        let many: Vec<String> = (0..257)
            .map(|i| format!("\"10.0.{}.{}\"", i / 256, i % 256))
            .collect();
        let e = keys(&with(&format!(
            "proxy_protocol = \"optional\"\nproxy_protocol_from = [{}]",
            many.join(", ")
        )));
        assert_eq!(e.len(), 1, "{e:?}");
        let e = keys(&with(
            "proxy_protocol = \"sometimes\"\nproxy_protocol_from = [\"10.0.0.0/8\"]",
        ));
        assert!(
            e[0].starts_with(
                "listener[0].proxy_protocol: expected one of off | optional | required"
            )
        );
        let e = keys(&with("proxy_protocol_from = [\"10.0.0.0/8\"]"));
        assert_eq!(
            e,
            [
                "listener[0].proxy_protocol_from: only meaningful with proxy_protocol = \"optional\" or \"required\""
            ]
        );
    }

    #[test]
    fn pass_tlvs_need_v2_and_a_client_tlv() {
        let pool = |keys: &str| MINIMAL.replace("strategy =", &format!("{keys}\nstrategy ="));
        let c = load_str(&pool(
            "proxy_protocol = \"v2\"\nidentity = { pass_tlvs = [0xEA, 0x02] }",
        ))
        .expect("valid");
        let pass = c.pools["b"].identity.pass;
        assert!(pass.contains(0xEA) && pass.contains(0x02) && !pass.contains(0xE1));
        let e = load_str(&pool(
            "proxy_protocol = \"v1\"\nidentity = { pass_tlvs = [0x03, 0xEA] }",
        ))
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["pool.b.identity.pass_tlvs[0]", "pool.b.identity"]);
    }

    #[test]
    fn health_and_connack_keys() {
        let c = load_str(MINIMAL).expect("valid");
        let p = &c.pools["b"];
        assert_eq!(p.connack_timeout, defaults::CONNACK_TIMEOUT);
        assert_eq!(p.health.proxy_command, ProxyCommand::Proxy);
        assert!(p.health.username.is_none());
        let c = load_str(&MINIMAL.replace(
            "strategy =",
            "connack_timeout = \"750ms\"\nhealth = { check = \"mqtt\", proxy_command = \"local\", username = \"hc\", password = \"pw\" }\nstrategy =",
        ))
        .expect("valid");
        let p = &c.pools["b"];
        assert_eq!(p.connack_timeout, Duration::from_millis(750));
        assert_eq!(p.health.proxy_command, ProxyCommand::Local);
        assert_eq!(p.health.username.as_deref(), Some("hc"));
        assert_eq!(format!("{:?}", p.health.password), "Some(Secret(***))");
        let e = load_str(&MINIMAL.replace(
            "strategy =",
            "connack_timeout = \"never\"\nhealth = { proxy_command = \"none\", password = \"pw\" }\nstrategy =",
        ))
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "pool.b.health.proxy_command",
                "pool.b.health.password",
                "pool.b.health.username",
                "pool.b.connack_timeout",
            ]
        );
    }

    #[test]
    fn missing_tls_files_are_named() {
        let text = MINIMAL.replace(
            "[listener.mqtt]",
            "[listener.tls]\ncert = \"/nonexistent/s.pem\"\n[listener.mqtt]",
        );
        let e = load_str(&text).unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["listener[0].tls.cert", "listener[0].tls.key"]);
    }

    #[cfg(unix)]
    #[test]
    fn upgrade_socket_is_bounded_and_resolved() {
        let c = load_str(&format!(
            "{MINIMAL}\n[upgrade]\nsocket = \"/run/mqttlb/upgrade.sock\"\ntimeout = \"5s\"\n"
        ))
        .expect("valid");
        assert_eq!(
            c.upgrade,
            Some(UpgradeConfig {
                socket: "/run/mqttlb/upgrade.sock".into(),
                timeout: Duration::from_secs(5),
            })
        );
        let long = format!("/run/{}.sock", "x".repeat(120));
        let e = load_str(&format!(
            "{MINIMAL}\n[upgrade]\nsocket = \"{long}\"\ntimeout = \"never\"\n"
        ))
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["upgrade.timeout", "upgrade.socket"]);
        assert!(e.to_string().contains("at most 103"), "{e}");
        let e = load_str(&format!("{MINIMAL}\n[upgrade]\n")).unwrap_err();
        assert!(e.to_string().contains("upgrade.socket: required"), "{e}");
    }

    #[test]
    fn flags_build_a_config_without_a_file() {
        let o = Overrides {
            listen: Some("127.0.0.1:0".into()),
            backends: vec!["127.0.0.1:1883".into(), "127.0.0.1:1884".into()],
            strategy: Some("least-connections".into()),
            ..Default::default()
        };
        let mut raw = RawConfig::default();
        o.apply(&mut raw);
        // No certificate given: the error says which flag is missing.
        let e = Config::from_raw("<command line>", Path::new(""), raw).unwrap_err();
        assert!(
            e.to_string().contains("listener[0].tls.cert: missing"),
            "{e}"
        );
    }

    #[test]
    fn resolver_takes_addresses_with_or_without_port_and_bounds_its_timeout() {
        let c = load_str(MINIMAL).expect("loads");
        assert!(c.resolver.nameservers.is_empty(), "the system's by default");
        assert_eq!(c.resolver.timeout, defaults::RESOLVER_TIMEOUT);
        let c = load_str(&format!(
            "{MINIMAL}\n[resolver]\nnameservers = [\"10.0.0.2\", \"[::1]:5353\"]\ntimeout = \"500ms\"\n"
        ))
        .expect("loads");
        assert_eq!(
            c.resolver.nameservers,
            [
                "10.0.0.2:53".parse().unwrap(),
                "[::1]:5353".parse().unwrap()
            ]
        );
        assert_eq!(c.resolver.timeout, Duration::from_millis(500));
        let e = load_str(&format!(
            "{MINIMAL}\n[resolver]\nnameservers = [\"dns.local\"]\ntimeout = \"1ms\"\n"
        ))
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["resolver.timeout", "resolver.nameservers[0]"]);
        let e = load_str(&format!("{MINIMAL}\n[resolver]\nnameservers = []\n")).unwrap_err();
        assert!(
            e.to_string()
                .contains("resolver.nameservers: expected 1 to 8"),
            "{e}"
        );
    }

    #[test]
    fn the_access_log_goes_to_stderr_off_or_a_file_whose_directory_exists() {
        let c = load_str(MINIMAL).expect("valid");
        assert_eq!(
            c.log.destination,
            AccessDestination::Stderr,
            "on by default"
        );
        assert!(!c.log.username);
        let c = load_str(&format!(
            "{MINIMAL}\n[log]\naccess = \"off\"\naccess_username = true\n"
        ))
        .expect("valid");
        assert_eq!(c.log.destination, AccessDestination::Off);
        assert!(c.log.username);
        let c =
            load_str(&format!("{MINIMAL}\n[log]\naccess = \"/tmp/access.log\"\n")).expect("valid");
        assert_eq!(
            c.log.destination,
            AccessDestination::File("/tmp/access.log".into())
        );
        for (value, reason) in [
            ("", "expected \"off\", \"stderr\" or a file path"),
            ("/nonexistent/dir/access.log", "does not exist"),
            ("/tmp", "is a directory"),
        ] {
            let e = load_str(&format!("{MINIMAL}\n[log]\naccess = \"{value}\"\n")).unwrap_err();
            assert_eq!(e.0.len(), 1, "{e}");
            assert_eq!(e.0[0].key, "log.access");
            assert!(e.0[0].reason.contains(reason), "{value:?}: {e}");
            assert!(e.to_string().starts_with("test.toml: log.access: "), "{e}");
        }
        let e = load_str(&format!("{MINIMAL}\n[log]\naccess_user = true\n")).unwrap_err();
        assert!(e.to_string().contains("access_user"), "unknown keys: {e}");
    }

    #[test]
    fn reference_config_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let text = std::fs::read_to_string(dir.join("mqttlb.toml")).expect("config/mqttlb.toml");
        let raw = parse_toml("config/mqttlb.toml", &text)
            .expect("reference config is valid TOML with known keys");
        // Certificate paths in the reference point at a dev-cert directory
        // that may not exist here; everything else must convert cleanly.
        let c = Config::from_raw("config/mqttlb.toml", &dir, raw);
        if let Err(e) = &c {
            for err in &e.0 {
                assert!(
                    err.reason.contains("does not exist"),
                    "unexpected error: {err}"
                );
            }
        }
    }
}
