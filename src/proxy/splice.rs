//! Bidirectional copy between client and backend with correct half-close,
//! an idle timeout, and no per-connection buffers while idle.
//!
//! tokio's `copy_bidirectional` keeps two 8 KiB buffers for the life of
//! every connection; an MQTT deployment is mostly idle connections, so that
//! is most of the per-connection memory. Here each direction reads into a
//! per-thread scratch buffer and writes straight from it. Only when the
//! writer cannot take everything (backpressure) is the remainder copied into
//! a buffer owned by the connection, sized to that remainder and freed once
//! written. The scratch is never held across a `Pending`: an `AsyncRead`
//! that returns `Pending` has read nothing, and everything read is either
//! written or copied out before `poll` returns.
//!
//! When one side reaches EOF, the other side's write half is shut down
//! (for TLS: close_notify, then TCP FIN) and the opposite direction keeps
//! flowing until it ends too.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::mqtt::framing::FrameTracker;

/// Size of the per-thread read scratch. Large enough to move a burst of
/// small MQTT packets (or one TLS record's plaintext) per read.
const SCRATCH: usize = 16 * 1024;
/// Reads per direction per poll before yielding to other tasks.
const MAX_READS_PER_POLL: usize = 32;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH].into_boxed_slice());
}

/// How a splice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpliceEnd {
    /// Both sides closed their write halves.
    Closed,
    /// No byte moved in either direction for the idle timeout.
    Idle,
    /// The client was handed the drain packet at a packet boundary and its
    /// side closed (drain with MQTT 5 DISCONNECT "use another server").
    Kicked,
}

/// Ask a spliced MQTT client to go elsewhere: when `token` is kicked,
/// the backend→client direction stops at the next packet boundary, writes
/// the signal's DISCONNECT (MQTT 5; nothing for 3.1.1) to the client and
/// closes. The splice also keeps the signal's byte counts up to date when
/// asked.
pub struct Kick {
    pub token: std::sync::Arc<crate::balance::KickSignal>,
    /// An MQTT 5 client (it gets a DISCONNECT before the close).
    pub v5: bool,
    /// Keep the signal's byte counts up to date (only the client index
    /// reads them).
    pub count_bytes: bool,
    /// Where the backend→client stream stands when the splice starts (the
    /// proxy may already have forwarded part of it, e.g. the CONNACK).
    pub downstream: FrameTracker,
}

/// Which side an I/O error came from.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("client: {0}")]
    Client(io::Error),
    #[error("backend: {0}")]
    Backend(io::Error),
}

/// Totals of a finished splice.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transferred {
    pub upstream: u64,
    pub downstream: u64,
    /// The client's side reached EOF before the backend's (a
    /// [`SpliceEnd::Closed`] splice: who closed first).
    pub client_closed_first: bool,
}

struct Half {
    /// Bytes read but not yet accepted by the writer; empty (no capacity)
    /// whenever the direction is not backpressured.
    pending: Vec<u8>,
    pos: usize,
    eof: bool,
    done: bool,
    bytes: u64,
    counter: Counter,
    /// Packet boundaries of this direction (only where a kick can happen).
    tracker: Option<FrameTracker>,
    /// A kick was requested: stop at the next boundary and inject this.
    kick: Option<&'static [u8]>,
    kicked: bool,
}

enum Side {
    Read,
    Write,
}

impl Half {
    fn new(counter: Counter) -> Half {
        Half {
            pending: Vec::new(),
            pos: 0,
            eof: false,
            done: false,
            bytes: 0,
            counter,
            tracker: None,
            kick: None,
            kicked: false,
        }
    }

