//! The client roles of a bench run: connection holders (`conn`),
//! publishers, subscribers and handshake loops. Each role is one task per
//! client; all stop on the run's tokens and report into [`Run`].

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;

use super::net::Connector;
use super::outage::Watch;
use super::session::{Hello, OpenError, Session};
use super::stats::{
    Counters, ErrorKind, Latency, STAMP_LEN, SeqTracker, read_stamp, stamp, unix_ns,
};
use crate::mqtt::ProtocolVersion;
use crate::mqtt::codec::{AckKind, Packet, Properties, PublishPacket};

/// Samples a task gathers before taking the histogram lock.
const BATCH: usize = 256;

/// Everything the tasks of a run share.
pub struct Run {
    pub connector: Connector,
    pub protocol: ProtocolVersion,
    pub counters: Counters,
    pub connect_latency: Latency,
    pub message_latency: Latency,
    /// Publishers stop sending (and finish their acknowledgements).
    pub stop_publishing: CancellationToken,
    /// Every client stops.
    pub stop: CancellationToken,
    pub opts: RunOptions,
    /// Messages sent by each publisher id, filled in as publishers end.
    pub published: Mutex<HashMap<u32, (String, u64)>>,
    /// What each subscriber received, by publisher id, as subscribers end.
    pub received: Mutex<Vec<(String, HashMap<u32, SeqTracker>)>>,
    /// `conn --reconnect`: the run's outages.
    pub outages: Option<Watch>,
}

/// Per-client settings of a run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub client_id_prefix: String,
    pub clean: bool,
    pub keep_alive: Duration,
    pub connect_timeout: Duration,
    pub qos: u8,
    pub inflight: u16,
    pub payload: usize,
    pub rate: f64,
    pub messages: Option<u64>,
    pub topic: String,
    pub filter: String,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// `%i` in a topic pattern is the client's index.
pub fn expand(pattern: &str, index: usize) -> String {
    pattern.replace("%i", &index.to_string())
}

impl Run {
    /// Connect client `index` as `client_id`, timing TCP + TLS + CONNACK.
    async fn open(&self, index: usize, client_id: &str) -> Result<Session, OpenError> {
        let started = Instant::now();
        let io = self.connector.connect(index).await?;
        let o = &self.opts;
        let hello = Hello {
            client_id,
            clean: o.clean,
            keep_alive: o.keep_alive,
            username: o.username.as_deref(),
            password: o.password.as_deref(),
            session_expiry: (!o.clean).then_some(3600),
        };
        let s = Session::open(io, self.protocol, &hello, o.connect_timeout).await?;
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.connect_latency.record_all(&[us]);
        Counters::inc(&self.counters.connects);
        Ok(s)
    }

    /// Count a failure (and a refusing CONNACK's code).
    fn failed(&self, e: impl Into<OpenError>) {
        let OpenError { kind, connack } = e.into();
        self.counters.error(kind);
        if let Some(code) = connack {
            self.counters.refused_with(code);
        }
        if let Some(w) = &self.outages {
            w.failed(kind, connack);
        }
    }

    fn keepalive_timer(&self) -> tokio::time::Interval {
        let period = self.opts.keep_alive.max(Duration::from_secs(1));
        let mut t = tokio::time::interval_at(Instant::now() + period, period);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    }
}

/// Keep-alive bookkeeping: a PINGREQ every keep-alive period; a missing
/// PINGRESP by the next one is an error.
struct Pinger {
    timer: tokio::time::Interval,
    outstanding: bool,
}

impl Pinger {
    fn new(run: &Run) -> Pinger {
        Pinger {
            timer: run.keepalive_timer(),
            outstanding: false,
        }
    }

    /// Wait for the next keep-alive period.
    async fn due(&mut self) {
        self.timer.tick().await;
    }

    /// Send the PINGREQ that is due (and whatever else was queued).
    async fn ping(&mut self, s: &mut Session) -> Result<(), ErrorKind> {
        if self.outstanding {
            return Err(ErrorKind::NoAnswer);
        }
        self.outstanding = true;
        s.queue(&Packet::Pingreq);
        s.flush().await
    }

    fn answered(&mut self) {
        self.outstanding = false;
    }
}

/// `conn`: connect, then hold the connection with keep-alive pings.
pub async fn holder(run: Arc<Run>, index: usize) {
    let id = format!("{}c-{index}", run.opts.client_id_prefix);
    let mut s = match run.open(index, &id).await {
        Ok(s) => s,
        Err(e) => return run.failed(e),
    };
    Counters::inc(&run.counters.connected);
    let result = hold(&run, &mut s).await;
    end_session(&run, s, result).await;
}

