//! CONNACK-verified routing in front of real brokers (Mosquitto and `mqttlb
//! broker`): a node that accepts TCP but never answers (black hole), or
//! answers too slowly for its health checks (stalled), leaves rotation
//! within its thresholds while clients keep arriving, and every client is
//! served by the healthy node; a node answering "server unavailable" is
//! failed over too; a broker's refusal of a client reaches the client
//! unchanged and is not a node failure.
//!
//! The black hole and the slow relay are fault injectors in this file, in
//! front of (or beside) real brokers.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use mqttlb::config::broker::ProxyIn;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Accepts TCP and holds every connection open without reading or writing,
/// until the test ends.
async fn black_hole() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A stalled node: relays to `target` but holds every chunk for `delay`
/// before passing it on, in both directions.
async fn slow_relay(target: SocketAddr, delay: Duration) -> SocketAddr {
    async fn pipe(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        delay: Duration,
    ) {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // The fault being injected, not synchronisation.
            tokio::time::sleep(delay).await;
            if to.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(upstream) = TcpStream::connect(target).await else {
                    return;
                };
                let (cr, cw) = client.into_split();
                let (ur, uw) = upstream.into_split();
                tokio::join!(pipe(cr, uw, delay), pipe(ur, cw, delay));
            });
        }
    });
    addr
}

/// Answers every CONNECT with CONNACK "server unavailable" (3.1.1 code 3,
/// 5.0 reason 0x88) and closes: a node that is up for TCP checks but cannot take sessions.
async fn unavailable_node() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Clients' CONNECTs here are short: the protocol level is
                // byte 8 (type, one length byte, "\0\x04MQTT").
                let mut buf = [0u8; 256];
                if matches!(s.read(&mut buf).await, Ok(n) if n > 8) {
                    let answer: &[u8] = match buf[8] {
                        5 => &[0x20, 3, 0, 0x88, 0],
                        _ => &[0x20, 2, 0, 3],
                    };
                    let _ = s.write_all(answer).await;
                }
            });
        }
    });
    addr
}

/// The healthy broker a test runs against.
enum Healthy {
    Mosquitto(Mosquitto),
    Mqttlb(BrokerUnderTest),
}

impl Healthy {
    /// Mosquitto 2.0 has no PROXY protocol; `mqttlb broker` is run with
    /// the header required, so every check and client must send one.
    async fn start(kind: &str) -> Healthy {
        match kind {
            "mosquitto" => Healthy::Mosquitto(Mosquitto::start().await),
            _ => Healthy::Mqttlb(
                BrokerUnderTest::start(|c| c.proxy_protocol = ProxyIn::Required).await,
            ),
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Healthy::Mosquitto(m) => m.addr(),
            Healthy::Mqttlb(b) => b.addr,
        }
    }

    fn proxy_protocol(&self) -> &'static str {
        match self {
            Healthy::Mosquitto(_) => "off",
            Healthy::Mqttlb(_) => "v2",
        }
    }
}

/// Clients that connect one after another every `pace` (alternating MQTT
/// 3.1.1 and 5.0, unique ids) until `stop`; each must read an accepted
/// CONNACK. `served` counts those that did; a failure panics.
async fn steady_clients(
    addr: SocketAddr,
    certs: &Certs,
    pace: Duration,
    served: &AtomicUsize,
    stop: &CancellationToken,
) {
    let mut i = 0u32;
    while !stop.is_cancelled() {
        let level = if i % 2 == 0 { 4 } else { 5 };
        let id = format!("steady-{i}");
        let mut s = tls_connect(addr, certs, false)
            .await
            .unwrap_or_else(|e| panic!("client {id}: TLS: {e}"));
        assert_eq!(
            mqtt_connect(&mut s, level, &id).await,
            Some(0),
            "client {id} (MQTT level {level}) is served"
        );
        served.fetch_add(1, Ordering::Relaxed);
        i += 1;
        // Pacing the load, not synchronisation.
        tokio::time::sleep(pace).await;
    }
}

