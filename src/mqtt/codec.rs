//! The MQTT 3.1 / 3.1.1 / 5.0 packet codec the broker speaks.
//!
//! Pure and bounded: [`frame_len`] says whether a whole packet has arrived
//! (checking the size cap from the fixed header alone), [`decode`] turns one
//! frame into a [`Packet`], [`encode`] appends a packet to a buffer. Payloads
//! and correlation data are [`Bytes`] slices of the received frame, so a
//! message fanned out to many subscribers is never copied.
//!
//! Hand-written for the same reasons as the CONNECT peek (one codec for all
//! three versions, binary passwords, no panics on hostile input), and a
//! CONNECT is first validated by that peek, so the proxy and the broker
//! agree on what a valid CONNECT is. Cross-checked both ways against
//! independent implementations in the tests below: rumqttc's encoder feeds
//! this decoder, mqtt-protocol-core's decoder reads this encoder's output.

use bytes::{BufMut, Bytes, BytesMut};

use super::ProtocolVersion;
use super::connect::decode_varint;

/// Why a packet could not be decoded. Each is a protocol error: the
/// connection is closed (MQTT 5: after DISCONNECT 0x81 malformed packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("remaining length is not a valid variable byte integer")]
    BadLength,
    #[error("packet of {size} bytes exceeds the {limit}-byte maximum")]
    TooLarge { size: usize, limit: usize },
    #[error("unknown or reserved packet type {0:#04x}")]
    BadType(u8),
    #[error("reserved fixed-header flags are set")]
    BadFlags,
    #[error("a field runs past the end of the packet")]
    Truncated,
    #[error("a string is not valid UTF-8")]
    BadUtf8,
    #[error("malformed properties")]
    BadProperties,
    #[error("property {0:#04x} is not allowed in this packet")]
    MisplacedProperty(u32),
    #[error("unsupported protocol name or level")]
    UnsupportedProtocol,
    #[error("invalid QoS")]
    BadQos,
    #[error("packet identifier 0 where one is required")]
    ZeroPacketId,
    #[error("SUBSCRIBE or UNSUBSCRIBE without topic filters")]
    EmptySubscription,
}

/// Where a property block sits: each MQTT 5 property is allowed in some
/// packets only (§2.2.2.2, table 2-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    Connect,
    Will,
    Connack,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    SubackOrUnsuback,
    Unsubscribe,
    Disconnect,
    Auth,
}

/// Whether property `id` may appear in `place`.
pub fn allowed(id: u32, place: In) -> bool {
    use In::*;
    match id {
        // payload format, message expiry, content type, response topic,
        // correlation data
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(place, Publish | Will),
        // subscription identifier (a client must not send it in PUBLISH:
        // the broker checks that, MQTT-3.3.4-6)
        0x0B => matches!(place, Publish | Subscribe),
        // session expiry interval
        0x11 => matches!(place, Connect | Connack | Disconnect),
        // assigned client id, server keep alive, response information,
        // maximum QoS, retain / wildcard / subscription id / shared
        // subscription available
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => place == Connack,
        // authentication method and data
        0x15 | 0x16 => matches!(place, Connect | Connack | Auth),
        // request problem / response information
        0x17 | 0x19 => place == Connect,
        // will delay interval
        0x18 => place == Will,
        // server reference
        0x1C => matches!(place, Connack | Disconnect),
        // reason string
        0x1F => matches!(place, Connack | Ack | SubackOrUnsuback | Disconnect | Auth),
        // receive maximum, topic alias maximum, maximum packet size
        0x21 | 0x22 | 0x27 => matches!(place, Connect | Connack),
        // topic alias
        0x23 => place == Publish,
        // user property
        0x26 => true,
        _ => false,
    }
}

impl From<super::ConnectError> for DecodeError {
    fn from(e: super::ConnectError) -> DecodeError {
        use super::ConnectError as C;
        match e {
            C::UnsupportedProtocol => DecodeError::UnsupportedProtocol,
            C::BadRemainingLength => DecodeError::BadLength,
            C::TooLarge { size, limit } => DecodeError::TooLarge { size, limit },
            C::BadFlags => DecodeError::BadFlags,
            C::BadUtf8 => DecodeError::BadUtf8,
            C::BadProperties => DecodeError::BadProperties,
            C::NotConnect(b) => DecodeError::BadType(b),
            C::Tls | C::Http => DecodeError::BadType(0),
            C::Truncated | C::TrailingBytes => DecodeError::Truncated,
        }
    }
}

/// MQTT 5 properties. Absent fields were not on the wire; 3.x packets
/// always carry the default (empty) set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format: Option<u8>,
    pub message_expiry: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_ids: Vec<u32>,
    pub session_expiry: Option<u32>,
    pub assigned_client_id: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub auth_method: Option<String>,
    pub auth_data: Option<Bytes>,
    pub request_problem_info: Option<u8>,
    pub will_delay: Option<u32>,
    pub request_response_info: Option<u8>,
    pub response_info: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_sub_available: Option<u8>,
    pub sub_id_available: Option<u8>,
    pub shared_sub_available: Option<u8>,
}

