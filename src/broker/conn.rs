//! One client connection of the broker, from accept to close.
//!
//! PROXY header (if configured) → CONNECT under `connect_timeout` → session
//! attach (takeover, clean start, resume with redelivery) → CONNACK → one
//! loop that `select!`s over: bytes from the client, room in the socket
//! for queued bytes, new deliveries in the session queue, the keep-alive
//! deadline, a kick (takeover, slow consumer) and shutdown → detach
//! (will, session expiry).
//!
//! Cancel-safety: every branch of the loop's `select!` is cancel safe —
//! `read_buf` and `write` on a TCP half either complete or do nothing,
//! `Notified`, `sleep_until` and `cancelled` only wait.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, field, info};

use super::metrics::{DropReason, Ended, Refusal};
use super::router::Sub;
use super::session::{
    Delivery, Inflight, NEVER_EXPIRES, PEER_PREFIX, Session, attach, kick, remove_session,
};
use super::{Broker, Message};
use crate::config::broker::ProxyIn;
use crate::mqtt::ProtocolVersion;
use crate::mqtt::codec::{
    self, AckKind, ConnectPacket, DecodeError, Packet, Properties, PublishPacket, Will,
};
use crate::mqtt::{rc, topic};

/// Stop pulling from the session queue while this much is unwritten.
const WRITE_HIGH_WATER: usize = 64 * 1024;
const READ_CHUNK: usize = 4 * 1024;
/// Stop reading from a client whose own acknowledgements (PUBACK, PUBREC,
/// SUBACK…) pile up unwritten: it is not reading, so it gets backpressure
/// instead of an unbounded write buffer.
const READ_PAUSE: usize = 256 * 1024;

/// How the client left.
enum End {
    /// DISCONNECT received (reason code).
    Disconnect(u8),
    /// Closed, errored, timed out, protocol error: the will is published.
    Abnormal(Ended),
    /// Kicked by the broker with this reason code.
    Kicked(u8),
}

pub async fn handle(
    broker: Arc<Broker>,
    tcp: TcpStream,
    addr: SocketAddr,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!(
        "mqtt",
        node = %broker.config.node_name,
        client.addr = %addr,
        proxied.addr = field::Empty,
        client_id = field::Empty
    );
    async move {
        let _ = tcp.set_nodelay(true);
        let (mut rd, mut wr) = tcp.into_split();
        let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
        let deadline = Instant::now() + broker.config.connect_timeout;
        let proxied = match read_proxy_header(&broker, &mut rd, &mut rbuf, deadline).await {
            Ok(p) => p,
            Err(reason) => {
                broker.metrics.rejected(reason);
                debug!(reason = reason.as_str(), "closed before CONNECT");
                return;
            }
        };
        let connect = match read_connect(&broker, &mut rd, &mut rbuf, deadline).await {
            Ok(c) => c,
            Err(reason) => {
                broker.metrics.rejected(reason);
                debug!(reason = reason.as_str(), "closed before CONNECT");
                return;
            }
        };
        let mut connect = *connect;
        if connect.client_id.starts_with(PEER_PREFIX)
            && !mesh_link_allowed(&broker, &connect, addr, &proxied)
        {
            broker.metrics.rejected(Refusal::MeshLinkNotAuthorized);
            info!("mesh link refused: wrong secret, unknown peer address, or behind a proxy");
            let code = if connect.protocol == ProtocolVersion::V5 {
                rc::NOT_AUTHORIZED
            } else {
                rc::v3::NOT_AUTHORIZED
            };
            let mut out = BytesMut::new();
            codec::encode(
                &connack(false, code, Properties::default()),
                connect.protocol,
                &mut out,
            );
            let _ = timeout(Duration::from_secs(1), wr.write_all(&out)).await;
            return;
        }
        if broker.config.cn_as_username {
            if let Some(cn) = proxied.cn {
                connect.username = Some(cn);
            }
        }
        run(broker, connect, rd, &mut wr, rbuf, shutdown).await;
    }
    .instrument(span)
    .await
}

