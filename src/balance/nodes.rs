//! A pool's node set: the long-lived owner of its nodes.
//!
//! A [`NodeSet`] outlives configuration generations: a reload hands the
//! same set to the pool it builds, and discovery (DNS) changes it in place.
//! It has one way in, [`NodeSet::set_backends`]: nodes that stay (same
//! name and address) keep their identity — health state, counters, open
//! connections — and their health-check task; new nodes get a task, and
//! removed nodes' tasks stop. Nothing else is restarted.
//!
//! The set behind an `ArcSwap` is read lock-free by every connection; the
//! selection state (smooth weighted round robin, the rotor) and the pool's
//! admission (queue, token bucket: [`Admission`]) live here too, so a
//! reload does not reset them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::strategy::SmoothWrr;
use tracing::{info, warn};

use super::Backend;
use super::admission::Admission;
use super::discovery::{Discovery, NodeSpec};
use super::health::{self, CheckSettings, SharedSettings};
use super::rebalance::Rebalancer;
use crate::metrics::Metrics;

/// What [`NodeSet::set_backends`] changed, by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
}

/// Where the set's background tasks run once started.
struct Tasks {
    tracker: TaskTracker,
    /// Stops every task of this set (pool removed, proxy stopping).
    stop: CancellationToken,
    /// Stops the current discovery task (replaced on reload).
    discovery: Option<CancellationToken>,
}

pub struct NodeSet {
    pub pool: String,
    nodes: ArcSwap<Vec<Arc<Backend>>>,
    /// Read by every node's check each round (health::SharedSettings).
    checks: SharedSettings,
    pub(super) wrr: Mutex<SmoothWrr>,
    pub(super) rotor: AtomicUsize,
    /// The pool's admission: its waiting clients and tokens outlive
    /// generations like the nodes do.
    pub admission: Arc<Admission>,
    /// Slow-start window of the set's nodes (milliseconds).
    slow_start_ms: AtomicU64,
    /// The pool's rebalance runs (one at a time).
    pub rebalance: Rebalancer,
    metrics: Metrics,
    // std Mutexes: held for a few instructions, never across an await.
    tasks: Mutex<Option<Tasks>>,
    /// One change of the set at a time (a reload and discovery may race).
    update: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a panic elsewhere mid-update of handles; they
    // are still consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl NodeSet {
    /// An empty, not yet started set.
    pub fn new(pool: &str, checks: CheckSettings, metrics: &Metrics) -> NodeSet {
        NodeSet {
            pool: pool.to_string(),
            nodes: ArcSwap::from_pointee(Vec::new()),
            checks: Arc::new(ArcSwap::from_pointee(checks)),
            wrr: Mutex::new(SmoothWrr::default()),
            rotor: AtomicUsize::new(0),
            admission: Arc::new(Admission::new(metrics.admission(pool))),
            slow_start_ms: AtomicU64::new(0),
            rebalance: {
                let m = metrics.admission(pool);
                Rebalancer::new(m.rebalance_moved, m.rebalance_pending)
            },
            metrics: metrics.clone(),
            tasks: Mutex::new(None),
            update: Mutex::new(()),
        }
    }

    /// The current nodes (a snapshot; cheap).
    pub fn current(&self) -> Arc<Vec<Arc<Backend>>> {
        self.nodes.load_full()
    }

    /// What health checks read from now on; rise and fall apply to every
    /// node at once. Checks keep running.
    pub fn configure(&self, checks: CheckSettings) {
        for b in self.nodes.load().iter() {
            b.set_thresholds(&checks.health);
        }
        self.checks.store(Arc::new(checks));
    }

    /// The slow-start window of every node, now and added later.
    pub fn set_slow_start(&self, window: Duration) {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.slow_start_ms.store(ms, Ordering::Relaxed);
        for b in self.nodes.load().iter() {
            b.set_slow_start(window);
        }
    }

    pub fn check_settings(&self) -> Arc<CheckSettings> {
        self.checks.load_full()
    }

    /// Make the set exactly `specs`: nodes with the same name and address
    /// stay (reweighted in place), others are added or removed; health
    /// checks start and stop with them.
    pub fn set_backends(self: &Arc<Self>, specs: &[NodeSpec]) -> NodeChanges {
        let _one_at_a_time = lock(&self.update);
        let old = self.nodes.load_full();
        let checks = self.checks.load();
        let mut changes = NodeChanges::default();
        let next: Vec<Arc<Backend>> = specs
            .iter()
            .map(
                |s| match old.iter().find(|b| b.name == s.name && b.addr == s.addr) {
                    Some(b) => {
                        b.set_weight(s.weight);
                        b.set_max_connections(s.max_connections);
                        b.clone()
                    }
                    None => {
                        changes.added.push(s.name.clone());
                        let b = Backend::new(s, &checks.health, &self.admission, &self.metrics);
                        b.set_slow_start(Duration::from_millis(
                            self.slow_start_ms.load(Ordering::Relaxed),
                        ));
                        // Added to a running set: it ramps up. The first
                        // nodes of a set take their full share at once.
                        if !old.is_empty() {
                            b.begin_slow_start();
                        }
                        Arc::new(b)
                    }
                },
            )
            .collect();
        for b in old.iter() {
            if !next.iter().any(|n| Arc::ptr_eq(n, b)) {
                changes.removed.push(b.name.clone());
                b.retire();
                if !next.iter().any(|n| n.name == b.name) {
                    self.metrics.forget_backend(&b.name);
                }
            }
        }
        let added: Vec<Arc<Backend>> = next
            .iter()
            .filter(|n| !old.iter().any(|o| Arc::ptr_eq(o, n)))
            .cloned()
            .collect();
        let capped = next.iter().any(|b| b.max_connections() > 0);
        self.nodes.store(Arc::new(next));
        // After the store: a head woken by it sees the new nodes.
        self.admission.set_capped(capped);
        if let Some(t) = lock(&self.tasks).as_ref() {
            for b in added {
                health::spawn_check(self.checks.clone(), b, &t.tracker, &t.stop);
            }
        }
        changes
    }

