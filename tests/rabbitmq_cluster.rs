//! mqttlb in front of a real three-node RabbitMQ 3.10 cluster (Debian
//! package, MQTT plugin, `mqtt.proxy_protocol = true`), the deployment the
//! broker vendors recommend: TLS ends at mqttlb, PROXY v2 carries the
//! client's address, MQTT health checks watch every node.
//!
//! Shown here: every node passes MQTT health checks (RabbitMQ 3.10 crashes
//! the connection on the LOCAL header checks used to send); client-id
//! routing is sticky per node and agrees with the strategy; RabbitMQ logs
//! each client's real address from the PROXY header; messages cross the
//! cluster between clients on different nodes; a killed node leaves
//! rotation within interval × fall and every client is served by the
//! others meanwhile.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::rabbitmq::RabbitCluster;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const NODES: usize = 3;
const INTERVAL: Duration = Duration::from_secs(1);
const FALL: u32 = 2;
/// Up to this long for every node's first two passing checks.
const CHECKS_DEADLINE: Duration = Duration::from_secs(60);
/// Clients of the reconnect storm, and the paced rate they meet.
const STORM: usize = 30;
const STORM_RATE: usize = 10;

/// The time of day of a RabbitMQ log line, in seconds (its lines start
/// `2026-11-25 02:58:57.833936+00:00`).
fn log_seconds(line: &str) -> Option<f64> {
    let clock = line.get(11..26)?;
    let mut parts = clock.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn node(i: usize) -> String {
    format!("rabbit{i}")
}

/// Client `i` connects from its own loopback address, so the broker's log
/// can be searched for it.
fn source(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 1, 10 + i as u8))
}

/// Connect `id` through the proxy from `from` and return the CONNACK code.
async fn connect_once(proxy: &ProxyUnderTest, certs: &Certs, from: IpAddr, id: &str) -> Option<u8> {
    let mut s = tls_connect_from(proxy.addr, Some(from), certs, false)
        .await
        .unwrap_or_else(|e| panic!("{id}: TLS: {e}"));
    mqtt_connect(&mut s, 4, id).await
}