/// What a PROXY header said.
#[derive(Debug, Default)]
struct Proxied {
    /// A header was present: the connection came through a proxy.
    present: bool,
    /// Client-certificate CN from a v2 SSL TLV.
    cn: Option<String>,
}

/// Mesh links authenticate with the mesh secret, or without one come
/// straight (no PROXY header) from a configured peer's IP address.
fn mesh_link_allowed(broker: &Broker, c: &ConnectPacket, addr: SocketAddr, p: &Proxied) -> bool {
    if p.present {
        return false;
    }
    match &broker.config.mesh_secret {
        Some(secret) => c.password.as_ref().is_some_and(|pw| secret.matches(pw)),
        None => broker
            .config
            .peers
            .iter()
            .any(|peer| peer.ip() == addr.ip()),
    }
}

/// Read an optional or required PROXY v1/v2 header (parsed by
/// `proxy_protocol::inbound`, as the proxy's listeners do). Bytes read
/// past it stay in `rbuf` for the CONNECT.
async fn read_proxy_header(
    broker: &Broker,
    rd: &mut OwnedReadHalf,
    rbuf: &mut BytesMut,
    deadline: Instant,
) -> Result<Proxied, Refusal> {
    use crate::proxy_protocol::inbound::{self, MAX_HEADER, Scan};
    let mode = broker.config.proxy_protocol;
    if mode == ProxyIn::Off {
        return Ok(Proxied::default());
    }
    loop {
        // mqttlb's own headers may carry a client certificate: the
        // protocol's own bound, not a listener's.
        match inbound::scan(rbuf, MAX_HEADER) {
            Scan::Absent => {
                return match mode {
                    ProxyIn::Required => Err(Refusal::ProxyHeaderMissing),
                    _ => Ok(Proxied::default()),
                };
            }
            Scan::Complete(len) => {
                let header = rbuf.get(..len).unwrap_or_default();
                let h = inbound::parse(header).map_err(|_| Refusal::ProxyHeaderInvalid)?;
                if let Some((source, _)) = h.addresses() {
                    tracing::Span::current().record("proxied.addr", field::display(source));
                }
                let cn = h.ssl_cn();
                rbuf.advance(len);
                return Ok(Proxied { present: true, cn });
            }
            Scan::Invalid(_) => return Err(Refusal::ProxyHeaderInvalid),
            Scan::Partial { .. } => {}
        }
        match timeout_at(deadline, rd.read_buf(rbuf)).await {
            Some(Ok(0)) | Some(Err(_)) => return Err(Refusal::ClosedBeforeConnect),
            Some(Ok(_)) => {}
            None => return Err(Refusal::ConnectTimeout),
        }
    }
}

async fn timeout_at<F: std::future::Future>(deadline: Instant, f: F) -> Option<F::Output> {
    tokio::time::timeout_at(deadline, f).await.ok()
}

async fn read_connect(
    broker: &Broker,
    rd: &mut OwnedReadHalf,
    rbuf: &mut BytesMut,
    deadline: Instant,
) -> Result<Box<ConnectPacket>, Refusal> {
    loop {
        match codec::frame_len(rbuf, broker.config.max_packet_size) {
            Ok(Some(n)) => {
                let frame = rbuf.split_to(n).freeze();
                return match codec::decode(frame, ProtocolVersion::V311) {
                    Ok(Packet::Connect(c)) => Ok(c),
                    Ok(_) => Err(Refusal::NotConnect),
                    Err(DecodeError::UnsupportedProtocol) => Err(Refusal::UnsupportedProtocol),
                    Err(_) => Err(Refusal::MalformedConnect),
                };
            }
            Ok(None) => {}
            Err(DecodeError::TooLarge { .. }) => return Err(Refusal::ConnectTooLarge),
            Err(_) => return Err(Refusal::MalformedConnect),
        }
        if rbuf.first().is_some_and(|&b| b != 0x10) {
            return Err(Refusal::NotConnect);
        }
        match timeout_at(deadline, rd.read_buf(rbuf)).await {
            Some(Ok(0)) | Some(Err(_)) => return Err(Refusal::ClosedBeforeConnect),
            Some(Ok(_)) => {}
            None => return Err(Refusal::ConnectTimeout),
        }
    }
}

