//! `mqttlb broker`: a minimal MQTT 3.1/3.1.1/5.0 broker and its peer mesh.
//!
//! * [`router`] — subscriptions, shared groups and retained messages (pure).
//! * [`session`] — per-client-id state: queue, in-flight QoS 1/2, expiry;
//!   attaching to and removing from the session table.
//! * [`metrics`] — `mqttlb_broker_*` and the reasons they count by.
//!
//! Topic names and filters are validated and matched by `mqtt::topic`.
//! * [`conn`] — one client connection: CONNECT, packets, keep-alive, will.
//! * [`peer`] — mesh links to other nodes.
//!
//! Shared state is two short locks (the session table and the router) and
//! one lock per session; no lock is held across an `.await`.

pub mod conn;
pub mod metrics;
pub mod peer;
pub mod router;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::broker::BrokerConfig;
use crate::mqtt::codec::{Properties, PublishPacket};
pub use metrics::BrokerMetrics;
use metrics::{DropReason, Refusal};
use router::Router;
use session::{Delivery, Enqueued, Session};

/// A published message as the broker keeps it: shared by every delivery.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 publish properties, forwarded unchanged (topic alias and
    /// subscription identifiers removed: they are per connection).
    pub props: Properties,
    /// When message expiry runs out.
    pub expires_at: Option<Instant>,
    /// Publishing client id (for "no local").
    pub origin: Option<String>,
    /// Received over a mesh link: not forwarded to other peers.
    pub from_peer: bool,
}

impl Message {
    pub fn new(topic: String, payload: Bytes, qos: u8, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            props: Properties::default(),
            expires_at: None,
            origin: None,
            from_peer: false,
        }
    }

    /// Attach MQTT 5 publish properties; a message expiry interval starts
    /// counting now.
    pub fn with_props(mut self, props: Properties) -> Message {
        self.expires_at = props
            .message_expiry
            .map(|s| Instant::now() + std::time::Duration::from_secs(u64::from(s)));
        self.props = props;
        self
    }

    /// A received PUBLISH (topic alias already resolved) as the broker
    /// keeps it: per-connection properties removed.
    pub fn from_publish(mut p: PublishPacket, origin: Option<String>, from_peer: bool) -> Message {
        p.props.topic_alias = None;
        p.props.subscription_ids.clear();
        Message {
            origin,
            from_peer,
            ..Message::new(p.topic, p.payload, p.qos, p.retain).with_props(p.props)
        }
    }

    pub fn expired(&self) -> bool {
        self.expires_at.is_some_and(|t| Instant::now() >= t)
    }

    /// Properties to send now: message expiry decremented to what is left.
    pub fn props_now(&self) -> Properties {
        let mut p = self.props.clone();
        if let Some(t) = self.expires_at {
            let left = t.saturating_duration_since(Instant::now()).as_secs();
            p.message_expiry = Some(u32::try_from(left).unwrap_or(u32::MAX).max(1));
        }
        p
    }
}

/// The broker's shared state.
pub struct Broker {
    pub config: BrokerConfig,
    sessions: std::sync::Mutex<HashMap<String, Arc<Session>>>,
    router: std::sync::Mutex<Router>,
    pub metrics: BrokerMetrics,
    next_auto_id: AtomicU64,
    /// Will-delay and session-expiry timers: tracked, and cancelled when
    /// the broker stops (none outlives it).
    timers: TaskTracker,
    timers_stop: CancellationToken,
}

impl Broker {
    pub fn new(config: BrokerConfig, registry: &mut Registry) -> Arc<Broker> {
        Arc::new(Broker {
            config,
            sessions: Default::default(),
            router: Default::default(),
            metrics: BrokerMetrics::new(registry),
            next_auto_id: AtomicU64::new(0),
            timers: TaskTracker::new(),
            timers_stop: CancellationToken::new(),
        })
    }

