//! Prometheus metrics of the proxy, registered on a registry passed in by
//! the caller (no globals). The names are a contract with dashboards and
//! alert rules (`deploy/`, README "Metrics"): changing one is a breaking change.
//!
//! Labels are bounded: listener, backend, reason, result, protocol,
//! direction. Reasons and results are enums ([`Rejection`],
//! [`HandshakeResult`], [`Disconnect`]) whose `as_str` is the label value.
//! Per-listener and per-backend handles for every label value are resolved
//! once when a listener or backend is created (so every series exists from
//! the start, at 0), and no connection ever looks a label set up in a map.

use std::collections::BTreeSet;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::mqtt::ProtocolVersion;
use crate::mqtt::connect::ConnectError;

/// A fieldless enum whose variants are the values of one metric label:
/// `ALL` lists them (handles are resolved for each up front) and `as_str`
/// is the label value.
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $label:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }
        }
    };
}
pub(crate) use label_enum;

/// Counters for every value of a label enum, resolved once; `get` never
/// looks a label set up.
#[derive(Clone, Debug)]
pub struct CounterSet(Box<[Counter]>);

impl CounterSet {
    pub fn new<T: Copy>(all: &[T], counter: impl Fn(T) -> Counter) -> CounterSet {
        CounterSet(all.iter().map(|&v| counter(v)).collect())
    }

    /// Count one `value` (its position in the enum's `ALL`).
    pub fn inc(&self, index: usize) {
        if let Some(c) = self.0.get(index) {
            c.inc();
        }
    }

    /// The count of one value (its position in the enum's `ALL`).
    pub fn get(&self, index: usize) -> u64 {
        self.0.get(index).map_or(0, Counter::get)
    }
}

label_enum! {
    /// Why the proxy closed a client connection before relaying it: the
    /// `reason` label of `mqttlb_connections_rejected_total`.
    pub enum Rejection {
        /// `limits.max_connections` reached: closed right after accept.
        MaxConnections => "max_connections",
        TlsHandshakeTimeout => "tls_handshake_timeout",
        TlsHandshakeFailed => "tls_handshake_failed",
        /// The client's certificate chain broke `max_client_chain`,
        /// `max_client_chain_size` or its shape rule: refused before it
        /// was verified.
        ClientChainRefused => "client_chain_refused",
        /// No complete CONNECT within `connect_timeout`.
        ConnectTimeout => "connect_timeout",
        ClosedBeforeConnect => "closed_before_connect",
        /// A read error before the CONNECT arrived.
        ClientError => "client_error",
        /// The first packet is another MQTT packet.
        NotConnect => "not_connect",
        /// A TLS ClientHello on a plain MQTT listener.
        TlsInMqtt => "tls_in_mqtt",
        /// An HTTP request on an MQTT listener.
        Http => "http",
        ConnectTooLarge => "connect_too_large",
        UnsupportedProtocol => "unsupported_protocol",
        MalformedConnect => "malformed_connect",
        /// No node in rotation took the client.
        NoBackend => "no_backend",
        /// `limits.source_connect_rate`: closed right after accept.
        SourceRateLimit => "source_rate_limit",
        /// `limits.client_connect_rate`: answered with a CONNACK refusal.
        ClientRateLimit => "client_rate_limit",
        /// `listener.mqtt.client_id_match`: the client certificate does
        /// not name the CONNECT's client id; answered CONNACK "not
        /// authorized".
        ClientIdMismatch => "client_id_mismatch",
        /// A WebSocket listener's upgrade request was refused (path,
        /// subprotocol, headers, size); the client read an HTTP error.
        WebSocketRefused => "websocket_refused",
        /// No complete upgrade request within `websocket.upgrade_timeout`.
        WebSocketTimeout => "websocket_timeout",
        /// `listener.proxy_protocol` on: the peer is not in
        /// `proxy_protocol_from` (header or not).
        ProxyUntrusted => "proxy_untrusted",
        /// `proxy_protocol = "required"`: a trusted peer sent no header.
        ProxyHeaderMissing => "proxy_header_missing",
        /// A malformed or oversized inbound PROXY header.
        ProxyHeaderInvalid => "proxy_header_invalid",
        /// No complete inbound PROXY header within
        /// `listener.proxy_protocol_timeout`.
        ProxyHeaderTimeout => "proxy_header_timeout",
        /// The pool's admission queue was full (or `queue.size` is 0):
        /// CONNACK "server busy" (3.x "server unavailable").
        QueueFull => "queue_full",
        /// Waited the pool's `queue.timeout` for admission in vain; same
        /// answer.
        QueueTimeout => "queue_timeout",
        /// The client closed its connection while waiting for admission.
        QueueAbandoned => "queue_abandoned",
    }
}

