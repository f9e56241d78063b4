//! Placement: the client goes through its route's pool's admission
//! (`queue.rs`), then is offered to the candidates in order until one takes
//! it. Each gets one write (PROXY header + the client's bytes, built once)
//! and, on MQTT listeners, must answer it with a CONNACK within
//! `connack_timeout`; a node that does not is a *miss*: counted, recorded
//! against its health, and the next candidate gets the same bytes. A node
//! at its `max_connections` is skipped (no miss).
//!
//! No cascade: while the pool paces admission (`Admission::pacing`), a
//! node slow to answer is most likely slow *because* of the storm being
//! paced, so its CONNACK is waited for up to the pool's `queue.timeout`
//! (at least `connack_timeout`) from the forward; one that comes then is
//! forwarded and counted `late`, and is no node failure (nor a success:
//! the node's passive streak is left as it was). Only no answer by then, a
//! close, or "server unavailable"/"server busy" is a miss.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::{Span, debug, warn};

use super::admit::Hello;
use super::{Conn, Refusal};
use crate::balance::{ActiveGuard, Backend, Pool, Strategy};
use crate::mqtt::ProtocolVersion;
use crate::mqtt::packets::{ConnackHead, ConnackVerdict, connack_head, connack_verdict};
use crate::proxy_protocol as header;
use crate::ratelog::LogLimiter;

/// Read size while waiting for a broker's CONNACK: its head needs at most 7
/// bytes; a broker may send queued messages right behind it, which the
/// splice carries on with.
const CONNACK_READ: usize = 512;

/// A backend that took the client: what the relay starts from.
pub(super) struct Placed<'c> {
    pub backend: Arc<Backend>,
    pub upstream: TcpStream,
    /// Counts the connection on the backend from the TCP connect on (a
    /// capped node: from the slot's reservation, before it), so
    /// least-connections sees clients still waiting for their CONNACK.
    pub active: ActiveGuard,
    /// What the backend already sent (MQTT listeners: the head of its
    /// CONNACK and whatever followed in the same reads); empty otherwise.
    pub answer: Vec<u8>,
    /// From admission: the client's protocol (`None`: pass-through) and
    /// idle timeout.
    pub protocol: Option<ProtocolVersion>,
    pub idle: Duration,
    /// The client's hash key, on hash pools (for rebalancing).
    pub key: Option<Box<[u8]>>,
    /// The client id, for the client index.
    pub client_id: Option<Box<str>>,
    /// The route's pool (the client has its `connack_timeout` to take the
    /// CONNACK).
    pub pool: &'c Pool,
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

