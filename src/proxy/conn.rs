//! One client connection, from accept to close:
//!
//! TLS handshake (deadline) → read the MQTT CONNECT (deadline, size cap) →
//! choose a backend (strategy over the healthy set, next candidate on a
//! failed connect) → PROXY header + buffered CONNECT → splice both ways
//! (idle timeout from the client's keep-alive) → close.
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

use super::ListenerCtx;
use super::header;
use super::splice::{Kick, SpliceEnd, SpliceError, splice};
use crate::balance::Backend;
use crate::config::{HashKey, MqttListenerConfig};
use crate::mqtt::packets::connack_server_unavailable;
use crate::mqtt::{Peek, ProtocolVersion, peek_connect};
use crate::tls::TlsInfo;

/// First read size while waiting for a CONNECT: most CONNECTs are far
/// smaller, and the parser asks for exactly what is missing after that.
const INITIAL_CONNECT_READ: usize = 256;

/// What routing learned from the client before choosing a backend.
struct ClientHello {
    /// Bytes read from the client (the CONNECT and anything pipelined after
    /// it), forwarded verbatim to the backend.
    buffered: Vec<u8>,
    protocol: Option<ProtocolVersion>,
    key: Option<Vec<u8>>,
    idle: Duration,
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
        let local = tcp.local_addr().unwrap_or(ctx.local_addr);
        match &ctx.tls {
            None => serve_client(&ctx, tcp, peer, local, None, conn_id).await,
            Some(acceptor) => {
                let started = Instant::now();
                match timeout(ctx.limits.tls_handshake_timeout, acceptor.accept(tcp)).await {
                    Err(_) => {
                        ctx.metrics.handshake("timeout");
                        ctx.metrics.rejected("tls_handshake_timeout");
                        debug!("TLS handshake timed out");
                    }
                    Ok(Err(e)) => {
                        ctx.metrics.handshake("failed");
                        ctx.metrics.rejected("tls_handshake_failed");
                        debug!(error = %e, "TLS handshake failed");
                    }
                    Ok(Ok((stream, info))) => {
                        ctx.metrics.handshake("ok");
                        ctx.metrics
                            .handshake_duration
                            .observe(started.elapsed().as_secs_f64());
                        serve_client(&ctx, stream, peer, local, Some(info), conn_id).await
                    }
                }
            }
        }
    }
    .instrument(span)
    .await
}

