//! The `mqttlb` binary as operators run it: exit codes, `check`, `certs`,
//! and SIGTERM draining a live connection.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_mqttlb");

/// Send `signal` (e.g. "HUP") to `child`.
#[cfg(unix)]
async fn send_signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("pid").to_string();
    let sent = Command::new("kill")
        .args([format!("-{signal}"), pid])
        .status()
        .await
        .expect("kill");
    assert!(sent.success(), "kill -{signal}");
}

/// Send `signal` (e.g. "TERM") to `child` and return its exit code, within
/// the deadline.
#[cfg(unix)]
async fn signal_and_wait(child: &mut tokio::process::Child, signal: &str) -> Option<i32> {
    send_signal(child, signal).await;
    tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits before the deadline")
        .expect("status")
        .code()
}

#[tokio::test]
async fn check_names_file_key_and_reason_and_exits_64() {
    // Bad usage exits 64 too; help does not fail.
    let out = Command::new(BIN)
        .arg("--no-such-flag")
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let out = Command::new(BIN)
        .arg("--help")
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));

    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[listener]]\nlisten = \"127.0.0.1:8883\"\npool = \"p\"\n[pool.p]\nstrategy = \"fastest\"\nservers = [ { addr = \"nowhere\" } ]\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = bad.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}: pool.p.strategy: expected one of round-robin"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!("{file}: pool.p.servers[0].addr")),
        "{err}"
    );

    std::fs::write(
        &bad,
        "[[listener]]\nlisten = \"127.0.0.1:8883\"\npool = \"p\"\ncolour = \"blue\"\n",
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listener[0].colour") && err.contains("unknown field"),
        "{err}"
    );

    // Certificates that do not parse are caught by check, with their key.
    let certs = Certs::new();
    std::fs::write(certs.path("server.pem"), "not a certificate").expect("write");
    let cfg = config(&certs, &[("n", "127.0.0.1:1883".parse().unwrap())], "", "");
    let good = dir.path().join("tls.toml");
    std::fs::write(&good, cfg).expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listener[0].tls.cert"), "{err}");
}

#[tokio::test]
async fn reference_config_checks_clean_with_dev_certs() {
    // The broker reference and a broken broker file are checked as broker
    // configurations.
    let root0 = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(root0.join("config/broker.toml"))
        .output()
        .await
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = tempfile::NamedTempFile::new().expect("temp");
    std::fs::write(bad.path(), "[broker]\nreceive_maximum = 0\n").expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(bad.path())
        .output()
        .await
        .expect("runs");
    assert_eq!(out.status.code(), Some(64));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("broker.receive_maximum"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // config/mqttlb.toml points at certs/dev; make them in a copy of the tree.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("config")).expect("mkdir");
    std::fs::copy(
        root.join("config/mqttlb.toml"),
        dir.path().join("config/mqttlb.toml"),
    )
    .expect("copy");
    let status = Command::new(BIN)
        .args(["certs", "--out"])
        .arg(dir.path().join("certs/dev"))
        .stdout(Stdio::null())
        .status()
        .await
        .expect("runs");
    assert!(status.success());
    for f in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        assert!(
            dir.path().join("certs/dev").join(f).is_file(),
            "{f} written"
        );
    }
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(dir.path().join("config/mqttlb.toml"))
        .output()
        .await
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_lets_a_live_connection_finish() {
    let certs = Certs::new();
    let broker = Mosquitto::start().await;
    let port = free_port();
    let mut raw = proxy_config(&certs, &[("node1", broker.addr())]);
    raw.listener[0].listen = Some(format!("127.0.0.1:{port}"));
    raw.limits.drain_timeout = Some("60s".into());
    let cfg = raw.to_toml();
    let path = certs.path("mqttlb.toml");
    std::fs::write(&path, cfg).expect("write config");
    let mut child = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mqttlb");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("mqttlb listens", DEADLINE, || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;

    let mut live = tls_connect(addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut live, 4, "long-lived").await, Some(0));

    send_signal(&child, "TERM").await;
    wait_until("listener closed", DEADLINE, || async {
        TcpStream::connect(addr).await.is_err()
    })
    .await;

    // Still served while draining.
    for _ in 0..3 {
        live.write_all(&[0xc0, 0x00]).await.expect("ping");
        let mut pong = [0u8; 2];
        tokio::time::timeout(DEADLINE, live.read_exact(&mut pong))
            .await
            .expect("in time")
            .expect("pong");
        assert_eq!(pong, [0xd0, 0x00]);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(200), child.wait())
            .await
            .is_err(),
        "mqttlb must wait for the live connection"
    );
    // The client leaves; the drain completes and mqttlb exits 0.
    live.write_all(&[0xe0, 0x00]).await.expect("disconnect");
    live.shutdown().await.expect("close_notify");
    let status = tokio::time::timeout(DEADLINE, child.wait())
        .await
        .expect("exits after the drain")
        .expect("status");
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .await
        .expect("log");
    assert!(log.contains("draining"), "{log}");
}