/// Per-connection state of the loop.
struct Conn {
    broker: Arc<Broker>,
    session: Arc<Session>,
    generation: u64,
    protocol: ProtocolVersion,
    client_id: String,
    /// Client's receive maximum: our outbound QoS 1/2 window.
    client_receive_max: usize,
    client_max_packet: usize,
    /// Client → broker topic aliases.
    aliases: HashMap<u16, String>,
    wbuf: BytesMut,
    will: Option<Will>,
}

async fn run(
    broker: Arc<Broker>,
    connect: ConnectPacket,
    mut rd: OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    mut rbuf: BytesMut,
    shutdown: CancellationToken,
) {
    let protocol = connect.protocol;
    let v5 = protocol == ProtocolVersion::V5;
    let mut wbuf = BytesMut::new();

    // Client id: 3.x requires one for persistent sessions; 5.0 gets one.
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        if !v5 && !connect.clean {
            broker.metrics.rejected(Refusal::IdentifierRejected);
            codec::encode(
                &connack(false, rc::v3::IDENTIFIER_REJECTED, Properties::default()),
                protocol,
                &mut wbuf,
            );
            let _ = wr.write_all(&wbuf).await;
            return;
        }
        let id = broker.assign_client_id();
        assigned = Some(id.clone());
        id
    } else {
        connect.client_id.clone()
    };
    tracing::Span::current().record("client_id", client_id.as_str());
    if let Some(w) = &connect.will {
        if topic::validate_name(&w.topic).is_err() {
            broker.metrics.rejected(Refusal::BadWillTopic);
            // 3.1.1 has no code for a bad will topic; this refusal is the
            // one its clients treat as "do not retry as is".
            let code = if v5 {
                rc::TOPIC_NAME_INVALID
            } else {
                rc::v3::IDENTIFIER_REJECTED
            };
            codec::encode(
                &connack(false, code, Properties::default()),
                protocol,
                &mut wbuf,
            );
            let _ = wr.write_all(&wbuf).await;
            return;
        }
    }
    let expiry = if v5 {
        connect.props.session_expiry.unwrap_or(0)
    } else if connect.clean {
        0
    } else {
        NEVER_EXPIRES
    };

    let kick_token = CancellationToken::new();
    let kick_reason = Arc::new(AtomicU8::new(0));
    let (session, generation, session_present) = attach(
        &broker,
        &client_id,
        connect.clean,
        protocol,
        expiry,
        &kick_token,
        &kick_reason,
    );
    session.lock().username = connect.username.clone();

    let mut props = Properties::default();
    if v5 {
        props.receive_maximum = Some(broker.config.receive_maximum);
        props.topic_alias_maximum = Some(broker.config.topic_alias_maximum);
        props.maximum_packet_size =
            Some(u32::try_from(broker.config.max_packet_size).unwrap_or(u32::MAX));
        props.retain_available = Some(1);
        props.wildcard_sub_available = Some(1);
        props.sub_id_available = Some(1);
        props.shared_sub_available = Some(1);
        props.assigned_client_id = assigned;
    }
    codec::encode(&connack(session_present, 0, props), protocol, &mut wbuf);
    debug!(
        protocol = protocol.as_str(),
        clean = connect.clean,
        keep_alive = connect.keep_alive,
        session_present,
        "client connected"
    );

    let mut c = Conn {
        broker: broker.clone(),
        session: session.clone(),
        generation,
        protocol,
        client_id,
        client_receive_max: usize::from(connect.props.receive_maximum.unwrap_or(u16::MAX)),
        client_max_packet: connect
            .props
            .maximum_packet_size
            .map_or(usize::MAX, |m| m as usize),
        aliases: HashMap::new(),
        wbuf,
        will: connect.will,
    };
    c.redeliver();

    let keep_alive = (connect.keep_alive > 0).then(|| {
        Duration::from_secs_f64(f64::from(connect.keep_alive) * broker.config.keepalive_factor)
    });
    let mut last_heard = Instant::now();
    let far = Duration::from_secs(86400 * 365);
    let end = loop {
        c.fill();
        // Packets already buffered (pipelined after CONNECT, or several per
        // read) are handled before waiting again.
        match c.handle_buffered(&mut rbuf) {
            Ok(None) => {}
            Ok(Some(end)) => break end,
            Err(end) => break end,
        }
        let ka_deadline = last_heard + keep_alive.unwrap_or(far);
        tokio::select! {
            r = rd.read_buf(&mut rbuf), if c.wbuf.len() < READ_PAUSE => match r {
                Ok(0) => break End::Abnormal(Ended::Closed),
                Ok(_) => last_heard = Instant::now(),
                Err(_) => break End::Abnormal(Ended::ReadError),
            },
            r = wr.write(&c.wbuf), if !c.wbuf.is_empty() => match r {
                Ok(n) => c.wbuf.advance(n),
                Err(_) => break End::Abnormal(Ended::WriteError),
            },
            _ = session.notify.notified(), if c.wbuf.len() < WRITE_HIGH_WATER => {}
            _ = sleep_until(ka_deadline) => {
                c.disconnect_packet(rc::KEEP_ALIVE_TIMEOUT);
                break End::Abnormal(Ended::KeepAliveTimeout);
            }
            _ = kick_token.cancelled() => break End::Kicked(kick_reason.load(Ordering::Relaxed)),
            _ = shutdown.cancelled() => break End::Kicked(kick::SERVER_SHUTTING_DOWN),
        }
    };
    if let End::Kicked(code) = end {
        c.disconnect_packet(code);
    }
    // Best effort: flush what is queued (e.g. a DISCONNECT), bounded.
    if !c.wbuf.is_empty() {
        let _ = timeout(Duration::from_secs(1), wr.write_all(&c.wbuf)).await;
    }
    let _ = wr.shutdown().await;
    c.detach(end);
}

