//! Which certificates the proxy presents and accepts: the SNI certificate
//! list (`[[listener.tls.sni]]`) against the default certificate, and client
//! certificates checked against a CRL under `client_auth = "required"`.
//!
//! Extra certificates are issued by the dev CA of [`Certs`] with rcgen
//! (`Certs::issue`), so the same trust anchor verifies every one of them.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use mqttlb::bench::net::NoVerification;
use rcgen::{
    CertificateRevocationListParams, ExtendedKeyUsagePurpose, KeyIdMethod, RevocationReason,
    RevokedCertParams, SanType, SerialNumber, date_time_ymd,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The first certificate of a PEM file under `certs`.
fn first_cert(certs: &Certs, name: &str) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(certs.path(name))
        .expect("PEM file")
        .next()
        .expect("a certificate")
        .expect("certificate parses")
}

/// Subject CN and SAN DNS names of a DER certificate.
fn names(cert: &CertificateDer<'_>) -> (String, Vec<String>) {
    let (_, x509) = x509_parser::parse_x509_certificate(cert).expect("X.509");
    let cn = x509
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let dns = x509
        .subject_alternative_name()
        .expect("SAN parses")
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    (cn, dns)
}

/// How a test client checks the proxy and which certificate it presents.
enum Client<'a> {
    /// Verify against the dev CA; present `<name>.pem`/`<name>.key` if set.
    Verified { identity: Option<&'a str> },
    /// Accept any server certificate; `sni: false` sends no server name.
    Accepting { sni: bool },
}

fn client_config(certs: &Certs, client: &Client<'_>) -> rustls::ClientConfig {
    let provider = mqttlb::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    match client {
        Client::Verified { identity } => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(first_cert(certs, "ca.pem")).expect("add CA");
            let builder = builder.with_root_certificates(roots);
            match identity {
                None => builder.with_no_client_auth(),
                Some(name) => {
                    let chain = vec![first_cert(certs, &format!("{name}.pem"))];
                    let key = PrivateKeyDer::from_pem_file(certs.path(&format!("{name}.key")))
                        .expect("client key");
                    builder
                        .with_client_auth_cert(chain, key)
                        .expect("client auth")
                }
            }
        }
        Client::Accepting { sni } => {
            let mut config = builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth();
            config.enable_sni = *sni;
            config
        }
    }
}

/// TLS handshake with the proxy at `addr` for `server_name`.
async fn handshake(
    addr: SocketAddr,
    certs: &Certs,
    client: Client<'_>,
    server_name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(certs, &client)));
    let name = ServerName::try_from(server_name.to_string()).expect("server name");
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(DEADLINE, connector.connect(name, tcp))
        .await
        .expect("handshake ends before the deadline")
}

/// The leaf certificate the proxy presented on `s`.
fn presented(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("the proxy presented a certificate")
        .clone()
        .into_owned()
}