/// Run steady traffic through a proxy in front of `bad` (first) and the
/// healthy broker: `bad` must leave rotation while clients keep arriving,
/// at most `max_misses` clients may have been offered to it without an
/// answer by then, and ten more clients after that are all served (a node
/// that passes its checks may come back meanwhile and be failed over
/// again).
async fn leaves_rotation_under_traffic(
    kind: &str,
    bad: impl FnOnce(SocketAddr) -> std::pin::Pin<Box<dyn std::future::Future<Output = SocketAddr>>>,
    pool: &str,
    max_misses: f64,
) {
    let certs = Certs::new();
    let healthy = Healthy::start(kind).await;
    let bad = bad(healthy.addr()).await;
    let text = config(
        &certs,
        &[("bad", bad), ("good", healthy.addr())],
        "",
        &format!(
            "strategy = \"round-robin\"\nproxy_protocol = \"{}\"\n{pool}",
            healthy.proxy_protocol()
        ),
    );
    let proxy = ProxyUnderTest::start(&text, certs.dir.path()).await;
    let served = AtomicUsize::new(0);
    let stop = CancellationToken::new();
    let watch = async {
        wait_until(
            "the bad node leaves rotation under traffic",
            DEADLINE,
            || async { !proxy.backend_up("bad") },
        )
        .await;
        let at_down = served.load(Ordering::Relaxed);
        let misses = proxy.metric("mqttlb_backend_connect_errors_total{backend=\"bad\"}");
        wait_until("ten more clients are served", DEADLINE, || async {
            served.load(Ordering::Relaxed) >= at_down + 10
        })
        .await;
        stop.cancel();
        misses
    };
    let ((), misses) = tokio::join!(
        steady_clients(
            proxy.addr,
            &certs,
            Duration::from_millis(100),
            &served,
            &stop
        ),
        watch
    );
    assert!(
        proxy.backend_up("good"),
        "the healthy node stayed in rotation"
    );
    assert_eq!(proxy.rejected("no_backend"), 0.0);
    assert!(
        misses <= max_misses,
        "{misses} clients were offered to the bad node without an answer before it left rotation (at most {max_misses})"
    );
    assert_eq!(
        proxy.metric("mqttlb_backend_connect_errors_total{backend=\"good\"}"),
        0.0
    );
    let good_accepted =
        proxy.metric("mqttlb_backend_connacks_total{backend=\"good\",result=\"accepted\"}");
    let bad_accepted =
        proxy.metric("mqttlb_backend_connacks_total{backend=\"bad\",result=\"accepted\"}");
    assert_eq!(
        good_accepted + bad_accepted,
        served.load(Ordering::Relaxed) as f64,
        "every served client was counted once, on the node that answered"
    );
}

/// A black hole beside a healthy node, MQTT checks every 500 ms, fall 2,
/// clients every 100 ms: the node goes down, and the clients sent there
/// are failed over after `connack_timeout` (at most `fall` of them: each
/// unanswered CONNECT counts towards `fall`, so it cannot stay up).
const BLACK_HOLE_POOL: &str = "connack_timeout = \"1s\"\nhealth = { check = \"mqtt\", interval = \"500ms\", timeout = \"300ms\", rise = 2, fall = 2 }";

