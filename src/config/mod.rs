//! Configuration: TOML file and command-line flags → one typed [`Config`].
//!
//! The file is deserialised into [`raw`] structs (unknown keys are errors),
//! flags are applied on top ([`Overrides`]), and [`Config::from_raw`]
//! converts everything once into typed values. Every problem found is
//! reported with the file, the key path and the reason; conversion does not
//! stop at the first one, so `mqttlb check` can print them all.

pub mod broker;
pub mod raw;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mqtt::ProtocolVersion;

// Types a lower layer owns, re-exported: the configuration schema in one
// place for callers, the definitions beside the code that uses them.
pub use crate::balance::config::{
    DnsServerConfig, HashKey, HealthCheckKind, HealthConfig, PoolConfig, ServerConfig, Strategy,
};
pub use crate::proxy_protocol::{ProxyCommand, ProxyProtocol};
pub use crate::secret::Secret;
pub use crate::tls::{CertKeyPaths, ClientAuth, TlsConfig, TlsVersion};
use raw::{RawConfig, RawListener, RawPool, RawServer, RawTls};

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
    /// Key path of this listener in the file, for later error messages.
    pub key: String,
}

#[derive(Debug, Clone)]
pub struct MqttListenerConfig {
    pub connect_timeout: Duration,
    pub max_connect_size: usize,
    pub keepalive_factor: f64,
    pub max_idle_timeout: Duration,
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
}

/// Parse a duration from configuration or the admin API: humantime syntax
/// ("250ms", "5s", "2m"), at most [`defaults::MAX_DURATION`], so that no
/// deadline computed from it can overflow a clock.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration such as \"5s\" or \"250ms\", got {s:?} ({e})"))?;
    if d > defaults::MAX_DURATION {
        return Err(format!(
            "{s:?} is longer than the longest duration accepted ({})",
            humantime::format_duration(defaults::MAX_DURATION)
        ));
    }
    Ok(d)
}

/// Defaults, in one place so the reference config and the code agree.
pub mod defaults {
    use std::time::Duration;
    pub const LISTEN_TLS: &str = "0.0.0.0:8883";
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9100";
    pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(10);
    pub const DRAIN_WINDOW: Duration = Duration::from_secs(30);
    pub const BACKLOG: u32 = 1024;
    /// Upper bound of every duration in configuration and the admin API.
    pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
    /// Upper bound of `listener.accept_sockets`.
    pub const MAX_ACCEPT_SOCKETS: u32 = 256;
    /// Upper bound of `limits.worker_threads`.
    pub const MAX_WORKER_THREADS: u64 = 1024;
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    pub const MAX_CONNECT_SIZE: usize = 64 * 1024;
    pub const KEEPALIVE_FACTOR: f64 = 1.5;
    /// 1.5 × the largest keep-alive MQTT can express (65 535 s): by default
    /// no live client is ever cut.
    pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(98_303);
    pub const BACKEND_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
    pub const CONNECT_ATTEMPTS: u32 = 3;
    /// Brokers answer a CONNECT in milliseconds; a node that takes seconds
    /// is stalled, and clients commonly give up after 5 to 30 s.
    /// One ticket per full handshake: a device resumes one connection at a
    /// time (rustls sends 2, for clients that open connections in parallel).
    pub const SESSION_TICKETS: u8 = 1;
    pub const CONNACK_TIMEOUT: Duration = Duration::from_secs(3);
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    pub const RISE: u32 = 2;
    pub const FALL: u32 = 3;
    pub const MAX_CONNECTIONS: usize = 1_000_000;
    pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
}

/// Command-line flags of `mqttlb proxy`; each overrides its config key.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub backends: Vec<String>,
    pub strategy: Option<String>,
    pub proxy_protocol: Option<String>,
    pub admin: Option<String>,
}

impl Overrides {
    fn is_empty(&self) -> bool {
        self.listen.is_none()
            && self.cert.is_none()
            && self.key.is_none()
            && self.client_ca.is_none()
            && self.backends.is_empty()
            && self.strategy.is_none()
            && self.proxy_protocol.is_none()
    }