    /// Start health checks of every node (and of nodes added later) on
    /// `tracker`, until `stop` or [`NodeSet::stop`].
    pub fn start(self: &Arc<Self>, tracker: &TaskTracker, stop: &CancellationToken) {
        let stop = stop.child_token();
        *lock(&self.tasks) = Some(Tasks {
            tracker: tracker.clone(),
            stop: stop.clone(),
            discovery: None,
        });
        for b in self.nodes.load().iter() {
            health::spawn_check(self.checks.clone(), b.clone(), tracker, &stop);
        }
    }

    /// Whether [`NodeSet::start`] ran (and [`NodeSet::stop`] did not).
    pub fn started(&self) -> bool {
        lock(&self.tasks).is_some()
    }

    /// Run `discovery` every `interval` and apply what it returns, until
    /// the next call, [`NodeSet::stop`] or the proxy stops. A failed
    /// round keeps the current nodes. No-op before [`NodeSet::start`].
    pub fn discover(
        self: &Arc<Self>,
        discovery: Arc<dyn Discovery>,
        interval: std::time::Duration,
    ) {
        let mut tasks = lock(&self.tasks);
        let Some(t) = tasks.as_mut() else {
            return;
        };
        if let Some(previous) = t.discovery.take() {
            previous.cancel();
        }
        let stop = t.stop.child_token();
        t.discovery = Some(stop.clone());
        t.tracker
            .spawn(self.clone().run_discovery(discovery, interval, stop));
    }

    /// Ask `discovery` now and every `interval`, applying each answer,
    /// until `stop`. Discovery only answers; the set applies.
    async fn run_discovery(
        self: Arc<Self>,
        discovery: Arc<dyn Discovery>,
        interval: std::time::Duration,
        stop: CancellationToken,
    ) {
        loop {
            let answer = tokio::select! {
                _ = stop.cancelled() => return,
                a = discovery.nodes() => a,
            };
            match answer {
                Ok(specs) => {
                    let c = self.set_backends(&specs);
                    if c != NodeChanges::default() {
                        info!(pool = %self.pool, added = ?c.added, removed = ?c.removed, "backends updated by discovery");
                    }
                }
                Err(e) => {
                    warn!(pool = %self.pool, error = %e, "discovery failed; keeping the current nodes")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Stop discovery, if any (the pool has no DNS servers any more).
    pub fn stop_discovery(&self) {
        if let Some(t) = lock(&self.tasks).as_mut() {
            if let Some(d) = t.discovery.take() {
                d.cancel();
            }
        }
    }

    /// Stop every task of the set: its pool is gone.
    pub fn stop(&self) {
        if let Some(t) = lock(&self.tasks).take() {
            t.stop.cancel();
        }
        for b in self.nodes.load().iter() {
            b.retire();
        }
        self.metrics.forget_pool(&self.pool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::HealthConfig;
    use crate::proxy_protocol::ProxyProtocol;
    use std::net::SocketAddr;

    fn settings() -> CheckSettings {
        CheckSettings {
            health: HealthConfig {
                check: super::super::config::HealthCheckKind::Tcp,
                interval: std::time::Duration::from_secs(3600),
                timeout: std::time::Duration::from_secs(1),
                rise: std::num::NonZeroU32::MIN,
                fall: std::num::NonZeroU32::MIN,
                mqtt_version: crate::mqtt::ProtocolVersion::V311,
                proxy_command: crate::proxy_protocol::ProxyCommand::Proxy,
                username: None,
                password: None,
            },
            proxy_protocol: ProxyProtocol::Off,
        }
    }

    fn spec(name: &str, port: u16, weight: u32) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
            max_connections: 0,
        }
    }

    #[tokio::test]
    async fn nodes_that_stay_keep_their_identity_and_their_check() {
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        let set = Arc::new(NodeSet::new("p", settings(), &metrics));
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        set.start(&tracker, &stop);
        let c = set.set_backends(&[spec("a", 1, 1), spec("b", 2, 1)]);
        assert_eq!(c.added, ["a", "b"]);
        assert_eq!(tracker.len(), 2, "one check per node");
        let a = set.current()[0].clone();
        a.observe_check(false);

        let c = set.set_backends(&[spec("a", 1, 5), spec("b", 3, 1), spec("c", 4, 1)]);
        assert_eq!(c.added, ["b", "c"], "b moved: a new node");
        assert_eq!(c.removed, ["b"]);
        let now = set.current();
        assert!(Arc::ptr_eq(&now[0], &a), "a is the same node");
        assert_eq!(a.weight(), 5, "reweighted in place");
        assert!(!a.is_up(), "its health state stayed");
        // The old b's check stops; a's keeps running; b and c got theirs.
        tokio::task::yield_now().await;
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while tracker.len() != 3 && tokio::time::Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert_eq!(tracker.len(), 3);

        assert_eq!(set.set_backends(&now_specs(&now)), NodeChanges::default());
        set.stop();
        tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait())
            .await
            .expect("every check stops with the set");
    }

    fn now_specs(nodes: &[Arc<Backend>]) -> Vec<NodeSpec> {
        nodes
            .iter()
            .map(|b| NodeSpec {
                name: b.name.clone(),
                addr: b.addr,
                weight: b.weight(),
                max_connections: 0,
            })
            .collect()
    }
}
