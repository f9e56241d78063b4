//! How many times the relay wakes up for a workload (pure), and what that
//! costs.
//!
//! A relayed message does not have one price. Each time a socket becomes
//! readable the process pays for a wake-up: a read, a TLS record decrypted
//! (or encrypted), a write; and each time its thread has to be woken from
//! `epoll_wait` it pays a context switch on top. What arrives between two
//! wake-ups shares them. So 2,000 publishers at 5 msg/s cost more than 2
//! publishers at 5,000 msg/s: the first wake the proxy for every message,
//! the second hand it dozens per read. The model follows that mechanism:
//!
//! * **Streams.** Every connection reads packets in each direction: a
//!   publisher's PUBLISHes (client → broker) and their acknowledgements
//!   (broker → client), a subscriber's deliveries and its
//!   acknowledgements, every client's PINGREQ and PINGRESP.
//! * **Connection wake-ups.** A stream of `r` packets a second wakes its
//!   reader `r / (1 + r·τ)` times a second: what arrives within the
//!   stream's coalescing time `τ` of a wake-up is read with it. Slow
//!   streams wake once per packet; a fast one at most `1/τ` times.
//! * **Thread wake-ups.** `e` connection wake-ups a second on one thread
//!   wake the thread `e / (1 + e·τₜ)` times: a thread that is busy finds
//!   the next socket ready without sleeping.
//! * **Cost** = thread wake-ups × `thread_wakeup_cpu_us` + connection
//!   wake-ups × `wakeup_cpu_us` + packets × `packet_cpu_us` + payload
//!   bytes × `byte_cpu_ns`. At high batching the wake-up terms fade and
//!   the per-packet floor remains.
//!
//! The two coalescing times and the four costs are fitted to measured runs
//! by `mqttlb bench calibrate` ([`super::fit`]). The broker has the same
//! shape over the streams it reads (PUBLISHes, its subscribers'
//! acknowledgements, pings) with its own per-message costs.

use super::calibration::Wakeups;
use super::fit::Coalescing;
use super::num::to_f64;
use super::workload::Workload;

/// `n` connections each reading `rate` packets a second in one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stream {
    pub count: f64,
    pub rate: f64,
}

/// Wake-ups a second of one stream of `rate` packets a second.
pub fn stream_wakeups(rate: f64, tau: f64) -> f64 {
    if rate <= 0.0 {
        0.0
    } else {
        rate / (1.0 + rate * tau)
    }
}

/// The traffic of one node, split by who sends what.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Publishing connections on the node, and each one's PUBLISH rate.
    pub publishers: f64,
    pub publish_rate: f64,
    /// Subscribing connections on the node, and each one's delivery rate.
    pub subscribers: f64,
    pub delivery_rate: f64,
    /// Every connection on the node (publishers, subscribers, idle).
    pub connections: f64,
    /// Acknowledgement packets per PUBLISH exchange (0, 1 or 3).
    pub acks: f64,
    /// PINGREQs a second of each connection.
    pub ping_rate: f64,
    pub payload_bytes: f64,
    /// Whether the shape was given (publishers and subscribers) or assumed
    /// (every connection publishes and receives an equal share).
    pub given: bool,
}

impl Shape {
    /// The traffic of one of `live` nodes sharing `w` evenly.
    pub fn of(w: &Workload, live: u32) -> Shape {
        let k = f64::from(live.max(1));
        let n = to_f64(w.connections);
        let ping_rate = if w.keep_alive_s > 0.0 {
            1.0 / w.keep_alive_s
        } else {
            0.0
        };
        let base = Shape {
            publishers: 0.0,
            publish_rate: 0.0,
            subscribers: 0.0,
            delivery_rate: 0.0,
            connections: n / k,
            acks: w.qos.ack_packets(),
            ping_rate,
            payload_bytes: to_f64(w.payload_bytes),
            given: w.pubsub.is_some(),
        };
        match &w.pubsub {
            Some(ps) => Shape {
                publishers: to_f64(ps.publishers) / k,
                publish_rate: ps.rate_per_publisher,
                subscribers: to_f64(ps.subscribers) / k,
                // Each subscriber follows one of the topics, and each topic
                // carries an equal share of what is published.
                delivery_rate: w.publish_rate / to_f64(ps.topics.max(1)),
                ..base
            },
            // No shape given: every connection publishes and receives an
            // equal share, the most wake-ups the rates allow.
            None if n > 0.0 => Shape {
                publishers: n / k,
                publish_rate: w.publish_rate / n,
                subscribers: n / k,
                delivery_rate: w.deliveries_per_s() / n,
                ..base
            },
            None => base,
        }
    }

