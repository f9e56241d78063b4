//! The few packets mqttlb writes itself (a CONNACK refusing a client when no
//! broker can take it, the CONNECT/DISCONNECT of an MQTT health check) and
//! the one it reads from brokers: the head of a CONNACK.

use bytes::{Bytes, BytesMut};

use super::ProtocolVersion;
use super::codec::{self, ConnectPacket, Packet, Properties};
use super::rc;

/// CONNACK "server unavailable": MQTT 3.1/3.1.1 return code 3, MQTT 5.0
/// reason code 0x88 (with an empty property block).
pub fn connack_server_unavailable(protocol: ProtocolVersion) -> &'static [u8] {
    match protocol {
        ProtocolVersion::V31 | ProtocolVersion::V311 => {
            &[0x20, 0x02, 0x00, rc::v3::SERVER_UNAVAILABLE]
        }
        ProtocolVersion::V5 => &[0x20, 0x03, 0x00, rc::SERVER_UNAVAILABLE, 0x00],
    }
}

/// CONNACK "server busy" for a client its pool's admission refused (queue
/// full or timed out): MQTT 5.0 0x89; 3.1/3.1.1 have no such code and get
/// "server unavailable" (3).
pub fn connack_server_busy(protocol: ProtocolVersion) -> &'static [u8] {
    match protocol {
        ProtocolVersion::V31 | ProtocolVersion::V311 => {
            &[0x20, 0x02, 0x00, rc::v3::SERVER_UNAVAILABLE]
        }
        ProtocolVersion::V5 => &[0x20, 0x03, 0x00, rc::SERVER_BUSY, 0x00],
    }
}

/// CONNACK refusing a client that reconnects too often: MQTT 5.0 0x9F
/// "connection rate exceeded"; 3.1/3.1.1 have no such code and get
/// "server unavailable" (3), which clients retry later.
pub fn connack_rate_exceeded(protocol: ProtocolVersion) -> &'static [u8] {
    match protocol {
        ProtocolVersion::V31 | ProtocolVersion::V311 => {
            &[0x20, 0x02, 0x00, rc::v3::SERVER_UNAVAILABLE]
        }
        ProtocolVersion::V5 => &[0x20, 0x03, 0x00, rc::CONNECTION_RATE_EXCEEDED, 0x00],
    }
}

/// CONNACK refusing a client whose certificate does not name its client
/// id: 3.1/3.1.1 code 5, 5.0 0x87 "not authorized".
pub fn connack_not_authorized(protocol: ProtocolVersion) -> &'static [u8] {
    match protocol {
        ProtocolVersion::V31 | ProtocolVersion::V311 => &[0x20, 0x02, 0x00, rc::v3::NOT_AUTHORIZED],
        ProtocolVersion::V5 => &[0x20, 0x03, 0x00, rc::NOT_AUTHORIZED, 0x00],
    }
}

/// MQTT 5 DISCONNECT 0x9C "use another server" (empty properties): the
/// proxy's word to a client whose backend is draining.
pub const DISCONNECT_USE_ANOTHER_SERVER: &[u8] = &[0xe0, 0x02, rc::USE_ANOTHER_SERVER, 0x00];
/// DISCONNECT 0x98 "administrative action" (MQTT 5), no properties.
pub const DISCONNECT_ADMINISTRATIVE_ACTION: &[u8] = &[0xe0, 0x02, rc::ADMINISTRATIVE_ACTION, 0x00];

/// DISCONNECT (normal disconnection) for the given version.
pub fn disconnect(protocol: ProtocolVersion) -> &'static [u8] {
    match protocol {
        ProtocolVersion::V31 | ProtocolVersion::V311 => &[0xe0, 0x00],
        ProtocolVersion::V5 => &[0xe0, 0x01, 0x00],
    }
}

/// A clean-session CONNECT (health checks, tests), encoded by the codec.
pub fn encode_connect(
    protocol: ProtocolVersion,
    client_id: &str,
    keep_alive: u16,
    username: Option<&str>,
    password: Option<&[u8]>,
) -> Vec<u8> {
    let packet = Packet::Connect(Box::new(ConnectPacket {
        protocol,
        clean: true,
        keep_alive,
        client_id: client_id.to_owned(),
        will: None,
        username: username.map(str::to_owned),
        password: password.map(Bytes::copy_from_slice),
        props: Properties::default(),
    }));
    let mut out = BytesMut::new();
    codec::encode(&packet, protocol, &mut out);
    out.to_vec()
}

/// The start of a CONNACK as read from a broker: enough to know what the
/// broker answered and where the packet ends, without buffering its
/// properties (MQTT 5 CONNACKs can carry a reason string and user
/// properties; the proxy forwards them without reading them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnackHead {
    /// More bytes needed (at most 7: type, up to four length bytes, flags,
    /// code).
    Incomplete,
    /// The packet is `len` bytes in all; `code` is its return (3.x) or
    /// reason (5.0) code.
    Complete { code: u8, len: usize },
    /// Not a CONNACK: another packet type, reserved flags, a remaining
    /// length below 2 or a malformed length.
    Malformed,
}

