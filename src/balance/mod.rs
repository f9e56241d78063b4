//! Backend sets: nodes with their health and load, the selection strategies
//! over them ([`strategy`], pure), and active health checks ([`health`]).
//!
//! How state lives: a [`Pool`] is one generation's settings (strategy,
//! timeouts, PROXY header), rebuilt by every reload; its [`NodeSet`]
//! ([`nodes`]) is long-lived, handed from generation to generation, and
//! owns the nodes, their health-check tasks and the selection state;
//! [`discovery`] changes it in place. [`route`] says which pool a client
//! goes to (`[[listener.route]]`: rules and matching, pure). [`admission`]
//! paces what reaches the nodes (`max_connect_rate`, `queue`, per-node
//! `max_connections`); the node set owns it too.

pub mod admission;
pub mod config;
pub mod discovery;
pub mod health;
pub mod nodes;
pub mod rebalance;
pub mod route;
pub mod state;
pub mod strategy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::metrics::{BackendMetrics, Metrics};
use crate::proxy_protocol::{IdentityTlvs, ProxyProtocol};
pub use admission::{Admission, QueueFull, Ticket, Turn};
pub use config::{AdmissionConfig, HashKey, HealthConfig, PoolConfig, Strategy};
pub use discovery::{NodeSpec, dns_node_name};
pub use health::CheckSettings;
pub use nodes::{NodeChanges, NodeSet};
use state::HealthState;
use strategy::NodeView;

/// One broker node.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// Reweighted in place by a reload.
    weight: AtomicU32,
    seed: u64,
    /// Mirrors `health.up` for lock-free reads on the data path.
    up: AtomicBool,
    /// Taken out of rotation by an operator; existing connections continue.
    draining: AtomicBool,
    active: AtomicU64,
    /// `max_connections`: at it, placement skips the node (0: no cap).
    /// Changed in place by a reload.
    max_connections: AtomicU64,
    /// Its pool's admission, told when a slot frees or the node enters
    /// rotation.
    admission: Arc<Admission>,
    // A std Mutex: held for a few instructions, never across an await.
    health: Mutex<HealthState>,
    rise: AtomicU32,
    fall: AtomicU32,
    /// Outcome of the last active check, for the admin API.
    last_check: Mutex<Option<LastCheck>>,
    /// Client connections that can be asked to move (drain: MQTT 5 only;
    /// rebalance: all), by id.
    kickable: Mutex<HashMap<u64, Movable>>,
    /// When the node last entered rotation, until a rebalance has taken
    /// it (`rebalance.after` later).
    returned: Mutex<Option<Instant>>,
    /// Cancelled when the node leaves its set: its health check stops.
    retired: CancellationToken,
    /// Slow start: its window (milliseconds, 0: none) and when the node
    /// last entered rotation (`None`: not ramping).
    slow_start_ms: AtomicU64,
    entered: Mutex<Option<Instant>>,
    pub metrics: BackendMetrics,
}

/// The last active health check of a backend.
#[derive(Debug, Clone, PartialEq)]
pub struct LastCheck {
    pub ok: bool,
    pub seconds: f64,
    /// Why it failed.
    pub error: Option<String>,
}

impl Backend {
    pub fn new(
        spec: &NodeSpec,
        health: &HealthConfig,
        admission: &Arc<Admission>,
        metrics: &Metrics,
    ) -> Backend {
        let name = spec.name.as_str();
        let m = metrics.backend(name);
        m.up.set(1);
        Backend {
            name: name.to_string(),
            addr: spec.addr,
            weight: AtomicU32::new(spec.weight),
            seed: strategy::name_seed(name),
            up: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            active: AtomicU64::new(0),
            max_connections: AtomicU64::new(u64::from(spec.max_connections)),
            admission: admission.clone(),
            health: Mutex::new(HealthState::new()),
            rise: AtomicU32::new(health.rise.get()),
            fall: AtomicU32::new(health.fall.get()),
            last_check: Mutex::new(None),
            kickable: Mutex::new(HashMap::new()),
            returned: Mutex::new(None),
            retired: CancellationToken::new(),
            slow_start_ms: AtomicU64::new(0),
            entered: Mutex::new(None),
            metrics: m,
        }
    }

