//! PROXY headers received: from a cloud L4 balancer in front of the
//! proxy's listeners (`listener.proxy_protocol`), and from mqttlb's proxy
//! in front of `mqttlb broker`. Pure, socket-free, shared by both:
//!
//! * [`scan`] says how far the bytes that have arrived go — no header, a
//!   header under way, a complete header of N bytes, or malformed — so a
//!   caller reads exactly the header and not one byte of what follows it
//!   (the TLS ClientHello, the CONNECT);
//! * [`parse`] decodes a complete header with the `proxy-header` crate;
//! * [`Trusted`] is the set of peers allowed to send one, and
//!   [`InboundProxy`] a listener's settings;
//! * [`PassedTlvs`] keeps the balancer's TLVs a pool passes on to its
//!   brokers ([`TlvTypes`]), bounded per connection.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use proxy_header::{ParseConfig, Protocol, ProxyHeader};

/// What a v1 header starts with.
pub const V1_SIGNATURE: &[u8] = b"PROXY ";
/// What a v2 header starts with.
pub const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the protocol's own bound).
pub const V1_MAX: usize = 107;
/// A v2 header's fixed part: signature, version and command, family,
/// length.
const V2_FIXED: usize = 16;
/// The largest v2 header a listener reads (addresses and TLVs): a cloud
/// balancer's fit in a few hundred bytes.
pub const MAX_LISTENER_HEADER: usize = 4096;
/// The largest v2 header there is (its length field is a u16): what the
/// broker reads, since mqttlb's own headers may carry a client certificate.
pub const MAX_HEADER: usize = V2_FIXED + u16::MAX as usize;
/// TLVs kept per connection to pass on, at most.
pub const MAX_PASSED_TLVS: usize = 8;
/// Bytes of TLVs kept per connection to pass on (type and length
/// included), at most.
pub const MAX_PASSED_BYTES: usize = 1024;

/// What the first bytes of a connection say about a PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// They cannot begin a header: there is none.
    Absent,
    /// A header may be under way and is not complete: every byte so far
    /// belongs to it, and the next `look` bytes may too (peek that far).
    Partial { look: usize },
    /// A complete header: the first `len` bytes.
    Complete(usize),
    /// A header that cannot be valid.
    Invalid(Invalid),
}

/// Why a PROXY header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("v1 header longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("v1 header line not ended by CRLF")]
    V1LineEnd,
    #[error("v2 version or command unknown")]
    V2Version,
    #[error("v2 header of {0} bytes, more than the {1} accepted")]
    V2TooLarge(usize, usize),
    #[error("header malformed")]
    Malformed,
    #[error("header names a datagram (UDP) connection")]
    Datagram,
}

/// Where a complete header ends in `buf`, if it holds one; v2 headers over
/// `max` bytes are invalid. Never reads past the header: what a caller
/// consumes on [`Scan::Partial`] and [`Scan::Complete`] is header only.
pub fn scan(buf: &[u8], max: usize) -> Scan {
    let starts = |sig: &[u8]| buf.iter().zip(sig).all(|(a, b)| a == b);
    if buf.is_empty() {
        return Scan::Partial { look: V1_MAX };
    }
    if starts(V1_SIGNATURE) {
        return match buf.iter().position(|&b| b == b'\n') {
            Some(end) if end >= V1_MAX => Scan::Invalid(Invalid::V1TooLong),
            Some(end) if end.checked_sub(1).and_then(|i| buf.get(i)) == Some(&b'\r') => {
                Scan::Complete(end + 1)
            }
            Some(_) => Scan::Invalid(Invalid::V1LineEnd),
            None if buf.len() >= V1_MAX => Scan::Invalid(Invalid::V1TooLong),
            None => Scan::Partial {
                look: V1_MAX - buf.len(),
            },
        };
    }
    if !starts(V2_SIGNATURE) {
        return Scan::Absent;
    }
    let (Some(&version), Some(&hi), Some(&lo)) = (buf.get(12), buf.get(14), buf.get(15)) else {
        return Scan::Partial {
            look: V2_FIXED.saturating_sub(buf.len()).max(1),
        };
    };
    // Version 2, command LOCAL (0) or PROXY (1).
    if version != 0x20 && version != 0x21 {
        return Scan::Invalid(Invalid::V2Version);
    }
    let len = V2_FIXED + usize::from(u16::from_be_bytes([hi, lo]));
    if len > max {
        return Scan::Invalid(Invalid::V2TooLarge(len, max));
    }
    if buf.len() >= len {
        Scan::Complete(len)
    } else {
        Scan::Partial {
            look: len - buf.len(),
        }
    }
}