fn connack(session_present: bool, code: u8, props: Properties) -> Packet {
    Packet::Connack {
        session_present,
        code,
        props,
    }
}

impl Conn {
    fn v5(&self) -> bool {
        self.protocol == ProtocolVersion::V5
    }

    fn send(&mut self, p: &Packet) {
        codec::encode(p, self.protocol, &mut self.wbuf);
    }

    fn disconnect_packet(&mut self, code: u8) {
        if self.v5() {
            self.send(&Packet::Disconnect {
                code,
                props: Properties::default(),
            });
        }
    }

    /// On resume: resend unacknowledged PUBLISH (DUP) and PUBREL.
    fn redeliver(&mut self) {
        let inflight: Vec<(u16, Inflight)> = {
            let st = self.session.lock();
            st.inflight.iter().map(|(k, v)| (*k, v.clone())).collect()
        };
        for (pkid, f) in inflight {
            match f {
                Inflight::Publish(d) => {
                    let p = self.publish_packet(&d, pkid, true);
                    self.send(&p);
                }
                Inflight::Released => self.send(&Packet::ack(AckKind::Pubrel, pkid, 0)),
            }
        }
    }

    fn publish_packet(&self, d: &Delivery, pkid: u16, dup: bool) -> Packet {
        let mut props = if self.v5() {
            d.msg.props_now()
        } else {
            Properties::default()
        };
        if self.v5() {
            props.subscription_ids = d.sub_ids.clone();
        }
        Packet::Publish(PublishPacket {
            dup,
            qos: d.qos,
            retain: d.retain,
            topic: d.msg.topic.clone(),
            pkid,
            props,
            payload: d.msg.payload.clone(),
        })
    }

