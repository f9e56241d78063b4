//! Inbound PROXY protocol: mqttlb replicas behind a real L4 balancer
//! (HAProxy, `mode tcp`, `send-proxy-v2` and `send-proxy`) learn each
//! client's real address, apply per-address limits to it and hand it to
//! the brokers, whose PROXY header an independent parser (`ppp`) reads.
//! Only `proxy_protocol_from` may connect; `optional` serves trusted
//! direct clients, `required` refuses them; LOCAL keeps the peer's
//! address; malformed, late and untrusted headers are refused and counted;
//! a balancer's TLVs go on to the brokers when the pool passes them; a
//! WebSocket listener reads the header before the upgrade.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use common::*;
use mqttlb::mqtt::{Peek, peek_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a broker read in front of a client's CONNECT.
#[derive(Debug, Clone)]
struct Seen {
    client_id: String,
    /// PROXY protocol version of mqttlb's header (1 or 2).
    version: u8,
    source: Option<SocketAddr>,
    tlvs: Vec<(u8, Vec<u8>)>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// A broker stand-in: reads mqttlb's PROXY header (v1 or v2) with `ppp`,
/// then the CONNECT, records both and answers an accepted CONNACK. Health
/// checks (a header, no CONNECT) are not recorded.
async fn recording_backend() -> (SocketAddr, Log) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let log: Log = Arc::default();
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log2.clone();
            tokio::spawn(async move {
                let Some((version, source, tlvs)) = read_header(&mut s).await else {
                    return;
                };
                let Some(client_id) = read_connect(&mut s).await else {
                    return;
                };
                log.lock().unwrap().push(Seen {
                    client_id,
                    version,
                    source,
                    tlvs,
                });
                let _ = s.write_all(&[0x20, 2, 0, 0]).await;
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, log)
}

type Header = (u8, Option<SocketAddr>, Vec<(u8, Vec<u8>)>);

async fn read_header(s: &mut TcpStream) -> Option<Header> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.ok()?;
    if first[0] == b'P' {
        let mut line = first.to_vec();
        while !line.ends_with(b"\r\n") && line.len() < 108 {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.ok()?;
            line.push(b[0]);
        }
        let text = std::str::from_utf8(&line).expect("v1 is text");
        let h = ppp::v1::Header::try_from(text).expect("ppp parses the v1 header");
        let source = match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        };
        return Some((1, source, Vec::new()));
    }
    let mut all = vec![0u8; 16];
    all[0] = first[0];
    s.read_exact(&mut all[1..]).await.ok()?;
    let len = usize::from(u16::from_be_bytes([all[14], all[15]]));
    all.resize(16 + len, 0);
    s.read_exact(&mut all[16..]).await.ok()?;
    let h = ppp::v2::Header::try_from(all.as_slice()).expect("ppp parses the v2 header");
    let source = match h.addresses {
        ppp::v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        ppp::v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
        _ => None,
    };
    let tlvs = h
        .tlvs()
        .map(|t| t.expect("well-formed TLV"))
        .map(|t| (t.kind, t.value.to_vec()))
        .collect();
    Some((2, source, tlvs))
}

/// A CONNECT of fewer than 128 bytes (the tests' own): its client id.
async fn read_connect(s: &mut TcpStream) -> Option<String> {
    let mut buf = vec![0u8; 2];
    s.read_exact(&mut buf).await.ok()?;
    assert!(buf[1] < 0x80, "test CONNECTs are short");
    buf.resize(2 + usize::from(buf[1]), 0);
    s.read_exact(&mut buf[2..]).await.ok()?;
    match peek_connect(&buf, usize::MAX) {
        Ok(Peek::Complete { connect, .. }) => Some(connect.client_id.to_string()),
        _ => None,
    }
}

