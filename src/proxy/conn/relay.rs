//! The relay: the broker's answer to the client, then bytes both ways
//! until both sides close, the idle timeout, or a drain kick; counted by how
//! it ended.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tracing::{debug, info};

use super::super::splice::{Kick, SpliceEnd, SpliceError, splice};
use super::Conn;
use super::place::Placed;
use crate::accesslog::End;
use crate::metrics::Disconnect;
use crate::mqtt::ProtocolVersion;
use crate::mqtt::framing::FrameTracker;
use crate::mqtt::packets::{ConnackHead, connack_head};

impl Conn {
    /// Relay a placed client until the connection ends.
    pub(super) async fn relay<S>(&self, client: &mut S, placed: Placed<'_>)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ctx = &self.ctx;
        // The broker's answer (its CONNACK, and whatever it sent right
        // after) goes to the client before the splice, within the pool's
        // `connack_timeout`; the frame tracker learns where the stream
        // stands so a drain kick still lands on a packet boundary. (A
        // block: what only this step uses is not kept across the splice.)
        let (
            backend,
            mut upstream,
            _active,
            protocol,
            idle,
            key,
            client_id,
            downstream,
            answer_len,
        ) = {
            let Placed {
                backend,
                upstream,
                active,
                answer,
                protocol,
                idle,
                key,
                client_id,
                pool,
            } = placed;
            let mut downstream = FrameTracker::default();
            if let ConnackHead::Complete { code, .. } = connack_head(&answer) {
                self.note(|f| f.connack = Some(code));
            }
            if !answer.is_empty() {
                downstream.advance(&answer, false);
                let forwarded = timeout(pool.connack_timeout, async {
                    client.write_all(&answer).await?;
                    client.flush().await
                })
                .await;
                if !matches!(forwarded, Ok(Ok(()))) {
                    debug!("client left before its CONNACK was forwarded");
                    self.note(|f| f.end = Some(End::ClientError));
                    return;
                }
                ctx.metrics.downstream_bytes.inc_by(answer.len() as u64);
            }
            (
                backend,
                upstream,
                active,
                protocol,
                idle,
                key,
                client_id,
                downstream,
                answer.len() as u64,
            )
        };

        // MQTT clients can be asked to move: by a drain (MQTT 5: DISCONNECT
        // "use another server") and by a rebalance (3.1.1: closed at a
        // packet boundary). Pass-through connections have no boundaries.
        let v5 = protocol == Some(ProtocolVersion::V5);
        let kickable = protocol.map(|_| backend.kickable(self.id, v5, key));
        // "Where is device X?": in the index while relayed.
        let indexed = match (&ctx.clients, &client_id, protocol, &kickable) {
            (Some(index), Some(id), Some(protocol), Some(k)) => {
                Some(index.register(crate::proxy::clients::Registration {
                    client_id: id,
                    conn: self.id,
                    listener: &ctx.label,
                    peer: self.peer,
                    sni: self.tls.as_ref().and_then(|t| t.sni.as_ref()),
                    protocol,
                    resumed: self.tls.as_ref().is_some_and(|t| t.resumed),
                    backend: &backend,
                    signal: k.signal(),
                }))
            }
            _ => None,
        };
        drop(client_id);
        let started = Instant::now();
        let (result, moved) = splice(
            client,
            &mut upstream,
            idle,
            ctx.metrics.upstream_bytes.clone(),
            ctx.metrics.downstream_bytes.clone(),
            kickable.as_ref().map(|k| Kick {
                token: k.token(),
                v5,
                count_bytes: indexed.is_some(),
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
                    v5,
                    "client asked to move (drain or rebalance): DISCONNECT \"use another server\" (MQTT 5) or closed (3.1.1)"
                );
                Disconnect::Drained
            }
            Ok(SpliceEnd::Idle) => {
                debug!(up = moved.upstream, down = moved.downstream, idle = ?idle, "idle timeout");
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
        self.note(|f| {
            f.end = Some(match how {
                Disconnect::Closed if moved.client_closed_first => End::ClosedByClient,
                Disconnect::Closed => End::ClosedByBroker,
                Disconnect::IdleTimeout => End::IdleTimeout,
                // A drain or rebalance kick.
                Disconnect::Drained => End::Moved,
                Disconnect::ClientError => End::ClientError,
                Disconnect::BackendError => End::BackendError,
            });
            if let Some((up, down)) = &mut f.bytes {
                *up += moved.upstream;
                *down += answer_len + moved.downstream;
            }
        });
    }
}
