//! The proxy: listeners, their accept loops, reloads and the shutdown
//! sequence.
//!
//! [`Proxy::build`] turns a [`Config`] into runtime state (TLS acceptors
//! loaded, pools created); [`Proxy::bind`] binds the listeners (tests bind
//! port 0 and read the addresses); [`Proxy::run`] serves until the shutdown
//! token fires, then drains. [`ProxyHandle`] is what the admin API and
//! SIGHUP use while it runs: backend status, drain/enable, and
//! [`ProxyHandle::reload`].
//!
//! How state lives:
//!
//! * a **generation** (the parsed configuration, TLS acceptors, one
//!   [`Pool`] of settings per pool) is swapped whole by a reload; every
//!   listener's context sits behind an `ArcSwap` and the accept loop loads
//!   it once per accepted connection, so a reload changes what *new*
//!   connections get while open ones keep the context they started with;
//! * a **listener's state** ([`ListenerState`]: its rate limiters) is kept
//!   by listener name across generations, and a reload applies new limits
//!   to it;
//! * a **pool's node set** ([`crate::balance::NodeSet`]: nodes, their
//!   health state, checks and counters, selection state) is kept by pool
//!   name across generations; a reload and DNS discovery change it in
//!   place with `set_backends`, and only the nodes that change start or
//!   stop anything. Removed nodes stop receiving new connections; their
//!   open connections run to completion.
//!
//! # Layout
//!
//! * this file — the shared state, build/bind/run, backend status;
//! * `accept` — listening sockets and what happens to each accepted
//!   connection (permit, counters, spawn);
//! * [`conn`] — one connection's life: a `Conn` and its stages admit →
//!   place → relay, every refusal ending in one place; [`splice`] — the
//!   copy both ways;
//! * [`route`] — a listener's `[[listener.route]]` rules over this
//!   generation's pools;
//! * `reload` — configuration generations, with the diff they apply;
//! * `drain` — draining a backend and pacing its clients' moves;
//! * `handover` — listeners from inherited sockets, and the running
//!   listeners' sockets offered to a process that takes over;
//! * `session_keys` — the process's own session-ticket keys (listeners
//!   without `ticket_keys`): rotated here, kept by every reload, handed
//!   over and adopted on `--takeover`.

mod accept;
pub mod clients;
pub mod conn;
mod drain;
mod handover;
mod rebalance;
mod reload;
pub mod route;
mod session_keys;
pub mod splice;
pub mod websocket;

pub use rebalance::RebalanceError;
pub use reload::{ReloadError, ReloadSummary};

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::accesslog::{AccessLog, Format as AccessFormat};
use crate::balance::{LastCheck, Pool, discovery};
use crate::config::{
    Config, ConfigErrors, InboundProxy, Limits, ListenerConfig, MqttListenerConfig, Overrides,
    TlvTypes, WebSocketConfig,
};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::ratelimit::KeyedLimiter;
use crate::sys::ListenerSockets;
use crate::tls::{SessionKeys, TlsAcceptor};
use accept::bind_listener;
use reload::load_tls;
use route::Routes;

/// Everything a connection task needs from its listener.
pub struct ListenerCtx {
    pub name: String,
    pub local_addr: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    pub mqtt: Option<MqttListenerConfig>,
    pub websocket: Option<WebSocketConfig>,
    /// What the handshake reads from client certificates (the identity
    /// TLVs of every pool a client can be routed to, the client-id rule).
    pub identity: crate::tls::IdentityRequest,
    /// The listener's pool and its `[[listener.route]]` rules.
    pub routes: Routes,
    /// `Some`: a PROXY header from a trusted balancer comes first.
    pub proxy_protocol: Option<InboundProxy>,
    /// TLV types of an inbound header worth keeping: those some pool
    /// the listener reaches passes on (`pass_tlvs`).
    pub keep_tlvs: TlvTypes,
    pub limits: Limits,
    pub metrics: ListenerMetrics,
    /// Random per process; first half of PROXY v2 unique ids.
    pub instance_nonce: u64,
    /// The listener's long-lived state (rate limiters), shared by every
    /// generation of its context.
    pub state: Arc<ListenerState>,
    /// The process's access log; `None` while `[log] access = "off"`.
    pub access: Option<Arc<AccessLog>>,
    /// The process's client index; `None` with `admin.client_index =
    /// false`.
    pub clients: Option<Arc<clients::ClientIndex>>,
    /// `name`, shared by the index's entries.
    pub label: Arc<str>,
}