    /// Apply the flags to the first listener and the pool it uses, creating
    /// an MQTT-aware TLS listener and a pool named `default` when the file
    /// has none.
    fn apply(&self, raw: &mut RawConfig) {
        if let Some(a) = &self.admin {
            raw.admin.get_or_insert_with(Default::default).listen = Some(a.clone());
        }
        if self.is_empty() {
            return;
        }
        if raw.listener.is_empty() {
            raw.listener.push(RawListener {
                name: Some("mqtts".into()),
                mqtt: Some(Default::default()),
                tls: Some(RawTls::default()),
                ..Default::default()
            });
        }
        let Some(listener) = raw.listener.first_mut() else {
            return; // pushed above
        };
        let pool_name = listener
            .pool
            .get_or_insert_with(|| "default".into())
            .clone();
        if let Some(l) = &self.listen {
            listener.listen = Some(l.clone());
        }
        if self.cert.is_some() || self.key.is_some() || self.client_ca.is_some() {
            let tls = listener.tls.get_or_insert_with(RawTls::default);
            if let Some(c) = &self.cert {
                tls.cert = Some(c.clone());
            }
            if let Some(k) = &self.key {
                tls.key = Some(k.clone());
            }
            if let Some(ca) = &self.client_ca {
                tls.client_ca = Some(ca.clone());
                tls.client_auth.get_or_insert_with(|| "required".into());
            }
        }
        let pool = raw.pool.entry(pool_name).or_default();
        if !self.backends.is_empty() {
            pool.servers = self
                .backends
                .iter()
                .enumerate()
                .map(|(i, addr)| RawServer {
                    name: Some(format!("node{}", i + 1)),
                    addr: addr.clone(),
                    weight: None,
                })
                .collect();
        }
        if let Some(s) = &self.strategy {
            pool.strategy = Some(s.clone());
        }
        if let Some(p) = &self.proxy_protocol {
            pool.proxy_protocol = Some(p.clone());
        }
    }
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
            worker_threads: match raw.limits.worker_threads {
                Some(n) if n > defaults::MAX_WORKER_THREADS => {
                    cx.err(
                        "limits.worker_threads",
                        &format!(
                            "must be at most {} (0 = one per CPU)",
                            defaults::MAX_WORKER_THREADS
                        ),
                    );
                    0
                }
                Some(n) => usize::try_from(n).unwrap_or(0),
                None => 0,
            },
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

        let admin = raw.admin.and_then(|a| {
            cx.addr(
                "admin.listen",
                a.listen.as_deref().unwrap_or(defaults::ADMIN_LISTEN),
            )
        });
        if cx.errors.is_empty() {
            Ok(Config {
                source: source.to_string(),
                listeners,
                pools,
                limits,
                admin,
            })
        } else {
            Err(ConfigErrors(cx.errors))
        }
    }
}

/// `host:port` where host is a DNS name (letters, digits, `-`, `.`).
fn parse_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.trim().rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
        })
        && host.chars().any(|c| c.is_ascii_alphabetic());
    valid.then_some((host, port))
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

/// Conversion context: collects errors instead of stopping at the first.
struct Cx {
    file: String,
    base: PathBuf,
    errors: Vec<ConfigError>,
}