    /// PUBLISH packets a second published on this node.
    pub fn published(&self) -> f64 {
        self.publishers * self.publish_rate
    }

    /// Deliveries a second to this node's subscribers.
    pub fn delivered(&self) -> f64 {
        self.subscribers * self.delivery_rate
    }

    /// PINGREQs a second (as many PINGRESPs).
    pub fn pings(&self) -> f64 {
        self.connections * self.ping_rate
    }

    /// What the proxy reads: both directions of every connection.
    pub fn proxy_streams(&self) -> [Stream; 6] {
        let a = self.acks;
        [
            Stream {
                count: self.publishers,
                rate: self.publish_rate,
            },
            Stream {
                count: self.publishers,
                rate: a * self.publish_rate,
            },
            Stream {
                count: self.subscribers,
                rate: self.delivery_rate,
            },
            Stream {
                count: self.subscribers,
                rate: a * self.delivery_rate,
            },
            // PINGREQ from the client, PINGRESP from the broker.
            Stream {
                count: self.connections,
                rate: self.ping_rate,
            },
            Stream {
                count: self.connections,
                rate: self.ping_rate,
            },
        ]
    }

    /// What the broker reads: PUBLISHes, its subscribers'
    /// acknowledgements, pings (deliveries and PUBACKs to publishers are
    /// written in the wake-up of the packet that caused them).
    pub fn broker_streams(&self) -> [Stream; 3] {
        [
            Stream {
                count: self.publishers,
                rate: self.publish_rate,
            },
            Stream {
                count: self.subscribers,
                rate: self.acks * self.delivery_rate,
            },
            Stream {
                count: self.connections,
                rate: self.ping_rate,
            },
        ]
    }

    /// Packets a second the proxy relays (both directions).
    pub fn proxy_packets(&self) -> f64 {
        (self.published() + self.delivered()) * (1.0 + self.acks) + 2.0 * self.pings()
    }

    /// Payload bytes a second the proxy relays.
    pub fn proxy_bytes(&self) -> f64 {
        (self.published() + self.delivered()) * self.payload_bytes
    }
}

/// Wake-ups a second of a set of streams served by `threads` threads.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WakeupRates {
    /// Connection wake-ups (a socket read with what it had).
    pub connection: f64,
    /// Thread wake-ups (a thread woken from waiting for sockets).
    pub thread: f64,
}

/// The wake-ups of `streams` on `threads` threads that are busy
/// `busy_cores` CPU-seconds a second together: the socket wake-ups are
/// shared evenly; each thread is woken `e / (1 + e·τₜ)` times for its
/// share `e`, but only while it is idle: a thread busy a share `ρ` of the
/// time finds `ρ` of its wake-ups already awake.
pub fn wakeup_rates(
    streams: &[Stream],
    c: Coalescing,
    threads: f64,
    busy_cores: f64,
) -> WakeupRates {
    let connection: f64 = streams
        .iter()
        .map(|s| s.count * stream_wakeups(s.rate, c.stream))
        .sum();
    let threads = threads.max(1.0);
    let idle = (1.0 - busy_cores / threads).clamp(0.0, 1.0);
    WakeupRates {
        connection,
        thread: threads * stream_wakeups(connection / threads, c.thread) * idle,
    }
}

impl Wakeups {
    pub fn coalescing(&self) -> Coalescing {
        Coalescing {
            stream: self.coalesce_us / 1e6,
            thread: self.thread_coalesce_us / 1e6,
        }
    }

    /// CPU-µs a second of the wake-ups, the background and the
    /// connections held.
    pub fn cpu_us(&self, r: WakeupRates, connections: f64) -> f64 {
        self.background_cpu_us_per_s
            + r.thread * self.thread_wakeup_cpu_us
            + r.connection * self.wakeup_cpu_us
            + connections * self.connection_cpu_us_per_s
    }
}

/// Socket wake-ups a second of `streams` at a stream coalescing time (s).
pub fn socket_wakeups(streams: &[Stream], stream_tau: f64) -> f64 {
    streams
        .iter()
        .map(|x| x.count * stream_wakeups(x.rate, stream_tau))
        .sum()
}