/// What belongs to a listener rather than to a generation: kept by name
/// across reloads, which apply new limits to it in place.
#[derive(Debug)]
pub struct ListenerState {
    /// `limits.source_connect_rate`, keyed by client address.
    pub source_limit: KeyedLimiter<IpAddr>,
    /// `limits.client_connect_rate`, keyed by a hash of the client id.
    pub client_limit: KeyedLimiter<u64>,
}

impl ListenerState {
    fn new(limits: &Limits) -> ListenerState {
        let keys = crate::config::defaults::RATE_LIMIT_KEYS;
        let state = ListenerState {
            source_limit: KeyedLimiter::new(0, Duration::from_secs(1), 0, keys),
            client_limit: KeyedLimiter::new(0, Duration::from_secs(60), 0, keys),
        };
        state.configure(limits);
        state
    }

    /// Apply the limits of a (new) configuration; what was spent stays
    /// spent. Source addresses get bursts of twice their rate per second,
    /// client ids their rate per minute.
    fn configure(&self, limits: &Limits) {
        let source = limits.source_connect_rate;
        self.source_limit
            .set_rate(source, Duration::from_secs(1), source.saturating_mul(2));
        let client = limits.client_connect_rate;
        self.client_limit
            .set_rate(client, Duration::from_secs(60), client);
    }
}

/// `[log] access` names a file that cannot be opened.
fn access_log_error(config: &Config, e: &std::io::Error) -> ConfigErrors {
    ConfigErrors(vec![crate::config::ConfigError {
        file: config.source.clone(),
        key: "log.access".into(),
        reason: format!("cannot open: {e}"),
    }])
}

/// A configured, not yet running proxy.
pub struct Proxy {
    state: Arc<ProxyState>,
}

/// A cheap handle on a (running) proxy for the admin API and signals.
#[derive(Clone)]
pub struct ProxyHandle {
    state: Arc<ProxyState>,
}

/// One configuration's worth of runtime objects.
struct Generation {
    config: Config,
    pools: BTreeMap<String, Arc<Pool>>,
    /// TLS acceptor per listener, in config order.
    tls: Vec<Option<TlsAcceptor>>,
}

impl Generation {
    /// Every certificate the generation's listeners serve.
    fn served_certificates(&self) -> impl Iterator<Item = CertStatus> + '_ {
        self.config
            .listeners
            .iter()
            .zip(&self.tls)
            .filter_map(|(l, tls)| Some((l, tls.as_ref()?)))
            .flat_map(|(l, tls)| {
                tls.certificates().iter().map(|c| CertStatus {
                    listener: l.name.clone(),
                    cert: c.cert.display().to_string(),
                    not_after: c.not_after,
                })
            })
    }
}

/// A running listener: its swappable context and its own stop switch.
struct ListenerSlot {
    addr: SocketAddr,
    ctx: ArcSwap<ListenerCtx>,
    stop: CancellationToken,
    /// Duplicates of the listening sockets, offered to a process that
    /// takes over (`handover`); emptied when the proxy stops accepting.
    handover: std::sync::Mutex<Vec<socket2::Socket>>,
    /// Its sockets hand out connections with `TCP_NODELAY` already set
    /// (`ListenerSockets::accepted_nodelay`).
    accepted_nodelay: bool,
}

struct ProxyState {
    metrics: Metrics,
    /// The access log: the process's, like the session-ticket keys (a
    /// reload re-configures and re-opens it).
    access: Arc<AccessLog>,
    /// `/api/v1/clients` (`admin.client_index`).
    clients: Arc<clients::ClientIndex>,
    instance_nonce: u64,
    /// Session-ticket keys of listeners without `ticket_keys`: the
    /// process's, not a generation's (every reload keeps them).
    session_keys: Arc<SessionKeys>,
    conn_ids: AtomicU64,
    current: ArcSwap<Generation>,
    /// Connection permits; resized by reloads of `limits.max_connections`.
    limit: Arc<Semaphore>,
    limit_size: AtomicUsize,
    listeners: std::sync::Mutex<BTreeMap<String, Arc<ListenerSlot>>>,
    /// Long-lived state of each configured listener, by name.
    listener_states: std::sync::Mutex<BTreeMap<String, Arc<ListenerState>>>,
    background: TaskTracker,
    conns: TaskTracker,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    /// One reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// Where `reload_from_source` reads the configuration again.
    source: std::sync::Mutex<Option<(PathBuf, Overrides)>>,
    /// When [`Proxy::build`] ran: the status page's uptime.
    started: tokio::time::Instant,
}