/// A will message from CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub props: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectPacket {
    pub protocol: ProtocolVersion,
    pub clean: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub props: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishPacket {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    /// 0 for QoS 0.
    pub pkid: u16,
    pub props: Properties,
    pub payload: Bytes,
}

/// Subscription options (3.x uses only `qos`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SubOptions {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 send retained on subscribe, 1 only if new, 2 never.
    pub retain_handling: u8,
}

/// Which acknowledgement a [`Packet::Ack`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
}

impl AckKind {
    fn header(self) -> u8 {
        match self {
            AckKind::Puback => 0x40,
            AckKind::Pubrec => 0x50,
            AckKind::Pubrel => 0x62,
            AckKind::Pubcomp => 0x70,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<ConnectPacket>),
    Connack {
        session_present: bool,
        code: u8,
        props: Properties,
    },
    Publish(PublishPacket),
    Ack {
        kind: AckKind,
        pkid: u16,
        code: u8,
        props: Properties,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<(String, SubOptions)>,
        props: Properties,
    },
    Suback {
        pkid: u16,
        codes: Vec<u8>,
        props: Properties,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
        props: Properties,
    },
    Unsuback {
        pkid: u16,
        codes: Vec<u8>,
        props: Properties,
    },
    Pingreq,
    Pingresp,
    Disconnect {
        code: u8,
        props: Properties,
    },
    Auth {
        code: u8,
        props: Properties,
    },
}

impl Packet {
    /// A PUBACK, PUBREC, PUBREL or PUBCOMP with `code` (0 = success) and no
    /// properties.
    pub fn ack(kind: AckKind, pkid: u16, code: u8) -> Packet {
        Packet::Ack {
            kind,
            pkid,
            code,
            props: Properties::default(),
        }
    }
}

/// Length of the packet at the start of `buf` once it has fully arrived:
/// `Ok(None)` while bytes are missing. Refuses a packet larger than `max`
/// as soon as its fixed header is complete.
pub fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let Some((remaining, used)) =
        decode_varint(buf.get(1..).unwrap_or_default()).map_err(|_| DecodeError::BadLength)?
    else {
        return Ok(None);
    };
    let total = 1 + used + remaining;
    if total > max {
        return Err(DecodeError::TooLarge {
            size: total,
            limit: max,
        });
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Decode one whole frame (as delimited by [`frame_len`]). `protocol` is
/// the connection's version; a CONNECT carries its own.
pub fn decode(frame: Bytes, protocol: ProtocolVersion) -> Result<Packet, DecodeError> {
    let first = *frame.first().ok_or(DecodeError::Truncated)?;
    let (_, used) = decode_varint(frame.get(1..).unwrap_or_default())
        .map_err(|_| DecodeError::BadLength)?
        .ok_or(DecodeError::Truncated)?;
    let mut r = Reader {
        buf: frame.slice(1 + used..),
        v5: protocol == ProtocolVersion::V5,
    };
    let flags = first & 0x0f;
    let packet = match first >> 4 {
        1 if flags == 0 => {
            // One definition of a valid CONNECT for proxy and broker: the
            // proxy's peek validates (flags, protocol names and levels,
            // property framing), then the owned fields are read.
            super::connect::peek_connect(&frame, usize::MAX).map_err(DecodeError::from)?;
            return decode_connect(r.buf);
        }
        2 if flags == 0 => {
            let session_present = r.u8()? & 0x01 != 0;
            let code = r.u8()?;
            let props = r.props(In::Connack)?;
            Packet::Connack {
                session_present,
                code,
                props,
            }
        }
        3 => decode_publish(&mut r, flags)?,
        4 if flags == 0 => r.ack(AckKind::Puback)?,
        5 if flags == 0 => r.ack(AckKind::Pubrec)?,
        6 if flags == 2 => r.ack(AckKind::Pubrel)?,
        7 if flags == 0 => r.ack(AckKind::Pubcomp)?,
        8 if flags == 2 => {
            let pkid = r.pkid()?;
            let props = r.props(In::Subscribe)?;
            let mut filters = Vec::new();
            while !r.buf.is_empty() {
                let filter = r.string()?;
                let o = r.u8()?;
                let opts = SubOptions {
                    qos: o & 0x03,
                    no_local: r.v5 && o & 0x04 != 0,
                    retain_as_published: r.v5 && o & 0x08 != 0,
                    retain_handling: if r.v5 { (o >> 4) & 0x03 } else { 0 },
                };
                let reserved = if r.v5 { o & 0xc0 } else { o & 0xfc };
                if opts.qos > 2 || opts.retain_handling > 2 || reserved != 0 {
                    return Err(DecodeError::BadFlags);
                }
                filters.push((filter, opts));
            }
            if filters.is_empty() {
                return Err(DecodeError::EmptySubscription);
            }
            Packet::Subscribe {
                pkid,
                filters,
                props,
            }
        }
        kind @ (9 | 11) if flags == 0 => {
            let pkid = r.pkid()?;
            let props = r.props(In::SubackOrUnsuback)?;
            // A 3.x UNSUBACK is the packet id alone [MQTT-3.11.1].
            if kind == 11 && !r.v5 && !r.buf.is_empty() {
                return Err(DecodeError::BadLength);
            }
            let codes = std::mem::take(&mut r.buf).to_vec();
            if kind == 9 {
                Packet::Suback { pkid, codes, props }
            } else {
                Packet::Unsuback { pkid, codes, props }
            }
        }
        10 if flags == 2 => {
            let pkid = r.pkid()?;
            let props = r.props(In::Unsubscribe)?;
            let mut filters = Vec::new();
            while !r.buf.is_empty() {
                filters.push(r.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::EmptySubscription);
            }
            Packet::Unsubscribe {
                pkid,
                filters,
                props,
            }
        }
        12 if flags == 0 => Packet::Pingreq,
        13 if flags == 0 => Packet::Pingresp,
        14 if flags == 0 => {
            let (code, props) = r.code_and_props(In::Disconnect)?;
            Packet::Disconnect { code, props }
        }
        15 if flags == 0 && r.v5 => {
            let (code, props) = r.code_and_props(In::Auth)?;
            Packet::Auth { code, props }
        }
        1..=15 => return Err(DecodeError::BadFlags),
        _ => return Err(DecodeError::BadType(first)),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::Truncated);
    }
    Ok(packet)
}

fn decode_publish(r: &mut Reader, flags: u8) -> Result<Packet, DecodeError> {
    let qos = (flags >> 1) & 0x03;
    if qos == 3 {
        return Err(DecodeError::BadQos);
    }
    let topic = r.string()?;
    let pkid = if qos > 0 { r.pkid()? } else { 0 };
    let props = r.props(In::Publish)?;
    let payload = std::mem::take(&mut r.buf);
    Ok(Packet::Publish(PublishPacket {
        dup: flags & 0x08 != 0,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        pkid,
        props,
        payload,
    }))
}

fn decode_connect(body: Bytes) -> Result<Packet, DecodeError> {
    let mut r = Reader {
        buf: body,
        v5: false,
    };
    let name = r.binary()?;
    let level = r.u8()?;
    let protocol = ProtocolVersion::from_name_and_level(&name, level & 0x7f)
        .ok_or(DecodeError::UnsupportedProtocol)?;
    r.v5 = protocol == ProtocolVersion::V5;
    let flags = r.u8()?;
    let will_qos = (flags >> 3) & 0x03;
    let has_will = flags & 0x04 != 0;
    let will_retain = flags & 0x20 != 0;
    if flags & 0x01 != 0 || will_qos == 3 || (!has_will && (will_qos != 0 || will_retain)) {
        return Err(DecodeError::BadFlags);
    }
    let keep_alive = r.u16()?;
    let props = r.props(In::Connect)?;
    let client_id = r.string()?;
    let will = if has_will {
        let props = r.props(In::Will)?;
        let topic = r.string()?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: will_qos,
            retain: will_retain,
            props,
        })
    } else {
        None
    };
    let username = if flags & 0x80 != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let password = if flags & 0x40 != 0 {
        Some(r.binary()?)
    } else {
        None
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::Truncated);
    }
    Ok(Packet::Connect(Box::new(ConnectPacket {
        protocol,
        clean: flags & 0x02 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        props,
    })))
}

