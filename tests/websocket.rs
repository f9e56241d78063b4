//! MQTT over WebSockets through the proxy: `to = "tcp"` (the proxy
//! unwraps the frames; brokers see plain MQTT on their TCP port) and
//! `to = "ws"` (the WebSocket goes to a broker's WebSocket listener), with
//! Eclipse paho-mqtt (Python) and rumqttc as clients; failover, hostile
//! upgrade requests and frames.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message};

/// `[listener.websocket]` with these extra keys, in front of `servers`.
fn ws_config(certs: &Certs, servers: &[(&str, SocketAddr)], websocket: &str, pool: &str) -> String {
    config(certs, servers, &format!("[websocket]\n{websocket}"), pool)
}

/// The same listener without TLS (`ws://`), for raw requests.
fn plain_ws_config(servers: &[(&str, SocketAddr)], websocket: &str) -> String {
    let certs = Certs::new();
    edit_listener(&ws_config(&certs, servers, websocket, ""), |l| {
        l.remove("tls");
    })
}

/// A WebSocket client (tungstenite) on a plain `ws://` listener.
async fn ws_connect(addr: SocketAddr) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/mqtt"))
            .expect("request");
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "mqtt".parse().expect("header"));
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp)
        .await
        .expect("upgrade accepted");
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("mqtt")
    );
    ws
}

/// A WebSocket client that sent an MQTT 3.1.1 CONNECT as `client_id`,
/// and the proxy's answer (the CONNACK, or `None` when it closed).
async fn ws_mqtt_connect(
    addr: SocketAddr,
    client_id: &str,
) -> (
    tokio_tungstenite::WebSocketStream<TcpStream>,
    Option<Vec<u8>>,
) {
    let mut ws = ws_connect(addr).await;
    ws.send(Message::binary(connect_packet(4, client_id)))
        .await
        .expect("send CONNECT");
    let answer = ws_read(&mut ws).await;
    (ws, answer)
}

