//! Hot reload under traffic: 500 clients exchange QoS 1 messages through
//! the proxy while its certificate and backends change and a broken
//! configuration is refused (a missing certificate, a certificate file of
//! garbage, a file that is not TOML). Zero connections lost, zero messages
//! lost.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use mqttlb::config::{Config, Overrides};
use mqttlb::proxy::Proxy;
use prometheus_client::registry::Registry;
use rumqttc::{MqttOptions, QoS, TlsConfiguration, Transport};
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 500;
const ROUNDS: u8 = 6;

fn proxy_config(certs: &Certs, servers: &[(&str, SocketAddr, u32)], cert_ok: bool) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|(n, a, w)| format!("{{ name = \"{n}\", addr = \"{a}\", weight = {w} }}"))
        .collect();
    let cert = if cert_ok {
        certs.p("server.pem")
    } else {
        certs.p("missing.pem")
    };
    format!(
        r#"
[[listener]]
name = "mqtts"
listen = "127.0.0.1:0"
pool = "brokers"
backlog = 1024
[listener.tls]
cert = "{cert}"
key = "{key}"
[listener.mqtt]

[pool.brokers]
strategy = "client-id"
health = {{ check = "mqtt", interval = "300ms", timeout = "1s", rise = 1, fall = 3 }}
servers = [ {servers} ]

[limits]
drain_timeout = "5s"
"#,
        key = certs.p("server.key"),
        servers = servers.join(", "),
    )
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
}

/// Can a fresh TLS client that trusts `certs`' CA complete a handshake?
async fn handshake_trusting(addr: SocketAddr, certs: &Certs) -> bool {
    tls_connect(addr, certs, false).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_certificates_and_backends_under_traffic_loses_nothing() {
    let old_certs = Certs::new();
    let new_certs = Certs::new(); // a different CA: tells which cert is served
    let nodes = [
        BrokerUnderTest::start(|_| {}).await,
        BrokerUnderTest::start(|_| {}).await,
        BrokerUnderTest::start(|_| {}).await,
    ];
    let (a, b, c) = (nodes[0].addr, nodes[1].addr, nodes[2].addr);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mqttlb.toml");
    write(
        &path,
        &proxy_config(&old_certs, &[("a", a, 1), ("b", b, 1)], true),
    );

    let config = Config::load(Some(&path), &Overrides::default()).expect("config");
    let mut registry = Registry::default();
    let proxy = Proxy::build(config, &mut registry)
        .expect("build")
        .with_source(path.clone(), Overrides::default());
    let registry = Arc::new(registry);
    let handle = proxy.handle();
    let listeners = proxy.bind().expect("bind");
    let addr = listeners[0].local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(proxy.run(listeners, shutdown.clone()));

    // 500 clients, each subscribed to its own topic.
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut opts = MqttOptions::new(format!("c{i}"), "localhost", addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_inflight(10);
        opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
            ca: old_certs.read("ca.pem"),
            alpn: None,
            client_auth: None,
        }));
        clients.push(MqttClient::start(opts));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.connack().await;
        c.subscribe(&format!("r/c{i}"), QoS::AtLeastOnce).await;
    }
    let on_b = nodes[1].metric("mqttlb_broker_connections_active");
    assert!(on_b > 0.0, "some clients live on node b");

    for round in 0..ROUNDS {
        for (i, c) in clients.iter().enumerate() {
            c.client
                .publish(format!("r/c{i}"), QoS::AtLeastOnce, false, vec![round])
                .await
                .expect("publish");
        }
        // Reloads while this round's messages are in flight.
        match round {
            1 => {
                // New certificate (new CA), node b removed (drains), node
                // c added, node a reweighted.
                write(
                    &path,
                    &proxy_config(&new_certs, &[("a", a, 3), ("c", c, 1)], true),
                );
                let summary = handle.reload_from_source().await.expect("reload applies");
                assert_eq!(summary.backends_removed, vec!["b".to_string()]);
                assert_eq!(summary.backends_added, vec!["c".to_string()]);
            }
            3 => {
                // A configuration whose certificate is unreadable: refused,
                // the running one stays.
                write(&path, &proxy_config(&new_certs, &[("c", c, 1)], false));
                let err = handle.reload_from_source().await.expect_err("refused");
                assert!(err.to_string().contains("missing.pem"), "{err}");
            }
            4 => {
                // The certificate file is there but holds garbage: refused.
                let junk = Certs::new();
                std::fs::write(junk.path("server.pem"), "not a certificate\n").expect("write");
                write(&path, &proxy_config(&junk, &[("c", c, 1)], true));
                let err = handle.reload_from_source().await.expect_err("refused");
                assert!(err.to_string().contains("server.pem"), "{err}");
            }
            5 => {
                // Not even TOML: refused with the line, the running
                // configuration stays.
                write(&path, "[[listener]\nname = ");
                let err = handle.reload_from_source().await.expect_err("refused");
                assert!(err.to_string().contains("line"), "{err}");
            }
            _ => {}
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let m = c.message().await;
            assert_eq!(m.topic, format!("r/c{i}"));
            assert_eq!(
                &m.payload[..],
                &[round],
                "client {i} got round {round} in order"
            );
        }
    }

    // Nothing was lost: every event loop is still running, node b still
    // serves the clients it had (drained, not cut).
    assert!(
        clients.iter().all(|c| !c.task.is_finished()),
        "no connection lost"
    );
    assert_eq!(nodes[1].metric("mqttlb_broker_connections_active"), on_b);
    assert_eq!(
        metric_sample(&registry, "mqttlb_config_reloads_total{result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        metric_sample(&registry, "mqttlb_config_reloads_total{result=\"error\"}"),
        3.0
    );

    // New handshakes get the new certificate; the reweighted, reduced pool
    // serves new clients on a or c only.
    assert!(
        handshake_trusting(addr, &new_certs).await,
        "new certificate served"
    );
    assert!(
        !handshake_trusting(addr, &old_certs).await,
        "old certificate retired"
    );
    let backends = handle.backends();
    let names: Vec<(&str, u32)> = backends
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(names, [("a", 3), ("c", 1)]);
    for i in 0..20 {
        let id = format!("new-{i}");
        let mut s = tls_connect(addr, &new_certs, false).await.expect("TLS");
        assert_eq!(mqtt_connect(&mut s, 4, &id).await, Some(0));
        assert!(
            !nodes[1].broker.is_online(&id),
            "{id} not sent to the removed node"
        );
    }

    shutdown.cancel();
    drop(clients);
    let _ = tokio::time::timeout(DEADLINE, task).await;
}