label_enum! {
    /// How a client went through its pool's admission: the `result`
    /// label of `mqttlb_pool_admissions_total`.
    pub enum AdmissionResult {
        /// Let through at once.
        Immediate => "immediate",
        /// Let through after waiting in the queue.
        Paced => "paced",
        /// Refused: the queue was full.
        QueueFull => "queue_full",
        /// Refused: waited `queue.timeout` in vain.
        QueueTimeout => "queue_timeout",
        /// Left (closed its connection) while waiting.
        Abandoned => "abandoned",
    }
}

impl From<&ConnectError> for Rejection {
    fn from(e: &ConnectError) -> Rejection {
        match e {
            ConnectError::NotConnect(_) => Rejection::NotConnect,
            ConnectError::Tls => Rejection::TlsInMqtt,
            ConnectError::Http => Rejection::Http,
            ConnectError::TooLarge { .. } => Rejection::ConnectTooLarge,
            ConnectError::UnsupportedProtocol => Rejection::UnsupportedProtocol,
            ConnectError::BadRemainingLength
            | ConnectError::BadFlags
            | ConnectError::Truncated
            | ConnectError::BadUtf8
            | ConnectError::BadProperties
            | ConnectError::TrailingBytes => Rejection::MalformedConnect,
        }
    }
}

label_enum! {
    /// Outcome of a TLS handshake: the `result` label of
    /// `mqttlb_tls_handshakes_total`.
    pub enum HandshakeResult {
        Ok => "ok",
        Failed => "failed",
        Timeout => "timeout",
    }
}

label_enum! {
    /// How a relayed connection (one that reached a backend) ended: the
    /// `reason` label of `mqttlb_connections_closed_total`.
    pub enum Disconnect {
        /// Both sides closed.
        Closed => "closed",
        /// Nothing moved for the idle timeout (1.5 × the client's keep-alive).
        IdleTimeout => "idle_timeout",
        /// Sent DISCONNECT "use another server" by a drain.
        Drained => "drained",
        /// An I/O error on the client's side.
        ClientError => "client_error",
        /// An I/O error on the backend's side.
        BackendError => "backend_error",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    pub backend: Arc<String>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    pub listener: Arc<String>,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub listener: Arc<String>,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub listener: Arc<String>,
    pub protocol: &'static str,
}

/// A served certificate: the listener and the certificate file.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct CertLabel {
    pub listener: String,
    pub cert: String,
}

