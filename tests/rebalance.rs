//! Rebalance (`[pool.X] rebalance`, `POST /api/v1/pools/{pool}/rebalance`)
//! against real broker nodes (`mqttlb broker`, in-process) and raw MQTT
//! clients that hold their connections: a node that comes back gets
//! exactly the clients whose home it is, moved at a packet boundary
//! (MQTT 5: DISCONNECT 0x9C; 3.1.1: closed) and never anyone else; a proxy
//! without `rebalance` moves nobody; by hand, a least-connections pool
//! sheds its crowded node's excess at the given rate.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use mqttlb::mqtt::packets::DISCONNECT_USE_ANOTHER_SERVER;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A client holding its connection through the proxy.
struct Held {
    id: String,
    level: u8,
    stream: TlsStream<TcpStream>,
}

/// Connect `id` (MQTT `level` 4 or 5) through the proxy, accepted.
async fn hold(proxy: SocketAddr, certs: &Certs, id: &str, level: u8) -> Held {
    Held {
        id: id.to_string(),
        level,
        stream: tls_session(proxy, certs, id, level).await,
    }
}

/// Every id, alternately MQTT 5 and 3.1.1.
async fn hold_all(proxy: SocketAddr, certs: &Certs, ids: &[String]) -> Vec<Held> {
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        out.push(hold(proxy, certs, id, if i % 2 == 0 { 5 } else { 4 }).await);
    }
    out
}

/// The client was asked to move: MQTT 5 got DISCONNECT "use another
/// server" and then the close, 3.1.1 just the close.
async fn assert_moved(h: &mut Held) {
    let got = read_to_close(&mut h.stream).await;
    let want: &[u8] = if h.level == 5 {
        DISCONNECT_USE_ANOTHER_SERVER
    } else {
        &[]
    };
    assert_eq!(got, want, "{} (MQTT level {})", h.id, h.level);
}

/// Nothing arrived for the client: it was not moved.
async fn assert_untouched(h: &mut Held) {
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_millis(50), h.stream.read(&mut buf)).await;
    assert!(r.is_err(), "{} was disturbed: {r:?}", h.id);
}

fn on_node(node: &BrokerUnderTest) -> f64 {
    node.metric("mqttlb_broker_connections_active")
}

/// `GET /api/v1/pools`, the pool's `rebalance.last` (JSON null: none).
async fn last_run(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http(admin, "GET", "/api/v1/pools").await;
    assert_eq!(code, 200, "{body}");
    let pools: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    pools[0]["rebalance"]["last"].clone()
}

const CHECKS: &str =
    "health = { check = \"tcp\", interval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }";

/// Node 3 dies, its clients fail over to nodes 1 and 2; when it is back,
/// `after` later, exactly its own clients are asked to move (paced) and
/// their reconnects land on it; nobody else is touched. A second proxy on
/// the same nodes without `rebalance` moves nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_node_gets_exactly_its_own_clients_back() {
    let certs = Certs::new();
    let node1 = BrokerUnderTest::start(|_| {}).await;
    let node2 = BrokerUnderTest::start(|_| {}).await;
    let mut node3 = BrokerUnderTest::start(|_| {}).await;
    let names = ["node1", "node2", "node3"];
    let servers = [
        ("node1", node1.addr),
        ("node2", node2.addr),
        ("node3", node3.addr),
    ];
    let proxy = ProxyUnderTest::start(
        &config(
            &certs,
            &servers,
            "",
            &format!(
                "strategy = \"client-id\"\nrebalance = {{ after = \"1s\", rate = 40 }}\n{CHECKS}"
            ),
        ),
        certs.dir.path(),
    )
    .await;
    let plain = ProxyUnderTest::start(
        &config(
            &certs,
            &servers,
            "",
            &format!("strategy = \"client-id\"\n{CHECKS}"),
        ),
        certs.dir.path(),
    )
    .await;
    let admin = start_admin(&proxy).await;
    let plain_admin = start_admin(&plain).await;

    let home3 = homed_on("node3", &names, 60);
    let (mine, theirs) = home3.split_at(40);
    let mut others = hold_all(proxy.addr, &certs, &homed_on("node1", &names, 20)).await;
    others.extend(hold_all(proxy.addr, &certs, &homed_on("node2", &names, 20)).await);
    let mut moving = hold_all(proxy.addr, &certs, mine).await;
    let mut staying = hold_all(plain.addr, &certs, theirs).await;
    assert_eq!(on_node(&node3), 60.0, "every node3 client is at home");

    // Node 3 dies: its clients lose their connections and come back
    // through the proxies, to nodes 1 and 2.
    node3.stop().await;
    for h in moving.iter_mut().chain(staying.iter_mut()) {
        read_to_close(&mut h.stream).await;
    }
    wait_until("node3 down on both proxies", DEADLINE, || async {
        !proxy.backend_up("node3") && !plain.backend_up("node3")
    })
    .await;
    let mut moving = hold_all(proxy.addr, &certs, mine).await;
    let mut staying = hold_all(plain.addr, &certs, theirs).await;
    assert_eq!(on_node(&node1) + on_node(&node2), 100.0);
    assert!(last_run(admin).await.is_null(), "no run before the return");

    // Node 3 is back: a second later its own clients are moved home.
    let node3 = node3.restart(Vec::new()).await;
    wait_until("the rebalance ran", 2 * DEADLINE, || async {
        last_run(admin).await["running"] == false
    })
    .await;
    let run = last_run(admin).await;
    assert_eq!(run["trigger"], "node", "{run}");
    assert_eq!(run["node"], "node3", "{run}");
    assert_eq!(run["planned"], 40, "{run}");
    assert_eq!(run["moved"], 40, "{run}");
    assert_eq!(run["stopped"], serde_json::Value::Null, "{run}");
    // Paced: 40 at 40/s take about a second (the 40th is due at 975 ms).
    assert!(run["seconds"].as_f64().expect("seconds") >= 0.9, "{run}");
    assert_eq!(
        proxy.metric("mqttlb_pool_rebalance_moved_total{pool=\"brokers\"}"),
        40.0
    );
    assert_eq!(
        proxy.metric("mqttlb_pool_rebalance_pending{pool=\"brokers\"}"),
        0.0
    );
    for h in &mut moving {
        assert_moved(h).await;
    }
    for h in others.iter_mut().chain(staying.iter_mut()) {
        assert_untouched(h).await;
    }
    let _back = hold_all(proxy.addr, &certs, mine).await;
    wait_until("the moved clients are home", DEADLINE, || async {
        on_node(&node3) == 40.0
    })
    .await;

    // Without `rebalance` nothing moves: its node3 clients stay away.
    assert!(last_run(plain_admin).await.is_null());
    assert_eq!(
        plain.metric("mqttlb_pool_rebalance_moved_total{pool=\"brokers\"}"),
        0.0
    );
    assert_eq!(on_node(&node1) + on_node(&node2), 60.0);
}

