//! One client connection, from accept to close:
//!
//! TLS handshake (deadline) → read the MQTT CONNECT (deadline, size cap) →
//! choose a backend (strategy over the healthy set) → PROXY header +
//! buffered CONNECT → wait for the node's CONNACK (deadline; none, a close
//! or "server unavailable" → the next candidate gets the same bytes and the
//! node's miss counts towards its health) → forward the CONNACK → splice
//! both ways (idle timeout from the client's keep-alive) → close.
//!
//! When no backend can take an MQTT client, it reads a CONNACK "server
//! unavailable" rather than a bare reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::{Instrument, Span, debug, field, info, warn};

mod refusal;

use super::ListenerCtx;
use super::splice::{Kick, SpliceEnd, SpliceError, splice};
use super::websocket;
use crate::balance::{ActiveGuard, Backend, Pool};
use crate::config::{
    ClientIdMatch, HashKey, MqttListenerConfig, ProxyProtocol, WebSocketConfig, WsForward,
};
use crate::metrics::{Disconnect, HandshakeResult};
use crate::mqtt::framing::FrameTracker;
use crate::mqtt::packets::{ConnackHead, ConnackVerdict, connack_head, connack_verdict};
use crate::mqtt::{Peek, ProtocolVersion, peek_connect};
use crate::proxy_protocol as header;
use crate::ratelog::LogLimiter;
use crate::tls::TlsInfo;
use refusal::Refusal;

/// First read size while waiting for a CONNECT: most CONNECTs are far
/// smaller, and the parser asks for exactly what is missing after that.
const INITIAL_CONNECT_READ: usize = 256;
/// Read size while waiting for a broker's CONNACK: its head needs at most 7
/// bytes; a broker may send queued messages right behind it, which the
/// splice carries on with.
const CONNACK_READ: usize = 512;

/// What routing learned from the client before choosing a backend.
struct ClientHello {
    /// Bytes read from the client (the CONNECT and anything pipelined after
    /// it), forwarded verbatim to the backend.
    buffered: Vec<u8>,
    protocol: Option<ProtocolVersion>,
    key: Option<Vec<u8>>,
    idle: Duration,
    /// Hash of the client id (for `limits.client_connect_rate`).
    client: Option<u64>,
    /// `listener.mqtt.client_id_match` refuses this client.
    mismatch: bool,
}

/// Handle one accepted TCP connection. Runs inside its own task.
pub async fn handle(ctx: Arc<ListenerCtx>, tcp: TcpStream, peer: SocketAddr, conn_id: u64) {
    let span = tracing::info_span!(
        "conn",
        id = conn_id,
        client.addr = %peer,
        listener = %ctx.name,
        client_id = field::Empty,
        backend = field::Empty,
    );
    async move {
        let _ = tcp.set_nodelay(true);
        // The local address only goes into a PROXY header: skip the
        // getsockname(2) when no header is sent.
        let local = if ctx.pool.proxy_protocol == ProxyProtocol::Off {
            ctx.local_addr
        } else {
            tcp.local_addr().unwrap_or(ctx.local_addr)
        };
        match &ctx.tls {
            None => {
                let mut tcp = tcp;
                serve(&ctx, &mut tcp, peer, local, None, conn_id).await
            }
            Some(acceptor) => {
                // Boxed: the handshake's state (rustls's handshake
                // buffers, the acceptor futures) lives on the heap only
                // while it runs, not in every connection's task for its
                // whole life. A refused handshake ends there too: it took
                // the socket, so nothing is left to answer on (its
                // refusals answer nothing); awaited out here, its result
                // would stay in every connection's state.
                let handshake = Box::pin(async {
                    match tls_handshake(&ctx, acceptor, tcp).await {
                        Ok(done) => Some(done),
                        Err(refusal) => {
                            refuse(&ctx, &mut tokio::io::sink(), refusal).await;
                            None
                        }
                    }
                });
                let Some((mut stream, info)) = handshake.await else {
                    return;
                };
                serve(&ctx, &mut stream, peer, local, Some(&info), conn_id).await
            }
        }
    }
    .instrument(span)
    .await
}

