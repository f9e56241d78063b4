//! The admin HTTP API on a live proxy in front of two mqttlb broker nodes:
//! health, readiness, backend status, drain/enable, and a scrape that
//! `promtool check metrics` accepts (proxy and broker registries).

mod common;

use common::*;
use rumqttc::TlsConfiguration;

fn on(nodes: &[BrokerUnderTest], id: &str) -> Option<usize> {
    nodes.iter().position(|n| n.broker.is_online(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_drain_enable_readiness_and_promtool() {
    let certs = Certs::new();
    let mut nodes = vec![
        BrokerUnderTest::start(|_| {}).await,
        BrokerUnderTest::start(|_| {}).await,
    ];
    let servers = [("node1", nodes[0].addr), ("node2", nodes[1].addr)];
    let pool = "strategy = \"least-connections\"\nhealth = { check = \"mqtt\", interval = \"200ms\", timeout = \"500ms\", rise = 1, fall = 1 }";
    let proxy = ProxyUnderTest::start(&config(&certs, &servers, "", pool), certs.dir.path()).await;
    let admin = start_admin(&proxy).await;

    assert_eq!(http(admin, "GET", "/healthz").await.0, 200);
    wait_until("ready", DEADLINE, || async {
        http(admin, "GET", "/readyz").await.0 == 200
    })
    .await;
    let (status, body) = http(admin, "GET", "/api/v1/backends").await;
    assert_eq!(status, 200);
    let backends: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let list = backends.as_array().expect("array");
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "node1");
    assert_eq!(list[0]["state"], "up");
    assert_eq!(list[0]["addr"], nodes[0].addr.to_string());
    wait_until("a check result is shown", DEADLINE, || async {
        let (_, b) = http(admin, "GET", "/api/v1/backends").await;
        b.contains("\"result\": \"ok\"")
    })
    .await;

    // A client on node1 stays connected through a drain; new clients go
    // to node2 only.
    let mut before = Vec::new();
    let mut first_on_node1 = None;
    for i in 0..6 {
        let id = format!("pre-{i}");
        let mut c = tls_client(&proxy, &certs, &id);
        c.connack().await;
        if on(&nodes, &id) == Some(0) && first_on_node1.is_none() {
            first_on_node1 = Some(id.clone());
        }
        before.push(c);
    }
    let kept = first_on_node1.expect("least-connections used node1");
    let (status, _) = http(admin, "POST", "/api/v1/backends/node1/drain").await;
    assert_eq!(status, 200);
    let (_, body) = http(admin, "GET", "/api/v1/backends").await;
    assert!(body.contains("\"state\": \"draining\""), "{body}");
    for i in 0..6 {
        let id = format!("during-{i}");
        let mut c = tls_client(&proxy, &certs, &id);
        c.connack().await;
        assert_eq!(on(&nodes, &id), Some(1), "{id} avoided the draining node");
        c.client.disconnect().await.expect("disconnect");
    }
    assert!(nodes[0].broker.is_online(&kept), "existing connection kept");
    let kept_index: usize = kept["pre-".len()..].parse().expect("index");
    before[kept_index]
        .client
        .publish("still/here", rumqttc::QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish while draining");
    before[kept_index]
        .next("PUBACK from the draining node", |p| {
            matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
        })
        .await;
    assert_eq!(
        http(admin, "POST", "/api/v1/backends/nope/drain").await.0,
        404
    );
    assert_eq!(
        http(admin, "POST", "/api/v1/backends/node1/enable").await.0,
        200
    );
    let (_, body) = http(admin, "GET", "/api/v1/backends").await;
    assert!(!body.contains("draining"), "{body}");
    assert_eq!(http(admin, "GET", "/nowhere").await.0, 404);
    assert_eq!(http(admin, "DELETE", "/metrics").await.0, 405);

    // Scrapes pass promtool, proxy and broker alike, and carry the
    // contract's names.
    let (status, scrape) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "mqttlb_connections_active{listener=\"mqtts\"}",
        "mqttlb_connections_total{listener=\"mqtts\"}",
        "mqttlb_tls_handshakes_total{listener=\"mqtts\",result=\"ok\"}",
        "mqttlb_tls_handshake_duration_seconds_bucket",
        "mqttlb_mqtt_connects_total{listener=\"mqtts\",protocol=\"3.1.1\"}",
        "mqttlb_backend_up{backend=\"node1\"}",
        "mqttlb_backend_connections_active{backend=\"node2\"}",
        "mqttlb_health_checks_total{backend=\"node1\",result=\"ok\"}",
        "mqttlb_bytes_total{direction=\"upstream\"}",
        "mqttlb_config_reloads_total{result=\"error\"}",
    ] {
        assert!(scrape.contains(name), "missing {name}");
    }
    promtool_check(&scrape)
        .await
        .expect("proxy scrape passes promtool");
    let broker_scrape = mqttlb::metrics::encode_prometheus(&nodes[0].registry);
    assert!(broker_scrape.contains("mqttlb_broker_sessions"));
    promtool_check(&broker_scrape)
        .await
        .expect("broker scrape passes promtool");

    // Every node down: not ready.
    for n in &mut nodes {
        n.stop().await;
    }
    wait_until("not ready", DEADLINE, || async {
        http(admin, "GET", "/readyz").await.0 == 503
    })
    .await;
    // Without a config file there is nothing to reload from: refused, counted.
    let (status, body) = http(admin, "POST", "/api/v1/reload").await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        proxy.metric("mqttlb_config_reloads_total{result=\"error\"}"),
        1.0
    );
}

/// Drain with `disconnect`: every MQTT 5 client of the node gets DISCONNECT
/// 0x9C "use another server" at a packet boundary — while messages stream
/// to it — spread over the window; 3.1.1 clients are left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_asks_mqtt5_clients_to_use_another_server_paced() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P5};
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("node1", node.addr)]).await;
    let admin = start_admin(&proxy).await;

    let tls5 = |id: &str| {
        let mut o = rumqttc::v5::MqttOptions::new(id, "localhost", proxy.addr.port());
        o.set_transport(rumqttc::Transport::Tls(TlsConfiguration::Simple {
            ca: certs.read("ca.pem"),
            alpn: None,
            client_auth: None,
        }));
        o
    };
    const V5_CLIENTS: usize = 4;
    // rumqttc reports a server DISCONNECT as the event loop's error; each
    // client's loop sends the reason code it ended with.
    let mut fives = Vec::new();
    for i in 0..V5_CLIENTS {
        let opts = tls5(&format!("five-{i}"));
        let (client, mut events) = rumqttc::v5::AsyncClient::new(opts, 64);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::v5::Event::Incoming(P5::SubAck(_))) => {
                        let _ = tx.send(None);
                    }
                    Ok(_) => {}
                    Err(rumqttc::v5::ConnectionError::MqttState(
                        rumqttc::v5::StateError::ServerDisconnect { reason_code, .. },
                    )) => {
                        let _ = tx.send(Some(reason_code));
                        return;
                    }
                    Err(_) => return,
                }
            }
        });
        client
            .subscribe("stream/#", Q5::AtMostOnce)
            .await
            .expect("subscribe");
        let mut rx = rx;
        next_matching(&mut rx, "SUBACK", |r| r.is_none().then_some(())).await;
        fives.push((client, rx, task));
    }
    let mut old = tls_client(&proxy, &certs, "three-one-one");
    old.connack().await;

    // Keep messages flowing to every subscriber during the drain (bounded
    // in count, stopped once the drain is over).
    let feeder_client = rumqttc::AsyncClient::new(
        rumqttc::MqttOptions::new("feeder", node.addr.ip().to_string(), node.addr.port()),
        64,
    );
    let (feeder, mut feeder_events) = feeder_client;
    let feed = tokio::spawn(async move {
        let mut n = 0u32;
        loop {
            tokio::select! {
                ev = feeder_events.poll() => if ev.is_err() { return },
                r = feeder.publish("stream/x", rumqttc::QoS::AtMostOnce, false, vec![7u8; 900]), if n < 50_000 => {
                    if r.is_err() { return }
                    n += 1;
                }
            }
        }
    });

    let started = tokio::time::Instant::now();
    let (status, body) = http(
        admin,
        "POST",
        "/api/v1/backends/node1/drain?disconnect=true&window=2s",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut last = started;
    for (i, (_, rx, _)) in fives.iter_mut().enumerate() {
        let code = next_matching(rx, "DISCONNECT from the proxy", |r| r).await;
        assert_eq!(code, DisconnectReasonCode::UseAnotherServer, "client {i}");
        last = last.max(tokio::time::Instant::now());
    }
    // Paced: the last of 4 is asked no earlier than 3/4 of the window.
    assert!(
        last - started >= std::time::Duration::from_millis(1400),
        "kicks were spread over the window ({:?})",
        last - started
    );
    feed.abort();
    // The 3.1.1 client is untouched and still served.
    old.client
        .publish("still/here", rumqttc::QoS::AtLeastOnce, false, "x")
        .await
        .expect("publish");
    old.next("PUBACK", |p| {
        matches!(p, rumqttc::Packet::PubAck(_)).then_some(())
    })
    .await;
    assert!(node.broker.is_online("three-one-one"));
}

