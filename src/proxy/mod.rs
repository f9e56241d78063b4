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
//! Reload model: every listener's context (TLS acceptor, pool, limits) sits
//! behind an `ArcSwap`; the accept loop loads it once per accepted
//! connection, so a reload changes what *new* connections get while open
//! ones keep the context they started with. Backends that stay (same name
//! and address) are taken over by the new pools with their health state,
//! counters and connections; removed ones simply stop receiving new
//! connections and their open connections run to completion (drain).

pub mod conn;
pub mod dns;
pub mod splice;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::balance::{Backend, LastCheck, Pool, health};
use crate::config::{
    Config, ConfigError, ConfigErrors, Limits, ListenerConfig, MqttListenerConfig, Overrides,
};
use crate::metrics::{ListenerMetrics, Metrics, Rejection};
use crate::sys::ListenerSockets;
use crate::tls::TlsAcceptor;

/// Everything a connection task needs from its listener.
pub struct ListenerCtx {
    pub name: String,
    pub local_addr: SocketAddr,
    pub tls: Option<TlsAcceptor>,
    pub mqtt: Option<MqttListenerConfig>,
    pub pool: Arc<Pool>,
    pub limits: Limits,
    pub metrics: ListenerMetrics,
    /// Random per process; first half of PROXY v2 unique ids.
    pub instance_nonce: u64,
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
    /// Current DNS answers: pool name → one address list per `dns` entry.
    resolved: Resolved,
}

/// DNS answers: pool name → one address list per entry of its `dns`.
pub type Resolved = BTreeMap<String, Vec<Vec<IpAddr>>>;

/// A running listener: its swappable context and its own stop switch.
struct ListenerSlot {
    addr: SocketAddr,
    ctx: ArcSwap<ListenerCtx>,
    stop: CancellationToken,
}

struct ProxyState {
    metrics: Metrics,
    instance_nonce: u64,
    conn_ids: AtomicU64,
    current: ArcSwap<Generation>,
    /// Connection permits; resized by reloads of `limits.max_connections`.
    limit: Arc<Semaphore>,
    limit_size: AtomicUsize,
    listeners: std::sync::Mutex<BTreeMap<String, Arc<ListenerSlot>>>,
    /// Stops the current set of health-check tasks (replaced on reload).
    health_stop: std::sync::Mutex<CancellationToken>,
    background: TaskTracker,
    conns: TaskTracker,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    /// One reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// Wakes the DNS task after a reload (new names to resolve).
    dns_wake: tokio::sync::Notify,
    /// Where `reload_from_source` reads the configuration again.
    source: std::sync::Mutex<Option<(PathBuf, Overrides)>>,
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
    pub last_check: Option<LastCheck>,
}

/// Why a reload did not apply; the old configuration keeps running.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Bind(std::io::Error),
    #[error("no configuration file to reload from (started from flags only)")]
    NoSource,
}

/// What a successful reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
}

/// Load TLS material for every listener; errors name the config key.
fn load_tls(config: &Config) -> Result<Vec<Option<TlsAcceptor>>, ConfigErrors> {
    let mut errors = Vec::new();
    let tls = config
        .listeners
        .iter()
        .map(|l| {
            l.tls.as_ref().and_then(|t| {
                TlsAcceptor::from_config(&format!("{}.tls", l.key), t)
                    .map_err(|e| errors.push(ConfigError::tls(&config.source, e)))
                    .ok()
            })
        })
        .collect();
    if errors.is_empty() {
        Ok(tls)
    } else {
        Err(ConfigErrors(errors))
    }
}

