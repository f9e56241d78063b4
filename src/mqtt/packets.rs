//! The few packets mqttlb writes itself: a CONNACK refusing a client when no
//! broker can take it, and the CONNECT/DISCONNECT of an MQTT health check.

use super::ProtocolVersion;

/// CONNACK "server unavailable": MQTT 3.1/3.1.1 return code 3, MQTT 5.0
/// reason code 0x88 (with an empty property block).
pub fn connack_server_unavailable(protocol: ProtocolVersion) -> &'static [u8] {
    match protocol {
        ProtocolVersion::V31 | ProtocolVersion::V311 => &[0x20, 0x02, 0x00, 0x03],
        ProtocolVersion::V5 => &[0x20, 0x03, 0x00, 0x88, 0x00],
    }
}

/// MQTT 5 DISCONNECT 0x9C "use another server" (empty properties): the
/// proxy's word to a client whose backend is draining.
pub const DISCONNECT_USE_ANOTHER_SERVER: &[u8] = &[0xe0, 0x02, 0x9c, 0x00];

/// DISCONNECT (normal disconnection) for the given version.
pub fn disconnect(protocol: ProtocolVersion) -> &'static [u8] {
    match protocol {
        ProtocolVersion::V31 | ProtocolVersion::V311 => &[0xe0, 0x00],
        ProtocolVersion::V5 => &[0xe0, 0x01, 0x00],
    }
}

/// A clean-session CONNECT with the given client id and keep-alive, written
/// into `out`. Used by active health checks.
pub fn encode_connect(
    protocol: ProtocolVersion,
    client_id: &str,
    keep_alive: u16,
    out: &mut Vec<u8>,
) {
    let (name, level): (&[u8], u8) = match protocol {
        ProtocolVersion::V31 => (b"MQIsdp", 3),
        ProtocolVersion::V311 => (b"MQTT", 4),
        ProtocolVersion::V5 => (b"MQTT", 5),
    };
    let props = usize::from(protocol == ProtocolVersion::V5);
    let id = client_id.as_bytes();
    // Client ids are ours and short; cap anyway so the length fits one byte.
    let id = &id[..id.len().min(64)];
    let remaining = 2 + name.len() + 1 + 1 + 2 + props + 2 + id.len();
    out.clear();
    out.push(0x10);
    out.push(remaining as u8); // < 128 by construction
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name);
    out.push(level);
    out.push(0x02); // clean session / clean start
    out.extend_from_slice(&keep_alive.to_be_bytes());
    if props == 1 {
        out.push(0);
    }
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(id);
}

/// Outcome of reading a CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connack {
    /// More bytes needed.
    Incomplete,
    /// Return/reason code 0.
    Accepted,
    /// Refused with this return/reason code.
    Refused(u8),
    /// Not a CONNACK at all.
    Malformed,
}

/// Parse a CONNACK at the start of `buf` (3.x and 5.0 share the first four
/// bytes: type, length, flags, code).
pub fn parse_connack(buf: &[u8]) -> Connack {
    match buf {
        [] | [0x20] | [0x20, _] | [0x20, _, _] => Connack::Incomplete,
        [0x20, len, _, code, ..] if *len >= 2 => {
            if *code == 0 {
                Connack::Accepted
            } else {
                Connack::Refused(*code)
            }
        }
        _ => Connack::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::{Peek, peek_connect};

    #[test]
    fn health_check_connect_is_a_valid_connect() {
        let mut out = Vec::new();
        for v in [
            ProtocolVersion::V31,
            ProtocolVersion::V311,
            ProtocolVersion::V5,
        ] {
            encode_connect(v, "mqttlb-health-node1", 10, &mut out);
            match peek_connect(&out, 1024) {
                Ok(Peek::Complete { connect, len }) => {
                    assert_eq!(len, out.len());
                    assert_eq!(connect.protocol, v);
                    assert_eq!(connect.client_id, "mqttlb-health-node1");
                    assert_eq!(connect.keep_alive, 10);
                }
                other => panic!("{v:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn connack_parsing() {
        assert_eq!(parse_connack(&[0x20]), Connack::Incomplete);
        assert_eq!(parse_connack(&[0x20, 2, 0, 0]), Connack::Accepted);
        assert_eq!(
            parse_connack(&[0x20, 3, 0, 0x87, 0]),
            Connack::Refused(0x87)
        );
        assert_eq!(parse_connack(&[0x30, 2, 0, 0]), Connack::Malformed);
        assert_eq!(
            parse_connack(connack_server_unavailable(ProtocolVersion::V311)),
            Connack::Refused(3)
        );
        assert_eq!(
            parse_connack(connack_server_unavailable(ProtocolVersion::V5)),
            Connack::Refused(0x88)
        );
    }
}