/// Bounds-checked reads from a frame; slices share the frame's memory.
struct Reader {
    buf: Bytes,
    v5: bool,
}

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        Ok(self.buf.split_to(n))
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.take(1)?.first().copied().ok_or(DecodeError::Truncated)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        let b: [u8; 2] = b.as_ref().try_into().map_err(|_| DecodeError::Truncated)?;
        Ok(u16::from_be_bytes(b))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        let b: [u8; 4] = b.as_ref().try_into().map_err(|_| DecodeError::Truncated)?;
        Ok(u32::from_be_bytes(b))
    }

    fn varint(&mut self) -> Result<u32, DecodeError> {
        let (v, used) = decode_varint(&self.buf)
            .map_err(|_| DecodeError::BadLength)?
            .ok_or(DecodeError::Truncated)?;
        self.take(used)?;
        // At most 268,435,455 by construction.
        u32::try_from(v).map_err(|_| DecodeError::BadLength)
    }

    fn pkid(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId),
            id => Ok(id),
        }
    }

    fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let b = self.binary()?;
        let s = std::str::from_utf8(&b).map_err(|_| DecodeError::BadUtf8)?;
        if s.contains('\0') {
            return Err(DecodeError::BadUtf8);
        }
        Ok(s.to_owned())
    }

    /// Acks: 3.x carries only the packet id; 5.0 may add a reason code and
    /// properties, each omitted when default.
    fn ack(&mut self, kind: AckKind) -> Result<Packet, DecodeError> {
        let pkid = self.pkid()?;
        let (code, props) = self.code_and_props(In::Ack)?;
        Ok(Packet::Ack {
            kind,
            pkid,
            code,
            props,
        })
    }

    fn code_and_props(&mut self, place: In) -> Result<(u8, Properties), DecodeError> {
        if !self.v5 || self.buf.is_empty() {
            return Ok((0, Properties::default()));
        }
        let code = self.u8()?;
        if self.buf.is_empty() {
            return Ok((code, Properties::default()));
        }
        Ok((code, self.props(place)?))
    }

    fn props(&mut self, place: In) -> Result<Properties, DecodeError> {
        let mut p = Properties::default();
        if !self.v5 {
            return Ok(p);
        }
        let len = self.varint().map_err(|_| DecodeError::BadProperties)? as usize;
        let mut r = Reader {
            buf: self.take(len).map_err(|_| DecodeError::BadProperties)?,
            v5: true,
        };
        while !r.buf.is_empty() {
            let id = r.varint()?;
            // Each property belongs to certain packets (MQTT 5 §2.2.2.2);
            // elsewhere it is a protocol error.
            if !allowed(id, place) {
                return Err(DecodeError::MisplacedProperty(id));
            }
            // A property other than user properties and subscription
            // identifiers may appear only once [MQTT-2.2.2-…].
            let dup = |set: bool| {
                if set {
                    Err(DecodeError::BadProperties)
                } else {
                    Ok(())
                }
            };
            match id {
                0x01 => {
                    dup(p.payload_format.is_some())?;
                    p.payload_format = Some(r.u8()?)
                }
                0x02 => {
                    dup(p.message_expiry.is_some())?;
                    p.message_expiry = Some(r.u32()?)
                }
                0x03 => {
                    dup(p.content_type.is_some())?;
                    p.content_type = Some(r.string()?)
                }
                0x08 => {
                    dup(p.response_topic.is_some())?;
                    p.response_topic = Some(r.string()?)
                }
                0x09 => {
                    dup(p.correlation_data.is_some())?;
                    p.correlation_data = Some(r.binary()?)
                }
                0x0B => {
                    let id = r.varint()?;
                    if id == 0 {
                        return Err(DecodeError::BadProperties);
                    }
                    p.subscription_ids.push(id)
                }
                0x11 => {
                    dup(p.session_expiry.is_some())?;
                    p.session_expiry = Some(r.u32()?)
                }
                0x12 => p.assigned_client_id = Some(r.string()?),
                0x13 => p.server_keep_alive = Some(r.u16()?),
                0x15 => p.auth_method = Some(r.string()?),
                0x16 => p.auth_data = Some(r.binary()?),
                0x17 => p.request_problem_info = Some(r.u8()?),
                0x18 => p.will_delay = Some(r.u32()?),
                0x19 => p.request_response_info = Some(r.u8()?),
                0x1A => p.response_info = Some(r.string()?),
                0x1C => p.server_reference = Some(r.string()?),
                0x1F => p.reason_string = Some(r.string()?),
                0x21 => {
                    dup(p.receive_maximum.is_some())?;
                    match r.u16()? {
                        0 => return Err(DecodeError::BadProperties),
                        v => p.receive_maximum = Some(v),
                    }
                }
                0x22 => p.topic_alias_maximum = Some(r.u16()?),
                0x23 => {
                    dup(p.topic_alias.is_some())?;
                    p.topic_alias = Some(r.u16()?)
                }
                0x24 => p.maximum_qos = Some(r.u8()?),
                0x25 => p.retain_available = Some(r.u8()?),
                0x26 => {
                    let k = r.string()?;
                    let v = r.string()?;
                    p.user.push((k, v))
                }
                0x27 => match r.u32()? {
                    0 => return Err(DecodeError::BadProperties),
                    v => p.maximum_packet_size = Some(v),
                },
                0x28 => p.wildcard_sub_available = Some(r.u8()?),
                0x29 => p.sub_id_available = Some(r.u8()?),
                0x2A => p.shared_sub_available = Some(r.u8()?),
                _ => return Err(DecodeError::BadProperties),
            }
        }
        Ok(p)
    }
}

