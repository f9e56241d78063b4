//! One client connection, from accept to close, as three stages of one
//! `Conn`:
//!
//! * on listeners behind a balancer, first the inbound PROXY header
//!   (`inbound.rs`): trusted peers only, exactly the header's bytes, and
//!   the client's real address from then on;
//! * **admit** (`admit.rs`) — TLS handshake (deadline), the WebSocket
//!   upgrade on WebSocket listeners, then read the MQTT CONNECT (deadline,
//!   size cap) and check it (client-id rule, client-id rate); choose the
//!   route (`[[listener.route]]`, first match, else the listener's pool)
//!   once every fact it may look at is known;
//! * **place** (`place.rs`) — through the route's pool's admission
//!   (`queue.rs`: at once, or waiting in the pool's FIFO queue for a token
//!   of `max_connect_rate` and a node under its `max_connections`), choose
//!   a backend of the pool (strategy over the healthy set) → PROXY header
//!   and buffered CONNECT → wait for the node's CONNACK (deadline; none, a
//!   close or "server unavailable" → the next candidate gets the same
//!   bytes and the node's miss counts towards its health);
//! * **relay** (`relay.rs`) — forward the CONNACK, splice both ways (idle
//!   timeout from the client's keep-alive) → close, or a drain kick.
//!
//! A stage that refuses the client returns a `Refusal` (`refusal.rs`),
//! which names its metric reason and its answer; `Conn::refuse` is where
//! every refused connection ends. When no backend can take an MQTT client,
//! it reads a CONNACK "server unavailable" rather than a bare reset.
//!
//! The client stream is borrowed by every stage: it lives once, in the
//! connection task (an async fn that takes it by value stores it twice,
//! rust-lang/rust#62958: +1.2 KiB per idle TLS connection, measured).

mod access;
mod admit;
mod inbound;
mod place;
mod queue;
mod refusal;
mod relay;

pub use admit::idle_timeout;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{Instrument, field};

use super::ListenerCtx;
use super::websocket;
use crate::accesslog::End;
use crate::config::{WebSocketConfig, WsForward};
use crate::proxy_protocol::PassedTlvs;
use crate::tls::TlsInfo;
use refusal::Refusal;

/// One client connection: what is known about it, from its accept (and
/// its TLS handshake) on. Created once in the connection task and borrowed
/// by every stage.
struct Conn {
    /// The listener's context as it was when the connection was accepted.
    ctx: Arc<ListenerCtx>,
    /// The client's address: the peer's, or the one its balancer's PROXY
    /// header names.
    peer: SocketAddr,
    /// The proxy's address on this connection, or the one the client
    /// reached per its balancer's header (only a PROXY header uses it).
    local: SocketAddr,
    /// The connection's number: PROXY v2 unique id, drain kicks.
    id: u64,
    /// What the TLS handshake learned (SNI, ALPN, version, cipher, client
    /// identity); `None` on plain listeners.
    tls: Option<TlsInfo>,
    /// TLVs from the balancer's header that a pool passes on (bounded).
    tlvs: Option<Box<PassedTlvs>>,
    /// What the access-log line will say (`access.rs`); `None` while the
    /// access log is off. The line is written when the `Conn` drops.
    access: Option<Box<access::Access>>,
}

/// Handle one accepted TCP connection. Runs inside its own task.
/// `nodelay`: the socket has `TCP_NODELAY` already (from its listener).
///
/// A plain function returning the future, not an `async fn`: an async
/// fn keeps its arguments in its future for the connection's life, beside
/// the block below that they move into (rust-lang/rust#62958).
pub fn handle(
    ctx: Arc<ListenerCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    nodelay: bool,
) -> impl std::future::Future<Output = ()> + Send {
    let span = tracing::info_span!(
        "conn",
        id,
        client.addr = field::Empty,
        proxy.addr = field::Empty,
        listener = %ctx.name,
        client_id = field::Empty,
        route = field::Empty,
        backend = field::Empty,
    );
    // Behind a balancer, the client's address is known after its header.
    if ctx.proxy_protocol.is_none() {
        span.record("client.addr", field::display(peer));
    }
    async move {
        if !nodelay {
            let _ = tcp.set_nodelay(true);
        }
        let mut conn = Conn::new(ctx, &tcp, peer, id);
        if conn.ctx.proxy_protocol.is_some() {
            // Boxed, like the handshake below: its state lives on the heap
            // only while it runs. A refusal is answered by closing the
            // socket; there is nothing to say before TLS.
            let admitted = Box::pin(async {
                match conn.proxy_header(&tcp).await {
                    Ok(()) => true,
                    Err(refusal) => {
                        conn.refuse(&mut tokio::io::sink(), refusal).await;
                        false
                    }
                }
            });
            if !admitted.await {
                return;
            }
        }
        let Some(acceptor) = &conn.ctx.tls else {
            let mut tcp = tcp;
            return conn.serve(&mut tcp).await;
        };
        // Boxed: the handshake's state (rustls's handshake buffers, the
        // acceptor futures) lives on the heap only while it runs, not in
        // every connection's task for its whole life. A refused handshake
        // ends there too: it took the socket, so nothing is left to answer
        // on (its refusals answer nothing).
        let handshake = Box::pin(async {
            match conn.handshake(acceptor, tcp).await {
                Ok(done) => Some(done),
                Err(refusal) => {
                    conn.refuse(&mut tokio::io::sink(), refusal).await;
                    None
                }
            }
        });
        let Some((mut stream, info)) = handshake.await else {
            return;
        };
        conn.tls = Some(info);
        conn.serve(&mut stream).await
    }
    .instrument(span)
}