/// A backend as the admin API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendStatus {
    pub pool: String,
    pub name: String,
    pub addr: SocketAddr,
    /// `up`, `down` or `draining`.
    pub state: &'static str,
    pub weight: u32,
    pub active: u64,
    /// `max_connections` (0: no cap), and whether the node holds that many.
    pub max_connections: u64,
    pub at_cap: bool,
    pub last_check: Option<LastCheck>,
    /// Slow start: its share of new clients over its full share (1: not
    /// ramping).
    pub slow_start_ratio: f64,
}

/// A running listener as the status page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerStatus {
    pub name: String,
    pub addr: SocketAddr,
    pub tls: bool,
    pub counts: crate::metrics::ListenerCounts,
}

/// A served certificate: the listener, the certificate file and its
/// notAfter (Unix seconds).
#[derive(Debug, Clone, PartialEq)]
pub struct CertStatus {
    pub listener: String,
    pub cert: String,
    pub not_after: i64,
}

/// The process as the status page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStatus {
    pub uptime: Duration,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
}

/// A pool's admission as the admin API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolStatus {
    pub name: String,
    pub backends_in_rotation: usize,
    pub max_connect_rate: u32,
    pub queue_size: usize,
    pub queue_timeout: Duration,
    /// Clients waiting for admission now.
    pub queued: usize,
    /// Whether admission paces now (late CONNACKs are no node failure).
    pub pacing: bool,
    /// `rebalance` as configured (`None`: only by hand).
    pub rebalance: Option<crate::balance::config::RebalanceConfig>,
    /// The running rebalance, or the last one.
    pub last_rebalance: Option<crate::balance::rebalance::Progress>,
}

impl Proxy {
    /// Load TLS material and create pools; metrics are registered on
    /// `registry`. Errors name the config key of the failing file.
    pub fn build(config: Config, registry: &mut Registry) -> Result<Proxy, ConfigErrors> {
        let session_keys = Arc::new(SessionKeys::generate_now().map_err(|reason| {
            ConfigErrors(vec![crate::config::ConfigError {
                file: config.source.clone(),
                key: String::new(),
                reason: format!("session ticket keys: {reason}"),
            }])
        })?);
        let tls = load_tls(&config, &session_keys)?;
        let metrics = Metrics::new(registry);
        let access = AccessLog::start(
            &config.log,
            AccessFormat::default(),
            metrics.access_log_dropped.clone(),
        )
        .map_err(|e| access_log_error(&config, &e))?;
        let pools = config
            .pools
            .iter()
            .map(|(name, p)| (name.clone(), Arc::new(Pool::new(p, &metrics))))
            .collect();
        let max = config.limits.max_connections.min(Semaphore::MAX_PERMITS);
        let state = Arc::new(ProxyState {
            metrics,
            access: Arc::new(access),
            clients: Arc::default(),
            instance_nonce: instance_nonce(),
            session_keys,
            conn_ids: AtomicU64::new(0),
            current: ArcSwap::from_pointee(Generation { config, pools, tls }),
            limit: Arc::new(Semaphore::new(max)),
            limit_size: AtomicUsize::new(max),
            listeners: Default::default(),
            listener_states: Default::default(),
            background: TaskTracker::new(),
            conns: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            reload_lock: tokio::sync::Mutex::new(()),
            source: std::sync::Mutex::new(None),
            started: tokio::time::Instant::now(),
        });
        state.export_certificates(&state.current.load());
        state.export_routes(&state.current.load());
        // A weak reference: the registry may outlive the proxy (then the
        // family is empty).
        let weak = Arc::downgrade(&state);
        crate::metrics::register_pools_in_rotation(registry, move || {
            weak.upgrade()
                .map(|state| state.pools_in_rotation())
                .unwrap_or_default()
        });
        let weak = Arc::downgrade(&state);
        crate::metrics::register_slow_start(registry, move || {
            weak.upgrade()
                .map(|state| state.slow_start_ratios())
                .unwrap_or_default()
        });
        Ok(Proxy { state })
    }

    /// Write access-log lines in `format` (the process's `--log-format`).
    pub fn with_access_format(self, format: AccessFormat) -> Proxy {
        self.state.access.set_format(format);
        self
    }