// ---------------------------------------------------------------- encoding

/// Append `p` encoded for `protocol` to `out`.
pub fn encode(p: &Packet, protocol: ProtocolVersion, out: &mut BytesMut) {
    let v5 = protocol == ProtocolVersion::V5;
    let mut body = Body::default();
    let header = match p {
        Packet::Connect(c) => {
            encode_connect(c, &mut body);
            0x10
        }
        Packet::Connack {
            session_present,
            code,
            props,
        } => {
            body.u8(u8::from(*session_present));
            body.u8(*code);
            if v5 {
                body.props(props);
            }
            0x20
        }
        Packet::Publish(p) => {
            body.string(&p.topic);
            if p.qos > 0 {
                body.u16(p.pkid);
            }
            if v5 {
                body.props(&p.props);
            }
            body.tail = Some(p.payload.clone());
            0x30 | (u8::from(p.dup) << 3) | (p.qos << 1) | u8::from(p.retain)
        }
        Packet::Ack {
            kind,
            pkid,
            code,
            props,
        } => {
            body.u16(*pkid);
            if v5 && (*code != 0 || *props != Properties::default()) {
                body.u8(*code);
                body.props(props);
            }
            kind.header()
        }
        Packet::Subscribe {
            pkid,
            filters,
            props,
        } => {
            body.u16(*pkid);
            if v5 {
                body.props(props);
            }
            for (f, o) in filters {
                body.string(f);
                let mut b = o.qos;
                if v5 {
                    b |= u8::from(o.no_local) << 2
                        | u8::from(o.retain_as_published) << 3
                        | o.retain_handling << 4;
                }
                body.u8(b);
            }
            0x82
        }
        Packet::Suback { pkid, codes, props } | Packet::Unsuback { pkid, codes, props } => {
            body.u16(*pkid);
            if v5 {
                body.props(props);
            }
            // 3.x UNSUBACK carries no codes.
            let unsuback = matches!(p, Packet::Unsuback { .. });
            if v5 || !unsuback {
                body.buf.extend_from_slice(codes);
            }
            if unsuback { 0xb0 } else { 0x90 }
        }
        Packet::Unsubscribe {
            pkid,
            filters,
            props,
        } => {
            body.u16(*pkid);
            if v5 {
                body.props(props);
            }
            for f in filters {
                body.string(f);
            }
            0xa2
        }
        Packet::Pingreq => 0xc0,
        Packet::Pingresp => 0xd0,
        Packet::Disconnect { code, props } => {
            if v5 && (*code != 0 || *props != Properties::default()) {
                body.u8(*code);
                body.props(props);
            }
            0xe0
        }
        Packet::Auth { code, props } => {
            body.u8(*code);
            body.props(props);
            0xf0
        }
    };
    let len = body.buf.len() + body.tail.as_ref().map_or(0, Bytes::len);
    out.reserve(1 + 4 + len);
    out.put_u8(header);
    put_varint(out, u32::try_from(len).unwrap_or(u32::MAX));
    out.extend_from_slice(&body.buf);
    if let Some(t) = &body.tail {
        out.extend_from_slice(t);
    }
}

