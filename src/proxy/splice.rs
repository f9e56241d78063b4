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
//! A direction reads everything available before it writes: reads fill the
//! scratch until one returns `Pending` (its waker is then registered), EOF,
//! an error, or the scratch is full, and what they brought goes out in one
//! `poll_write`. On the TLS side that is one record of up to 16 KiB and one
//! `writev` for a burst of MQTT packets, not one per read; on the plain
//! side one `send`. Nothing waits for more input than is already there, so
//! no latency is added. A read error after some bytes is reported once
//! those are written.
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
    /// A read failed after earlier reads of the same fill brought bytes:
    /// reported once those are written.
    read_error: Option<io::Error>,
}

/// How one fill of the scratch ended.
struct Filled {
    /// Bytes at the start of the scratch to write.
    len: usize,
    /// The last read returned `Pending` (the reader's waker is registered).
    read_pending: bool,
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
            read_error: None,
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
        let mut budget = MAX_READS_PER_POLL;
        loop {
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
            if let Some(e) = self.read_error.take() {
                return Poll::Ready(Err((Side::Read, e)));
            }
            if self.eof {
                ready!(w.as_mut().poll_shutdown(cx)).map_err(|e| (Side::Write, e))?;
                return Poll::Ready(Ok(()));
            }
            if budget == 0 {
                // Budget used: let other tasks run, then continue.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let step = SCRATCH_BUF.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let filled =
                    self.fill(cx, r.as_mut(), &mut scratch[..], &mut budget, last_activity);
                let data = scratch.get(..filled.len).unwrap_or_default();
                self.write_or_keep(cx, w.as_mut(), data)
                    .map(|blocked| (filled.read_pending, blocked))
            });
            let (read_pending, write_blocked) = step.map_err(|e| (Side::Write, e))?;
            if write_blocked {
                // The remainder is owned; the writer wakes us.
                return Poll::Pending;
            }
            if read_pending {
                // Nothing more to read now: push out whatever the writer
                // buffered (a TLS writer holds records until flushed).
                ready!(w.as_mut().poll_flush(cx)).map_err(|e| (Side::Write, e))?;
                return Poll::Pending;
            }
        }
    }

    /// Read into `scratch` until a read returns `Pending`, EOF, an error,
    /// the scratch is full or the read budget is spent; with a kick
    /// pending, stop at the first packet boundary. Counts what was read;
    /// returns how much of the scratch to write (a kick drops the rest of a
    /// read past the boundary).
    fn fill<R>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        scratch: &mut [u8],
        budget: &mut usize,
        last_activity: &mut Instant,
    ) -> Filled
    where
        R: AsyncRead + ?Sized,
    {
        let mut filled = Filled {
            len: 0,
            read_pending: false,
        };
        let mut read_any = false;
        while *budget > 0 {
            let Some(free) = scratch.get_mut(filled.len..).filter(|f| !f.is_empty()) else {
                break;
            };
            let mut rb = ReadBuf::new(free);
            match r.as_mut().poll_read(cx, &mut rb) {
                Poll::Pending => {
                    filled.read_pending = true;
                    break;
                }
                Poll::Ready(Err(e)) => {
                    self.read_error = Some(e);
                    break;
                }
                Poll::Ready(Ok(())) => {}
            }
            *budget -= 1;
            let data = rb.filled();
            if data.is_empty() {
                self.eof = true;
                break;
            }
            read_any = true;
            self.bytes += data.len() as u64;
            self.counter.inc_by(data.len() as u64);
            let Some(t) = &mut self.tracker else {
                filled.len += data.len();
                continue;
            };
            // Kicking: forward up to the end of the current packet and
            // drop the rest (the client is leaving this node).
            let kicking = self.kick.is_some();
            filled.len += t.advance(data, kicking);
            if kicking && t.at_boundary() {
                break;
            }
        }
        if read_any {
            *last_activity = Instant::now();
        }
        filled
    }

    /// Write `data`, in one `poll_write` when the writer takes it all;
    /// what it does not take now is copied to the owned remainder.
    /// `Ok(true)`: the writer returned `Pending` (its waker is registered).
    fn write_or_keep<W>(
        &mut self,
        cx: &mut Context<'_>,
        mut w: Pin<&mut W>,
        data: &[u8],
    ) -> io::Result<bool>
    where
        W: AsyncWrite + ?Sized,
    {
        let mut written = 0;
        while let Some(rest) = data.get(written..).filter(|r| !r.is_empty()) {
            match w.as_mut().poll_write(cx, rest) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {
                    self.pending = rest.to_vec();
                    return Ok(true);
                }
            }
        }
        Ok(false)
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
    use std::collections::VecDeque;
    use std::task::Waker;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    /// One step of a [`Script`] reader.
    enum Step {
        /// One read returns these bytes.
        Data(Vec<u8>),
        /// One read returns `Pending` (and keeps the waker, as a socket does).
        Pending,
        /// One read fails.
        Error,
    }

    /// A reader that hands out scripted steps, then EOF.
    #[derive(Default)]
    struct Script {
        steps: VecDeque<Step>,
        waker: Option<Waker>,
        reads: usize,
    }

    impl Script {
        fn new(steps: impl IntoIterator<Item = Step>) -> Script {
            Script {
                steps: steps.into_iter().collect(),
                ..Script::default()
            }
        }
    }

    impl AsyncRead for Script {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            match self.steps.pop_front() {
                None => Poll::Ready(Ok(())),
                Some(Step::Data(mut d)) => {
                    let n = d.len().min(buf.remaining());
                    buf.put_slice(&d[..n]);
                    if n < d.len() {
                        self.steps.push_front(Step::Data(d.split_off(n)));
                    }
                    Poll::Ready(Ok(()))
                }
                Some(Step::Pending) => {
                    self.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                Some(Step::Error) => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            }
        }
    }

    /// A writer that takes everything and records each call.
    #[derive(Default)]
    struct Recorder {
        out: Vec<u8>,
        /// Length of each `poll_write`.
        writes: Vec<usize>,
        flushes: usize,
        /// Bytes written when `poll_shutdown` was called.
        shut_at: Option<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            assert!(self.shut_at.is_none(), "write after shutdown");
            self.writes.push(buf.len());
            self.out.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.shut_at = Some(self.out.len());
            Poll::Ready(Ok(()))
        }
    }

    /// Poll `half` once with a waker that does nothing.
    fn poll_once(half: &mut Half, r: &mut Script, w: &mut Recorder) -> Poll<Result<(), String>> {
        let mut cx = Context::from_waker(Waker::noop());
        let mut last = Instant::now();
        half.poll(&mut cx, Pin::new(r), Pin::new(w), &mut last)
            .map_err(|(side, e)| match side {
                Side::Read => format!("read: {e}"),
                Side::Write => format!("write: {e}"),
            })
    }

    /// Poll until ready; returns the result and how many polls it took.
    fn poll_to_end(
        half: &mut Half,
        r: &mut Script,
        w: &mut Recorder,
    ) -> (Result<(), String>, usize) {
        for polls in 1..=1000 {
            if let Poll::Ready(res) = poll_once(half, r, w) {
                return (res, polls);
            }
        }
        panic!("the half never finished");
    }

    /// An MQTT packet: PUBLISH QoS 0 with a `len`-byte body.
    fn publish(len: u8, fill: u8) -> Vec<u8> {
        let mut p = vec![0x30, len];
        p.resize(2 + usize::from(len), fill);
        p
    }

    #[test]
    fn reads_everything_available_then_writes_it_once() {
        // 40 small reads, then the reader has nothing (Pending), then 10
        // more and EOF: the first poll writes the read budget's worth
        // (32 reads) in one write and the next 8 in another; the last 10
        // go in one write before the shutdown.
        let chunks: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 1 + usize::from(i % 7)]).collect();
        let mut steps: Vec<Step> = chunks.iter().take(40).cloned().map(Step::Data).collect();
        steps.push(Step::Pending);
        steps.extend(chunks.iter().skip(40).cloned().map(Step::Data));
        let mut r = Script::new(steps);
        let mut w = Recorder::default();
        let counter = Counter::default();
        let mut half = Half::new(counter.clone());
        let (res, _) = poll_to_end(&mut half, &mut r, &mut w);
        res.unwrap();
        let len = |range: std::ops::Range<usize>| chunks[range].iter().map(Vec::len).sum::<usize>();
        assert_eq!(w.writes, [len(0..32), len(32..40), len(40..50)]);
        assert_eq!(w.out, chunks.concat(), "bytes in order");
        assert_eq!(
            w.shut_at,
            Some(w.out.len()),
            "shut down after the last write"
        );
        assert_eq!(half.bytes, len(0..50) as u64);
        assert_eq!(counter.get(), len(0..50) as u64);
    }

    #[test]
    fn a_pending_read_after_some_bytes_writes_them_before_returning() {
        let mut r = Script::new([
            Step::Data(b"ab".to_vec()),
            Step::Data(b"cd".to_vec()),
            Step::Pending,
            Step::Data(b"ef".to_vec()),
        ]);
        let mut w = Recorder::default();
        let mut half = Half::new(Counter::default());
        assert!(poll_once(&mut half, &mut r, &mut w).is_pending());
        // Written in one go and flushed, with the reader's waker kept.
        assert_eq!(w.writes, [4]);
        assert_eq!(w.out, b"abcd");
        assert_eq!(w.flushes, 1);
        assert!(r.waker.is_some());
        assert_eq!(half.pending.capacity(), 0, "no owned buffer while idle");
        assert!(poll_once(&mut half, &mut r, &mut w).is_ready());
        assert_eq!(w.out, b"abcdef");
        assert_eq!(w.shut_at, Some(6));
    }

    #[test]
    fn a_read_error_after_some_bytes_is_reported_once_they_are_written() {
        let mut r = Script::new([Step::Data(b"last words".to_vec()), Step::Error]);
        let mut w = Recorder::default();
        let mut half = Half::new(Counter::default());
        let (res, polls) = poll_to_end(&mut half, &mut r, &mut w);
        assert!(res.unwrap_err().starts_with("read:"));
        assert_eq!(polls, 1);
        assert_eq!(w.out, b"last words");
        assert_eq!(w.shut_at, None, "an error is no half-close");
    }

    #[test]
    fn a_kick_after_a_coalesced_read_lands_on_a_packet_boundary() {
        let (p1, p2, p3, p4) = (publish(10, 1), publish(30, 2), publish(5, 3), publish(5, 4));
        let disconnect: &'static [u8] = &[0xe0, 0x02, 0x9c, 0x00];
        let mut r = Script::new([
            // Packet 1 and the start of packet 2.
            Step::Data(p1.iter().chain(&p2[..7]).copied().collect()),
            Step::Pending,
            // Kicked here. The rest of packet 2 comes in two reads, the
            // second with packet 3 behind it; packet 4 is never read.
            Step::Data(p2[7..20].to_vec()),
            Step::Data(p2[20..].iter().chain(&p3).copied().collect()),
            Step::Data(p4),
        ]);
        let mut w = Recorder::default();
        let mut half = Half::new(Counter::default());
        half.tracker = Some(FrameTracker::default());
        assert!(poll_once(&mut half, &mut r, &mut w).is_pending());
        assert_eq!(w.out.len(), p1.len() + 7);
        half.kick = Some(disconnect);
        let (res, polls) = poll_to_end(&mut half, &mut r, &mut w);
        res.unwrap();
        assert_eq!(polls, 1);
        assert!(half.kicked);
        let expected: Vec<u8> = [&p1[..], &p2[..], disconnect].concat();
        assert_eq!(
            w.out, expected,
            "packet 2 whole, packet 3 dropped, then the DISCONNECT"
        );
        // The rest of packet 2 went out in one write (two reads).
        assert_eq!(w.writes, [p1.len() + 7, p2.len() - 7, disconnect.len()]);
        assert_eq!(w.shut_at, Some(expected.len()));
        assert_eq!(r.steps.len(), 1, "nothing read past the boundary's read");
        // Counted as read, though not forwarded.
        assert_eq!(half.bytes, (p1.len() + p2.len() + p3.len()) as u64);
    }

    #[test]
    fn a_kick_at_a_boundary_is_sent_before_reading_more() {
        let p1 = publish(3, 1);
        let disconnect: &'static [u8] = &[0xe0, 0x00];
        let mut r = Script::new([
            Step::Data(p1.clone()),
            Step::Pending,
            Step::Data(publish(3, 2)),
        ]);
        let mut w = Recorder::default();
        let mut half = Half::new(Counter::default());
        half.tracker = Some(FrameTracker::default());
        assert!(poll_once(&mut half, &mut r, &mut w).is_pending());
        half.kick = Some(disconnect);
        assert!(poll_once(&mut half, &mut r, &mut w).is_ready());
        assert_eq!(w.out, [&p1[..], disconnect].concat());
        assert_eq!(r.steps.len(), 1);
    }

    type SpliceTask = tokio::task::JoinHandle<(Result<SpliceEnd, SpliceError>, Transferred)>;

    /// A splice between two in-memory pipes of `pipe` bytes, spawned;
    /// returns the client's and the backend's ends and the task.
    fn spawn_splice(
        pipe: usize,
        idle: Duration,
    ) -> (tokio::io::DuplexStream, tokio::io::DuplexStream, SpliceTask) {
        let (client, mut client_side) = duplex(pipe);
        let (mut backend_side, backend) = duplex(pipe);
        let task = tokio::spawn(async move {
            splice(
                &mut client_side,
                &mut backend_side,
                idle,
                Counter::default(),
                Counter::default(),
                None,
            )
            .await
        });
        (client, backend, task)
    }

    #[tokio::test]
    async fn many_small_writes_arrive_in_order_both_ways() {
        let (client, backend, task) = spawn_splice(512, Duration::from_secs(60));
        let pattern = |seed: u32| -> Vec<Vec<u8>> {
            (0..2000u32)
                .map(|i| {
                    let n = (i * 7 + seed) % 97 + 1;
                    (0..n).map(|j| (i + j + seed) as u8).collect()
                })
                .collect()
        };
        let (up, down) = (pattern(1), pattern(2));
        let (up_all, down_all) = (up.concat(), down.concat());
        let (mut client_r, client_w) = tokio::io::split(client);
        let (mut backend_r, backend_w) = tokio::io::split(backend);
        let write_all = |mut w: tokio::io::WriteHalf<tokio::io::DuplexStream>,
                         chunks: Vec<Vec<u8>>| async move {
            for (i, c) in chunks.iter().enumerate() {
                w.write_all(c).await.unwrap();
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            w.shutdown().await.unwrap();
        };
        let writers = tokio::spawn(async move {
            tokio::join!(write_all(client_w, up), write_all(backend_w, down));
        });
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        let (a, b) = tokio::join!(
            backend_r.read_to_end(&mut got_up),
            client_r.read_to_end(&mut got_down)
        );
        a.unwrap();
        b.unwrap();
        writers.await.unwrap();
        assert_eq!(got_up, up_all);
        assert_eq!(got_down, down_all);
        let (r, t) = task.await.unwrap();
        assert_eq!(r.unwrap(), SpliceEnd::Closed);
        assert_eq!(
            (t.upstream, t.downstream),
            (up_all.len() as u64, down_all.len() as u64)
        );
    }

    #[tokio::test]
    async fn half_close_lets_the_other_direction_finish() {
        let (mut client, mut backend, task) = spawn_splice(64, Duration::from_secs(60));
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
        let start = Instant::now();
        let (mut client, _backend, task) = spawn_splice(64, Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(8)).await;
        client.write_all(b"ping").await.unwrap();
        let (r, _) = task.await.unwrap();
        assert_eq!(r.unwrap(), SpliceEnd::Idle);
        // Ends 10 s after the last activity at t=8 s, not at t=10 s.
        assert_eq!(start.elapsed().as_secs(), 18);
    }
}