/// The record of `client_id`, once the broker has it.
async fn seen(log: &Log, client_id: &str) -> Seen {
    let find = || {
        log.lock()
            .unwrap()
            .iter()
            .find(|s| s.client_id == client_id)
            .cloned()
    };
    wait_until(&format!("the broker saw {client_id}"), DEADLINE, || async {
        find().is_some()
    })
    .await;
    find().expect("seen")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

/// A replica: the standard TLS listener with `proxy_protocol = mode` from
/// `from`, its pool sending `outbound` headers to `backend`.
fn replica(
    certs: &Certs,
    backend: SocketAddr,
    mode: &str,
    from: &[&str],
    outbound: &str,
    edit: impl FnOnce(&mut RawConfig),
) -> String {
    let mut raw = proxy_config(certs, &[("node1", backend)]);
    raw.listener[0].proxy_protocol = Some(mode.into());
    raw.listener[0].proxy_protocol_from = Some(from.iter().map(|s| s.to_string()).collect());
    raw.pool_mut("brokers").proxy_protocol = Some(outbound.into());
    edit(&mut raw);
    raw.to_toml()
}

/// MQTT over TLS from `source` to `addr`: the client's own address and
/// the CONNACK code (`None`: refused before one).
async fn tls_client(
    addr: SocketAddr,
    source: &str,
    certs: &Certs,
    id: &str,
) -> (Option<SocketAddr>, Option<u8>) {
    let Ok(mut s) = tls_connect_from(addr, Some(ip(source)), certs, false).await else {
        return (None, None);
    };
    let local = s.get_ref().0.local_addr().ok();
    (local, mqtt_connect(&mut s, 4, id).await)
}

/// Plain TCP from `source`: `prefix` (a PROXY header, or nothing) and a
/// CONNECT; the client's own address and the CONNACK code.
async fn plain_client(
    addr: SocketAddr,
    source: &str,
    prefix: &[u8],
    id: &str,
) -> (SocketAddr, Option<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(ip(source), 0)).expect("bind");
    let mut s = socket.connect(addr).await.expect("connect");
    let local = s.local_addr().expect("local");
    // A refused peer may see its write fail: the answer is the close.
    let _ = s.write_all(prefix).await;
    (local, mqtt_connect(&mut s, 4, id).await)
}

fn v2_header(source: SocketAddr, destination: SocketAddr, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let tlvs = tlvs
        .iter()
        .map(|(k, v)| proxy_header::Tlv::Custom(*k, (*v).into()));
    proxy_header::ProxyHeader::with_tlvs(
        Some(proxy_header::ProxiedAddress::stream(source, destination)),
        tlvs,
    )
    .encode_v2(&mut out)
    .expect("encode");
    out
}

/// Two replicas behind HAProxy (v2 and v1 frontends, round robin): every
/// client's real address and port reach the brokers, in the v2 header of
/// one replica and the v1 header of the other, though every connection
/// to the replicas comes from HAProxy's one address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_addresses_cross_haproxy_and_two_replicas_to_the_brokers() {
    let certs = Certs::new();
    let (backend, log) = recording_backend().await;
    let base = certs.dir.path();
    let r1 = ProxyUnderTest::start(
        &replica(&certs, backend, "required", &["127.0.0.1"], "v2", |_| {}),
        base,
    )
    .await;
    let r2 = ProxyUnderTest::start(
        &replica(&certs, backend, "required", &["127.0.0.1/32"], "v1", |_| {}),
        base,
    )
    .await;
    let replicas = [r1.addr, r2.addr];
    let haproxy = HaProxy::start(&[
        Frontend {
            name: "v2",
            servers: &replicas,
            options: "send-proxy-v2",
        },
        Frontend {
            name: "v1",
            servers: &replicas,
            options: "send-proxy",
        },
    ])
    .await;

    let mut clients = Vec::new();
    for (frontend, n) in [("v2", 4), ("v1", 4)] {
        for i in 0..n {
            let id = format!("{frontend}-{i}");
            let source = format!("127.0.0.{}", if frontend == "v2" { 40 } else { 50 } + i);
            let (local, code) = tls_client(haproxy.addr(frontend), &source, &certs, &id).await;
            assert_eq!(code, Some(0), "{id} served");
            clients.push((id, local.expect("client address")));
        }
    }
    let mut versions = Vec::new();
    for (id, local) in &clients {
        let s = seen(&log, id).await;
        assert_eq!(s.source, Some(*local), "{id}: the broker sees the client");
        versions.push(s.version);
    }
    assert_eq!(clients.len(), 8);
    assert!(
        versions.contains(&1) && versions.contains(&2),
        "both replicas served: {versions:?}"
    );
    for r in [&r1, &r2] {
        assert_eq!(r.rejected("proxy_untrusted"), 0.0);
        assert_eq!(r.rejected("proxy_header_missing"), 0.0);
    }
}

