//! Shared test harness: real Mosquitto processes on ephemeral loopback
//! ports, mqttlb in-process on port 0, dev certificates, condition waits.
//!
//! This file holds the small shared pieces (waits, [`DEADLINE`], [`Certs`],
//! ports, command runs, metric samples); the harnesses live by concern and
//! are re-exported here, so tests keep `use common::*`:
//! - `mosquitto`: a real Mosquitto process ([`Mosquitto`]);
//! - `proxy`: mqttlb's proxy in-process ([`ProxyUnderTest`], [`config`])
//!   and its admin API;
//! - `broker`: mqttlb's broker in-process ([`BrokerUnderTest`], meshes);
//! - `haproxy`: a real HAProxy as an L4 balancer sending PROXY headers
//!   ([`HaProxy`]);
//! - `clients`: MQTT and TLS clients (rumqttc 3.1.1 and 5, raw codec, raw
//!   TLS);
//! - `rabbitmq`: a RabbitMQ cluster (used as `common::rabbitmq`).
#![allow(dead_code)]

mod broker;
mod clients;
#[cfg(unix)]
pub mod dnsmasq;
mod haproxy;
mod mosquitto;
mod proxy;
pub mod rabbitmq;

// Each test binary uses a subset of the harness.
#[allow(unused_imports)]
pub use {broker::*, clients::*, haproxy::*, mosquitto::*, proxy::*};

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use mqttlb::certs::{CLIENT_CN, DevCerts};
use prometheus_client::registry::Registry;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    SanType, date_time_ymd,
};
use rustls_pki_types::CertificateDer;

/// Generous upper bound for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Poll `cond` until it holds or `deadline` passes; panics with `what`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Dev certificates written to a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        DevCerts::generate(&[], CLIENT_CN)
            .expect("generate")
            .write(dir.path())
            .expect("write certs");
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read cert")
    }

    /// The dev CA, able to sign more certificates.
    pub fn ca(&self) -> Issuer<'static, KeyPair> {
        let text = |name| String::from_utf8(self.read(name)).expect("PEM is UTF-8");
        let key = KeyPair::from_pem(&text("ca.key")).expect("CA key");
        Issuer::from_ca_cert_pem(&text("ca.pem"), key).expect("CA certificate")
    }

    /// Sign `params` with the dev CA and write `<name>.pem` and
    /// `<name>.key` next to the dev certificates; returns the certificate.
    pub fn issue(&self, name: &str, params: &CertificateParams) -> CertificateDer<'static> {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca()).expect("sign");
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).expect("write cert");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write key");
        cert.der().clone()
    }
}

/// Leaf parameters: subject CN `cn`, valid 2024–2049, for `purpose`.
pub fn leaf(cn: &str, sans: Vec<SanType>, purpose: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![purpose];
    p.not_before = date_time_ymd(2024, 1, 1);
    p.not_after = date_time_ymd(2049, 12, 31);
    p
}

/// A free loopback port (bound and released; Mosquitto cannot report the
/// port it bound, so it needs a number up front).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Run a command with a deadline, returning (status success, stdout).
pub async fn run(cmd: &mut tokio::process::Command) -> (bool, String) {
    run_within(cmd, DEADLINE).await
}

/// [`run`] with its own deadline.
pub async fn run_within(cmd: &mut tokio::process::Command, deadline: Duration) -> (bool, String) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .expect("command finished before the deadline")
        .expect("command runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Current value of a metric sample in `registry` (0 when absent), e.g.
/// `mqttlb_broker_retained_messages`.
pub fn metric_sample(registry: &Registry, sample: &str) -> f64 {
    let text = mqttlb::metrics::encode(registry);
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// `promtool check metrics` on a scrape: Ok, or promtool's complaint.
pub async fn promtool_check(scrape: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool is installed (scripts/test installs the prometheus package)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(scrape.as_bytes())
        .await
        .expect("feed promtool");
    drop(stdin);
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("promtool finishes")
        .expect("promtool output");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    }
}
