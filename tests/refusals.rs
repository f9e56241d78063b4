//! Clients that cannot or should not be served: no healthy node (CONNACK
//! "server unavailable"), garbage, HTTP, a PUBLISH first, a silent client.
//! Each is closed within its deadline, counted by reason, and does not
//! disturb a live connection beside it.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_nodes_down_answers_connack_server_unavailable() {
    let certs = Certs::new();
    // Two addresses nobody listens on.
    let dead = [
        ("d1", format!("127.0.0.1:{}", free_port()).parse().unwrap()),
        ("d2", format!("127.0.0.1:{}", free_port()).parse().unwrap()),
    ];
    let pool = "health = { check = \"tcp\", interval = \"100ms\", timeout = \"100ms\", fall = 1, rise = 1 }";
    let proxy = ProxyUnderTest::start(&config(&certs, &dead, "", pool), certs.dir.path()).await;

    // Both while the nodes still count as up (every candidate fails) and
    // after the checks marked them down (nothing healthy to try).
    for phase in ["candidates fail", "nothing healthy"] {
        if phase == "nothing healthy" {
            wait_until("both nodes marked down", DEADLINE, || async {
                !proxy.backend_up("d1") && !proxy.backend_up("d2")
            })
            .await;
        }
        for (level, expected) in [(4u8, 0x03u8), (5, 0x88)] {
            let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
            s.write_all(&connect_packet(level, "lonely"))
                .await
                .expect("send CONNECT");
            let got = read_to_close(&mut s).await;
            let want: &[u8] = if level == 4 {
                &[0x20, 2, 0, expected]
            } else {
                &[0x20, 3, 0, expected, 0]
            };
            assert_eq!(
                got, want,
                "{phase}: MQTT level {level} reads CONNACK {expected:#04x} then a clean close"
            );
        }
    }
    assert_eq!(proxy.rejected("no_backend"), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_closed_counted_and_isolated() {
    let certs = Certs::new();
    let broker = Mosquitto::start().await;
    let mut raw = proxy_config(&certs, &[("node1", broker.addr())]);
    let mqtt = raw.listener[0].mqtt.get_or_insert_default();
    mqtt.connect_timeout = Some("1s".into());
    mqtt.max_connect_size = Some("1KiB".into());
    raw.limits.tls_handshake_timeout = Some("1s".into());
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;

    // A live client beside the hostile ones.
    let mut live = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut live, 4, "bystander").await, Some(0));

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("http", b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        (
            "not_connect",
            vec![0x30, 0x05, 0x00, 0x01, b't', b'h', b'i'],
        ), // PUBLISH first
        (
            "malformed_connect",
            vec![0x10, 0x04, 0x00, 0x04, b'M', b'Q'],
        ),
        ("connect_too_large", {
            let mut v = vec![0x10, 0xff, 0x7f];
            v.extend_from_slice(&[0; 64]);
            v
        }),
        ("tls_in_mqtt", vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01]),
        ("unsupported_protocol", {
            let mut v = connect_packet(4, "x");
            v[8] = 9; // protocol level 9
            v
        }),
    ];
    let n = cases.len();
    for (reason, bytes) in &cases {
        let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
        s.write_all(bytes).await.expect("send");
        let got = read_to_close(&mut s).await;
        assert!(got.is_empty(), "{reason}: nothing is answered, got {got:?}");
        wait_until("rejection counted", DEADLINE, || async {
            proxy.rejected(reason) == 1.0
        })
        .await;
    }
    assert_eq!(n, 6);

    // Silent after the handshake (slowloris): closed by connect_timeout.
    let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    s.write_all(&[0x10]).await.expect("one byte of a CONNECT");
    let started = Instant::now();
    let _ = read_to_close(&mut s).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(10),
        "closed after {took:?}"
    );
    assert_eq!(proxy.rejected("connect_timeout"), 1.0);

    // Silent before the handshake: closed by the handshake timeout.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("tcp");
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(DEADLINE, raw.read(&mut buf))
        .await
        .expect("closed before the deadline");
    assert!(matches!(r, Ok(0) | Err(_)));
    assert_eq!(proxy.rejected("tls_handshake_timeout"), 1.0);

    // A plain-text MQTT client on the TLS port fails the handshake.
    let mut raw = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("tcp");
    raw.write_all(&connect_packet(4, "plain"))
        .await
        .expect("send");
    let _ = read_to_close(&mut raw).await;
    wait_until("handshake failure counted", DEADLINE, || async {
        proxy.rejected("tls_handshake_failed") == 1.0
    })
    .await;

    // The bystander is still connected and served: PINGREQ → PINGRESP.
    live.write_all(&[0xc0, 0x00]).await.expect("ping");
    let mut pong = [0u8; 2];
    tokio::time::timeout(DEADLINE, live.read_exact(&mut pong))
        .await
        .expect("pong in time")
        .expect("pong");
    assert_eq!(pong, [0xd0, 0x00]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_refuses_cleanly() {
    let certs = Certs::new();
    let broker = Mosquitto::start().await;
    let mut raw = proxy_config(&certs, &[("node1", broker.addr())]);
    raw.limits.max_connections = Some(2);
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;
    let mut a = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut a, 4, "a").await, Some(0));
    let mut b = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut b, 5, "b").await, Some(0));
    // The third is accepted and closed at once, before any TLS.
    let refused = tls_connect(proxy.addr, &certs, false).await;
    assert!(refused.is_err(), "third connection must be refused");
    assert_eq!(proxy.rejected("max_connections"), 1.0);
    drop(a);
    wait_until("a slot frees up", DEADLINE, || async {
        proxy.metric("mqttlb_connections_active{listener=\"mqtts\"}") == 1.0
    })
    .await;
    let mut c = tls_connect(proxy.addr, &certs, false)
        .await
        .expect("TLS after a slot freed");
    assert_eq!(mqtt_connect(&mut c, 4, "c").await, Some(0));
}