/// `limits.source_connect_rate` counts the real address: a storm from one
/// client behind HAProxy is cut after its header, before any TLS work,
/// while another client behind the same HAProxy address is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_rate_limit_applies_to_the_real_address_behind_haproxy() {
    let certs = Certs::new();
    let (backend, log) = recording_backend().await;
    let toml = replica(&certs, backend, "required", &["127.0.0.1"], "v2", |raw| {
        raw.limits.source_connect_rate = Some(1); // bursts of 2
    });
    let proxy = ProxyUnderTest::start(&toml, certs.dir.path()).await;
    let haproxy = HaProxy::start(&[Frontend {
        name: "lb",
        servers: &[proxy.addr],
        options: "send-proxy-v2",
    }])
    .await;
    // Ten bare TCP connects in a row from one client: HAProxy opens one
    // connection to the replica for each, with its header.
    let mut held = Vec::new();
    for _ in 0..10 {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind(SocketAddr::new(ip("127.0.0.31"), 0)).expect("bind");
        held.push(s.connect(haproxy.addr("lb")).await.expect("connect"));
    }
    wait_until("the storm refused", DEADLINE, || async {
        proxy.rejected("source_rate_limit") >= 5.0
    })
    .await;
    assert_eq!(
        proxy.metric("mqttlb_tls_handshakes_total{listener=\"mqtts\",result=\"ok\"}"),
        0.0,
        "no handshake was completed for them"
    );
    // Another client, same HAProxy, same peer address at the replica.
    let (local, code) = tls_client(haproxy.addr("lb"), "127.0.0.32", &certs, "bystander").await;
    assert_eq!(code, Some(0), "another real address is served");
    assert_eq!(seen(&log, "bystander").await.source, local);
}

/// `optional` on a plain MQTT listener: a trusted peer without a header is
/// served under its own address; a v1 header names another; v2 LOCAL
/// keeps the peer's address; a balancer's TLVs go on when the pool passes
/// their type (0xEA, AWS's VPC endpoint id), others do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_serves_direct_clients_and_local_keeps_the_peer_address() {
    let certs = Certs::new();
    let (backend, log) = recording_backend().await;
    let toml = replica(&certs, backend, "optional", &["127.0.0.0/8"], "v2", |raw| {
        raw.listener[0].tls = None;
        raw.pool_mut("brokers").identity = Some(mqttlb::config::raw::RawIdentity {
            pass_tlvs: Some(vec![0xEA]),
            ..Default::default()
        });
    });
    let proxy = ProxyUnderTest::start(&toml, certs.dir.path()).await;

    let (direct, code) = plain_client(proxy.addr, "127.0.0.61", b"", "direct").await;
    assert_eq!(code, Some(0));
    assert_eq!(seen(&log, "direct").await.source, Some(direct));

    let v1 = b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 1883\r\n";
    let (_, code) = plain_client(proxy.addr, "127.0.0.62", v1, "behind-v1").await;
    assert_eq!(code, Some(0));
    assert_eq!(
        seen(&log, "behind-v1").await.source,
        Some("198.51.100.7:5555".parse().unwrap())
    );

    let mut local = Vec::new();
    proxy_header::ProxyHeader::with_local()
        .encode_v2(&mut local)
        .expect("encode");
    let (peer, code) = plain_client(proxy.addr, "127.0.0.63", &local, "local").await;
    assert_eq!(code, Some(0));
    assert_eq!(
        seen(&log, "local").await.source,
        Some(peer),
        "LOCAL keeps the peer"
    );

    let aws = v2_header(
        "203.0.113.5:4242".parse().unwrap(),
        "10.0.0.1:1883".parse().unwrap(),
        &[(0xEA, b"\x01vpce-0123456789abcdef0"), (0xE7, b"not passed")],
    );
    let (_, code) = plain_client(proxy.addr, "127.0.0.64", &aws, "via-nlb").await;
    assert_eq!(code, Some(0));
    let s = seen(&log, "via-nlb").await;
    assert_eq!(s.source, Some("203.0.113.5:4242".parse().unwrap()));
    let kinds: Vec<u8> = s.tlvs.iter().map(|(k, _)| *k).collect();
    assert!(
        s.tlvs
            .contains(&(0xEA, b"\x01vpce-0123456789abcdef0".to_vec())),
        "{kinds:x?}"
    );
    assert!(!kinds.contains(&0xE7), "{kinds:x?}");
    assert_eq!(
        proxy.metric("mqttlb_connections_total{listener=\"mqtts\"}"),
        4.0
    );
}

