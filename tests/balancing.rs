//! Balancing over real Mosquitto nodes: spread, stickiness by client id,
//! failover on node loss, health checks marking nodes down and up.

mod common;

use std::time::Duration;

use common::*;
use tokio::time::Instant;

/// Connect through the proxy with a 3.1.1 CONNECT; the CONNACK code.
async fn connect_as(proxy: &ProxyUnderTest, certs: &Certs, id: &str) -> Option<u8> {
    let mut s = tls_connect(proxy.addr, certs, false).await.ok()?;
    mqtt_connect(&mut s, 4, id).await
}

/// Which node (index) logged `id` most recently `n` times in total.
fn node_of(nodes: &[Mosquitto], id: &str) -> Vec<usize> {
    nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.saw_client(id))
        .map(|(i, _)| i)
        .collect()
}

async fn three_nodes() -> Vec<Mosquitto> {
    vec![
        Mosquitto::start().await,
        Mosquitto::start().await,
        Mosquitto::start().await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_routing_is_sticky_and_failover_moves_only_the_lost_nodes_clients() {
    let certs = Certs::new();
    let mut nodes = three_nodes().await;
    let servers: Vec<(&str, _)> = vec![
        ("node1", nodes[0].addr()),
        ("node2", nodes[1].addr()),
        ("node3", nodes[2].addr()),
    ];
    let interval = Duration::from_millis(300);
    let check_timeout = Duration::from_millis(250);
    let pool = format!(
        "strategy = \"client-id\"\nhealth = {{ check = \"mqtt\", interval = \"{}ms\", timeout = \"{}ms\", rise = 2, fall = 3 }}",
        interval.as_millis(),
        check_timeout.as_millis()
    );
    let proxy = ProxyUnderTest::start(&config(&certs, &servers, "", &pool), certs.dir.path()).await;

    let ids: Vec<String> = (0..30).map(|i| format!("dev-{i}")).collect();
    for id in &ids {
        assert_eq!(
            connect_as(&proxy, &certs, id).await,
            Some(0),
            "{id} is accepted"
        );
    }
    let mut home = Vec::new();
    for id in &ids {
        let id2 = id.clone();
        let nodes_ref = &nodes;
        wait_until("broker logs the connection", DEADLINE, || async {
            node_of(nodes_ref, &id2).len() == 1
        })
        .await;
        home.push(node_of(&nodes, id)[0]);
    }
    for n in 0..3 {
        assert!(
            home.iter().filter(|&&h| h == n).count() >= 3,
            "node{} got too few clients: {home:?}",
            n + 1
        );
    }

    // Same client id, same node.
    for (id, &h) in ids.iter().zip(&home) {
        assert_eq!(connect_as(&proxy, &certs, id).await, Some(0));
        let nodes_ref = &nodes;
        wait_until("reconnection logged", DEADLINE, || async {
            nodes_ref[h].connections_of(id) == 2
        })
        .await;
        assert_eq!(node_of(&nodes, id), vec![h], "{id} stayed on its node");
    }

    // Node 2 dies. A client homed there is served at once (its failed
    // connect moves it to the next candidate) before any check noticed;
    // that single passive failure is below `fall`.
    let killed_at = Instant::now();
    nodes[1].kill();
    let moved = ids
        .iter()
        .zip(&home)
        .find(|(_, h)| **h == 1)
        .map(|(id, _)| id.clone())
        .expect("node2 has clients");
    assert_eq!(
        connect_as(&proxy, &certs, &moved).await,
        Some(0),
        "{moved} is served while node2 is down"
    );
    // Active checks mark it down within interval × fall (+ one check
    // timeout and scheduling slack).
    wait_until("node2 marked down", DEADLINE, || async {
        !proxy.backend_up("node2")
    })
    .await;
    let took = killed_at.elapsed();
    assert!(
        took <= interval * 3 + check_timeout + Duration::from_secs(2),
        "node2 marked down only after {took:?}"
    );
    assert!(proxy.metric("mqttlb_health_checks_total{backend=\"node2\",result=\"failed\"}") >= 2.0);
    assert!(proxy.backend_up("node1") && proxy.backend_up("node3"));
    assert_eq!(proxy.metric("mqttlb_backend_up{backend=\"node2\"}"), 0.0);

    // Only node2's clients move; everyone else stays home.
    for (id, &h) in ids.iter().zip(&home) {
        assert_eq!(
            connect_as(&proxy, &certs, id).await,
            Some(0),
            "{id} is served while node2 is down"
        );
        let nodes_ref = &nodes;
        if h != 1 {
            wait_until("third connection logged", DEADLINE, || async {
                nodes_ref[h].connections_of(id) == 3
            })
            .await;
        } else {
            wait_until("moved client logged", DEADLINE, || async {
                nodes_ref[0].saw_client(id) || nodes_ref[2].saw_client(id)
            })
            .await;
        }
    }

    // It comes back after `rise` good checks, and its clients return.
    nodes[1].restart().await;
    wait_until("node2 marked up again", DEADLINE, || async {
        proxy.backend_up("node2")
    })
    .await;
    for (id, &h) in ids.iter().zip(&home) {
        if h == 1 {
            assert_eq!(connect_as(&proxy, &certs, id).await, Some(0));
            let nodes_ref = &nodes;
            wait_until("client back on node2", DEADLINE, || async {
                nodes_ref[1].saw_client(id)
            })
            .await;
        }
    }
    assert!(proxy.metric("mqttlb_backend_connect_errors_total{backend=\"node2\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_connections_evenly() {
    let certs = Certs::new();
    let nodes = three_nodes().await;
    let servers = vec![
        ("a", nodes[0].addr()),
        ("b", nodes[1].addr()),
        ("c", nodes[2].addr()),
    ];
    let proxy = ProxyUnderTest::start(
        &config(&certs, &servers, "", "strategy = \"round-robin\""),
        certs.dir.path(),
    )
    .await;
    let ids: Vec<String> = (0..9).map(|i| format!("rr-{i}")).collect();
    for id in &ids {
        assert_eq!(connect_as(&proxy, &certs, id).await, Some(0));
    }
    let nodes_ref = &nodes;
    let ids_ref = &ids;
    wait_until("all nine connections logged", DEADLINE, || async {
        ids_ref.iter().all(|id| node_of(nodes_ref, id).len() == 1)
    })
    .await;
    let mut per_node = [0; 3];
    for id in &ids {
        per_node[node_of(&nodes, id)[0]] += 1;
    }
    assert_eq!(per_node, [3, 3, 3]);
}