/// By hand, least connections: a node enabled after its peer took every
/// client gets the excess, at the rate asked; a second start while one
/// runs is refused, as are an unknown pool and a bad rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_hand_a_crowded_node_sheds_its_excess_at_the_rate() {
    let certs = Certs::new();
    let node1 = BrokerUnderTest::start(|_| {}).await;
    let node2 = BrokerUnderTest::start(|_| {}).await;
    let servers = [("node1", node1.addr), ("node2", node2.addr)];
    let proxy = ProxyUnderTest::start(
        &config(&certs, &servers, "", "strategy = \"least-connections\""),
        certs.dir.path(),
    )
    .await;
    let admin = start_admin(&proxy).await;

    let (code, _) = http(admin, "POST", "/api/v1/backends/node2/drain").await;
    assert_eq!(code, 200);
    let ids: Vec<String> = (0..40).map(|i| format!("lc-{i}")).collect();
    let mut held = hold_all(proxy.addr, &certs, &ids).await;
    assert_eq!(on_node(&node1), 40.0);
    let (code, _) = http(admin, "POST", "/api/v1/backends/node2/enable").await;
    assert_eq!(code, 200);

    for bad in ["rate=0", "rate=100001", "rate=many"] {
        let (code, body) = http(
            admin,
            "POST",
            &format!("/api/v1/pools/brokers/rebalance?{bad}"),
        )
        .await;
        assert_eq!(code, 400, "{bad}: {body}");
    }
    let (code, _) = http(admin, "POST", "/api/v1/pools/nope/rebalance").await;
    assert_eq!(code, 404);
    let (code, _) = http(admin, "GET", "/api/v1/pools/brokers/rebalance").await;
    assert_eq!(code, 405);

    let (code, body) = http(admin, "POST", "/api/v1/pools/brokers/rebalance?rate=10").await;
    assert_eq!(code, 202, "{body}");
    let started: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(started["planned"], 20, "{body}");
    // 20 at 10/s: running for about two seconds.
    let (code, body) = http(admin, "POST", "/api/v1/pools/brokers/rebalance").await;
    assert_eq!(code, 409, "{body}");

    wait_until("the rebalance ran", DEADLINE, || async {
        last_run(admin).await["running"] == false
    })
    .await;
    let run = last_run(admin).await;
    assert_eq!(run["trigger"], "manual", "{run}");
    assert_eq!(run["rate"], 10, "{run}");
    assert_eq!(run["moved"], 20, "{run}");
    assert!(run["seconds"].as_f64().expect("seconds") >= 1.9, "{run}");

    // The newest 20 moved; their reconnects go to the emptier node.
    let (stay, go) = held.split_at_mut(20);
    for h in go.iter_mut() {
        assert_moved(h).await;
    }
    for h in stay.iter_mut() {
        assert_untouched(h).await;
    }
    wait_until("the moved clients left node1", DEADLINE, || async {
        on_node(&node1) == 20.0
    })
    .await;
    let _back = hold_all(proxy.addr, &certs, &ids[20..]).await;
    assert_eq!(on_node(&node2), 20.0);
    assert_eq!(on_node(&node1), 20.0);
}