/// `required` on a TLS listener: a trusted peer without a header, an
/// untrusted peer with or without one, a malformed header and one that
/// never completes are each refused and counted under their reason; the
/// untrusted header's address never reaches a broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_refuses_and_counts_missing_untrusted_invalid_and_late_headers() {
    let certs = Certs::new();
    let (backend, log) = recording_backend().await;
    let toml = replica(&certs, backend, "required", &["127.0.0.1"], "v2", |raw| {
        raw.listener[0].proxy_protocol_timeout = Some("300ms".into());
    });
    let proxy = ProxyUnderTest::start(&toml, certs.dir.path()).await;

    // Trusted, no header: the ClientHello is not a header.
    let (_, code) = tls_client(proxy.addr, "127.0.0.1", &certs, "no-header").await;
    assert_eq!(code, None);
    assert_eq!(proxy.rejected("proxy_header_missing"), 1.0);

    // Untrusted: with a header claiming another address, and without.
    let claim = v2_header(
        "203.0.113.99:1".parse().unwrap(),
        "10.0.0.1:8883".parse().unwrap(),
        &[],
    );
    let (_, code) = plain_client(proxy.addr, "127.0.0.66", &claim, "impostor").await;
    assert_eq!(code, None);
    let (_, code) = tls_client(proxy.addr, "127.0.0.66", &certs, "stranger").await;
    assert_eq!(code, None);
    assert_eq!(proxy.rejected("proxy_untrusted"), 2.0);

    // Trusted, malformed.
    let (_, code) = plain_client(
        proxy.addr,
        "127.0.0.1",
        b"PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n",
        "malformed",
    )
    .await;
    assert_eq!(code, None);
    assert_eq!(proxy.rejected("proxy_header_invalid"), 1.0);

    // Trusted, a header that never completes: closed at the deadline.
    let mut late = TcpStream::connect(proxy.addr).await.expect("connect");
    late.write_all(b"PROXY TCP4 192.0.2.1")
        .await
        .expect("write");
    let closed = read_to_close(&mut late).await;
    assert!(closed.is_empty());
    assert_eq!(proxy.rejected("proxy_header_timeout"), 1.0);

    // A trusted balancer's client is still served.
    let mut lb = TcpStream::connect(proxy.addr).await.expect("connect");
    let header = v2_header(
        "192.0.2.10:40000".parse().unwrap(),
        "10.0.0.1:8883".parse().unwrap(),
        &[],
    );
    lb.write_all(&header).await.expect("header");
    let tls = tls_over(lb, &certs).await;
    let mut tls = tls.expect("TLS after the header");
    assert_eq!(mqtt_connect(&mut tls, 4, "served").await, Some(0));
    assert_eq!(
        seen(&log, "served").await.source,
        Some("192.0.2.10:40000".parse().unwrap())
    );
    assert!(
        log.lock()
            .unwrap()
            .iter()
            .all(|s| s.source != Some("203.0.113.99:1".parse().unwrap())),
        "the untrusted claim reached no broker"
    );
}

