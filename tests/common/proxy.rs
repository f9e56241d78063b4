//! mqttlb's proxy running in-process on port 0: [`ProxyUnderTest`], the
//! TOML [`config`] tests start it from, and its admin API.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mqttlb::balance::Pool;
#[allow(unused_imports)] // each test binary uses some of them
pub use mqttlb::config::raw::{
    RawAdmin, RawCertPair, RawConfig, RawListener, RawPool, RawServer, RawTls,
};
use mqttlb::config::template::tls_proxy;
use mqttlb::config::{Config, parse_toml};
use mqttlb::proxy::Proxy;
use prometheus_client::registry::Registry;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Certs, DEADLINE, metric_sample, read_to_close, wait_until};

/// mqttlb running in-process on an ephemeral port.
pub struct ProxyUnderTest {
    pub addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub handle: mqttlb::proxy::ProxyHandle,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    proxy_pools: Vec<Arc<Pool>>,
}

impl ProxyUnderTest {
    /// Start from TOML text; its first listener must use `listen =
    /// "127.0.0.1:0"`. Relative paths resolve against `base`.
    pub async fn start(toml: &str, base: &Path) -> ProxyUnderTest {
        ProxyUnderTest::start_with(toml, base, |p| p).await
    }

    /// [`ProxyUnderTest::start`], with `edit` applied to the built proxy
    /// (e.g. `Proxy::with_access_format`).
    pub async fn start_with(
        toml: &str,
        base: &Path,
        edit: impl FnOnce(Proxy) -> Proxy,
    ) -> ProxyUnderTest {
        let raw = parse_toml("test.toml", toml).expect("test config parses");
        let config = Config::from_raw("test.toml", base, raw).expect("test config converts");
        let pool_names: Vec<String> = config.pools.keys().cloned().collect();
        let listener_count = config.listeners.len();
        let mut registry = Registry::default();
        let proxy = edit(Proxy::build(config, &mut registry).expect("proxy builds"));
        let pools = pool_names.iter().filter_map(|n| proxy.pool(n)).collect();
        let listeners = proxy.bind().expect("bind");
        let addr = listeners[0].local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let handle = proxy.handle();
        let task = tokio::spawn(proxy.run(listeners, shutdown.clone()));
        // Serving once every listener is registered: a reload issued before
        // that would see none running and bind their ports again.
        wait_until("listeners registered", DEADLINE, || async {
            handle.listeners().len() == listener_count
        })
        .await;
        ProxyUnderTest {
            addr,
            registry: Arc::new(registry),
            handle,
            shutdown,
            task,
            proxy_pools: pools,
        }
    }

    /// The standard test proxy ([`config`], nothing extra) in front of
    /// `servers`.
    pub async fn in_front_of(certs: &Certs, servers: &[(&str, SocketAddr)]) -> ProxyUnderTest {
        ProxyUnderTest::start(&config(certs, servers, "", ""), certs.dir.path()).await
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.proxy_pools[0]
    }

    /// The pool called `name` (as configured at start).
    pub fn pool_named(&self, name: &str) -> &Arc<Pool> {
        self.proxy_pools
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pool {name}"))
    }

    pub fn backend_up(&self, name: &str) -> bool {
        self.pool().find(name).expect("backend exists").is_up()
    }

    /// Current value of a metric sample, e.g.
    /// `mqttlb_connections_rejected_total{listener="l",reason="http"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_sample(&self.registry, sample)
    }

    pub fn rejected(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "mqttlb_connections_rejected_total{{listener=\"mqtts\",reason=\"{reason}\"}}"
        ))
    }
}