impl Proxy {
    /// Load TLS material and create pools; metrics are registered on
    /// `registry`. Errors name the config key of the failing file.
    pub fn build(config: Config, registry: &mut Registry) -> Result<Proxy, ConfigErrors> {
        let tls = load_tls(&config)?;
        let metrics = Metrics::new(registry);
        let pools = config
            .pools
            .iter()
            .map(|(name, p)| (name.clone(), Arc::new(Pool::new(p, &metrics))))
            .collect();
        let max = config.limits.max_connections.min(Semaphore::MAX_PERMITS);
        Ok(Proxy {
            state: Arc::new(ProxyState {
                metrics,
                instance_nonce: instance_nonce(),
                conn_ids: AtomicU64::new(0),
                current: ArcSwap::from_pointee(Generation {
                    config,
                    pools,
                    tls,
                    resolved: Resolved::new(),
                }),
                limit: Arc::new(Semaphore::new(max)),
                limit_size: AtomicUsize::new(max),
                listeners: Default::default(),
                health_stop: std::sync::Mutex::new(CancellationToken::new()),
                background: TaskTracker::new(),
                conns: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                hard_stop: CancellationToken::new(),
                reload_lock: tokio::sync::Mutex::new(()),
                dns_wake: tokio::sync::Notify::new(),
                source: std::sync::Mutex::new(None),
            }),
        })
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
        let state = self.state;
        let generation = state.current.load_full();
        state.restart_health_checks(&generation);
        state.background.spawn(dns::run(
            ProxyHandle {
                state: state.clone(),
            },
            state.shutdown.clone(),
        ));
        for ((cfg, listener), tls) in generation
            .config
            .listeners
            .iter()
            .zip(listeners)
            .zip(generation.tls.iter().cloned())
        {
            state.start_listener(&generation, cfg, listener, tls);
        }
        shutdown.cancelled().await;
        state.shutdown.cancel();
        state.background.close();
        state.background.wait().await;
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

fn bind_listener(l: &ListenerConfig) -> std::io::Result<ListenerSockets> {
    let count = match l.accept_sockets {
        0 => tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1),
        n => usize::try_from(n).unwrap_or(1),
    };
    ListenerSockets::bind(l.listen, l.backlog, count).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("listener {:?} on {}: {e}", l.name, l.listen),
        )
    })
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
        // Config conversion guarantees every listener's pool exists.
        let pool = generation.pools.get(&cfg.pool)?.clone();
        Some(ListenerCtx {
            name: cfg.name.clone(),
            local_addr,
            tls,
            mqtt: cfg.mqtt.clone(),
            pool,
            limits: generation.config.limits.clone(),
            metrics: self.metrics.listener(&cfg.name),
            instance_nonce: self.instance_nonce,
        })
    }

    fn start_listener(
        self: &Arc<Self>,
        generation: &Generation,
        cfg: &ListenerConfig,
        sockets: ListenerSockets,
        tls: Option<TlsAcceptor>,
    ) {
        let local_addr = sockets.local_addr().unwrap_or(cfg.listen);
        let Some(ctx) = self.listener_ctx(generation, cfg, local_addr, tls) else {
            warn!(listener = %cfg.name, pool = %cfg.pool, "listener names an unknown pool; not serving it");
            return;
        };
        info!(listener = %cfg.name, addr = %local_addr, tls = ctx.tls.is_some(), mqtt = cfg.mqtt.is_some(), pool = %cfg.pool, accept_sockets = sockets.len(), "listening");
        let slot = Arc::new(ListenerSlot {
            addr: cfg.listen,
            ctx: ArcSwap::from_pointee(ctx),
            stop: self.shutdown.child_token(),
        });
        lock(&self.listeners).insert(cfg.name.clone(), slot.clone());
        for socket in sockets.into_sockets() {
            self.background
                .spawn(accept_loop(socket, slot.clone(), self.clone()));
        }
    }

    fn restart_health_checks(&self, generation: &Generation) {
        let token = self.shutdown.child_token();
        let old = std::mem::replace(&mut *lock(&self.health_stop), token.clone());
        old.cancel();
        for pool in generation.pools.values() {
            health::spawn_checks(pool, &self.background, &token);
        }
    }
}

