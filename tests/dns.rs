//! Backends given by DNS name: every address the name resolves to becomes
//! a node (here `localhost`, answered from /etc/hosts by the pure-Rust
//! resolver that also serves the container image).

mod common;

use std::sync::Arc;

use common::*;
use mqttlb::balance::Backend;
use mqttlb::config::raw::{RawListener, RawPool, RawResolver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_name_becomes_one_node_per_address() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut raw = proxy_config(&certs, &[]);
    let pool = raw.pool_mut("brokers");
    pool.resolve_interval = Some("1s".into());
    pool.servers.push(RawServer {
        name: Some("brokers".into()),
        addr: format!("localhost:{}", node.addr.port()),
        weight: None,
        max_connections: None,
    });
    let text = raw.to_toml();
    let proxy = ProxyUnderTest::start(&text, certs.dir.path()).await;
    wait_until("localhost resolved into a node", DEADLINE, || async {
        proxy
            .handle
            .backends()
            .iter()
            .any(|b| b.name == "brokers/127.0.0.1")
    })
    .await;
    let b = proxy
        .handle
        .backends()
        .into_iter()
        .find(|b| b.name == "brokers/127.0.0.1")
        .expect("node");
    assert_eq!(b.addr, node.addr);
    let mut s = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut s, 4, "via-dns").await, Some(0));
    wait_until("client reached the resolved node", DEADLINE, || async {
        node.broker.is_online("via-dns")
    })
    .await;
}

/// Node `n` of pool `pool`, when it is a current node.
fn node(proxy: &ProxyUnderTest, pool: &str, n: &str) -> Option<Arc<Backend>> {
    proxy.pool_named(pool).find(n)
}

fn checks(proxy: &ProxyUnderTest, n: &str) -> f64 {
    proxy.metric(&format!(
        "mqttlb_health_checks_total{{backend=\"{n}\",result=\"ok\"}}"
    ))
}

/// A broker on `ip` and a given port (DNS names one port for all nodes).
async fn broker_on(ip: &str, port: u16) -> BrokerUnderTest {
    let listener = tokio::net::TcpListener::bind((ip, port))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}:{port}: {e}"));
    BrokerUnderTest::start_on(listener, |_| {})
}

/// The answer for one pool's name changes at a real DNS server (dnsmasq):
/// exactly the changed node comes and goes, with its health checks; the
/// node that stays keeps its identity and its checks; the other pool is
/// not touched.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_change_touches_only_its_pool_and_only_the_changed_nodes() {
    let certs = Certs::new();
    // Two nodes behind one name: same port, two loopback addresses.
    let first = broker_on("127.0.0.2", 0).await;
    let port = first.addr.port();
    let second = broker_on("127.0.0.3", port).await;
    let fixed = BrokerUnderTest::start(|_| {}).await;
    let mut dns = common::dnsmasq::Dnsmasq::start("127.0.0.2 fleet.test\n").await;

    let mut raw = proxy_config(&certs, &[]);
    raw.resolver = Some(RawResolver {
        nameservers: Some(vec![dns.addr.to_string()]),
        timeout: Some("500ms".into()),
    });
    let pool = raw.pool_mut("brokers");
    pool.resolve_interval = Some("200ms".into());
    pool.health_mut().interval = Some("200ms".into());
    pool.servers.push(RawServer {
        name: Some("fleet".into()),
        addr: format!("fleet.test:{port}"),
        weight: None,
        max_connections: None,
    });
    raw.listener.push(
        RawListener::mqtt("other", "127.0.0.1:0", "fixed")
            .with_tls(&certs.p("server.pem"), &certs.p("server.key")),
    );
    raw.pool.insert(
        "fixed".into(),
        RawPool::of(&[("s1", &fixed.addr.to_string())]),
    );
    raw.pool_mut("fixed").health_mut().interval = Some("200ms".into());
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;

    let (a, b) = ("fleet/127.0.0.2", "fleet/127.0.0.3");
    wait_until(
        "the first answer is a node that passes checks",
        DEADLINE,
        || async { checks(&proxy, a) >= 2.0 && checks(&proxy, "s1") >= 2.0 },
    )
    .await;
    assert!(node(&proxy, "brokers", b).is_none());
    let kept = node(&proxy, "brokers", a).expect("first node");
    let s1 = node(&proxy, "fixed", "s1").expect("static node");
    let s1_checks = checks(&proxy, "s1");

    // The name now has two addresses: exactly the new one is added, and
    // its checks start.
    dns.set_hosts("127.0.0.2 fleet.test\n127.0.0.3 fleet.test\n")
        .await;
    wait_until("the added node passes checks", DEADLINE, || async {
        checks(&proxy, b) >= 1.0
    })
    .await;
    let now = node(&proxy, "brokers", a).expect("first node stays");
    assert!(
        Arc::ptr_eq(&now, &kept),
        "the node that stays keeps its identity"
    );
    assert!(now.is_up() && !now.retired().is_cancelled());
    let other = node(&proxy, "fixed", "s1").expect("static node stays");
    assert!(
        Arc::ptr_eq(&other, &s1),
        "the other pool's node is untouched"
    );
    assert!(other.is_up());
    assert!(checks(&proxy, "s1") >= s1_checks, "its counters go on");
    assert_eq!(proxy.pool_named("brokers").backends().len(), 2);

    // The first address goes: exactly that node is retired, and its checks
    // stop — while the others' go on.
    dns.set_hosts("127.0.0.3 fleet.test\n").await;
    wait_until("the removed node leaves", DEADLINE, || async {
        node(&proxy, "brokers", a).is_none()
    })
    .await;
    assert!(kept.retired().is_cancelled(), "its tasks are told to stop");
    let gone_checks = first.metric("mqttlb_broker_connections_total");
    let (b_checks, s1_checks) = (checks(&proxy, b), checks(&proxy, "s1"));
    wait_until(
        "three more checks of the nodes that stay",
        DEADLINE,
        || async { checks(&proxy, b) >= b_checks + 3.0 && checks(&proxy, "s1") >= s1_checks + 3.0 },
    )
    .await;
    // One check may have been in flight when the node was removed.
    assert!(
        first.metric("mqttlb_broker_connections_total") <= gone_checks + 1.0,
        "no checks of the removed node any more"
    );
    assert!(Arc::ptr_eq(&node(&proxy, "fixed", "s1").expect("s1"), &s1));
    assert_eq!(proxy.pool_named("brokers").backends().len(), 1);
    drop(second);
}
