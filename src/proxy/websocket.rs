//! MQTT over WebSockets (RFC 6455; MQTT 5.0 §6, 3.1.1 §6): the upgrade
//! request, and the byte stream inside the frames.
//!
//! The upgrade request head is read and checked here, under the listener's
//! deadline and size cap, for both modes: `GET` on the configured path,
//! `Upgrade: websocket`, `Connection: Upgrade`, version 13, a key, and one
//! of the configured subprotocols. Reading it ourselves (with `httparse`)
//! rather than through tungstenite's server handshake keeps the bounds in
//! one place and gives `to = "ws"` the exact bytes to forward.
//!
//! * `to = "ws"`: the request goes to the broker as it came; the broker
//!   answers the upgrade and the proxy relays bytes.
//! * `to = "tcp"`: the proxy answers `101` itself and [`WsIo`] turns the
//!   frames into the plain MQTT byte stream (and back), so the rest of the
//!   connection's life — CONNECT, routing, CONNACK checks, drain — is the
//!   TCP path's.
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

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};

use crate::config::WebSocketConfig;

/// Headers parsed from an upgrade request; more is a bad request.
const MAX_HEADERS: usize = 32;
/// Read size while waiting for the request head.
const REQUEST_READ: usize = 1024;
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

/// A checked upgrade request.
#[derive(Debug)]
pub struct Upgrade {
    /// Every byte read: the request head and anything behind it.
    pub bytes: Vec<u8>,
    /// Length of the request head in `bytes`.
    pub head_len: usize,
    /// `Sec-WebSocket-Key`.
    pub key: String,
    /// The subprotocol chosen (the client's first offer that the listener
    /// accepts), if the client offered one.
    pub protocol: Option<String>,
}

/// Why an upgrade was refused: the HTTP status sent back and a reason for
/// the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{1}")]
    Status(u16, &'static str),
    #[error("client closed before a complete upgrade request")]
    Closed,
    #[error("read error: {0}")]
    Io(String),
}

impl Refusal {
    fn bad(reason: &'static str) -> Refusal {
        Refusal::Status(400, reason)
    }

    /// The response a refused client reads (none when it is gone).
    pub fn response(&self) -> Option<&'static [u8]> {
        match self {
            Refusal::Status(404, _) => Some(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            Refusal::Status(405, _) => Some(b"HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            Refusal::Status(426, _) => Some(b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            Refusal::Status(431, _) => Some(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            Refusal::Status(..) => Some(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
            Refusal::Closed | Refusal::Io(_) => None,
        }
    }
}

/// Read the upgrade request head (at most `cfg.max_request_size` bytes) and
/// check it. The caller bounds it with `cfg.upgrade_timeout`.
pub async fn read_upgrade<S>(io: &mut S, cfg: &WebSocketConfig) -> Result<Upgrade, Refusal>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(REQUEST_READ.min(cfg.max_request_size));
    loop {
        if let Some((head_len, key, protocol)) = check(&buf, cfg)? {
            return Ok(Upgrade {
                bytes: buf,
                head_len,
                key,
                protocol,
            });
        }
        let room = cfg.max_request_size.saturating_sub(buf.len());
        if room == 0 {
            return Err(Refusal::Status(
                431,
                "upgrade request larger than max_request_size",
            ));
        }
        let want = room.min(REQUEST_READ) as u64;
        match (&mut *io).take(want).read_buf(&mut buf).await {
            Ok(0) => return Err(Refusal::Closed),
            Ok(_) => {}
            Err(e) => return Err(Refusal::Io(e.to_string())),
        }
    }
}

/// Head length, `Sec-WebSocket-Key`, chosen subprotocol.
type Checked = (usize, String, Option<String>);