/// A listener's route and the pool it sends to (`route="default"`: no
/// rule matched, the listener's own pool).
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RouteLabel {
    pub listener: String,
    pub route: String,
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub pool: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolResultLabel {
    pub pool: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    pub backend: Arc<String>,
    pub result: &'static str,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    /// Client → backend.
    upstream,
    /// Backend → client.
    downstream,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    pub direction: Direction,
}

fn latency_histogram() -> Histogram {
    // 100µs … ~13s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

fn queue_wait_histogram() -> Histogram {
    // 1 ms … ~262 s (queue.timeout is at most 5 min).
    Histogram::new(exponential_buckets(0.001, 2.0, 19))
}

/// All proxy metric families.
#[derive(Clone)]
pub struct Metrics {
    pub connections_active: Family<ListenerLabel, Gauge>,
    pub connections_total: Family<ListenerLabel, Counter>,
    pub connections_rejected: Family<RejectLabel, Counter>,
    pub connections_closed: Family<RejectLabel, Counter>,
    pub tls_handshakes: Family<ResultLabel, Counter>,
    pub tls_resumptions: Family<ListenerLabel, Counter>,
    pub tls_handshake_duration: Family<ListenerLabel, Histogram>,
    pub mqtt_connects: Family<ProtocolLabel, Counter>,
    pub connections_routed: Family<RouteLabel, Counter>,
    pub backend_up: Family<BackendLabel, Gauge>,
    pub backend_connections_active: Family<BackendLabel, Gauge>,
    pub backend_connect_errors: Family<BackendLabel, Counter>,
    pub backend_connect_duration: Family<BackendLabel, Histogram>,
    pub backend_connacks: Family<CheckLabel, Counter>,
    pub backend_connack_duration: Family<BackendLabel, Histogram>,
    pub health_checks: Family<CheckLabel, Counter>,
    pub health_check_duration: Family<BackendLabel, Histogram>,
    pub bytes: Family<DirectionLabel, Counter>,
    pub accept_errors: Counter,
    /// Access-log lines dropped: the writer's queue was full (or the
    /// destination could not be written).
    pub access_log_dropped: Counter,
    pub config_reloads: Family<OutcomeLabel, Counter>,
    pub tls_certificate_not_after: Family<CertLabel, Gauge>,
    pub pool_queue_length: Family<PoolLabel, Gauge>,
    pub pool_queue_capacity: Family<PoolLabel, Gauge>,
    pub pool_queue_wait: Family<PoolLabel, Histogram>,
    pub pool_admissions: Family<PoolResultLabel, Counter>,
    pub pool_rebalance_moved: Family<PoolLabel, Counter>,
    pub pool_rebalance_pending: Family<PoolLabel, Gauge>,
    /// The label sets of `tls_certificate_not_after` exported now, so a
    /// reload can remove the ones that went away. A std Mutex: held for a
    /// set difference, never across an await.
    certificates: Arc<std::sync::Mutex<BTreeSet<CertLabel>>>,
    /// The label sets of `connections_routed` configured now (same use).
    routes: Arc<std::sync::Mutex<BTreeSet<RouteLabel>>>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            connections_active: Family::default(),
            connections_total: Family::default(),
            connections_rejected: Family::default(),
            connections_closed: Family::default(),
            tls_handshakes: Family::default(),
            tls_resumptions: Family::default(),
            tls_handshake_duration: Family::new_with_constructor(latency_histogram),
            mqtt_connects: Family::default(),
            connections_routed: Family::default(),
            backend_up: Family::default(),
            backend_connections_active: Family::default(),
            backend_connect_errors: Family::default(),
            backend_connect_duration: Family::new_with_constructor(latency_histogram),
            backend_connacks: Family::default(),
            backend_connack_duration: Family::new_with_constructor(latency_histogram),
            health_checks: Family::default(),
            health_check_duration: Family::new_with_constructor(latency_histogram),
            bytes: Family::default(),
            accept_errors: Counter::default(),
            access_log_dropped: Counter::default(),
            config_reloads: Family::default(),
            tls_certificate_not_after: Family::default(),
            pool_queue_length: Family::default(),
            pool_queue_capacity: Family::default(),
            pool_queue_wait: Family::new_with_constructor(queue_wait_histogram),
            pool_admissions: Family::default(),
            pool_rebalance_moved: Family::default(),
            pool_rebalance_pending: Family::default(),
            certificates: Arc::default(),
            routes: Arc::default(),
        };
        let r = registry.sub_registry_with_prefix("mqttlb");
        r.register(
            "connections_active",
            "Client connections open now",
            m.connections_active.clone(),
        );
        r.register(
            "connections",
            "Client connections accepted",
            m.connections_total.clone(),
        );
        r.register(
            "connections_rejected",
            "Client connections closed before reaching a backend, by reason",
            m.connections_rejected.clone(),
        );
        r.register(
            "connections_closed",
            "Relayed client connections that ended, by how (idle timeouts, drains, errors)",
            m.connections_closed.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes by result",
            m.tls_handshakes.clone(),
        );
        r.register(
            "tls_resumptions",
            "Successful TLS handshakes that resumed a session (a session ticket, or a TLS 1.2 session id) instead of a full handshake; part of tls_handshakes_total{result=\"ok\"}",
            m.tls_resumptions.clone(),
        );
        r.register_with_unit(
            "tls_handshake_duration",
            "Time from accept to a finished TLS handshake",
            prometheus_client::registry::Unit::Seconds,
            m.tls_handshake_duration.clone(),
        );
        r.register(
            "mqtt_connects",
            "MQTT CONNECT packets read, by protocol version",
            m.mqtt_connects.clone(),
        );
        r.register(
            "connections_routed",
            "Client connections handed to a pool, by listener, the route that chose it (route=\"default\": no [[listener.route]] matched, the listener's pool) and that pool",
            m.connections_routed.clone(),
        );
        r.register(
            "backend_up",
            "1 when the backend is in rotation (healthy), else 0",
            m.backend_up.clone(),
        );
        r.register(
            "backend_connections_active",
            "Proxied connections open to the backend now",
            m.backend_connections_active.clone(),
        );
        r.register(
            "backend_connect_errors",
            "Failed attempts to place a client on the backend: TCP connect failed or timed out, or (MQTT listeners) its CONNECT got no CONNACK in time, the node closed first or answered server unavailable/busy",
            m.backend_connect_errors.clone(),
        );
        r.register_with_unit(
            "backend_connect_duration",
            "Time to establish a TCP connection to a backend",
            prometheus_client::registry::Unit::Seconds,
            m.backend_connect_duration.clone(),
        );
        r.register(
            "backend_connacks",
            "Client CONNECTs forwarded to the backend, by outcome: accepted, refused (the broker refused the client; forwarded), unavailable (server unavailable/busy), timeout, closed, malformed, late (answered after connack_timeout while the pool paced admission; forwarded, not a node failure)",
            m.backend_connacks.clone(),
        );
        r.register_with_unit(
            "backend_connack_duration",
            "Time from forwarding a client's CONNECT to the backend's CONNACK",
            prometheus_client::registry::Unit::Seconds,
            m.backend_connack_duration.clone(),
        );
        r.register(
            "health_checks",
            "Active health checks by result",
            m.health_checks.clone(),
        );
        r.register_with_unit(
            "health_check_duration",
            "Duration of active health checks",
            prometheus_client::registry::Unit::Seconds,
            m.health_check_duration.clone(),
        );
        // Named `mqttlb_bytes_total` (the documented name): the unit is the name.
        r.register(
            "bytes",
            "Bytes spliced between clients and backends",
            m.bytes.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accept() calls (e.g. EMFILE)",
            m.accept_errors.clone(),
        );
        r.register(
            "access_log_dropped",
            "Access-log lines dropped because the writer's queue was full or the destination failed",
            m.access_log_dropped.clone(),
        );
        r.register(
            "config_reloads",
            "Configuration reloads (SIGHUP or POST /api/v1/reload) by result",
            m.config_reloads.clone(),
        );
        r.register_with_unit(
            "tls_certificate_not_after",
            "When the served certificate expires (its notAfter, Unix time), by listener and certificate file; read when the listener's TLS is loaded (start and every reload)",
            prometheus_client::registry::Unit::Seconds,
            m.tls_certificate_not_after.clone(),
        );
        r.register(
            "pool_queue_length",
            "Clients waiting for admission to the pool now (max_connect_rate, node max_connections)",
            m.pool_queue_length.clone(),
        );
        r.register(
            "pool_queue_capacity",
            "The pool's queue.size: clients that may wait for admission at once",
            m.pool_queue_capacity.clone(),
        );
        r.register_with_unit(
            "pool_queue_wait",
            "Time clients let through after waiting spent in the pool's admission queue",
            prometheus_client::registry::Unit::Seconds,
            m.pool_queue_wait.clone(),
        );
        r.register(
            "pool_admissions",
            "Clients through the pool's admission, by result: immediate, paced (after waiting), queue_full and queue_timeout (refused), abandoned (left while waiting)",
            m.pool_admissions.clone(),
        );
        r.register(
            "pool_rebalance_moved",
            "Clients asked to move by a rebalance of the pool (MQTT 5: DISCONNECT 0x9C \"use another server\"; 3.1.1: closed), at a packet boundary",
            m.pool_rebalance_moved.clone(),
        );
        r.register(
            "pool_rebalance_pending",
            "Clients the running rebalance of the pool has still to move (0 when none runs)",
            m.pool_rebalance_pending.clone(),
        );
        // Both outcomes exist from the start, so rate() and alerts work
        // before the first reload.
        for result in ["ok", "error"] {
            let _ = m.config_reloads.get_or_create(&OutcomeLabel { result });
        }
        m
    }

    /// Reloads so far: (applied, refused).
    pub fn reloads(&self) -> (u64, u64) {
        let count = |result| {
            self.config_reloads
                .get_or_create(&OutcomeLabel { result })
                .get()
        };
        (count("ok"), count("error"))
    }

    pub fn reload(&self, result: &'static str) {
        self.config_reloads
            .get_or_create(&OutcomeLabel { result })
            .inc();
    }

    /// Export exactly these served certificates (listener, certificate
    /// file, notAfter in Unix seconds): set each, and remove the series of
    /// certificates no longer served (a listener or SNI entry removed).
    pub fn set_certificates(&self, certs: impl IntoIterator<Item = (String, String, i64)>) {
        // A poisoned lock only means a panic elsewhere while holding it;
        // the set is still the one last exported.
        let mut exported = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        let mut now = BTreeSet::new();
        for (listener, cert, not_after) in certs {
            let label = CertLabel { listener, cert };
            self.tls_certificate_not_after
                .get_or_create(&label)
                .set(not_after);
            now.insert(label);
        }
        for gone in exported.difference(&now) {
            self.tls_certificate_not_after.remove(gone);
        }
        *exported = now;
    }

    /// Export exactly these routes (every listener's rules and its
    /// `default`), each from 0: series of routes no longer configured (a
    /// rule renamed, removed or sent to another pool) are removed.
    pub fn set_routes(&self, routes: impl IntoIterator<Item = RouteLabel>) {
        // A poisoned lock only means a panic elsewhere while holding it;
        // the set is still the one last exported.
        let mut exported = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let now: BTreeSet<RouteLabel> = routes.into_iter().collect();
        for label in &now {
            let _ = self.connections_routed.get_or_create(label);
        }
        for gone in exported.difference(&now) {
            self.connections_routed.remove(gone);
        }
        *exported = now;
    }

    /// The counter of one route, resolved when a listener's context is
    /// built (never per connection).
    pub fn route(&self, label: &RouteLabel) -> Counter {
        self.connections_routed.get_or_create_owned(label)
    }

    /// Pre-resolved handles for one pool's admission (every result from 0).
    pub fn admission(&self, pool: &str) -> AdmissionMetrics {
        let label = PoolLabel { pool: pool.into() };
        AdmissionMetrics {
            rebalance_moved: self.pool_rebalance_moved.get_or_create_owned(&label),
            rebalance_pending: self.pool_rebalance_pending.get_or_create_owned(&label),
            queue_length: self.pool_queue_length.get_or_create_owned(&label),
            queue_capacity: self.pool_queue_capacity.get_or_create_owned(&label),
            wait: self.pool_queue_wait.get_or_create_owned(&label),
            results: CounterSet::new(AdmissionResult::ALL, |r| {
                self.pool_admissions.get_or_create_owned(&PoolResultLabel {
                    pool: pool.into(),
                    result: r.as_str(),
                })
            }),
        }
    }

    /// Stop exporting the admission series of a pool removed by a reload.
    pub fn forget_pool(&self, pool: &str) {
        let label = PoolLabel { pool: pool.into() };
        self.pool_queue_length.remove(&label);
        self.pool_queue_capacity.remove(&label);
        self.pool_queue_wait.remove(&label);
        self.pool_rebalance_moved.remove(&label);
        self.pool_rebalance_pending.remove(&label);
        for r in AdmissionResult::ALL {
            self.pool_admissions.remove(&PoolResultLabel {
                pool: pool.into(),
                result: r.as_str(),
            });
        }
    }

    /// Stop exporting the gauges of a backend removed by a reload (its
    /// open connections, if any, keep running).
    pub fn forget_backend(&self, name: &str) {
        let label = BackendLabel {
            backend: Arc::new(name.to_string()),
        };
        self.backend_up.remove(&label);
        self.backend_connections_active.remove(&label);
    }

    /// Pre-resolved handles for one listener.
    pub fn listener(&self, name: &str) -> ListenerMetrics {
        let label = ListenerLabel {
            listener: Arc::new(name.to_string()),
        };
        ListenerMetrics {
            active: self.connections_active.get_or_create_owned(&label),
            total: self.connections_total.get_or_create_owned(&label),
            resumed: self.tls_resumptions.get_or_create_owned(&label),
            handshake_duration: self.tls_handshake_duration.get_or_create_owned(&label),
            upstream_bytes: self.bytes.get_or_create_owned(&DirectionLabel {
                direction: Direction::upstream,
            }),
            downstream_bytes: self.bytes.get_or_create_owned(&DirectionLabel {
                direction: Direction::downstream,
            }),
            rejected: CounterSet::new(Rejection::ALL, |r| {
                self.connections_rejected.get_or_create_owned(&RejectLabel {
                    listener: label.listener.clone(),
                    reason: r.as_str(),
                })
            }),
            handshakes: CounterSet::new(HandshakeResult::ALL, |r| {
                self.tls_handshakes.get_or_create_owned(&ResultLabel {
                    listener: label.listener.clone(),
                    result: r.as_str(),
                })
            }),
            closed: CounterSet::new(Disconnect::ALL, |r| {
                self.connections_closed.get_or_create_owned(&RejectLabel {
                    listener: label.listener.clone(),
                    reason: r.as_str(),
                })
            }),
            connects: [
                ProtocolVersion::V31,
                ProtocolVersion::V311,
                ProtocolVersion::V5,
            ]
            .map(|v| {
                self.mqtt_connects.get_or_create_owned(&ProtocolLabel {
                    listener: label.listener.clone(),
                    protocol: v.as_str(),
                })
            }),
        }
    }

    /// Pre-resolved handles for one backend.
    pub fn backend(&self, name: &str) -> BackendMetrics {
        let label = BackendLabel {
            backend: Arc::new(name.to_string()),
        };
        let connack = |result: &'static str| {
            self.backend_connacks.get_or_create_owned(&CheckLabel {
                backend: label.backend.clone(),
                result,
            })
        };
        let connacks = ConnackMetrics {
            accepted: connack("accepted"),
            refused: connack("refused"),
            unavailable: connack("unavailable"),
            timeout: connack("timeout"),
            closed: connack("closed"),
            malformed: connack("malformed"),
            late: connack("late"),
        };
        BackendMetrics {
            connacks,
            connack_duration: self.backend_connack_duration.get_or_create_owned(&label),
            up: self.backend_up.get_or_create_owned(&label),
            active: self.backend_connections_active.get_or_create_owned(&label),
            connect_errors: self.backend_connect_errors.get_or_create_owned(&label),
            connect_duration: self.backend_connect_duration.get_or_create_owned(&label),
            check_duration: self.health_check_duration.get_or_create_owned(&label),
            check_ok: self.health_checks.get_or_create_owned(&CheckLabel {
                backend: label.backend.clone(),
                result: "ok",
            }),
            check_failed: self.health_checks.get_or_create_owned(&CheckLabel {
                backend: label.backend.clone(),
                result: "failed",
            }),
        }
    }
}