/// Keep a session alive (PINGREQ at the keep-alive) until the run stops
/// (`Ok`) or the connection ends (`Err`). Other packets are read and
/// dropped: an MQTT 5 DISCONNECT (0x9C "use another server" from a
/// rebalance) is the server ending it, and the close follows.
async fn hold(run: &Run, s: &mut Session) -> Result<(), ErrorKind> {
    let mut pinger = Pinger::new(run);
    loop {
        tokio::select! {
            _ = run.stop.cancelled() => return Ok(()),
            _ = pinger.due() => {
                pinger.ping(s).await?;
            }
            p = s.next() => match p {
                Ok(Packet::Pingresp) => pinger.answered(),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// `conn --reconnect`: as [`holder`], but whenever the connection ends,
/// an attempt fails or a CONNACK refuses, connect again at once (no
/// back-off: the worst case of a device fleet) until the run stops.
/// Only a local limit (no source port, no descriptor) or a refused TCP
/// connect (nothing listens: no proxy, not a storm through one) waits
/// 10 ms, so the generator does not spin on them.
pub async fn reconnecting_holder(run: Arc<Run>, index: usize) {
    let id = format!("{}c-{index}", run.opts.client_id_prefix);
    let mut first = true;
    while !run.stop.is_cancelled() {
        if !first {
            Counters::inc(&run.counters.reconnects);
        }
        first = false;
        if let Some(w) = &run.outages {
            w.attempt();
        }
        let opened = tokio::select! {
            _ = run.stop.cancelled() => break,
            r = run.open(index, &id) => r,
        };
        let mut s = match opened {
            Ok(s) => s,
            Err(e) => {
                let pause = matches!(e.kind, ErrorKind::LocalLimit | ErrorKind::ConnectRefused);
                run.failed(e);
                if pause {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                } else {
                    tokio::task::yield_now().await;
                }
                continue;
            }
        };
        Counters::inc(&run.counters.connected);
        if let Some(w) = &run.outages {
            w.up();
        }
        let result = hold(&run, &mut s).await;
        run.counters
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(()) => {
                s.close().await;
                break;
            }
            Err(e) => {
                // A drop, counted as such: not a failed attempt of the outage.
                run.counters.error(e);
                Counters::inc(&run.counters.disconnected);
                if let Some(w) = &run.outages {
                    w.down();
                }
            }
        }
    }
}

async fn end_session(run: &Run, s: Session, result: Result<(), ErrorKind>) {
    run.counters
        .connected
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    match result {
        Ok(()) => s.close().await,
        Err(e) => {
            run.failed(e);
            Counters::inc(&run.counters.disconnected);
        }
    }
}

/// A publisher: `rate` stamped messages per second on its topic, at most
/// `inflight` unacknowledged (QoS 1/2), until told to stop; then it waits
/// for its outstanding acknowledgements.
pub async fn publisher(run: Arc<Run>, index: usize, publisher_id: u32) {
    let o = &run.opts;
    let id = format!("{}p-{index}", o.client_id_prefix);
    let topic = expand(&o.topic, index);
    let mut s = match run.open(index, &id).await {
        Ok(s) => s,
        Err(e) => {
            run.failed(e);
            record_published(&run, publisher_id, &topic, 0);
            return;
        }
    };
    Counters::inc(&run.counters.connected);
    let period = Duration::from_secs_f64(1.0 / o.rate.max(0.001));
    let mut ticks = interval(period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut pinger = Pinger::new(&run);
    let mut body = vec![0u8; o.payload.max(STAMP_LEN)];
    let mut seq: u64 = 0;
    let mut inflight: u16 = 0;
    let mut pkid: u16 = 0;
    let limit = o.messages.unwrap_or(u64::MAX);
    let result = loop {
        let sending = !run.stop_publishing.is_cancelled() && seq < limit;
        if !sending && inflight == 0 {
            break Ok(());
        }
        tokio::select! {
            _ = run.stop.cancelled() => break Ok(()),
            _ = run.stop_publishing.cancelled(), if sending => {}
            _ = ticks.tick(), if sending && (o.qos == 0 || inflight < o.inflight) => {
                stamp(&mut body, publisher_id, seq, unix_ns());
                let id = if o.qos == 0 {
                    0
                } else {
                    pkid = pkid.checked_add(1).unwrap_or(1);
                    inflight += 1;
                    pkid
                };
                s.queue(&Packet::Publish(PublishPacket {
                    dup: false,
                    qos: o.qos,
                    retain: false,
                    topic: topic.clone(),
                    pkid: id,
                    props: Properties::default(),
                    payload: Bytes::copy_from_slice(&body),
                }));
                if let Err(e) = s.flush().await { break Err(e) }
                seq += 1;
                Counters::inc(&run.counters.published);
            }
            _ = pinger.due() => {
                if let Err(e) = pinger.ping(&mut s).await { break Err(e) }
            }
            p = s.next() => match p {
                Ok(Packet::Ack { kind: AckKind::Puback | AckKind::Pubcomp, .. }) => {
                    inflight = inflight.saturating_sub(1);
                    Counters::inc(&run.counters.acked);
                }
                Ok(Packet::Ack { kind: AckKind::Pubrec, pkid, .. }) => {
                    s.queue(&Packet::Ack { kind: AckKind::Pubrel, pkid, code: 0, props: Properties::default() });
                    if let Err(e) = s.flush().await { break Err(e) }
                }
                Ok(Packet::Pingresp) => pinger.answered(),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        }
    };
    record_published(&run, publisher_id, &topic, seq);
    end_session(&run, s, result).await;
}

fn record_published(run: &Run, publisher_id: u32, topic: &str, sent: u64) {
    run.published
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(publisher_id, (topic.to_owned(), sent));
}

/// A subscriber: subscribes to its filter, then counts and times every
/// stamped message until the run stops.
pub async fn subscriber(run: Arc<Run>, index: usize) {
    let o = &run.opts;
    let id = format!("{}s-{index}", o.client_id_prefix);
    let filter = expand(&o.filter, index);
    let mut s = match run.open(index, &id).await {
        Ok(s) => s,
        Err(e) => return run.failed(e),
    };
    Counters::inc(&run.counters.connected);
    if let Err(e) = s.subscribe(&filter, o.qos, o.connect_timeout).await {
        run.failed(e);
        run.counters
            .connected
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        return;
    }
    Counters::inc(&run.counters.subscribed);
    let mut trackers: HashMap<u32, SeqTracker> = HashMap::new();
    let mut samples: Vec<u64> = Vec::with_capacity(BATCH);
    let mut pinger = Pinger::new(&run);
    let result = loop {
        tokio::select! {
            _ = run.stop.cancelled() => break Ok(()),
            _ = pinger.due() => {
                if let Err(e) = pinger.ping(&mut s).await { break Err(e) }
            }
            p = s.next() => match p {
                Ok(Packet::Publish(p)) => {
                    if let Some((publisher, seq, sent)) = read_stamp(&p.payload) {
                        trackers.entry(publisher).or_default().observe(seq);
                        samples.push(unix_ns().saturating_sub(sent) / 1000);
                        if samples.len() >= BATCH {
                            run.message_latency.record_all(&samples);
                            samples.clear();
                        }
                    }
                    Counters::inc(&run.counters.received);
                    let ack = match p.qos {
                        1 => Some(AckKind::Puback),
                        2 => Some(AckKind::Pubrec),
                        _ => None,
                    };
                    if let Some(kind) = ack {
                        s.queue(&Packet::Ack { kind, pkid: p.pkid, code: 0, props: Properties::default() });
                        if let Err(e) = s.flush().await { break Err(e) }
                    }
                }
                Ok(Packet::Ack { kind: AckKind::Pubrel, pkid, .. }) => {
                    s.queue(&Packet::Ack { kind: AckKind::Pubcomp, pkid, code: 0, props: Properties::default() });
                    if let Err(e) = s.flush().await { break Err(e) }
                }
                Ok(Packet::Pingresp) => pinger.answered(),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        }
    };
    run.message_latency.record_all(&samples);
    run.received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((filter, trackers));
    end_session(&run, s, result).await;
}

/// `handshake`: connect → (TLS) → CONNECT/CONNACK → DISCONNECT → close,
/// again and again until the run stops.
pub async fn handshake_loop(run: Arc<Run>, lane: usize, lanes: usize) {
    let mut n = 0usize;
    while !run.stop.is_cancelled() {
        let index = lane + n * lanes;
        n += 1;
        let id = format!("{}h-{lane}", run.opts.client_id_prefix);
        let done = tokio::select! {
            _ = run.stop.cancelled() => break,
            r = run.open(index, &id) => r,
        };
        match done {
            Ok(s) => {
                s.close().await;
                Counters::inc(&run.counters.handshakes);
            }
            Err(e) => {
                run.failed(e);
                // A refused or failing target: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
