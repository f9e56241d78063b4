//! Sessions: what the broker keeps per client id across connections.
//!
//! A session owns one bounded queue of deliveries. The same queue serves an
//! online client (its backlog while the socket is slower than the
//! publishers) and an offline persistent session (its offline queue), so
//! the slow-consumer policy is one piece of code: when the queue is full a
//! QoS 0 message is dropped first (the new one, or the oldest queued QoS 0
//! to make room for a QoS 1/2), and a QoS 1/2 message that still finds no
//! room is dropped and the online client disconnected.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::ratelog::LogLimiter;

use super::metrics::DropReason;
use super::{Broker, Message};
use crate::mqtt::ProtocolVersion;
use crate::mqtt::codec::SubOptions;

/// Client ids of mesh links start with this; their sessions receive only
/// messages published by this node's own clients (no loops, no duplicates).
pub const PEER_PREFIX: &str = "$mqttlb-peer/";

/// Session expiry that means "never" (3.1.1 persistent sessions).
pub const NEVER_EXPIRES: u32 = u32::MAX;

/// One message on its way to one subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub msg: Arc<Message>,
    pub qos: u8,
    pub retain: bool,
    pub sub_ids: Vec<u32>,
}

/// Outbound QoS 1/2 state, kept in the session so it survives reconnects.
#[derive(Debug, Clone)]
pub enum Inflight {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Publish(Delivery),
    /// PUBREL sent, waiting for PUBCOMP.
    Released,
}

/// Why the broker closes a connection from outside its task; the value is
/// the MQTT 5 DISCONNECT reason code sent first.
pub mod kick {
    pub use crate::mqtt::rc::{QUOTA_EXCEEDED, SERVER_SHUTTING_DOWN, SESSION_TAKEN_OVER};
}

/// The connection currently attached to a session.
#[derive(Debug, Clone)]
pub struct Attached {
    pub generation: u64,
    pub kick: CancellationToken,
    pub kick_reason: Arc<AtomicU8>,
}

impl Attached {
    pub fn kick(&self, reason: u8) {
        self.kick_reason.store(reason, Ordering::Relaxed);
        self.kick.cancel();
    }
}

#[derive(Debug)]
pub struct SessionState {
    pub attached: Option<Attached>,
    pub generation: u64,
    pub protocol: ProtocolVersion,
    pub queue: VecDeque<Delivery>,
    pub inflight: BTreeMap<u16, Inflight>,
    next_pkid: u16,
    /// QoS 2 packet ids received and acknowledged with PUBREC, waiting for
    /// PUBREL (the message was routed once on arrival).
    pub incoming_qos2: HashSet<u16>,
    /// filter (as subscribed, `$share/…` included) → options and id.
    pub subscriptions: HashMap<String, (SubOptions, Option<u32>)>,
    /// Seconds the session outlives its connection.
    pub expiry: u32,
    /// User name of the attached (or last) connection.
    pub username: Option<String>,
}

/// What happened to a message offered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// Dropped (`reason` is the metric label).
    Dropped(DropReason),
    /// Queued, after evicting an older QoS 0 message to make room.
    QueuedEvicting,
}

#[derive(Debug)]
pub struct Session {
    pub client_id: String,
    /// A mesh link from a peer node.
    pub peer_link: bool,
    pub state: std::sync::Mutex<SessionState>,
    /// Wakes the attached connection when the queue gains messages.
    pub notify: Notify,
}

impl Session {
    pub fn new(client_id: String, protocol: ProtocolVersion) -> Session {
        Session {
            peer_link: client_id.starts_with(PEER_PREFIX),
            client_id,
            state: std::sync::Mutex::new(SessionState {
                attached: None,
                generation: 0,
                protocol,
                queue: VecDeque::new(),
                inflight: BTreeMap::new(),
                next_pkid: 0,
                incoming_qos2: HashSet::new(),
                subscriptions: HashMap::new(),
                expiry: 0,
                username: None,
            }),
            notify: Notify::new(),
        }
    }

    /// Lock the state. A poisoned lock means a panic while holding it,
    /// which the code rules out; recover the data rather than propagate.
    pub fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offer `d` under the queue cap `cap` and the slow-consumer policy.
    pub fn enqueue(&self, d: Delivery, cap: usize) -> Enqueued {
        let mut st = self.lock();
        let online = st.attached.is_some();
        if !online && d.qos == 0 {
            // Like Mosquitto's default: QoS 0 is not queued for offline
            // clients.
            return Enqueued::Dropped(DropReason::OfflineQos0);
        }
        let mut outcome = Enqueued::Queued;
        if st.queue.len() >= cap {
            if d.qos == 0 {
                return Enqueued::Dropped(DropReason::QueueFull);
            }
            match st.queue.iter().position(|q| q.qos == 0) {
                Some(i) => {
                    st.queue.remove(i);
                    outcome = Enqueued::QueuedEvicting;
                }
                None => {
                    if let Some(a) = &st.attached {
                        a.kick(kick::QUOTA_EXCEEDED);
                    }
                    return Enqueued::Dropped(DropReason::SlowConsumer);
                }
            }
        }
        st.queue.push_back(d);
        drop(st);
        self.notify.notify_one();
        outcome
    }
}