/// Handshake, send an MQTT 3.1.1 CONNECT and read the CONNACK: the open
/// connection and the return code, or the error that ended it first. (Under TLS 1.3 the
/// client finishes its side before the proxy has checked the client
/// certificate, so a refusal may only show on the first read.)
async fn connack(
    addr: SocketAddr,
    certs: &Certs,
    client: Client<'_>,
    client_id: &str,
) -> Result<(TlsStream<TcpStream>, u8), String> {
    let mut s = handshake(addr, certs, client, "localhost")
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(&connect_packet(4, client_id))
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    match tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .expect("CONNACK or an error before the deadline")
    {
        Ok(_) if buf[0] == 0x20 => Ok((s, buf[3])),
        Ok(_) => Err(format!("not a CONNACK: {buf:02x?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_selects_the_listed_certificate_and_defaults_otherwise() {
    let certs = Certs::new();
    let sni_cert = certs.issue(
        "other",
        &leaf(
            "other.example",
            vec![SanType::DnsName(
                "other.example".try_into().expect("DNS name"),
            )],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
    );
    let default_cert = first_cert(&certs, "server.pem");
    let backend = BrokerUnderTest::start(|_| {}).await;
    let mut raw = proxy_config(&certs, &[("node1", backend.addr)]);
    tls_of(&mut raw).sni.push(RawCertPair {
        cert: certs.p("other.pem"),
        key: certs.p("other.key"),
        ocsp: None,
    });
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;

    // The listed name: the SNI certificate, which verifies for that name
    // against the dev CA, and the connection is served.
    let mut s = handshake(
        proxy.addr,
        &certs,
        Client::Verified { identity: None },
        "other.example",
    )
    .await
    .expect("handshake for other.example verifies");
    let got = presented(&s);
    assert!(got == sni_cert, "other.example gets the SNI certificate");
    assert_eq!(
        names(&got),
        (
            "other.example".to_string(),
            vec!["other.example".to_string()]
        )
    );
    assert_eq!(mqtt_connect(&mut s, 4, "via-sni").await, Some(0));
    wait_until("the SNI client reached the backend", DEADLINE, || async {
        backend.broker.is_online("via-sni")
    })
    .await;

    // An unknown name and no name at all: the default certificate.
    for (what, sni, name) in [
        ("unknown SNI", true, "unknown.example"),
        ("no SNI", false, "other.example"),
    ] {
        let s = handshake(proxy.addr, &certs, Client::Accepting { sni }, name)
            .await
            .unwrap_or_else(|e| panic!("handshake with {what}: {e}"));
        let got = presented(&s);
        assert!(got == default_cert, "{what} gets the default certificate");
        let (cn, dns) = names(&got);
        assert_eq!(cn, "localhost", "{what}");
        assert!(dns.contains(&"localhost".to_string()), "{what}: {dns:?}");
        assert!(!dns.contains(&"other.example".to_string()), "{what}");
    }

    // The default name verifies as usual.
    let s = handshake(
        proxy.addr,
        &certs,
        Client::Verified { identity: None },
        "localhost",
    )
    .await
    .expect("handshake for localhost verifies");
    assert!(presented(&s) == default_cert);
    assert_eq!(
        proxy.metric("mqttlb_tls_handshakes_total{listener=\"mqtts\",result=\"failed\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_client_certificate_is_refused_and_counted() {
    let certs = Certs::new();
    let ca = certs.ca();
    let client = |cn: &str, serial: u64| {
        let mut p = leaf(cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth);
        p.serial_number = Some(SerialNumber::from(serial));
        p
    };
    certs.issue("revoked", &client("revoked-client", 0x1001));
    certs.issue("good", &client("good-client", 0x1002));
    let crl = CertificateRevocationListParams {
        this_update: date_time_ymd(2024, 6, 1),
        next_update: date_time_ymd(2049, 12, 31),
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: vec![RevokedCertParams {
            serial_number: SerialNumber::from(0x1001u64),
            revocation_time: date_time_ymd(2024, 6, 1),
            reason_code: Some(RevocationReason::KeyCompromise),
            invalidity_date: None,
        }],
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&ca)
    .expect("sign CRL");
    std::fs::write(certs.path("ca.crl"), crl.pem().expect("CRL PEM")).expect("write CRL");

    let backend = BrokerUnderTest::start(|_| {}).await;
    let mut raw = proxy_config(&certs, &[("node1", backend.addr)]);
    let tls = tls_of(&mut raw);
    tls.client_auth = Some("required".into());
    tls.client_ca = Some(certs.p("ca.pem"));
    tls.crl = Some(certs.p("ca.crl"));
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;
    let failed = "mqttlb_tls_handshakes_total{listener=\"mqtts\",result=\"failed\"}";

    let refused = connack(
        proxy.addr,
        &certs,
        Client::Verified {
            identity: Some("revoked"),
        },
        "revoked-client",
    )
    .await
    .expect_err("a revoked certificate is refused");
    assert!(
        refused.contains("CertificateRevoked"),
        "the proxy names the revocation: {refused}"
    );
    wait_until("the failed handshake is counted", DEADLINE, || async {
        proxy.metric(failed) == 1.0 && proxy.rejected("tls_handshake_failed") == 1.0
    })
    .await;

    let (_open, code) = connack(
        proxy.addr,
        &certs,
        Client::Verified {
            identity: Some("good"),
        },
        "good-client",
    )
    .await
    .expect("a certificate the CRL does not list is served");
    assert_eq!(code, 0, "CONNACK accepted");
    wait_until("the good client reached the backend", DEADLINE, || async {
        backend.broker.is_online("good-client")
    })
    .await;
    assert!(!backend.broker.is_online("revoked-client"));
    assert_eq!(proxy.metric(failed), 1.0, "only the revoked one failed");
}