/// The standard test proxy, typed (the file schema of `mqttlb::config::raw`):
/// a TLS, MQTT-aware listener `mqtts` on 127.0.0.1:0 (CONNECT within 2 s)
/// forwarding to pool `brokers` of `servers`; handshakes within 2 s, drain
/// 5 s; no access log. Tests change fields, then render with `to_toml()`.
pub fn proxy_config(certs: &Certs, servers: &[(&str, SocketAddr)]) -> RawConfig {
    let addrs: Vec<(String, String)> = servers
        .iter()
        .map(|(name, addr)| (name.to_string(), addr.to_string()))
        .collect();
    let servers: Vec<(&str, &str)> = addrs
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();
    let mut raw = tls_proxy(
        "127.0.0.1:0",
        &certs.p("server.pem"),
        &certs.p("server.key"),
        "brokers",
        &servers,
    );
    if let Some(mqtt) = raw.listener[0].mqtt.as_mut() {
        mqtt.connect_timeout = Some("2s".into());
    }
    raw.limits.tls_handshake_timeout = Some("2s".into());
    raw.limits.drain_timeout = Some("5s".into());
    // The access log is on (to stderr) by default: test output would
    // carry a line per connection. tests/access_log.rs turns it on.
    raw.log = Some(mqttlb::config::raw::RawLog {
        access: Some("off".into()),
        access_username: None,
    });
    raw
}

/// The first listener's TLS settings of a [`proxy_config`].
pub fn tls_of(raw: &mut RawConfig) -> &mut RawTls {
    raw.listener[0].tls.get_or_insert_with(RawTls::default)
}

/// [`proxy_config`] as TOML, with extra keys for the listener and the pool
/// given as TOML snippets (e.g. `strategy = "client-id"`), merged as
/// tables: a key that does not exist in the schema fails the load.
pub fn config(
    certs: &Certs,
    servers: &[(&str, SocketAddr)],
    extra_listener: &str,
    extra_pool: &str,
) -> String {
    let mut table: toml::Table = proxy_config(certs, servers)
        .to_toml()
        .parse()
        .expect("rendered config parses");
    let merge = |target: Option<&mut toml::Table>, snippet: &str| {
        let extra: toml::Table = snippet.parse().expect("snippet is TOML");
        target.expect("table to merge into").extend(extra);
    };
    merge(first_listener(&mut table), extra_listener);
    merge(
        table
            .get_mut("pool")
            .and_then(|p| p.get_mut("brokers"))
            .and_then(toml::Value::as_table_mut),
        extra_pool,
    );
    table.to_string()
}

/// The first `[[listener]]` table of a parsed configuration.
pub fn first_listener(table: &mut toml::Table) -> Option<&mut toml::Table> {
    table
        .get_mut("listener")
        .and_then(|l| l.as_array_mut())
        .and_then(|l| l.first_mut())
        .and_then(toml::Value::as_table_mut)
}

/// `toml` with its first listener edited (e.g. a table removed).
pub fn edit_listener(toml: &str, edit: impl FnOnce(&mut toml::Table)) -> String {
    let mut table: toml::Table = toml.parse().expect("config parses");
    edit(first_listener(&mut table).expect("a [[listener]]"));
    table.to_string()
}

/// A plain HTTP/1.0 request to an admin server: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, &[]).await
}

/// [`http`] with extra request headers (`Origin`, `Authorization`, …).
pub async fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("request");
    let raw = String::from_utf8(read_to_close(&mut s).await).expect("utf-8 response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Serve the admin API of `proxy` on an ephemeral loopback port (header
/// timeout 1 s, 8 connections).
pub async fn start_admin(proxy: &ProxyUnderTest) -> SocketAddr {
    start_admin_with(proxy, |_| {}).await
}

/// [`start_admin`], with `edit` changing the server's settings (limits,
/// token) before it starts.
pub async fn start_admin_with(
    proxy: &ProxyUnderTest,
    edit: impl FnOnce(&mut mqttlb::admin::Admin),
) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let addr = listener.local_addr().expect("admin addr");
    let mut admin = mqttlb::admin::Admin::new(
        proxy.registry.clone(),
        mqttlb::admin::Role::Proxy(proxy.handle.clone()),
    );
    // Short enough for a test to watch a silent connection being closed.
    admin.limits.header_timeout = std::time::Duration::from_secs(1);
    admin.limits.max_connections = 8;
    edit(&mut admin);
    tokio::spawn(mqttlb::admin::serve(
        listener,
        Arc::new(admin),
        proxy.shutdown.clone(),
    ));
    addr
}