/// Size of `p` on the wire, to honour a peer's maximum packet size.
pub fn encoded_len(p: &Packet, protocol: ProtocolVersion) -> usize {
    let mut b = BytesMut::new();
    encode(p, protocol, &mut b);
    b.len()
}

fn encode_connect(c: &ConnectPacket, body: &mut Body) {
    let v5 = c.protocol == ProtocolVersion::V5;
    let (name, level) = c.protocol.name_and_level();
    body.binary(name);
    body.u8(level);
    let mut flags = u8::from(c.clean) << 1;
    if let Some(w) = &c.will {
        flags |= 0x04 | (w.qos << 3) | (u8::from(w.retain) << 5);
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    body.u8(flags);
    body.u16(c.keep_alive);
    if v5 {
        body.props(&c.props);
    }
    body.string(&c.client_id);
    if let Some(w) = &c.will {
        if v5 {
            body.props(&w.props);
        }
        body.string(&w.topic);
        body.binary(&w.payload);
    }
    if let Some(u) = &c.username {
        body.string(u);
    }
    if let Some(p) = &c.password {
        body.binary(p);
    }
}

fn put_varint(out: &mut BytesMut, mut v: u32) {
    loop {
        let mut b = (v & 0x7f) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        out.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

#[derive(Default)]
struct Body {
    buf: BytesMut,
    /// The publish payload, appended after the body without a copy into it.
    tail: Option<Bytes>,
}

impl Body {
    fn u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.put_u16(v);
    }
    fn binary(&mut self, b: &[u8]) {
        // Lengths are bounded by the codec's callers (strings from decoded
        // packets or config); truncate rather than corrupt the frame.
        let b = b.get(..usize::from(u16::MAX)).unwrap_or(b);
        self.buf.put_u16(u16::try_from(b.len()).unwrap_or(u16::MAX));
        self.buf.extend_from_slice(b);
    }
    fn string(&mut self, s: &str) {
        self.binary(s.as_bytes());
    }
    fn props(&mut self, p: &Properties) {
        let mut b = Body::default();
        let byte = |b: &mut Body, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                b.u8(id);
                b.u8(v);
            }
        };
        let two = |b: &mut Body, id: u8, v: Option<u16>| {
            if let Some(v) = v {
                b.u8(id);
                b.u16(v);
            }
        };
        let four = |b: &mut Body, id: u8, v: Option<u32>| {
            if let Some(v) = v {
                b.u8(id);
                b.buf.put_u32(v);
            }
        };
        let string = |b: &mut Body, id: u8, v: &Option<String>| {
            if let Some(v) = v {
                b.u8(id);
                b.string(v);
            }
        };
        let binary = |b: &mut Body, id: u8, v: &Option<Bytes>| {
            if let Some(v) = v {
                b.u8(id);
                b.binary(v);
            }
        };
        byte(&mut b, 0x01, p.payload_format);
        four(&mut b, 0x02, p.message_expiry);
        string(&mut b, 0x03, &p.content_type);
        string(&mut b, 0x08, &p.response_topic);
        binary(&mut b, 0x09, &p.correlation_data);
        for id in &p.subscription_ids {
            b.u8(0x0B);
            put_varint(&mut b.buf, *id);
        }
        four(&mut b, 0x11, p.session_expiry);
        string(&mut b, 0x12, &p.assigned_client_id);
        two(&mut b, 0x13, p.server_keep_alive);
        string(&mut b, 0x15, &p.auth_method);
        binary(&mut b, 0x16, &p.auth_data);
        byte(&mut b, 0x17, p.request_problem_info);
        four(&mut b, 0x18, p.will_delay);
        byte(&mut b, 0x19, p.request_response_info);
        string(&mut b, 0x1A, &p.response_info);
        string(&mut b, 0x1C, &p.server_reference);
        string(&mut b, 0x1F, &p.reason_string);
        two(&mut b, 0x21, p.receive_maximum);
        two(&mut b, 0x22, p.topic_alias_maximum);
        two(&mut b, 0x23, p.topic_alias);
        byte(&mut b, 0x24, p.maximum_qos);
        byte(&mut b, 0x25, p.retain_available);
        for (k, v) in &p.user {
            b.u8(0x26);
            b.string(k);
            b.string(v);
        }
        four(&mut b, 0x27, p.maximum_packet_size);
        byte(&mut b, 0x28, p.wildcard_sub_available);
        byte(&mut b, 0x29, p.sub_id_available);
        byte(&mut b, 0x2A, p.shared_sub_available);
        put_varint(
            &mut self.buf,
            u32::try_from(b.buf.len()).unwrap_or(u32::MAX),
        );
        self.buf.extend_from_slice(&b.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProtocolVersion::{V5, V311};

    #[test]
    fn properties_outside_their_packets_are_refused() {
        let mut out = BytesMut::new();
        let publish = |props: Properties| {
            Packet::Publish(PublishPacket {
                dup: false,
                qos: 0,
                retain: false,
                topic: "t".into(),
                pkid: 0,
                payload: Bytes::from_static(b"x"),
                props,
            })
        };
        // Session expiry belongs to CONNECT, CONNACK and DISCONNECT.
        encode(
            &publish(Properties {
                session_expiry: Some(5),
                ..Properties::default()
            }),
            V5,
            &mut out,
        );
        assert_eq!(
            decode(out.split().freeze(), V5),
            Err(DecodeError::MisplacedProperty(0x11))
        );
        // Message expiry is fine in PUBLISH.
        encode(
            &publish(Properties {
                message_expiry: Some(5),
                ..Properties::default()
            }),
            V5,
            &mut out,
        );
        assert!(decode(out.split().freeze(), V5).is_ok());
        // A Subscription Identifier in a CONNECT.
        let connect = Packet::Connect(Box::new(ConnectPacket {
            protocol: V5,
            clean: true,
            keep_alive: 30,
            client_id: "c".into(),
            will: None,
            username: None,
            password: None,
            props: Properties {
                subscription_ids: vec![7],
                ..Properties::default()
            },
        }));
        encode(&connect, V5, &mut out);
        assert_eq!(
            decode(out.split().freeze(), V5),
            Err(DecodeError::MisplacedProperty(0x0B))
        );
        // The table agrees with itself on a few spot checks.
        assert!(allowed(0x26, In::Auth) && allowed(0x18, In::Will));
        assert!(!allowed(0x18, In::Connect) && !allowed(0x23, In::Will));
    }

    fn round_trip(p: &Packet, v: ProtocolVersion) -> Packet {
        let mut out = BytesMut::new();
        encode(p, v, &mut out);
        let len = frame_len(&out, usize::MAX).unwrap().unwrap();
        assert_eq!(len, out.len());
        decode(out.freeze(), v).unwrap()
    }

    fn publish(qos: u8, props: Properties) -> Packet {
        Packet::Publish(PublishPacket {
            dup: qos > 0,
            qos,
            retain: true,
            topic: "a/b".into(),
            pkid: if qos > 0 { 7 } else { 0 },
            props,
            payload: Bytes::from_static(b"\x00\xffpayload"),
        })
    }

    #[test]
    fn packets_round_trip_on_both_versions() {
        let props = Properties {
            payload_format: Some(1),
            message_expiry: Some(60),
            content_type: Some("text/plain".into()),
            response_topic: Some("r/t".into()),
            correlation_data: Some(Bytes::from_static(b"\x01\x02")),
            user: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            subscription_ids: vec![1, 300],
            ..Properties::default()
        };
        let cases = vec![
            (publish(0, Properties::default()), V311),
            (publish(1, Properties::default()), V311),
            (publish(2, props.clone()), V5),
            (
                Packet::Ack {
                    kind: AckKind::Pubrel,
                    pkid: 9,
                    code: 0,
                    props: Properties::default(),
                },
                V311,
            ),
            (
                Packet::Ack {
                    kind: AckKind::Puback,
                    pkid: 9,
                    code: 0x10,
                    props: Properties::default(),
                },
                V5,
            ),
            (
                Packet::Subscribe {
                    pkid: 3,
                    filters: vec![(
                        "a/+/c".into(),
                        SubOptions {
                            qos: 2,
                            no_local: true,
                            retain_as_published: true,
                            retain_handling: 2,
                        },
                    )],
                    props: Properties {
                        subscription_ids: vec![5],
                        ..Properties::default()
                    },
                },
                V5,
            ),
            (
                Packet::Suback {
                    pkid: 3,
                    codes: vec![0, 1, 0x80],
                    props: Properties::default(),
                },
                V311,
            ),
            (
                Packet::Unsubscribe {
                    pkid: 4,
                    filters: vec!["x".into(), "y/#".into()],
                    props: Properties::default(),
                },
                V311,
            ),
            (
                Packet::Unsuback {
                    pkid: 4,
                    codes: vec![0, 0x11],
                    props: Properties::default(),
                },
                V5,
            ),
            (Packet::Pingreq, V311),
            (Packet::Pingresp, V5),
            (
                Packet::Disconnect {
                    code: 0x8e,
                    props: Properties {
                        reason_string: Some("taken over".into()),
                        ..Properties::default()
                    },
                },
                V5,
            ),
            (
                Packet::Connack {
                    session_present: true,
                    code: 0,
                    props: Properties {
                        assigned_client_id: Some("auto-1".into()),
                        receive_maximum: Some(20),
                        topic_alias_maximum: Some(10),
                        ..Properties::default()
                    },
                },
                V5,
            ),
            (
                Packet::Connect(Box::new(ConnectPacket {
                    protocol: V5,
                    clean: false,
                    keep_alive: 30,
                    client_id: "c".into(),
                    will: Some(Will {
                        topic: "w".into(),
                        payload: Bytes::from_static(b"bye"),
                        qos: 1,
                        retain: true,
                        props: Properties {
                            will_delay: Some(5),
                            ..Properties::default()
                        },
                    }),
                    username: Some("u".into()),
                    password: Some(Bytes::from_static(b"\xff\x00")),
                    props: Properties {
                        session_expiry: Some(100),
                        ..Properties::default()
                    },
                })),
                V5,
            ),
        ];
        let n = cases.len();
        for (p, v) in cases {
            assert_eq!(round_trip(&p, v), p, "{p:?}");
        }
        assert_eq!(n, 14);
    }

    #[test]
    fn framing_waits_for_bytes_and_caps_size() {
        let mut out = BytesMut::new();
        encode(&publish(1, Properties::default()), V311, &mut out);
        for cut in 0..out.len() {
            assert_eq!(frame_len(&out[..cut], 1024), Ok(None), "cut {cut}");
        }
        assert_eq!(
            frame_len(&out, 5),
            Err(DecodeError::TooLarge {
                size: out.len(),
                limit: 5
            })
        );
        assert_eq!(
            frame_len(&[0x30, 0xff, 0xff, 0xff, 0xff], usize::MAX),
            Err(DecodeError::BadLength)
        );
    }

    #[test]
    fn malformed_packets_are_refused() {
        let cases: &[(&[u8], DecodeError)] = &[
            (&[0x36, 0x03, 0x00, 0x01, b'a'], DecodeError::BadQos),
            (
                &[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00],
                DecodeError::ZeroPacketId,
            ),
            (&[0x80, 0x00], DecodeError::BadFlags),
            (&[0x82, 0x02, 0x00, 0x01], DecodeError::EmptySubscription),
            (&[0x30, 0x03, 0x00, 0x05, b'a'], DecodeError::Truncated),
            (&[0x30, 0x04, 0x00, 0x02, 0xc3, 0x28], DecodeError::BadUtf8),
            (&[0x00, 0x00], DecodeError::BadType(0)),
            (&[0xf0, 0x00], DecodeError::BadFlags),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                decode(Bytes::copy_from_slice(bytes), V311),
                Err(*want),
                "{bytes:02x?}"
            );
        }
        // Duplicate single-valued property.
        let dup = [
            0x30, 0x09, 0x00, 0x01, b'a', 0x04, 0x01, 0x00, 0x01, 0x01, b'x',
        ];
        assert_eq!(
            decode(Bytes::copy_from_slice(&dup), V5),
            Err(DecodeError::BadProperties)
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // xorshift: deterministic pseudo-random frames.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut buf = Vec::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 40) as usize;
            for i in 0..len {
                buf.push((x >> (i % 8 * 8)) as u8 ^ i as u8);
            }
            if let Ok(Some(n)) = frame_len(&buf, 1 << 20) {
                for v in [V311, V5] {
                    if decode(Bytes::copy_from_slice(&buf[..n]), v).is_ok() {
                        decoded += 1;
                    }
                }
            }
        }
        assert!(decoded > 0, "some random frames are valid packets");
    }

    /// Cross-check the other way: what this codec encodes, mqtt-protocol-core
    /// (an independent implementation) decodes to the same meaning.
    #[test]
    fn mqtt_protocol_core_decodes_what_we_encode() {
        use mqtt_protocol_core::mqtt::packet::{Qos, RetainHandling, v3_1_1, v5_0};
        use std::sync::Arc;
        fn body(frame: &[u8]) -> (u8, &[u8]) {
            let (_, used) = decode_varint(frame.get(1..).unwrap_or_default())
                .unwrap()
                .unwrap();
            (frame[0] & 0x0f, &frame[1 + used..])
        }
        let mut checked = 0;
        for qos in 0..=2u8 {
            for v in [V311, V5] {
                let props = if v == V5 {
                    Properties {
                        content_type: Some("ct".into()),
                        user: vec![("k".into(), "v".into())],
                        message_expiry: Some(30),
                        ..Properties::default()
                    }
                } else {
                    Properties::default()
                };
                let mut out = BytesMut::new();
                encode(&publish(qos, props), v, &mut out);
                let (flags, b) = body(&out);
                let data: Arc<[u8]> = Arc::from(b);
                let (topic, their_qos, pkid, payload, nprops) = if v == V5 {
                    let (p, _) = v5_0::Publish::parse(flags, data).expect("parses");
                    (
                        p.topic_name().to_string(),
                        p.qos(),
                        p.packet_id(),
                        p.payload().as_slice().to_vec(),
                        p.props.len(),
                    )
                } else {
                    let (p, _) = v3_1_1::Publish::parse(flags, data).expect("parses");
                    (
                        p.topic_name().to_string(),
                        p.qos(),
                        p.packet_id(),
                        p.payload().as_slice().to_vec(),
                        0,
                    )
                };
                let want_qos = [Qos::AtMostOnce, Qos::AtLeastOnce, Qos::ExactlyOnce][qos as usize];
                assert_eq!(topic, "a/b");
                assert_eq!(their_qos, want_qos);
                assert_eq!(pkid, (qos > 0).then_some(7));
                assert_eq!(payload, b"\x00\xffpayload");
                assert_eq!(nprops, if v == V5 { 3 } else { 0 });
                checked += 1;
            }
        }
        let mut out = BytesMut::new();
        let opts = SubOptions {
            qos: 1,
            no_local: true,
            retain_as_published: true,
            retain_handling: 1,
        };
        encode(
            &Packet::Subscribe {
                pkid: 9,
                filters: vec![("x/+".into(), opts)],
                props: Properties::default(),
            },
            V5,
            &mut out,
        );
        let (_, b) = body(&out);
        let (sub, _) = v5_0::Subscribe::parse(b).expect("parses");
        assert_eq!(sub.packet_id(), 9);
        let e = &sub.entries()[0];
        assert_eq!(e.topic_filter(), "x/+");
        let o = e.sub_opts();
        assert_eq!(o.qos(), Qos::AtLeastOnce);
        assert!(o.nl() && o.rap());
        assert_eq!(o.rh(), RetainHandling::SendRetainedIfNotExists);
        checked += 1;
        assert_eq!(checked, 7);
    }

    /// Cross-check: rumqttc's encoder (an independent implementation)
    /// produces frames this codec decodes to the same meaning.
    #[test]
    fn decodes_what_rumqttc_encodes() {
        use rumqttc::mqttbytes::{QoS, v4};
        let mut buf = BytesMut::new();
        let mut p = v4::Publish::new("t/1", QoS::AtLeastOnce, vec![1u8, 2, 3]);
        p.pkid = 42;
        p.retain = true;
        p.write(&mut buf).unwrap();
        let mut sub = v4::Subscribe::new("s/#", QoS::ExactlyOnce);
        sub.pkid = 1;
        let mut sub_buf = BytesMut::new();
        sub.write(&mut sub_buf).unwrap();
        match decode(buf.freeze(), V311).unwrap() {
            Packet::Publish(p) => {
                assert_eq!(
                    (p.topic.as_str(), p.qos, p.pkid, p.retain, &p.payload[..]),
                    ("t/1", 1, 42, true, &[1u8, 2, 3][..])
                );
            }
            other => panic!("{other:?}"),
        }
        match decode(sub_buf.freeze(), V311).unwrap() {
            Packet::Subscribe { filters, .. } => {
                assert_eq!(filters[0].0, "s/#");
                assert_eq!(filters[0].1.qos, 2);
            }
            other => panic!("{other:?}"),
        }

        use rumqttc::v5::mqttbytes::v5 as r5;
        let props = r5::PublishProperties {
            user_properties: vec![("a".into(), "b".into())],
            content_type: Some("ct".into()),
            message_expiry_interval: Some(9),
            ..Default::default()
        };
        let p = r5::Publish::new(
            "t/5",
            rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
            vec![9u8],
            Some(props),
        );
        let mut p = p;
        p.pkid = 5;
        let mut buf = BytesMut::new();
        p.write(&mut buf).unwrap();
        match decode(buf.freeze(), V5).unwrap() {
            Packet::Publish(p) => {
                assert_eq!(p.qos, 2);
                assert_eq!(p.props.user, vec![("a".to_string(), "b".to_string())]);
                assert_eq!(p.props.content_type.as_deref(), Some("ct"));
                assert_eq!(p.props.message_expiry, Some(9));
            }
            other => panic!("{other:?}"),
        }
    }
}