impl Conn {
    /// Offer the client to the candidates in order until one takes it: a
    /// TCP connect, then (MQTT listeners) a CONNACK answering the CONNECT
    /// within `connack_timeout`. A CONNACK refusing the client is the
    /// broker's answer and is forwarded; a node that does not answer,
    /// closes first or says "server unavailable" fails this client over to
    /// the next candidate with the same bytes, and the miss counts towards
    /// the node's `fall`. None left: [`Refusal::NoBackend`]. The route's
    /// pool decides everything here: admission, candidates, PROXY header,
    /// timeouts. `client` is only read while the client waits for
    /// admission (to see it leave).
    pub(super) async fn place<'c, S>(
        &'c self,
        client: &mut S,
        mut hello: Hello<'c>,
    ) -> Result<Placed<'c>, Refusal>
    where
        S: AsyncRead + Unpin,
    {
        let ctx = &self.ctx;
        let route = hello.route;
        let pool = &route.pool;
        route.routed.inc();
        self.note(|f| {
            f.route = ctx
                .routes
                .position(route)
                .and_then(|i| u16::try_from(i).ok())
        });
        if ctx.routes.any() {
            Span::current().record("route", route.name.as_str());
        }
        let candidates = self.queue(client, &mut hello).await?;
        let first = self.first_write(pool, &hello.bytes);
        let client_bytes = hello.bytes.len() as u64;
        drop(hello.bytes);
        // The first node's slot, if admission reserved it.
        let mut reserved = candidates.first;
        for backend in candidates.nodes {
            let slot = match reserved.take() {
                Some(slot) => Some(slot),
                None if backend.max_connections() > 0 => match backend.reserve() {
                    Some(slot) => Some(slot),
                    // At its cap since the candidates were chosen: skipped,
                    // not a miss.
                    None => continue,
                },
                None => None,
            };
            // Boxed: an attempt's state (connect, CONNACK timers and reads)
            // is the largest of placement, and would otherwise stay
            // reserved in the connection task for its whole life.
            let attempted = Box::pin(attempt(pool, &backend, slot, &first, hello.protocol));
            match attempted.await {
                Ok((upstream, active, answer, steps)) => {
                    Span::current().record("backend", backend.name.as_str());
                    self.note(|f| {
                        f.backend = Some(backend.clone());
                        f.timings.backend = steps.connect.into();
                        f.timings.connack = steps.connack.into();
                        f.bytes = Some((client_bytes, 0));
                    });
                    // The client's bytes read before routing count as
                    // upstream traffic too.
                    ctx.metrics.upstream_bytes.inc_by(client_bytes);
                    return Ok(Placed {
                        backend,
                        upstream,
                        active,
                        answer,
                        protocol: hello.protocol,
                        idle: hello.idle,
                        // Hash pools keep the key: a rebalance finds the
                        // client's home by it.
                        key: hello
                            .key
                            .take()
                            .filter(|_| pool.strategy == Strategy::ClientId)
                            .map(Vec::into_boxed_slice),
                        client_id: hello.client_id.take(),
                        pool,
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
        static NONE_UP: LogLimiter = crate::ratelog::per_kind();
        if let Some(suppressed) = NONE_UP.allow() {
            warn!(pool = %pool.name, suppressed, "no backend available");
        }
        Err(Refusal::NoBackend(hello.protocol))
    }

    /// One write per attempt: `pool`'s PROXY header followed by the bytes
    /// already read. Built once; every candidate gets the same bytes.
    fn first_write(&self, pool: &Pool, client_bytes: &[u8]) -> Vec<u8> {
        let mut first = Vec::with_capacity(128 + client_bytes.len());
        header::encode(
            pool.proxy_protocol,
            self.peer,
            self.local,
            self.tls.as_ref(),
            &pool.identity,
            &unique_id(self.ctx.instance_nonce, self.id),
            self.tlvs.as_deref(),
            &mut first,
        );
        first.extend_from_slice(client_bytes);
        first
    }
}

/// How long the candidate that took the client took: its TCP connect,
/// and (MQTT listeners) from the forward to its CONNACK.
struct Steps {
    connect: Duration,
    connack: Option<Duration>,
}

/// One candidate: connect, send `first`, and for an MQTT client wait for
/// the CONNACK. `slot`: the node's connection slot when it was reserved
/// before the connect (capped nodes), else it is counted once connected.
async fn attempt(
    pool: &Pool,
    backend: &Arc<Backend>,
    slot: Option<ActiveGuard>,
    first: &[u8],
    protocol: Option<ProtocolVersion>,
) -> Result<(TcpStream, ActiveGuard, Vec<u8>, Steps), Miss> {
    let started = Instant::now();
    let mut stream = match timeout(pool.connect_timeout, TcpStream::connect(backend.addr)).await {
        Err(_) => return Err(Miss::ConnectTimeout(pool.connect_timeout)),
        Ok(Err(e)) => return Err(Miss::Connect(e)),
        Ok(Ok(stream)) => stream,
    };
    let connected = started.elapsed();
    backend
        .metrics
        .connect_duration
        .observe(connected.as_secs_f64());
    let _ = stream.set_nodelay(true);
    let active = match slot {
        Some(slot) => slot,
        None => backend.connection(),
    };
    let Some(protocol) = protocol else {
        // Pass-through: a TCP connect is all the evidence there is.
        if !first.is_empty() {
            stream.write_all(first).await.map_err(Miss::Io)?;
        }
        backend.observe_passive(true);
        let steps = Steps {
            connect: connected,
            connack: None,
        };
        return Ok((stream, active, Vec::new(), steps));
    };
    let started = Instant::now();
    let m = &backend.metrics.connacks;
    // (answer, late): `None` when no CONNACK came in time.
    let answered = {
        let mut exchange = pin!(async {
            stream.write_all(first).await.map_err(Miss::Io)?;
            read_connack(&mut stream).await
        });
        // Bound first: a temporary in the `match` would keep the first
        // timer alive beside the second (a larger connection task).
        let in_time = timeout(pool.connack_timeout, exchange.as_mut()).await;
        match in_time {
            Ok(answer) => Some((answer, false)),
            // No cascade (module documentation): the same exchange goes
            // on, up to the pool's queue timeout from the forward.
            Err(_) if pool.admission().pacing() => {
                let more = pool
                    .admission()
                    .timeout()
                    .saturating_sub(pool.connack_timeout);
                timeout(more, exchange).await.ok().map(|a| (a, true))
            }
            Err(_) => None,
        }
    };
    let (code, answer, late) = match answered {
        Some((Ok((code, answer)), late)) => (code, answer, late),
        Some((Err(miss), _)) => {
            match miss {
                Miss::Malformed => m.malformed.inc(),
                _ => m.closed.inc(),
            };
            return Err(miss);
        }
        None => {
            m.timeout.inc();
            return Err(Miss::ConnackTimeout(started.elapsed()));
        }
    };
    let steps = Steps {
        connect: connected,
        connack: Some(started.elapsed()),
    };
    backend
        .metrics
        .connack_duration
        .observe(started.elapsed().as_secs_f64());
    match connack_verdict(protocol, code) {
        ConnackVerdict::Accepted | ConnackVerdict::Refused if late => {
            debug!(
                code,
                waited = ?started.elapsed(),
                "late CONNACK while the pool paces admission: forwarded, not a node failure"
            );
            m.late.inc();
            return Ok((stream, active, answer, steps));
        }
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
    Ok((stream, active, answer, steps))
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
