//! Slow start (`[pool.X] slow_start`) against real broker nodes
//! (`mqttlb broker`, in-process): a node that enters rotation again takes
//! its own clients back gradually, in the order every replica agrees on,
//! and all of them once the ramp is done; a node that comes back up after
//! an outage ramps too; without the setting nothing ramps.

mod common;

use std::net::SocketAddr;

use common::*;

/// Open MQTT sessions through the proxy for every id (kept open), each
/// accepted.
async fn connect_all(
    proxy: SocketAddr,
    certs: &Certs,
    ids: &[String],
) -> Vec<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut held = Vec::with_capacity(ids.len());
    for id in ids {
        let mut s = tls_connect(proxy, certs, false).await.expect("TLS");
        assert_eq!(mqtt_connect(&mut s, 4, id).await, Some(0), "{id}");
        held.push(s);
    }
    held
}

/// Open client connections on a broker node, as the node counts them.
fn on_node(node: &BrokerUnderTest) -> f64 {
    node.metric("mqttlb_broker_connections_active")
}

fn ratio(proxy: &ProxyUnderTest, node: &str) -> f64 {
    proxy.metric(&format!(
        "mqttlb_backend_slow_start_ratio{{pool=\"brokers\",backend=\"{node}\"}}"
    ))
}

/// A node drained and enabled again with client-id hashing: right after,
/// few of its own clients go to it (the rest to their runner-up); once
/// the ramp is done every one of them does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enabled_node_takes_its_clients_back_gradually() {
    let certs = Certs::new();
    let node1 = BrokerUnderTest::start(|_| {}).await;
    let node2 = BrokerUnderTest::start(|_| {}).await;
    let servers = [("node1", node1.addr), ("node2", node2.addr)];
    let toml = config(
        &certs,
        &servers,
        "",
        "strategy = \"client-id\"\nslow_start = \"8s\"",
    );
    let proxy = ProxyUnderTest::start(&toml, certs.dir.path()).await;
    let admin = start_admin(&proxy).await;
    assert_eq!(
        ratio(&proxy, "node2"),
        1.0,
        "the first nodes take their share at once"
    );

    let ids = homed_on("node2", &["node1", "node2"], 60);
    let (code, _) = http(admin, "POST", "/api/v1/backends/node2/drain").await;
    assert_eq!(code, 200);
    let (code, _) = http(admin, "POST", "/api/v1/backends/node2/enable").await;
    assert_eq!(code, 200);
    assert!(ratio(&proxy, "node2") < 1.0, "ramping after enable");
    let (_, body) = http(admin, "GET", "/api/v1/backends").await;
    assert!(body.contains("\"slow_start_ratio\""), "{body}");

    // Early in the 8 s ramp: at most half of node2's clients go home (on
    // an idle machine, a few per cent).
    let held = connect_all(proxy.addr, &certs, &ids).await;
    let home = on_node(&node2);
    assert!(
        home < ids.len() as f64 / 2.0,
        "{home} of {} went home early in the ramp",
        ids.len()
    );
    assert_eq!(on_node(&node1) + home, ids.len() as f64);
    drop(held);

    wait_until("the ramp is done", 3 * DEADLINE, || async {
        ratio(&proxy, "node2") == 1.0
    })
    .await;
    wait_until("the first clients left", DEADLINE, || async {
        on_node(&node1) + on_node(&node2) == 0.0
    })
    .await;
    let _held = connect_all(proxy.addr, &certs, &ids).await;
    assert_eq!(on_node(&node2), ids.len() as f64, "all home after the ramp");
    assert_eq!(on_node(&node1), 0.0);
}

/// A node that went down and came back up ramps; a pool without
/// `slow_start` never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_up_ramps_and_without_slow_start_none_does() {
    let certs = Certs::new();
    let node1 = BrokerUnderTest::start(|_| {}).await;
    let mut node2 = BrokerUnderTest::start(|_| {}).await;
    let servers = [("node1", node1.addr), ("node2", node2.addr)];
    let checks = "health = { check = \"tcp\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }";
    let ramping = ProxyUnderTest::start(
        &config(
            &certs,
            &servers,
            "",
            &format!("slow_start = \"1h\"\n{checks}"),
        ),
        certs.dir.path(),
    )
    .await;
    let plain =
        ProxyUnderTest::start(&config(&certs, &servers, "", checks), certs.dir.path()).await;

    node2.stop().await;
    wait_until("node2 down on both proxies", DEADLINE, || async {
        !ramping.backend_up("node2") && !plain.backend_up("node2")
    })
    .await;
    let _node2 = node2.restart(Vec::new()).await;
    wait_until("node2 up again on both proxies", DEADLINE, || async {
        ramping.backend_up("node2") && plain.backend_up("node2")
    })
    .await;
    let r = ratio(&ramping, "node2");
    assert!(r < 0.01, "an hour's ramp has barely begun: {r}");
    assert_eq!(ratio(&ramping, "node1"), 1.0);
    assert_eq!(ratio(&plain, "node2"), 1.0);
}
