//! [`WsIo`] against a client's frames (masked) and the proxy's.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};
use tokio::time::timeout;

use super::*;
use crate::proxy::websocket::tests::cfg;

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
