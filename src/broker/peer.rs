//! Mesh links: this node subscribes to everything its peers' own clients
//! publish.
//!
//! A link is an ordinary MQTT 5 client connection to a peer's listener,
//! client id `$mqttlb-peer/<node name>`, subscribed to `#` at QoS 2 with
//! "retain as published". The peer recognises the prefix and sends over
//! that session only messages its own clients published (never ones that
//! came from another link), so in a full mesh every message reaches every
//! node exactly once and never loops. Messages arriving on the link are
//! published locally as if a local client had sent them, and retained
//! flags carry retained updates (and clears) across. The subscription's
//! initial retained delivery syncs the peer's retained store on connect.
//!
//! Guarantees, honestly: while a link is up, QoS 1/2 messages cross it
//! with their QoS (acknowledged per hop). The link session is not
//! persistent: messages queued for a link, or in flight on it, when it
//! drops are lost for the subscribers on the other node, and messages
//! published while it is down are not replayed (retained ones are, on
//! reconnect). `$`-topics are node-local. Shared subscription groups are
//! per node: a group with members on two nodes gets a message once per
//! node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::session::PEER_PREFIX;
use super::{Broker, Message};
use crate::mqtt::ProtocolVersion;
use crate::mqtt::codec::{
    self, AckKind, ConnectPacket, Packet, Properties, PublishPacket, SubOptions,
};

const KEEP_ALIVE: u16 = 30;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// Keep a link to `peer` up until `shutdown`, reconnecting with backoff.
pub async fn run(broker: Arc<Broker>, peer: SocketAddr, shutdown: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = link(&broker, peer) => r,
        };
        match result {
            Ok(()) => info!(%peer, "peer link closed"),
            Err(e) => warn!(%peer, error = %e, retry_in = ?backoff, "peer link down"),
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(broker.config.peer_reconnect_max);
    }
}

#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("peer refused the link (CONNACK {0:#04x})")]
    Refused(u8),
    #[error("protocol error from peer: {0}")]
    Protocol(String),
    #[error("peer silent for too long")]
    Silent,
}

async fn link(broker: &Broker, peer: SocketAddr) -> Result<(), LinkError> {
    let mut tcp = timeout(Duration::from_secs(5), TcpStream::connect(peer))
        .await
        .map_err(|_| LinkError::Silent)??;
    let _ = tcp.set_nodelay(true);
    let mut out = BytesMut::new();
    let connect = ConnectPacket {
        protocol: V5,
        clean: true,
        keep_alive: KEEP_ALIVE,
        client_id: format!("{PEER_PREFIX}{}", broker.config.node_name),
        will: None,
        username: None,
        password: broker
            .config
            .mesh_secret
            .as_ref()
            .map(|s| bytes::Bytes::from(s.0.clone().into_bytes())),
        props: Properties {
            receive_maximum: Some(broker.config.receive_maximum),
            maximum_packet_size: Some(
                u32::try_from(broker.config.max_packet_size).unwrap_or(u32::MAX),
            ),
            ..Properties::default()
        },
    };
    codec::encode(&Packet::Connect(Box::new(connect)), V5, &mut out);
    codec::encode(
        &Packet::Subscribe {
            pkid: 1,
            filters: vec![(
                "#".to_string(),
                SubOptions {
                    qos: 2,
                    no_local: false,
                    retain_as_published: true,
                    retain_handling: 0,
                },
            )],
            props: Properties::default(),
        },
        V5,
        &mut out,
    );
    tcp.write_all(&out).await?;
    out.clear();

    let mut rbuf = BytesMut::with_capacity(4096);
    let mut up = UpGauge {
        gauge: &broker.metrics.peer_links_up,
        up: false,
    };
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE) / 2));
    loop {
        while let Some(n) = codec::frame_len(&rbuf, broker.config.max_packet_size)
            .map_err(|e| LinkError::Protocol(e.to_string()))?
        {
            let frame = rbuf.split_to(n).freeze();
            let packet =
                codec::decode(frame, V5).map_err(|e| LinkError::Protocol(e.to_string()))?;
            match packet {
                Packet::Connack { code: 0, .. } | Packet::Pingresp => {}
                Packet::Connack { code, .. } => return Err(LinkError::Refused(code)),
                // Up once the peer holds our subscription: from then on
                // everything its clients publish reaches us.
                Packet::Suback { codes, .. } if codes.first().is_some_and(|c| *c <= 2) => {
                    up.set();
                    info!(%peer, "peer link up");
                }
                Packet::Suback { codes, .. } => {
                    return Err(LinkError::Protocol(format!(
                        "peer refused the subscription: {codes:02x?}"
                    )));
                }
                Packet::Publish(p) => on_publish(broker, p, &mut out),
                Packet::Ack {
                    kind: AckKind::Pubrel,
                    pkid,
                    ..
                } => codec::encode(&Packet::ack(AckKind::Pubcomp, pkid, 0), V5, &mut out),
                Packet::Disconnect { code, .. } => {
                    return Err(LinkError::Protocol(format!("DISCONNECT {code:#04x}")));
                }
                other => return Err(LinkError::Protocol(format!("unexpected {other:?}"))),
            }
        }
        if !out.is_empty() {
            tcp.write_all(&out).await?;
            out.clear();
        }
        tokio::select! {
            r = tcp.read_buf(&mut rbuf) => {
                if r? == 0 {
                    return if up.up { Ok(()) } else { Err(LinkError::Protocol("closed before CONNACK".into())) };
                }
                last_heard = Instant::now();
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > Duration::from_secs(u64::from(KEEP_ALIVE) * 2) {
                    return Err(LinkError::Silent);
                }
                codec::encode(&Packet::Pingreq, V5, &mut out);
            }
        }
    }
}

/// Publish locally what a peer's client published there, and acknowledge.
fn on_publish(broker: &Broker, p: PublishPacket, out: &mut BytesMut) {
    broker.metrics.messages_received.inc();
    let (qos, pkid) = (p.qos, p.pkid);
    // QoS 2 is delivered on PUBLISH (method A): a retransmission after a
    // dropped link is a new link session, so no id can repeat within one.
    broker.publish(Message::from_publish(p, None, true));
    match qos {
        1 => codec::encode(&Packet::ack(AckKind::Puback, pkid, 0), V5, out),
        2 => codec::encode(&Packet::ack(AckKind::Pubrec, pkid, 0), V5, out),
        _ => {}
    }
}

/// Counts a link in `peer_links_up` from CONNACK until it ends.
struct UpGauge<'a> {
    gauge: &'a prometheus_client::metrics::gauge::Gauge,
    up: bool,
}

impl UpGauge<'_> {
    fn set(&mut self) {
        if !self.up {
            self.up = true;
            self.gauge.inc();
        }
    }
}

impl Drop for UpGauge<'_> {
    fn drop(&mut self) {
        if self.up {
            self.gauge.dec();
        }
    }
}