    /// The slow-start window from now on (a ramp under way keeps its start).
    pub fn set_slow_start(&self, window: Duration) {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.slow_start_ms.store(ms, Ordering::Relaxed);
    }

    /// The node enters rotation now (back up, added to a running set,
    /// enabled again): its share ramps up over the slow-start window.
    /// (The instant is kept whatever the window, so a window configured
    /// by the same reload that added the node still applies.)
    pub fn begin_slow_start(&self) {
        let now = Instant::now();
        *self.entered.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
        *self.returned.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
    }

    /// The node entered rotation at least `after` ago and no rebalance
    /// has taken that return yet: it is taken now (`true` once per return).
    pub fn take_return(&self, after: Duration) -> bool {
        let mut returned = self.returned.lock().unwrap_or_else(|p| p.into_inner());
        match *returned {
            Some(at) if at.elapsed() >= after => {
                *returned = None;
                true
            }
            _ => false,
        }
    }

    /// [`Backend::ramp`] as a fraction (for the metric and the admin API).
    pub fn slow_start_ratio(&self) -> f64 {
        f64::from(self.ramp()) / f64::from(strategy::FULL)
    }

    /// Its share of new clients so far, per mille ([`strategy::FULL`] when
    /// not ramping): grows linearly over the slow-start window.
    pub fn ramp(&self) -> u32 {
        let window = self.slow_start_ms.load(Ordering::Relaxed);
        let mut entered = self.entered.lock().unwrap_or_else(|p| p.into_inner());
        let Some(since) = *entered else {
            return strategy::FULL;
        };
        let elapsed = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
        if window == 0 || elapsed >= window {
            *entered = None;
            return strategy::FULL;
        }
        let per_mille = elapsed.saturating_mul(u64::from(strategy::FULL)) / window;
        u32::try_from(per_mille).unwrap_or(strategy::FULL).max(1)
    }