    /// Drive one direction. `Ready(Ok)` once EOF was read and the writer
    /// shut down.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        last_activity: &mut Instant,
    ) -> Poll<Result<(), (Side, io::Error)>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        for _ in 0..MAX_READS_PER_POLL {
            // Flush what backpressure left over.
            while let Some(rest) = self.pending.get(self.pos..).filter(|r| !r.is_empty()) {
                let n = ready!(w.as_mut().poll_write(cx, rest)).map_err(|e| (Side::Write, e))?;
                if n == 0 {
                    return Poll::Ready(Err((Side::Write, io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
            }
            if !self.pending.is_empty() {
                self.pending = Vec::new();
                self.pos = 0;
            }
            if let Some(packet) = self.kick {
                if !self.kicked && self.tracker.is_none_or(|t| t.at_boundary()) {
                    // At a packet boundary: the client's last packet is the
                    // drain DISCONNECT, then its side closes.
                    self.kicked = true;
                    self.eof = true;
                    self.pending = packet.to_vec();
                    continue;
                }
            }
            if self.eof {
                ready!(w.as_mut().poll_shutdown(cx)).map_err(|e| (Side::Write, e))?;
                return Poll::Ready(Ok(()));
            }
            let step = SCRATCH_BUF.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut rb = ReadBuf::new(&mut scratch[..]);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::Read, e))),
                    Poll::Ready(Ok(())) => {}
                }
                let data = rb.filled();
                if data.is_empty() {
                    self.eof = true;
                    return Poll::Ready(Ok(()));
                }
                *last_activity = Instant::now();
                self.bytes += data.len() as u64;
                self.counter.inc_by(data.len() as u64);
                // Kicking: forward up to the end of the current packet and
                // drop the rest (the client is leaving this node).
                let data = match &mut self.tracker {
                    Some(t) => data
                        .get(..t.advance(data, self.kick.is_some()))
                        .unwrap_or(data),
                    None => data,
                };
                let mut written = 0;
                while let Some(rest) = data.get(written..).filter(|r| !r.is_empty()) {
                    match w.as_mut().poll_write(cx, rest) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err((
                                Side::Write,
                                io::ErrorKind::WriteZero.into(),
                            )));
                        }
                        Poll::Ready(Ok(n)) => written += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err((Side::Write, e))),
                        Poll::Pending => break,
                    }
                }
                if let Some(rest) = data.get(written..).filter(|r| !r.is_empty()) {
                    self.pending = rest.to_vec();
                }
                Poll::Ready(Ok(()))
            });
            match step {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read now: push out whatever the writer
                    // buffered (a TLS writer holds records until flushed).
                    ready!(w.as_mut().poll_flush(cx)).map_err(|e| (Side::Write, e))?;
                    return Poll::Pending;
                }
            }
        }
        // Budget used: let other tasks run, then continue.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The two directions of one proxied connection, as a future.
struct Splice<'a, C: ?Sized, B: ?Sized> {
    client: &'a mut C,
    backend: &'a mut B,
    up: Half,
    down: Half,
    last_activity: Instant,
    kick: Option<(std::sync::Arc<crate::balance::KickSignal>, bool)>,
    /// Where the byte counts go (`/api/v1/clients`).
    live: Option<std::sync::Arc<crate::balance::KickSignal>>,
    /// The client→backend direction ended first.
    client_first: bool,
}

