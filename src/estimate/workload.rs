//! The workload: the validated inputs of the model (clients, traffic, QoS,
//! churn, keep-alive, nodes, headroom) and the rates derived from them.

use serde::Serialize;

use super::num::{to_f64, to_u64};
use crate::config::defaults;

/// Default steady churn: every client reconnects once an hour.
pub(super) const CHURN_PERIOD_S: f64 = 3600.0;

/// MQTT quality of service of the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "u8")]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
    ExactlyOnce,
}

impl Qos {
    pub fn from_level(level: u8) -> Option<Qos> {
        match level {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }

    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }

    /// Acknowledgement packets per PUBLISH exchange: none, PUBACK, or
    /// PUBREC + PUBREL + PUBCOMP.
    pub fn ack_packets(self) -> f64 {
        match self {
            Qos::AtMostOnce => 0.0,
            Qos::AtLeastOnce => 1.0,
            Qos::ExactlyOnce => 3.0,
        }
    }
}

impl From<Qos> for u8 {
    fn from(q: Qos) -> u8 {
        q.level()
    }
}

/// Traffic given as publishers and subscribers (`--publishers`, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PubSub {
    pub publishers: u64,
    pub subscribers: u64,
    pub rate_per_publisher: f64,
    pub topics: u64,
}

/// The validated inputs of the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Workload {
    pub connections: u64,
    pub tls_share: f64,
    /// Messages published per second, all clients together.
    pub publish_rate: f64,
    /// Deliveries per published message.
    pub fan_out: f64,
    /// Set when the traffic was given as publishers and subscribers.
    pub pubsub: Option<PubSub>,
    pub payload_bytes: u64,
    pub qos: Qos,
    pub new_connections_per_s: f64,
    /// The new-connection rate is the default churn (connections / 3600).
    pub new_connections_default: bool,
    /// 0: no keep-alive pings.
    pub keep_alive_s: f64,
    pub headroom: f64,
    pub proxy_nodes: u32,
    pub broker_nodes: u32,
    pub gib_per_core: f64,
    /// The broker pool's admission on each proxy replica: connects per
    /// second it sends to the nodes (0: no limit), as `max_connect_rate`.
    pub max_connect_rate: u32,
    /// Clients that may wait for admission on each replica, as
    /// `queue.size`.
    pub queue_size: u64,
    /// The longest wait for admission, as `queue.timeout` (seconds).
    pub queue_timeout_s: f64,
}

impl Default for Workload {
    /// The defaults of the flags.
    fn default() -> Workload {
        Workload {
            connections: 10_000,
            tls_share: 1.0,
            publish_rate: 0.0,
            fan_out: 1.0,
            pubsub: None,
            payload_bytes: 64,
            qos: Qos::AtMostOnce,
            new_connections_per_s: 10_000.0 / CHURN_PERIOD_S,
            new_connections_default: true,
            keep_alive_s: 60.0,
            headroom: 0.7,
            proxy_nodes: 2,
            broker_nodes: 3,
            gib_per_core: 4.0,
            max_connect_rate: 0,
            queue_size: to_u64(defaults::QUEUE_SIZE),
            queue_timeout_s: defaults::QUEUE_TIMEOUT.as_secs_f64(),
        }
    }
}

impl Workload {
    /// Messages delivered to subscribers per second.
    pub fn deliveries_per_s(&self) -> f64 {
        self.publish_rate * self.fan_out
    }

    /// PINGREQs per second, all clients together (as many PINGRESPs).
    pub fn pingreqs_per_s(&self) -> f64 {
        if self.keep_alive_s > 0.0 {
            to_f64(self.connections) / self.keep_alive_s
        } else {
            0.0
        }
    }
}
