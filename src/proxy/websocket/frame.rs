//! The WebSocket frame codec behind a `to = "tcp"` listener: [`WsIo`]
//! turns the client's binary frames into the plain MQTT byte stream, and
//! that stream back into frames (RFC 6455; MQTT 5.0 §6, 3.1.1 §6).
//!
//! # Why [`WsIo`] does its own framing
//!
//! MQTT over WebSocket is a byte stream: a frame may carry several MQTT
//! packets or part of one, and frame and message boundaries mean nothing.
//! tungstenite's `WebSocketStream` reassembles a whole message (and a whole
//! frame) before it yields a byte, so a client could make the proxy hold
//! `max_message_size` per connection — a fragmented message that opens
//! with a CONNECT declaring a megabyte and never ends — before the CONNECT
//! reader, whose `max_connect_size` refuses that header at once, saw a
//! byte. [`WsIo`] hands payload bytes on as they arrive instead: its memory
//! is a fixed read buffer, one control-frame payload (≤ 125 bytes) and a
//! bounded output queue, whatever the sizes of frames and messages, so the
//! caps behind it apply from the first byte. `max_frame_size` and
//! `max_message_size` remain as policy, checked from the frame headers.
//! tungstenite still provides the frame-header codec, the opcodes and close
//! codes, and the `Sec-WebSocket-Accept` key.

use std::io::{self, Cursor};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use crate::config::WebSocketConfig;

/// Read buffer of each unwrapped WebSocket: frame headers, control frames
/// and the payload bytes that came with them. Payload is otherwise read
/// straight into the caller's buffer.
const WS_READ_BUFFER: usize = 4 * 1024;
/// Largest payload of a frame the proxy sends; a longer write is framed in
/// pieces (the caller writes the rest next).
const MAX_OUT_FRAME: usize = 16 * 1024;
/// Queued output past which a ping is not answered — and nothing more is
/// read — until the client has read some: a ping flood from a client that
/// never reads cannot grow the queue.
const MAX_QUEUED_CONTROL: usize = 4 * 1024;
/// Capacity the output queue keeps once empty (reused by the next write);
/// a larger one is freed.
const OUT_KEEP: usize = 4 * 1024;
/// Transport reads per `poll_read` that deliver no payload (control or
/// empty frames) before the task yields: a flood of them must not hold the
/// thread.
const MAX_FILLS_PER_READ: usize = 32;
/// Control frames carry at most 125 payload bytes (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// A close reason fits a control frame after its 2-byte code.
const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - 2;

/// Why a client's frames were refused: each closes the WebSocket with its
/// close code, and the read fails with it (as `InvalidData`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("unmasked client frame")]
    Unmasked,
    #[error("reserved bits set")]
    Reserved,
    #[error("reserved opcode")]
    Opcode,
    #[error("MQTT over WebSocket is binary only (MQTT-6.0.0-1)")]
    Text,
    #[error("continuation frame outside a message")]
    Continuation,
    #[error("new message before the last one ended")]
    Interleaved,
    #[error("fragmented or oversized control frame")]
    Control,
    #[error("bad close frame")]
    Close,
    #[error("close reason is not UTF-8")]
    CloseReason,
    #[error("frame larger than max_frame_size")]
    FrameTooBig,
    #[error("message larger than max_message_size")]
    MessageTooBig,
}

impl Violation {
    /// The close code sent for it (RFC 6455 §7.4.1).
    fn code(self) -> CloseCode {
        match self {
            Violation::Text => CloseCode::Unsupported,
            Violation::CloseReason => CloseCode::Invalid,
            Violation::FrameTooBig | Violation::MessageTooBig => CloseCode::Size,
            Violation::Unmasked
            | Violation::Reserved
            | Violation::Opcode
            | Violation::Continuation
            | Violation::Interleaved
            | Violation::Control
            | Violation::Close => CloseCode::Protocol,
        }
    }
}