/// `None` while the head is incomplete; the head's length, key and chosen
/// subprotocol once it is complete and acceptable.
fn check(buf: &[u8], cfg: &WebSocketConfig) -> Result<Option<Checked>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Partial) => return Ok(None),
        Ok(httparse::Status::Complete(n)) => n,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::Status(431, "too many headers"));
        }
        Err(_) => return Err(Refusal::bad("not an HTTP/1.1 request")),
    };
    if req.version != Some(1) {
        return Err(Refusal::bad("not HTTP/1.1"));
    }
    if req.method != Some("GET") {
        return Err(Refusal::Status(405, "method is not GET"));
    }
    let path = req.path.unwrap_or_default();
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    if path != cfg.path {
        return Err(Refusal::Status(
            404,
            "path is not the listener's websocket.path",
        ));
    }
    let header = |name: &'static str| {
        req.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return Err(Refusal::Status(426, "no Upgrade: websocket"));
    }
    if !has_token("connection", "upgrade") {
        return Err(Refusal::bad("no Connection: Upgrade"));
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err(Refusal::Status(426, "Sec-WebSocket-Version is not 13"));
    }
    let mut keys = header("sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        // 16 random bytes, base64: 24 characters (RFC 6455 §4.2.1).
        (Some(k), None) if k.trim().len() == 24 => k.trim().to_string(),
        _ => return Err(Refusal::bad("missing or malformed Sec-WebSocket-Key")),
    };
    let offered: Vec<&str> = header("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let protocol = offered
        .iter()
        .find(|p| cfg.subprotocols.iter().any(|s| s.eq_ignore_ascii_case(p)))
        .map(|p| (*p).to_string());
    if protocol.is_none() && (cfg.require_subprotocol || !offered.is_empty()) {
        return Err(Refusal::bad(
            "no accepted Sec-WebSocket-Protocol (mqtt) offered",
        ));
    }
    Ok(Some((head_len, key, protocol)))
}