impl ProxyHandle {
    /// Every backend of every pool, for `GET /api/v1/backends`.
    pub fn backends(&self) -> Vec<BackendStatus> {
        let generation = self.state.current.load();
        generation
            .pools
            .values()
            .flat_map(|p| {
                p.backends.iter().map(move |b| BackendStatus {
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
                    last_check: b.last_check(),
                })
            })
            .collect()
    }

    /// Take a backend out of rotation (`true`) or put it back; open
    /// connections are untouched. `false` if no backend has that name.
    pub fn set_draining(&self, name: &str, draining: bool) -> bool {
        self.drain(name, draining, None)
    }

    /// Drain (or enable) a backend. When draining with `disconnect` —
    /// `Some(window)`, or the pool's `drain_disconnect` when `None` — its
    /// MQTT 5 clients are sent DISCONNECT 0x9C "use another server", one
    /// by one spread over the window, until the backend is enabled again.
    pub fn drain(&self, name: &str, draining: bool, disconnect: Option<Option<Duration>>) -> bool {
        let generation = self.state.current.load();
        let mut found = false;
        for pool in generation.pools.values() {
            let Some(b) = pool.find(name) else { continue };
            found = true;
            b.set_draining(draining);
            info!(backend = %b.name, draining, "backend drain state changed by the admin API");
            let window = match disconnect {
                Some(w) => w,
                None => generation
                    .config
                    .pools
                    .get(&pool.name)
                    .filter(|p| p.drain_disconnect)
                    .map(|p| p.drain_window),
            };
            if let (true, Some(window)) = (draining, window) {
                self.kick_paced(b.clone(), window);
            }
        }
        found
    }