/// The TLS handshake under its deadline; failures are logged here.
async fn tls_handshake(
    ctx: &ListenerCtx,
    acceptor: &crate::tls::TlsAcceptor,
    tcp: TcpStream,
) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, TlsInfo), Refusal> {
    let started = Instant::now();
    match timeout(
        ctx.limits.tls_handshake_timeout,
        acceptor.accept(tcp, ctx.identity),
    )
    .await
    {
        Err(_) => {
            ctx.metrics.handshake(HandshakeResult::Timeout);
            debug!("TLS handshake timed out");
            Err(Refusal::TlsTimeout)
        }
        Ok(Err(crate::tls::HandshakeError::Tls(e))) => {
            ctx.metrics.handshake(HandshakeResult::Failed);
            if crate::tls::client_chain::refused_chain(&e) {
                static CHAINS: LogLimiter = crate::ratelog::per_kind();
                if let Some(suppressed) = CHAINS.allow() {
                    info!(error = %e, suppressed, "client certificate chain refused before verification");
                }
                Err(Refusal::ClientChain)
            } else {
                debug!(error = %e, "TLS handshake failed");
                Err(Refusal::TlsFailed)
            }
        }
        Ok(Ok(done)) => {
            ctx.metrics.handshake(HandshakeResult::Ok);
            ctx.metrics
                .handshake_duration
                .observe(started.elapsed().as_secs_f64());
            Ok(done)
        }
    }
}

/// After the TLS handshake (if any): straight to MQTT, or through the
/// WebSocket upgrade first. The stream is borrowed: it lives once, in the
/// connection task (an async fn that takes it by value stores it twice,
/// rust-lang/rust#62958: +1.2 KiB per idle TLS connection, measured).
async fn serve<S>(
    ctx: &ListenerCtx,
    stream: &mut S,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<&TlsInfo>,
    conn_id: u64,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match &ctx.websocket {
        None => serve_client(ctx, stream, peer, local, tls, conn_id, Vec::new()).await,
        // Boxed: the WebSocket path's state (the frame codec, and a second
        // instance of `serve_client` over it) is larger than the plain
        // path's, and an async fn is as large as its largest state; on the
        // heap, only WebSocket connections pay for it.
        Some(ws) => Box::pin(serve_websocket(ctx, ws, stream, peer, local, tls, conn_id)).await,
    }
}

/// The WebSocket upgrade, then MQTT inside it (`to = "tcp"`) or the
/// forwarded WebSocket (`to = "ws"`).
async fn serve_websocket<S>(
    ctx: &ListenerCtx,
    ws: &WebSocketConfig,
    stream: &mut S,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<&TlsInfo>,
    conn_id: u64,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let upgrade = match timeout(ws.upgrade_timeout, websocket::read_upgrade(stream, ws)).await {
        Ok(Ok(upgrade)) => upgrade,
        Ok(Err(refusal)) => {
            static REFUSED: LogLimiter = crate::ratelog::per_kind();
            if let Some(suppressed) = REFUSED.allow() {
                info!(reason = %refusal, suppressed, "WebSocket upgrade refused");
            }
            return refuse(ctx, stream, Refusal::Upgrade(refusal)).await;
        }
        Err(_) => {
            debug!(timeout = ?ws.upgrade_timeout, "no complete WebSocket upgrade request before the deadline");
            return refuse(ctx, stream, Refusal::UpgradeTimeout).await;
        }
    };
    match ws.to {
        // The broker answers the upgrade: it gets the request as it came.
        WsForward::Ws => serve_client(ctx, stream, peer, local, tls, conn_id, upgrade.bytes).await,
        WsForward::Tcp => {
            let answered = timeout(ws.upgrade_timeout, async {
                stream
                    .write_all(&websocket::accept_response(&upgrade))
                    .await?;
                stream.flush().await
            })
            .await;
            if !matches!(answered, Ok(Ok(()))) {
                debug!("client left before its WebSocket upgrade was answered");
                return;
            }
            let mut early = upgrade.bytes;
            early.drain(..upgrade.head_len);
            let mut io = websocket::WsIo::new(stream, early, ws).await;
            serve_client(ctx, &mut io, peer, local, tls, conn_id, Vec::new()).await
        }
    }
}

