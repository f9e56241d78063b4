//! Three meshed mqttlb broker nodes behind the TLS proxy (client-id
//! routing, MQTT 5 health checks, PROXY v2), driven by rumqttc over TLS.

mod common;

use common::*;
use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};

fn home(nodes: &[BrokerUnderTest], id: &str) -> Option<usize> {
    nodes.iter().position(|n| n.broker.is_online(id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_delivers_across_nodes_and_survives_a_node_loss() {
    let certs = Certs::new();
    let mut nodes = BrokerUnderTest::mesh(3, |_, c| {
        c.proxy_protocol = mqttlb::config::broker::ProxyIn::Optional;
        c.mesh_secret = Some(mqttlb::config::broker::Secret("mesh-test".into()));
    })
    .await;
    let addrs: Vec<_> = nodes.iter().map(|n| n.addr).collect();
    let servers: Vec<(&str, _)> = vec![
        ("node1", addrs[0]),
        ("node2", addrs[1]),
        ("node3", addrs[2]),
    ];
    let pool = "strategy = \"client-id\"\nproxy_protocol = \"v2\"\nhealth = { check = \"mqtt\", mqtt_version = \"5.0\", interval = \"300ms\", timeout = \"250ms\", rise = 1, fall = 2 }";
    let proxy = ProxyUnderTest::start(&config(&certs, &servers, "", pool), certs.dir.path()).await;

    let mut sub = tls_client(&proxy, &certs, "mesh-sub");
    sub.connack().await;
    sub.subscribe("m/#", QoS::ExactlyOnce).await;
    let s = home(&nodes, "mesh-sub").expect("subscriber has a node");

    // A publisher whose client id hashes to another node.
    let mut publ = None;
    for i in 0..50 {
        let id = format!("mesh-pub-{i}");
        let mut c = tls_client(&proxy, &certs, &id);
        c.connack().await;
        let p = home(&nodes, &id).expect("publisher has a node");
        if p != s {
            publ = Some((c, p, id));
            break;
        }
        c.client.disconnect().await.expect("disconnect");
    }
    let (publ, p, publ_id) = publ.expect("some client id lands on another node");

    publ.client
        .publish("m/1", QoS::AtLeastOnce, false, "across")
        .await
        .expect("publish");
    let m = sub.message().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("m/1", &b"across"[..]));
    assert_eq!(m.qos, QoS::AtLeastOnce);
    // QoS 2 crosses the link as QoS 2.
    publ.client
        .publish("m/q2", QoS::ExactlyOnce, false, "exactly")
        .await
        .expect("publish");
    let m = sub.message().await;
    assert_eq!((m.topic.as_str(), m.qos), ("m/q2", QoS::ExactlyOnce));

    publ.client
        .publish("m/ret", QoS::AtLeastOnce, true, "kept")
        .await
        .expect("publish retained");
    assert_eq!(sub.message().await.topic, "m/ret");
    for n in &nodes {
        wait_until("retained on every node", DEADLINE, || async {
            n.metric("mqttlb_broker_retained_messages") == 1.0
        })
        .await;
    }
    assert!(nodes[s].metric("mqttlb_broker_messages_received_total") >= 1.0);

    // The subscriber's node dies; it reconnects through the proxy, lands on
    // a live node, gets the retained message there, and traffic flows.
    nodes[s].stop().await;
    tokio::time::timeout(DEADLINE, &mut sub.task)
        .await
        .expect("subscriber's connection closed with its node")
        .expect("task");
    let mut sub = tls_client(&proxy, &certs, "mesh-sub");
    sub.connack().await;
    let now = home(&nodes, "mesh-sub").expect("subscriber back on a node");
    assert_ne!(now, s, "not on the dead node");
    sub.subscribe("m/#", QoS::ExactlyOnce).await;
    let r = sub.message().await;
    assert_eq!(
        (r.topic.as_str(), &r.payload[..], r.retain),
        ("m/ret", &b"kept"[..], true)
    );
    publ.client
        .publish("m/2", QoS::AtLeastOnce, false, "still here")
        .await
        .expect("publish");
    let m = sub.message().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("m/2", &b"still here"[..])
    );

    // Now the publisher's node dies too: both reconnect through the proxy
    // to what is left, and traffic continues.
    nodes[p].stop().await;
    let mut publ = publ;
    tokio::time::timeout(DEADLINE, &mut publ.task)
        .await
        .expect("publisher's connection closed with its node")
        .expect("task");
    if now == p {
        tokio::time::timeout(DEADLINE, &mut sub.task)
            .await
            .expect("subscriber's connection closed with its node")
            .expect("task");
        sub = tls_client(&proxy, &certs, "mesh-sub");
        sub.connack().await;
        sub.subscribe("m/#", QoS::ExactlyOnce).await;
        assert_eq!(
            sub.message().await.topic,
            "m/ret",
            "retained on the last node"
        );
    }
    let mut publ = tls_client(&proxy, &certs, &publ_id);
    publ.connack().await;
    assert!(home(&nodes, &publ_id).is_some_and(|n| n != p && n != s));
    publ.client
        .publish("m/3", QoS::ExactlyOnce, false, "after two losses")
        .await
        .expect("publish");
    let m = sub.message().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("m/3", &b"after two losses"[..])
    );
}