/// `mqttlb demo` starts, prints client commands that work exactly as
/// printed (run through `sh -c`), and stops with exit 0 on SIGINT.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_commands_that_work_and_stops_on_ctrl_c() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .args(["demo", "--nodes", "3", "--listen", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mqttlb demo");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let (mut sub_cmd, mut pub_cmd, mut admin) = (None, None, None);
    tokio::time::timeout(DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let line = line.trim().to_string();
            if line.starts_with("mosquitto_sub") {
                sub_cmd = Some(line);
            } else if line.starts_with("mosquitto_pub") {
                pub_cmd = Some(line);
            } else if let Some(rest) = line.strip_prefix("Admin API: http://") {
                admin = rest.split('/').next().map(str::to_string);
                break;
            }
        }
    })
    .await
    .expect("demo prints its instructions");
    // The admin API it prints answers, with the three nodes.
    let admin: std::net::SocketAddr = admin
        .expect("an Admin API line")
        .parse()
        .expect("admin address");
    let (status, body) = http(admin, "GET", "/api/v1/backends").await;
    assert_eq!(status, 200, "{body}");
    for node in ["node1", "node2", "node3"] {
        assert!(body.contains(&format!("\"{node}\"")), "{body}");
    }
    let sub_cmd = sub_cmd.expect("a mosquitto_sub line") + " -C 1 -W 15";
    let pub_cmd = pub_cmd.expect("a mosquitto_pub line");
    assert!(dir.path().join("certs/ca.pem").is_file(), "dev certs made");

    let sub = tokio::spawn(async move { run(Command::new("sh").args(["-c", &sub_cmd])).await });
    // The subscriber is subscribed once a retained-free publish reaches it;
    // publish until the subscriber exits with the message (bounded).
    let mut got = None;
    for _ in 0..100 {
        let (ok, out) = run(Command::new("sh").args(["-c", &pub_cmd])).await;
        assert!(ok, "printed mosquitto_pub works: {out}");
        if sub.is_finished() {
            got = Some(sub.await.expect("sub task"));
            break;
        }
        tokio::task::yield_now().await;
    }
    let (ok, out) = got.expect("the subscriber received a message");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "demo/hello hello through mqttlb");

    assert_eq!(
        signal_and_wait(&mut child, "INT").await,
        Some(0),
        "demo stops"
    );
}

/// `mqttlb demo --failover`: the scripted walk-through stops the
/// publisher's node and starts it again, and every message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_failover_walk_through_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, out) = run_within(
        Command::new(BIN)
            .args(["demo", "--failover", "--listen", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0", "--dir"])
            .arg(dir.path()),
        std::time::Duration::from_secs(120),
    )
    .await;
    assert!(ok, "walk-through exits 0:\n{out}");
    for step in [
        "stopping node",
        "is out of rotation",
        "publisher reconnected through the same proxy address",
        "is back in rotation",
        "200 published (QoS 1), 200 received, 0 lost",
    ] {
        assert!(out.contains(step), "missing {step:?}:\n{out}");
    }
}

