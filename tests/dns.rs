//! Backends given by DNS name: every address the name resolves to becomes
//! a node (here `localhost`, answered from /etc/hosts by the pure-Rust
//! resolver that also serves the container image).

mod common;

use common::*;

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
