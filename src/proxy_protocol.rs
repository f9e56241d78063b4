//! PROXY protocol headers sent to backends, by client connections and by
//! health checks (v1 text, v2 binary with TLVs), encoded with the
//! `proxy-header` crate.
//!
//! v2 carries, besides the addresses: ALPN, authority (the TLS SNI), an SSL
//! TLV (client used TLS, presented and verified a certificate, TLS version,
//! cipher, certificate CN), a unique connection id, and — per pool, when
//! asked — more of the client certificate in TLVs of the custom range
//! (`[pool.NAME.identity]`; types in [`IdentityTlvs`]) and the TLVs a
//! balancer in front of mqttlb sent that the pool passes on.
//!
//! [`inbound`]: headers received (listeners behind a balancer, and
//! `mqttlb broker` behind mqttlb).

pub mod inbound;

pub use inbound::{InboundProxy, PassedTlvs, TlvTypes, Trusted};

use std::borrow::Cow;
use std::net::SocketAddr;

use proxy_header::{ProxiedAddress, ProxyHeader, SslInfo, Tlv};

use crate::tls::{IdentityRequest, TlsInfo};

/// Custom TLV (PP2_TYPE_MIN_CUSTOM range, 0xE0-0xEF) with the client
/// certificate's subject DN, RFC 4514 string.
pub const TLV_SUBJECT: u8 = 0xE1;
/// One TLV per subject alternative name: `DNS:…`, `email:…` or `URI:…`.
pub const TLV_SAN: u8 = 0xE2;
/// SHA-256 of the DER client certificate, 32 raw bytes.
pub const TLV_FINGERPRINT: u8 = 0xE3;
/// Default type of the TLV with the whole DER client certificate.
pub const TLV_CERT: u8 = 0xE4;

/// Longest TLV value that can be encoded (its length is a u16).
const MAX_TLV_VALUE: usize = u16::MAX as usize;

/// Which client-identity TLVs a pool's v2 headers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityTlvs {
    /// PP2_SUBTYPE_SSL_CN (0x22) in the SSL TLV, as HAProxy's
    /// `send-proxy-v2-ssl-cn`.
    pub cn: bool,
    /// PP2_SUBTYPE_SSL_CIPHER (0x23) in the SSL TLV.
    pub cipher: bool,
    /// [`TLV_SUBJECT`].
    pub subject: bool,
    /// [`TLV_SAN`], one per name.
    pub sans: bool,
    /// [`TLV_FINGERPRINT`].
    pub fingerprint: bool,
    /// The DER certificate in a TLV of this type (0xE0-0xEF), if set.
    pub cert: Option<u8>,
    /// TLVs of these types received from a balancer (`pass_tlvs`), passed
    /// on unless mqttlb writes a TLV of that type itself.
    pub pass: TlvTypes,
}

impl Default for IdentityTlvs {
    fn default() -> Self {
        IdentityTlvs {
            cn: true,
            cipher: true,
            subject: false,
            sans: false,
            fingerprint: false,
            cert: None,
            pass: TlvTypes::default(),
        }
    }
}

impl IdentityTlvs {
    /// What the TLS layer must read from client certificates for these.
    pub fn request(&self) -> IdentityRequest {
        IdentityRequest {
            subject: self.subject,
            sans: self.sans,
            fingerprint: self.fingerprint,
            der: self.cert.is_some(),
        }
    }
}

/// The PROXY header command a health check sends when the pool speaks the
/// PROXY protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyCommand {
    /// Command PROXY (v1 `PROXY TCP4 …`) with the check connection's own
    /// addresses: every broker that parses PROXY headers accepts it.
    Proxy,
    /// v2 command LOCAL, v1 `PROXY UNKNOWN`: no addresses. RabbitMQ 3.10,
    /// Mosquitto 2.1 and older VerneMQ drop such connections.
    Local,
}

/// Which PROXY protocol version a pool sends to its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    V1,
    V2,
}