    /// Move deliveries from the session queue into the write buffer while
    /// the socket keeps up and the client's receive window allows.
    fn fill(&mut self) {
        while self.wbuf.len() < WRITE_HIGH_WATER {
            let next = {
                let mut st = self.session.lock();
                let window_full = st.inflight.len() >= self.client_receive_max;
                match st.queue.front() {
                    None => None,
                    Some(d) if d.qos > 0 && window_full => None,
                    Some(_) => {
                        let d = st.queue.pop_front();
                        d.map(|d| {
                            let pkid = if d.qos > 0 { st.next_pkid() } else { Some(0) };
                            if let Some(id) = pkid.filter(|id| *id > 0) {
                                st.inflight.insert(id, Inflight::Publish(d.clone()));
                            }
                            (d, pkid)
                        })
                    }
                }
            };
            let Some((d, pkid)) = next else { return };
            if d.msg.expired() {
                self.forget(pkid);
                self.broker.metrics.dropped(DropReason::Expired);
                continue;
            }
            let Some(pkid) = pkid else {
                self.broker.metrics.dropped(DropReason::NoPacketId);
                continue;
            };
            let p = self.publish_packet(&d, pkid, false);
            if self.client_max_packet != usize::MAX
                && codec::encoded_len(&p, self.protocol) > self.client_max_packet
            {
                self.forget(Some(pkid));
                self.broker.metrics.dropped(DropReason::TooLargeForClient);
                continue;
            }
            self.send(&p);
            self.broker.metrics.messages_sent.inc();
        }
    }

    fn forget(&self, pkid: Option<u16>) {
        if let Some(id) = pkid.filter(|id| *id > 0) {
            self.session.lock().inflight.remove(&id);
        }
    }

    /// Handle every complete packet in `rbuf`. `Ok(Some(end))` when the
    /// client disconnected; `Err(end)` on a protocol error.
    fn handle_buffered(&mut self, rbuf: &mut BytesMut) -> Result<Option<End>, End> {
        loop {
            let n = match codec::frame_len(rbuf, self.broker.config.max_packet_size) {
                Ok(Some(n)) => n,
                Ok(None) => return Ok(None),
                Err(DecodeError::TooLarge { .. }) => {
                    self.disconnect_packet(rc::PACKET_TOO_LARGE);
                    return Err(End::Abnormal(Ended::PacketTooLarge));
                }
                Err(_) => {
                    self.disconnect_packet(rc::MALFORMED_PACKET);
                    return Err(End::Abnormal(Ended::Malformed));
                }
            };
            let frame = rbuf.split_to(n).freeze();
            let packet = match codec::decode(frame, self.protocol) {
                Ok(p) => p,
                Err(DecodeError::MisplacedProperty(id)) => {
                    debug!(property = id, "property not allowed in this packet");
                    return Err(self.protocol_error(Ended::MisplacedProperty));
                }
                Err(e) => {
                    debug!(error = %e, "malformed packet");
                    self.disconnect_packet(rc::MALFORMED_PACKET);
                    return Err(End::Abnormal(Ended::Malformed));
                }
            };
            if let Some(end) = self.packet(packet)? {
                return Ok(Some(end));
            }
        }
    }

    fn protocol_error(&mut self, why: Ended) -> End {
        debug!(why = why.as_str(), "protocol error");
        self.disconnect_packet(rc::PROTOCOL_ERROR);
        End::Abnormal(why)
    }

