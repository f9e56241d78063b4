//! Listening sockets and what happens to each accepted connection: the
//! connection permit (`limits.max_connections`), counting, and the spawn of
//! its task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use super::{Generation, ListenerSlot, ProxyState, conn, lock};
use crate::accesslog::{End, Record};
use crate::config::ListenerConfig;
use crate::metrics::Rejection;
use crate::sys::ListenerSockets;
use crate::tls::TlsAcceptor;

pub(super) fn bind_listener(l: &ListenerConfig) -> std::io::Result<ListenerSockets> {
    let count = match l.accept_sockets {
        0 => tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or(1),
        n => usize::try_from(n).unwrap_or(1),
    };
    ListenerSockets::bind(l.listen, l.backlog, count).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("listener {:?} on {}: {e}", l.name, l.listen),
        )
    })
}

impl ProxyState {
    pub(super) fn start_listener(
        self: &Arc<Self>,
        generation: &Generation,
        cfg: &ListenerConfig,
        sockets: ListenerSockets,
        tls: Option<TlsAcceptor>,
    ) {
        let local_addr = sockets.local_addr().unwrap_or(cfg.listen);
        let Some(ctx) = self.listener_ctx(generation, cfg, local_addr, tls) else {
            warn!(listener = %cfg.name, pool = %cfg.pool, "listener names an unknown pool; not serving it");
            return;
        };
        info!(listener = %cfg.name, addr = %local_addr, tls = ctx.tls.is_some(), mqtt = cfg.mqtt.is_some(), pool = %cfg.pool, accept_sockets = sockets.len(), "listening");
        let accepted_nodelay = sockets.accepted_nodelay();
        let sockets = sockets.into_sockets();
        let dups = sockets
            .iter()
            .map(|s| socket2::SockRef::from(s).try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .unwrap_or_else(|e| {
                warn!(listener = %cfg.name, error = %e, "cannot keep the listening sockets for a hand-over");
                Vec::new()
            });
        let slot = Arc::new(ListenerSlot {
            addr: cfg.listen,
            ctx: ArcSwap::from_pointee(ctx),
            stop: self.shutdown.child_token(),
            handover: std::sync::Mutex::new(dups),
            accepted_nodelay,
        });
        lock(&self.listeners).insert(cfg.name.clone(), slot.clone());
        for socket in sockets {
            self.background
                .spawn(accept_loop(socket, slot.clone(), self.clone()));
        }
    }
}

async fn accept_loop(listener: TcpListener, slot: Arc<ListenerSlot>, state: Arc<ProxyState>) {
    let on_accept = |tcp: tokio::net::TcpStream, peer: SocketAddr| {
        let ctx = slot.ctx.load_full();
        // Before any TLS work: a reconnect storm costs an accept and a
        // close. Behind a balancer (inbound PROXY header) the peer is the
        // balancer: the connection task checks the client's address.
        let refused = |reason: Rejection| {
            ctx.metrics.rejected(reason);
            if let Some(log) = &ctx.access {
                log.log(&Record::new(&ctx.name, peer, End::Refused(reason.as_str())));
            }
        };
        if ctx.proxy_protocol.is_none() && !ctx.state.source_limit.admit(&peer.ip()) {
            refused(Rejection::SourceRateLimit);
            return;
        }
        let Ok(permit) = state.limit.clone().try_acquire_owned() else {
            refused(Rejection::MaxConnections);
            debug!(listener = %ctx.name, client.addr = %peer, "connection limit reached; refusing");
            return;
        };
        ctx.metrics.total.inc();
        let id = state.conn_ids.fetch_add(1, Ordering::Relaxed);
        let hard_stop = state.hard_stop.clone();
        let nodelay = slot.accepted_nodelay;
        state.conns.spawn(async move {
            let _permit = permit;
            ctx.metrics.active.inc();
            tokio::select! {
                _ = conn::handle(ctx.clone(), tcp, peer, id, nodelay) => {}
                _ = hard_stop.cancelled() => {}
            }
            ctx.metrics.active.dec();
        });
    };
    let on_error = |e: &std::io::Error, pause: Duration| {
        state.metrics.accept_errors.inc();
        // EMFILE repeats for as long as descriptors are short.
        static FAILED: crate::ratelog::LogLimiter = crate::ratelog::per_kind();
        if let Some(suppressed) = FAILED.allow() {
            warn!(listener = %slot.ctx.load().name, error = %e, ?pause, suppressed, "accept failed");
        }
    };
    crate::sys::accept_loop(&listener, &slot.stop, on_accept, on_error).await;
}