    fn kick_paced(&self, backend: Arc<Backend>, window: Duration) {
        let tokens = backend.kick_tokens();
        let n = tokens.len();
        if n == 0 {
            return;
        }
        info!(backend = %backend.name, clients = n, ?window, "drain: asking MQTT 5 clients to use another server");
        let stop = self.state.shutdown.clone();
        self.state.background.spawn(async move {
            let start = tokio::time::Instant::now();
            for (i, token) in tokens.into_iter().enumerate() {
                let at = start + window.mul_f64(i as f64 / n as f64);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(at) => {}
                }
                if !backend.is_draining() {
                    info!(backend = %backend.name, "drain cancelled; no more clients asked to move");
                    return;
                }
                token.cancel();
            }
        });
    }

    /// Running listeners and the addresses they are bound to.
    pub fn listeners(&self) -> Vec<(String, SocketAddr)> {
        lock(&self.state.listeners)
            .iter()
            .map(|(name, slot)| (name.clone(), slot.ctx.load().local_addr))
            .collect()
    }

    /// Ready: at least one backend in rotation.
    pub fn ready(&self) -> bool {
        self.state.current.load().pools.values().any(|p| p.any_up())
    }

    /// Read the configuration file again (with the original flags) and
    /// apply it; on any error the running configuration stays.
    pub async fn reload_from_source(&self) -> Result<ReloadSummary, ReloadError> {
        let source = lock(&self.state.source).clone();
        let Some((path, overrides)) = source else {
            self.state.metrics.reload("error");
            return Err(ReloadError::NoSource);
        };
        match Config::load(Some(&path), &overrides) {
            Ok(config) => self.reload(config).await,
            Err(e) => {
                self.state.metrics.reload("error");
                warn!(error = %e, "reload refused: invalid configuration; the running one stays");
                Err(e.into())
            }
        }
    }

    /// Apply `config`: new certificates for new handshakes, backends added,
    /// removed (their connections drain) or reweighted, listeners added or
    /// removed. All or nothing: on error the old configuration keeps
    /// running and `mqttlb_config_reloads_total{result="error"}` counts it.
    pub async fn reload(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        let result = self.apply(config).await;
        match &result {
            Ok(s) => {
                self.state.metrics.reload("ok");
                info!(?s, "configuration reloaded");
            }
            Err(e) => {
                self.state.metrics.reload("error");
                warn!(error = %e, "reload refused; the running configuration stays");
            }
        }
        result
    }

    async fn apply(&self, config: Config) -> Result<ReloadSummary, ReloadError> {
        let state = &self.state;
        let _one_at_a_time = state.reload_lock.lock().await;
        let old = state.current.load_full();
        let tls = load_tls(&config)?;

        // Listeners to open: new names, or a name whose address changed.
        // Bind them all before changing anything, so a busy port refuses
        // the whole reload.
        let running: BTreeMap<String, Arc<ListenerSlot>> = lock(&state.listeners).clone();
        let mut fresh = Vec::new();
        for (i, l) in config.listeners.iter().enumerate() {
            if running.get(&l.name).is_none_or(|s| s.addr != l.listen) {
                fresh.push((i, bind_listener(l).map_err(ReloadError::Bind)?));
            }
        }
        // DNS answers carry over for entries that still name the same
        // host and port; new names resolve right after.
        let resolved: Resolved = config
            .pools
            .iter()
            .map(|(name, p)| {
                let answers = p
                    .dns
                    .iter()
                    .map(|d| {
                        old.config
                            .pools
                            .get(name)
                            .and_then(|op| {
                                let j = op
                                    .dns
                                    .iter()
                                    .position(|o| o.host == d.host && o.port == d.port)?;
                                old.resolved.get(name)?.get(j).cloned()
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                (name.clone(), answers)
            })
            .collect();
        let summary = self.install(config, tls, resolved, &old, running, fresh);
        state.dns_wake.notify_one();
        Ok(summary)
    }

    /// New DNS answers: rebuild the pools of the running configuration.
    pub(crate) async fn apply_resolved(&self, resolved: Resolved) -> ReloadSummary {
        let state = &self.state;
        let _one_at_a_time = state.reload_lock.lock().await;
        let old = state.current.load_full();
        let running = lock(&state.listeners).clone();
        self.install(
            old.config.clone(),
            old.tls.clone(),
            resolved,
            &old,
            running,
            Vec::new(),
        )
    }

    /// The DNS names to resolve: (pool, entry index, host).
    pub(crate) fn dns_names(&self) -> (Vec<(String, usize, String)>, Duration, Resolved) {
        let generation = self.state.current.load();
        let mut names = Vec::new();
        let mut interval = Duration::from_secs(3600);
        for (pool, p) in &generation.config.pools {
            for (i, d) in p.dns.iter().enumerate() {
                names.push((pool.clone(), i, d.host.clone()));
                interval = interval.min(p.resolve_interval);
            }
        }
        (names, interval, generation.resolved.clone())
    }

    pub(crate) async fn dns_wait(&self, interval: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = self.state.dns_wake.notified() => {}
        }
    }

    /// Build pools for `config` and `resolved` (taking over backends that
    /// stay), then swap listener contexts, stop removed listeners, start
    /// `fresh` ones and restart health checks.
    fn install(
        &self,
        config: Config,
        tls: Vec<Option<TlsAcceptor>>,
        resolved: Resolved,
        old: &Generation,
        running: BTreeMap<String, Arc<ListenerSlot>>,
        fresh: Vec<(usize, ListenerSockets)>,
    ) -> ReloadSummary {
        let state = &self.state;
        let old_backends: Vec<Arc<Backend>> = old
            .pools
            .values()
            .flat_map(|p| p.backends.iter().cloned())
            .collect();
        let reuse = |name: &str, addr: SocketAddr| {
            old_backends
                .iter()
                .find(|b| b.name == name && b.addr == addr)
                .cloned()
        };
        let pools: BTreeMap<String, Arc<Pool>> = config
            .pools
            .iter()
            .map(|(name, p)| {
                let answers = resolved.get(name).map(Vec::as_slice).unwrap_or(&[]);
                (
                    name.clone(),
                    Arc::new(Pool::reusing(p, &state.metrics, &reuse, answers)),
                )
            })
            .collect();

        let mut summary = ReloadSummary::default();
        let new_backends: Vec<&Arc<Backend>> =
            pools.values().flat_map(|p| p.backends.iter()).collect();
        for b in &old_backends {
            if !new_backends.iter().any(|n| Arc::ptr_eq(n, b)) {
                summary.backends_removed.push(b.name.clone());
                if !new_backends.iter().any(|n| n.name == b.name) {
                    state.metrics.forget_backend(&b.name);
                }
            }
        }
        for b in &new_backends {
            if !old_backends.iter().any(|o| Arc::ptr_eq(o, b)) {
                summary.backends_added.push(b.name.clone());
            }
        }

        let generation = Arc::new(Generation {
            config,
            pools,
            tls,
            resolved,
        });
        state.current.store(generation.clone());
        for (l, tls) in generation
            .config
            .listeners
            .iter()
            .zip(generation.tls.iter().cloned())
        {
            if let Some(slot) = running.get(&l.name).filter(|s| s.addr == l.listen) {
                let local = slot.ctx.load().local_addr;
                if let Some(ctx) = state.listener_ctx(&generation, l, local, tls) {
                    slot.ctx.store(Arc::new(ctx));
                }
            }
        }
        for (name, slot) in &running {
            let keep = generation
                .config
                .listeners
                .iter()
                .any(|l| &l.name == name && l.listen == slot.addr);
            if !keep {
                slot.stop.cancel();
                lock(&state.listeners).remove(name);
                summary.listeners_removed.push(name.clone());
            }
        }
        for (i, listener) in fresh {
            let (Some(l), Some(tls)) = (generation.config.listeners.get(i), generation.tls.get(i))
            else {
                continue; // `fresh` indexes this generation's listeners
            };
            state.start_listener(&generation, l, listener, tls.clone());
            summary.listeners_added.push(l.name.clone());
        }
        state.restart_health_checks(&generation);
        self.resize_limit(generation.config.limits.max_connections);
        summary
    }

    fn resize_limit(&self, wanted: usize) {
        let state = &self.state;
        let wanted = wanted.min(Semaphore::MAX_PERMITS);
        let current = state.limit_size.load(Ordering::Acquire);
        if wanted > current {
            state.limit.add_permits(wanted - current);
            state.limit_size.store(wanted, Ordering::Release);
        } else if wanted < current {
            // Only idle permits can be forgotten; with more connections
            // open than the new limit, the limit shrinks as far as it can
            // now and the effective value is recorded.
            let forgotten = state.limit.forget_permits(current - wanted);
            let effective = current - forgotten;
            state.limit_size.store(effective, Ordering::Release);
            if effective != wanted {
                warn!(
                    wanted,
                    effective,
                    "max_connections lowered below the open connections; reload again once they close"
                );
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, slot: Arc<ListenerSlot>, state: Arc<ProxyState>) {
    let on_accept = |tcp: tokio::net::TcpStream, peer: SocketAddr| {
        let ctx = slot.ctx.load_full();
        let Ok(permit) = state.limit.clone().try_acquire_owned() else {
            ctx.metrics.rejected(Rejection::MaxConnections);
            debug!(listener = %ctx.name, client.addr = %peer, "connection limit reached; refusing");
            return;
        };
        ctx.metrics.total.inc();
        let id = state.conn_ids.fetch_add(1, Ordering::Relaxed);
        let hard_stop = state.hard_stop.clone();
        state.conns.spawn(async move {
            let _permit = permit;
            ctx.metrics.active.inc();
            tokio::select! {
                _ = conn::handle(ctx.clone(), tcp, peer, id) => {}
                _ = hard_stop.cancelled() => {}
            }
            ctx.metrics.active.dec();
        });
    };
    let on_error = |e: &std::io::Error, pause: Duration| {
        state.metrics.accept_errors.inc();
        warn!(listener = %slot.ctx.load().name, error = %e, ?pause, "accept failed");
    };
    crate::sys::accept_loop(&listener, &slot.stop, on_accept, on_error).await;
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
