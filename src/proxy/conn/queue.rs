//! Waiting for admission, between admit (the CONNECT read, the route
//! chosen) and place: the route's pool lets the client through at once, or
//! it waits in the pool's queue in arrival order until a token and a node
//! under its cap are there (`balance::admission` says how and why so).
//!
//! A waiting client is its connection task, parked: it holds its sockets,
//! its buffered CONNECT and a place in the turnstile's list, inside a boxed
//! future only waiting clients allocate. It leaves the queue when it is let
//! through, when `queue.timeout` passes (CONNACK "server busy" / 3.x
//! "server unavailable"), or at once when it closes its connection (FIN or
//! RST). Packets a client sends behind its CONNECT before the CONNACK are
//! legitimate: they are read (so a close behind them is seen), kept and
//! forwarded with the CONNECT, up to [`QUEUED_READ`] bytes.

use std::pin::pin;

use bytes::BufMut;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::sleep_until;
use tracing::{debug, info};

use super::admit::Hello;
use super::{Conn, Refusal};
use crate::balance::{Admit, Candidates, Pool, Ticket, Turn};
use crate::mqtt::ProtocolVersion;
use crate::ratelog::LogLimiter;

/// Bytes a waiting client may send behind its CONNECT that are read and
/// kept; past them reading stops (the kernel holds the rest) and its
/// departure is noticed only when its wait ends.
pub(super) const QUEUED_READ: usize = 4096;

impl Conn {
    /// Through the route's pool's admission: the nodes to offer the client
    /// to (empty: none in rotation), or a refusal (queue full, timed out,
    /// the client left). Off (no rate, no caps), straight to the pool's
    /// candidates.
    pub(super) async fn queue<S>(
        &self,
        client: &mut S,
        hello: &mut Hello<'_>,
    ) -> Result<Candidates, Refusal>
    where
        S: AsyncRead + Unpin,
    {
        let Hello {
            route,
            bytes,
            protocol,
            key,
            ..
        } = hello;
        let pool: &Pool = &route.pool;
        let key = key.as_deref();
        let admission = pool.admission();
        if !admission.enabled() {
            let nodes = pool.candidates(key);
            if !nodes.is_empty() {
                admission.admitted_at_once();
            }
            return Ok(Candidates { nodes, first: None });
        }
        // Nobody waits and nobody looks: one look without queueing.
        let turn = match admission.try_turn() {
            None => None,
            Some(turn) => match pool.try_admit(&turn, key) {
                Admit::Ready(admitted) => {
                    admission.admitted_at_once();
                    return Ok(admitted);
                }
                Admit::NoBackend => return Ok(no_candidates()),
                Admit::Token(_) | Admit::Slot => Some(turn),
            },
        };
        let Ok(ticket) = admission.join() else {
            static FULL: LogLimiter = crate::ratelog::per_kind();
            if let Some(suppressed) = FULL.allow() {
                info!(pool = %pool.name, suppressed, "admission queue full; client refused");
            }
            return Err(Refusal::QueueFull(*protocol));
        };
        // Boxed: only waiting clients carry this state, on the heap, for
        // as long as they wait. (Built in its own statement: a temporary
        // would keep its storage in this future across the await.)
        let waiting = Box::pin(wait(pool, key, turn, ticket, client, bytes, *protocol));
        waiting.await
    }
}

fn no_candidates() -> Candidates {
    Candidates {
        nodes: Vec::new(),
        first: None,
    }
}

/// Wait in `pool`'s queue (with the turn already, or after everyone
/// before), until let through, `queue.timeout` after joining, or the
/// client's departure.
async fn wait<S>(
    pool: &Pool,
    key: Option<&[u8]>,
    turn: Option<Turn<'_>>,
    ticket: Ticket<'_>,
    client: &mut S,
    bytes: &mut Vec<u8>,
    protocol: Option<ProtocolVersion>,
) -> Result<Candidates, Refusal>
where
    S: AsyncRead + Unpin,
{
    let admission = pool.admission();
    let deadline = ticket.since() + admission.timeout();
    let admitted = async {
        let turn = match turn {
            Some(turn) => turn,
            None => admission.turn().await,
        };
        // The head: look, then sleep until the next token or until
        // something changes (a slot freed, a node up, a reload); the
        // wake-up is armed before each look, so none is lost.
        loop {
            let mut changed = pin!(admission.changed());
            changed.as_mut().enable();
            match pool.try_admit(&turn, key) {
                Admit::Ready(admitted) => return Some(admitted),
                Admit::NoBackend => return None,
                Admit::Token(at) => {
                    tokio::select! {
                        () = sleep_until(at) => {}
                        () = changed => {}
                    }
                }
                Admit::Slot => changed.await,
            }
        }
    };
    let limit = bytes.len() + QUEUED_READ;
    // Cancel safety: every branch is. Dropping `admitted` leaves the
    // turnstile's line (or hands the turn on); `departed` reads with
    // `read_buf`, which keeps what it read.
    tokio::select! {
        biased;
        () = departed(client, bytes, limit) => {
            debug!(pool = %pool.name, "client left while waiting for admission");
            drop(ticket);
            Err(Refusal::QueueAbandoned)
        }
        admitted = admitted => match admitted {
            Some(admitted) => {
                ticket.admitted();
                Ok(admitted)
            }
            None => {
                ticket.dismissed();
                Ok(no_candidates())
            }
        },
        () = sleep_until(deadline) => {
            static LATE: LogLimiter = crate::ratelog::per_kind();
            if let Some(suppressed) = LATE.allow() {
                info!(pool = %pool.name, timeout = ?admission.timeout(), suppressed, "no admission within the queue timeout; client refused");
            }
            ticket.timed_out();
            Err(Refusal::QueueTimeout(protocol))
        }
    }
}

/// Completes when the client closes its connection (EOF, or an error such
/// as a reset). What it sends meanwhile is appended to `bytes`, up to
/// `limit` in all; then reading stops, and this never completes.
async fn departed<S>(client: &mut S, bytes: &mut Vec<u8>, limit: usize)
where
    S: AsyncRead + Unpin,
{
    loop {
        let room = limit.saturating_sub(bytes.len());
        if room == 0 {
            return std::future::pending().await;
        }
        let mut free = BufMut::limit(&mut *bytes, room);
        match client.read_buf(&mut free).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn packets_behind_the_connect_are_kept_and_a_close_is_departure() {
        let (mut client, mut proxy_side) = tokio::io::duplex(64);
        let mut bytes = b"CONNECT".to_vec();
        let limit = bytes.len() + 8;
        client.write_all(b"PING").await.unwrap();
        client.shutdown().await.unwrap();
        departed(&mut proxy_side, &mut bytes, limit).await;
        assert_eq!(bytes, b"CONNECTPING", "kept, to be forwarded");

        // Past the limit, reading stops: a close is no longer seen.
        let (mut client, mut proxy_side) = tokio::io::duplex(64);
        let mut bytes = Vec::new();
        client.write_all(b"0123456789").await.unwrap();
        client.shutdown().await.unwrap();
        let watched = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            departed(&mut proxy_side, &mut bytes, 4),
        )
        .await;
        assert!(watched.is_err(), "stops reading at the limit");
        assert_eq!(bytes, b"0123");
    }
}