/// A complete header, decoded.
#[derive(Debug)]
pub struct Received<'a> {
    header: ProxyHeader<'a>,
}

/// Decode a complete header (the bytes [`scan`] found). Every TLV must be
/// well-formed; an address of a datagram connection is refused.
pub fn parse(header: &[u8]) -> Result<Received<'_>, Invalid> {
    let (parsed, used) =
        ProxyHeader::parse(header, ParseConfig::default()).map_err(|_| Invalid::Malformed)?;
    if used != header.len() || parsed.tlvs().any(|t| t.is_err()) {
        return Err(Invalid::Malformed);
    }
    if parsed
        .proxied_address()
        .is_some_and(|a| a.protocol != Protocol::Stream)
    {
        return Err(Invalid::Datagram);
    }
    Ok(Received { header: parsed })
}

impl Received<'_> {
    /// The client's address and the address it connected to; `None` for
    /// v2 LOCAL, v1 `UNKNOWN` and address families without one (the
    /// connection's own addresses stand).
    pub fn addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        self.header
            .proxied_address()
            .map(|a| (a.source, a.destination))
    }

    /// The client certificate's CN from a v2 SSL TLV.
    pub fn ssl_cn(&self) -> Option<String> {
        self.header.ssl().and_then(|s| s.cn().map(str::to_owned))
    }

    /// The TLVs of `types`, to pass on; the first [`MAX_PASSED_TLVS`] that
    /// fit in [`MAX_PASSED_BYTES`]. `None` when there are none.
    pub fn keep(&self, types: &TlvTypes) -> Option<Box<PassedTlvs>> {
        if types.is_empty() {
            return None;
        }
        let mut raw = Vec::new();
        let mut count = 0;
        for tlv in self.header.tlvs().flatten() {
            if count == MAX_PASSED_TLVS {
                break;
            }
            if !types.contains(tlv.kind()) {
                continue;
            }
            let mark = raw.len();
            tlv.encode(&mut raw);
            if raw.len() > MAX_PASSED_BYTES {
                raw.truncate(mark);
                continue;
            }
            count += 1;
        }
        (!raw.is_empty()).then(|| {
            Box::new(PassedTlvs {
                raw: raw.into_boxed_slice(),
            })
        })
    }
}

/// TLVs received from a balancer, kept on the connection to pass on:
/// type, length, value as on the wire, at most [`MAX_PASSED_TLVS`] and
/// [`MAX_PASSED_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassedTlvs {
    raw: Box<[u8]>,
}

impl PassedTlvs {
    /// Each TLV's type and value.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        let mut rest: &[u8] = &self.raw;
        std::iter::from_fn(move || {
            let [kind, hi, lo, after @ ..] = rest else {
                return None;
            };
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            let value = after.get(..len)?;
            rest = after.get(len..).unwrap_or_default();
            Some((*kind, value))
        })
    }

    /// Bytes held (type and length included).
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// A set of TLV types (`[pool.NAME.identity] pass_tlvs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlvTypes(u128, u128);

impl TlvTypes {
    pub fn insert(&mut self, kind: u8) {
        match kind.checked_sub(128) {
            None => self.0 |= 1 << kind,
            Some(high) => self.1 |= 1 << high,
        }
    }