    /// Reweight a node that stays; its health state, counters and open
    /// connections are kept.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
    }

    /// A new cap for a node that stays (0: none); a raised one lets
    /// waiting clients in.
    pub fn set_max_connections(&self, cap: u32) {
        let old = self.max_connections.swap(u64::from(cap), Ordering::Relaxed);
        if old != u64::from(cap) {
            self.admission.wake();
        }
    }

    /// `max_connections` (0: no cap).
    pub fn max_connections(&self) -> u64 {
        self.max_connections.load(Ordering::Relaxed)
    }

    /// Holding as many client connections as its cap allows.
    pub fn at_cap(&self) -> bool {
        let cap = self.max_connections();
        cap > 0 && self.active() >= cap
    }

    /// New rise/fall thresholds, applied from the next observation.
    pub fn set_thresholds(&self, health: &HealthConfig) {
        self.rise.store(health.rise.get(), Ordering::Relaxed);
        self.fall.store(health.fall.get(), Ordering::Relaxed);
    }

    /// The node left its set: its health check stops (open connections
    /// run on).
    pub fn retire(&self) {
        self.retired.cancel();
    }

    /// Cancelled when the node has left its set.
    pub fn retired(&self) -> &CancellationToken {
        &self.retired
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn last_check(&self) -> Option<LastCheck> {
        self.last_check
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Register a client connection that can be asked to move (`v5`: an
    /// MQTT 5 client, which drains move too; `key`: its hash key, kept
    /// for rebalancing hash pools); registered while the guard lives.
    pub fn kickable(self: &Arc<Self>, conn_id: u64, v5: bool, key: Option<Box<[u8]>>) -> KickGuard {
        let token = Arc::new(KickSignal::default());
        self.kickable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                conn_id,
                Movable {
                    token: token.clone(),
                    v5,
                    key,
                },
            );
        KickGuard {
            backend: self.clone(),
            conn_id,
            token,
        }
    }

    /// Signals of the MQTT 5 connections (those a drain asks to move),
    /// oldest first.
    pub fn kick_tokens(&self) -> Vec<Arc<KickSignal>> {
        let map = self.kickable.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<(&u64, &Movable)> = map.iter().filter(|(_, m)| m.v5).collect();
        ids.sort_by_key(|(id, _)| **id);
        ids.into_iter().map(|(_, m)| m.token.clone()).collect()
    }

    /// Visit every movable connection: id, hash key, token (under the
    /// registry's lock: `f` must be quick).
    fn each_movable(&self, mut f: impl FnMut(u64, Option<&[u8]>, &Arc<KickSignal>)) {
        let map = self.kickable.lock().unwrap_or_else(|p| p.into_inner());
        for (id, m) in map.iter() {
            f(*id, m.key.as_deref(), &m.token);
        }
    }

    /// Movable connections now.
    fn movable_count(&self) -> u64 {
        let map = self.kickable.lock().unwrap_or_else(|p| p.into_inner());
        map.len() as u64
    }

    /// Whether connection `id` is still registered here.
    fn holds(&self, id: u64) -> bool {
        let map = self.kickable.lock().unwrap_or_else(|p| p.into_inner());
        map.contains_key(&id)
    }

    pub fn record_check(&self, check: LastCheck) {
        *self.last_check.lock().unwrap_or_else(|p| p.into_inner()) = Some(check);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// In rotation: healthy and not draining.
    pub fn in_rotation(&self) -> bool {
        self.is_up() && !self.draining.load(Ordering::Acquire)
    }

    pub fn set_draining(&self, draining: bool) {
        let was = self.draining.swap(draining, Ordering::AcqRel);
        if was && !draining {
            self.begin_slow_start();
        }
        if !draining {
            self.admission.wake();
        }
    }

    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    fn with_health<T>(&self, f: impl FnOnce(&mut HealthState) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of
        // two integers and a bool; the state is still usable.
        let mut guard = self.health.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// Record an active check result. Returns the new state on a
    /// transition, which is also logged and exported.
    pub fn observe_check(&self, ok: bool) -> Option<bool> {
        let (rise, fall) = (
            self.rise.load(Ordering::Relaxed),
            self.fall.load(Ordering::Relaxed),
        );
        self.transition(|h| h.observe_check(ok, rise, fall))
    }

    /// Record whether a client's CONNECT was answered (on pass-through
    /// listeners: whether the TCP connect succeeded). See [`state`] for
    /// how this weighs against active checks.
    pub fn observe_passive(&self, ok: bool) -> Option<bool> {
        let fall = self.fall.load(Ordering::Relaxed);
        self.transition(|h| h.observe_passive(ok, fall))
    }

    fn transition(&self, f: impl FnOnce(&mut HealthState) -> Option<bool>) -> Option<bool> {
        let t = self.with_health(|h| {
            let t = f(h);
            // Publish under the lock so transitions are seen in order.
            self.up.store(h.up, Ordering::Release);
            t
        });
        match t {
            Some(true) => {
                self.begin_slow_start();
                self.metrics.up.set(1);
                self.admission.wake();
                tracing::warn!(backend = %self.name, addr = %self.addr, "backend is up");
            }
            Some(false) => {
                self.metrics.up.set(0);
                // Clients waiting for a slot learn when none is left.
                self.admission.wake();
                tracing::warn!(backend = %self.name, addr = %self.addr, "backend is down");
            }
            None => {}
        }
        t
    }

    /// Count a proxied connection for as long as the guard lives.
    pub fn connection(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.metrics.active.inc();
        ActiveGuard(self.clone())
    }

    /// A connection slot under the node's cap, taken before the TCP
    /// connect so concurrent placements cannot overshoot it; `None` at the
    /// cap. Without a cap, [`Backend::connection`].
    pub fn reserve(self: &Arc<Self>) -> Option<ActiveGuard> {
        let cap = self.max_connections();
        if cap == 0 {
            return Some(self.connection());
        }
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .ok()?;
        self.metrics.active.inc();
        Some(ActiveGuard(self.clone()))
    }

    /// Where in `[0, 1)` the node's name puts it (spreads check timers).
    fn seed_fraction(&self) -> f32 {
        // 16 bits of the seed: the cast is exact.
        f32::from(u16::try_from(self.seed >> 48).unwrap_or(0)) / 65536.0
    }

    fn view(&self) -> NodeView {
        NodeView {
            seed: self.seed,
            weight: self.weight(),
            active: self.active(),
            ramp: self.ramp(),
        }
    }
}

/// A connection that can be asked to move.
struct Movable {
    token: Arc<KickSignal>,
    v5: bool,
    key: Option<Box<[u8]>>,
}

/// A connection's registration for drain and rebalance kicks; removed on
/// drop.
pub struct KickGuard {
    backend: Arc<Backend>,
    conn_id: u64,
    token: Arc<KickSignal>,
}

impl KickGuard {
    pub fn token(&self) -> Arc<KickSignal> {
        self.token.clone()
    }

    pub fn signal(&self) -> &Arc<KickSignal> {
        &self.token
    }
}

/// A connection's "please move" switch (drain, rebalance): set once, it
/// wakes the connection's task, whose splice then stops at the next packet
/// boundary. One small allocation per connection, no future: lighter than
/// a `CancellationToken` and its boxed wait (measured: 266 bytes less per
/// idle connection).
#[derive(Debug, Default)]
pub struct KickSignal {
    kicked: AtomicBool,
    /// MQTT 5 DISCONNECT reason the client is sent (0: 0x9C "use another
    /// server").
    reason: std::sync::atomic::AtomicU8,
    waker: futures_util::task::AtomicWaker,
    /// Bytes relayed so far (from, to the client): kept by the splice for
    /// `/api/v1/clients`.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
}

impl KickSignal {
    /// Ask the connection to move.
    pub fn kick(&self) {
        self.kicked.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Close the connection for an operator: MQTT 5 clients get DISCONNECT
    /// 0x98 "administrative action".
    pub fn kick_by_admin(&self) {
        self.reason
            .store(crate::mqtt::rc::ADMINISTRATIVE_ACTION, Ordering::Relaxed);
        self.kick();
    }

    /// The MQTT 5 DISCONNECT to send when kicked.
    pub fn packet(&self) -> &'static [u8] {
        if self.reason.load(Ordering::Relaxed) == crate::mqtt::rc::ADMINISTRATIVE_ACTION {
            crate::mqtt::packets::DISCONNECT_ADMINISTRATIVE_ACTION
        } else {
            crate::mqtt::packets::DISCONNECT_USE_ANOTHER_SERVER
        }
    }

    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    /// Whether it was kicked; if not, `cx`'s task is woken when it is.
    pub fn poll_kicked(&self, cx: &mut std::task::Context<'_>) -> bool {
        if self.is_kicked() {
            return true;
        }
        self.waker.register(cx.waker());
        self.is_kicked()
    }
}

impl Drop for KickGuard {
    fn drop(&mut self) {
        self.backend
            .kickable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.conn_id);
    }
}

/// Decrements a backend's active count on drop.
pub struct ActiveGuard(Arc<Backend>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.active.dec();
        if self.0.max_connections() > 0 {
            self.0.admission.slot_freed();
        }
    }
}

/// One generation's view of a pool: its settings as configured, and its
/// long-lived [`NodeSet`].
pub struct Pool {
    pub name: String,
    pub strategy: Strategy,
    pub hash_key: HashKey,
    pub proxy_protocol: ProxyProtocol,
    pub identity: IdentityTlvs,
    pub connect_timeout: std::time::Duration,
    pub connect_attempts: usize,
    pub connack_timeout: std::time::Duration,
    pub health: HealthConfig,
    /// As configured; the node set's [`Admission`] applies it.
    pub admission: AdmissionConfig,
    pub nodes: Arc<NodeSet>,
}

/// What [`Pool::try_admit`] found, holding the turn.
pub enum Admit {
    /// Let through: the nodes to offer the client to, best first.
    Ready(Candidates),
    /// No token until then.
    Token(tokio::time::Instant),
    /// Every node in rotation is at its cap.
    Slot,
    /// No node is in rotation.
    NoBackend,
}

/// The nodes to offer a client to, best first, and a connection slot on
/// the first one when admission reserved it (its cap holds).
pub struct Candidates {
    pub nodes: Vec<Arc<Backend>>,
    pub first: Option<ActiveGuard>,
}

impl Pool {
    /// A pool of `cfg`'s static servers in a fresh node set (not started).
    pub fn new(cfg: &PoolConfig, metrics: &Metrics) -> Pool {
        let nodes = Arc::new(NodeSet::new(&cfg.name, check_settings(cfg), metrics));
        nodes.set_slow_start(cfg.slow_start);
        nodes.set_backends(&discovery::static_nodes(cfg));
        Pool::with_nodes(cfg, nodes)
    }

    /// `cfg`'s settings over an existing node set (a reload); the set's
    /// check settings follow `cfg`, its nodes are the caller's business.
    pub fn with_nodes(cfg: &PoolConfig, nodes: Arc<NodeSet>) -> Pool {
        nodes.configure(check_settings(cfg));
        nodes.admission.configure(&cfg.admission);
        nodes.set_slow_start(cfg.slow_start);
        Pool {
            name: cfg.name.clone(),
            strategy: cfg.strategy,
            hash_key: cfg.hash_key,
            proxy_protocol: cfg.proxy_protocol,
            identity: cfg.identity,
            connect_timeout: cfg.connect_timeout,
            connect_attempts: usize::try_from(cfg.connect_attempts.get()).unwrap_or(usize::MAX),
            connack_timeout: cfg.connack_timeout,
            health: cfg.health.clone(),
            admission: cfg.admission,
            nodes,
        }
    }

    /// The current nodes.
    pub fn backends(&self) -> Arc<Vec<Arc<Backend>>> {
        self.nodes.current()
    }

    /// The pool's long-lived admission state.
    pub fn admission(&self) -> &Admission {
        &self.nodes.admission
    }

    /// Backends to try for a new connection, best first, at most
    /// `connect_attempts` of them; empty when none is in rotation. Nodes
    /// at their `max_connections` are skipped.
    pub fn candidates(&self, key: Option<&[u8]>) -> Vec<Arc<Backend>> {
        let backends = self.nodes.current();
        let views: Vec<NodeView> = backends.iter().map(|b| b.view()).collect();
        let eligible: Vec<usize> = (0..)
            .zip(backends.iter())
            .filter(|(_, b)| b.in_rotation() && !b.at_cap())
            .map(|(i, _)| i)
            .collect();
        let rotor = self.nodes.rotor.fetch_add(1, Ordering::Relaxed);
        let order = {
            let mut wrr = self.nodes.wrr.lock().unwrap_or_else(|p| p.into_inner());
            strategy::order(self.strategy, &views, &eligible, key, &mut wrr, rotor)
        };
        order
            .into_iter()
            .filter_map(|i| backends.get(i).cloned())
            .take(self.connect_attempts)
            .collect()
    }

    /// One look at admission, holding the turn: a token (if the pool has
    /// a rate), then a node under its cap whose slot is reserved; both are
    /// taken together, or neither.
    pub fn try_admit(&self, turn: &Turn<'_>, key: Option<&[u8]>) -> Admit {
        if !self.any_up() {
            return Admit::NoBackend;
        }
        let now = tokio::time::Instant::now();
        if let Err(at) = turn.token(now) {
            return Admit::Token(at);
        }
        let mut nodes = self.candidates(key);
        // A failover elsewhere may have taken the last slot since.
        while !nodes.is_empty() {
            if let Some(first) = nodes.first().and_then(Backend::reserve) {
                turn.take_token(now);
                return Admit::Ready(Candidates {
                    nodes,
                    first: Some(first),
                });
            }
            nodes.remove(0);
        }
        Admit::Slot
    }

    pub fn find(&self, name: &str) -> Option<Arc<Backend>> {
        self.nodes
            .current()
            .iter()
            .find(|b| b.name == name)
            .cloned()
    }

    pub fn any_up(&self) -> bool {
        self.nodes.current().iter().any(|b| b.in_rotation())
    }
}

/// What a pool's health checks read.
fn check_settings(cfg: &PoolConfig) -> CheckSettings {
    CheckSettings {
        health: cfg.health.clone(),
        proxy_protocol: cfg.proxy_protocol,
    }
}
