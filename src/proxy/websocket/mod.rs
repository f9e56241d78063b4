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
//! This file reads, checks and answers the upgrade request; `frame` holds
//! [`WsIo`], the frame codec, which uses nothing from here; `proxy::conn`
//! runs the one, then the other.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_tungstenite::tungstenite;

use crate::config::WebSocketConfig;

mod frame;

pub use frame::{Violation, WsIo};

/// Headers parsed from an upgrade request; more is a bad request.
const MAX_HEADERS: usize = 32;
/// Read size while waiting for the request head.
const REQUEST_READ: usize = 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A listener's settings (`frame`'s tests use them too).
    pub(super) fn cfg() -> WebSocketConfig {
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