/// Everything after the handshake. Takes the client stream by reference
/// so that it lives once, in the connection task, not again inside this
/// future.
async fn serve_client<S>(
    ctx: &ListenerCtx,
    client: &mut S,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<&TlsInfo>,
    conn_id: u64,
    // Pass-through listeners: bytes already read from the client (a
    // forwarded WebSocket upgrade request).
    preread: Vec<u8>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = match &ctx.mqtt {
        Some(mqtt) => match read_connect(ctx, mqtt, client, tls).await {
            Ok(h) => h,
            Err(refusal) => return refuse(ctx, client, refusal).await,
        },
        None => ClientHello {
            buffered: preread,
            protocol: None,
            key: None,
            idle: ctx.limits.idle_timeout,
            client: None,
            mismatch: false,
        },
    };
    if let (true, Some(protocol)) = (hello.mismatch, hello.protocol) {
        static MISMATCH: LogLimiter = crate::ratelog::per_kind();
        if let Some(suppressed) = MISMATCH.allow() {
            info!(
                cert.cn = tls.and_then(|t| t.client_cn.as_deref()).unwrap_or(""),
                suppressed, "client id not named by the client certificate; refused"
            );
        }
        return refuse(ctx, client, Refusal::ClientIdMismatch(protocol)).await;
    }
    if let (Some(id), Some(protocol)) = (hello.client, hello.protocol) {
        if !ctx.state.client_limit.admit(&id) {
            // Refused before any broker is touched.
            static STORMS: LogLimiter = crate::ratelog::per_kind();
            if let Some(suppressed) = STORMS.allow() {
                info!(suppressed, "client id reconnects too often; refused");
            }
            return refuse(ctx, client, Refusal::ClientRateLimit(protocol)).await;
        }
    }

    // One write per attempt: PROXY header followed by the bytes already
    // read. Built once; every candidate gets the same bytes.
    let mut first = Vec::with_capacity(128 + hello.buffered.len());
    header::encode(
        ctx.pool.proxy_protocol,
        peer,
        local,
        tls,
        &ctx.pool.identity,
        &unique_id(ctx.instance_nonce, conn_id),
        &mut first,
    );
    first.extend_from_slice(&hello.buffered);
    let client_bytes = hello.buffered.len() as u64;
    drop(hello.buffered);

    let Some(placed) = place(ctx, &first, hello.protocol, hello.key.as_deref()).await else {
        static NONE_UP: LogLimiter = crate::ratelog::per_kind();
        if let Some(suppressed) = NONE_UP.allow() {
            warn!(pool = %ctx.pool.name, suppressed, "no backend available");
        }
        return refuse(ctx, client, Refusal::NoBackend(hello.protocol)).await;
    };
    drop(first);
    let Placed {
        backend,
        stream: mut upstream,
        active: _active,
        answer,
    } = placed;
    Span::current().record("backend", backend.name.as_str());
    // The client's bytes read before routing count as upstream traffic too.
    ctx.metrics.upstream_bytes.inc_by(client_bytes);

    // The broker's answer (its CONNACK, and whatever it sent right after)
    // goes to the client before the splice; the frame tracker learns where
    // the stream stands so a drain kick still lands on a packet boundary.
    let mut downstream = FrameTracker::default();
    if !answer.is_empty() {
        downstream.advance(&answer, false);
        let forwarded = timeout(ctx.pool.connack_timeout, async {
            client.write_all(&answer).await?;
            client.flush().await
        })
        .await;
        if !matches!(forwarded, Ok(Ok(()))) {
            debug!("client left before its CONNACK was forwarded");
            return;
        }
        ctx.metrics.downstream_bytes.inc_by(answer.len() as u64);
    }
    drop(answer);

    // MQTT 5 clients can be asked to move when their backend drains.
    let kickable = (hello.protocol == Some(ProtocolVersion::V5)).then(|| backend.kickable(conn_id));
    let started = Instant::now();
    let (result, moved) = splice(
        client,
        &mut upstream,
        hello.idle,
        ctx.metrics.upstream_bytes.clone(),
        ctx.metrics.downstream_bytes.clone(),
        kickable.as_ref().map(|k| Kick {
            token: k.token(),
            packet: crate::mqtt::packets::DISCONNECT_USE_ANOTHER_SERVER,
            downstream,
        }),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    let how = match result {
        Ok(SpliceEnd::Closed) => {
            debug!(up = moved.upstream, down = moved.downstream, secs, "closed");
            Disconnect::Closed
        }
        Ok(SpliceEnd::Kicked) => {
            info!(
                up = moved.upstream,
                down = moved.downstream,
                "drain: client sent DISCONNECT \"use another server\""
            );
            Disconnect::Drained
        }
        Ok(SpliceEnd::Idle) => {
            debug!(up = moved.upstream, down = moved.downstream, idle = ?hello.idle, "idle timeout");
            Disconnect::IdleTimeout
        }
        Err(SpliceError::Client(e)) => {
            debug!(error = %e, "client connection error");
            Disconnect::ClientError
        }
        Err(SpliceError::Backend(e)) => {
            info!(error = %e, "backend connection error");
            Disconnect::BackendError
        }
    };
    ctx.metrics.closed(how);
}

/// Every refused connection ends here: counted under its reason, and the
/// client given its answer.
async fn refuse<S>(ctx: &ListenerCtx, client: &mut S, refusal: Refusal)
where
    S: AsyncWrite + Unpin,
{
    let (reason, answer) = refusal.verdict();
    ctx.metrics.rejected(reason);
    answer.give(client).await;
}

/// Read the CONNECT under its deadline and size cap. The cause of a
/// rejection is logged here.
async fn read_connect<S>(
    ctx: &ListenerCtx,
    mqtt: &MqttListenerConfig,
    client: &mut S,
    tls: Option<&TlsInfo>,
) -> Result<ClientHello, Refusal>
where
    S: AsyncRead + Unpin,
{
    let limit = mqtt.max_connect_size;
    let mut buf = vec![0u8; INITIAL_CONNECT_READ.min(limit)];
    let mut filled = 0;
    let read = async {
        loop {
            match peek_connect(buf.get(..filled).unwrap_or_default(), limit) {
                Ok(Peek::Complete { connect, .. }) => {
                    return Ok(connect_hello(ctx, mqtt, connect, tls));
                }
                Ok(Peek::Incomplete(need)) => {
                    if buf.len() < filled + need {
                        buf.resize(filled + need, 0);
                    }
                }
                Err(e) => {
                    static REFUSED: LogLimiter = crate::ratelog::per_kind();
                    if let Some(suppressed) = REFUSED.allow() {
                        info!(error = %e, suppressed, "first packet refused");
                    }
                    return Err(Refusal::BadConnect(e));
                }
            }
            let Some(free) = buf.get_mut(filled..) else {
                return Err(Refusal::ReadError);
            };
            match client.read(free).await {
                Ok(0) => {
                    debug!("client left before sending a CONNECT");
                    return Err(Refusal::ClosedBeforeConnect);
                }
                Ok(n) => filled += n,
                Err(e) => {
                    debug!(error = %e, "read error before CONNECT");
                    return Err(Refusal::ReadError);
                }
            }
        }
    };
    let (protocol, key, idle, client, mismatch) = match timeout(mqtt.connect_timeout, read).await {
        Ok(read) => read?,
        Err(_) => {
            static LATE: LogLimiter = crate::ratelog::per_kind();
            if let Some(suppressed) = LATE.allow() {
                info!(timeout = ?mqtt.connect_timeout, received = filled, suppressed, "no complete CONNECT before the deadline");
            }
            return Err(Refusal::ConnectTimeout);
        }
    };
    buf.truncate(filled);
    Ok(ClientHello {
        buffered: buf,
        protocol: Some(protocol),
        key,
        idle,
        client,
        mismatch,
    })
}

/// Routing facts from a parsed CONNECT.
fn connect_hello(
    ctx: &ListenerCtx,
    mqtt: &MqttListenerConfig,
    connect: crate::mqtt::Connect<'_>,
    tls: Option<&TlsInfo>,
) -> (
    ProtocolVersion,
    Option<Vec<u8>>,
    Duration,
    Option<u64>,
    bool,
) {
    ctx.metrics.mqtt_connect(connect.protocol);
    Span::current().record("client_id", connect.client_id);
    debug!(
        protocol = connect.protocol.as_str(),
        keep_alive = connect.keep_alive,
        clean = connect.clean,
        username = connect.username.unwrap_or(""),
        "CONNECT"
    );
    let key = match ctx.pool.hash_key {
        HashKey::ClientId => Some(connect.client_id.as_bytes().to_vec()),
        HashKey::Username => connect.username.map(|u| u.as_bytes().to_vec()),
        HashKey::CertCn => tls
            .and_then(|t| t.client_cn.as_ref())
            .map(|cn| cn.as_bytes().to_vec()),
    };
    (
        connect.protocol,
        key,
        idle_timeout(mqtt, connect.keep_alive, ctx.limits.idle_timeout),
        // An empty client id (the broker assigns one) names nobody.
        (!connect.client_id.is_empty())
            .then(|| xxhash_rust::xxh3::xxh3_64(connect.client_id.as_bytes())),
        !client_id_matches(mqtt.client_id_match, connect.client_id, tls),
    )
}

/// `listener.mqtt.client_id_match`: whether the certificate names the
/// client id (an empty id, or no certificate, never matches).
fn client_id_matches(rule: ClientIdMatch, client_id: &str, tls: Option<&TlsInfo>) -> bool {
    let cn = || tls.and_then(|t| t.client_cn.as_deref()) == Some(client_id);
    let san = || {
        tls.and_then(|t| t.identity.as_deref())
            .is_some_and(|id| id.has_san(client_id))
    };
    match rule {
        ClientIdMatch::Off => true,
        _ if client_id.is_empty() => false,
        ClientIdMatch::Cn => cn(),
        ClientIdMatch::CnOrSan => cn() || san(),
    }
}

/// The idle timeout for a client: `factor` × its keep-alive, capped; the
/// listener-wide idle timeout when the client disabled keep-alive.
pub fn idle_timeout(
    mqtt: &MqttListenerConfig,
    keep_alive: u16,
    no_keepalive: Duration,
) -> Duration {
    if keep_alive == 0 {
        return no_keepalive;
    }
    Duration::from_secs_f64(f64::from(keep_alive) * mqtt.keepalive_factor)
        .min(mqtt.max_idle_timeout)
}

/// A backend that took the client.
struct Placed {
    backend: Arc<Backend>,
    stream: TcpStream,
    /// Counts the connection on the backend from the TCP connect on, so
    /// least-connections sees clients still waiting for their CONNACK.
    active: ActiveGuard,
    /// What the backend already sent (MQTT listeners: the head of its
    /// CONNACK and whatever followed in the same reads); empty otherwise.
    answer: Vec<u8>,
}

/// Why one candidate did not take the client. Every one of these counts
/// against the node's health (passive check) and sends the client's
/// CONNECT to the next candidate.
#[derive(Debug, thiserror::Error)]
enum Miss {
    #[error("TCP connect failed: {0}")]
    Connect(std::io::Error),
    #[error("TCP connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("no CONNACK within {0:?}")]
    ConnackTimeout(Duration),
    #[error("closed without answering the CONNECT")]
    Closed,
    #[error("I/O error before the CONNACK: {0}")]
    Io(std::io::Error),
    #[error("answered with something other than a CONNACK")]
    Malformed,
    #[error("answered CONNACK {0:#04x}: server unavailable or busy")]
    Unavailable(u8),
}

/// Offer the client to the candidates in order until one takes it: a TCP
/// connect, then (MQTT listeners) a CONNACK answering the CONNECT within
/// `connack_timeout`. A CONNACK refusing the client is the broker's answer
/// and is forwarded; a node that does not answer, closes first or says
/// "server unavailable" fails this client over to the next candidate with
/// the same buffered bytes, and the miss counts towards the node's `fall`.
async fn place(
    ctx: &ListenerCtx,
    first: &[u8],
    protocol: Option<ProtocolVersion>,
    key: Option<&[u8]>,
) -> Option<Placed> {
    for backend in ctx.pool.candidates(key) {
        match attempt(&ctx.pool, &backend, first, protocol).await {
            Ok((stream, active, answer)) => {
                return Some(Placed {
                    backend,
                    stream,
                    active,
                    answer,
                });
            }
            Err(miss) => {
                static MISSES: LogLimiter = crate::ratelog::per_kind();
                if let Some(suppressed) = MISSES.allow() {
                    warn!(backend = %backend.name, addr = %backend.addr, error = %miss, suppressed, "backend did not take the client; trying the next");
                }
                backend.metrics.connect_errors.inc();
                backend.observe_passive(false);
            }
        }
    }
    None
}

/// One candidate: connect, send `first`, and for an MQTT client wait for
/// the CONNACK.
async fn attempt(
    pool: &Pool,
    backend: &Arc<Backend>,
    first: &[u8],
    protocol: Option<ProtocolVersion>,
) -> Result<(TcpStream, ActiveGuard, Vec<u8>), Miss> {
    let started = Instant::now();
    let mut stream = match timeout(pool.connect_timeout, TcpStream::connect(backend.addr)).await {
        Err(_) => return Err(Miss::ConnectTimeout(pool.connect_timeout)),
        Ok(Err(e)) => return Err(Miss::Connect(e)),
        Ok(Ok(stream)) => stream,
    };
    backend
        .metrics
        .connect_duration
        .observe(started.elapsed().as_secs_f64());
    let _ = stream.set_nodelay(true);
    let active = backend.connection();
    let Some(protocol) = protocol else {
        // Pass-through: a TCP connect is all the evidence there is.
        if !first.is_empty() {
            stream.write_all(first).await.map_err(Miss::Io)?;
        }
        backend.observe_passive(true);
        return Ok((stream, active, Vec::new()));
    };
    let started = Instant::now();
    let m = &backend.metrics.connacks;
    let exchange = async {
        stream.write_all(first).await.map_err(Miss::Io)?;
        read_connack(&mut stream).await
    };
    let (code, answer) = match timeout(pool.connack_timeout, exchange).await {
        Ok(Ok(answered)) => answered,
        Ok(Err(miss)) => {
            match miss {
                Miss::Malformed => m.malformed.inc(),
                _ => m.closed.inc(),
            };
            return Err(miss);
        }
        Err(_) => {
            m.timeout.inc();
            return Err(Miss::ConnackTimeout(pool.connack_timeout));
        }
    };
    backend
        .metrics
        .connack_duration
        .observe(started.elapsed().as_secs_f64());
    match connack_verdict(protocol, code) {
        ConnackVerdict::Accepted => m.accepted.inc(),
        ConnackVerdict::Refused => {
            debug!(
                code,
                "the broker refused the client; forwarding its CONNACK"
            );
            m.refused.inc()
        }
        ConnackVerdict::Unavailable => {
            m.unavailable.inc();
            return Err(Miss::Unavailable(code));
        }
    };
    backend.observe_passive(true);
    Ok((stream, active, answer))
}

/// Read from a backend until the head of its first packet shows a CONNACK.
/// Returns the code and every byte read (the CONNACK head, possibly more).
async fn read_connack(stream: &mut TcpStream) -> Result<(u8, Vec<u8>), Miss> {
    let mut buf = vec![0u8; CONNACK_READ];
    let mut filled = 0;
    loop {
        let Some(free) = buf.get_mut(filled..).filter(|f| !f.is_empty()) else {
            return Err(Miss::Malformed);
        };
        let n = stream.read(free).await.map_err(Miss::Io)?;
        if n == 0 {
            return Err(Miss::Closed);
        }
        filled += n;
        match connack_head(buf.get(..filled).unwrap_or_default()) {
            ConnackHead::Incomplete => {}
            ConnackHead::Malformed => return Err(Miss::Malformed),
            ConnackHead::Complete { code, .. } => {
                buf.truncate(filled);
                return Ok((code, buf));
            }
        }
    }
}

/// 16-byte PROXY v2 unique id: process nonce and connection number.
fn unique_id(nonce: u64, conn_id: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&nonce.to_be_bytes());
    id[8..].copy_from_slice(&conn_id.to_be_bytes());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_timeout_follows_keep_alive() {
        let m = MqttListenerConfig {
            connect_timeout: Duration::from_secs(5),
            max_connect_size: 1024,
            keepalive_factor: 1.5,
            max_idle_timeout: Duration::from_secs(3600),
            client_id_match: ClientIdMatch::Off,
        };
        let none = Duration::from_secs(300);
        assert_eq!(idle_timeout(&m, 60, none), Duration::from_secs(90));
        assert_eq!(idle_timeout(&m, 0, none), none);
        assert_eq!(idle_timeout(&m, 65535, none), Duration::from_secs(3600));
    }

    #[test]
    fn client_ids_must_be_named_by_the_certificate() {
        let tls = TlsInfo {
            client_cert: true,
            client_cn: Some("dev-1".into()),
            identity: Some(Box::new(crate::tls::CertIdentity {
                sans: vec!["DNS:dev-2.example".into(), "URI:urn:dev:3".into()],
                ..Default::default()
            })),
            ..TlsInfo::default()
        };
        let t = Some(&tls);
        use ClientIdMatch::*;
        assert!(client_id_matches(Off, "anything", None));
        assert!(client_id_matches(Cn, "dev-1", t));
        assert!(!client_id_matches(Cn, "dev-2.example", t));
        assert!(client_id_matches(CnOrSan, "dev-2.example", t));
        assert!(client_id_matches(CnOrSan, "urn:dev:3", t));
        assert!(!client_id_matches(CnOrSan, "dev-4", t));
        assert!(
            !client_id_matches(CnOrSan, "", t),
            "an empty id names nobody"
        );
        assert!(!client_id_matches(Cn, "dev-1", None), "no certificate");
    }
}
