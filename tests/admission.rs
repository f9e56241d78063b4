//! Pool admission in front of real brokers (`mqttlb broker` nodes and
//! Mosquitto): `max_connect_rate` holds at the brokers, read from their
//! side by a tap in front of each node that records when each client's
//! CONNECT reaches it; the queue's bound and timeout answer CONNACK 0x89
//! (5.0) and 3 (3.1.1) and are counted; a client that closes while queued
//! leaves at once and never reaches a broker; per-node caps skip a full
//! node and hold clients until a slot frees (or a reload raises the cap);
//! no cascade: a node whose CONNACKs come late (a tap that delays them) stays
//! in rotation while the pool paces and its late CONNACKs reach the
//! clients, while without admission the same node leaves rotation as it
//! always did; everything off by default keeps today's behaviour.
//!
//! Clients reconnect at once (no back-off), many at the same moment; every
//! wait is on a condition with a deadline.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What a node's tap saw of one client connection: when its first bytes
/// (the PROXY header, if any, and the CONNECT) arrived, and those bytes.
#[derive(Clone)]
struct Seen {
    at: Instant,
    first: Vec<u8>,
}

/// A TCP relay in front of a broker that records every connection that
/// carries data (health checks over TCP carry none) and can hold the
/// broker's first answer (its CONNACK) for `connack_delay`.
struct Tap {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Tap {
    async fn start(target: SocketAddr, connack_delay: Duration) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(relay(client, target, connack_delay, log));
            }
        });
        Tap { addr, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn clients(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// Whether a client with this id reached the node.
    fn saw(&self, id: &str) -> bool {
        self.seen()
            .iter()
            .any(|s| s.first.windows(id.len()).any(|w| w == id.as_bytes()))
    }
}

async fn relay(
    mut client: TcpStream,
    target: SocketAddr,
    connack_delay: Duration,
    log: Arc<Mutex<Vec<Seen>>>,
) {
    let mut first = vec![0u8; 4096];
    let n = match client.read(&mut first).await {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    first.truncate(n);
    log.lock().unwrap().push(Seen {
        at: Instant::now(),
        first: first.clone(),
    });
    let Ok(mut broker) = TcpStream::connect(target).await else {
        return;
    };
    if broker.write_all(&first).await.is_err() {
        return;
    }
    let (mut cr, mut cw) = client.into_split();
    let (mut br, mut bw) = broker.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut bw).await;
        let _ = bw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 4096];
        let mut delayed = connack_delay.is_zero();
        loop {
            let n = match br.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if !delayed {
                // The fault being injected (a slow CONNACK), not
                // synchronisation.
                tokio::time::sleep(connack_delay).await;
                delayed = true;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// A TLS client through `proxy` that sends a CONNECT (`level` 4 or 5) and
/// reads the CONNACK code; the stream is kept for the caller to hold.
async fn client(
    proxy: SocketAddr,
    certs: &Certs,
    level: u8,
    id: &str,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<u8>) {
    let mut s = tls_connect(proxy, certs, false)
        .await
        .unwrap_or_else(|e| panic!("{id}: TLS: {e}"));
    let code = mqtt_connect(&mut s, level, id).await;
    (s, code)
}

/// A TLS client that has sent its CONNECT and does not wait for the answer.
async fn queued_client(
    proxy: SocketAddr,
    certs: &Certs,
    level: u8,
    id: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut s = tls_connect(proxy, certs, false)
        .await
        .unwrap_or_else(|e| panic!("{id}: TLS: {e}"));
    s.write_all(&connect_packet(level, id))
        .await
        .expect("CONNECT");
    s.flush().await.expect("flush");
    s
}

/// The CONNACK code a client that already sent its CONNECT reads.
async fn connack(s: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Option<u8> {
    connack_code(s).await
}

/// One `mqttlb broker` node behind a tap, capped at one connection, and a
/// proxy whose pool queue has `size` places and `timeout`.
async fn one_capped_node(
    certs: &Certs,
    size: usize,
    timeout: &str,
) -> (BrokerUnderTest, Tap, ProxyUnderTest) {
    let node = BrokerUnderTest::start(|_| {}).await;
    let tap = Tap::start(node.addr, Duration::ZERO).await;
    let pool = format!(
        "{}\nqueue = {{ size = {size}, timeout = \"{timeout}\" }}",
        servers(&[("n1", tap.addr, 1)])
    );
    let proxy = ProxyUnderTest::start(&config(certs, &[], "", &pool), certs.dir.path()).await;
    (node, tap, proxy)
}

fn queue_length(proxy: &ProxyUnderTest) -> f64 {
    proxy.metric("mqttlb_pool_queue_length{pool=\"brokers\"}")
}

fn admissions(proxy: &ProxyUnderTest, result: &str) -> f64 {
    proxy.metric(&format!(
        "mqttlb_pool_admissions_total{{pool=\"brokers\",result=\"{result}\"}}"
    ))
}

async fn wait_queue(proxy: &ProxyUnderTest, n: f64) {
    wait_until(&format!("{n} clients queued"), DEADLINE, || async {
        queue_length(proxy) == n
    })
    .await;
}

/// `servers = [...]` of named nodes with caps (0: none).
fn servers(nodes: &[(&str, SocketAddr, u32)]) -> String {
    let list: Vec<String> = nodes
        .iter()
        .map(|(name, addr, cap)| {
            format!("{{ name = \"{name}\", addr = \"{addr}\", max_connections = {cap} }}")
        })
        .collect();
    format!("servers = [ {} ]", list.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_holds_the_configured_rate_at_the_brokers() {
    const RATE: usize = 25;
    const CLIENTS: usize = 100;
    let certs = Arc::new(Certs::new());
    let n1 = BrokerUnderTest::start(|_| {}).await;
    let n2 = BrokerUnderTest::start(|_| {}).await;
    let t1 = Tap::start(n1.addr, Duration::ZERO).await;
    let t2 = Tap::start(n2.addr, Duration::ZERO).await;
    let pool = format!(
        "strategy = \"round-robin\"\nmax_connect_rate = {RATE}\nqueue = {{ size = 1000, timeout = \"30s\" }}"
    );
    let proxy = ProxyUnderTest::start(
        &config(&certs, &[("n1", t1.addr), ("n2", t2.addr)], "", &pool),
        certs.dir.path(),
    )
    .await;

    // A storm: every client at once, none backing off.
    let held = storm(proxy.addr, &certs, "storm", CLIENTS, false).await;
    for (i, (_, code)) in held.iter().enumerate() {
        assert_eq!(*code, Some(0), "storm-{i} is served");
    }

    // What the brokers saw, from their side.
    let mut at: Vec<Instant> = t1.seen().iter().chain(&t2.seen()).map(|s| s.at).collect();
    at.sort();
    assert_eq!(at.len(), CLIENTS);
    for i in 0..at.len() {
        for j in i..at.len() {
            let span = (at[j] - at[i]).as_secs_f64();
            let allowed = RATE as f64 * (1.0 + span) + 5.0;
            assert!(
                (j - i + 1) as f64 <= allowed,
                "{} CONNECTs reached the brokers within {span:.3} s (at most {allowed:.0} at {RATE}/s with one second's burst)",
                j - i + 1
            );
        }
    }
    // 75 clients past the burst need three seconds of tokens.
    let spread = (at[CLIENTS - 1] - at[0]).as_secs_f64();
    assert!(
        spread >= 2.5,
        "the storm reached the brokers in {spread:.3} s"
    );
    wait_until("every session on a broker", DEADLINE, || async {
        n1.metric("mqttlb_broker_connections_active")
            + n2.metric("mqttlb_broker_connections_active")
            == CLIENTS as f64
    })
    .await;
    assert_eq!(
        admissions(&proxy, "immediate") + admissions(&proxy, "paced"),
        CLIENTS as f64
    );
    assert!(admissions(&proxy, "paced") >= (CLIENTS - RATE - 5) as f64);
    assert_eq!(admissions(&proxy, "queue_full"), 0.0);
    assert_eq!(queue_length(&proxy), 0.0);
    assert!(
        proxy.metric("mqttlb_pool_queue_wait_seconds_count{pool=\"brokers\"}")
            == admissions(&proxy, "paced")
    );
}

/// `n` clients at once through `proxy`, each in its own task (MQTT 3.1.1
/// and 5.0 alternating when `mixed`), none backing off: their streams,
/// held open, and CONNACK codes, in order.
async fn storm(
    proxy: SocketAddr,
    certs: &Arc<Certs>,
    prefix: &str,
    n: usize,
    mixed: bool,
) -> Vec<(tokio_rustls::client::TlsStream<TcpStream>, Option<u8>)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let certs = certs.clone();
            let id = format!("{prefix}-{i}");
            let level = if mixed && i % 2 == 1 { 5 } else { 4 };
            tokio::spawn(async move { client(proxy, &certs, level, &id).await })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("client task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_server_busy_and_a_freed_slot_lets_the_next_in() {
    let certs = Certs::new();
    let mosquitto = Mosquitto::start().await;
    let tap = Tap::start(mosquitto.addr(), Duration::ZERO).await;
    let pool = format!(
        "{}\nqueue = {{ size = 2, timeout = \"30s\" }}",
        servers(&[("m1", tap.addr, 1)])
    );
    let proxy = ProxyUnderTest::start(&config(&certs, &[], "", &pool), certs.dir.path()).await;
    let (holder, code) = client(proxy.addr, &certs, 4, "holder").await;
    assert_eq!(code, Some(0));
    // The node is at its cap: two wait, in order.
    let mut first = queued_client(proxy.addr, &certs, 5, "first").await;
    wait_queue(&proxy, 1.0).await;
    let mut second = queued_client(proxy.addr, &certs, 4, "second").await;
    wait_queue(&proxy, 2.0).await;
    // Full: refused at once, in each protocol's words.
    let (_, busy5) = client(proxy.addr, &certs, 5, "refused-5").await;
    assert_eq!(busy5, Some(0x89), "MQTT 5: server busy");
    let (_, busy3) = client(proxy.addr, &certs, 4, "refused-3").await;
    assert_eq!(busy3, Some(3), "MQTT 3.1.1: server unavailable");
    assert_eq!(proxy.rejected("queue_full"), 2.0);
    assert_eq!(admissions(&proxy, "queue_full"), 2.0);
    assert!(!tap.saw("refused-5") && !tap.saw("refused-3"));

    // The holder leaves: the first in line takes its slot, then the next.
    drop(holder);
    assert_eq!(connack(&mut first).await, Some(0), "first is let in");
    wait_queue(&proxy, 1.0).await;
    assert!(!tap.saw("second"), "second still waits: the node is full");
    drop(first);
    assert_eq!(connack(&mut second).await, Some(0), "second is let in");
    assert_eq!(queue_length(&proxy), 0.0);
    assert_eq!(admissions(&proxy, "paced"), 2.0);
    assert_eq!(tap.clients(), 3, "holder, first, second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_timeout_answers_server_busy() {
    let certs = Certs::new();
    let (_node, tap, proxy) = one_capped_node(&certs, 10, "1s").await;
    let (_holder, code) = client(proxy.addr, &certs, 4, "holder").await;
    assert_eq!(code, Some(0));
    let started = Instant::now();
    let mut v5 = queued_client(proxy.addr, &certs, 5, "late-5").await;
    let mut v3 = queued_client(proxy.addr, &certs, 4, "late-3").await;
    assert_eq!(connack(&mut v5).await, Some(0x89));
    assert_eq!(connack(&mut v3).await, Some(3));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1),
        "refused after {waited:?}, before the queue timeout"
    );
    assert_eq!(
        read_to_close(&mut v5).await,
        [0x00],
        "the CONNACK's empty properties, then the close"
    );
    assert_eq!(proxy.rejected("queue_timeout"), 2.0);
    assert_eq!(admissions(&proxy, "queue_timeout"), 2.0);
    assert_eq!(queue_length(&proxy), 0.0);
    assert_eq!(tap.clients(), 1, "only the holder reached the node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_the_queue_is_gone_at_once_and_never_reaches_a_broker() {
    let certs = Certs::new();
    let (_node, tap, proxy) = one_capped_node(&certs, 10, "30s").await;
    let (holder, code) = client(proxy.addr, &certs, 4, "holder").await;
    assert_eq!(code, Some(0));
    // Waits, and sends a packet behind its CONNECT (legitimate: readable
    // is not gone).
    let mut stays = queued_client(proxy.addr, &certs, 4, "stays").await;
    stays
        .write_all(&[0xc0, 0x00])
        .await
        .expect("PINGREQ behind the CONNECT");
    wait_queue(&proxy, 1.0).await;
    // One closes (FIN), one resets (RST): each leaves the queue at once,
    // well before the 30 s timeout.
    let fin = queued_client(proxy.addr, &certs, 5, "fin").await;
    wait_queue(&proxy, 2.0).await;
    let rst = queued_client(proxy.addr, &certs, 4, "rst").await;
    wait_queue(&proxy, 3.0).await;
    let left = Instant::now();
    let (mut tcp, _) = fin.into_inner();
    tcp.shutdown().await.expect("FIN");
    wait_queue(&proxy, 2.0).await;
    let (tcp_rst, _) = rst.into_inner();
    socket2::SockRef::from(&tcp_rst)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
    drop(tcp_rst);
    wait_queue(&proxy, 1.0).await;
    assert!(left.elapsed() < Duration::from_secs(10));
    assert_eq!(admissions(&proxy, "abandoned"), 2.0);
    assert_eq!(proxy.rejected("queue_abandoned"), 2.0);

    // The one that stayed is let in when the holder leaves; its PINGREQ
    // went to the broker behind its CONNECT.
    drop(holder);
    assert_eq!(connack(&mut stays).await, Some(0));
    let mut pingresp = [0u8; 2];
    tokio::time::timeout(DEADLINE, stays.read_exact(&mut pingresp))
        .await
        .expect("PINGRESP in time")
        .expect("PINGRESP");
    assert_eq!(pingresp, [0xd0, 0x00]);
    assert!(tap.saw("stays"));
    assert!(
        !tap.saw("fin") && !tap.saw("rst"),
        "the leavers never reached it"
    );
    assert_eq!(tap.clients(), 2);
    assert_eq!(queue_length(&proxy), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_caps_skip_a_full_node_and_hold_clients_until_a_slot_frees_or_a_reload_raises_it() {
    let certs = Certs::new();
    let n1 = BrokerUnderTest::start(|_| {}).await;
    let n2 = BrokerUnderTest::start(|_| {}).await;
    let t1 = Tap::start(n1.addr, Duration::ZERO).await;
    let t2 = Tap::start(n2.addr, Duration::ZERO).await;
    let pool = |cap1: u32| {
        format!(
            "strategy = \"client-id\"\n{}\nqueue = {{ size = 10, timeout = \"30s\" }}",
            servers(&[("n1", t1.addr, cap1), ("n2", t2.addr, 3)])
        )
    };
    let text = config(&certs, &[], "", &pool(2));
    let proxy = ProxyUnderTest::start(&text, certs.dir.path()).await;
    let admin = start_admin(&proxy).await;

    // Client-id routing sends these where their hash says, until a node
    // is full: then to the next node of their ranking.
    let mut held = Vec::new();
    for i in 0..5 {
        let (s, code) = client(proxy.addr, &certs, 4, &format!("capped-{i}")).await;
        assert_eq!(code, Some(0), "capped-{i}");
        held.push((format!("capped-{i}"), s));
    }
    assert_eq!(
        (t1.clients(), t2.clients()),
        (2, 3),
        "each node up to its cap"
    );
    let (status, body) = http(admin, "GET", "/api/v1/backends").await;
    assert_eq!(status, 200);
    let backends: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    for b in backends.as_array().expect("array") {
        assert_eq!(b["at_cap"], true, "{b}");
        let cap = if b["name"] == "n1" { 2 } else { 3 };
        assert_eq!(b["max_connections"], cap, "{b}");
    }

    // Every node full: the next client waits, and takes the first slot
    // that frees.
    let mut waiting = queued_client(proxy.addr, &certs, 4, "waits").await;
    wait_queue(&proxy, 1.0).await;
    let (status, body) = http(admin, "GET", "/api/v1/pools").await;
    assert_eq!(status, 200);
    let pools: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(pools[0]["admission"]["queued"], 1, "{body}");
    assert_eq!(pools[0]["admission"]["pacing"], true, "{body}");
    let on_n1 = held
        .iter()
        .position(|(id, _)| t1.saw(id))
        .expect("a client on n1");
    drop(held.remove(on_n1));
    assert_eq!(connack(&mut waiting).await, Some(0));
    assert!(t1.saw("waits"), "it took n1's freed slot");
    assert_eq!(t2.clients(), 3, "n2 got no more");

    // A reload raises n1's cap: a client waiting gets in without anyone
    // leaving, and the queue it waited in is the same one.
    let mut next = queued_client(proxy.addr, &certs, 4, "raised").await;
    wait_queue(&proxy, 1.0).await;
    let raw = mqttlb::config::parse_toml("reload.toml", &config(&certs, &[], "", &pool(3)))
        .expect("parses");
    let reloaded =
        mqttlb::config::Config::from_raw("reload.toml", certs.dir.path(), raw).expect("converts");
    proxy.handle.reload(reloaded).await.expect("reload");
    assert_eq!(connack(&mut next).await, Some(0));
    assert!(t1.saw("raised"));
    assert_eq!(queue_length(&proxy), 0.0);
    assert_eq!(admissions(&proxy, "paced"), 2.0);
    assert_eq!(
        proxy.metric("mqttlb_backend_connections_active{backend=\"n1\"}"),
        3.0
    );
}

/// A pool of a fast node and a node whose CONNACKs come 1.2 s after the
/// CONNECT, `connack_timeout` 500 ms, passive `fall` 2 (TCP checks pass).
fn slow_pool(fast: SocketAddr, slow: SocketAddr, admission: &str) -> String {
    format!(
        "strategy = \"round-robin\"\nconnack_timeout = \"500ms\"\nhealth = {{ interval = \"60s\", rise = 2, fall = 2 }}\n{}\n{admission}",
        servers(&[("fast", fast, 0), ("slow", slow, 0)])
    )
}

const CONNACK_DELAY: Duration = Duration::from_millis(1200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_cascade_a_slow_survivor_stays_in_rotation_while_the_pool_paces() {
    const CLIENTS: usize = 30;
    let certs = Arc::new(Certs::new());
    let n1 = BrokerUnderTest::start(|_| {}).await;
    let n2 = BrokerUnderTest::start(|_| {}).await;
    let fast = Tap::start(n1.addr, Duration::ZERO).await;
    let slow = Tap::start(n2.addr, CONNACK_DELAY).await;
    let pool = slow_pool(
        fast.addr,
        slow.addr,
        "max_connect_rate = 5\nqueue = { size = 1000, timeout = \"10s\" }",
    );
    let proxy = ProxyUnderTest::start(&config(&certs, &[], "", &pool), certs.dir.path()).await;
    let served = storm(proxy.addr, &certs, "s", CLIENTS, true).await;
    for (i, (_, code)) in served.iter().enumerate() {
        assert_eq!(*code, Some(0), "s-{i} is served");
    }
    let late = proxy.metric("mqttlb_backend_connacks_total{backend=\"slow\",result=\"late\"}");
    assert_eq!(
        late as usize,
        slow.clients(),
        "every CONNACK of the slow node came late and reached its client"
    );
    assert!(late >= 10.0, "{late} late CONNACKs");
    assert_eq!(
        proxy.metric("mqttlb_backend_connect_errors_total{backend=\"slow\"}"),
        0.0
    );
    assert!(proxy.backend_up("slow"), "the slow node stayed in rotation");
    assert_eq!(
        proxy.metric("mqttlb_backend_connacks_total{backend=\"slow\",result=\"timeout\"}"),
        0.0
    );
    assert_eq!(
        fast.clients() + slow.clients(),
        CLIENTS,
        "nobody failed over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_nothing_waits_and_a_slow_node_still_leaves_rotation() {
    let certs = Arc::new(Certs::new());
    let n1 = BrokerUnderTest::start(|_| {}).await;
    let n2 = BrokerUnderTest::start(|_| {}).await;
    let fast = Tap::start(n1.addr, Duration::ZERO).await;
    let slow = Tap::start(n2.addr, CONNACK_DELAY).await;
    let proxy = ProxyUnderTest::start(
        &config(&certs, &[], "", &slow_pool(fast.addr, slow.addr, "")),
        certs.dir.path(),
    )
    .await;
    let admin = start_admin(&proxy).await;
    let (_, body) = http(admin, "GET", "/api/v1/pools").await;
    let pools: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(pools[0]["admission"]["max_connect_rate"], 0, "{body}");
    assert_eq!(pools[0]["admission"]["queue_size"], 10_000, "{body}");
    let (_, body) = http(admin, "GET", "/api/v1/backends").await;
    let backends: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    for b in backends.as_array().expect("array") {
        assert_eq!(b["max_connections"], 0, "{b}");
        assert_eq!(b["at_cap"], false, "{b}");
    }

    // Twenty at once: nobody waits. The slow node's clients fail over to
    // the fast one after connack_timeout, as always, and after `fall`
    // misses the slow node leaves rotation.
    for (i, (_, code)) in storm(proxy.addr, &certs, "d", 20, false)
        .await
        .iter()
        .enumerate()
    {
        assert_eq!(*code, Some(0), "d-{i} is served");
    }
    wait_until("the slow node leaves rotation", DEADLINE, || async {
        !proxy.backend_up("slow")
    })
    .await;
    assert_eq!(admissions(&proxy, "immediate"), 20.0);
    for result in ["paced", "queue_full", "queue_timeout", "abandoned"] {
        assert_eq!(admissions(&proxy, result), 0.0, "{result}");
    }
    assert_eq!(
        proxy.metric("mqttlb_backend_connacks_total{backend=\"slow\",result=\"late\"}"),
        0.0
    );
    assert!(
        proxy.metric("mqttlb_backend_connacks_total{backend=\"slow\",result=\"timeout\"}") >= 2.0
    );
    assert_eq!(queue_length(&proxy), 0.0);
    assert_eq!(
        proxy.metric("mqttlb_pool_queue_wait_seconds_count{pool=\"brokers\"}"),
        0.0
    );
}
