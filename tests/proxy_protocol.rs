//! PROXY protocol v2 towards backends, read by an independent parser
//! (`ppp`): the real client address, SNI, TLS facts and certificate CN;
//! health checks send their own connection's addresses (command PROXY, as
//! RabbitMQ and Mosquitto 2.1 require), or LOCAL when configured.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Seen {
    local: bool,
    /// A client connection's header carries the unique id TLV; a health
    /// check's carries none.
    check: bool,
    source: Option<SocketAddr>,
    destination: Option<SocketAddr>,
    authority: Option<String>,
    ssl: Option<Vec<u8>>,
    unique_id_len: usize,
    after_header: Vec<u8>,
}

/// A backend that reads a v2 header with `ppp`, records it, then answers
/// the CONNECT that follows with an accepted CONNACK.
async fn recording_backend() -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 16];
                if s.read_exact(&mut head).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
                let mut all = head.to_vec();
                all.resize(16 + len, 0);
                if s.read_exact(&mut all[16..]).await.is_err() {
                    return;
                }
                let header =
                    ppp::v2::Header::try_from(all.as_slice()).expect("ppp parses the header");
                let mut rec = Seen {
                    local: header.command == ppp::v2::Command::Local,
                    check: true,
                    source: None,
                    destination: None,
                    authority: None,
                    ssl: None,
                    unique_id_len: 0,
                    after_header: Vec::new(),
                };
                if let ppp::v2::Addresses::IPv4(a) = header.addresses {
                    rec.source = Some(SocketAddr::from((a.source_address, a.source_port)));
                    rec.destination = Some(SocketAddr::from((
                        a.destination_address,
                        a.destination_port,
                    )));
                }
                for tlv in header.tlvs() {
                    let tlv = tlv.expect("TLV");
                    match tlv.kind {
                        0x02 => {
                            rec.authority = Some(String::from_utf8_lossy(&tlv.value).into_owned())
                        }
                        0x05 => {
                            rec.unique_id_len = tlv.value.len();
                            rec.check = false;
                        }
                        0x20 => rec.ssl = Some(tlv.value.to_vec()),
                        _ => {}
                    }
                }
                if !rec.check {
                    let mut connect = vec![0u8; connect_packet(4, "pp-client").len()];
                    if s.read_exact(&mut connect).await.is_ok() {
                        rec.after_header = connect;
                        let _ = s.write_all(&[0x20, 2, 0, 0]).await;
                    }
                }
                seen.lock().unwrap().push(rec);
                let mut sink = [0u8; 64];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_header_carries_client_address_sni_and_certificate_cn() {
    let certs = Certs::new();
    let (backend, seen) = recording_backend().await;
    let mut raw = proxy_config(&certs, &[("fake", backend)]);
    tls_of(&mut raw).client_auth = Some("optional".into());
    tls_of(&mut raw).client_ca = Some(certs.p("ca.pem"));
    let pool = raw.pool_mut("brokers");
    pool.proxy_protocol = Some("v2".into());
    let health = pool.health_mut();
    health.check = Some("tcp".into());
    health.interval = Some("100ms".into());
    health.timeout = Some("500ms".into());
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;

    let mut s = tls_connect(proxy.addr, &certs, true)
        .await
        .expect("TLS with client cert");
    let client_addr = s.get_ref().0.local_addr().expect("client addr");
    assert_eq!(mqtt_connect(&mut s, 4, "pp-client").await, Some(0));

    let seen_ref = &seen;
    wait_until(
        "a proxied and a health-check header arrived",
        DEADLINE,
        || async {
            let v = seen_ref.lock().unwrap();
            v.iter().any(|r| r.check) && v.iter().any(|r| !r.check)
        },
    )
    .await;
    let v = seen.lock().unwrap().clone();
    let check = v.iter().find(|r| r.check).expect("check header");
    assert!(!check.local, "checks send command PROXY by default");
    assert!(
        check
            .source
            .is_some_and(|a| a.ip().is_loopback() && a.port() != 0),
        "the check connection's own address: {check:?}"
    );
    assert_eq!(check.destination, Some(backend), "{check:?}");
    assert!(
        check.ssl.is_none() && check.authority.is_none(),
        "{check:?}"
    );
    let rec = v.iter().find(|r| !r.check).expect("proxied header");
    assert!(!rec.local);
    assert_eq!(
        rec.source,
        Some(client_addr),
        "the broker learns the real client address"
    );
    assert_eq!(
        rec.authority.as_deref(),
        Some("localhost"),
        "SNI travels as authority"
    );
    assert_eq!(rec.unique_id_len, 16);
    let ssl = rec.ssl.as_ref().expect("SSL TLV");
    assert_eq!(ssl[0], 0x07, "client used TLS and presented a certificate");
    assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
    let text = String::from_utf8_lossy(&ssl[5..]);
    assert!(text.contains("TLSv1.3"), "{text}");
    assert!(text.contains(mqttlb::certs::CLIENT_CN), "{text}");
    assert_eq!(
        rec.after_header,
        connect_packet(4, "pp-client"),
        "the CONNECT follows the header untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_can_send_local_headers() {
    let certs = Certs::new();
    let (backend, seen) = recording_backend().await;
    let text = config(
        &certs,
        &[("fake", backend)],
        "",
        "proxy_protocol = \"v2\"\nhealth = { check = \"tcp\", interval = \"100ms\", timeout = \"500ms\", proxy_command = \"local\" }",
    );
    let _proxy = ProxyUnderTest::start(&text, certs.dir.path()).await;
    let seen_ref = &seen;
    wait_until("two health-check headers arrived", DEADLINE, || async {
        seen_ref.lock().unwrap().len() >= 2
    })
    .await;
    let v = seen.lock().unwrap().clone();
    assert!(
        v.iter().all(|r| r.local && r.check && r.source.is_none()),
        "{v:?}"
    );
}