    /// Remember the file (and flags) to read again on reload.
    pub fn with_source(self, path: PathBuf, overrides: Overrides) -> Proxy {
        *lock(&self.state.source) = Some((path, overrides));
        self
    }

    pub fn handle(&self) -> ProxyHandle {
        ProxyHandle {
            state: self.state.clone(),
        }
    }

    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.state.current.load().pools.get(name).cloned()
    }

    /// Bind every listener with its backlog and accept sockets. Returned
    /// in config order. Call inside the runtime that will serve them.
    pub fn bind(&self) -> std::io::Result<Vec<ListenerSockets>> {
        self.state
            .current
            .load()
            .config
            .listeners
            .iter()
            .map(bind_listener)
            .collect()
    }

    /// Serve on `listeners` (from [`Proxy::bind`]) until `shutdown` is
    /// cancelled; then stop accepting and wait for connections to finish,
    /// at most `drain_timeout`, after which the rest are closed.
    pub async fn run(self, listeners: Vec<ListenerSockets>, shutdown: CancellationToken) {
        self.start(listeners).run_until(shutdown).await
    }

    /// Start serving on `listeners`: when this returns, every listener's
    /// accept task is spawned (connections arriving now wait in the
    /// backlog for it). Call inside the runtime.
    pub fn start(self, listeners: Vec<ListenerSockets>) -> Running {
        let state = self.state;
        state.background.spawn(session_keys::rotate(
            state.session_keys.clone(),
            state.shutdown.clone(),
        ));
        state.background.spawn(state.clone().watch_rebalance());
        let generation = state.current.load_full();
        for (name, pool) in &generation.pools {
            if let Some(cfg) = generation.config.pools.get(name) {
                state.start_pool(pool, cfg, Vec::new());
            }
        }
        for ((cfg, listener), tls) in generation
            .config
            .listeners
            .iter()
            .zip(listeners)
            .zip(generation.tls.iter().cloned())
        {
            state.start_listener(&generation, cfg, listener, tls);
        }
        Running { state }
    }
}

/// A proxy serving since [`Proxy::start`].
pub struct Running {
    state: Arc<ProxyState>,
}

impl Running {
    /// Serve until `shutdown` is cancelled; then stop accepting and wait
    /// for connections to finish, at most `drain_timeout`, after which the
    /// rest are closed.
    pub async fn run_until(self, shutdown: CancellationToken) {
        let state = self.state;
        shutdown.cancelled().await;
        state.shutdown.cancel();
        state.background.close();
        state.background.wait().await;
        // Accept loops are done: drop this process's last copies of the
        // listening sockets (a process that took over keeps its own).
        for slot in lock(&state.listeners).values() {
            lock(&slot.handover).clear();
        }
        state.conns.close();
        let drain = state.current.load().config.limits.drain_timeout;
        let open = state.conns.len();
        if open > 0 {
            info!(open, timeout = ?drain, "draining connections");
        }
        if tokio::time::timeout(drain, state.conns.wait())
            .await
            .is_err()
        {
            warn!(
                open = state.conns.len(),
                "drain timeout reached; closing the remaining connections"
            );
            state.hard_stop.cancel();
            state.conns.wait().await;
        }
        info!("stopped");
    }
}

/// The client index is kept while there is an admin listener to ask it
/// and `admin.client_index` is on.
fn client_index_on(config: &Config) -> bool {
    config.admin.is_some() && config.admin_limits.client_index
}

