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
