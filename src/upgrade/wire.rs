//! The hand-over's message format (pure): a 12-byte header ("MQU1",
//! payload length, descriptor count; big-endian), then a JSON payload, the
//! descriptors riding with the first byte as `SCM_RIGHTS`. A header is
//! checked against the bounds before its payload is read; a message over
//! them is not encoded.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::error::UpgradeError;

/// Descriptors in one message (Linux caps one `SCM_RIGHTS` at 253).
pub const MAX_FDS_PER_MESSAGE: usize = 64;
/// Descriptors in one hand-over.
pub const MAX_FDS: usize = 4096;
/// Bytes of one message's JSON payload.
pub const MAX_PAYLOAD: usize = 4096;
/// Messages in one hand-over.
pub const MAX_MESSAGES: usize = 1024;

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
}
