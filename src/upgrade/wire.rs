//! The hand-over's message format (pure): a 12-byte header ("MQU1",
//! payload length, descriptor count; big-endian), then a JSON payload, the
//! descriptors riding with the first byte as `SCM_RIGHTS`. A header is
//! checked against the bounds before its payload is read; a message over
//! them is not encoded.

use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::error::UpgradeError;

/// Descriptors in one message (Linux caps one `SCM_RIGHTS` at 253).
pub const MAX_FDS_PER_MESSAGE: usize = 64;
/// Descriptors in one hand-over.
pub const MAX_FDS: usize = 4096;
/// Bytes of one message's JSON payload.
pub const MAX_PAYLOAD: usize = 4096;
/// Messages in one hand-over.
pub const MAX_MESSAGES: usize = 1024;
/// Session-ticket keys in a `ticket_keys` message.
pub const MAX_TICKET_KEYS: usize = 16;

const MAGIC: &[u8; 4] = b"MQU1";
pub(super) const HEADER: usize = 12;

/// One message of the protocol (the JSON payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum Message {
    Listener {
        listener: String,
        addr: SocketAddr,
    },
    /// The admin HTTP listener (one socket).
    Admin {
        addr: SocketAddr,
    },
    Done {
        listeners: u32,
    },
    Serving {
        pid: u32,
    },
    /// The old process's session-ticket keys, sent after `serving` (so a
    /// new process of a version without this message, which reads nothing
    /// after `serving`, still takes over; an old process of such a version
    /// sends none, and the new one keeps its own keys).
    TicketKeys {
        keys: Vec<HandedKey>,
    },
}

/// A session-ticket key crossing to the new process: its bytes (base64 on
/// the wire, wiped on drop, never in `Debug`), when it began sealing
/// tickets and when it stopped (Unix seconds).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandedKey {
    key: String,
    pub since: u64,
    pub retired: Option<u64>,
}

impl HandedKey {
    pub fn new(secret: &[u8], since: u64, retired: Option<u64>) -> HandedKey {
        HandedKey {
            key: base64::engine::general_purpose::STANDARD.encode(secret),
            since,
            retired,
        }
    }

    /// The key's bytes.
    pub fn secret(&self) -> Result<Zeroizing<Vec<u8>>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.key)
            .map(Zeroizing::new)
            .map_err(|_| "a handed-over ticket key is not base64".to_string())
    }
}

impl fmt::Debug for HandedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandedKey")
            .field("since", &self.since)
            .field("retired", &self.retired)
            .finish_non_exhaustive()
    }
}

impl Drop for HandedKey {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

pub(super) fn encode(msg: &Message, fds: usize) -> Result<Vec<u8>, UpgradeError> {
    let payload =
        serde_json::to_vec(msg).map_err(|e| UpgradeError::Protocol(format!("encode: {e}")))?;
    if payload.len() > MAX_PAYLOAD || fds > MAX_FDS_PER_MESSAGE {
        return Err(UpgradeError::Protocol(
            "message over the protocol's bounds".into(),
        ));
    }
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    let n = u32::try_from(fds).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// A header: payload length and descriptor count, both checked.
pub(super) fn decode_header(h: &[u8; HEADER]) -> Result<(usize, usize), UpgradeError> {
    let [m0, m1, m2, m3, l0, l1, l2, l3, n0, n1, n2, n3] = *h;
    if [m0, m1, m2, m3] != *MAGIC {
        return Err(UpgradeError::Protocol(
            "not an mqttlb upgrade socket (or another protocol version)".into(),
        ));
    }
    let len = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
    let fds = usize::try_from(u32::from_be_bytes([n0, n1, n2, n3])).unwrap_or(usize::MAX);
    if len > MAX_PAYLOAD {
        return Err(UpgradeError::Protocol(format!(
            "payload of {len} bytes (at most {MAX_PAYLOAD})"
        )));
    }
    if fds > MAX_FDS_PER_MESSAGE {
        return Err(UpgradeError::Protocol(format!(
            "{fds} descriptors in one message (at most {MAX_FDS_PER_MESSAGE})"
        )));
    }
    Ok((len, fds))
}

pub(super) fn decode_payload(payload: &[u8]) -> Result<Message, UpgradeError> {
    serde_json::from_slice(payload).map_err(|e| UpgradeError::Protocol(format!("payload: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn messages_round_trip_and_bad_headers_are_errors() {
        let msg = Message::Listener {
            listener: "mqtts".into(),
            addr: a("[::]:8883"),
        };
        let bytes = encode(&msg, 3).unwrap();
        let header: [u8; HEADER] = bytes[..HEADER].try_into().unwrap();
        let (len, fds) = decode_header(&header).unwrap();
        assert_eq!((len, fds), (bytes.len() - HEADER, 3));
        assert_eq!(decode_payload(&bytes[HEADER..]).unwrap(), msg);

        let mut bad = header;
        bad[0] = b'X';
        assert!(decode_header(&bad).is_err());
        let mut big = header;
        big[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode_header(&big).is_err());
        let mut many = header;
        many[8..12].copy_from_slice(&65u32.to_be_bytes());
        assert!(decode_header(&many).is_err());
        assert!(decode_payload(b"{\"type\":\"serving\"}").is_err());
        assert!(decode_payload(b"\xff\xfe").is_err());
        assert!(encode(&msg, MAX_FDS_PER_MESSAGE + 1).is_err());
    }

    #[test]
    fn ticket_keys_cross_within_bounds_and_never_show() {
        let keys: Vec<HandedKey> = (0..3u8)
            .map(|i| HandedKey::new(&[i; 80], 1_700_000_000, Some(1_700_043_200)))
            .collect();
        let msg = Message::TicketKeys { keys };
        let bytes = encode(&msg, 0).unwrap();
        assert!(bytes.len() < 1024, "{} bytes", bytes.len());
        let back = decode_payload(&bytes[HEADER..]).unwrap();
        assert_eq!(back, msg);
        let Message::TicketKeys { keys } = back else {
            panic!("ticket keys")
        };
        assert_eq!(*keys[2].secret().unwrap(), vec![2u8; 80]);
        let shown = format!("{msg:?}");
        assert!(
            !shown.contains("AAAA") && !shown.contains("key:"),
            "{shown}"
        );
        // The biggest set the new process accepts fits one message.
        let most = Message::TicketKeys {
            keys: (0..MAX_TICKET_KEYS)
                .map(|_| HandedKey::new(&[0xff; 80], u64::MAX, Some(u64::MAX)))
                .collect(),
        };
        assert!(encode(&most, 0).is_ok());
    }
}
