//! The proxy: listeners, their accept loops, and the shutdown sequence.
//!
//! [`Proxy::build`] turns a [`Config`] into runtime state (TLS acceptors
//! loaded, pools created); [`Proxy::bind`] binds the listeners (tests bind
//! port 0 and read the addresses); [`Proxy::run`] serves until the shutdown
//! token fires, then drains.

pub mod conn;
pub mod header;
pub mod splice;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::balance::{Pool, health};
use crate::config::{Config, ConfigErrors, Limits, MqttListenerConfig};
use crate::metrics::{ListenerMetrics, Metrics};
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
    config: Config,
    pools: BTreeMap<String, Arc<Pool>>,
    tls: Vec<Option<TlsAcceptor>>,
    metrics: Metrics,
}

impl Proxy {
    /// Load TLS material and create pools; metrics are registered on
    /// `registry`. Errors name the config key of the failing file.
    pub fn build(config: Config, registry: &mut Registry) -> Result<Proxy, ConfigErrors> {
        let mut errors = Vec::new();
        let tls: Vec<Option<TlsAcceptor>> = config
            .listeners
            .iter()
            .map(|l| {
                l.tls.as_ref().and_then(|t| {
                    TlsAcceptor::from_config(&format!("{}.tls", l.key), t)
                        .map_err(|e| errors.push(e.into_config_error(&config.source)))
                        .ok()
                })
            })
            .collect();
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let metrics = Metrics::new(registry);
        let pools = config
            .pools
            .iter()
            .map(|(name, p)| (name.clone(), Arc::new(Pool::new(p, &metrics))))
            .collect();
        Ok(Proxy {
            config,
            pools,
            tls,
            metrics,
        })
    }

    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.pools.get(name)
    }

    /// Bind every listener with its backlog. Returned in config order.
    pub fn bind(&self) -> std::io::Result<Vec<TcpListener>> {
        self.config
            .listeners
            .iter()
            .map(|l| {
                crate::sys::bind_tcp(l.listen, l.backlog).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("listener {:?} on {}: {e}", l.name, l.listen),
                    )
                })
            })
            .collect()
    }

    /// Serve on `listeners` (from [`Proxy::bind`]) until `shutdown` is
    /// cancelled; then stop accepting and wait for connections to finish,
    /// at most `drain_timeout`, after which the rest are closed.
    pub async fn run(self, listeners: Vec<TcpListener>, shutdown: CancellationToken) {
        let conns = TaskTracker::new();
        let background = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let limit = Arc::new(Semaphore::new(
            self.config
                .limits
                .max_connections
                .min(Semaphore::MAX_PERMITS),
        ));
        for pool in self.pools.values() {
            health::spawn_checks(pool, &background, &shutdown);
        }
        let nonce = instance_nonce();
        let conn_ids = Arc::new(AtomicU64::new(0));
        for ((cfg, listener), tls) in self.config.listeners.iter().zip(listeners).zip(self.tls) {
            let Some(pool) = self.pools.get(&cfg.pool) else {
                // Config conversion guarantees every listener's pool exists.
                warn!(listener = %cfg.name, pool = %cfg.pool, "listener names an unknown pool; not serving it");
                continue;
            };
            let local_addr = listener.local_addr().unwrap_or(cfg.listen);
            info!(listener = %cfg.name, addr = %local_addr, tls = tls.is_some(), mqtt = cfg.mqtt.is_some(), pool = %cfg.pool, "listening");
            let ctx = Arc::new(ListenerCtx {
                name: cfg.name.clone(),
                local_addr,
                tls,
                mqtt: cfg.mqtt.clone(),
                pool: pool.clone(),
                limits: self.config.limits.clone(),
                metrics: self.metrics.listener(&cfg.name),
                instance_nonce: nonce,
            });
            background.spawn(accept_loop(
                listener,
                ctx,
                limit.clone(),
                conns.clone(),
                conn_ids.clone(),
                shutdown.clone(),
                hard_stop.clone(),
                self.metrics.accept_errors.clone(),
            ));
        }
        shutdown.cancelled().await;
        background.close();
        background.wait().await;
        conns.close();
        let open = conns.len();
        if open > 0 {
            info!(open, timeout = ?self.config.limits.drain_timeout, "draining connections");
        }
        if tokio::time::timeout(self.config.limits.drain_timeout, conns.wait())
            .await
            .is_err()
        {
            warn!(
                open = conns.len(),
                "drain timeout reached; closing the remaining connections"
            );
            hard_stop.cancel();
            conns.wait().await;
        }
        info!("stopped");
    }
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    ctx: Arc<ListenerCtx>,
    limit: Arc<Semaphore>,
    conns: TaskTracker,
    conn_ids: Arc<AtomicU64>,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    accept_errors: prometheus_client::metrics::counter::Counter,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (tcp, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: the pending connection stays in the
                // backlog; pause so the loop does not spin, then retry.
                accept_errors.inc();
                warn!(listener = %ctx.name, error = %e, pause = ?backoff, "accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            ctx.metrics.rejected("max_connections");
            debug!(listener = %ctx.name, client.addr = %peer, "connection limit reached; refusing");
            drop(tcp);
            continue;
        };
        ctx.metrics.total.inc();
        let id = conn_ids.fetch_add(1, Ordering::Relaxed);
        let ctx = ctx.clone();
        let hard_stop = hard_stop.clone();
        conns.spawn(async move {
            let _permit = permit;
            ctx.metrics.active.inc();
            tokio::select! {
                _ = conn::handle(ctx.clone(), tcp, peer, id) => {}
                _ = hard_stop.cancelled() => {}
            }
            ctx.metrics.active.dec();
        });
    }
}

/// A per-process value that makes PROXY unique ids differ across restarts
/// and instances (not a secret).
fn instance_nonce() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    xxhash_rust::xxh3::xxh3_64_with_seed(&t.to_le_bytes(), u64::from(std::process::id()))
}