/// The next binary message, within the deadline.
async fn ws_read(ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>) -> Option<Vec<u8>> {
    loop {
        match tokio::time::timeout(DEADLINE, ws.next()).await.ok()?? {
            Ok(Message::Binary(b)) => return Some(b.to_vec()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Send a raw HTTP request head; return the response's status line.
async fn raw_upgrade(addr: SocketAddr, request: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request.as_bytes()).await.expect("write");
    let reply = read_to_close(&mut tcp).await;
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

const UPGRADE: &str = "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paho_and_rumqttc_reach_plain_tcp_brokers_through_wss() {
    let certs = Certs::new();
    let mesh = BrokerUnderTest::mesh(2, |_, _| {}).await;
    let servers = [("node1", mesh[0].addr), ("node2", mesh[1].addr)];
    let proxy = ProxyUnderTest::start(
        &ws_config(&certs, &servers, "to = \"tcp\"", ""),
        certs.dir.path(),
    )
    .await;

    paho_over_wss(proxy.addr.port(), &certs).await;
    // The proxy read every CONNECT inside the WebSocket: 3.1.1 and 5.0.
    for protocol in ["3.1.1", "5.0"] {
        let connects = proxy.metric(&format!(
            "mqttlb_mqtt_connects_total{{listener=\"mqtts\",protocol=\"{protocol}\"}}"
        ));
        assert!(connects >= 2.0, "{protocol}: {connects}");
    }

    // A second, independent client stack: rumqttc over wss.
    let mut sub = wss_client(proxy.addr.port(), &certs, "rumqttc-ws-sub");
    sub.connack().await;
    sub.subscribe("rws/t", rumqttc::QoS::AtLeastOnce).await;
    let mut publ = wss_client(proxy.addr.port(), &certs, "rumqttc-ws-pub");
    publ.connack().await;
    for i in 0..10u8 {
        publ.publish("rws/t", rumqttc::QoS::AtLeastOnce, false, &[i])
            .await;
    }
    for i in 0..10u8 {
        assert_eq!(sub.message().await.payload.as_ref(), &[i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_fail_over_and_read_server_unavailable() {
    let mut a = BrokerUnderTest::start(|_| {}).await;
    let mut b = BrokerUnderTest::start(|_| {}).await;
    let toml = plain_ws_config(&[("a", a.addr), ("b", b.addr)], "to = \"tcp\"");
    let proxy = ProxyUnderTest::start(&toml, std::path::Path::new("/")).await;
    let sessions = |n: &BrokerUnderTest| n.metric("mqttlb_broker_connections_active");

    // Client-id routing: the same id lands on the same node every time.
    let (mut ws, connack) = ws_mqtt_connect(proxy.addr, "ws-sticky").await;
    assert_eq!(connack.expect("CONNACK"), [0x20, 0x02, 0x00, 0x00]);
    let (home, other) = if sessions(&a) == 1.0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert_eq!(sessions(home), 1.0);
    assert_eq!(sessions(other), 0.0);

    // The node goes away: the WebSocket client is closed with it, and on
    // reconnecting reaches the other node.
    home.stop().await;
    assert_eq!(ws_read(&mut ws).await, None, "closed with its node");
    let (ws, connack) = ws_mqtt_connect(proxy.addr, "ws-sticky").await;
    assert_eq!(connack.expect("CONNACK"), [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(sessions(other), 1.0);
    drop(ws);

    // No node left: CONNACK "server unavailable" inside the WebSocket.
    other.stop().await;
    let (mut ws, connack) = ws_mqtt_connect(proxy.addr, "ws-late").await;
    assert_eq!(connack.expect("CONNACK"), [0x20, 0x02, 0x00, 0x03]);
    assert_eq!(ws_read(&mut ws).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upgrades_and_frames_are_refused_without_disturbing_others() {
    let node = BrokerUnderTest::start(|_| {}).await;
    let toml = plain_ws_config(
        &[("node1", node.addr)],
        "upgrade_timeout = \"1s\"\nmax_request_size = \"2KiB\"\nmax_message_size = \"4KiB\"",
    );
    let proxy = ProxyUnderTest::start(&toml, std::path::Path::new("/")).await;

    // A good client, held across everything below.
    let (mut good, connack) = ws_mqtt_connect(proxy.addr, "ws-good").await;
    assert_eq!(connack.expect("CONNACK"), [0x20, 0x02, 0x00, 0x00]);

    let cases = [
        (UPGRADE.replace("/mqtt", "/admin"), "HTTP/1.1 404"),
        (UPGRADE.replace("GET", "POST"), "HTTP/1.1 405"),
        (
            UPGRADE.replace("Sec-WebSocket-Protocol: mqtt\r\n", ""),
            "HTTP/1.1 400",
        ),
        (UPGRADE.replace("Version: 13", "Version: 7"), "HTTP/1.1 426"),
        (
            UPGRADE.replace("Host: localhost", &format!("Cookie: {}", "x".repeat(4096))),
            "HTTP/1.1 431",
        ),
        ("SSH-2.0-OpenSSH\r\n\r\n".to_string(), "HTTP/1.1 400"),
    ];
    for (i, (request, status)) in cases.iter().enumerate() {
        let line = raw_upgrade(proxy.addr, request).await;
        assert!(line.starts_with(status), "case {i}: {line:?}");
        assert_eq!(proxy.rejected("websocket_refused"), (i + 1) as f64);
    }

    // Slowloris: half a request, then nothing; closed at upgrade_timeout.
    let mut slow = TcpStream::connect(proxy.addr).await.expect("connect");
    slow.write_all(&UPGRADE.as_bytes()[..30])
        .await
        .expect("write");
    assert!(read_to_close(&mut slow).await.is_empty());
    assert_eq!(proxy.rejected("websocket_timeout"), 1.0);

    // A text frame is not MQTT (MQTT-6.0.0-1): closed.
    let mut text = ws_connect(proxy.addr).await;
    text.send(Message::text("hello")).await.expect("send");
    assert_eq!(ws_read(&mut text).await, None);

    // A message over max_message_size: closed.
    let mut big = ws_connect(proxy.addr).await;
    let _ = big.send(Message::binary(vec![0u8; 8192])).await;
    assert_eq!(ws_read(&mut big).await, None);

    // The good client never noticed: PINGREQ → PINGRESP, and a WebSocket
    // ping is answered.
    good.send(Message::binary(vec![0xc0, 0x00]))
        .await
        .expect("PINGREQ");
    assert_eq!(ws_read(&mut good).await.expect("PINGRESP"), [0xd0, 0x00]);
    good.send(Message::Ping(b"p".to_vec().into()))
        .await
        .expect("ping");
    let pong = tokio::time::timeout(DEADLINE, good.next())
        .await
        .expect("pong in time");
    assert!(matches!(pong, Some(Ok(Message::Pong(p))) if p.as_ref() == b"p"));
    // And closes cleanly: close frame answered, then EOF.
    good.close(None).await.expect("close");
    let reply = tokio::time::timeout(DEADLINE, good.next())
        .await
        .expect("reply in time");
    assert!(matches!(reply, Some(Ok(Message::Close(_)))), "{reply:?}");
    let end = tokio::time::timeout(DEADLINE, good.next())
        .await
        .expect("closed in time");
    assert!(end.is_none(), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_websockets_reach_a_broker_websocket_listener() {
    // The broker side: a WebSocket listener in front of a broker (Debian's
    // Mosquitto 2.0.11 is built without WebSockets, so a second mqttlb
    // unwrapping to TCP plays the broker's WebSocket listener).
    let node = BrokerUnderTest::start(|_| {}).await;
    let broker_ws = ProxyUnderTest::start(
        &plain_ws_config(&[("node1", node.addr)], "to = \"tcp\""),
        std::path::Path::new("/"),
    )
    .await;

    let certs = Certs::new();
    let toml = ws_config(
        &certs,
        &[("ws1", broker_ws.addr)],
        "to = \"ws\"",
        "proxy_protocol = \"off\"\nhealth = { check = \"tcp\", interval = \"1s\" }",
    );
    // Pass-through: the proxy does not read MQTT inside a forwarded
    // WebSocket.
    let toml = edit_listener(&toml, |l| {
        l.remove("mqtt");
    });
    let front = ProxyUnderTest::start(&toml, certs.dir.path()).await;

    let mut sub = wss_client(front.addr.port(), &certs, "fwd-sub");
    sub.connack().await;
    sub.subscribe("fwd/t", rumqttc::QoS::AtLeastOnce).await;
    let mut publ = wss_client(front.addr.port(), &certs, "fwd-pub");
    publ.connack().await;
    publ.publish(
        "fwd/t",
        rumqttc::QoS::AtLeastOnce,
        false,
        b"through two hops",
    )
    .await;
    assert_eq!(sub.message().await.payload.as_ref(), b"through two hops");
    // The front proxy forwarded without reading MQTT; the broker's
    // WebSocket listener read both CONNECTs.
    assert_eq!(
        front.metric("mqttlb_mqtt_connects_total{listener=\"mqtts\",protocol=\"3.1.1\"}"),
        0.0
    );
    assert_eq!(
        broker_ws.metric("mqttlb_mqtt_connects_total{listener=\"mqtts\",protocol=\"3.1.1\"}"),
        2.0
    );
    // paho-mqtt through the same forwarded path, 3.1.1 and 5.0.
    paho_over_wss(front.addr.port(), &certs).await;
}

/// `tests/interop/paho_ws.py` against `port` (wss, path /mqtt).
async fn paho_over_wss(port: u16, certs: &Certs) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/paho_ws.py");
    let (ok, out) = run_within(
        tokio::process::Command::new("python3").args([
            script,
            "localhost",
            &port.to_string(),
            &certs.p("ca.pem"),
            "/mqtt",
        ]),
        Duration::from_secs(120),
    )
    .await;
    assert!(ok, "paho over wss:\n{out}");
    assert!(out.contains("ws ok"), "{out}");
}

#[tokio::test]
async fn forwarding_websockets_with_an_mqtt_listener_or_check_is_a_config_error() {
    let certs = Certs::new();
    let toml = ws_config(
        &certs,
        &[("n", "127.0.0.1:1".parse().expect("addr"))],
        "to = \"ws\"",
        "health = { check = \"mqtt\" }",
    );
    let raw = mqttlb::config::parse_toml("test.toml", &toml).expect("parses");
    let err = mqttlb::config::Config::from_raw("test.toml", std::path::Path::new("/"), raw)
        .expect_err("refused");
    let text = err.to_string();
    assert!(text.contains("listener[0].mqtt"), "{text}");
    assert!(text.contains("pool.brokers.health.check"), "{text}");
}
