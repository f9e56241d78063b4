//! TLS posture, checked by an independent scanner (`sslscan`, Debian
//! package) against a running proxy listener: TLS 1.2 and 1.3 only, AEAD
//! suites with forward secrecy only, the server's own suite preference
//! (AES-128-GCM first), no known weakness reported.

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslscan_reports_a_modern_posture() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("node1", node.addr)]).await;
    let (ok, out) = run(tokio::process::Command::new("sslscan")
        .arg("--no-colour")
        .arg(proxy.addr.to_string()))
    .await;
    assert!(ok, "sslscan runs (scripts/test installs it):\n{out}");

    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line:\n{out}"))
            .to_string()
    };
    for old in ["SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1"] {
        assert!(
            line(&format!("{old} ")).contains("disabled"),
            "{old}:\n{out}"
        );
    }
    for current in ["TLSv1.2", "TLSv1.3"] {
        assert!(
            line(&format!("{current} ")).contains("enabled"),
            "{current}:\n{out}"
        );
    }
    let suites: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("Preferred") || l.starts_with("Accepted"))
        .collect();
    assert!(!suites.is_empty(), "no cipher suites listed:\n{out}");
    for s in &suites {
        let aead = s.contains("GCM") || s.contains("CHACHA20");
        let forward_secret = s.contains("TLSv1.3") || s.contains("ECDHE");
        assert!(aead && forward_secret, "weak suite: {s}");
    }
    // The server chooses, AES-128-GCM first (docs/performance.md).
    assert!(
        suites
            .iter()
            .any(|s| s.starts_with("Preferred TLSv1.3") && s.contains("TLS_AES_128_GCM_SHA256")),
        "{out}"
    );
    assert!(
        !out.lines()
            .any(|l| l.contains("vulnerable") && !l.contains("not vulnerable")),
        "{out}"
    );
    assert!(out.contains("renegotiation not supported"), "{out}");
}

/// An OCSP response made by `openssl ocsp` for the served certificate is
/// stapled: `openssl s_client -status` reads it back, status good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ocsp_response_is_stapled() {
    let certs = Certs::new();
    let script = r#"set -e
serial=$(openssl x509 -in server.pem -noout -serial | cut -d= -f2)
subject=$(openssl x509 -in server.pem -noout -subject -nameopt compat | sed 's/^subject=//')
printf 'V\t300101000000Z\t\t%s\tunknown\t%s\n' "$serial" "$subject" >index.txt
openssl ocsp -issuer ca.pem -cert server.pem -no_nonce -reqout req.der
openssl ocsp -index index.txt -rsigner ca.pem -rkey ca.key -CA ca.pem -reqin req.der \
  -respout server.ocsp -ndays 7"#;
    let (ok, out) = run(tokio::process::Command::new("bash")
        .args(["-c", script])
        .current_dir(certs.dir.path()))
    .await;
    assert!(ok, "openssl ocsp:\n{out}");

    let node = BrokerUnderTest::start(|_| {}).await;
    let mut raw = proxy_config(&certs, &[("node1", node.addr)]);
    tls_of(&mut raw).ocsp = Some(certs.p("server.ocsp"));
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;

    let (_, out) = run(tokio::process::Command::new("openssl")
        .args(["s_client", "-status", "-CAfile"])
        .arg(certs.path("ca.pem"))
        .arg("-connect")
        .arg(proxy.addr.to_string())
        .stdin(std::process::Stdio::null()))
    .await;
    assert!(
        out.contains("OCSP Response Status: successful"),
        "no staple:\n{out}"
    );
    assert!(out.contains("Cert Status: good"), "{out}");
}
