//! `mqttlb_broker_*` metrics, and the reasons they count by (label enums:
//! every series exists from the start, and no connection looks a label up).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::metrics::{CounterSet, label_enum};

label_enum! {
    /// Why a connection was closed before or at its CONNECT: the `reason`
    /// label of `mqttlb_broker_connections_rejected_total`.
    pub enum Refusal {
        MaxConnections => "max_connections",
        /// `proxy_protocol = "required"` and the connection has no header.
        ProxyHeaderMissing => "proxy_header_missing",
        ProxyHeaderInvalid => "proxy_header_invalid",
        ClosedBeforeConnect => "closed_before_connect",
        ConnectTimeout => "connect_timeout",
        NotConnect => "not_connect",
        UnsupportedProtocol => "unsupported_protocol",
        MalformedConnect => "malformed_connect",
        ConnectTooLarge => "connect_too_large",
        /// A peer-link client id without the mesh secret (or from an
        /// address that is not a peer, or behind a proxy).
        MeshLinkNotAuthorized => "mesh_link_not_authorized",
        IdentifierRejected => "identifier_rejected",
        BadWillTopic => "bad_will_topic",
    }
}

label_enum! {
    /// Why a message was not delivered to a subscriber: the `reason` label
    /// of `mqttlb_broker_messages_dropped_total`.
    pub enum DropReason {
        /// Its message expiry interval passed while queued.
        Expired => "expired",
        /// QoS 1/2 with every packet id of the session in flight.
        NoPacketId => "no_packet_id",
        /// The session's queue is full (slow consumer).
        QueueFull => "queue_full",
        /// Larger than the client's Maximum Packet Size.
        TooLargeForClient => "too_large_for_client",
        /// QoS 0 for a client that is offline: not queued.
        OfflineQos0 => "offline_qos0",
        /// The queue is full of QoS 1/2 messages: the client is disconnected.
        SlowConsumer => "slow_consumer",
    }
}

label_enum! {
    /// How a connection ended after its CONNECT: the `reason` label of
    /// `mqttlb_broker_disconnects_total`.
    pub enum Ended {
        /// The client sent DISCONNECT.
        ClientDisconnect => "client_disconnect",
        /// Another connection took the session over.
        TakenOver => "taken_over",
        /// Disconnected for a full queue of QoS 1/2 messages.
        SlowConsumer => "slow_consumer",
        ServerShutdown => "server_shutdown",
        /// Closed without DISCONNECT.
        Closed => "closed",
        ReadError => "read_error",
        WriteError => "write_error",
        KeepAliveTimeout => "keep_alive_timeout",
        PacketTooLarge => "packet_too_large",
        Malformed => "malformed",
        TopicAliasInvalid => "topic_alias_invalid",
        TopicNameInvalid => "topic_name_invalid",
        ReceiveMaximumExceeded => "receive_maximum_exceeded",
        SecondConnect => "second_connect",
        SessionExpiryRaised => "session_expiry_raised",
        UnexpectedPacket => "unexpected_packet",
        UnknownTopicAlias => "unknown_topic_alias",
        /// An MQTT 5 property in a packet that may not carry it (e.g. a
        /// Subscription Identifier in a client's PUBLISH).
        MisplacedProperty => "misplaced_property",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// `mqttlb_broker_*` metrics.
#[derive(Clone)]
pub struct BrokerMetrics {
    pub connections_active: Gauge,
    pub connections_total: Counter,
    rejected: CounterSet,
    pub sessions: Gauge,
    pub subscriptions: Gauge,
    pub retained: Gauge,
    pub messages_received: Counter,
    pub messages_sent: Counter,
    dropped: CounterSet,
    pub peer_links_up: Gauge,
    disconnects: CounterSet,
}

impl BrokerMetrics {
    pub fn new(registry: &mut Registry) -> BrokerMetrics {
        let connections_rejected = Family::<ReasonLabel, Counter>::default();
        let messages_dropped = Family::<ReasonLabel, Counter>::default();
        let disconnects = Family::<ReasonLabel, Counter>::default();
        let of = |family: &Family<ReasonLabel, Counter>, reason: &'static str| {
            family.get_or_create_owned(&ReasonLabel { reason })
        };
        let m = BrokerMetrics {
            connections_active: Gauge::default(),
            connections_total: Counter::default(),
            rejected: CounterSet::new(Refusal::ALL, |r| of(&connections_rejected, r.as_str())),
            sessions: Gauge::default(),
            subscriptions: Gauge::default(),
            retained: Gauge::default(),
            messages_received: Counter::default(),
            messages_sent: Counter::default(),
            dropped: CounterSet::new(DropReason::ALL, |r| of(&messages_dropped, r.as_str())),
            peer_links_up: Gauge::default(),
            disconnects: CounterSet::new(Ended::ALL, |r| of(&disconnects, r.as_str())),
        };
        let r = registry.sub_registry_with_prefix("mqttlb_broker");
        r.register(
            "connections_active",
            "Open client connections",
            m.connections_active.clone(),
        );
        r.register(
            "connections",
            "Accepted client connections",
            m.connections_total.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections closed before or at CONNECT, by reason",
            connections_rejected,
        );
        r.register(
            "sessions",
            "Sessions held (online and offline)",
            m.sessions.clone(),
        );
        r.register(
            "subscriptions",
            "Subscriptions held",
            m.subscriptions.clone(),
        );
        r.register(
            "retained_messages",
            "Retained messages held",
            m.retained.clone(),
        );
        r.register(
            "messages_received",
            "PUBLISH packets received from clients and peers",
            m.messages_received.clone(),
        );
        r.register(
            "messages_sent",
            "PUBLISH packets sent to clients and peers",
            m.messages_sent.clone(),
        );
        r.register(
            "messages_dropped",
            "Messages not delivered to a subscriber, by reason",
            messages_dropped,
        );
        r.register(
            "peer_links_up",
            "Mesh links to peers that are up",
            m.peer_links_up.clone(),
        );
        r.register(
            "disconnects",
            "Client connections ended after CONNECT, by reason (protocol errors included)",
            disconnects,
        );
        m
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped.inc(reason as usize);
    }

    pub fn rejected(&self, reason: Refusal) {
        self.rejected.inc(reason as usize);
    }

    pub fn ended(&self, how: Ended) {
        self.disconnects.inc(how as usize);
    }
}