/// A reconnect storm from one address is cut right after accept, before
/// any TLS work (`limits.source_connect_rate`); other addresses are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_rate_limit_closes_before_tls_and_spares_other_addresses() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut raw = proxy_config(&certs, &[("node1", node.addr)]);
    raw.limits.source_connect_rate = Some(1); // bursts of 2
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;
    let storm = SocketAddr::new("127.0.0.3".parse().expect("ip"), 0);
    // Ten bare TCP connects in a row (microseconds each on loopback): at
    // one per second with bursts of two, most are refused.
    let mut held = Vec::new();
    for _ in 0..10 {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind(storm).expect("bind 127.0.0.3");
        held.push(s.connect(proxy.addr).await.expect("connect"));
    }
    let refused = || {
        proxy.metric(
            "mqttlb_connections_rejected_total{listener=\"mqtts\",reason=\"source_rate_limit\"}",
        )
    };
    wait_until("storm refused", DEADLINE, || async { refused() >= 5.0 }).await;
    assert_eq!(
        proxy.metric("mqttlb_tls_handshakes_total{listener=\"mqtts\",result=\"ok\"}"),
        0.0,
        "no handshake was started for them"
    );
    // Another address is served at once.
    let mut s = tls_connect_from(
        proxy.addr,
        Some("127.0.0.4".parse().expect("ip")),
        &certs,
        false,
    )
    .await
    .expect("TLS from another address");
    assert_eq!(mqtt_connect(&mut s, 4, "bystander").await, Some(0));
}

/// A client id that reconnects too often gets a CONNACK refusal (3.1.1:
/// server unavailable; 5.0: 0x9F connection rate exceeded) before any
/// broker is touched; other client ids are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_reconnect_limit_answers_connack_without_touching_a_broker() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut raw = proxy_config(&certs, &[("node1", node.addr)]);
    raw.limits.client_connect_rate = Some(2); // per minute, bursts of 2
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;
    for _ in 0..2 {
        let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
        assert_eq!(mqtt_connect(&mut s, 4, "flappy").await, Some(0));
    }
    // CONNECTs the proxy offered to a broker (health checks not included).
    let offered =
        || proxy.metric("mqttlb_backend_connacks_total{backend=\"node1\",result=\"accepted\"}");
    assert_eq!(offered(), 2.0);
    let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(
        mqtt_connect(&mut s, 4, "flappy").await,
        Some(3),
        "3.1.1: server unavailable"
    );
    let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(
        mqtt_connect(&mut s, 5, "flappy").await,
        Some(0x9f),
        "5.0: rate exceeded"
    );
    assert_eq!(offered(), 2.0, "no broker saw the refused ones");
    let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut s, 4, "steady").await, Some(0));
    assert_eq!(
        proxy.metric(
            "mqttlb_connections_rejected_total{listener=\"mqtts\",reason=\"client_rate_limit\"}"
        ),
        2.0
    );
}

/// A client that vanishes without a FIN (or just goes silent) after its
/// CONNECT is cut after 1.5 × its keep-alive, counted as an idle timeout
/// (not a rejection); the broker sees its connection end too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_is_cut_after_one_and_a_half_keep_alives() {
    let certs = Certs::new();
    // The broker would cut it after 1.5 keep-alives too, and a close it
    // sends first reaches the client as the broker's, not as the proxy's
    // idle timeout: give the broker more patience so the proxy decides.
    let node = BrokerUnderTest::start(|c| c.keepalive_factor = 4.0).await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("node1", node.addr)]).await;
    let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    // MQTT 3.1.1 CONNECT, clean session, keep-alive 1 s, client id "gone".
    let connect = [
        0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 1, 0, 4, b'g', b'o', b'n', b'e',
    ];
    s.write_all(&connect).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0]);
    wait_until("the broker sees the client", DEADLINE, || async {
        node.broker.is_online("gone")
    })
    .await;
    // Silence from here on: no PINGREQ, no FIN.
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
        .await
        .expect("closed within the deadline")
        .unwrap_or(0);
    assert_eq!(n, 0, "the proxy closed the connection");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "not before 1.5 s"
    );
    assert_eq!(
        proxy.metric("mqttlb_connections_closed_total{listener=\"mqtts\",reason=\"idle_timeout\"}"),
        1.0
    );
    wait_until("the broker sees it gone", DEADLINE, || async {
        !node.broker.is_online("gone")
    })
    .await;
}