    /// Run `f` after `delay` (capped at [`MAX_TIMER`]) unless the broker
    /// stops first.
    pub(crate) fn after(&self, delay: std::time::Duration, f: impl FnOnce() + Send + 'static) {
        let stop = self.timers_stop.clone();
        let delay = delay.min(MAX_TIMER);
        self.timers.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(delay) => f(),
            }
        });
    }

    /// Timers pending now (will delays, session expiries).
    pub fn pending_timers(&self) -> usize {
        self.timers.len()
    }

    // A poisoned lock means a panic while holding it, which the code rules
    // out; recover the data rather than take the broker down.
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn router(&self) -> std::sync::MutexGuard<'_, Router> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Route `msg` to every matching session, store it if retained.
    pub fn publish(&self, msg: Message) {
        let msg = Arc::new(msg);
        let targets = {
            let mut r = self.router();
            if msg.retain {
                r.retain(&msg);
                self.metrics.retained.set(r.retained_count() as i64);
            }
            r.route(&msg)
        };
        if targets.is_empty() {
            return;
        }
        let sessions: Vec<(Arc<Session>, router::Target)> = {
            let s = self.sessions();
            targets
                .into_iter()
                .filter_map(|t| s.get(&*t.client_id).cloned().map(|s| (s, t)))
                .collect()
        };
        let cap = self.config.max_queued_messages;
        for (session, t) in sessions {
            if msg.from_peer && session.peer_link {
                continue;
            }
            let d = Delivery {
                msg: msg.clone(),
                qos: t.qos,
                retain: t.retain,
                sub_ids: t.sub_ids,
            };
            match session.enqueue(d, cap) {
                Enqueued::Queued => {}
                Enqueued::QueuedEvicting => self.metrics.dropped(DropReason::QueueFull),
                Enqueued::Dropped(reason) => {
                    if reason == DropReason::SlowConsumer {
                        info!(client_id = %session.client_id, "slow consumer: queue full of QoS 1/2 messages; disconnecting");
                    }
                    self.metrics.dropped(reason)
                }
            }
        }
    }

    /// Whether a connection with this client id is attached to a session.
    pub fn is_online(&self, client_id: &str) -> bool {
        let session = self.sessions().get(client_id).cloned();
        session.is_some_and(|s| s.lock().attached.is_some())
    }

    /// The user name a client id connected with (for a CN taken from the
    /// PROXY header, the certificate's CN).
    pub fn username_of(&self, client_id: &str) -> Option<String> {
        let session = self.sessions().get(client_id).cloned();
        session.and_then(|s| s.lock().username.clone())
    }

    /// Whether a session (online or offline) exists for this client id.
    pub fn has_session(&self, client_id: &str) -> bool {
        self.sessions().contains_key(client_id)
    }

    /// A fresh server-assigned client id (MQTT 5, empty id in CONNECT).
    pub fn assign_client_id(&self) -> String {
        let n = self
            .next_auto_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("auto-{}-{n}", std::process::id())
    }

    fn update_gauges(&self, sessions: usize) {
        self.metrics.sessions.set(sessions as i64);
        self.metrics
            .subscriptions
            .set(self.router().subscription_count() as i64);
    }
}

/// Serve MQTT clients on `listener` and run mesh links until `shutdown`;
/// then disconnect clients (MQTT 5: DISCONNECT 0x8B) and wait for their
/// tasks, at most `drain_timeout`.
pub async fn serve(broker: Arc<Broker>, listener: TcpListener, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let limit = Arc::new(Semaphore::new(
        broker.config.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    for peer in broker.config.peers.clone() {
        tasks.spawn(peer::run(broker.clone(), peer, shutdown.clone()));
    }
    let local = listener.local_addr().ok();
    info!(node = %broker.config.node_name, addr = ?local, peers = broker.config.peers.len(), "broker listening");
    let on_accept = |tcp: tokio::net::TcpStream, addr: std::net::SocketAddr| {
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            broker.metrics.rejected(Refusal::MaxConnections);
            debug!(client.addr = %addr, "connection limit reached; refusing");
            return;
        };
        broker.metrics.connections_total.inc();
        let b = broker.clone();
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            b.metrics.connections_active.inc();
            conn::handle(b.clone(), tcp, addr, stop).await;
            b.metrics.connections_active.dec();
        });
    };
    let on_error = |e: &std::io::Error, pause: std::time::Duration| {
        warn!(error = %e, ?pause, "accept failed");
    };
    crate::sys::accept_loop(&listener, &shutdown, on_accept, on_error).await;
    drop(listener);
    tasks.close();
    if tokio::time::timeout(broker.config.drain_timeout, tasks.wait())
        .await
        .is_err()
    {
        warn!(
            open = tasks.len(),
            "drain timeout reached; closing the rest"
        );
    }
    broker.timers_stop.cancel();
    broker.timers.close();
    broker.timers.wait().await;
    info!("broker stopped");
}

/// Longest timer the broker keeps: a will delay or session expiry beyond
/// it (MQTT allows up to 136 years) fires after one year instead; sessions
/// live in memory and a restart ends them anyway.
pub const MAX_TIMER: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