/// Log lines of node `n` recording an MQTT connection of `id`.
fn connections_of(cluster: &RabbitCluster, n: usize, id: &str) -> Vec<String> {
    let needle = format!("client id: {id})");
    cluster
        .log(n)
        .lines()
        .filter(|l| l.contains("accepting MQTT connection") && l.contains(&needle))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_cluster_behind_mqttlb() {
    let mut cluster = RabbitCluster::start(NODES).await;
    let certs = std::sync::Arc::new(Certs::new());
    let names: Vec<String> = (0..NODES).map(node).collect();
    let servers: Vec<(&str, SocketAddr)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), cluster.mqtt_addr(i)))
        .collect();
    let text = config(
        &certs,
        &servers,
        "",
        &format!(
            "strategy = \"client-id\"\nproxy_protocol = \"v2\"\nhealth = {{ check = \"mqtt\", interval = \"{}ms\", timeout = \"900ms\", rise = 1, fall = {FALL} }}",
            INTERVAL.as_millis()
        ),
    );
    let proxy = ProxyUnderTest::start(&text, certs.dir.path()).await;
    let checks = |n: &str, result: &str| {
        proxy.metric(&format!(
            "mqttlb_health_checks_total{{backend=\"{n}\",result=\"{result}\"}}"
        ))
    };

    // 1. Every node passes its MQTT checks, PROXY v2 header and all: two
    //    in a row at least, and no node's log records a crash on a header.
    //    A slow machine may time out a first check while the cluster's
    //    client-id registry settles, so the wait is generous and its
    //    failure message carries every node's last check.
    let passing = || {
        names.iter().all(|n| {
            checks(n, "ok") >= 2.0
                && proxy
                    .pool()
                    .find(n)
                    .and_then(|b| b.last_check())
                    .is_some_and(|c| c.ok)
        })
    };
    let end = Instant::now() + CHECKS_DEADLINE;
    while !passing() {
        if Instant::now() >= end {
            let states: Vec<String> = names
                .iter()
                .map(|n| {
                    format!(
                        "{n}: ok {} failed {} last {:?}",
                        checks(n, "ok"),
                        checks(n, "failed"),
                        proxy.pool().find(n).and_then(|b| b.last_check())
                    )
                })
                .collect();
            let logs: Vec<String> = (0..NODES)
                .map(|i| tail_lines(&cluster.log(i), 15))
                .collect();
            panic!(
                "nodes did not pass two MQTT checks in {CHECKS_DEADLINE:?}:\n{}\n{}",
                states.join("\n"),
                logs.join("\n---\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, n) in names.iter().enumerate() {
        assert!(proxy.backend_up(n));
        assert!(
            !cluster.log(i).contains("no match of right hand side"),
            "{n} crashed on a header"
        );
    }

    // Why checks send command PROXY: this RabbitMQ drops a connection that
    // starts with a LOCAL header (its MQTT reader crashes on it).
    let mut local = Vec::new();
    mqttlb::proxy_protocol::encode_local(mqttlb::config::ProxyProtocol::V2, &mut local);
    local.extend_from_slice(&connect_packet(4, "local-header"));
    let mut raw = tokio::net::TcpStream::connect(cluster.mqtt_addr(0))
        .await
        .expect("connect");
    raw.write_all(&local).await.expect("send");
    assert_eq!(
        read_to_close(&mut raw).await,
        b"",
        "RabbitMQ 3.10 answers no CONNECT behind a LOCAL header"
    );

    // 2. Client-id routing: each client twice, from its own address.
    const CLIENTS: usize = 12;
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("sticky-{i}")).collect();
    for round in 0..2 {
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                connect_once(&proxy, &certs, source(i), id).await,
                Some(0),
                "{id}, round {round}"
            );
        }
    }
    let mut home: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, id) in ids.iter().enumerate() {
        let cluster = &cluster;
        wait_until(
            &format!("RabbitMQ logged both connections of {id}"),
            DEADLINE,
            || async {
                (0..NODES)
                    .map(|n| connections_of(cluster, n, id).len())
                    .sum::<usize>()
                    >= 2
            },
        )
        .await;
        let nodes: Vec<usize> = (0..NODES)
            .filter(|&n| !connections_of(cluster, n, id).is_empty())
            .collect();
        assert_eq!(nodes.len(), 1, "{id} always lands on one node: {nodes:?}");
        let n = nodes[0];
        let expected = proxy.pool().candidates(Some(id.as_bytes()))[0].name.clone();
        assert_eq!(node(n), expected, "{id}: the node the strategy names");
        // RabbitMQ saw the client's own address, from the PROXY header.
        let from = format!("({}:", source(i));
        for line in connections_of(cluster, n, id) {
            assert!(
                line.contains(&from),
                "{id} logged with its real address: {line}"
            );
        }
        home.insert(id, n);
    }
    let used: std::collections::BTreeSet<usize> = home.values().copied().collect();
    assert!(used.len() >= 2, "clients spread over the cluster: {home:?}");

    // 3. The cluster works through the proxy: a subscriber and a publisher
    //    on different nodes.
    let (sub_id, pub_id) = {
        let mut by_node: BTreeMap<usize, &str> = BTreeMap::new();
        for (id, n) in &home {
            by_node.entry(*n).or_insert(id);
        }
        let mut it = by_node.values();
        (
            it.next().copied().unwrap_or("a"),
            it.next().copied().unwrap_or("b"),
        )
    };
    let mut sub = tls_client(&proxy, &certs, sub_id);
    sub.connack().await;
    sub.subscribe("cluster/t", rumqttc::QoS::AtLeastOnce).await;
    let mut publisher = tls_client(&proxy, &certs, pub_id);
    publisher.connack().await;
    publisher
        .publish(
            "cluster/t",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"across nodes",
        )
        .await;
    assert_eq!(&sub.message().await.payload[..], b"across nodes");
    drop((sub, publisher));

    // 3b. MQTT over secure WebSockets, forwarded (`to = "ws"`) to the
    //     nodes' Web MQTT listeners with a PROXY v2 header first.
    let web: Vec<(&str, SocketAddr)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), cluster.web_mqtt_addr(i)))
        .collect();
    // Pass-through: the proxy does not read MQTT inside a forwarded
    // WebSocket.
    let toml = edit_listener(
        &config(
            &certs,
            &web,
            "[websocket]\nto = \"ws\"",
            "proxy_protocol = \"v2\"\nhealth = { check = \"tcp\", interval = \"500ms\" }",
        ),
        |l| {
            l.remove("mqtt");
        },
    );
    let ws_proxy = ProxyUnderTest::start(&toml, certs.dir.path()).await;
    let mut sub = wss_client(ws_proxy.addr.port(), &certs, "ws-sub");
    sub.connack().await;
    sub.subscribe("cluster/ws", rumqttc::QoS::AtLeastOnce).await;
    let mut publisher = wss_client(ws_proxy.addr.port(), &certs, "ws-pub");
    publisher.connack().await;
    publisher
        .publish("cluster/ws", rumqttc::QoS::AtLeastOnce, false, b"over wss")
        .await;
    assert_eq!(&sub.message().await.payload[..], b"over wss");
    drop((sub, publisher, ws_proxy));

    // 4. Kill a node that is home to some clients, while those clients
    //    keep reconnecting.
    let victim = home[ids[0].as_str()];
    let victim_name = node(victim);
    let killed = Instant::now();
    cluster.kill(victim);
    let mut down_after = None;
    let mut served = 0usize;
    let mut round = 0;
    while down_after.is_none() || round < 2 {
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(
                connect_once(&proxy, &certs, source(i), id).await,
                Some(0),
                "{id} is served while {victim_name} is gone"
            );
            served += 1;
            if down_after.is_none() && !proxy.backend_up(&victim_name) {
                down_after = Some(killed.elapsed());
            }
        }
        if down_after.is_some() {
            round += 1;
        }
        assert!(
            killed.elapsed() < DEADLINE,
            "{victim_name} never left rotation"
        );
    }
    let down_after = down_after.unwrap_or_default();
    eprintln!(
        "{victim_name} left rotation {down_after:?} after it was killed; {served} clients served meanwhile"
    );
    // Checks every INTERVAL, FALL of them (or unanswered clients) in a row:
    // out within INTERVAL × FALL, plus one interval for scheduling on a
    // busy machine.
    assert!(
        down_after <= INTERVAL * (FALL + 1),
        "{victim_name} left rotation after {down_after:?}"
    );
    // The victim's clients now live on the others, deterministically.
    for id in ids.iter().filter(|id| home[id.as_str()] == victim) {
        let now = proxy.pool().candidates(Some(id.as_bytes()))[0].name.clone();
        assert_ne!(now, victim_name, "{id}");
    }

    // 5. Kill another node with no client traffic on this proxy: the
    //    active checks alone take it out within INTERVAL × FALL (plus one
    //    interval of slack), and the last node serves everyone. Meanwhile
    //    a second proxy that paces admission holds STORM clients on that
    //    node; they reconnect all at once and RabbitMQ's own log shows the
    //    last node taking them at the paced rate.
    let second = (0..NODES).find(|&n| n != victim).unwrap_or_default();
    let second_name = node(second);
    let last = (0..NODES)
        .find(|&n| n != victim && n != second)
        .unwrap_or_default();
    let storm_proxy = ProxyUnderTest::start(
        &config(
            &certs,
            &servers,
            "",
            &format!(
                "strategy = \"client-id\"\nproxy_protocol = \"v2\"\nmax_connect_rate = {STORM_RATE}\nqueue = {{ size = 1000, timeout = \"60s\" }}\nhealth = {{ check = \"tcp\", interval = \"200ms\", timeout = \"900ms\", rise = 1, fall = 1 }}"
            ),
        ),
        certs.dir.path(),
    )
    .await;
    let (sp, vn) = (&storm_proxy, victim_name.as_str());
    wait_until(
        "the storm proxy sees the victim down",
        DEADLINE,
        || async move { !sp.backend_up(vn) },
    )
    .await;
    let storm_ids: Vec<String> = (0..)
        .map(|i| format!("storm-{i}"))
        .filter(|id| storm_proxy.pool().candidates(Some(id.as_bytes()))[0].name == second_name)
        .take(STORM)
        .collect();
    let mut held = Vec::with_capacity(STORM);
    for id in &storm_ids {
        let mut s = tls_connect(storm_proxy.addr, &certs, false)
            .await
            .expect("TLS");
        assert_eq!(mqtt_connect(&mut s, 4, id).await, Some(0), "{id}");
        held.push(s);
    }
    let killed = Instant::now();
    cluster.kill(second);
    // The storm: every held client sees its connection end and comes back
    // at once, all together.
    let storm: Vec<_> = storm_ids
        .iter()
        .zip(held)
        .map(|(id, mut s)| {
            let (certs, addr, id) = (certs.clone(), storm_proxy.addr, id.clone());
            tokio::spawn(async move {
                read_to_close(&mut s).await;
                let mut s = tls_connect(addr, &certs, false).await.expect("TLS");
                let code = mqtt_connect(&mut s, 4, &id).await;
                (id, code, s)
            })
        })
        .collect();
    // Watched while the storm runs: the first proxy's checks alone take
    // the node out.
    let name = second_name.as_str();
    let proxy_ref = &proxy;
    let (by_checks, back) = tokio::join!(
        async {
            wait_until(
                "the second node leaves rotation by checks alone",
                DEADLINE,
                || async move { !proxy_ref.backend_up(name) },
            )
            .await;
            killed.elapsed()
        },
        async {
            let mut back = Vec::with_capacity(STORM);
            for t in storm {
                let (id, code, s) = t.await.expect("storm client");
                assert_eq!(code, Some(0), "{id} is back, on the last node");
                back.push(s);
            }
            back
        }
    );
    // RabbitMQ's side: when the last node accepted each storm client (its
    // log is written a moment after the CONNACK).
    let accepted_at = || -> Vec<f64> {
        storm_ids
            .iter()
            .filter_map(|id| {
                connections_of(&cluster, last, id)
                    .last()
                    .and_then(|l| log_seconds(l))
            })
            .collect()
    };
    wait_until(
        "the last node logged every storm client",
        DEADLINE,
        || async { accepted_at().len() == STORM },
    )
    .await;
    let mut accepted = accepted_at();
    accepted.sort_by(f64::total_cmp);
    let span = accepted[STORM - 1] - accepted[0];
    // A full bucket (one second of tokens) goes at once, the rest at the
    // rate: at least (STORM - RATE) / RATE seconds, less 10 % for clocks.
    let paced = (STORM - STORM_RATE) as f64 / STORM_RATE as f64;
    eprintln!(
        "storm: {STORM} clients reached the last node over {span:.2} s (paced: {paced:.2} s)"
    );
    assert!(
        span >= paced * 0.9,
        "{STORM} reconnects over {span:.2} s: not paced at {STORM_RATE}/s"
    );
    drop(back);
    eprintln!("{second_name} left rotation {by_checks:?} after it was killed, with no traffic");
    assert!(
        by_checks <= INTERVAL * (FALL + 1),
        "{second_name} left rotation after {by_checks:?}"
    );
    assert_eq!(
        proxy.metric(&format!(
            "mqttlb_backend_connect_errors_total{{backend=\"{second_name}\"}}"
        )),
        0.0,
        "no client was offered to it"
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            connect_once(&proxy, &certs, source(i), id).await,
            Some(0),
            "{id} is served by the last node"
        );
    }
    assert_eq!(proxy.rejected("no_backend"), 0.0);
}