async fn serve_client<S>(
    ctx: &ListenerCtx,
    mut client: S,
    peer: SocketAddr,
    local: SocketAddr,
    tls: Option<TlsInfo>,
    conn_id: u64,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let hello = match &ctx.mqtt {
        Some(mqtt) => match read_connect(ctx, mqtt, &mut client, tls.as_ref()).await {
            Ok(h) => h,
            Err(reason) => {
                ctx.metrics.rejected(reason);
                // Best effort: the client may already be gone.
                let _ = timeout(Duration::from_secs(1), client.shutdown()).await;
                return;
            }
        },
        None => ClientHello {
            buffered: Vec::new(),
            protocol: None,
            key: None,
            idle: ctx.limits.idle_timeout,
        },
    };

    let pool = &ctx.pool;
    let Some((backend, mut upstream)) = connect_backend(ctx, hello.key.as_deref()).await else {
        ctx.metrics.rejected("no_backend");
        warn!(pool = %pool.name, "no backend available");
        if let Some(protocol) = hello.protocol {
            let _ = timeout(Duration::from_secs(1), async {
                client
                    .write_all(connack_server_unavailable(protocol))
                    .await?;
                client.shutdown().await
            })
            .await;
        }
        return;
    };
    Span::current().record("backend", backend.name.as_str());
    let _active = backend.connection();

    // One write: PROXY header followed by the bytes already read.
    let mut first = Vec::with_capacity(256 + hello.buffered.len());
    let unique_id = unique_id(ctx.instance_nonce, conn_id);
    header::encode(
        pool.proxy_protocol,
        peer,
        local,
        tls.as_ref(),
        &unique_id,
        &mut first,
    );
    first.extend_from_slice(&hello.buffered);
    let client_bytes = hello.buffered.len() as u64;
    drop(hello.buffered);
    if !first.is_empty() {
        if let Err(e) = upstream.write_all(&first).await {
            debug!(error = %e, "backend closed before the CONNECT was forwarded");
            return;
        }
    }
    // The client's bytes read before routing count as upstream traffic too.
    ctx.metrics.upstream_bytes.inc_by(client_bytes);
    drop(first);

    // MQTT 5 clients can be asked to move when their backend drains.
    let kickable = (hello.protocol == Some(ProtocolVersion::V5)).then(|| backend.kickable(conn_id));
    let started = Instant::now();
    let (result, moved) = splice(
        &mut client,
        &mut upstream,
        hello.idle,
        ctx.metrics.upstream_bytes.clone(),
        ctx.metrics.downstream_bytes.clone(),
        kickable.as_ref().map(|k| Kick {
            token: k.token(),
            packet: crate::mqtt::packets::DISCONNECT_USE_ANOTHER_SERVER,
        }),
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    match result {
        Ok(SpliceEnd::Closed) => {
            debug!(up = moved.upstream, down = moved.downstream, secs, "closed")
        }
        Ok(SpliceEnd::Kicked) => {
            info!(
                up = moved.upstream,
                down = moved.downstream,
                "drain: client sent DISCONNECT \"use another server\""
            )
        }
        Ok(SpliceEnd::Idle) => {
            ctx.metrics.rejected("idle_timeout");
            debug!(up = moved.upstream, down = moved.downstream, idle = ?hello.idle, "idle timeout");
        }
        Err(SpliceError::Client(e)) => debug!(error = %e, "client connection error"),
        Err(SpliceError::Backend(e)) => info!(error = %e, "backend connection error"),
    }
}

/// Read the CONNECT under its deadline and size cap. Errors are metric
/// reasons; the cause is logged here.
async fn read_connect<S>(
    ctx: &ListenerCtx,
    mqtt: &MqttListenerConfig,
    client: &mut S,
    tls: Option<&TlsInfo>,
) -> Result<ClientHello, &'static str>
where
    S: AsyncRead + Unpin,
{
    let limit = mqtt.max_connect_size;
    let mut buf = vec![0u8; INITIAL_CONNECT_READ.min(limit)];
    let mut filled = 0;
    let read = async {
        loop {
            match peek_connect(&buf[..filled], limit) {
                Ok(Peek::Complete { connect, .. }) => {
                    return Ok(connect_hello(ctx, mqtt, connect, tls));
                }
                Ok(Peek::Incomplete(need)) => {
                    if buf.len() < filled + need {
                        buf.resize(filled + need, 0);
                    }
                }
                Err(e) => return Err(Err(e)),
            }
            match client.read(&mut buf[filled..]).await {
                Ok(0) => return Err(Ok("closed_before_connect")),
                Ok(n) => filled += n,
                Err(e) => {
                    debug!(error = %e, "read error before CONNECT");
                    return Err(Ok("client_error"));
                }
            }
        }
    };
    match timeout(mqtt.connect_timeout, read).await {
        Err(_) => {
            info!(timeout = ?mqtt.connect_timeout, received = filled, "no complete CONNECT before the deadline");
            Err("connect_timeout")
        }
        Ok(Err(Ok(reason))) => {
            debug!(reason, "client left before sending a CONNECT");
            Err(reason)
        }
        Ok(Err(Err(e))) => {
            info!(error = %e, "first packet refused");
            Err(e.reason())
        }
        Ok(Ok((protocol, key, idle))) => {
            buf.truncate(filled);
            Ok(ClientHello {
                buffered: buf,
                protocol: Some(protocol),
                key,
                idle,
            })
        }
    }
}

/// Routing facts from a parsed CONNECT.
fn connect_hello(
    ctx: &ListenerCtx,
    mqtt: &MqttListenerConfig,
    connect: crate::mqtt::Connect<'_>,
    tls: Option<&TlsInfo>,
) -> (ProtocolVersion, Option<Vec<u8>>, Duration) {
    ctx.metrics.mqtt_connect(connect.protocol.as_str());
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
    )
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

/// Try candidates in order; each failure counts against the backend's
/// health (passive check) and the next one is tried.
async fn connect_backend(
    ctx: &ListenerCtx,
    key: Option<&[u8]>,
) -> Option<(Arc<Backend>, TcpStream)> {
    let pool = &ctx.pool;
    for backend in pool.candidates(key) {
        let started = Instant::now();
        match timeout(pool.connect_timeout, TcpStream::connect(backend.addr)).await {
            Ok(Ok(stream)) => {
                backend
                    .metrics
                    .connect_duration
                    .observe(started.elapsed().as_secs_f64());
                backend.passive_success();
                let _ = stream.set_nodelay(true);
                return Some((backend, stream));
            }
            Ok(Err(e)) => {
                warn!(backend = %backend.name, addr = %backend.addr, error = %e, "backend connect failed; trying the next");
            }
            Err(_) => {
                warn!(backend = %backend.name, addr = %backend.addr, timeout = ?pool.connect_timeout, "backend connect timed out; trying the next");
            }
        }
        backend.metrics.connect_errors.inc();
        backend.observe(false);
    }
    None
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
        };
        let none = Duration::from_secs(300);
        assert_eq!(idle_timeout(&m, 60, none), Duration::from_secs(90));
        assert_eq!(idle_timeout(&m, 0, none), none);
        assert_eq!(idle_timeout(&m, 65535, none), Duration::from_secs(3600));
    }
}