    fn packet(&mut self, p: Packet) -> Result<Option<End>, End> {
        match p {
            Packet::Publish(p) => self.publish(p)?,
            Packet::Ack { kind, pkid, .. } => match kind {
                AckKind::Puback | AckKind::Pubcomp => {
                    self.session.lock().inflight.remove(&pkid);
                    self.session.notify.notify_one();
                }
                AckKind::Pubrec => {
                    let known = {
                        let mut st = self.session.lock();
                        match st.inflight.get_mut(&pkid) {
                            Some(f) => {
                                *f = Inflight::Released;
                                true
                            }
                            None => false,
                        }
                    };
                    let code = if known { 0 } else { 0x92 };
                    self.send(&Packet::ack(
                        AckKind::Pubrel,
                        pkid,
                        if self.v5() { code } else { 0 },
                    ));
                }
                AckKind::Pubrel => {
                    let known = self.session.lock().incoming_qos2.remove(&pkid);
                    let code = if known || !self.v5() { 0 } else { 0x92 };
                    self.send(&Packet::ack(AckKind::Pubcomp, pkid, code));
                }
            },
            Packet::Subscribe {
                pkid,
                filters,
                props,
            } => self.subscribe(pkid, filters, props.subscription_ids.first().copied()),
            Packet::Unsubscribe { pkid, filters, .. } => {
                let mut codes = Vec::with_capacity(filters.len());
                {
                    let mut st = self.session.lock();
                    let mut r = self.broker.router();
                    for f in &filters {
                        let existed = st.subscriptions.remove(f).is_some();
                        r.unsubscribe(&self.client_id, f);
                        codes.push(if existed {
                            rc::SUCCESS
                        } else {
                            rc::NO_SUBSCRIPTION_EXISTED
                        });
                    }
                }
                self.broker.update_gauges(self.broker.sessions().len());
                self.send(&Packet::Unsuback {
                    pkid,
                    codes,
                    props: Properties::default(),
                });
            }
            Packet::Pingreq => self.send(&Packet::Pingresp),
            Packet::Disconnect { code, props } => {
                if let Some(e) = props.session_expiry {
                    let mut st = self.session.lock();
                    // Zero on CONNECT cannot become non-zero on DISCONNECT
                    // [MQTT-3.14.2.2.2].
                    if st.expiry == 0 && e != 0 {
                        drop(st);
                        return Err(self.protocol_error(Ended::SessionExpiryRaised));
                    }
                    st.expiry = e;
                }
                return Ok(Some(End::Disconnect(code)));
            }
            Packet::Connect(_) => return Err(self.protocol_error(Ended::SecondConnect)),
            _ => return Err(self.protocol_error(Ended::UnexpectedPacket)),
        }
        Ok(None)
    }

