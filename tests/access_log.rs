//! The access log (issue 22, docs/access-log.md): one line per ended
//! connection and per refused client, read back field by field from the
//! file it is written to — a normal session and a resumed one, an idle
//! timeout, a drain kick (`moved`) and the shutdown drain's deadline
//! (`drained`), refusals, a WebSocket client, the text form's field order,
//! a client id trying to forge a line, and a file re-opened after
//! logrotate's rename and SIGUSR1 (a real process).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqttlb::accesslog::Format;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `toml` with `[log] access` writing to `path` (the test configuration
/// has it off).
fn with_log(toml: &str, path: &Path) -> String {
    let mut table: toml::Table = toml.parse().expect("config parses");
    let log: toml::Table = format!("access = {:?}", path.display().to_string())
        .parse()
        .expect("[log]");
    table.insert("log".into(), toml::Value::Table(log));
    table.to_string()
}

/// A proxy writing its access log to `dir/access.log` in `format`.
async fn logging_proxy(toml: &str, certs: &Certs, format: Format) -> (ProxyUnderTest, PathBuf) {
    let path = certs.path("access.log");
    let proxy = ProxyUnderTest::start_with(&with_log(toml, &path), certs.dir.path(), |p| {
        p.with_access_format(format)
    })
    .await;
    (proxy, path)
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait until `path` holds at least `n` lines; return them all.
async fn lines(path: &Path, n: usize) -> Vec<String> {
    wait_until(&format!("{n} access-log lines"), DEADLINE, || async {
        read_lines(path).len() >= n
    })
    .await;
    read_lines(path)
}

/// Wait for the `n`th JSON line (1-based) and parse it.
async fn json_line(path: &Path, n: usize) -> Value {
    let all = lines(path, n).await;
    serde_json::from_str(&all[n - 1]).unwrap_or_else(|e| panic!("{e}: {:?}", all[n - 1]))
}

/// One TLS client configuration, so a second connection can resume the
/// first one's session.
fn client_tls(certs: &Certs) -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(certs, None)))
}