/// Where the reader stands in the client's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    /// The next bytes are a frame header.
    Header,
    /// Inside a data frame: `remaining` payload bytes to come, the next of
    /// them at `phase` (mod 4) into `mask`.
    Data {
        remaining: u64,
        mask: [u8; 4],
        phase: usize,
    },
    /// Collecting a control frame's `len` payload bytes into `WsIo::control`.
    Control {
        opcode: Control,
        len: usize,
        mask: [u8; 4],
    },
    /// The client closed: end of stream.
    Closed,
    /// The client broke the protocol; a close was sent.
    Failed(Violation),
}

/// The server side of an upgraded connection as a byte stream: the payload
/// of the client's binary frames in, binary frames out. Payload bytes are
/// handed on as they arrive, never held for the rest of their frame or
/// message (see the module documentation).
pub struct WsIo<S> {
    io: S,
    /// Bytes read from the client: `rbuf[rpos..rend]` are not parsed yet.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    state: ReadState,
    /// A fragmented message is open: its final frame has not come yet.
    in_message: bool,
    /// Payload bytes of the current message so far.
    message_len: u64,
    /// The payload of the control frame being read.
    control: [u8; MAX_CONTROL_PAYLOAD],
    control_len: usize,
    /// Frames to send: `out[opos..]` are not written yet.
    out: Vec<u8>,
    opos: usize,
    /// A close frame was queued: no frame may follow it (RFC 6455 §5.5.1).
    close_sent: bool,
    max_frame_size: u64,
    max_message_size: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    /// Wrap `io` after the `101` was sent; `early` are bytes the client
    /// sent behind its request head (frames it did not wait to send).
    /// Nothing here waits; `async` keeps the call site's form.
    pub async fn new(io: S, early: Vec<u8>, cfg: &WebSocketConfig) -> WsIo<S> {
        let rend = early.len();
        // More early bytes than the read buffer holds (at most
        // max_request_size) are kept as they are until read.
        let rbuf = if rend <= WS_READ_BUFFER {
            let mut rbuf = vec![0; WS_READ_BUFFER];
            if let Some(head) = rbuf.get_mut(..rend) {
                head.copy_from_slice(&early);
            }
            rbuf
        } else {
            early
        };
        WsIo {
            io,
            rbuf,
            rpos: 0,
            rend,
            state: ReadState::Header,
            in_message: false,
            message_len: 0,
            control: [0; MAX_CONTROL_PAYLOAD],
            control_len: 0,
            out: Vec::new(),
            opos: 0,
            close_sent: false,
            max_frame_size: u64::try_from(cfg.max_frame_size).unwrap_or(u64::MAX),
            max_message_size: u64::try_from(cfg.max_message_size).unwrap_or(u64::MAX),
        }
    }
}

/// Unmask `data`, whose first byte is `phase` bytes (mod 4) into its
/// frame's payload: a payload delivered in pieces rotates the mask.
fn unmask(data: &mut [u8], mask: [u8; 4], phase: usize) {
    let mut mask = mask;
    mask.rotate_left(phase % 4);
    for chunk in data.chunks_mut(4) {
        for (b, m) in chunk.iter_mut().zip(mask) {
            *b ^= m;
        }
    }
}