    fn publish(&mut self, mut p: PublishPacket) -> Result<(), End> {
        self.broker.metrics.messages_received.inc();
        // A Subscription Identifier goes from server to client only
        // [MQTT-3.3.4-6].
        if !p.props.subscription_ids.is_empty() {
            return Err(self.protocol_error(Ended::MisplacedProperty));
        }
        if let Some(alias) = p.props.topic_alias.take() {
            if alias == 0 || alias > self.broker.config.topic_alias_maximum {
                self.disconnect_packet(rc::TOPIC_ALIAS_INVALID);
                return Err(End::Abnormal(Ended::TopicAliasInvalid));
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => return Err(self.protocol_error(Ended::UnknownTopicAlias)),
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        if topic::validate_name(&p.topic).is_err() {
            self.disconnect_packet(rc::TOPIC_NAME_INVALID);
            return Err(End::Abnormal(Ended::TopicNameInvalid));
        }
        match p.qos {
            0 => self.route(p),
            1 => {
                let pkid = p.pkid;
                self.route(p);
                self.send(&Packet::ack(AckKind::Puback, pkid, 0));
            }
            _ => {
                let pkid = p.pkid;
                let fresh = {
                    let mut st = self.session.lock();
                    if !st.incoming_qos2.contains(&pkid)
                        && st.incoming_qos2.len() >= usize::from(self.broker.config.receive_maximum)
                    {
                        None
                    } else {
                        Some(st.incoming_qos2.insert(pkid))
                    }
                };
                match fresh {
                    None => {
                        self.disconnect_packet(rc::RECEIVE_MAXIMUM_EXCEEDED);
                        return Err(End::Abnormal(Ended::ReceiveMaximumExceeded));
                    }
                    // A retransmission (DUP) of a QoS 2 message already
                    // routed: acknowledge again, do not deliver twice.
                    Some(false) => {}
                    Some(true) => self.route(p),
                }
                self.send(&Packet::ack(AckKind::Pubrec, pkid, 0));
            }
        }
        Ok(())
    }

    fn route(&self, p: PublishPacket) {
        self.broker.publish(Message::from_publish(
            p,
            Some(self.client_id.clone()),
            false,
        ));
    }

    fn subscribe(&mut self, pkid: u16, filters: Vec<(String, codec::SubOptions)>, id: Option<u32>) {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for (filter, opts) in filters {
            let shared = topic::parse_shared(&filter);
            let inner = match &shared {
                Ok(Some((_, inner))) => Some(*inner),
                Ok(None) => topic::validate_filter(&filter)
                    .ok()
                    .map(|()| filter.as_str()),
                Err(_) => None,
            };
            let Some(inner) = inner else {
                codes.push(if self.v5() {
                    rc::TOPIC_FILTER_INVALID
                } else {
                    rc::UNSPECIFIED_ERROR
                });
                continue;
            };
            if self
                .broker
                .config
                .deny_subscribe
                .iter()
                .any(|d| topic::matches(d, inner) || d == inner)
            {
                info!(filter = %filter, "subscription denied by configuration");
                codes.push(if self.v5() {
                    rc::NOT_AUTHORIZED
                } else {
                    rc::UNSPECIFIED_ERROR
                });
                continue;
            }
            let is_shared = matches!(shared, Ok(Some(_)));
            if is_shared && opts.no_local {
                codes.push(rc::PROTOCOL_ERROR);
                continue;
            }
            let existed = {
                let mut st = self.session.lock();
                st.subscriptions
                    .insert(filter.clone(), (opts, id))
                    .is_some()
            };
            self.broker
                .router()
                .subscribe(&self.client_id, &filter, Sub { opts, id });
            codes.push(opts.qos);
            let send_retained = !is_shared
                && match opts.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                };
            if send_retained {
                for m in self.broker.router().retained_for(inner) {
                    retained.push(Delivery {
                        qos: m.qos.min(opts.qos),
                        msg: m,
                        retain: true,
                        sub_ids: id.into_iter().collect(),
                    });
                }
            }
        }
        self.broker.update_gauges(self.broker.sessions().len());
        self.send(&Packet::Suback {
            pkid,
            codes,
            props: Properties::default(),
        });
        let cap = self.broker.config.max_queued_messages;
        for d in retained {
            if let super::session::Enqueued::Dropped(reason) = self.session.enqueue(d, cap) {
                self.broker.metrics.dropped(reason);
            }
        }
    }

    /// After the loop: will, then keep or drop the session.
    fn detach(self, end: End) {
        let (publish_will, how) = match &end {
            End::Disconnect(code) => (*code == rc::DISCONNECT_WITH_WILL, Ended::ClientDisconnect),
            End::Abnormal(why) => (true, *why),
            End::Kicked(code) => (
                *code != kick::SERVER_SHUTTING_DOWN,
                match *code {
                    kick::SESSION_TAKEN_OVER => Ended::TakenOver,
                    kick::QUOTA_EXCEEDED => Ended::SlowConsumer,
                    _ => Ended::ServerShutdown,
                },
            ),
        };
        self.broker.metrics.ended(how);
        debug!(reason = how.as_str(), "client disconnected");
        let broker = self.broker;
        let (still_ours, expiry) = {
            let mut st = self.session.lock();
            let ours = st
                .attached
                .as_ref()
                .is_some_and(|a| a.generation == self.generation);
            if ours {
                st.attached = None;
            }
            (ours, st.expiry)
        };
        if publish_will {
            if let Some(w) = self.will {
                let delay = w.props.will_delay.unwrap_or(0).min(expiry);
                let msg = will_message(w, &self.client_id);
                if delay == 0 || !still_ours {
                    broker.publish(msg);
                } else {
                    // MQTT 5 will delay: not sent if the session resumes
                    // before the delay runs out.
                    let session = self.session.clone();
                    let generation = self.generation;
                    let b = broker.clone();
                    broker.after(Duration::from_secs(u64::from(delay)), move || {
                        if session.lock().generation == generation {
                            b.publish(msg);
                        }
                    });
                }
            }
        }
        if !still_ours {
            return;
        }
        if expiry == 0 {
            remove_session(&broker, &self.session, self.generation);
        } else if expiry != NEVER_EXPIRES {
            let session = self.session.clone();
            let generation = self.generation;
            let b = broker.clone();
            broker.after(Duration::from_secs(u64::from(expiry)), move || {
                remove_session(&b, &session, generation);
            });
        }
    }
}

fn will_message(w: Will, client_id: &str) -> Message {
    let mut props = w.props;
    props.will_delay = None;
    Message {
        origin: Some(client_id.to_string()),
        ..Message::new(w.topic, w.payload, w.qos, w.retain).with_props(props)
    }
}