/// A TLS client on an already connected stream (after a PROXY header).
async fn tls_over(
    tcp: TcpStream,
    certs: &Certs,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = rustls_pki_types::ServerName::try_from("localhost")
        .expect("name")
        .to_owned();
    tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(certs, None)))
        .connect(name, tcp)
        .await
}

/// A reload switches the header on (and with it who may connect) for new
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_to_new_connections() {
    let certs = Certs::new();
    let (backend, log) = recording_backend().await;
    let mut raw = proxy_config(&certs, &[("node1", backend)]);
    raw.listener[0].tls = None;
    raw.pool_mut("brokers").proxy_protocol = Some("v2".into());
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ip("127.0.0.70"), 0))
        .expect("bind");
    let mut open = socket.connect(proxy.addr).await.expect("connect");
    assert_eq!(mqtt_connect(&mut open, 4, "before").await, Some(0));
    assert_eq!(
        seen(&log, "before").await.source,
        Some(open.local_addr().expect("local")),
        "off: the peer is the client"
    );

    raw.listener[0].proxy_protocol = Some("required".into());
    raw.listener[0].proxy_protocol_from = Some(vec!["127.0.0.1".into()]);
    let config = mqttlb::config::Config::from_raw(
        "reload.toml",
        certs.dir.path(),
        mqttlb::config::parse_toml("reload.toml", &raw.to_toml()).expect("parses"),
    )
    .expect("converts");
    proxy.handle.reload(config).await.expect("reload");

    let (_, code) = plain_client(proxy.addr, "127.0.0.70", b"", "after").await;
    assert_eq!(code, None, "no longer trusted to connect directly");
    assert_eq!(proxy.rejected("proxy_untrusted"), 1.0);
    let v1 = b"PROXY TCP4 198.51.100.8 10.0.0.1 6000 1883\r\n";
    let (_, code) = plain_client(proxy.addr, "127.0.0.1", v1, "behind").await;
    assert_eq!(code, Some(0));
    assert_eq!(
        seen(&log, "behind").await.source,
        Some("198.51.100.8:6000".parse().unwrap())
    );
    drop(open);
}

/// A WebSocket listener (`to = "tcp"`) reads the header before the HTTP
/// upgrade: the upgrade, the CONNECT in a binary frame and the CONNACK go
/// through, and the broker sees the address the balancer named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_listener_reads_the_header_before_the_upgrade() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};

    let certs = Certs::new();
    let (backend, log) = recording_backend().await;
    let toml = replica(&certs, backend, "required", &["127.0.0.0/8"], "v2", |raw| {
        raw.listener[0].tls = None;
        raw.listener[0].websocket = Some(mqttlb::config::raw::RawWebSocket {
            to: Some("tcp".into()),
            ..Default::default()
        });
    });
    let proxy = ProxyUnderTest::start(&toml, certs.dir.path()).await;

    let mut tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let device: SocketAddr = "198.51.100.9:7777".parse().unwrap();
    tcp.write_all(&v2_header(device, "10.0.0.1:443".parse().unwrap(), &[]))
        .await
        .expect("header");
    let mut req = format!("ws://{}/mqtt", proxy.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("the upgrade is accepted after the PROXY header");
    ws.send(Message::binary(connect_packet(4, "ws-behind-nlb")))
        .await
        .expect("send CONNECT");
    let answer = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("an answer in time")
        .expect("a message")
        .expect("no error");
    assert_eq!(answer, Message::binary(vec![0x20u8, 2, 0, 0]));
    assert_eq!(seen(&log, "ws-behind-nlb").await.source, Some(device));

    // Without a header the same listener refuses before the upgrade.
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let req = format!("ws://{}/mqtt", proxy.addr)
        .into_client_request()
        .expect("request");
    assert!(tokio_tungstenite::client_async(req, tcp).await.is_err());
    wait_until("proxy_header_missing counted", DEADLINE, || async {
        proxy.rejected("proxy_header_missing") == 1.0
    })
    .await;
}
