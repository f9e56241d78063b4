//! `mqttlb bench` as a user runs it (the built binary), against
//! `mqttlb broker` and Mosquitto, plain and through the TLS proxy: its JSON
//! counts what happened, a clean run loses nothing, and a broker killed
//! mid-run shows up as lost messages and dropped connections. Counts are
//! bounded by `--messages`; nothing here depends on how fast the machine is.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Run `mqttlb bench ARGS --json --quiet`; returns (exit code, summary).
async fn bench(args: &[&str]) -> (i32, Value) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_mqttlb"))
            .arg("bench")
            .args(args)
            .args(["--json", "--quiet"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("bench finishes")
    .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "bench printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

fn n(v: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} in {v}"))
}

fn assert_clean(v: &Value, expected: u64) {
    assert_eq!(n(v, "messages.expected"), expected, "{v}");
    assert_eq!(n(v, "messages.received"), expected, "{v}");
    for k in ["lost", "duplicated", "reordered"] {
        assert_eq!(n(v, &format!("messages.{k}")), 0, "{k}: {v}");
    }
    assert!(
        v["errors"]
            .as_object()
            .expect("errors")
            .values()
            .all(|e| e == 0),
        "{v}"
    );
    assert!(n(v, "messages.latency.count") == expected, "{v}");
    assert!(n(v, "messages.latency.p99_us") >= n(v, "messages.latency.p50_us"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_against_mqttlb_broker_counts_every_message() {
    let broker = BrokerUnderTest::start(|_| {}).await;
    let target = broker.addr.to_string();
    // 3 publishers × 40 messages, 2 subscribers on everything: 240 deliveries.
    let (code, v) = bench(&[
        "pubsub",
        "--target",
        &target,
        "--publishers",
        "3",
        "--subscribers",
        "2",
        "--filter",
        "bench/#",
        "--messages",
        "40",
        "--rate",
        "400",
        "--qos",
        "1",
        "--duration",
        "30s",
        "--protocol",
        "5.0",
    ])
    .await;
    assert_eq!(code, 0, "{v}");
    assert_eq!(n(&v, "messages.published"), 120);
    assert_eq!(n(&v, "messages.acked"), 120);
    assert_clean(&v, 240);
    assert_eq!(n(&v, "connections.connected"), 5);
    assert_eq!(v["protocol"], "5.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_through_the_tls_proxy_to_mosquitto() {
    let certs = Certs::new();
    let m = Mosquitto::start().await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("m", m.addr())]).await;
    let target = proxy.addr.to_string();
    let ca = certs.p("ca.pem");
    // Each subscriber i follows publisher i only (%i in the filter).
    let (code, v) = bench(&[
        "pubsub",
        "--target",
        &target,
        "--tls",
        "--cafile",
        &ca,
        "--alpn",
        "mqtt",
        "--publishers",
        "2",
        "--subscribers",
        "2",
        "--topic",
        "t/%i",
        "--filter",
        "t/%i",
        "--messages",
        "50",
        "--rate",
        "500",
        "--qos",
        "2",
        "--payload",
        "200",
        "--duration",
        "30s",
    ])
    .await;
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["tls"], true);
    assert_eq!(n(&v, "messages.published"), 100);
    assert_clean(&v, 100);
    assert_eq!(
        proxy.metric("mqttlb_tls_handshakes_total{listener=\"mqtts\",result=\"ok\"}"),
        4.0,
        "every bench client went through the TLS listener"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conn_and_handshake_scenarios() {
    let certs = Certs::new();
    let broker = BrokerUnderTest::start(|_| {}).await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("b", broker.addr)]).await;
    let target = proxy.addr.to_string();
    let ca = certs.p("ca.pem");
    let (code, v) = bench(&[
        "conn",
        "--target",
        &target,
        "--tls",
        "--cafile",
        &ca,
        "-c",
        "25",
        "--duration",
        "500ms",
        "--keep-alive",
        "1s",
        "--source-ips",
        "127.0.0.2-127.0.0.4",
    ])
    .await;
    assert_eq!(code, 0, "{v}");
    assert_eq!(n(&v, "connections.connected"), 25);
    assert_eq!(n(&v, "connections.open_at_end"), 25);
    assert_eq!(n(&v, "connections.connect_latency.count"), 25);

    let m = Mosquitto::start().await;
    let target = m.addr().to_string();
    let (code, v) = bench(&[
        "handshake",
        "--target",
        &target,
        "--concurrency",
        "2",
        "--duration",
        "500ms",
    ])
    .await;
    assert_eq!(code, 0, "{v}");
    let done = n(&v, "handshakes.completed");
    assert!(done > 0, "{v}");
    assert_eq!(n(&v, "connections.connected"), done);
    assert!(m.connections_of("bench-h-0") as u64 >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_64() {
    for args in [
        &["pubsub", "--payload", "8"][..],
        &["conn", "--tls"][..],
        &["pub", "--topic", "a/#"][..],
        &["conn", "--source-ips", "10.0.0.9-10.0.0.1"][..],
    ] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqttlb"))
            .arg("bench")
            .args(args)
            .output()
            .await
            .expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert!(err.contains("--"), "{args:?} names the flag: {err}");
    }
}

/// Two meshed `mqttlb broker` nodes behind the proxy (round robin), so
/// subscribers and publishers sit on both. One node is stopped mid-run:
/// its subscribers are gone while the other node's publisher goes on, so
/// the run must report lost messages and dropped connections, and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_run_shows_as_loss() {
    let certs = Certs::new();
    let mut nodes = BrokerUnderTest::mesh(2, |_, _| {}).await;
    let mut b = nodes.pop().expect("node b");
    let a = nodes.pop().expect("node a");
    let (a_addr, b_addr) = (a.addr, b.addr);
    let pool = "strategy = \"round-robin\"\nhealth = { check = \"tcp\", interval = \"200ms\", timeout = \"200ms\", rise = 1, fall = 1 }";
    let proxy = ProxyUnderTest::start(
        &config(&certs, &[("a", a_addr), ("b", b_addr)], "", pool),
        certs.dir.path(),
    )
    .await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqttlb"))
        .args([
            "bench",
            "pubsub",
            "--target",
            &proxy.addr.to_string(),
            "--tls",
            "--cafile",
            &certs.p("ca.pem"),
            "--publishers",
            "2",
            "--subscribers",
            "4",
            "--filter",
            "bench/#",
            "--rate",
            "100",
            "--duration",
            "4s",
            "--drain",
            "1s",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bench starts");
    // Wait for the progress line that shows messages flowing, then stop b.
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("recv") && !line.contains("recv 0/s (0)") {
                return;
            }
        }
        panic!("bench ended before messages flowed");
    })
    .await
    .expect("messages flow");
    b.stop().await;
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("bench finishes")
        .expect("bench output");
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert!(n(&v, "messages.lost") > 0, "{v}");
    assert!(n(&v, "connections.dropped") > 0, "{v}");
    assert!(n(&v, "errors.closed") > 0, "{v}");
    assert_eq!(n(&v, "messages.duplicated"), 0, "{v}");
}