/// The proxy's features for the cost fit, one thread (the calibration's
/// setup) with `thread_wakeups` measured: one (the background, per
/// second), thread wake-ups, socket wake-ups, connections held, packets,
/// payload KB (1,000 bytes, so the cost is in ns per byte).
pub fn proxy_features(s: &Shape, stream_tau: f64, thread_wakeups: f64) -> Vec<f64> {
    vec![
        1.0,
        thread_wakeups,
        socket_wakeups(&s.proxy_streams(), stream_tau),
        s.connections,
        s.proxy_packets(),
        s.proxy_bytes() / 1000.0,
    ]
}

/// The broker's features: one, thread wake-ups, socket wake-ups,
/// publishes in (pings counted as one), deliveries (PINGRESPs counted as
/// one), acknowledgement packets.
pub fn broker_features(s: &Shape, stream_tau: f64, thread_wakeups: f64) -> Vec<f64> {
    vec![
        1.0,
        thread_wakeups,
        socket_wakeups(&s.broker_streams(), stream_tau),
        s.published() + s.pings(),
        s.delivered() + s.pings(),
        s.acks * (s.published() + s.delivered()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::estimate::workload::{PubSub, Qos};

    fn pubsub(publishers: u64, subscribers: u64, rate: f64, topics: u64) -> Workload {
        Workload {
            connections: 2002,
            publish_rate: to_f64(publishers) * rate,
            fan_out: to_f64(subscribers) / to_f64(topics),
            pubsub: Some(PubSub {
                publishers,
                subscribers,
                rate_per_publisher: rate,
                topics,
            }),
            keep_alive_s: 0.0,
            ..Workload::default()
        }
    }

    #[test]
    fn slow_streams_wake_per_packet_fast_ones_are_bounded() {
        assert_eq!(stream_wakeups(0.0, 1e-3), 0.0);
        assert!((stream_wakeups(1.0, 1e-3) - 1.0).abs() < 1e-3);
        assert!(stream_wakeups(1e6, 1e-3) < 1000.0);
        assert!(stream_wakeups(1e6, 1e-3) > 999.0);
    }

    #[test]
    fn same_rate_different_shapes_different_wakeups() {
        // 4,000 msg/s either way, two subscribers receiving everything.
        let many = Shape::of(&pubsub(2000, 2, 2.0, 1), 1);
        let few = Shape::of(&pubsub(2, 2, 2000.0, 1), 1);
        assert_eq!(many.proxy_packets(), few.proxy_packets());
        // Many slow publishers: ~one wake-up per PUBLISH; few fast: a
        // few hundred per connection.
        let (wm, wf) = (
            socket_wakeups(&many.proxy_streams(), 1e-3),
            socket_wakeups(&few.proxy_streams(), 1e-3),
        );
        assert!(wm > 4000.0, "{wm}");
        assert!(wf < 3000.0, "{wf}");
    }

    #[test]
    fn a_shape_is_assumed_when_not_given() {
        let w = Workload {
            connections: 1000,
            publish_rate: 2000.0,
            fan_out: 2.0,
            keep_alive_s: 0.0,
            qos: Qos::AtLeastOnce,
            ..Workload::default()
        };
        let s = Shape::of(&w, 2);
        assert!(!s.given);
        assert_eq!(s.publishers, 500.0);
        assert_eq!(s.published(), 1000.0);
        assert_eq!(s.delivered(), 2000.0);
        assert_eq!(s.proxy_packets(), 6000.0);
    }

    #[test]
    fn busy_threads_are_woken_less() {
        let c = Coalescing {
            stream: 0.0,
            thread: 1e-4,
        };
        let s = [Stream {
            count: 10_000.0,
            rate: 1.0,
        }];
        let idle = wakeup_rates(&s, c, 1.0, 0.0);
        let busy = wakeup_rates(&s, c, 1.0, 0.5);
        assert_eq!(idle.connection, busy.connection);
        assert!((busy.thread - idle.thread / 2.0).abs() < 1e-9);
        // Four threads share the socket wake-ups: each is less busy, so
        // sleeps, and is woken, more often.
        let four = wakeup_rates(&s, c, 4.0, 0.0);
        assert!(four.thread > idle.thread);
        assert_eq!(wakeup_rates(&s, c, 1.0, 2.0).thread, 0.0);
    }
}