/// SIGHUP reloads the file: a backend added to it shows up in the admin
/// API of the running process; `mqttlb health` probes the admin server.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration_file() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let admin_port = free_port();
    let mut raw = proxy_config(&certs, &[("node1", node.addr)]);
    raw.admin = Some(RawAdmin {
        listen: Some(format!("127.0.0.1:{admin_port}")),
        ..RawAdmin::default()
    });
    let base = raw.to_toml();
    let path = certs.path("mqttlb.toml");
    std::fs::write(&path, &base).expect("write config");
    let mut child = Command::new(BIN)
        .args(["proxy", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mqttlb");
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    wait_until("admin answers", DEADLINE, || async {
        TcpStream::connect(admin).await.is_ok()
    })
    .await;
    let url = format!("http://{admin}/healthz");
    let probe = Command::new(BIN)
        .args(["health", &url])
        .status()
        .await
        .expect("health");
    assert!(
        probe.success(),
        "mqttlb health succeeds against a live admin server"
    );

    let second = BrokerUnderTest::start(|_| {}).await;
    raw.pool_mut("brokers").servers.push(RawServer {
        name: Some("node2".into()),
        addr: second.addr.to_string(),
        weight: None,
        max_connections: None,
    });
    let grown = raw.to_toml();
    std::fs::write(&path, grown).expect("rewrite config");
    send_signal(&child, "HUP").await;
    wait_until("node2 appears after SIGHUP", DEADLINE, || async {
        http(admin, "GET", "/api/v1/backends")
            .await
            .1
            .contains("\"node2\"")
    })
    .await;
    // The reload is counted once it has finished (after the new pools are
    // visible), so wait for the count rather than read it at once.
    wait_until("the reload is counted", DEADLINE, || async {
        http(admin, "GET", "/metrics")
            .await
            .1
            .contains("mqttlb_config_reloads_total{result=\"ok\"} 1")
    })
    .await;

    assert_eq!(signal_and_wait(&mut child, "TERM").await, Some(0), "exits");
    let down = Command::new(BIN)
        .args(["health", &url])
        .status()
        .await
        .expect("health");
    assert!(!down.success(), "mqttlb health fails when nothing answers");
}

/// `--log-format json`: one JSON object per line, and events inside a
/// connection carry its span (client address, listener, client id, backend).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_connection_span() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let port = free_port();
    let mut raw = proxy_config(&certs, &[("node1", node.addr)]);
    raw.listener[0].listen = Some(format!("127.0.0.1:{port}"));
    let cfg = raw.to_toml();
    let path = certs.path("mqttlb.toml");
    std::fs::write(&path, cfg).expect("write config");
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "proxy", "--config"])
        .arg(&path)
        .env("RUST_LOG", "mqttlb=debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mqttlb");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_until("mqttlb listens", DEADLINE, || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let mut s = tls_connect(addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut s, 4, "json-client").await, Some(0));
    s.write_all(&[0xe0, 0x00]).await.expect("disconnect");
    s.shutdown().await.expect("close");
    wait_until("client gone from the broker", DEADLINE, || async {
        !node.broker.is_online("json-client")
    })
    .await;
    send_signal(&child, "TERM").await;
    let mut log = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut log)
        .await
        .expect("log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    let in_span = lines
        .iter()
        .find(|v| v["span"]["client_id"] == "json-client" && v["span"]["backend"] == "node1");
    let e = in_span.unwrap_or_else(|| panic!("no event with the connection span:\n{log}"));
    assert_eq!(e["span"]["listener"], "mqtts");
    assert!(
        e["span"]["client.addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))
    );
}
