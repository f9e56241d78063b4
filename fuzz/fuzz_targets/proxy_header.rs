//! PROXY headers: the inbound scan and parse the proxy's listeners and the
//! broker use (`mqttlb::proxy_protocol::inbound`, over `proxy-header`)
//! never panic on arbitrary bytes nor claim a header past them, and every
//! v1/v2 header mqttlb writes from arbitrary addresses and TLS facts is
//! read back by an independent parser (`ppp`) with the same addresses.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use mqttlb::proxy_protocol::inbound::{self, MAX_HEADER, Scan};
use mqttlb::proxy_protocol::{IdentityTlvs, ProxyProtocol, encode};
use mqttlb::tls::TlsInfo;

fuzz_target!(|data: &[u8]| {
    if let Scan::Complete(len) = inbound::scan(data, MAX_HEADER) {
        assert!(len <= data.len());
        let _ = inbound::parse(&data[..len]);
    }

    if data.len() < 12 {
        return;
    }
    let ip = |b: &[u8]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
    let client = SocketAddr::new(ip(&data[0..4]), u16::from_be_bytes([data[8], data[9]]));
    let local = SocketAddr::new(ip(&data[4..8]), u16::from_be_bytes([data[10], data[11]]));
    let rest = &data[12..];
    let text = String::from_utf8_lossy(rest.get(..rest.len().min(64)).unwrap_or_default());
    let tls = TlsInfo {
        sni: Some(text.to_string()).filter(|s| !s.is_empty()),
        alpn: None,
        version: "TLSv1.3",
        client_cert: !text.is_empty(),
        client_cn: Some(text.to_string()),
        ..TlsInfo::default()
    };
    let identity = IdentityTlvs::default();
    let mut v2 = Vec::new();
    encode(ProxyProtocol::V2, client, local, Some(&tls), &identity, rest, None, &mut v2);
    let header = ppp::v2::Header::try_from(v2.as_slice()).expect("ppp reads our v2 header");
    match header.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            assert_eq!(SocketAddr::from((a.source_address, a.source_port)), client);
            assert_eq!(SocketAddr::from((a.destination_address, a.destination_port)), local);
        }
        other => panic!("{other:?}"),
    }
    let mut v1 = Vec::new();
    encode(ProxyProtocol::V1, client, local, None, &identity, &[], None, &mut v1);
    let text = std::str::from_utf8(&v1).expect("v1 is text");
    assert!(ppp::v1::Header::try_from(text).is_ok(), "ppp reads our v1 header: {text}");
});