/// Listeners come and go with the configuration; the others keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_listeners() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut raw = common::proxy_config(&certs, &[("node1", node.addr)]);
    let base = raw.to_toml();
    let proxy = ProxyUnderTest::start(&base, certs.dir.path()).await;
    let load = |text: &str| {
        let raw = mqttlb::config::parse_toml("reload.toml", text).expect("parses");
        Config::from_raw("reload.toml", certs.dir.path(), raw).expect("converts")
    };
    raw.listener
        .push(RawListener::mqtt("plain", "127.0.0.1:0", "brokers"));
    let with_plain = raw.to_toml();
    let summary = proxy
        .handle
        .reload(load(&with_plain))
        .await
        .expect("reload");
    assert_eq!(summary.listeners_added, ["plain"]);
    let plain_addr = proxy
        .handle
        .listeners()
        .into_iter()
        .find(|(n, _)| n == "plain")
        .map(|(_, a)| a)
        .expect("plain listener running");
    let mut s = tokio::net::TcpStream::connect(plain_addr)
        .await
        .expect("connect plain");
    assert_eq!(mqtt_connect(&mut s, 4, "plain-client").await, Some(0));

    let summary = proxy.handle.reload(load(&base)).await.expect("reload");
    assert_eq!(summary.listeners_removed, ["plain"]);
    wait_until("plain listener closed", DEADLINE, || async {
        tokio::net::TcpStream::connect(plain_addr).await.is_err()
    })
    .await;
    // Its open connection and the TLS listener both keep working.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(&[0xc0, 0x00]).await.expect("ping");
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong).await.expect("pong");
    assert_eq!(pong, [0xd0, 0x00]);
    let mut t = tls_connect(proxy.addr, &certs, false).await.expect("TLS");
    assert_eq!(mqtt_connect(&mut t, 5, "tls-client").await, Some(0));
}

/// Rate-limit state belongs to the listener, not to a generation: a reload
/// keeps a client id's spent budget spent, and applies a lowered limit to
/// the buckets it already holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_spent_rate_budgets_and_applies_new_limits() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut raw = common::proxy_config(&certs, &[("node1", node.addr)]);
    raw.limits.client_connect_rate = Some(2); // per minute, bursts of 2
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;
    let connect = |id: &'static str| {
        let certs = &certs;
        let addr = proxy.addr;
        async move {
            let mut s = tls_connect(addr, certs, false).await.expect("TLS");
            mqtt_connect(&mut s, 4, id).await
        }
    };
    assert_eq!(connect("flappy").await, Some(0));
    assert_eq!(connect("flappy").await, Some(0));
    assert_eq!(connect("flappy").await, Some(3), "budget spent");
    let config = |rate: u32| {
        let mut raw = raw.clone();
        raw.limits.client_connect_rate = Some(rate);
        let raw = mqttlb::config::parse_toml("t.toml", &raw.to_toml()).expect("parses");
        mqttlb::config::Config::from_raw("t.toml", certs.dir.path(), raw).expect("converts")
    };
    proxy.handle.reload(config(2)).await.expect("reload");
    assert_eq!(
        connect("flappy").await,
        Some(3),
        "still refused right after the reload"
    );
    assert_eq!(connect("steady").await, Some(0));
    proxy.handle.reload(config(1)).await.expect("reload");
    assert_eq!(connect("fresh").await, Some(0));
    assert_eq!(connect("fresh").await, Some(3), "the lowered limit applies");
}