/// Append the header for a proxied client connection to `out`. `passed`:
/// TLVs a balancer sent (v2 only; those of `identity.pass` types go on).
#[allow(clippy::too_many_arguments)] // one header, described by all of them
pub fn encode(
    version: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
    tls: Option<&TlsInfo>,
    identity: &IdentityTlvs,
    unique_id: &[u8],
    passed: Option<&PassedTlvs>,
    out: &mut Vec<u8>,
) {
    let (client, local) = same_family(client, local);
    let addrs = ProxiedAddress::stream(client, local);
    match version {
        ProxyProtocol::Off => {}
        ProxyProtocol::V1 => {
            // Cannot fail: both addresses are of one family after same_family.
            let _ = ProxyHeader::with_address(addrs).encode_v1(out);
        }
        ProxyProtocol::V2 => {
            let mut tlvs: Vec<Tlv<'_>> = Vec::with_capacity(4);
            let mut certificate: Option<Tlv<'_>> = None;
            if let Some(tls) = tls {
                if let Some(alpn) = &tls.alpn {
                    tlvs.push(Tlv::Alpn(alpn.as_slice().into()));
                }
                if let Some(sni) = &tls.sni {
                    tlvs.push(Tlv::Authority(sni.as_ref().into()));
                }
                // verify = 0 means "verified" (or no certificate to verify):
                // rustls only finishes a handshake whose certificate verified.
                let mut ssl = SslInfo::new(true, tls.client_cert, tls.client_cert, 0);
                ssl.append_tlv(Tlv::SslVersion(tls.version.into()));
                if identity.cipher {
                    ssl.append_tlv(Tlv::SslCipher(tls.cipher.into()));
                }
                if let Some(cn) = tls.client_cn.as_ref().filter(|_| identity.cn) {
                    ssl.append_tlv(Tlv::SslCn(cn.as_str().into()));
                }
                tlvs.push(Tlv::Ssl(ssl));
                if let Some(id) = &tls.identity {
                    if let Some(subject) = id.subject.as_ref().filter(|_| identity.subject) {
                        tlvs.push(Tlv::Custom(TLV_SUBJECT, subject.as_bytes().into()));
                    }
                    if identity.sans {
                        for san in &id.sans {
                            tlvs.push(Tlv::Custom(TLV_SAN, san.as_bytes().into()));
                        }
                    }
                    if let Some(fp) = id.sha256.as_ref().filter(|_| identity.fingerprint) {
                        tlvs.push(Tlv::Custom(TLV_FINGERPRINT, fp.as_slice().into()));
                    }
                    if let (Some(kind), Some(der)) = (identity.cert, &id.der) {
                        // `Tlv::encode` panics past u16::MAX; rustls caps a
                        // handshake message (the whole chain) below that,
                        // but the bound is checked here, not assumed.
                        if der.len() <= MAX_TLV_VALUE {
                            certificate = Some(Tlv::Custom(kind, Cow::from(der.as_slice())));
                        }
                    }
                }
            }
            if !unique_id.is_empty() {
                tlvs.push(Tlv::UniqueId(unique_id.into()));
            }
            // The balancer's TLVs, unless mqttlb says the same itself.
            for (kind, value) in passed.into_iter().flat_map(PassedTlvs::iter) {
                let own = |t: &Tlv<'_>| t.kind() == kind;
                if identity.pass.contains(kind)
                    && !tlvs.iter().any(own)
                    && certificate.as_ref().is_none_or(|c| !own(c))
                {
                    tlvs.push(Tlv::Custom(kind, value.into()));
                }
            }
            let mark = out.len();
            if let Some(cert) = certificate {
                let with_cert = tlvs.iter().cloned().chain(std::iter::once(cert));
                if ProxyHeader::with_tlvs(Some(addrs.clone()), with_cert)
                    .encode_v2(out)
                    .is_ok()
                {
                    return;
                }
                // A v2 header holds at most 64 KiB: a certificate chain that
                // does not fit is left out rather than the whole header.
                out.truncate(mark);
            }
            let _ = ProxyHeader::with_tlvs(Some(addrs), tlvs).encode_v2(out);
        }
    }
}

/// Append the header a health check sends: with [`ProxyCommand::Proxy`],
/// the check connection's own addresses (`local` is the check socket's
/// address, `broker` the node's); with [`ProxyCommand::Local`], v2 LOCAL or
/// v1 `UNKNOWN`.
pub fn encode_check(
    version: ProxyProtocol,
    command: ProxyCommand,
    local: SocketAddr,
    broker: SocketAddr,
    out: &mut Vec<u8>,
) {
    match command {
        ProxyCommand::Proxy => encode(
            version,
            local,
            broker,
            None,
            &IdentityTlvs::default(),
            &[],
            None,
            out,
        ),
        ProxyCommand::Local => encode_local(version, out),
    }
}