    pub fn contains(&self, kind: u8) -> bool {
        match kind.checked_sub(128) {
            None => self.0 & (1 << kind) != 0,
            Some(high) => self.1 & (1 << high) != 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0 && self.1 == 0
    }

    /// Both sets' types.
    pub fn union(self, other: TlvTypes) -> TlvTypes {
        TlvTypes(self.0 | other.0, self.1 | other.1)
    }
}

impl FromIterator<u8> for TlvTypes {
    fn from_iter<I: IntoIterator<Item = u8>>(kinds: I) -> TlvTypes {
        let mut set = TlvTypes::default();
        for kind in kinds {
            set.insert(kind);
        }
        set
    }
}

/// The peers allowed to send a PROXY header: CIDR blocks, IPv4 and IPv6.
/// An IPv4 peer on a dual-stack listener (`::ffff:a.b.c.d`) matches IPv4
/// blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trusted(Vec<IpNet>);

impl Trusted {
    pub fn new(nets: Vec<IpNet>) -> Trusted {
        Trusted(nets.into_iter().map(canonical_net).collect())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A block inside `::ffff:0:0/96` as the IPv4 block it is; host bits
/// cleared.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), Some(prefix)) =
            (v6.addr().to_ipv4_mapped(), v6.prefix_len().checked_sub(96))
        {
            if let Ok(v4) = ipnet::Ipv4Net::new(v4, prefix) {
                return IpNet::V4(v4.trunc());
            }
        }
    }
    net.trunc()
}

/// Parse one `proxy_protocol_from` entry: a CIDR block, or a bare address
/// (as /32 or /128).
pub fn parse_cidr(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

/// A listener's inbound PROXY protocol (`proxy_protocol = "optional"` or
/// `"required"`; off is no `InboundProxy` at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundProxy {
    /// A trusted peer must send a header (else it may).
    pub required: bool,
    /// `proxy_protocol_from`: everyone else is refused, header or not.
    pub from: Trusted,
    /// `proxy_protocol_timeout`: from accept to a complete header (or to
    /// the first bytes that show there is none).
    pub timeout: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_TCP4: &[u8] = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 8883\r\n";
    const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

    fn v2(tlvs: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let addrs = proxy_header::ProxiedAddress::stream(
            "192.0.2.7:51234".parse().unwrap(),
            "198.51.100.1:8883".parse().unwrap(),
        );
        let tlvs = tlvs
            .iter()
            .map(|(k, v)| proxy_header::Tlv::Custom(*k, (*v).into()));
        ProxyHeader::with_tlvs(Some(addrs), tlvs)
            .encode_v2(&mut out)
            .unwrap();
        out
    }

    fn v2_local() -> Vec<u8> {
        let mut out = Vec::new();
        ProxyHeader::with_local().encode_v2(&mut out).unwrap();
        out
    }

    /// Every prefix of a header is `Partial` and never claims a byte past
    /// the header; the whole is `Complete` at exactly its length, whatever
    /// follows it.
    #[test]
    fn scan_finds_exactly_the_header() {
        let cases = [
            V1_TCP4.to_vec(),
            V1_UNKNOWN.to_vec(),
            v2(&[(0xEA, b"\x01vpce-0123456789abcdef0")]),
            v2_local(),
        ];
        let mut checked = 0;
        for header in &cases {
            let header = header.as_slice();
            for cut in 0..header.len() {
                match scan(&header[..cut], MAX_LISTENER_HEADER) {
                    Scan::Partial { look } => assert!(look >= 1, "{header:?} at {cut}"),
                    other => panic!("{header:?} cut at {cut}: {other:?}"),
                }
            }
            let mut followed = header.to_vec();
            followed.extend_from_slice(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\r\n");
            assert_eq!(
                scan(&followed, MAX_LISTENER_HEADER),
                Scan::Complete(header.len())
            );
            assert!(parse(header).is_ok(), "{header:?}");
            checked += 1;
        }
        assert_eq!(checked, 4);
    }

    #[test]
    fn scan_tells_other_protocols_and_bad_headers_apart() {
        // A TLS ClientHello, an MQTT CONNECT, an HTTP request: no header.
        for other in [
            &b"\x16\x03\x01"[..],
            b"\x10\x0c\x00\x04MQTT",
            b"GET / HTTP/1.1",
        ] {
            assert_eq!(scan(other, MAX_LISTENER_HEADER), Scan::Absent, "{other:?}");
        }
        // "PRO" could still be a header; "POST" cannot.
        assert!(matches!(scan(b"PRO", 4096), Scan::Partial { .. }));
        assert_eq!(scan(b"POST /", 4096), Scan::Absent);
        let long = [V1_SIGNATURE, &[b'1'; 120][..]].concat();
        assert_eq!(scan(&long, 4096), Scan::Invalid(Invalid::V1TooLong));
        assert_eq!(
            scan(b"PROXY UNKNOWN\n", 4096),
            Scan::Invalid(Invalid::V1LineEnd)
        );
        let mut bad_version = v2(&[]);
        bad_version[12] = 0x31;
        assert_eq!(scan(&bad_version, 4096), Scan::Invalid(Invalid::V2Version));
        let big = v2(&[(0xE0, &[7; 5000])]);
        assert_eq!(
            scan(&big, MAX_LISTENER_HEADER),
            Scan::Invalid(Invalid::V2TooLarge(big.len(), MAX_LISTENER_HEADER))
        );
        assert_eq!(scan(&big, MAX_HEADER), Scan::Complete(big.len()));
        // A v1 header whose addresses do not parse is found, then refused.
        let garbage = b"PROXY TCP4 999.0.0.1 x y z\r\n";
        assert_eq!(scan(garbage, 4096), Scan::Complete(garbage.len()));
        assert_eq!(parse(garbage).unwrap_err(), Invalid::Malformed);
    }

    #[test]
    fn parse_gives_addresses_or_none_for_local() {
        let want = (
            "192.0.2.7:51234".parse().unwrap(),
            "198.51.100.1:8883".parse().unwrap(),
        );
        assert_eq!(parse(V1_TCP4).unwrap().addresses(), Some(want));
        assert_eq!(parse(&v2(&[])).unwrap().addresses(), Some(want));
        assert_eq!(parse(V1_UNKNOWN).unwrap().addresses(), None);
        assert_eq!(parse(&v2_local()).unwrap().addresses(), None);
        // A TLV whose length runs past the header.
        let mut broken = v2(&[(0xEA, b"abc")]);
        let n = broken.len();
        broken[n - 4] = 0x10;
        assert_eq!(parse(&broken).unwrap_err(), Invalid::Malformed);
        // UDP addresses do not describe a TCP connection.
        let mut udp = Vec::new();
        ProxyHeader::with_address(proxy_header::ProxiedAddress::datagram(want.0, want.1))
            .encode_v2(&mut udp)
            .unwrap();
        assert_eq!(parse(&udp).unwrap_err(), Invalid::Datagram);
    }

    #[test]
    fn kept_tlvs_are_the_asked_types_and_bounded() {
        let vpce = b"\x01vpce-0123456789abcdef0";
        let header = v2(&[
            (0xEA, vpce),
            (0xE1, b"not asked"),
            (0x02, b"mqtt.example.com"),
        ]);
        let received = parse(&header).unwrap();
        assert!(received.keep(&TlvTypes::default()).is_none());
        let kept = received.keep(&[0xEA, 0x02].into_iter().collect()).unwrap();
        let got: Vec<(u8, &[u8])> = kept.iter().collect();
        assert_eq!(got, [(0xEA, &vpce[..]), (0x02, &b"mqtt.example.com"[..])]);
        assert_eq!(kept.len(), 3 + vpce.len() + 3 + 16);

        // Twenty 100-byte TLVs: eight at most, and 1 KiB at most.
        let many: Vec<(u8, &[u8])> = (0..20).map(|_| (0xEA, &[1u8; 100][..])).collect();
        let header = v2(&many);
        let received = parse(&header).unwrap();
        let kept = received.keep(&[0xEA].into_iter().collect()).unwrap();
        assert_eq!(kept.iter().count(), MAX_PASSED_TLVS);
        let big: Vec<(u8, &[u8])> = (0..20).map(|_| (0xEA, &[1u8; 300][..])).collect();
        let header = v2(&big);
        let received = parse(&header).unwrap();
        let kept = received.keep(&[0xEA].into_iter().collect()).unwrap();
        assert_eq!(kept.iter().count(), 3);
        assert!(kept.len() <= MAX_PASSED_BYTES);
    }

    #[test]
    fn tlv_types_hold_all_256() {
        let set: TlvTypes = [0, 1, 127, 128, 0xEA, 255].into_iter().collect();
        let members: Vec<u8> = (0..=255).filter(|k| set.contains(*k)).collect();
        assert_eq!(members, [0, 1, 127, 128, 0xEA, 255]);
        assert!(TlvTypes::default().is_empty());
        assert_eq!(
            set.union([2].into_iter().collect()),
            [0, 1, 2, 127, 128, 0xEA, 255].into_iter().collect()
        );
    }

    #[test]
    fn trusted_blocks_match_v4_v6_and_mapped_peers() {
        let nets = [
            "10.0.0.0/8",
            "192.0.2.7",
            "2001:db8::/32",
            "::ffff:172.16.0.0/112",
        ]
        .iter()
        .map(|t| parse_cidr(t).unwrap_or_else(|| panic!("{t}")))
        .collect();
        let trusted = Trusted::new(nets);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for yes in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "192.0.2.7",
            "2001:db8::1",
            "172.16.5.5",
            "::ffff:172.16.5.5",
        ] {
            assert!(trusted.contains(ip(yes)), "{yes}");
        }
        for no in ["11.0.0.1", "192.0.2.8", "2001:db9::1", "172.17.0.1", "::1"] {
            assert!(!trusted.contains(ip(no)), "{no}");
        }
        for bad in ["10.0.0.0/33", "10.0.0", "example.com", "2001:db8::/129", ""] {
            assert_eq!(parse_cidr(bad), None, "{bad}");
        }
        assert_eq!(parse_cidr("::1"), Some("::1/128".parse().unwrap()));
        assert!(!Trusted::default().contains(ip("10.0.0.1")));
    }
}
