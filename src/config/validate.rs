//! Turning raw values into typed ones: the conversion context collects
//! every error (file, key, reason) instead of stopping at the first.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{
    RawAdmin, RawIdentity, RawListener, RawLog, RawPool, RawResolver, RawTls, RawUpgrade,
    RawWebSocket,
};
use super::*;
use crate::proxy_protocol::IdentityTlvs;

/// Parse a duration from configuration or the admin API: humantime syntax
/// ("250ms", "5s", "2m"), at most [`defaults::MAX_DURATION`], so that no
/// deadline computed from it can overflow a clock.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("expected a duration such as \"5s\" or \"250ms\", got {s:?} ({e})"))?;
    if d > defaults::MAX_DURATION {
        return Err(format!(
            "{s:?} is longer than the longest duration accepted, {}",
            defaults::MAX_DURATION_TEXT
        ));
    }
    Ok(d)
}

/// `host:port` where host is a DNS name (letters, digits, `-`, `.`).
pub(super) fn parse_host_port(s: &str) -> Option<(&str, u16)> {
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

/// Conversion context: collects errors instead of stopping at the first.
pub(crate) struct Cx {
    pub(super) file: String,
    pub(super) base: PathBuf,
    pub(super) errors: Vec<ConfigError>,
}

impl Cx {
    pub(super) fn err(&mut self, key: &str, reason: &str) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            key: key.to_string(),
            reason: reason.to_string(),
        });
    }

    pub(super) fn duration_or_zero(
        &mut self,
        key: &str,
        v: Option<&str>,
        default: Duration,
    ) -> Duration {
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

    pub(super) fn duration(&mut self, key: &str, v: Option<&str>, default: Duration) -> Duration {
        let d = self.duration_or_zero(key, v, default);
        if d.is_zero() {
            self.err(key, "must be greater than zero");
            return default;
        }
        d
    }

    pub(super) fn size(&mut self, key: &str, v: Option<&str>, default: usize) -> usize {
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

    pub(super) fn choice<T: Copy>(
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

    pub(super) fn nonzero(&mut self, key: &str, v: Option<u32>, default: u32) -> NonZeroU32 {
        let fallback = NonZeroU32::new(default).unwrap_or(NonZeroU32::MIN);
        match v {
            None => fallback,
            Some(n) => NonZeroU32::new(n).unwrap_or_else(|| {
                self.err(key, "must be at least 1");
                fallback
            }),
        }
    }

    pub(super) fn addr(&mut self, key: &str, v: &str) -> Option<SocketAddr> {
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

    /// A rate limit: 0 (off, the default) up to [`defaults::MAX_RATE`].
    pub(super) fn rate(&mut self, key: &str, v: Option<u32>) -> u32 {
        self.zero_or_at_most(key, v, defaults::MAX_RATE, "no limit")
    }

    /// A count whose default 0 means `zero_means`, at most `max`; over it
    /// is an error naming the bound.
    pub(super) fn zero_or_at_most<T>(
        &mut self,
        key: &str,
        v: Option<T>,
        max: T,
        zero_means: &str,
    ) -> T
    where
        T: Copy + Default + PartialOrd + std::fmt::Display,
    {
        match v {
            Some(n) if n > max => {
                self.err(key, &format!("must be at most {max} (0 = {zero_means})"));
                T::default()
            }
            Some(n) => n,
            None => T::default(),
        }
    }

    /// A secret read from a file (first line, trimmed); at least 16 bytes.
    pub(super) fn secret_file(&mut self, key: &str, v: &str) -> Option<Secret> {
        let p = self.path(key, v);
        if !p.is_file() {
            return None; // `path` said why
        }
        let text = match std::fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) => {
                self.err(key, &format!("cannot read {}: {e}", p.display()));
                return None;
            }
        };
        let secret = text.lines().next().unwrap_or("").trim();
        if secret.len() < 16 {
            self.err(
                key,
                &format!("{}: the token must be at least 16 characters", p.display()),
            );
            return None;
        }
        Some(Secret(secret.to_string()))
    }

    pub(super) fn path(&mut self, key: &str, v: &str) -> PathBuf {
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

    /// `[admin]` connection bounds (the address and token are read apart).
    pub(super) fn admin_limits(&mut self, raw: &RawAdmin) -> AdminLimits {
        let mut count = |key: &str, v: Option<u32>, default: usize, min: u32| match v {
            None => default,
            Some(n) if (min..=defaults::ADMIN_MAX_CONNECTIONS_LIMIT).contains(&n) => {
                usize::try_from(n).unwrap_or(default)
            }
            Some(_) => {
                self.err(
                    key,
                    &format!(
                        "expected {min} to {}",
                        defaults::ADMIN_MAX_CONNECTIONS_LIMIT
                    ),
                );
                default
            }
        };
        let max_connections = count(
            "admin.max_connections",
            raw.max_connections,
            defaults::ADMIN_MAX_CONNECTIONS,
            1,
        );
        let max_connections_per_source = count(
            "admin.max_connections_per_source",
            raw.max_connections_per_source,
            defaults::ADMIN_MAX_CONNECTIONS_PER_SOURCE,
            1,
        );
        let local_reserve = count(
            "admin.local_reserve",
            raw.local_reserve,
            defaults::ADMIN_LOCAL_RESERVE,
            0,
        );
        let first_byte_timeout = self.duration(
            "admin.first_byte_timeout",
            raw.first_byte_timeout.as_deref(),
            defaults::ADMIN_FIRST_BYTE_TIMEOUT,
        );
        let header_timeout = self.duration(
            "admin.request_timeout",
            raw.request_timeout.as_deref(),
            defaults::ADMIN_REQUEST_TIMEOUT,
        );
        AdminLimits {
            max_connections,
            max_connections_per_source,
            local_reserve,
            first_byte_timeout,
            header_timeout,
            client_index: raw.client_index.unwrap_or(true),
            ..AdminLimits::default()
        }
    }

    /// `[resolver]`: name servers as `ip` or `ip:port` (1 to
    /// [`defaults::MAX_NAMESERVERS`]), and a bounded query timeout.
    pub(super) fn resolver(&mut self, raw: Option<&RawResolver>) -> ResolverConfig {
        let raw = raw.cloned().unwrap_or_default();
        let timeout = self.duration(
            "resolver.timeout",
            raw.timeout.as_deref(),
            defaults::RESOLVER_TIMEOUT,
        );
        let timeout = if (defaults::MIN_RESOLVER_TIMEOUT..=defaults::MAX_RESOLVER_TIMEOUT)
            .contains(&timeout)
        {
            timeout
        } else {
            self.err(
                "resolver.timeout",
                &format!(
                    "expected {:?} to {:?}",
                    defaults::MIN_RESOLVER_TIMEOUT,
                    defaults::MAX_RESOLVER_TIMEOUT
                ),
            );
            defaults::RESOLVER_TIMEOUT
        };
        let mut nameservers = Vec::new();
        if let Some(list) = raw.nameservers {
            if list.is_empty() || list.len() > defaults::MAX_NAMESERVERS {
                self.err(
                    "resolver.nameservers",
                    &format!(
                        "expected 1 to {} addresses (leave the key out for the system's)",
                        defaults::MAX_NAMESERVERS
                    ),
                );
            }
            for (i, text) in list.iter().enumerate() {
                let parsed = text
                    .parse::<SocketAddr>()
                    .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
                match parsed {
                    Ok(a) => nameservers.push(a),
                    Err(_) => self.err(
                        &format!("resolver.nameservers[{i}]"),
                        &format!("{text:?} is not an IP address or IP:port"),
                    ),
                }
            }
        }
        ResolverConfig {
            nameservers,
            timeout,
        }
    }

    /// `[log]`: `access` is "off", "stderr" or a file path (relative to
    /// the configuration's directory) whose directory exists.
    pub(super) fn log(&mut self, raw: RawLog) -> AccessConfig {
        let destination = match raw.access.as_deref() {
            None => defaults::ACCESS_LOG,
            Some("off") => AccessDestination::Off,
            Some("stderr") => AccessDestination::Stderr,
            Some("") => {
                self.err("log.access", "expected \"off\", \"stderr\" or a file path");
                AccessDestination::Off
            }
            Some(path) => {
                let p = Path::new(path);
                let p = if p.is_absolute() {
                    p.to_path_buf()
                } else {
                    self.base.join(p)
                };
                if p.is_dir() {
                    self.err(
                        "log.access",
                        &format!("{} is a directory; expected a file path", p.display()),
                    );
                } else if !p.parent().is_some_and(Path::is_dir) {
                    self.err(
                        "log.access",
                        &format!(
                            "the directory of {} does not exist (expected \"off\", \"stderr\" or a file path)",
                            p.display()
                        ),
                    );
                }
                AccessDestination::File(p)
            }
        };
        AccessConfig {
            destination,
            username: raw.access_username.unwrap_or(false),
        }
    }

    /// `[upgrade]`: a socket path that fits a Unix socket address, on a
    /// system that has them.
    pub(super) fn upgrade(&mut self, raw: RawUpgrade) -> Option<UpgradeConfig> {
        let timeout = self.duration(
            "upgrade.timeout",
            raw.timeout.as_deref(),
            defaults::UPGRADE_TIMEOUT,
        );
        let Some(socket) = raw.socket else {
            self.err(
                "upgrade.socket",
                "required in [upgrade] (a Unix socket path)",
            );
            return None;
        };
        if !cfg!(unix) {
            self.err(
                "upgrade.socket",
                "handing sockets to a new process needs a Unix system",
            );
            return None;
        }
        let p = Path::new(&socket);
        let socket = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        };
        let len = socket.as_os_str().len();
        if socket.file_name().is_none() || socket.parent().is_none() {
            self.err(
                "upgrade.socket",
                "expected a file path such as /run/mqttlb/upgrade.sock",
            );
            return None;
        }
        if len > defaults::MAX_UNIX_SOCKET_PATH {
            self.err(
                "upgrade.socket",
                &format!(
                    "{} is {len} bytes; a Unix socket path holds at most {}",
                    socket.display(),
                    defaults::MAX_UNIX_SOCKET_PATH
                ),
            );
            return None;
        }
        Some(UpgradeConfig { socket, timeout })
    }

    pub(super) fn pool(&mut self, name: &str, raw: RawPool) -> PoolConfig {
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
        let identity = self.identity(&format!("{k}.identity"), raw.identity.unwrap_or_default());
        if identity != IdentityTlvs::default() && proxy_protocol != ProxyProtocol::V2 {
            self.err(
                &format!("{k}.identity"),
                "identity TLVs travel in PROXY v2 headers only: set proxy_protocol = \"v2\"",
            );
        }
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
        let admission = self.admission(&k, raw.max_connect_rate, raw.queue);
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
                        let max_connections = self.node_cap(&sk, s.max_connections);
                        dns.push(DnsServerConfig {
                            name,
                            host: host.to_string(),
                            port,
                            weight,
                            max_connections,
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
            let max_connections = self.node_cap(&sk, s.max_connections);
            servers.push(ServerConfig {
                name,
                addr,
                weight,
                max_connections,
            });
        }
        PoolConfig {
            name: name.to_string(),
            strategy,
            hash_key,
            proxy_protocol,
            identity,
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
            admission,
            slow_start: {
                let key = format!("{k}.slow_start");
                let d = self.duration_or_zero(&key, raw.slow_start.as_deref(), Duration::ZERO);
                if d > defaults::MAX_SLOW_START {
                    self.err(&key, "at most 1h");
                }
                d.min(defaults::MAX_SLOW_START)
            },
            rebalance: raw.rebalance.map(|r| self.rebalance(&k, r)),
        }
    }

    pub(super) fn listener(
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
        let accept_sockets = self.zero_or_at_most(
            &format!("{k}.accept_sockets"),
            raw.accept_sockets,
            defaults::MAX_ACCEPT_SOCKETS,
            "one per worker thread",
        );
        let proxy_protocol = self.inbound_proxy(
            &k,
            raw.proxy_protocol.as_deref(),
            raw.proxy_protocol_from.as_deref(),
            raw.proxy_protocol_timeout.as_deref(),
        );
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
                client_id_match: self.choice(
                    &format!("{mk}.client_id_match"),
                    m.client_id_match.as_deref(),
                    ClientIdMatch::Off,
                    &[
                        ("off", ClientIdMatch::Off),
                        ("cn", ClientIdMatch::Cn),
                        ("cn-or-san", ClientIdMatch::CnOrSan),
                    ],
                ),
            }
        });
        let cert_rule = mqtt
            .as_ref()
            .is_some_and(|m| m.client_id_match != ClientIdMatch::Off);
        if cert_rule
            && tls
                .as_ref()
                .is_none_or(|t| t.client_auth == ClientAuth::None)
        {
            self.err(
                &format!("{k}.mqtt.client_id_match"),
                "needs client certificates: [listener.tls] with client_auth = \"required\" (or \"optional\")",
            );
        }
        let websocket = raw
            .websocket
            .map(|w| self.websocket(&format!("{k}.websocket"), w));
        if let Some(ws) = &websocket {
            if ws.to == WsForward::Ws {
                if mqtt.is_some() {
                    self.err(
                        &format!("{k}.mqtt"),
                        "cannot read the CONNECT inside a forwarded WebSocket: remove [listener.mqtt] \
                         or set websocket.to = \"tcp\" (unwrap to plain MQTT)",
                    );
                }
                if pools
                    .get(&pool)
                    .is_some_and(|p| p.health.check == HealthCheckKind::Mqtt)
                {
                    self.err(
                        &format!("pool.{pool}.health.check"),
                        &format!(
                            "\"mqtt\" checks speak MQTT over TCP, but {k} forwards WebSockets \
                             (to = \"ws\") to this pool's servers: use check = \"tcp\""
                        ),
                    );
                }
            }
        }
        let scope = super::routes::RouteScope {
            key: &k,
            tls: tls.as_ref(),
            mqtt: mqtt.is_some(),
            pool: &pool,
            ws_forward: websocket.as_ref().is_some_and(|w| w.to == WsForward::Ws),
        };
        let routes = self.routes(&scope, raw.route, pools);
        ListenerConfig {
            name,
            listen,
            pool,
            backlog,
            accept_sockets,
            tls,
            mqtt,
            websocket,
            proxy_protocol,
            routes,
            key: k,
        }
    }

    /// `proxy_protocol`, `proxy_protocol_from`, `proxy_protocol_timeout`:
    /// the inbound PROXY header of a listener; `None` when off.
    fn inbound_proxy(
        &mut self,
        k: &str,
        mode: Option<&str>,
        from: Option<&[String]>,
        timeout: Option<&str>,
    ) -> Option<InboundProxy> {
        let mode = self.choice(
            &format!("{k}.proxy_protocol"),
            mode,
            None,
            &[
                ("off", None),
                ("optional", Some(false)),
                ("required", Some(true)),
            ],
        );
        let fk = format!("{k}.proxy_protocol_from");
        let tk = format!("{k}.proxy_protocol_timeout");
        let Some(required) = mode else {
            for (set, key) in [(from.is_some(), &fk), (timeout.is_some(), &tk)] {
                if set {
                    self.err(
                        key,
                        "only meaningful with proxy_protocol = \"optional\" or \"required\"",
                    );
                }
            }
            return None;
        };
        let list = from.unwrap_or_default();
        if list.is_empty() || list.len() > defaults::MAX_PROXY_FROM {
            self.err(
                &fk,
                &format!(
                    "expected 1 to {} CIDR blocks: the balancers allowed to send a PROXY header \
                     (everyone else is refused)",
                    defaults::MAX_PROXY_FROM
                ),
            );
        }
        let mut nets = Vec::new();
        for (i, text) in list.iter().enumerate() {
            match crate::proxy_protocol::inbound::parse_cidr(text) {
                Some(net) => nets.push(net),
                None => self.err(
                    &format!("{fk}[{i}]"),
                    &format!(
                        "{text:?} is not a CIDR block or an IP address (e.g. \"10.0.0.0/8\", \"2001:db8::/32\")"
                    ),
                ),
            }
        }
        let timeout = self.duration(&tk, timeout, defaults::PROXY_HEADER_TIMEOUT);
        let timeout = if timeout > defaults::MAX_PROXY_HEADER_TIMEOUT {
            self.err(
                &tk,
                &format!("at most {:?}", defaults::MAX_PROXY_HEADER_TIMEOUT),
            );
            defaults::PROXY_HEADER_TIMEOUT
        } else {
            timeout
        };
        Some(InboundProxy {
            required,
            from: Trusted::new(nets),
            timeout,
        })
    }

    fn identity(&mut self, k: &str, raw: RawIdentity) -> IdentityTlvs {
        let d = IdentityTlvs::default();
        let cert_type = raw.cert_type.unwrap_or(crate::proxy_protocol::TLV_CERT);
        let fixed = [
            crate::proxy_protocol::TLV_SUBJECT,
            crate::proxy_protocol::TLV_SAN,
            crate::proxy_protocol::TLV_FINGERPRINT,
        ];
        if !(0xE0..=0xEF).contains(&cert_type) || fixed.contains(&cert_type) {
            self.err(
                &format!("{k}.cert_type"),
                "must be a custom TLV type, 0xE0 or 0xE4-0xEF (0xE1-0xE3 carry subject, SAN and fingerprint)",
            );
        }
        if raw.cert_type.is_some() && raw.cert != Some(true) {
            self.err(
                &format!("{k}.cert_type"),
                "only meaningful with cert = true",
            );
        }
        let pass_tlvs = raw.pass_tlvs.unwrap_or_default();
        for (i, kind) in pass_tlvs.iter().enumerate() {
            // Both describe the balancer's header itself, not the client.
            if matches!(kind, 0x03 | 0x04) {
                self.err(
                    &format!("{k}.pass_tlvs[{i}]"),
                    &format!(
                        "{kind:#04x} (CRC32C, NOOP) describes the balancer's header, not the client: it cannot be passed on"
                    ),
                );
            }
        }
        IdentityTlvs {
            cn: raw.cn.unwrap_or(d.cn),
            cipher: raw.cipher.unwrap_or(d.cipher),
            subject: raw.subject.unwrap_or(d.subject),
            sans: raw.san.unwrap_or(d.sans),
            fingerprint: raw.fingerprint.unwrap_or(d.fingerprint),
            cert: raw.cert.unwrap_or(false).then_some(cert_type),
            pass: pass_tlvs
                .into_iter()
                .filter(|kind| !matches!(kind, 0x03 | 0x04))
                .collect(),
        }
    }

    fn websocket(&mut self, k: &str, raw: RawWebSocket) -> WebSocketConfig {
        let path = raw.path.unwrap_or_else(|| defaults::WS_PATH.to_string());
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            self.err(
                &format!("{k}.path"),
                "must be an absolute path such as \"/mqtt\" (no query, fragment or spaces)",
            );
        }
        let subprotocols = raw.subprotocols.unwrap_or_else(|| {
            defaults::WS_SUBPROTOCOLS
                .iter()
                .map(|s| (*s).to_string())
                .collect()
        });
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if let Some(bad) = subprotocols.iter().find(|s| !token(s)) {
            self.err(
                &format!("{k}.subprotocols"),
                &format!("{bad:?} is not an HTTP token"),
            );
        }
        let require_subprotocol = raw.require_subprotocol.unwrap_or(true);
        if require_subprotocol && subprotocols.is_empty() {
            self.err(
                &format!("{k}.subprotocols"),
                "empty while require_subprotocol = true: no client could connect",
            );
        }
        let to = self.choice(
            &format!("{k}.to"),
            raw.to.as_deref(),
            WsForward::Tcp,
            &[("tcp", WsForward::Tcp), ("ws", WsForward::Ws)],
        );
        let bounded = |this: &mut Self, name: &str, v: Option<&str>, default: usize| {
            let key = format!("{k}.{name}");
            let n = this.size(&key, v, default);
            if n > defaults::WS_SIZE_CAP {
                this.err(&key, "at most 16MiB");
                return default;
            }
            n
        };
        let max_request_size = bounded(
            self,
            "max_request_size",
            raw.max_request_size.as_deref(),
            defaults::WS_MAX_REQUEST_SIZE,
        );
        let max_message_size = bounded(
            self,
            "max_message_size",
            raw.max_message_size.as_deref(),
            defaults::WS_MAX_MESSAGE_SIZE,
        );
        let max_frame_size = bounded(
            self,
            "max_frame_size",
            raw.max_frame_size.as_deref(),
            max_message_size,
        );
        WebSocketConfig {
            path,
            subprotocols,
            require_subprotocol,
            to,
            upgrade_timeout: self.duration(
                &format!("{k}.upgrade_timeout"),
                raw.upgrade_timeout.as_deref(),
                defaults::WS_UPGRADE_TIMEOUT,
            ),
            max_request_size,
            max_message_size,
            max_frame_size: max_frame_size.min(max_message_size),
        }
    }

    pub(super) fn tls(&mut self, k: &str, raw: RawTls) -> TlsConfig {
        let pair = |this: &mut Self,
                    key: &str,
                    cert: Option<&str>,
                    keyf: Option<&str>,
                    ocsp: Option<&str>| {
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
            let ocsp = ocsp.map(|o| this.path(&format!("{key}.ocsp"), o));
            CertKeyPaths {
                cert,
                key: keyp,
                ocsp,
            }
        };
        let default_cert = pair(
            self,
            k,
            raw.cert.as_deref(),
            raw.key.as_deref(),
            raw.ocsp.as_deref(),
        );
        let sni = raw
            .sni
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let key = format!("{k}.sni[{i}]");
                pair(self, &key, Some(&p.cert), Some(&p.key), p.ocsp.as_deref())
            })
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
        // Read (and its lines checked) when the listener's TLS is built.
        let ticket_keys = raw
            .ticket_keys
            .as_deref()
            .map(|p| self.path(&format!("{k}.ticket_keys"), p));
        if crl.is_some() && client_auth == ClientAuth::None {
            self.err(
                &format!("{k}.crl"),
                "only meaningful with client_auth optional or required",
            );
        }
        let client_chain = crate::tls::ChainLimits {
            max_certs: usize::try_from(match raw.max_client_chain {
                None => defaults::MAX_CLIENT_CHAIN,
                Some(n) if (1..=defaults::MAX_CLIENT_CHAIN_LIMIT).contains(&n) => n,
                Some(_) => {
                    self.err(
                        &format!("{k}.max_client_chain"),
                        &format!(
                            "expected 1 to {} certificates (leaf included)",
                            defaults::MAX_CLIENT_CHAIN_LIMIT
                        ),
                    );
                    defaults::MAX_CLIENT_CHAIN
                }
            })
            .unwrap_or(usize::MAX),
            max_bytes: {
                let key = format!("{k}.max_client_chain_size");
                let n = self.size(
                    &key,
                    raw.max_client_chain_size.as_deref(),
                    defaults::MAX_CLIENT_CHAIN_SIZE,
                );
                if n > defaults::MAX_CLIENT_CHAIN_SIZE_LIMIT {
                    self.err(&key, "at most 64KiB (the largest TLS handshake message)");
                }
                n.min(defaults::MAX_CLIENT_CHAIN_SIZE_LIMIT)
            },
        };
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
            client_chain,
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
            ticket_keys,
        }
    }
}