/// Append a header without addresses: v2 LOCAL or v1 `UNKNOWN`.
pub fn encode_local(version: ProxyProtocol, out: &mut Vec<u8>) {
    match version {
        ProxyProtocol::Off => {}
        ProxyProtocol::V1 => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
        ProxyProtocol::V2 => {
            let _ = ProxyHeader::with_local().encode_v2(out);
        }
    }
}

/// A dual-stack listener reports IPv4 clients as v4-mapped IPv6; PROXY
/// headers need both addresses in one family, and a plain IPv4 source is
/// what brokers expect to log.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => a,
        },
        v4 => v4,
    };
    let (c, l) = (canon(client), canon(local));
    match (c, l) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => (c, l),
        // Mixed after canonicalisation: present both as IPv6.
        (SocketAddr::V4(v4), SocketAddr::V6(_)) => {
            (SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())), l)
        }
        (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
            (c, SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> TlsInfo {
        TlsInfo {
            sni: Some("mqtt.example.com".into()),
            alpn: Some(b"mqtt".to_vec()),
            version: "TLSv1.3",
            client_cert: true,
            resumed: false,
            client_cn: Some("device-42".into()),
            cipher: "TLS13_AES_128_GCM_SHA256",
            identity: Some(Box::new(crate::tls::CertIdentity {
                subject: Some("CN=device-42,O=Example".into()),
                sans: vec![
                    "DNS:device-42.example".into(),
                    "email:ops@example.com".into(),
                ],
                sha256: Some([7; 32]),
                der: Some(vec![0x30, 0x03, 0x02, 0x01, 0x01]),
            })),
        }
    }

    /// Every TLV of a v2 header, parsed by `ppp`, sub-TLVs of SSL included.
    fn tlvs_of(out: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let header = ppp::v2::Header::try_from(out).expect("ppp parses our v2 header");
        let mut all = Vec::new();
        for tlv in header.tlvs() {
            let tlv = tlv.expect("well-formed TLV");
            if tlv.kind == 0x20 {
                let mut subs = &tlv.value[5..];
                while let [kind, hi, lo, rest @ ..] = subs {
                    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
                    all.push((*kind, rest[..len].to_vec()));
                    subs = &rest[len..];
                }
            }
            all.push((tlv.kind, tlv.value.to_vec()));
        }
        all
    }

    /// The TLVs of a v2 header for `info` with `tlvs` switched on.
    fn identity_header(info: &TlsInfo, tlvs: &IdentityTlvs) -> Vec<(u8, Vec<u8>)> {
        let client: SocketAddr = "192.0.2.7:51234".parse().unwrap();
        let local: SocketAddr = "198.51.100.1:8883".parse().unwrap();
        let mut out = Vec::new();
        encode(
            ProxyProtocol::V2,
            client,
            local,
            Some(info),
            tlvs,
            b"",
            None,
            &mut out,
        );
        tlvs_of(&out)
    }

    #[test]
    fn identity_tlvs_are_sent_when_asked() {
        let all = IdentityTlvs {
            subject: true,
            sans: true,
            fingerprint: true,
            cert: Some(0xE9),
            ..IdentityTlvs::default()
        };
        let got = identity_header(&tls(), &all);
        let values = |kind: u8| -> Vec<Vec<u8>> {
            got.iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, v)| v.clone())
                .collect()
        };
        assert_eq!(values(0x22), [b"device-42".to_vec()]);
        assert_eq!(values(0x23), [b"TLS13_AES_128_GCM_SHA256".to_vec()]);
        assert_eq!(values(TLV_SUBJECT), [b"CN=device-42,O=Example".to_vec()]);
        assert_eq!(
            values(TLV_SAN),
            [
                b"DNS:device-42.example".to_vec(),
                b"email:ops@example.com".to_vec()
            ]
        );
        assert_eq!(values(TLV_FINGERPRINT), [vec![7u8; 32]]);
        assert_eq!(values(0xE9), [vec![0x30, 0x03, 0x02, 0x01, 0x01]]);

        // The defaults: CN and cipher only; both can be switched off.
        let kinds = |got: Vec<(u8, Vec<u8>)>| -> Vec<u8> { got.iter().map(|(k, _)| *k).collect() };
        let default = identity_header(&tls(), &IdentityTlvs::default());
        assert_eq!(kinds(default), [0x01, 0x02, 0x21, 0x23, 0x22, 0x20]);
        let none = IdentityTlvs {
            cn: false,
            cipher: false,
            ..IdentityTlvs::default()
        };
        assert_eq!(
            kinds(identity_header(&tls(), &none)),
            [0x01, 0x02, 0x21, 0x20]
        );
    }

    #[test]
    fn a_certificate_too_large_for_the_header_is_left_out() {
        let mut info = tls();
        if let Some(id) = info.identity.as_mut() {
            id.der = Some(vec![0x30; 65_000]);
            id.sans = vec!["DNS:x".repeat(200)];
        }
        let tlvs = IdentityTlvs {
            sans: true,
            cert: Some(TLV_CERT),
            ..IdentityTlvs::default()
        };
        let kinds: Vec<u8> = identity_header(&info, &tlvs)
            .iter()
            .map(|(k, _)| *k)
            .collect();
        assert!(kinds.contains(&TLV_SAN), "{kinds:x?}");
        assert!(!kinds.contains(&TLV_CERT), "{kinds:x?}");
    }

    #[test]
    fn v2_round_trips_through_an_independent_parser() {
        let mut out = Vec::new();
        let client: SocketAddr = "192.0.2.7:51234".parse().unwrap();
        let local: SocketAddr = "198.51.100.1:8883".parse().unwrap();
        encode(
            ProxyProtocol::V2,
            client,
            local,
            Some(&tls()),
            &IdentityTlvs::default(),
            b"0123456789abcdef",
            None,
            &mut out,
        );
        let header = ppp::v2::Header::try_from(out.as_slice()).expect("ppp parses our v2 header");
        match header.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                assert_eq!(
                    a.source_address,
                    "192.0.2.7".parse::<std::net::Ipv4Addr>().unwrap()
                );
                assert_eq!(a.source_port, 51234);
                assert_eq!(a.destination_port, 8883);
            }
            other => panic!("{other:?}"),
        }
        let mut kinds = Vec::new();
        for tlv in header.tlvs() {
            let tlv = tlv.expect("well-formed TLV");
            kinds.push(tlv.kind);
            if tlv.kind == 0x20 {
                // PP2_TYPE_SSL: client byte, verify (4), then sub-TLVs.
                assert_eq!(tlv.value[0], 0x07);
                assert_eq!(&tlv.value[1..5], &[0, 0, 0, 0]);
                let subs = &tlv.value[5..];
                assert!(subs.windows(7).any(|w| w == b"TLSv1.3"));
                assert!(subs.windows(9).any(|w| w == b"device-42"));
            }
            if tlv.kind == 0x02 {
                assert_eq!(&tlv.value[..], b"mqtt.example.com");
            }
        }
        assert_eq!(kinds, [0x01, 0x02, 0x20, 0x05]);
    }

    /// A balancer's TLVs go on when the pool passes their type and mqttlb
    /// does not write that type itself (its SNI beats the balancer's
    /// authority); an independent parser reads them.
    #[test]
    fn passed_tlvs_go_on_unless_mqttlb_says_the_same() {
        let mut from_balancer = Vec::new();
        let addrs = ProxiedAddress::stream(
            "203.0.113.9:40000".parse().unwrap(),
            "10.0.0.1:8883".parse().unwrap(),
        );
        let sent = [
            Tlv::Custom(0xEA, Cow::from(&b"\x01vpce-0abc"[..])),
            Tlv::Authority("balancer.example".into()),
            Tlv::Custom(0xE7, Cow::from(&b"not passed"[..])),
        ];
        ProxyHeader::with_tlvs(Some(addrs), sent)
            .encode_v2(&mut from_balancer)
            .unwrap();
        let types: TlvTypes = [0xEA, 0x02].into_iter().collect();
        let passed = inbound::parse(&from_balancer)
            .unwrap()
            .keep(&types)
            .unwrap();
        let identity = IdentityTlvs {
            pass: types,
            ..IdentityTlvs::default()
        };
        let header = |tls: Option<&TlsInfo>| {
            let mut out = Vec::new();
            encode(
                ProxyProtocol::V2,
                "203.0.113.9:40000".parse().unwrap(),
                "10.0.0.1:8883".parse().unwrap(),
                tls,
                &identity,
                b"",
                Some(&passed),
                &mut out,
            );
            tlvs_of(&out)
        };
        let value = |got: &[(u8, Vec<u8>)], kind: u8| -> Vec<Vec<u8>> {
            got.iter()
                .filter(|(k, _)| *k == kind)
                .map(|(_, v)| v.clone())
                .collect()
        };
        // Plain listener: both passed TLVs, nothing else.
        let plain = header(None);
        assert_eq!(value(&plain, 0xEA), [b"\x01vpce-0abc".to_vec()]);
        assert_eq!(value(&plain, 0x02), [b"balancer.example".to_vec()]);
        assert!(value(&plain, 0xE7).is_empty());
        // TLS listener: mqttlb's own authority (the SNI) only.
        let tls = header(Some(&tls()));
        assert_eq!(value(&tls, 0x02), [b"mqtt.example.com".to_vec()]);
        assert_eq!(value(&tls, 0xEA), [b"\x01vpce-0abc".to_vec()]);
        // A pool that passes nothing sends none of them.
        let mut out = Vec::new();
        encode(
            ProxyProtocol::V2,
            "203.0.113.9:40000".parse().unwrap(),
            "10.0.0.1:8883".parse().unwrap(),
            None,
            &IdentityTlvs::default(),
            b"",
            Some(&passed),
            &mut out,
        );
        assert!(tlvs_of(&out).is_empty());
    }

    #[test]
    fn v1_and_mapped_addresses() {
        let mut out = Vec::new();
        let client: SocketAddr = "[::ffff:10.1.2.3]:4000".parse().unwrap();
        let local: SocketAddr = "[::ffff:10.0.0.1]:8883".parse().unwrap();
        encode(
            ProxyProtocol::V1,
            client,
            local,
            None,
            &IdentityTlvs::default(),
            b"",
            None,
            &mut out,
        );
        assert_eq!(out, b"PROXY TCP4 10.1.2.3 10.0.0.1 4000 8883\r\n");
    }

    #[test]
    fn check_headers_carry_the_check_connection_addresses() {
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let broker: SocketAddr = "127.0.0.2:1883".parse().unwrap();
        let mut out = Vec::new();
        encode_check(
            ProxyProtocol::V2,
            ProxyCommand::Proxy,
            local,
            broker,
            &mut out,
        );
        let h = ppp::v2::Header::try_from(out.as_slice()).expect("parses");
        assert_eq!(h.command, ppp::v2::Command::Proxy);
        match h.addresses {
            ppp::v2::Addresses::IPv4(a) => {
                assert_eq!(a.source_port, 40000);
                assert_eq!(a.destination_address, std::net::Ipv4Addr::new(127, 0, 0, 2));
                assert_eq!(a.destination_port, 1883);
            }
            other => panic!("{other:?}"),
        }
        // No TLVs: a check is neither TLS nor a client connection.
        assert_eq!(h.tlvs().count(), 0);
        out.clear();
        encode_check(
            ProxyProtocol::V1,
            ProxyCommand::Proxy,
            local,
            broker,
            &mut out,
        );
        assert_eq!(out, b"PROXY TCP4 127.0.0.1 127.0.0.2 40000 1883\r\n");
        out.clear();
        encode_check(
            ProxyProtocol::V2,
            ProxyCommand::Local,
            local,
            broker,
            &mut out,
        );
        let h = ppp::v2::Header::try_from(out.as_slice()).expect("parses");
        assert_eq!(h.command, ppp::v2::Command::Local);
        out.clear();
        encode_check(
            ProxyProtocol::Off,
            ProxyCommand::Proxy,
            local,
            broker,
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn local_headers() {
        let mut out = Vec::new();
        encode_local(ProxyProtocol::V2, &mut out);
        let h = ppp::v2::Header::try_from(out.as_slice()).expect("parses");
        assert_eq!(h.command, ppp::v2::Command::Local);
        out.clear();
        encode_local(ProxyProtocol::Off, &mut out);
        assert!(out.is_empty());
    }
}
