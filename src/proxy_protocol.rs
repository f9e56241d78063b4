//! PROXY protocol headers sent to backends, by client connections and by
//! health checks (v1 text, v2 binary with TLVs), encoded with the
//! `proxy-header` crate.
//!
//! v2 carries, besides the addresses: ALPN, authority (the TLS SNI), an SSL
//! TLV (client used TLS, presented and verified a certificate, TLS version,
//! certificate CN) and a unique connection id.

use std::net::SocketAddr;

use proxy_header::{ProxiedAddress, ProxyHeader, SslInfo, Tlv};

use crate::tls::TlsInfo;

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

/// Append the header for a proxied client connection to `out`.
pub fn encode(
    version: ProxyProtocol,
    client: SocketAddr,
    local: SocketAddr,
    tls: Option<&TlsInfo>,
    unique_id: &[u8],
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
            if let Some(tls) = tls {
                if let Some(alpn) = &tls.alpn {
                    tlvs.push(Tlv::Alpn(alpn.as_slice().into()));
                }
                if let Some(sni) = &tls.sni {
                    tlvs.push(Tlv::Authority(sni.as_str().into()));
                }
                // verify = 0 means "verified" (or no certificate to verify):
                // rustls only finishes a handshake whose certificate verified.
                let mut ssl = SslInfo::new(true, tls.client_cert, tls.client_cert, 0);
                ssl.append_tlv(Tlv::SslVersion(tls.version.into()));
                if let Some(cn) = &tls.client_cn {
                    ssl.append_tlv(Tlv::SslCn(cn.as_str().into()));
                }
                tlvs.push(Tlv::Ssl(ssl));
            }
            if !unique_id.is_empty() {
                tlvs.push(Tlv::UniqueId(unique_id.into()));
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
        ProxyCommand::Proxy => encode(version, local, broker, None, &[], out),
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
            client_cn: Some("device-42".into()),
        }
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
            b"0123456789abcdef",
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

    #[test]
    fn v1_and_mapped_addresses() {
        let mut out = Vec::new();
        let client: SocketAddr = "[::ffff:10.1.2.3]:4000".parse().unwrap();
        let local: SocketAddr = "[::ffff:10.0.0.1]:8883".parse().unwrap();
        encode(ProxyProtocol::V1, client, local, None, b"", &mut out);
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