/// Mutual TLS at the proxy, PROXY v2 to a broker that requires the header
/// and takes the certificate CN as the user name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_cn_becomes_the_broker_user_name() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|c| {
        c.proxy_protocol = mqttlb::config::broker::ProxyIn::Required;
        c.cn_as_username = true;
    })
    .await;
    let mut raw = proxy_config(&certs, &[("node1", node.addr)]);
    tls_of(&mut raw).client_auth = Some("required".into());
    tls_of(&mut raw).client_ca = Some(certs.p("ca.pem"));
    let pool = raw.pool_mut("brokers");
    pool.proxy_protocol = Some("v2".into());
    let health = pool.health_mut();
    health.check = Some("mqtt".into());
    health.interval = Some("200ms".into());
    health.timeout = Some("500ms".into());
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;
    let mut opts = MqttOptions::new("cn-client", "localhost", proxy.addr.port());
    opts.set_credentials("claimed-name", "pw");
    opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
        ca: certs.read("ca.pem"),
        alpn: None,
        client_auth: Some((certs.read("client.pem"), certs.read("client.key"))),
    }));
    let mut c = MqttClient::start(opts);
    c.connack().await;
    assert_eq!(
        node.broker.username_of("cn-client").as_deref(),
        Some(mqttlb::certs::CLIENT_CN),
        "the CN from the PROXY v2 SSL TLV replaces the claimed user name"
    );
    // The health checks' LOCAL headers are accepted by the same listener.
    wait_until("health checks pass", DEADLINE, || async {
        proxy.metric("mqttlb_health_checks_total{backend=\"node1\",result=\"ok\"}") >= 2.0
    })
    .await;
    assert!(proxy.backend_up("node1"));
}

/// A peer that goes away is reconnected (with backoff) when it returns,
/// and messages flow both ways again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_links_reconnect_when_a_node_returns() {
    let mut nodes = BrokerUnderTest::mesh(2, |_, _| {}).await;
    let mut b = nodes.pop().expect("node b");
    let a = nodes.pop().expect("node a");
    b.stop().await;
    wait_until("A notices B is gone", DEADLINE, || async {
        a.metric("mqttlb_broker_peer_links_up") == 0.0
    })
    .await;

    // B comes back on the same address.
    let b = b.restart(vec![a.addr]).await;
    for n in [&a, &b] {
        n.wait_links_up(1).await;
    }
    for (from, to) in [(&a, &b), (&b, &a)] {
        let mut sub = MqttClient::start(MqttOptions::new("sub", "127.0.0.1", to.addr.port()));
        sub.connack().await;
        sub.subscribe("back/#", QoS::AtLeastOnce).await;
        let mut publ = MqttClient::start(MqttOptions::new("pub", "127.0.0.1", from.addr.port()));
        publ.connack().await;
        publ.client
            .publish("back/1", QoS::AtLeastOnce, false, "hello again")
            .await
            .expect("publish");
        assert_eq!(&sub.message().await.payload[..], b"hello again");
        sub.client.disconnect().await.expect("disconnect");
        publ.client.disconnect().await.expect("disconnect");
    }
}