// A poisoned lock only means a panic elsewhere while holding it; the data
// (a map of handles) is still consistent.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ProxyState {
    fn listener_ctx(
        &self,
        generation: &Generation,
        cfg: &ListenerConfig,
        local_addr: SocketAddr,
        tls: Option<TlsAcceptor>,
    ) -> Option<ListenerCtx> {
        // Config conversion guarantees every pool a listener names exists.
        let routes = Routes::new(cfg, &generation.pools, &self.metrics)?;
        let state = lock(&self.listener_states)
            .entry(cfg.name.clone())
            .or_insert_with(|| Arc::new(ListenerState::new(&generation.config.limits)))
            .clone();
        Some(ListenerCtx {
            name: cfg.name.clone(),
            local_addr,
            tls,
            mqtt: cfg.mqtt.clone(),
            websocket: cfg.websocket.clone(),
            identity: identity_request(cfg, &routes),
            proxy_protocol: cfg.proxy_protocol.clone(),
            // What any pool the listener routes to passes on.
            keep_tlvs: match cfg.proxy_protocol {
                Some(_) => routes
                    .pools()
                    .fold(TlvTypes::default(), |all, p| all.union(p.identity.pass)),
                None => TlvTypes::default(),
            },
            routes,
            limits: generation.config.limits.clone(),
            metrics: self.metrics.listener(&cfg.name),
            instance_nonce: self.instance_nonce,
            state,
            access: generation
                .config
                .log
                .destination
                .ne(&crate::accesslog::Destination::Off)
                .then(|| self.access.clone()),
            clients: client_index_on(&generation.config).then(|| self.clients.clone()),
            label: cfg.name.as_str().into(),
        })
    }

    /// Export the expiry of every certificate the generation's listeners
    /// serve; series of certificates no longer served go.
    fn export_certificates(&self, generation: &Generation) {
        let certs = generation
            .served_certificates()
            .map(|c| (c.listener, c.cert, c.not_after));
        self.metrics.set_certificates(certs);
    }

    /// Export every listener's routes (each from 0); series of routes no
    /// longer configured go.
    fn export_routes(&self, generation: &Generation) {
        let labels = generation
            .config
            .listeners
            .iter()
            .flat_map(route::route_labels);
        self.metrics.set_routes(labels);
    }

    /// Backends in rotation per pool of the running generation.
    fn pools_in_rotation(&self) -> Vec<(String, i64)> {
        self.current
            .load()
            .pools
            .iter()
            .map(|(name, pool)| {
                let n = pool.backends().iter().filter(|b| b.in_rotation()).count();
                (name.clone(), i64::try_from(n).unwrap_or(i64::MAX))
            })
            .collect()
    }

    /// Every node's slow-start progress, (pool, node, share of its full
    /// share).
    fn slow_start_ratios(&self) -> Vec<(String, String, f64)> {
        let mut out = Vec::new();
        for (name, pool) in self.current.load().pools.iter() {
            for b in pool.backends().iter() {
                out.push((name.clone(), b.name.clone(), b.slow_start_ratio()));
            }
        }
        out
    }

    /// Start a pool's node set (health checks) if it is not running yet,
    /// and (re)start its DNS discovery from `answers` when it has DNS
    /// servers. Nothing else of the pool restarts.
    fn start_pool(&self, pool: &Pool, cfg: &crate::config::PoolConfig, answers: Vec<Vec<IpAddr>>) {
        if !pool.nodes.started() {
            pool.nodes.start(&self.background, &self.shutdown);
        }
        if cfg.dns.is_empty() {
            pool.nodes.stop_discovery();
        } else {
            let resolver = &self.current.load().config.resolver;
            let dns = discovery::Dns::new(cfg, resolver, answers);
            pool.nodes.discover(Arc::new(dns), cfg.resolve_interval);
        }
    }
}

impl ProxyHandle {
    /// Re-open the access log's file (SIGUSR1: logrotate renamed it).
    pub fn reopen_logs(&self) {
        self.state.access.reopen();
    }

    /// Every backend of every pool, for `GET /api/v1/backends`.
    pub fn backends(&self) -> Vec<BackendStatus> {
        let generation = self.state.current.load();
        let mut out = Vec::new();
        for p in generation.pools.values() {
            for b in p.backends().iter() {
                out.push(BackendStatus {
                    pool: p.name.clone(),
                    name: b.name.clone(),
                    addr: b.addr,
                    state: if !b.is_up() {
                        "down"
                    } else if b.is_draining() {
                        "draining"
                    } else {
                        "up"
                    },
                    weight: b.weight(),
                    active: b.active(),
                    max_connections: b.max_connections(),
                    at_cap: b.at_cap(),
                    last_check: b.last_check(),
                    slow_start_ratio: b.slow_start_ratio(),
                });
            }
        }
        out
    }

    /// Every pool's admission, for `GET /api/v1/pools`.
    pub fn pools(&self) -> Vec<PoolStatus> {
        let generation = self.state.current.load();
        generation
            .pools
            .values()
            .map(|p| PoolStatus {
                name: p.name.clone(),
                backends_in_rotation: p.backends().iter().filter(|b| b.in_rotation()).count(),
                max_connect_rate: p.admission.max_connect_rate,
                queue_size: p.admission.queue_size,
                queue_timeout: p.admission.queue_timeout,
                queued: p.admission().queued(),
                pacing: p.admission().pacing(),
                rebalance: generation
                    .config
                    .pools
                    .get(&p.name)
                    .and_then(|c| c.rebalance),
                last_rebalance: p.nodes.rebalance.progress(),
            })
            .collect()
    }