impl Cx {
    fn err(&mut self, key: &str, reason: &str) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        });
    }

    fn duration_or_zero(&mut self, key: &str, v: Option<&str>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => match parse_duration(s) {
                Ok(d) => d,
                Err(e) => {
                    self.err(key, &e);
                    default
                }
            },
        }
    }

    fn duration(&mut self, key: &str, v: Option<&str>, default: Duration) -> Duration {
        let d = self.duration_or_zero(key, v, default);
        if d.is_zero() {
            self.err(key, "must be greater than zero");
            return default;
        }
        d
    }

    fn size(&mut self, key: &str, v: Option<&str>, default: usize) -> usize {
        let Some(s) = v else { return default };
        match s.trim().parse::<bytesize::ByteSize>() {
            Ok(b) if b.as_u64() > 0 => usize::try_from(b.as_u64()).unwrap_or(usize::MAX),
            Ok(_) => {
                self.err(key, "must be greater than zero");
                default
            }
            Err(e) => {
                self.err(
                    key,
                    &format!("expected a size such as \"64KiB\", got {s:?} ({e})"),
                );
                default
            }
        }
    }

    fn choice<T: Copy>(
        &mut self,
        key: &str,
        v: Option<&str>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(s) = v else { return default };
        if let Some((_, t)) = options.iter().find(|(name, _)| *name == s) {
            return *t;
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.err(
            key,
            &format!("expected one of {}, got {s:?}", names.join(" | ")),
        );
        default
    }

    fn nonzero(&mut self, key: &str, v: Option<u32>, default: u32) -> NonZeroU32 {
        let fallback = NonZeroU32::new(default).unwrap_or(NonZeroU32::MIN);
        match v {
            None => fallback,
            Some(n) => NonZeroU32::new(n).unwrap_or_else(|| {
                self.err(key, "must be at least 1");
                fallback
            }),
        }
    }

    fn addr(&mut self, key: &str, v: &str) -> Option<SocketAddr> {
        match v.trim().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.err(
                    key,
                    &format!(
                        "expected an address such as \"10.0.0.1:1883\" or \"[::1]:1883\", got {v:?}"
                    ),
                );
                None
            }
        }
    }

    fn path(&mut self, key: &str, v: &str) -> PathBuf {
        let p = Path::new(v);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        };
        if !p.is_file() {
            self.err(
                key,
                &format!(
                    "file {} does not exist or is not a regular file",
                    p.display()
                ),
            );
        }
        p
    }

    fn pool(&mut self, name: &str, raw: RawPool) -> PoolConfig {
        let k = format!("pool.{name}");
        let strategy = self.choice(
            &format!("{k}.strategy"),
            raw.strategy.as_deref(),
            Strategy::RoundRobin,
            &[
                ("round-robin", Strategy::RoundRobin),
                ("least-connections", Strategy::LeastConnections),
                ("client-id", Strategy::ClientId),
            ],
        );
        let hash_key = self.choice(
            &format!("{k}.hash_key"),
            raw.hash_key.as_deref(),
            HashKey::ClientId,
            &[
                ("client-id", HashKey::ClientId),
                ("username", HashKey::Username),
                ("cert-cn", HashKey::CertCn),
            ],
        );
        let proxy_protocol = self.choice(
            &format!("{k}.proxy_protocol"),
            raw.proxy_protocol.as_deref(),
            ProxyProtocol::Off,
            &[
                ("off", ProxyProtocol::Off),
                ("v1", ProxyProtocol::V1),
                ("v2", ProxyProtocol::V2),
            ],
        );
        let connect_timeout = self.duration(
            &format!("{k}.connect_timeout"),
            raw.connect_timeout.as_deref(),
            defaults::BACKEND_CONNECT_TIMEOUT,
        );
        let connect_attempts = self.nonzero(
            &format!("{k}.connect_attempts"),
            raw.connect_attempts,
            defaults::CONNECT_ATTEMPTS,
        );
        let h = raw.health.unwrap_or_default();
        let hk = format!("{k}.health");
        let health = HealthConfig {
            check: self.choice(
                &format!("{hk}.check"),
                h.check.as_deref(),
                HealthCheckKind::Tcp,
                &[
                    ("tcp", HealthCheckKind::Tcp),
                    ("mqtt", HealthCheckKind::Mqtt),
                ],
            ),
            interval: self.duration(
                &format!("{hk}.interval"),
                h.interval.as_deref(),
                defaults::HEALTH_INTERVAL,
            ),
            timeout: self.duration(
                &format!("{hk}.timeout"),
                h.timeout.as_deref(),
                defaults::HEALTH_TIMEOUT,
            ),
            rise: self.nonzero(&format!("{hk}.rise"), h.rise, defaults::RISE),
            fall: self.nonzero(&format!("{hk}.fall"), h.fall, defaults::FALL),
            mqtt_version: self.choice(
                &format!("{hk}.mqtt_version"),
                h.mqtt_version.as_deref(),
                ProtocolVersion::V311,
                &[
                    ("3.1.1", ProtocolVersion::V311),
                    ("5.0", ProtocolVersion::V5),
                ],
            ),
            proxy_command: self.choice(
                &format!("{hk}.proxy_command"),
                h.proxy_command.as_deref(),
                ProxyCommand::Proxy,
                &[
                    ("proxy", ProxyCommand::Proxy),
                    ("local", ProxyCommand::Local),
                ],
            ),
            username: h.username,
            password: h.password.map(Secret),
        };
        if health.password.is_some()
            && health.username.is_none()
            && health.mqtt_version != ProtocolVersion::V5
        {
            self.err(
                &format!("{hk}.password"),
                "MQTT 3.1.1 sends a password only with a username: set health.username too",
            );
        }
        if health.check == HealthCheckKind::Tcp
            && (health.username.is_some() || health.password.is_some())
        {
            self.err(
                &format!("{hk}.username"),
                "credentials are sent by check = \"mqtt\" only; this pool's check is \"tcp\"",
            );
        }
        let connack_timeout = self.duration(
            &format!("{k}.connack_timeout"),
            raw.connack_timeout.as_deref(),
            defaults::CONNACK_TIMEOUT,
        );
        if raw.servers.is_empty() {
            self.err(&format!("{k}.servers"), "a pool needs at least one server");
        }
        let mut servers: Vec<ServerConfig> = Vec::new();
        let mut dns: Vec<DnsServerConfig> = Vec::new();
        for (i, s) in raw.servers.into_iter().enumerate() {
            let sk = format!("{k}.servers[{i}]");
            let addr = match s.addr.trim().parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => match parse_host_port(&s.addr) {
                    Some((host, port)) => {
                        let name = s.name.unwrap_or_else(|| host.to_string());
                        if servers.iter().any(|o| o.name == name)
                            || dns.iter().any(|o| o.name == name)
                        {
                            self.err(
                                &format!("{sk}.name"),
                                &format!("duplicate server name {name:?} in this pool"),
                            );
                        }
                        let weight = self.nonzero(&format!("{sk}.weight"), s.weight, 1);
                        dns.push(DnsServerConfig {
                            name,
                            host: host.to_string(),
                            port,
                            weight,
                        });
                        continue;
                    }
                    None => {
                        self.err(
                            &format!("{sk}.addr"),
                            &format!(
                                "expected an address such as \"10.0.0.1:1883\", \"[::1]:1883\" or \"brokers.example.svc:1883\", got {:?}",
                                s.addr
                            ),
                        );
                        continue;
                    }
                },
            };
            let name = s.name.unwrap_or_else(|| addr.to_string());
            if name.is_empty()
                || name.len() > 64
                || name.chars().any(|c| c.is_control() || c == '"')
            {
                self.err(
                    &format!("{sk}.name"),
                    "must be 1 to 64 printable characters without quotes",
                );
            }
            if servers.iter().any(|o| o.name == name) {
                self.err(
                    &format!("{sk}.name"),
                    &format!("duplicate server name {name:?} in this pool"),
                );
            }
            let weight = self.nonzero(&format!("{sk}.weight"), s.weight, 1);
            servers.push(ServerConfig { name, addr, weight });
        }
        PoolConfig {
            name: name.to_string(),
            strategy,
            hash_key,
            proxy_protocol,
            connect_timeout,
            connect_attempts,
            connack_timeout,
            health,
            servers,
            dns,
            resolve_interval: self.duration(
                &format!("{k}.resolve_interval"),
                raw.resolve_interval.as_deref(),
                defaults::RESOLVE_INTERVAL,
            ),
            drain_disconnect: raw.drain_disconnect.unwrap_or(false),
            drain_window: self.duration_or_zero(
                &format!("{k}.drain_window"),
                raw.drain_window.as_deref(),
                defaults::DRAIN_WINDOW,
            ),
        }
    }

    fn listener(
        &mut self,
        i: usize,
        raw: RawListener,
        pools: &BTreeMap<String, PoolConfig>,
    ) -> ListenerConfig {
        let k = format!("listener[{i}]");
        let name = raw.name.unwrap_or_else(|| format!("listener{i}"));
        let listen = raw.listen.as_deref().unwrap_or(defaults::LISTEN_TLS);
        let listen = self
            .addr(&format!("{k}.listen"), listen)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let pool = match raw.pool {
            Some(p) if pools.contains_key(&p) => p,
            Some(p) => {
                self.err(&format!("{k}.pool"), &format!("no [pool.{p}] is defined"));
                p
            }
            None => {
                self.err(
                    &format!("{k}.pool"),
                    "missing: name the [pool.NAME] this listener forwards to",
                );
                String::new()
            }
        };
        let backlog = match raw.backlog {
            Some(0) => {
                self.err(&format!("{k}.backlog"), "must be at least 1");
                defaults::BACKLOG
            }
            Some(n) => n,
            None => defaults::BACKLOG,
        };
        let accept_sockets = match raw.accept_sockets {
            Some(n) if n > defaults::MAX_ACCEPT_SOCKETS => {
                self.err(
                    &format!("{k}.accept_sockets"),
                    &format!(
                        "must be at most {} (0 = one per worker thread)",
                        defaults::MAX_ACCEPT_SOCKETS
                    ),
                );
                0
            }
            Some(n) => n,
            None => 0,
        };
        let tls = raw.tls.map(|t| self.tls(&format!("{k}.tls"), t));
        let mqtt = raw.mqtt.map(|m| {
            let mk = format!("{k}.mqtt");
            let factor = m.keepalive_factor.unwrap_or(defaults::KEEPALIVE_FACTOR);
            if !(1.0..=10.0).contains(&factor) {
                self.err(
                    &format!("{mk}.keepalive_factor"),
                    "must be between 1.0 and 10.0",
                );
            }
            MqttListenerConfig {
                connect_timeout: self.duration(
                    &format!("{mk}.connect_timeout"),
                    m.connect_timeout.as_deref(),
                    defaults::CONNECT_TIMEOUT,
                ),
                max_connect_size: self.size(
                    &format!("{mk}.max_connect_size"),
                    m.max_connect_size.as_deref(),
                    defaults::MAX_CONNECT_SIZE,
                ),
                keepalive_factor: factor.clamp(1.0, 10.0),
                max_idle_timeout: self.duration(
                    &format!("{mk}.max_idle_timeout"),
                    m.max_idle_timeout.as_deref(),
                    defaults::MAX_IDLE_TIMEOUT,
                ),
            }
        });
        ListenerConfig {
            name,
            listen,
            pool,
            backlog,
            accept_sockets,
            tls,
            mqtt,
            key: k,
        }
    }

    fn tls(&mut self, k: &str, raw: RawTls) -> TlsConfig {
        let pair = |this: &mut Self, key: &str, cert: Option<&str>, keyf: Option<&str>| {
            let cert = match cert {
                Some(c) => this.path(&format!("{key}.cert"), c),
                None => {
                    this.err(
                        &format!("{key}.cert"),
                        "missing: PEM certificate chain (or --cert)",
                    );
                    PathBuf::new()
                }
            };
            let keyp = match keyf {
                Some(c) => this.path(&format!("{key}.key"), c),
                None => {
                    this.err(&format!("{key}.key"), "missing: PEM private key (or --key)");
                    PathBuf::new()
                }
            };
            CertKeyPaths { cert, key: keyp }
        };
        let default_cert = pair(self, k, raw.cert.as_deref(), raw.key.as_deref());
        let sni = raw
            .sni
            .iter()
            .enumerate()
            .map(|(i, p)| pair(self, &format!("{k}.sni[{i}]"), Some(&p.cert), Some(&p.key)))
            .collect();
        let client_auth = self.choice(
            &format!("{k}.client_auth"),
            raw.client_auth.as_deref(),
            ClientAuth::None,
            &[
                ("none", ClientAuth::None),
                ("optional", ClientAuth::Optional),
                ("required", ClientAuth::Required),
            ],
        );
        let client_ca = raw
            .client_ca
            .as_deref()
            .map(|p| self.path(&format!("{k}.client_ca"), p));
        if client_auth != ClientAuth::None && client_ca.is_none() {
            self.err(
                &format!("{k}.client_ca"),
                "required when client_auth is optional or required",
            );
        }
        let crl = raw
            .crl
            .as_deref()
            .map(|p| self.path(&format!("{k}.crl"), p));
        if crl.is_some() && client_auth == ClientAuth::None {
            self.err(
                &format!("{k}.crl"),
                "only meaningful with client_auth optional or required",
            );
        }
        let min_version = self.choice(
            &format!("{k}.min_version"),
            raw.min_version.as_deref(),
            TlsVersion::V12,
            &[("1.2", TlsVersion::V12), ("1.3", TlsVersion::V13)],
        );
        for (list, name) in [
            (&raw.cipher_suites, "cipher_suites"),
            (&raw.kx_groups, "kx_groups"),
        ] {
            if list.as_ref().is_some_and(Vec::is_empty) {
                self.err(
                    &format!("{k}.{name}"),
                    "must name at least one, or be left out for the default",
                );
            }
        }
        TlsConfig {
            default_cert,
            sni,
            client_auth,
            client_ca,
            crl,
            min_version,
            cipher_suites: raw.cipher_suites,
            kx_groups: raw.kx_groups,
            prefer_server_order: raw.prefer_server_order.unwrap_or(true),
            session_tickets: match raw.session_tickets {
                Some(n) if n > 8 => {
                    self.err(&format!("{k}.session_tickets"), "at most 8");
                    8
                }
                Some(n) => n,
                None => defaults::SESSION_TICKETS,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(errors[0].reason.contains("longer than"), "{errors:?}");
        assert_eq!(parse_duration("365d"), Ok(defaults::MAX_DURATION));
        assert!(parse_duration("366d").is_err());
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