#[derive(Clone)]
pub struct ListenerMetrics {
    pub active: Gauge,
    pub total: Counter,
    /// `mqttlb_tls_resumptions_total`: handshakes that resumed a session.
    pub resumed: Counter,
    pub handshake_duration: Histogram,
    pub upstream_bytes: Counter,
    pub downstream_bytes: Counter,
    /// Every outcome counter of this listener, resolved once, in the
    /// order of the enums' `ALL`.
    rejected: CounterSet,
    handshakes: CounterSet,
    closed: CounterSet,
    connects: [Counter; 3],
}

impl ListenerMetrics {
    /// Count a connection closed before it reached a backend.
    pub fn rejected(&self, reason: Rejection) {
        self.rejected.inc(reason as usize);
    }

    /// Count a TLS handshake by result.
    pub fn handshake(&self, result: HandshakeResult) {
        self.handshakes.inc(result as usize);
    }

    /// Count how a relayed connection ended.
    pub fn closed(&self, how: Disconnect) {
        self.closed.inc(how as usize);
    }

    /// What the status page shows of this listener, read now.
    pub fn counts(&self) -> ListenerCounts {
        ListenerCounts {
            active: u64::try_from(self.active.get()).unwrap_or(0),
            total: self.total.get(),
            handshakes_ok: self.handshakes.get(HandshakeResult::Ok as usize),
            handshakes_failed: self.handshakes.get(HandshakeResult::Failed as usize),
            handshakes_timeout: self.handshakes.get(HandshakeResult::Timeout as usize),
            resumed: self.resumed.get(),
            rejected: Rejection::ALL
                .iter()
                .map(|&r| (r.as_str(), self.rejected.get(r as usize)))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }

    pub fn mqtt_connect(&self, protocol: ProtocolVersion) {
        let i = match protocol {
            ProtocolVersion::V31 => 0,
            ProtocolVersion::V311 => 1,
            ProtocolVersion::V5 => 2,
        };
        if let Some(c) = self.connects.get(i) {
            c.inc();
        }
    }
}

/// A listener's counters read at one instant (`ListenerMetrics::counts`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListenerCounts {
    pub active: u64,
    pub total: u64,
    pub handshakes_ok: u64,
    pub handshakes_failed: u64,
    pub handshakes_timeout: u64,
    pub resumed: u64,
    /// Rejections by reason label, those above 0 only, in `Rejection::ALL` order.
    pub rejected: Vec<(&'static str, u64)>,
}

#[derive(Clone)]
pub struct BackendMetrics {
    pub connacks: ConnackMetrics,
    pub connack_duration: Histogram,
    pub up: Gauge,
    pub active: Gauge,
    pub connect_errors: Counter,
    pub connect_duration: Histogram,
    pub check_duration: Histogram,
    pub check_ok: Counter,
    pub check_failed: Counter,
}

/// `mqttlb_backend_connacks_total{backend,result}`, one handle per result.
#[derive(Clone)]
pub struct ConnackMetrics {
    pub accepted: Counter,
    pub refused: Counter,
    pub unavailable: Counter,
    pub timeout: Counter,
    pub closed: Counter,
    pub malformed: Counter,
    /// Answered after `connack_timeout` while the pool paced: forwarded,
    /// and no node failure (`balance::admission`).
    pub late: Counter,
}

/// One pool's admission series (`mqttlb_pool_queue_*`,
/// `mqttlb_pool_admissions_total`), resolved once.
#[derive(Clone, Debug)]
pub struct AdmissionMetrics {
    pub queue_length: Gauge,
    pub queue_capacity: Gauge,
    pub wait: Histogram,
    results: CounterSet,
    /// `mqttlb_pool_rebalance_moved_total` and `_pending` (rebalance).
    pub rebalance_moved: Counter,
    pub rebalance_pending: Gauge,
}

impl AdmissionMetrics {
    pub fn result(&self, result: AdmissionResult) {
        self.results.inc(result as usize);
    }
}

/// `mqttlb_pool_backends_in_rotation{pool}`: backends of each pool that
/// take new clients (healthy, not draining), counted at scrape time from
/// what `source` returns (the running generation's pools), so a reload
/// that adds or removes a pool never leaves a stale series.
pub fn register_pools_in_rotation(
    registry: &mut Registry,
    source: impl Fn() -> Vec<(String, i64)> + Send + Sync + 'static,
) {
    register_scraped(
        registry,
        "pool_backends_in_rotation",
        "Backends of the pool in rotation now (healthy and not draining); 0 means the pool's clients are refused",
        move || {
            source()
                .into_iter()
                .map(|(pool, n)| (PoolLabel { pool }, n))
                .collect()
        },
    );
}

/// `mqttlb_backend_slow_start_ratio{pool,backend}`: how far each node's
/// slow start has come (its share of new clients over its full share; 1
/// when not ramping), read at scrape time like the gauge above.
pub fn register_slow_start(
    registry: &mut Registry,
    source: impl Fn() -> Vec<(String, String, f64)> + Send + Sync + 'static,
) {
    register_scraped(
        registry,
        "backend_slow_start_ratio",
        "Share of new clients the node takes over its full share while it ramps up after entering rotation (slow_start); 1 when not ramping",
        move || {
            source()
                .into_iter()
                .map(|(pool, backend, r)| (PoolBackendLabel { pool, backend }, r))
                .collect()
        },
    );
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolBackendLabel {
    pool: String,
    backend: String,
}

/// A gauge family whose samples `source` gives at each scrape.
fn register_scraped<L, N>(
    registry: &mut Registry,
    name: &'static str,
    help: &'static str,
    source: impl Fn() -> Vec<(L, N)> + Send + Sync + 'static,
) where
    L: EncodeLabelSet + Send + Sync + 'static,
    N: prometheus_client::encoding::EncodeGaugeValue + Send + Sync + std::fmt::Debug + 'static,
{
    registry
        .sub_registry_with_prefix("mqttlb")
        .register_collector(Box::new(Scraped {
            name,
            help,
            source: Box::new(source),
        }));
}

type ScrapeSource<L, N> = Box<dyn Fn() -> Vec<(L, N)> + Send + Sync>;

struct Scraped<L, N> {
    name: &'static str,
    help: &'static str,
    source: ScrapeSource<L, N>,
}

impl<L, N> std::fmt::Debug for Scraped<L, N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scraped").field("name", &self.name).finish()
    }
}