/// The `101 Switching Protocols` answer to a checked upgrade.
pub fn accept_response(upgrade: &Upgrade) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes());
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = &upgrade.protocol {
        r.push_str("Sec-WebSocket-Protocol: ");
        r.push_str(p);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

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
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg() -> WebSocketConfig {
        WebSocketConfig {
            path: "/mqtt".into(),
            subprotocols: vec!["mqtt".into(), "mqttv3.1".into()],
            require_subprotocol: true,
            to: crate::config::WsForward::Tcp,
            upgrade_timeout: Duration::from_secs(5),
            max_request_size: 8192,
            max_message_size: 1 << 20,
            max_frame_size: 1 << 20,
        }
    }

    const GOOD: &str = "GET /mqtt?x=1 HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: foo, mqtt\r\n\r\n";

    fn checked(req: &str) -> Result<Option<Checked>, Refusal> {
        check(req.as_bytes(), &cfg())
    }

    #[test]
    fn a_browser_upgrade_is_accepted() {
        let (len, key, protocol) = checked(GOOD).unwrap().unwrap();
        assert_eq!(len, GOOD.len());
        assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(protocol.as_deref(), Some("mqtt"));
        let up = Upgrade {
            bytes: Vec::new(),
            head_len: len,
            key,
            protocol,
        };
        let r = String::from_utf8(accept_response(&up)).unwrap();
        // RFC 6455 §1.3's example key and answer.
        assert!(
            r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{r}"
        );
        assert!(r.contains("Sec-WebSocket-Protocol: mqtt\r\n"), "{r}");
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_partial_head_waits() {
        assert_eq!(checked(&GOOD[..40]), Ok(None));
    }

    #[test]
    fn bad_upgrades_are_refused_with_their_status() {
        let cases = [
            (GOOD.replace("/mqtt?x=1", "/other"), 404),
            (GOOD.replace("GET", "POST"), 405),
            (GOOD.replace("Upgrade: WebSocket\r\n", ""), 426),
            (GOOD.replace("Version: 13", "Version: 8"), 426),
            (GOOD.replace("keep-alive, Upgrade", "keep-alive"), 400),
            (GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
            (GOOD.replace("foo, mqtt", "foo"), 400),
            (
                GOOD.replace("Sec-WebSocket-Protocol: foo, mqtt\r\n", ""),
                400,
            ),
            (GOOD.replace("HTTP/1.1", "HTTP/1.0"), 400),
            ("\x16\x03\x01 not http\r\n\r\n".to_string(), 400),
        ];
        for (req, status) in cases {
            match checked(&req) {
                Err(r @ Refusal::Status(s, _)) => {
                    assert_eq!(s, status, "{req:?}: {r}");
                    assert!(r.response().is_some());
                }
                other => panic!("{req:?}: {other:?}"),
            }
        }
        let many = GOOD.replace("Host: h\r\n", &"X-A: b\r\n".repeat(MAX_HEADERS));
        assert_eq!(
            checked(&many),
            Err(Refusal::Status(431, "too many headers"))
        );
    }

    #[test]
    fn the_subprotocol_can_be_optional() {
        let mut c = cfg();
        c.require_subprotocol = false;
        let bare = GOOD.replace("Sec-WebSocket-Protocol: foo, mqtt\r\n", "");
        let (_, _, protocol) = check(bare.as_bytes(), &c).unwrap().unwrap();
        assert_eq!(protocol, None);
    }

    // ---- WsIo: the frames of a client (masked) and of the proxy ----

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
    use tokio::time::timeout;

    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    /// Long enough for anything that will happen; tests that expect a read
    /// to wait run on paused time, so this costs nothing.
    const WAIT: Duration = Duration::from_secs(5);

    /// A client frame: `first` is the FIN/RSV/opcode byte, `len` the
    /// declared payload length (the payload sent may be shorter).
    fn frame_with(first: u8, mask: Option<[u8; 4]>, len: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        let masked = if mask.is_some() { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(masked | len as u8),
            126..=0xffff => {
                out.push(masked | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(masked | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        match mask {
            Some(m) => {
                out.extend_from_slice(&m);
                // Masked independently of `unmask`, byte by byte.
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ m[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let first = if fin { 0x80 } else { 0 } | opcode;
        frame_with(first, Some(MASK), payload.len() as u64, payload)
    }

    async fn pair(c: WebSocketConfig) -> (DuplexStream, WsIo<DuplexStream>) {
        let (client, server) = duplex(64 * 1024);
        (client, WsIo::new(server, Vec::new(), &c).await)
    }

    /// Whatever one read gives, within `WAIT`.
    async fn read_some<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        let n = timeout(WAIT, r.read(&mut buf))
            .await
            .expect("read in time")?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Exactly `n` bytes.
    async fn read_n(ws: &mut WsIo<DuplexStream>, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        timeout(WAIT, ws.read_exact(&mut buf))
            .await
            .expect("read in time")
            .expect("read");
        buf
    }

    /// The proxy's frames, as the client reads them.
    struct Peer {
        io: DuplexStream,
        buf: Vec<u8>,
    }

    impl Peer {
        /// The next whole frame (`None` at EOF), checked to be unmasked.
        async fn frame(&mut self) -> Option<(FrameHeader, Vec<u8>)> {
            loop {
                let mut cursor = Cursor::new(&self.buf[..]);
                if let Some((header, len)) = FrameHeader::parse(&mut cursor).expect("header") {
                    let start = cursor.position() as usize;
                    let end = start + len as usize;
                    if self.buf.len() >= end {
                        assert_eq!(header.mask, None, "server frames are not masked");
                        assert!(!header.rsv1 && !header.rsv2 && !header.rsv3);
                        assert!(header.is_final);
                        let payload = self.buf[start..end].to_vec();
                        self.buf.drain(..end);
                        return Some((header, payload));
                    }
                }
                let more = read_some(&mut self.io).await.expect("read");
                if more.is_empty() {
                    assert!(self.buf.is_empty(), "EOF inside a frame");
                    return None;
                }
                self.buf.extend_from_slice(&more);
            }
        }

        /// The next frame must be a close with `code`.
        async fn expect_close(&mut self, code: u16) {
            let (header, payload) = self.frame().await.expect("a close frame");
            assert_eq!(header.opcode, OpCode::Control(Control::Close));
            assert_eq!(
                payload.get(..2),
                Some(&code.to_be_bytes()[..]),
                "{payload:?}"
            );
        }
    }

    fn peer(io: DuplexStream) -> Peer {
        Peer {
            io,
            buf: Vec::new(),
        }
    }

    /// The defect this framing fixes: a fragmented message whose first
    /// fragment opens a CONNECT declaring 1,000,000 bytes, continued and
    /// never finished. Its bytes reach the reader as they come, so the
    /// CONNECT cap refuses it at once instead of after a megabyte.
    #[tokio::test]
    async fn a_fragmented_message_is_delivered_before_it_ends() {
        let (mut client, mut ws) = pair(cfg()).await;
        let mut first = vec![0x10, 0xc0, 0x84, 0x3d];
        first.extend_from_slice(&[0xab; 60]);
        client.write_all(&frame(false, 0x2, &first)).await.unwrap();
        let got = read_n(&mut ws, first.len()).await;
        assert_eq!(got, first);
        assert!(matches!(
            crate::mqtt::peek_connect(&got, 64 * 1024),
            Err(crate::mqtt::ConnectError::TooLarge {
                size: 1_000_004,
                ..
            })
        ));
        // Continuations keep flowing, one by one, with no final fragment.
        for i in 0..20u8 {
            let more = vec![i; 1000];
            client.write_all(&frame(false, 0x0, &more)).await.unwrap();
            assert_eq!(read_n(&mut ws, more.len()).await, more);
        }
    }

    #[tokio::test]
    async fn a_partly_sent_frame_delivers_its_first_bytes_at_once() {
        let (mut client, mut ws) = pair(cfg()).await;
        let payload: Vec<u8> = (0..=255).cycle().take(1000).collect();
        // One final frame declaring 500,000 bytes; 1,000 of them sent.
        let bytes = frame_with(0x82, Some(MASK), 500_000, &payload);
        client.write_all(&bytes).await.unwrap();
        assert_eq!(read_n(&mut ws, payload.len()).await, payload);
        assert_eq!(
            ws.state,
            ReadState::Data {
                remaining: 499_000,
                mask: MASK,
                phase: 0
            }
        );
    }

    #[tokio::test]
    async fn masks_rotate_across_odd_splits() {
        let (mut client, mut ws) = pair(cfg()).await;
        let payload: Vec<u8> = (0..=255u8).rev().cycle().take(3001).collect();
        let bytes = frame(true, 0x2, &payload);
        // Sent in odd pieces, each read before the next arrives: the
        // payload reaches the reader at every offset into the mask, read
        // straight into its buffer.
        let mut got = Vec::new();
        let mut sent = 0;
        for size in (1..).step_by(2) {
            let end = (sent + size).min(bytes.len());
            client.write_all(&bytes[sent..end]).await.unwrap();
            sent = end;
            if sent > 8 {
                got.extend(read_some(&mut ws).await.unwrap());
            }
            if sent == bytes.len() {
                break;
            }
        }
        assert_eq!(got, payload);
        // All at once, then read in 3-byte pieces from the read buffer.
        client.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        while got.len() < payload.len() {
            let mut small = [0u8; 3];
            let n = ws.read(&mut small).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, payload);
    }

    #[tokio::test]
    async fn early_bytes_and_empty_frames_are_read_in_order() {
        let (mut client, server) = duplex(64 * 1024);
        let mut bytes = frame(true, 0x2, b"");
        bytes.extend(frame(false, 0x2, b"hello "));
        bytes.extend(frame(false, 0x0, b""));
        bytes.extend(frame(true, 0x0, b"world"));
        // The upgrade request was followed by part of the frames.
        let (early, rest) = bytes.split_at(11);
        let mut ws = WsIo::new(server, early.to_vec(), &cfg()).await;
        client.write_all(rest).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        timeout(WAIT, ws.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"hello world");
    }

    #[tokio::test]
    async fn a_ping_between_fragments_is_answered_and_data_continues() {
        let (client, mut ws) = pair(cfg()).await;
        let mut client = peer(client);
        let mut bytes = frame(false, 0x2, b"abc");
        bytes.extend(frame(true, 0x9, b"are you there"));
        bytes.extend(frame(true, 0xa, b"unsolicited pong"));
        bytes.extend(frame(true, 0x0, b"def"));
        client.io.write_all(&bytes).await.unwrap();
        assert_eq!(read_n(&mut ws, 6).await, b"abcdef");
        let (header, payload) = client.frame().await.unwrap();
        assert_eq!(header.opcode, OpCode::Control(Control::Pong));
        assert_eq!(payload, b"are you there");
    }

    #[tokio::test]
    async fn a_close_is_answered_then_reads_end() {
        let (client, mut ws) = pair(cfg()).await;
        let mut client = peer(client);
        let mut close = 1001u16.to_be_bytes().to_vec();
        close.extend_from_slice(b"bye");
        client
            .io
            .write_all(&frame(true, 0x8, &close))
            .await
            .unwrap();
        assert_eq!(read_some(&mut ws).await.unwrap(), b"");
        assert_eq!(read_some(&mut ws).await.unwrap(), b"", "EOF stays EOF");
        client.expect_close(1001).await;
        // No data frame after the close.
        let e = ws.write(b"late").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        // Shutdown sends no second close.
        ws.shutdown().await.unwrap();
        assert!(client.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_close_without_a_code_is_answered_without_one() {
        let (client, mut ws) = pair(cfg()).await;
        let mut client = peer(client);
        client.io.write_all(&frame(true, 0x8, b"")).await.unwrap();
        assert_eq!(read_some(&mut ws).await.unwrap(), b"");
        let (header, payload) = client.frame().await.unwrap();
        assert_eq!(header.opcode, OpCode::Control(Control::Close));
        assert_eq!(payload, b"");
    }

    #[tokio::test]
    async fn text_frames_are_refused_with_1003() {
        let (client, mut ws) = pair(cfg()).await;
        let mut client = peer(client);
        client.io.write_all(&frame(true, 0x1, b"{}")).await.unwrap();
        let e = read_some(&mut ws).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("binary only"), "{e}");
        client.expect_close(1003).await;
        // The error stays.
        assert!(read_some(&mut ws).await.is_err());
    }

    #[tokio::test]
    async fn protocol_violations_are_refused_with_their_close_code() {
        let bad_reason = [&1000u16.to_be_bytes()[..], b"\xff"].concat();
        let cases = [
            ("unmasked", frame_with(0x82, None, 2, b"\xc0\x00"), 1002),
            ("rsv1", frame(true, 0x2 | 0x40, b"x"), 1002),
            ("reserved opcode", frame(true, 0x3, b"x"), 1002),
            ("lone continuation", frame(true, 0x0, b"x"), 1002),
            (
                "interleaved",
                [frame(false, 0x2, b"x"), frame(true, 0x2, b"y")].concat(),
                1002,
            ),
            ("fragmented ping", frame(false, 0x9, b"x"), 1002),
            ("long ping", frame(true, 0x9, &[0; 126]), 1002),
            ("one-byte close", frame(true, 0x8, b"x"), 1002),
            (
                "close code 1005",
                frame(true, 0x8, &1005u16.to_be_bytes()),
                1002,
            ),
            (
                "close reason not UTF-8",
                frame(true, 0x8, &bad_reason),
                1007,
            ),
        ];
        for (name, bytes, code) in &cases {
            let (client, mut ws) = pair(cfg()).await;
            let mut client = peer(client);
            client.io.write_all(bytes).await.unwrap();
            // A case may first deliver its legitimate bytes.
            let mut got = Vec::new();
            let e = loop {
                match read_some(&mut ws).await {
                    Ok(b) if !b.is_empty() => got.extend(b),
                    Ok(_) => panic!("{name}: EOF"),
                    Err(e) => break e,
                }
            };
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{name}");
            assert!(got.len() <= 1, "{name}");
            client.expect_close(*code).await;
        }
        assert_eq!(cases.len(), 10);
    }

    #[tokio::test]
    async fn an_oversized_frame_is_refused_from_its_header() {
        let mut c = cfg();
        c.max_frame_size = 1024;
        let (client, mut ws) = pair(c).await;
        let mut client = peer(client);
        // The header alone: no payload byte is sent, or needed.
        client
            .io
            .write_all(&frame_with(0x82, Some(MASK), 1025, b""))
            .await
            .unwrap();
        let e = read_some(&mut ws).await.unwrap_err();
        assert!(e.to_string().contains("max_frame_size"), "{e}");
        client.expect_close(1009).await;
    }

    #[tokio::test]
    async fn a_message_over_max_message_size_is_refused() {
        let mut c = cfg();
        c.max_message_size = 1024;
        c.max_frame_size = 1024;
        let (client, mut ws) = pair(c).await;
        let mut client = peer(client);
        let mut bytes = frame(false, 0x2, &[1; 600]);
        bytes.extend(frame(true, 0x0, &[2; 600]));
        client.io.write_all(&bytes).await.unwrap();
        // The first fragment is within bounds and delivered; the second
        // would make 1,200 bytes.
        assert_eq!(read_some(&mut ws).await.unwrap(), [1; 600]);
        let e = read_some(&mut ws).await.unwrap_err();
        assert!(e.to_string().contains("max_message_size"), "{e}");
        client.expect_close(1009).await;
    }

    #[tokio::test]
    async fn writes_are_unmasked_binary_frames() {
        let (client, mut ws) = pair(cfg()).await;
        let mut client = peer(client);
        let data: Vec<u8> = (0..=255).cycle().take(40_000).collect();
        ws.write_all(&data).await.unwrap();
        ws.write_all(b"\xd0\x00").await.unwrap();
        ws.flush().await.unwrap();
        let mut sizes = Vec::new();
        let mut got = Vec::new();
        while got.len() < data.len() + 2 {
            let (header, payload) = client.frame().await.unwrap();
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
            sizes.push(payload.len());
            got.extend(payload);
        }
        assert_eq!(
            sizes,
            [MAX_OUT_FRAME, MAX_OUT_FRAME, 40_000 - 2 * MAX_OUT_FRAME, 2]
        );
        assert_eq!(&got[..data.len()], &data[..]);
        assert_eq!(&got[data.len()..], b"\xd0\x00");
        // The queue is reused, not grown per write.
        assert!(ws.out.capacity() <= OUT_KEEP);
    }

    #[tokio::test]
    async fn shutdown_sends_one_close_1000() {
        let (client, mut ws) = pair(cfg()).await;
        let mut client = peer(client);
        ws.write_all(b"\xd0\x00").await.unwrap();
        ws.shutdown().await.unwrap();
        // Again: no second close frame.
        ws.shutdown().await.unwrap();
        let (header, payload) = client.frame().await.unwrap();
        assert_eq!(header.opcode, OpCode::Data(Data::Binary));
        assert_eq!(payload, b"\xd0\x00");
        client.expect_close(1000).await;
        assert!(client.frame().await.is_none(), "one close, then EOF");
        assert_eq!(
            ws.write(b"x").await.unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
        // The client's close reply ends the read side.
        client
            .io
            .write_all(&frame(true, 0x8, &1000u16.to_be_bytes()))
            .await
            .unwrap();
        assert_eq!(read_some(&mut ws).await.unwrap(), b"");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_flood_against_a_non_reading_client_stays_bounded() {
        // Small pipes: the client stops being able to take pongs early.
        let (mut client, server) = duplex(1024);
        let mut ws = WsIo::new(server, Vec::new(), &cfg()).await;
        let ping = frame(true, 0x9, &[7; MAX_CONTROL_PAYLOAD]);
        let flood = tokio::spawn(async move {
            for _ in 0..10_000 {
                if client.write_all(&ping).await.is_err() {
                    break;
                }
            }
            client
        });
        // The proxy stops reading once the pongs back up: the read waits
        // (it never ends with data, EOF or an error)...
        let mut buf = [0u8; 64];
        assert!(timeout(WAIT, ws.read(&mut buf)).await.is_err());
        // ...with the queue at its bound, and the flood stalls behind it.
        let queued = ws.queued();
        assert!(queued > MAX_QUEUED_CONTROL, "{queued}");
        assert!(
            queued <= MAX_QUEUED_CONTROL + MAX_CONTROL_PAYLOAD + 2,
            "{queued}"
        );
        assert!(ws.out.capacity() <= 2 * (MAX_QUEUED_CONTROL + MAX_CONTROL_PAYLOAD + 2));
        assert!(!flood.is_finished());
        flood.abort();
    }

    #[tokio::test]
    async fn requests_are_bounded_in_size() {
        let mut c = cfg();
        c.max_request_size = 64;
        let mut io = std::io::Cursor::new(GOOD.as_bytes().to_vec());
        let r = read_upgrade(&mut io, &c).await.unwrap_err();
        assert_eq!(
            r,
            Refusal::Status(431, "upgrade request larger than max_request_size")
        );
        let mut io = std::io::Cursor::new(GOOD.as_bytes()[..50].to_vec());
        assert_eq!(
            read_upgrade(&mut io, &cfg()).await.unwrap_err(),
            Refusal::Closed
        );
        let mut early = GOOD.as_bytes().to_vec();
        early.extend_from_slice(b"\x82\x80");
        let mut io = std::io::Cursor::new(early);
        let up = read_upgrade(&mut io, &cfg()).await.unwrap();
        assert_eq!(up.bytes.get(up.head_len..), Some(&b"\x82\x80"[..]));
    }
}