/// Connect through `connector`: the client's own address, and the stream.
async fn tls_client(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> (SocketAddr, tokio_rustls::client::TlsStream<TcpStream>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let local = tcp.local_addr().expect("local addr");
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    (local, connector.connect(name, tcp).await.expect("TLS"))
}

fn ms(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_and_a_resumed_one_are_logged_field_by_field() {
    let certs = Certs::new();
    let broker = BrokerUnderTest::start(|_| {}).await;
    let toml = config(&certs, &[("node1", broker.addr)], "", "");
    let (proxy, path) = logging_proxy(&toml, &certs, Format::Json).await;
    let connector = client_tls(&certs);

    let mut seen = 0;
    for (n, id) in [(1, "dev-1"), (2, "dev-2")] {
        let (local, mut tls) = tls_client(&connector, proxy.addr).await;
        let connect = connect_packet(4, id);
        tls.write_all(&connect).await.expect("CONNECT");
        assert_eq!(connack_code(&mut tls).await, Some(0));
        // The client closes first (close_notify, FIN).
        tls.shutdown().await.expect("close");
        read_to_close(&mut tls).await;

        let v = json_line(&path, n).await;
        assert_eq!(v["listener"], "mqtts");
        assert_eq!(v["client"], local.to_string());
        assert_eq!(v["route"], "default");
        assert_eq!(v["pool"], "brokers");
        assert_eq!(v["sni"], "localhost");
        assert!(
            v["tls_version"].as_str().is_some_and(|s| s.contains('1')),
            "{v}"
        );
        assert!(
            v["tls_cipher"].as_str().is_some_and(|s| !s.is_empty()),
            "{v}"
        );
        assert_eq!(
            v["tls_resumed"],
            n == 2,
            "the second handshake resumes: {v}"
        );
        assert_eq!(v["mqtt"], "3.1.1");
        assert_eq!(v["client_id"], id);
        assert_eq!(v["username"], Value::Null, "access_username is off");
        assert_eq!(v["backend"], "node1");
        assert_eq!(v["connack"], 0);
        assert_eq!(v["bytes_in"], connect.len() as u64);
        assert_eq!(v["bytes_out"], 4, "the CONNACK");
        let steps: f64 = ["tls_ms", "connect_ms", "backend_ms", "connack_ms"]
            .iter()
            .map(|k| ms(&v, k))
            .sum();
        assert!(steps <= ms(&v, "total_ms"), "{v}");
        assert_eq!(v["end"], "closed_by_client");
        assert_eq!(v["skipped"], 0);
        assert!(v["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
        seen += 1;
    }
    assert_eq!(seen, 2);
    assert_eq!(proxy.metric("mqttlb_access_log_dropped_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeouts_kicks_and_the_shutdown_deadline_are_named() {
    let certs = Certs::new();
    let broker = BrokerUnderTest::start(|_| {}).await;
    let mut raw = proxy_config(&certs, &[("node1", broker.addr)]);
    if let Some(mqtt) = raw.listener[0].mqtt.as_mut() {
        mqtt.max_idle_timeout = Some("1s".into());
    }
    raw.limits.drain_timeout = Some("300ms".into());
    let (proxy, path) = logging_proxy(&raw.to_toml(), &certs, Format::Json).await;

    // Idle: nothing moves for a second.
    let mut idle = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut idle, 4, "sleepy").await, Some(0));
    let v = json_line(&path, 1).await;
    assert_eq!(
        (v["client_id"].as_str(), v["end"].as_str()),
        (Some("sleepy"), Some("idle_timeout"))
    );
    assert!(ms(&v, "total_ms") >= 1000.0, "{v}");
    drop(idle);

    // The rest on a proxy without the 1 s idle timeout (a kick must not
    // race it).
    let raw = {
        let mut raw = proxy_config(&certs, &[("node1", broker.addr)]);
        raw.limits.drain_timeout = Some("300ms".into());
        raw
    };
    let path = certs.path("access-kicks.log");
    let proxy =
        ProxyUnderTest::start_with(&with_log(&raw.to_toml(), &path), certs.dir.path(), |p| {
            p.with_access_format(Format::Json)
        })
        .await;

    // A drain kick: MQTT 5 DISCONNECT "use another server", then `moved`.
    let mut kicked = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    kicked
        .write_all(&connect_packet(5, "mover"))
        .await
        .expect("CONNECT");
    let mut head = [0u8; 2];
    kicked.read_exact(&mut head).await.expect("CONNACK head");
    let mut rest = vec![0u8; usize::from(head[1])];
    kicked.read_exact(&mut rest).await.expect("CONNACK");
    // A round trip through the splice: the connection is registered for
    // kicks before the splice starts.
    kicked.write_all(&[0xc0, 0x00]).await.expect("PINGREQ");
    let mut pong = [0u8; 2];
    kicked.read_exact(&mut pong).await.expect("PINGRESP");
    assert_eq!(pong, [0xd0, 0x00]);
    assert!(
        proxy
            .handle
            .drain("node1", true, Some(Some(Duration::from_millis(1))))
    );
    let after = read_to_close(&mut kicked).await;
    assert!(
        after.ends_with(mqttlb::mqtt::packets::DISCONNECT_USE_ANOTHER_SERVER),
        "{after:?}"
    );
    let v = json_line(&path, 1).await;
    assert_eq!(
        (v["client_id"].as_str(), v["end"].as_str()),
        (Some("mover"), Some("moved"))
    );
    assert_eq!(v["mqtt"], "5.0");
    proxy.handle.drain("node1", false, None);

    // Still open at the shutdown drain's deadline: `drained`, bytes unknown.
    let mut held = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut held, 4, "stayer").await, Some(0));
    proxy.shutdown.cancel();
    let v = json_line(&path, 2).await;
    assert_eq!(
        (v["client_id"].as_str(), v["end"].as_str()),
        (Some("stayer"), Some("drained"))
    );
    assert_eq!(v["bytes_in"], Value::Null);
    assert_eq!(v["backend"], "node1");
    assert_eq!(read_lines(&path).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_are_logged_with_their_reason() {
    let certs = Certs::new();
    let broker = BrokerUnderTest::start(|_| {}).await;
    let toml = config(&certs, &[("node1", broker.addr)], "", "");
    let (proxy, path) = logging_proxy(&toml, &certs, Format::Json).await;

    // Not TLS at all.
    let mut plain = TcpStream::connect(proxy.addr).await.expect("connect");
    let local = plain.local_addr().expect("local");
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_to_close(&mut plain).await;
    let v = json_line(&path, 1).await;
    assert_eq!(v["end"], "refused:tls_handshake_failed");
    assert_eq!(v["client"], local.to_string());
    assert_eq!(v["tls_version"], Value::Null);
    assert!(ms(&v, "tls_ms") >= 0.0);

    // TLS, then HTTP instead of a CONNECT.
    let mut http = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    http.write_all(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    read_to_close(&mut http).await;
    let v = json_line(&path, 2).await;
    assert_eq!(v["end"], "refused:http");
    assert_eq!(v["sni"], "localhost");
    assert_eq!(v["mqtt"], Value::Null);
    assert_eq!(v["backend"], Value::Null);

    // No node takes the client: CONNACK "server unavailable".
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let toml = config(&certs, &[("gone", dead)], "", "");
    let (proxy2, path2) = {
        let path = certs.path("access2.log");
        let p = ProxyUnderTest::start_with(&with_log(&toml, &path), certs.dir.path(), |p| {
            p.with_access_format(Format::Json)
        })
        .await;
        (p, path)
    };
    let mut c = tls_connect(proxy2.addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut c, 4, "stranded").await, Some(3));
    let v = json_line(&path2, 1).await;
    assert_eq!(v["end"], "refused:no_backend");
    assert_eq!(v["client_id"], "stranded");
    assert_eq!(v["pool"], "brokers");
    assert_eq!(v["connack"], Value::Null, "no broker answered");
    assert!(ms(&v, "connect_ms") >= 0.0);
    assert_eq!(proxy.rejected("http"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_is_logged() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{self, Message};
    let certs = Certs::new();
    let broker = BrokerUnderTest::start(|_| {}).await;
    let toml = edit_listener(
        &config(
            &certs,
            &[("node1", broker.addr)],
            "[websocket]\nto = \"tcp\"",
            "",
        ),
        |l| {
            l.remove("tls");
        },
    );
    let (proxy, path) = logging_proxy(&toml, &certs, Format::Json).await;
    let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
        "ws://{}/mqtt",
        proxy.addr
    ))
    .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let tcp = TcpStream::connect(proxy.addr).await.expect("connect");
    let local = tcp.local_addr().expect("local");
    let (mut ws, _) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade");
    ws.send(Message::binary(connect_packet(4, "ws-1")))
        .await
        .expect("CONNECT");
    use futures_util::StreamExt;
    let connack = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("in time");
    assert!(
        matches!(connack, Some(Ok(Message::Binary(ref b))) if b.as_ref() == [0x20, 2, 0, 0]),
        "{connack:?}"
    );
    ws.close(None).await.expect("close");
    let v = json_line(&path, 1).await;
    assert_eq!(v["client"], local.to_string());
    assert_eq!(v["client_id"], "ws-1");
    assert_eq!(v["tls_version"], Value::Null, "plain ws://");
    assert_eq!(v["backend"], "node1");
    assert_eq!(v["connack"], 0);
    assert_eq!(v["end"], "closed_by_client");
}

/// The text form: fields in the documented order; a client id trying to
/// forge a second line stays inside its quotes on its own line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_keep_their_order_and_an_injected_client_id_stays_on_one_line() {
    let certs = Certs::new();
    let broker = BrokerUnderTest::start(|_| {}).await;
    let toml = config(&certs, &[("node1", broker.addr)], "", "");
    let (proxy, path) = logging_proxy(&toml, &certs, Format::Text).await;

    let forged = "evil\"\n2026-01-01T00:00:00.000Z mqtts 10.9.9.9:1 forged\r\x1b[2J";
    for (n, id) in [(1, forged), (2, "dev-7")] {
        let mut tls = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
        assert_eq!(mqtt_connect(&mut tls, 4, id).await, Some(0));
        tls.shutdown().await.expect("close");
        read_to_close(&mut tls).await;
        lines(&path, n).await;
    }
    let all = lines(&path, 2).await;
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[0]
            .contains(r#""evil\"\x0a2026-01-01T00:00:00.000Z mqtts 10.9.9.9:1 forged\x0d\x1b[2J""#),
        "{}",
        all[0]
    );
    assert!(!all.iter().any(|l| l.starts_with("2026-01-01")));

    let fields: Vec<&str> = all[1].split(' ').collect();
    assert_eq!(fields.len(), 17, "{fields:?}");
    assert!(fields[0].ends_with('Z'), "time: {}", fields[0]);
    assert_eq!(fields[1], "mqtts");
    assert!(fields[2].starts_with("127.0.0.1:"), "client: {}", fields[2]);
    assert_eq!(fields[3], "default/brokers");
    assert_eq!(fields[4], "\"localhost\"");
    assert!(fields[5].contains('/'), "tls: {}", fields[5]);
    assert_eq!(fields[6], "full");
    assert_eq!(fields[7], "3.1.1");
    assert_eq!(fields[8], "\"dev-7\"");
    assert_eq!(fields[9], "-", "username off");
    assert_eq!(fields[10], "node1");
    assert_eq!(fields[11], "0x00");
    assert_eq!(fields[12], connect_packet(4, "dev-7").len().to_string());
    assert_eq!(fields[13], "4");
    let timings: Vec<f64> = fields[14]
        .split('/')
        .map(|t| t.parse().expect("ms"))
        .collect();
    assert_eq!(timings.len(), 5, "{}", fields[14]);
    assert_eq!(fields[15], "closed_by_client");
    assert_eq!(fields[16], "0");
}

/// logrotate: the file is renamed, SIGUSR1 sent; the proxy writes on in a
/// new file at the configured path. A real process, with `--log-format
/// json`, which the access log follows.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_reopened_after_a_rename_and_sigusr1() {
    use std::process::Stdio;
    use tokio::process::Command;
    let certs = Certs::new();
    let broker = BrokerUnderTest::start(|_| {}).await;
    let port = free_port();
    let mut raw = proxy_config(&certs, &[("node1", broker.addr)]);
    raw.listener[0].listen = Some(format!("127.0.0.1:{port}"));
    let path = certs.path("access.log");
    let config_path = certs.path("mqttlb.toml");
    std::fs::write(&config_path, with_log(&raw.to_toml(), &path)).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mqttlb"))
        .args(["--log-format", "json", "proxy", "--config"])
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn mqttlb");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until("mqttlb listens", DEADLINE, || async {
        TcpStream::connect(addr).await.is_ok()
    })
    .await;
    // The probe above was a refusal (closed before its handshake): its
    // line comes first.
    let session = |id: &'static str| {
        let certs = &certs;
        async move {
            let mut tls = tls_connect(addr, certs, false).await.expect("TLS");
            assert_eq!(mqtt_connect(&mut tls, 4, id).await, Some(0));
            tls.shutdown().await.expect("close");
            read_to_close(&mut tls).await;
        }
    };
    session("before").await;
    wait_until("the session's line", DEADLINE, || async {
        read_lines(&path).iter().any(|l| l.contains("\"before\""))
    })
    .await;

    let rotated = certs.path("access.log.1");
    std::fs::rename(&path, &rotated).expect("rename");
    let pid = child.id().expect("pid").to_string();
    let sent = Command::new("kill")
        .args(["-USR1", &pid])
        .status()
        .await
        .expect("kill");
    assert!(sent.success());
    wait_until("a new file", DEADLINE, || async { path.exists() }).await;
    session("after").await;
    let new = lines(&path, 1).await;
    assert_eq!(new.len(), 1, "{new:#?}");
    let v: Value = serde_json::from_str(&new[0]).expect("JSON, as --log-format json");
    assert_eq!(v["client_id"], "after");
    let old = read_lines(&rotated);
    assert!(old.iter().any(|l| l.contains("\"before\"")), "{old:#?}");
    assert!(!old.iter().any(|l| l.contains("\"after\"")), "{old:#?}");
    child.kill().await.expect("kill");
}