    /// Running listeners and the addresses they are bound to.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.state.listeners)
            .iter()
            .map(|(name, slot)| (name.clone(), slot.ctx.load().local_addr))
            .collect()
    }

    /// Running listeners with their counters, for the status page.
    pub fn listener_status(&self) -> Vec<ListenerStatus> {
        lock(&self.state.listeners)
            .iter()
            .map(|(name, slot)| {
                let ctx = slot.ctx.load();
                ListenerStatus {
                    name: name.clone(),
                    addr: ctx.local_addr,
                    tls: ctx.tls.is_some(),
                    counts: ctx.metrics.counts(),
                }
            })
            .collect()
    }

    /// Every certificate the running generation serves, for the status
    /// page (the same set as `mqttlb_tls_certificate_not_after_seconds`).
    pub fn certificates(&self) -> Vec<CertStatus> {
        self.state.current.load().served_certificates().collect()
    }

    /// Uptime and reloads, for the status page.
    pub fn process(&self) -> ProcessStatus {
        let (reloads_ok, reloads_failed) = self.state.metrics.reloads();
        ProcessStatus {
            uptime: self.state.started.elapsed(),
            reloads_ok,
            reloads_failed,
        }
    }

    /// The client index, while `admin.client_index` is on.
    pub fn clients(&self) -> Option<Arc<clients::ClientIndex>> {
        client_index_on(&self.state.current.load().config).then(|| self.state.clients.clone())
    }

    /// Ready: at least one backend in rotation.
    pub fn ready(&self) -> bool {
        self.state.current.load().pools.values().any(|p| p.any_up())
    }
}

/// A per-process value that makes PROXY unique ids differ across restarts
/// and instances (not a secret).
fn instance_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    xxhash_rust::xxh3::xxh3_64_with_seed(&t.to_le_bytes(), u64::from(std::process::id()))
}

/// What a listener's handshakes must read from client certificates: the
/// route is chosen after the handshake, so whatever any pool the listener
/// reaches puts in its headers.
fn identity_request(cfg: &ListenerConfig, routes: &Routes) -> crate::tls::IdentityRequest {
    let mut want = crate::tls::IdentityRequest::default();
    for pool in routes.pools() {
        if pool.proxy_protocol == crate::config::ProxyProtocol::V2 {
            let more = pool.identity.request();
            want.subject |= more.subject;
            want.sans |= more.sans;
            want.fingerprint |= more.fingerprint;
            want.der |= more.der;
        }
    }
    if cfg
        .mqtt
        .as_ref()
        .is_some_and(|m| m.client_id_match == crate::config::ClientIdMatch::CnOrSan)
    {
        want.sans = true;
    }
    want
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    /// On shutdown the proxy stops accepting, waits for open connections
    /// up to `drain_timeout` (virtual time here), then closes them.
    #[tokio::test]
    async fn drain_timeout_then_hard_stop() {
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let text = format!(
            "[[listener]]\nname = \"pass\"\nlisten = \"127.0.0.1:0\"\npool = \"p\"\n\
             [pool.p]\nservers = [ {{ addr = \"{}\" }} ]\n\
             [limits]\ndrain_timeout = \"7s\"\n",
            backend.local_addr().unwrap()
        );
        let raw = crate::config::parse_toml("t.toml", &text).unwrap();
        let config = Config::from_raw("t.toml", std::path::Path::new(""), raw).unwrap();
        let proxy = Proxy::build(config, &mut Registry::default()).unwrap();
        let handle = proxy.handle();
        let sockets = proxy.bind().unwrap();
        let addr = sockets[0].local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(proxy.run(sockets, shutdown.clone()));

        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_held, _) = backend.accept().await.unwrap();
        while handle.backends().iter().map(|b| b.active).sum::<u64>() == 0 {
            tokio::task::yield_now().await;
        }

        tokio::time::pause();
        let started = tokio::time::Instant::now();
        shutdown.cancel();
        run.await.unwrap();
        // Timers have millisecond resolution.
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(7)..Duration::from_millis(7_010)).contains(&waited),
            "{waited:?}"
        );
        // The client's connection was closed by the hard stop.
        let mut buf = [0u8; 1];
        tokio::time::resume();
        let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("closed, not hanging")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