impl<L, N> Collector for Scraped<L, N>
where
    L: EncodeLabelSet + Send + Sync + 'static,
    N: prometheus_client::encoding::EncodeGaugeValue + Send + Sync + std::fmt::Debug + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples = (self.source)();
        let mut family = encoder.encode_descriptor(
            self.name,
            self.help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (label, value) in samples {
            ConstGauge::new(value).encode(family.encode_family(&label)?)?;
        }
        Ok(())
    }
}

/// Render a registry in the OpenMetrics text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// Render a registry in the classic Prometheus text format (0.0.4), for
/// scrapers that do not ask for OpenMetrics (and for `promtool check
/// metrics`): counter families are named with their `_total` suffix in
/// HELP and TYPE, and the OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn encode_prometheus(registry: &Registry) -> String {
    to_prometheus_text(&encode(registry))
}

fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 256);
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                out.push_str(kind);
                out.push_str(name);
                if counters.contains(name) {
                    out.push_str("_total");
                }
                out.push(' ');
                out.push_str(tail);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_replaced_as_a_set() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let cert = |l: &str, c: &str, t| (l.to_string(), c.to_string(), t);
        m.set_certificates([cert("a", "/x.pem", 100), cert("a", "/y.pem", 200)]);
        let text = encode(&registry);
        assert!(
            text.contains(
                "mqttlb_tls_certificate_not_after_seconds{listener=\"a\",cert=\"/x.pem\"} 100"
            ),
            "{text}"
        );
        assert!(text.contains("cert=\"/y.pem\"} 200"), "{text}");
        // A reload: /y.pem gone, /x.pem renewed, listener b added.
        m.set_certificates([cert("a", "/x.pem", 300), cert("b", "/x.pem", 300)]);
        let text = encode(&registry);
        assert!(!text.contains("/y.pem"), "stale series removed: {text}");
        assert!(
            text.contains("{listener=\"a\",cert=\"/x.pem\"} 300"),
            "{text}"
        );
        assert!(
            text.contains("{listener=\"b\",cert=\"/x.pem\"} 300"),
            "{text}"
        );
    }

    #[test]
    fn routes_are_exported_from_zero_and_replaced_as_a_set() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let label = |route: &str, pool: &str| RouteLabel {
            listener: "l".into(),
            route: route.into(),
            pool: pool.into(),
        };
        m.set_routes([label("default", "main"), label("tenant-a", "a")]);
        m.route(&label("tenant-a", "a")).inc();
        let text = encode(&registry);
        let sample = |route: &str, pool: &str, n: u32| {
            format!(
                "mqttlb_connections_routed_total{{listener=\"l\",route=\"{route}\",pool=\"{pool}\"}} {n}"
            )
        };
        assert!(text.contains(&sample("default", "main", 0)), "{text}");
        assert!(text.contains(&sample("tenant-a", "a", 1)), "{text}");
        // A reload sends the rule to another pool.
        m.set_routes([label("default", "main"), label("tenant-a", "b")]);
        let text = encode(&registry);
        assert!(!text.contains("pool=\"a\""), "stale series removed: {text}");
        assert!(text.contains(&sample("tenant-a", "b", 0)), "{text}");
    }

    #[test]
    fn pools_in_rotation_are_read_at_scrape_time() {
        let mut registry = Registry::default();
        let up = Arc::new(std::sync::atomic::AtomicI64::new(2));
        let seen = up.clone();
        register_pools_in_rotation(&mut registry, move || {
            vec![(
                "p".to_string(),
                seen.load(std::sync::atomic::Ordering::Relaxed),
            )]
        });
        assert!(
            encode(&registry).contains("mqttlb_pool_backends_in_rotation{pool=\"p\"} 2"),
            "{}",
            encode(&registry)
        );
        up.store(0, std::sync::atomic::Ordering::Relaxed);
        let text = encode_prometheus(&registry);
        assert!(
            text.contains("# TYPE mqttlb_pool_backends_in_rotation gauge"),
            "{text}"
        );
        assert!(
            text.contains("mqttlb_pool_backends_in_rotation{pool=\"p\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn prometheus_text_names_counters_with_total() {
        let om = "# HELP a_c Things.\n# TYPE a_c counter\na_c_total 3\n# HELP a_s Secs.\n# TYPE a_s histogram\n# UNIT a_s seconds\na_s_count 1\n# EOF\n";
        assert_eq!(
            super::to_prometheus_text(om),
            "# HELP a_c_total Things.\n# TYPE a_c_total counter\na_c_total 3\n# HELP a_s Secs.\n# TYPE a_s histogram\na_s_count 1\n"
        );
    }
}