impl<C, B> Future for Splice<'_, C, B>
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = Result<(), SpliceError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some((token, v5)) = &this.kick {
            if token.poll_kicked(cx) {
                this.down.kick = Some(if *v5 { token.packet() } else { &[] });
                this.kick = None;
            }
        }
        if !this.up.done {
            match this.up.poll(
                cx,
                Pin::new(&mut *this.client),
                Pin::new(&mut *this.backend),
                &mut this.last_activity,
            ) {
                Poll::Ready(Ok(())) => {
                    this.up.done = true;
                    this.client_first = !this.down.done;
                }
                Poll::Ready(Err((Side::Read, e))) => {
                    return Poll::Ready(Err(SpliceError::Client(e)));
                }
                Poll::Ready(Err((Side::Write, e))) => {
                    return Poll::Ready(Err(SpliceError::Backend(e)));
                }
                Poll::Pending => {}
            }
        }
        if !this.down.done {
            match this.down.poll(
                cx,
                Pin::new(&mut *this.backend),
                Pin::new(&mut *this.client),
                &mut this.last_activity,
            ) {
                Poll::Ready(Ok(())) => {
                    this.down.done = true;
                    if this.down.kicked {
                        // The client has its DISCONNECT; the backend side
                        // is closed by dropping it.
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err((Side::Read, e))) => {
                    return Poll::Ready(Err(SpliceError::Backend(e)));
                }
                Poll::Ready(Err((Side::Write, e))) => {
                    return Poll::Ready(Err(SpliceError::Client(e)));
                }
                Poll::Pending => {}
            }
        }
        if let Some(live) = &this.live {
            live.bytes_in.store(this.up.bytes, Ordering::Relaxed);
            live.bytes_out.store(this.down.bytes, Ordering::Relaxed);
        }
        if this.up.done && this.down.done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

/// Copy both ways until both sides have closed, an error, or `idle` passes
/// without a byte moving in either direction.
pub async fn splice<C, B>(
    client: &mut C,
    backend: &mut B,
    idle: Duration,
    upstream: Counter,
    downstream: Counter,
    kick: Option<Kick>,
) -> (Result<SpliceEnd, SpliceError>, Transferred)
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut down = Half::new(downstream);
    if let Some(k) = &kick {
        down.tracker = Some(k.downstream);
    }
    let mut s = Splice {
        client,
        backend,
        up: Half::new(upstream),
        down,
        last_activity: Instant::now(),
        live: kick
            .as_ref()
            .filter(|k| k.count_bytes)
            .map(|k| k.token.clone()),
        kick: kick.map(|k| (k.token, k.v5)),
        client_first: false,
    };
    let timer = tokio::time::sleep(idle);
    tokio::pin!(timer);
    let result = loop {
        tokio::select! {
            r = &mut s => break r.map(|()| if s.down.kicked { SpliceEnd::Kicked } else { SpliceEnd::Closed }),
            () = &mut timer => {
                // Activity only records a timestamp; the timer is re-armed
                // here, once per idle period, rather than on every packet.
                let deadline = s.last_activity + idle;
                if Instant::now() >= deadline {
                    break Ok(SpliceEnd::Idle);
                }
                timer.as_mut().reset(deadline);
            }
        }
    };
    let t = Transferred {
        upstream: s.up.bytes,
        downstream: s.down.bytes,
        client_closed_first: s.client_first,
    };
    (result, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    #[tokio::test]
    async fn half_close_lets_the_other_direction_finish() {
        let (mut client, mut client_side) = duplex(64);
        let (mut backend_side, mut backend) = duplex(64);
        let task = tokio::spawn(async move {
            splice(
                &mut client_side,
                &mut backend_side,
                Duration::from_secs(60),
                Counter::default(),
                Counter::default(),
                None,
            )
            .await
        });
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        // Backend still answers after the client's FIN; a large reply forces
        // backpressure through the 64-byte pipe.
        let reply = vec![7u8; 100_000];
        let writer = tokio::spawn(async move {
            backend.write_all(&reply).await.unwrap();
            backend.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 100_000);
        writer.await.unwrap();
        let (r, t) = task.await.unwrap();
        assert_eq!(r.unwrap(), SpliceEnd::Closed);
        assert_eq!((t.upstream, t.downstream), (5, 100_000));
        assert!(t.client_closed_first);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_activity_in_either_direction() {
        let (mut client, mut client_side) = duplex(64);
        let (mut backend_side, _backend) = duplex(64);
        let start = Instant::now();
        let task = tokio::spawn(async move {
            splice(
                &mut client_side,
                &mut backend_side,
                Duration::from_secs(10),
                Counter::default(),
                Counter::default(),
                None,
            )
            .await
        });
        tokio::time::sleep(Duration::from_secs(8)).await;
        client.write_all(b"ping").await.unwrap();
        let (r, _) = task.await.unwrap();
        assert_eq!(r.unwrap(), SpliceEnd::Idle);
        // Ends 10 s after the last activity at t=8 s, not at t=10 s.
        assert_eq!(start.elapsed().as_secs(), 18);
    }
}