/// The admin port shares descriptors with client traffic: a connection
/// that sends nothing, or half a request, is closed after the header
/// timeout, and beyond the connection cap new ones are closed at accept;
/// the API keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_bounded_in_time_and_number() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("node1", node.addr)]).await;
    let closed = |mut s: tokio::net::TcpStream| async move {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(DEADLINE, s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    };

    // Header timeout (1 s here): silent, and half a request.
    let admin = start_admin(&proxy).await;
    let silent = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    let mut half = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    assert!(closed(silent).await, "a silent admin connection is closed");
    assert!(closed(half).await, "a half request is closed");
    assert_eq!(http(admin, "GET", "/healthz").await.0, 200);

    // Connection cap (2 here, and a header timeout far beyond the test).
    let capped = start_admin_with(&proxy, |a| {
        a.limits.max_connections = 2;
        a.limits.header_timeout = std::time::Duration::from_secs(600);
    })
    .await;
    let held: Vec<_> = [
        tokio::net::TcpStream::connect(capped).await.expect("1"),
        tokio::net::TcpStream::connect(capped).await.expect("2"),
    ]
    .into();
    // The two are accepted (their permits taken) before the third arrives:
    // a request on a fresh connection is refused only once both are held.
    wait_until("third connection refused", DEADLINE, || async {
        let third = tokio::net::TcpStream::connect(capped).await.expect("3");
        closed(third).await
    })
    .await;
    drop(held);
    wait_until("served again once they close", DEADLINE, || async {
        let s = tokio::net::TcpStream::connect(capped)
            .await
            .expect("connect");
        drop(s);
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            http(capped, "GET", "/healthz"),
        )
        .await
        .is_ok_and(|(code, _)| code == 200)
    })
    .await;
}

/// With a token, the API answers 401 (with `WWW-Authenticate: Bearer`)
/// unless the request carries it; metrics and health stay open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_token_is_required_when_configured() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("node1", node.addr)]).await;
    let addr = start_admin_with(&proxy, |a| {
        a.token = Some(mqttlb::secret::Secret("s3cret-token-0123456789".into()));
    })
    .await;
    let get = |auth: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(format!("GET /api/v1/backends HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes())
            .await
            .expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        out
    };
    let denied = get("").await;
    assert!(denied.starts_with("HTTP/1.0 401"), "{denied}");
    assert!(
        denied
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{denied}"
    );
    let wrong = get("Authorization: Bearer s3cret-token-000000000\r\n").await;
    assert!(wrong.starts_with("HTTP/1.0 401"), "{wrong}");
    let ok = get("Authorization: Bearer s3cret-token-0123456789\r\n").await;
    assert!(ok.starts_with("HTTP/1.0 200"), "{ok}");
    assert!(ok.contains("node1"), "{ok}");
    assert_eq!(http(addr, "GET", "/metrics").await.0, 200);
    assert_eq!(http(addr, "GET", "/healthz").await.0, 200);
}