/// Count one transport read against the budget of a `poll_read`; once it is
/// spent, yield (and ask to be polled again).
fn spend(cx: &mut Context<'_>, fills: &mut usize) -> Poll<()> {
    if *fills >= MAX_FILLS_PER_READ {
        cx.waker().wake_by_ref();
        return Poll::Pending;
    }
    *fills += 1;
    Poll::Ready(())
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsIo<S> {
    fn queued(&self) -> usize {
        self.out.len().saturating_sub(self.opos)
    }

    /// Queue one unmasked frame with FIN set, its payload in `parts`.
    fn push_frame(&mut self, opcode: OpCode, parts: &[&[u8]]) -> io::Result<()> {
        let len = parts.iter().map(|p| p.len()).sum::<usize>();
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        header
            .format(len as u64, &mut self.out)
            .map_err(io::Error::other)?;
        for part in parts {
            self.out.extend_from_slice(part);
        }
        Ok(())
    }

    /// Queue the close frame (no frame is sent after it).
    fn push_close(&mut self, code: Option<u16>, reason: &str) -> io::Result<()> {
        self.close_sent = true;
        let code = code.map(u16::to_be_bytes);
        let reason = reason.as_bytes();
        let reason = if code.is_some() && reason.len() <= MAX_CLOSE_REASON {
            reason
        } else {
            &[]
        };
        let code = code.as_ref().map_or(&[][..], |c| &c[..]);
        self.push_frame(OpCode::Control(Control::Close), &[code, reason])
    }

    /// Write the queue out; `Ready(Ok)` once all of it is written.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = self.out.get(self.opos..).filter(|r| !r.is_empty()) {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.opos = self.opos.saturating_add(n);
        }
        self.out.clear();
        self.opos = 0;
        if self.out.capacity() > OUT_KEEP {
            self.out = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Start sending what was queued without waiting for the client: what
    /// the transport does not take now goes out on a later read, write or
    /// flush.
    fn try_send(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.poll_write_out(cx) {
            Poll::Ready(Ok(())) => match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Err(e)) => Err(e),
                Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
            },
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Ok(()),
        }
    }

    /// Refuse the client's frames: a close frame with the violation's code
    /// and one attempt to send it (a client that does not read must not
    /// hold the connection), then the error the read returns.
    fn fail(&mut self, cx: &mut Context<'_>, violation: Violation) -> io::Error {
        self.state = ReadState::Failed(violation);
        if !self.close_sent {
            let code = violation.code().into();
            if self.push_close(Some(code), &violation.to_string()).is_ok() {
                // Best effort: the error is what matters.
                let _ = self.try_send(cx);
            }
        }
        io::Error::new(io::ErrorKind::InvalidData, violation)
    }

    /// Read more of the client's bytes into `rbuf`; `Ready(Ok(0))` at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
            if self.rbuf.len() != WS_READ_BUFFER {
                // The early bytes are read: back to the usual buffer.
                self.rbuf = vec![0; WS_READ_BUFFER];
            }
        } else if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend = self.rend.saturating_sub(self.rpos);
            self.rpos = 0;
        }
        let free = match self.rbuf.get_mut(self.rend..) {
            Some(free) if !free.is_empty() => free,
            // Unreachable: nothing waits for more than a frame header
            // (14 bytes) in the buffer.
            _ => return Poll::Ready(Err(io::Error::other("WebSocket read buffer full"))),
        };
        let mut rb = ReadBuf::new(free);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.rend = self.rend.saturating_add(n);
        Poll::Ready(Ok(n))
    }

    /// Parse the frame header at `rbuf[rpos..]`, if it is all there, and
    /// enter its payload.
    fn read_header(&mut self) -> Result<bool, Violation> {
        let unread = self.rbuf.get(self.rpos..self.rend).unwrap_or_default();
        let mut cursor = Cursor::new(unread);
        // The only error a parse from memory can give is a reserved opcode.
        let Some((header, len)) = FrameHeader::parse(&mut cursor).map_err(|_| Violation::Opcode)?
        else {
            return Ok(false);
        };
        let used = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
        self.rpos = self.rpos.saturating_add(used).min(self.rend);
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(Violation::Reserved);
        }
        // RFC 6455 §5.1: a client masks every frame.
        let mask = header.mask.ok_or(Violation::Unmasked)?;
        self.state = match header.opcode {
            OpCode::Control(opcode) => {
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if !header.is_final || len > MAX_CONTROL_PAYLOAD {
                    return Err(Violation::Control);
                }
                self.control_len = 0;
                ReadState::Control { opcode, len, mask }
            }
            OpCode::Data(data) => {
                // Text first: even mid-message it is the more telling refusal.
                let message_len = match data {
                    Data::Text => return Err(Violation::Text),
                    Data::Binary if self.in_message => return Err(Violation::Interleaved),
                    Data::Binary => len,
                    Data::Continue if !self.in_message => return Err(Violation::Continuation),
                    Data::Continue => self.message_len.saturating_add(len),
                    Data::Reserved(_) => return Err(Violation::Opcode),
                };
                // Policy only: the payload is never held, whatever its size.
                if len > self.max_frame_size {
                    return Err(Violation::FrameTooBig);
                }
                if message_len > self.max_message_size {
                    return Err(Violation::MessageTooBig);
                }
                self.message_len = message_len;
                self.in_message = !header.is_final;
                ReadState::Data {
                    remaining: len,
                    mask,
                    phase: 0,
                }
            }
        };
        Ok(true)
    }

    /// Act on a complete control frame. `Pending` (with the write interest
    /// registered) while a pong cannot be queued.
    fn control_frame(
        &mut self,
        cx: &mut Context<'_>,
        opcode: Control,
        len: usize,
        mask: [u8; 4],
    ) -> Poll<io::Result<()>> {
        if opcode == Control::Ping && !self.close_sent && self.queued() > MAX_QUEUED_CONTROL {
            // The client is not reading: neither do we until it does. The
            // ping stays in `control`, the state where it was.
            ready!(self.poll_write_out(cx))?;
        }
        let Some(payload) = self.control.get_mut(..len) else {
            return Poll::Ready(Err(self.fail(cx, Violation::Control)));
        };
        unmask(payload, mask, 0);
        self.state = ReadState::Header;
        match opcode {
            // No frame follows a close.
            Control::Ping if self.close_sent => {}
            Control::Ping => {
                // A copy: the queue is written from `self`.
                let control = self.control;
                let payload = control.get(..len).unwrap_or_default();
                self.push_frame(OpCode::Control(Control::Pong), &[payload])?;
                self.try_send(cx)?;
            }
            Control::Pong => {}
            Control::Close => {
                let payload = self.control.get(..len).unwrap_or_default();
                let code = match payload {
                    [] => None,
                    [hi, lo, reason @ ..] => {
                        let code = u16::from_be_bytes([*hi, *lo]);
                        if !CloseCode::from(code).is_allowed() {
                            return Poll::Ready(Err(self.fail(cx, Violation::Close)));
                        }
                        if std::str::from_utf8(reason).is_err() {
                            return Poll::Ready(Err(self.fail(cx, Violation::CloseReason)));
                        }
                        Some(code)
                    }
                    [_] => return Poll::Ready(Err(self.fail(cx, Violation::Close))),
                };
                self.state = ReadState::Closed;
                if !self.close_sent {
                    // The reply echoes the client's code (RFC 6455 §5.5.1).
                    self.push_close(code, "")?;
                    self.try_send(cx)?;
                }
            }
            // FrameHeader::parse refuses reserved opcodes.
            Control::Reserved(_) => return Poll::Ready(Err(self.fail(cx, Violation::Opcode))),
        }
        Poll::Ready(Ok(()))
    }

    /// The read loop. Once a byte is in `buf` no more I/O is done: what is
    /// buffered is parsed, then the bytes are returned.
    fn read_into(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let start = buf.filled().len();
        let mut fills = 0;
        loop {
            let delivered = buf.filled().len() > start;
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match self.state {
                ReadState::Closed => return Poll::Ready(Ok(())),
                ReadState::Failed(violation) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, violation)));
                }
                ReadState::Header => match self.read_header() {
                    Ok(true) => {}
                    Err(violation) => return Poll::Ready(Err(self.fail(cx, violation))),
                    Ok(false) if delivered => return Poll::Ready(Ok(())),
                    Ok(false) => {
                        let partial = self.rend > self.rpos;
                        ready!(spend(cx, &mut fills));
                        if ready!(self.poll_fill(cx))? == 0 {
                            // EOF between frames ends the stream; inside a
                            // header it cuts a frame short.
                            return Poll::Ready(if partial {
                                Err(io::ErrorKind::UnexpectedEof.into())
                            } else {
                                Ok(())
                            });
                        }
                    }
                },
                // Empty frames included: on to the next header.
                ReadState::Data { remaining: 0, .. } => self.state = ReadState::Header,
                ReadState::Data {
                    remaining,
                    mask,
                    phase,
                } => {
                    let want = usize::try_from(remaining)
                        .unwrap_or(usize::MAX)
                        .min(buf.remaining());
                    let n = if self.rpos < self.rend {
                        let n = want.min(self.rend - self.rpos);
                        let end = self.rpos.saturating_add(n);
                        let payload = self.rbuf.get_mut(self.rpos..end).unwrap_or_default();
                        unmask(payload, mask, phase);
                        buf.put_slice(payload);
                        self.rpos = end;
                        n
                    } else if delivered {
                        return Poll::Ready(Ok(()));
                    } else {
                        // Nothing buffered: read the payload straight into
                        // the caller's buffer and unmask it there.
                        let dst = buf.initialize_unfilled_to(want);
                        let mut rb = ReadBuf::new(dst);
                        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
                        let n = rb.filled().len();
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                        }
                        unmask(rb.filled_mut(), mask, phase);
                        buf.advance(n);
                        n
                    };
                    self.state = ReadState::Data {
                        remaining: remaining.saturating_sub(n as u64),
                        mask,
                        phase: (phase + n) % 4,
                    };
                }
                ReadState::Control { opcode, len, mask } => {
                    if self.control_len < len {
                        if self.rpos == self.rend {
                            if delivered {
                                return Poll::Ready(Ok(()));
                            }
                            ready!(spend(cx, &mut fills));
                            if ready!(self.poll_fill(cx))? == 0 {
                                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                            }
                        }
                        let n = (len - self.control_len).min(self.rend - self.rpos);
                        let src = self
                            .rbuf
                            .get(self.rpos..self.rpos.saturating_add(n))
                            .unwrap_or_default();
                        let end = self.control_len.saturating_add(n);
                        if let Some(dst) = self.control.get_mut(self.control_len..end) {
                            dst.copy_from_slice(src);
                        }
                        self.control_len = end;
                        self.rpos = self.rpos.saturating_add(n);
                    } else if delivered {
                        // Act on it next time: a pong may have to wait
                        // (`Pending`), and these bytes may not.
                        return Poll::Ready(Ok(()));
                    } else {
                        ready!(self.control_frame(cx, opcode, len, mask))?;
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // Pongs and close replies go out whenever the client is polled.
        if this.queued() > 0 {
            this.try_send(cx)?;
        }
        let start = buf.filled().len();
        match this.read_into(cx, buf) {
            // The bytes before a violation are the caller's; the error comes
            // with the next read (the state is `Failed`).
            Poll::Ready(Err(_)) if buf.filled().len() > start => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    /// Frames up to `MAX_OUT_FRAME` bytes of `buf` as one binary frame.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.close_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "WebSocket closed",
            )));
        }
        // One frame at a time: the queue stays bounded.
        ready!(this.poll_write_out(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let payload = buf.get(..MAX_OUT_FRAME).unwrap_or(buf);
        this.push_frame(OpCode::Data(Data::Binary), &[payload])?;
        // Taken: what the transport does not accept now goes out on the
        // next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(payload.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// A close frame (1000, unless a close was already sent), then the
    /// transport's own shutdown.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            this.push_close(Some(CloseCode::Normal.into()), "")?;
        }
        ready!(this.poll_write_out(cx))?;
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
