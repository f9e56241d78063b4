//! The relay: the broker's answer to the client, then bytes both ways
//! until both sides close, the idle timeout, or a drain kick; counted by how
//! it ended.

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout};
use tracing::{debug, info};

use super::super::splice::{Kick, SpliceEnd, SpliceError, splice};
use super::Conn;
use super::place::Placed;
use crate::metrics::Disconnect;
use crate::mqtt::ProtocolVersion;
use crate::mqtt::framing::FrameTracker;

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
        let (backend, mut upstream, _active, protocol, idle, downstream) = {
            let Placed {
                backend,
                upstream,
                active,
                answer,
                protocol,
                idle,
                pool,
            } = placed;
            let mut downstream = FrameTracker::default();
            if !answer.is_empty() {
                downstream.advance(&answer, false);
                let forwarded = timeout(pool.connack_timeout, async {
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
            (backend, upstream, active, protocol, idle, downstream)
        };

        // MQTT 5 clients can be asked to move when their backend drains.
        let kickable = (protocol == Some(ProtocolVersion::V5)).then(|| backend.kickable(self.id));
        let started = Instant::now();
        let (result, moved) = splice(
            client,
            &mut upstream,
            idle,
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
    }
}