/// A stalled node (600 ms per chunk: its CONNACK comes after about 1.2 s)
/// with checks that time out after 300 ms and clients allowed 3 s: the
/// clients sent there are answered, slowly, but that does not hide the
/// failing checks, and the node leaves rotation as it would with no
/// traffic.
const SLOW_POOL: &str = "connack_timeout = \"3s\"\nhealth = { check = \"mqtt\", interval = \"500ms\", timeout = \"300ms\", rise = 2, fall = 2 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_beside_mosquitto() {
    leaves_rotation_under_traffic(
        "mosquitto",
        |_| Box::pin(black_hole()),
        BLACK_HOLE_POOL,
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_beside_mqttlb_broker() {
    leaves_rotation_under_traffic("mqttlb", |_| Box::pin(black_hole()), BLACK_HOLE_POOL, 2.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_mosquitto_leaves_rotation() {
    leaves_rotation_under_traffic(
        "mosquitto",
        |target| Box::pin(slow_relay(target, Duration::from_millis(600))),
        SLOW_POOL,
        0.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_mqttlb_broker_leaves_rotation() {
    leaves_rotation_under_traffic(
        "mqttlb",
        |target| Box::pin(slow_relay(target, Duration::from_millis(600))),
        SLOW_POOL,
        0.0,
    )
    .await;
}

/// "Server unavailable" from a node that passes TCP checks: its clients go
/// to the other node, and the refusals alone take it out of rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_unavailable_fails_over_and_counts_against_the_node() {
    leaves_rotation_under_traffic(
        "mosquitto",
        |_| Box::pin(unavailable_node()),
        "health = { check = \"tcp\", interval = \"500ms\", timeout = \"300ms\", rise = 2, fall = 2 }",
        2.0,
    )
    .await;
}

/// A CONNECT Mosquitto must refuse: MQTT 3.1.1, empty client id without a
/// clean session (CONNACK code 2, "identifier rejected").
fn refusable_connect() -> Vec<u8> {
    let mut p = vec![0x10, 12, 0, 4];
    p.extend_from_slice(b"MQTT");
    p.extend_from_slice(&[4, 0x00, 0, 30, 0, 0]);
    p
}

/// The broker's refusal of a client is its answer: forwarded byte for byte,
/// not retried on another node, and no mark against the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_gets_the_brokers_answer_unchanged() {
    let certs = Certs::new();
    let (a, b) = (Mosquitto::start().await, Mosquitto::start().await);
    let text = config(
        &certs,
        &[("a", a.addr()), ("b", b.addr())],
        "",
        "strategy = \"round-robin\"\nhealth = { check = \"mqtt\", interval = \"200ms\", timeout = \"500ms\", rise = 1, fall = 1 }",
    );
    let proxy = ProxyUnderTest::start(&text, certs.dir.path()).await;
    for i in 0..4 {
        let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
        s.write_all(&refusable_connect())
            .await
            .expect("send CONNECT");
        let answer = read_to_close(&mut s).await;
        assert_eq!(
            answer,
            [0x20, 2, 0, 2],
            "client {i} reads Mosquitto's own CONNACK"
        );
    }
    let refused = |n: &str| {
        proxy.metric(&format!(
            "mqttlb_backend_connacks_total{{backend=\"{n}\",result=\"refused\"}}"
        ))
    };
    assert_eq!(
        refused("a") + refused("b"),
        4.0,
        "each refusal was counted once: no second node was asked"
    );
    assert!(refused("a") >= 1.0 && refused("b") >= 1.0, "round robin");
    for n in ["a", "b"] {
        assert_eq!(
            proxy.metric(&format!(
                "mqttlb_backend_connect_errors_total{{backend=\"{n}\"}}"
            )),
            0.0
        );
        assert!(proxy.backend_up(n), "{n} stays in rotation");
    }
    // And the nodes still serve.
    let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut s, 4, "after-refusals").await, Some(0));
}

/// What a broker sends right behind its CONNACK reaches the client too:
/// a persistent session's queued QoS 1 message, delivered on reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_queued_behind_the_connack_are_delivered() {
    let certs = Certs::new();
    let m = Mosquitto::start().await;
    let text = config(&certs, &[("m", m.addr())], "", "");
    let proxy = ProxyUnderTest::start(&text, certs.dir.path()).await;
    let opts = |id: &str, clean: bool| {
        let mut o = rumqttc::MqttOptions::new(id, "localhost", proxy.addr.port());
        o.set_clean_session(clean);
        o.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
            ca: certs.read("ca.pem"),
            alpn: None,
            client_auth: None,
        }));
        o
    };
    // A persistent subscriber registers, then leaves.
    let mut sub = MqttClient::start(opts("queued-sub", false));
    sub.connack().await;
    sub.subscribe("queued/t", rumqttc::QoS::AtLeastOnce).await;
    sub.client.disconnect().await.expect("disconnect");
    sub.task.await.expect("event loop ends");
    // Messages arrive while it is away.
    let mut publisher = MqttClient::start(opts("queued-pub", true));
    publisher.connack().await;
    for i in 0..3u8 {
        publisher
            .publish("queued/t", rumqttc::QoS::AtLeastOnce, false, &[i])
            .await;
    }
    publisher
        .next("PUBACK of the last message", |p| match p {
            rumqttc::Packet::PubAck(a) if a.pkid == 3 => Some(()),
            _ => None,
        })
        .await;
    // On its return Mosquitto sends them right behind the CONNACK.
    let mut sub = MqttClient::start(opts("queued-sub", false));
    assert!(sub.connack().await, "the session was kept");
    for i in 0..3u8 {
        let msg = sub.message().await;
        assert_eq!(&msg.payload[..], &[i]);
    }
}
