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
    /// Every top-level TLV, as `ppp` read it.
    tlvs: Vec<(u8, Vec<u8>)>,
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
                    tlvs: Vec::new(),
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
                    rec.tlvs.push((tlv.kind, tlv.value.to_vec()));
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
                    // The CONNECT: fixed header, then its remaining length.
                    let mut fixed = [0u8; 2];
                    if s.read_exact(&mut fixed).await.is_ok() {
                        let mut connect = fixed.to_vec();
                        connect.resize(2 + usize::from(fixed[1]), 0);
                        if s.read_exact(&mut connect[2..]).await.is_ok() {
                            rec.after_header = connect;
                            let _ = s.write_all(&[0x20, 2, 0, 0]).await;
                        }
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

/// `[pool.X.identity]` puts the whole client identity in v2 TLVs; an
/// independent parser (`ppp`) and `openssl x509` agree on every value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_header_carries_the_full_client_identity_when_asked() {
    let certs = Certs::new();
    let mut params = leaf(
        "device-42",
        vec![
            rcgen::SanType::DnsName("d42.example".try_into().expect("dns")),
            rcgen::SanType::Rfc822Name("ops@example.com".try_into().expect("email")),
            rcgen::SanType::URI("urn:dev:42".try_into().expect("uri")),
        ],
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    );
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Example, Devices");
    let der = certs.issue("device", &params);

    let (backend, seen) = recording_backend().await;
    let mut raw = proxy_config(&certs, &[("fake", backend)]);
    tls_of(&mut raw).client_auth = Some("required".into());
    tls_of(&mut raw).client_ca = Some(certs.p("ca.pem"));
    if let Some(mqtt) = raw.listener[0].mqtt.as_mut() {
        mqtt.client_id_match = Some("cn-or-san".into());
    }
    let pool = raw.pool_mut("brokers");
    pool.proxy_protocol = Some("v2".into());
    pool.identity = Some(mqttlb::config::raw::RawIdentity {
        subject: Some(true),
        san: Some(true),
        fingerprint: Some(true),
        cert: Some(true),
        cert_type: Some(0xE8),
        ..Default::default()
    });
    pool.health_mut().check = Some("tcp".into());
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;

    let mut s = tls_connect_as(proxy.addr, None, &certs, Some("device"))
        .await
        .expect("TLS with the device certificate");
    assert_eq!(mqtt_connect(&mut s, 4, "urn:dev:42").await, Some(0));
    let seen_ref = &seen;
    wait_until("the client's header arrived", DEADLINE, || async {
        seen_ref.lock().unwrap().iter().any(|r| !r.check)
    })
    .await;
    let rec = seen
        .lock()
        .unwrap()
        .iter()
        .find(|r| !r.check)
        .cloned()
        .expect("client header");
    let values = |kind: u8| -> Vec<Vec<u8>> {
        rec.tlvs
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    };
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-in"])
            .arg(certs.path("device.pem"))
            .args(args)
            .output()
            .expect("openssl runs");
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    // Subject DN: RFC 4514, as `openssl x509 -nameopt RFC2253` prints it.
    let subject = openssl(&["-subject", "-nameopt", "RFC2253"]);
    let subject = subject.trim().trim_start_matches("subject=");
    assert_eq!(
        values(mqttlb::proxy_protocol::TLV_SUBJECT),
        [subject.as_bytes().to_vec()]
    );
    assert_eq!(
        values(mqttlb::proxy_protocol::TLV_SAN),
        [
            b"DNS:d42.example".to_vec(),
            b"email:ops@example.com".to_vec(),
            b"URI:urn:dev:42".to_vec()
        ]
    );
    // SHA-256 fingerprint: `openssl x509 -fingerprint -sha256`.
    let fp = openssl(&["-fingerprint", "-sha256"]);
    let hex: String = fp
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .replace(':', "")
        .to_lowercase();
    let sent: String = values(mqttlb::proxy_protocol::TLV_FINGERPRINT)[0]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sent, hex);
    assert_eq!(values(0xE8), [der.as_ref().to_vec()], "the DER certificate");
    assert_eq!(rec.after_header, connect_packet(4, "urn:dev:42"));

    // client_id_match: an id the certificate does not name is refused with
    // CONNACK "not authorized" (3.1.1: 5, 5.0: 0x87) before any broker.
    let headers_before = seen.lock().unwrap().iter().filter(|r| !r.check).count();
    for (level, code) in [(4, 5), (5, 0x87)] {
        let mut s = tls_connect_as(proxy.addr, None, &certs, Some("device"))
            .await
            .expect("TLS");
        assert_eq!(
            mqtt_connect(&mut s, level, "someone-else").await,
            Some(code)
        );
    }
    assert_eq!(proxy.rejected("client_id_mismatch"), 2.0);
    // The CN is accepted too.
    let mut s = tls_connect_as(proxy.addr, None, &certs, Some("device"))
        .await
        .expect("TLS");
    assert_eq!(mqtt_connect(&mut s, 5, "device-42").await, Some(0));
    wait_until("the CN client reached the backend", DEADLINE, || async {
        seen_ref.lock().unwrap().iter().filter(|r| !r.check).count() == headers_before + 1
    })
    .await;
}