impl SessionState {
    /// Next free outbound packet id (1..=65535, skipping ids in flight).
    /// `None` when all are in flight (the receive maximum prevents that).
    pub fn next_pkid(&mut self) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.next_pkid) {
                return Some(self.next_pkid);
            }
        }
        None
    }
}

// --- the session table: attach a connection, remove an expired session ---

/// Find or create the session, kick a connection holding it, attach.
/// Returns the session, this connection's generation and "session present".
pub(super) fn attach(
    broker: &Broker,
    client_id: &str,
    clean: bool,
    protocol: ProtocolVersion,
    expiry: u32,
    kick_token: &CancellationToken,
    kick_reason: &Arc<AtomicU8>,
) -> (Arc<Session>, u64, bool) {
    let mut sessions = broker.sessions();
    let existing = sessions.get(client_id).cloned();
    if let Some(old) = &existing {
        if let Some(a) = old.lock().attached.take() {
            // Three sockets sharing one client id take over from each
            // other in a loop: a storm a client can start at will.
            static TAKEOVERS: LogLimiter = crate::ratelog::per_kind();
            if let Some(suppressed) = TAKEOVERS.allow() {
                info!(
                    client_id,
                    suppressed, "session taken over by a new connection"
                );
            }
            a.kick(kick::SESSION_TAKEN_OVER);
        }
    }
    let (session, present) = match existing {
        Some(s) if !clean => (s, true),
        old => {
            if let Some(old) = old {
                let filters: Vec<String> = old.lock().subscriptions.keys().cloned().collect();
                let mut r = broker.router();
                for f in filters {
                    r.unsubscribe(client_id, &f);
                }
            }
            let s = Arc::new(Session::new(client_id.to_string(), protocol));
            sessions.insert(client_id.to_string(), s.clone());
            (s, false)
        }
    };
    let generation = {
        let mut st = session.lock();
        st.generation += 1;
        st.protocol = protocol;
        st.expiry = expiry;
        st.attached = Some(Attached {
            generation: st.generation,
            kick: kick_token.clone(),
            kick_reason: kick_reason.clone(),
        });
        st.generation
    };
    let n = sessions.len();
    drop(sessions);
    broker.update_gauges(n);
    (session, generation, present)
}

/// Remove `session` if no connection attached after `generation`.
pub(super) fn remove_session(broker: &Broker, session: &Arc<Session>, generation: u64) {
    let mut sessions = broker.sessions();
    let filters: Vec<String> = {
        let st = session.lock();
        if st.generation != generation || st.attached.is_some() {
            return;
        }
        st.subscriptions.keys().cloned().collect()
    };
    if sessions
        .get(&session.client_id)
        .is_some_and(|s| Arc::ptr_eq(s, session))
    {
        sessions.remove(&session.client_id);
    }
    {
        let mut r = broker.router();
        for f in filters {
            r.unsubscribe(&session.client_id, &f);
        }
    }
    let n = sessions.len();
    drop(sessions);
    broker.update_gauges(n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn delivery(qos: u8) -> Delivery {
        Delivery {
            msg: Arc::new(Message::new("t".into(), Bytes::new(), qos, false)),
            qos,
            retain: false,
            sub_ids: Vec::new(),
        }
    }

    fn online() -> (Session, CancellationToken) {
        let s = Session::new("c".into(), ProtocolVersion::V5);
        let kick = CancellationToken::new();
        s.lock().attached = Some(Attached {
            generation: 1,
            kick: kick.clone(),
            kick_reason: Arc::new(AtomicU8::new(0)),
        });
        (s, kick)
    }

    #[test]
    fn slow_consumer_policy_drops_qos0_first_then_disconnects() {
        let (s, kick) = online();
        assert_eq!(s.enqueue(delivery(0), 2), Enqueued::Queued);
        assert_eq!(s.enqueue(delivery(1), 2), Enqueued::Queued);
        assert_eq!(
            s.enqueue(delivery(0), 2),
            Enqueued::Dropped(DropReason::QueueFull)
        );
        assert_eq!(s.enqueue(delivery(1), 2), Enqueued::QueuedEvicting);
        assert!(!kick.is_cancelled());
        assert_eq!(
            s.enqueue(delivery(2), 2),
            Enqueued::Dropped(DropReason::SlowConsumer)
        );
        assert!(kick.is_cancelled(), "a full queue of QoS 1/2 disconnects");
        assert_eq!(s.lock().queue.len(), 2);
    }

    #[test]
    fn offline_sessions_queue_only_qos1_and_2() {
        let s = Session::new("c".into(), ProtocolVersion::V311);
        assert_eq!(
            s.enqueue(delivery(0), 5),
            Enqueued::Dropped(DropReason::OfflineQos0)
        );
        assert_eq!(s.enqueue(delivery(1), 5), Enqueued::Queued);
        assert_eq!(
            s.enqueue(delivery(2), 1),
            Enqueued::Dropped(DropReason::SlowConsumer)
        );
    }

    #[test]
    fn packet_ids_skip_those_in_flight_and_zero() {
        let s = Session::new("c".into(), ProtocolVersion::V5);
        let mut st = s.lock();
        st.inflight.insert(2, Inflight::Released);
        assert_eq!(st.next_pkid(), Some(1));
        assert_eq!(st.next_pkid(), Some(3));
        st.next_pkid = u16::MAX;
        assert_eq!(st.next_pkid(), Some(1));
    }
}