/// Parse the head of a CONNACK at the start of `buf`.
pub fn connack_head(buf: &[u8]) -> ConnackHead {
    let Some((&first, rest)) = buf.split_first() else {
        return ConnackHead::Incomplete;
    };
    if first != 0x20 {
        return ConnackHead::Malformed;
    }
    let mut remaining: usize = 0;
    for (i, &b) in rest.iter().take(4).enumerate() {
        remaining |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 != 0 {
            continue;
        }
        let header = 2 + i;
        if remaining < 2 {
            return ConnackHead::Malformed;
        }
        return match buf.get(header..header + 2) {
            None => ConnackHead::Incomplete,
            // Acknowledge flags: only bit 0 (session present) is defined.
            Some(&[flags, _]) if flags & 0xfe != 0 => ConnackHead::Malformed,
            Some(&[_, code]) => ConnackHead::Complete {
                code,
                len: header + remaining,
            },
            Some(_) => ConnackHead::Malformed,
        };
    }
    if rest.len() >= 4 {
        ConnackHead::Malformed
    } else {
        ConnackHead::Incomplete
    }
}

/// What a broker's CONNACK code means for routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnackVerdict {
    /// The session is open.
    Accepted,
    /// The broker refused this client (credentials, authorisation, client
    /// id, protocol version, ...): its answer, forwarded unchanged; the
    /// node itself works.
    Refused,
    /// The node cannot serve anyone now (3.x code 3 "server unavailable";
    /// 5.0 0x88 "server unavailable", 0x89 "server busy"): another node
    /// may, and it counts against this node's health.
    Unavailable,
}

/// Classify a CONNACK return/reason code sent in answer to a CONNECT of
/// `protocol`.
pub fn connack_verdict(protocol: ProtocolVersion, code: u8) -> ConnackVerdict {
    match (protocol, code) {
        (_, rc::SUCCESS) => ConnackVerdict::Accepted,
        (ProtocolVersion::V31 | ProtocolVersion::V311, rc::v3::SERVER_UNAVAILABLE) => {
            ConnackVerdict::Unavailable
        }
        (ProtocolVersion::V5, rc::SERVER_UNAVAILABLE | rc::SERVER_BUSY) => {
            ConnackVerdict::Unavailable
        }
        _ => ConnackVerdict::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Peek, peek_connect};

    #[test]
    fn health_check_connect_is_a_valid_connect() {
        for v in [
            ProtocolVersion::V31,
            ProtocolVersion::V311,
            ProtocolVersion::V5,
        ] {
            let out = encode_connect(v, "mqttlb-health-node1", 10, Some("checker"), Some(b"pw"));
            match peek_connect(&out, 1024) {
                Ok(Peek::Complete { connect, len }) => {
                    assert_eq!(len, out.len());
                    assert_eq!(connect.protocol, v);
                    assert_eq!(connect.client_id, "mqttlb-health-node1");
                    assert_eq!(connect.keep_alive, 10);
                    assert_eq!(connect.username, Some("checker"));
                }
                other => panic!("{v:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn connack_heads() {
        use ConnackHead::*;
        let cases: &[(&[u8], ConnackHead)] = &[
            (&[], Incomplete),
            (&[0x20], Incomplete),
            (&[0x20, 2, 0], Incomplete),
            (&[0x20, 2, 0, 0], Complete { code: 0, len: 4 }),
            (&[0x20, 2, 1, 0, 0x30], Complete { code: 0, len: 4 }),
            (&[0x20, 3, 0, 0x87, 0], Complete { code: 0x87, len: 5 }),
            // MQTT 5 CONNACK with 200 bytes of properties: two length bytes.
            (
                &[0x20, 0xcb, 0x01, 0, 0],
                Complete {
                    code: 0,
                    len: 3 + 203,
                },
            ),
            (&[0x20, 0xcb], Incomplete),
            (&[0x20, 0xcb, 0x01, 0], Incomplete),
            (&[0x20, 0x80, 0x80, 0x80], Incomplete),
            (&[0x20, 0x80, 0x80, 0x80, 0x80], Malformed),
            (&[0x20, 1, 0], Malformed),
            (&[0x20, 2, 0x02, 0], Malformed),
            (&[0x30, 2, 0, 0], Malformed),
            (b"HTTP/1.1 400", Malformed),
        ];
        for (bytes, want) in cases {
            assert_eq!(connack_head(bytes), *want, "{bytes:?}");
        }
        for v in [ProtocolVersion::V311, ProtocolVersion::V5] {
            let ours = connack_server_unavailable(v);
            match connack_head(ours) {
                Complete { code, len } => {
                    assert_eq!(len, ours.len());
                    assert_eq!(connack_verdict(v, code), ConnackVerdict::Unavailable);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn connack_verdicts() {
        use ConnackVerdict::*;
        use ProtocolVersion::*;
        let cases = [
            (V311, 0, Accepted),
            (V311, 1, Refused),
            (V311, 2, Refused),
            (V311, 3, Unavailable),
            (V311, 4, Refused),
            (V311, 5, Refused),
            (V31, 3, Unavailable),
            (V5, 0, Accepted),
            (V5, 0x86, Refused),
            (V5, 0x87, Refused),
            (V5, 0x88, Unavailable),
            (V5, 0x89, Unavailable),
            (V5, 0x9c, Refused),
            (V5, 0x03, Refused),
        ];
        for (v, code, want) in cases {
            assert_eq!(connack_verdict(v, code), want, "{v:?} {code:#04x}");
        }
    }
}