impl Conn {
    fn new(ctx: Arc<ListenerCtx>, tcp: &TcpStream, peer: SocketAddr, id: u64) -> Conn {
        // The local address only goes into a PROXY header: skip the
        // getsockname(2) when no pool the listener reaches sends one.
        let ctx_access_on = ctx.access.is_some();
        let local = if !ctx.routes.sends_proxy_header() {
            ctx.local_addr
        } else {
            tcp.local_addr().unwrap_or(ctx.local_addr)
        };
        Conn {
            ctx,
            peer,
            local,
            id,
            tls: None,
            tlvs: None,
            access: ctx_access_on.then(access::Access::new),
        }
    }

    /// After the TLS handshake (if any): straight to MQTT, or through the
    /// WebSocket upgrade first.
    async fn serve<S>(&self, client: &mut S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match &self.ctx.websocket {
            None => self.stages(client, Vec::new()).await,
            // Boxed: the WebSocket path's state (the frame codec, and a
            // second instance of the stages over it) is larger than the
            // plain path's, and an async fn is as large as its largest
            // state; on the heap, only WebSocket connections pay for it.
            Some(ws) => Box::pin(self.serve_websocket(ws, client)).await,
        }
    }

    /// The WebSocket upgrade, then MQTT inside it (`to = "tcp"`) or the
    /// forwarded WebSocket (`to = "ws"`).
    async fn serve_websocket<S>(&self, ws: &WebSocketConfig, client: &mut S)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let upgrade = match self.upgrade(ws, client).await {
            Ok(upgrade) => upgrade,
            Err(refusal) => return self.refuse(client, refusal).await,
        };
        match ws.to {
            // The broker answers the upgrade: it gets the request as it came.
            WsForward::Ws => self.stages(client, upgrade.bytes).await,
            WsForward::Tcp => {
                if !self.accept_upgrade(ws, client, &upgrade).await {
                    self.note(|f| f.end = Some(End::ClientError));
                    return;
                }
                let mut early = upgrade.bytes;
                early.drain(..upgrade.head_len);
                let mut io = websocket::WsIo::new(client, early, ws).await;
                self.stages(&mut io, Vec::new()).await
            }
        }
    }

    /// admit → place → relay on the client's MQTT byte stream. `preread`:
    /// bytes already read from the client (a forwarded WebSocket upgrade
    /// request), for pass-through listeners.
    async fn stages<S>(&self, client: &mut S, preread: Vec<u8>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let served = async {
            let hello = self.admit(client, preread).await?;
            let placed = self.place(client, hello).await?;
            self.relay(client, placed).await;
            Ok(())
        }
        .await;
        if let Err(refusal) = served {
            self.refuse(client, refusal).await
        }
    }

    /// Every refused connection ends here: counted under its reason, and
    /// the client given its answer.
    async fn refuse<S>(&self, client: &mut S, refusal: Refusal)
    where
        S: AsyncWrite + Unpin,
    {
        let (reason, answer) = refusal.verdict();
        self.ctx.metrics.rejected(reason);
        self.note(|f| f.end = Some(End::Refused(reason.as_str())));
        answer.give(client).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an async fn returns, without calling it.
    fn future_size<F, A, B, C, D, E, Fut>(_: &F) -> usize
    where
        F: FnOnce(A, B, C, D, E) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every open connection holds one `handle` future for its whole
    /// life: what it keeps is per-connection memory
    /// (docs/performance.md). Measured: 2,752 bytes before the access
    /// log (issue 22), 2,776 with it (its facts live behind one pointer,
    /// allocated only while it is on); 2,800 at issue 24, 2,648 once
    /// `handle` no longer kept its arguments beside its body (not an
    /// `async fn`). Of it, the TLS stream was 1,224 (rustls's `CommonState`
    /// 840, about 490 of it QUIC state a TCP connection never uses); with
    /// the vendored patch that allocates the QUIC state on first QUIC use:
    /// the future 2,176, the TLS stream 736, `CommonState` 352.
    #[test]
    fn the_connection_future_stays_small() {
        let size = future_size(&handle);
        eprintln!("conn::handle future: {size} bytes");
        // What it holds for the connection's life, besides the relay's
        // state (docs/performance.md, issue 24).
        use std::mem::size_of;
        eprintln!(
            "  TLS stream {} (rustls ServerConnection {}, of it CommonState {}), Conn {}, TlsInfo {}, the idle timer (tokio Sleep) {}",
            size_of::<tokio_rustls::server::TlsStream<TcpStream>>(),
            size_of::<rustls::ServerConnection>(),
            size_of::<rustls::CommonState>(),
            size_of::<Conn>(),
            size_of::<TlsInfo>(),
            size_of::<tokio::time::Sleep>(),
        );
        assert!(size <= 3_000, "conn::handle future grew to {size} bytes");
    }
}
