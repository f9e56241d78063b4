//! `[[listener.route]]`: one listener sends clients to different pools of
//! real brokers (in-process `mqttlb broker` nodes, one per pool) by SNI,
//! client-id prefix, user-name prefix and client-certificate CN; the first
//! rule that matches wins, no match takes the listener's pool; a routed
//! pool with no node answers CONNACK "server unavailable"; SNI routes a
//! TLS pass-through listener; a reload's rules serve new connections.
//!
//! Where a client landed is read from the brokers themselves (which one
//! holds its session online), not from the proxy.

mod common;

use std::net::SocketAddr;

use common::*;
use mqttlb::certs::{CLIENT_CN, DevCerts};
use mqttlb::config::raw::{RawConfig, RawPool, RawRoute};
use mqttlb::config::{Config, parse_toml};
use mqttlb::mqtt::ProtocolVersion;
use rcgen::ExtendedKeyUsagePurpose;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Dev certificates whose server certificate also names the test's hosts.
fn certs() -> Certs {
    let dir = tempfile::tempdir().expect("tempdir");
    let hosts = [
        "*.tenant-a.example.com",
        "deep.x.tenant-a.example.com",
        "mqtt.example.com",
    ]
    .map(String::from);
    DevCerts::generate(&hosts, CLIENT_CN)
        .expect("generate")
        .write(dir.path())
        .expect("write certs");
    let certs = Certs { dir };
    // A client certificate with CN "dev-42" (the dev one is "mqttlb-dev-client").
    certs.issue(
        "dev-42",
        &leaf("dev-42", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
    );
    certs
}

/// A route as the file would say it.
fn route(name: Option<&str>, pool: &str, edit: impl FnOnce(&mut RawRoute)) -> RawRoute {
    let mut r = RawRoute {
        name: name.map(String::from),
        pool: Some(pool.into()),
        ..RawRoute::default()
    };
    edit(&mut r);
    r
}

/// The standard test proxy (pool `brokers` of `main`) with client
/// certificates optional, more pools of one node each, and `routes`.
fn routed_config(
    certs: &Certs,
    main: SocketAddr,
    pools: &[(&str, SocketAddr)],
    routes: Vec<RawRoute>,
) -> RawConfig {
    let mut raw = proxy_config(certs, &[("main", main)]);
    let tls = tls_of(&mut raw);
    tls.client_auth = Some("optional".into());
    tls.client_ca = Some(certs.p("ca.pem"));
    for (name, addr) in pools {
        let addr = addr.to_string();
        let pool = raw.pool_mut(name);
        *pool = RawPool::of(&[(name, &addr)]);
        pool.health_mut().interval = Some("200ms".into());
    }
    raw.listener[0].route = routes;
    raw
}

/// TLS to the proxy for `sni` (presenting `identity`'s certificate), then
/// a 3.1.1 CONNECT; returns the stream and the CONNACK's return code.
async fn connect(
    proxy: &ProxyUnderTest,
    certs: &Certs,
    sni: &str,
    identity: Option<&str>,
    client_id: &str,
    username: Option<&str>,
) -> (TlsStream<TcpStream>, u8) {
    let mut s = tls_connect_named(proxy.addr, None, certs, identity, sni)
        .await
        .expect("TLS handshake");
    let connect =
        mqttlb::mqtt::packets::encode_connect(ProtocolVersion::V311, client_id, 30, username, None);
    s.write_all(&connect).await.expect("CONNECT");
    let mut connack = [0u8; 4];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut connack))
        .await
        .expect("CONNACK before the deadline")
        .expect("CONNACK");
    assert_eq!(connack[..2], [0x20, 0x02], "{client_id}: a CONNACK");
    (s, connack[3])
}

/// Which of `nodes` holds `client_id` online, once one does (exactly one
/// must).
async fn holder<'a>(nodes: &'a [(&'a str, &BrokerUnderTest)], client_id: &str) -> &'a str {
    wait_until(&format!("{client_id} online"), DEADLINE, || async {
        nodes.iter().any(|(_, n)| n.broker.is_online(client_id))
    })
    .await;
    let online: Vec<&str> = nodes
        .iter()
        .filter(|(_, n)| n.broker.is_online(client_id))
        .map(|(name, _)| *name)
        .collect();
    assert_eq!(online.len(), 1, "{client_id} is online at {online:?}");
    online[0]
}

/// SNI, client certificate, client id, user name → the pool that must
/// get the client.
type Case = (
    &'static str,
    Option<&'static str>,
    &'static str,
    Option<&'static str>,
    &'static str,
);

fn routed(proxy: &ProxyUnderTest, route: &str, pool: &str) -> f64 {
    proxy.metric(&format!(
        "mqttlb_connections_routed_total{{listener=\"mqtts\",route=\"{route}\",pool=\"{pool}\"}}"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_client_id_username_and_cn_rules_route_to_their_pools() {
    let certs = certs();
    let main = BrokerUnderTest::start(|_| {}).await;
    let tenant = BrokerUnderTest::start(|_| {}).await;
    let factory = BrokerUnderTest::start(|_| {}).await;
    let ops = BrokerUnderTest::start(|_| {}).await;
    // The devices pool sends PROXY v2 (the listener's own pool sends none):
    // its broker requires one and takes the certificate CN from it.
    let devices = BrokerUnderTest::start(|c| {
        c.proxy_protocol = mqttlb::config::broker::ProxyIn::Required;
        c.cn_as_username = true;
    })
    .await;
    let mut raw = routed_config(
        &certs,
        main.addr,
        &[
            ("tenant-a", tenant.addr),
            ("factory", factory.addr),
            ("ops", ops.addr),
            ("devices", devices.addr),
        ],
        vec![
            route(Some("tenant-a"), "tenant-a", |r| {
                r.sni = Some("*.tenant-a.example.com".into())
            }),
            route(None, "factory", |r| {
                r.client_id_prefix = Some("factory-7/".into())
            }),
            route(Some("ops"), "ops", |r| {
                r.username_prefix = Some("ops-".into())
            }),
            route(Some("devices"), "devices", |r| {
                r.cert_cn_prefix = Some("dev-".into())
            }),
        ],
    );
    raw.pool_mut("devices").proxy_protocol = Some("v2".into());
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;
    let nodes = [
        ("main", &main),
        ("tenant-a", &tenant),
        ("factory", &factory),
        ("ops", &ops),
        ("devices", &devices),
    ];

    let cases: [Case; 10] = [
        ("x.tenant-a.example.com", None, "t-1", None, "tenant-a"),
        ("Y.Tenant-A.Example.COM", None, "t-2", None, "tenant-a"),
        // A wildcard is one label: two more fall through.
        ("deep.x.tenant-a.example.com", None, "t-3", None, "main"),
        ("localhost", None, "factory-7/press-1", None, "factory"),
        // Both the SNI rule and the client-id rule match: the first wins.
        (
            "x.tenant-a.example.com",
            None,
            "factory-7/press-2",
            None,
            "tenant-a",
        ),
        // Prefixes are case-sensitive bytes.
        ("localhost", None, "Factory-7/press-3", None, "main"),
        ("localhost", None, "u-1", Some("ops-anna"), "ops"),
        ("localhost", None, "u-2", Some("op"), "main"),
        ("mqtt.example.com", Some("dev-42"), "d-1", None, "devices"),
        // The dev client certificate's CN is "mqttlb-dev-client".
        ("localhost", Some("client"), "d-2", None, "main"),
    ];
    let mut open = Vec::new();
    for (sni, identity, client_id, username, pool) in cases {
        let (s, code) = connect(&proxy, &certs, sni, identity, client_id, username).await;
        assert_eq!(code, 0, "{client_id} accepted");
        open.push(s);
        assert_eq!(
            holder(&nodes, client_id).await,
            pool,
            "{client_id} via {sni}"
        );
    }
    assert_eq!(
        devices.broker.username_of("d-1").as_deref(),
        Some("dev-42"),
        "the routed pool's own PROXY header, with the client's CN"
    );
    assert_eq!(routed(&proxy, "tenant-a", "tenant-a"), 3.0);
    assert_eq!(
        routed(&proxy, "route1", "factory"),
        1.0,
        "default name route{{i}}"
    );
    assert_eq!(routed(&proxy, "ops", "ops"), 1.0);
    assert_eq!(routed(&proxy, "devices", "devices"), 1.0);
    assert_eq!(routed(&proxy, "default", "brokers"), 4.0);

    // Pools only routes name are running pools: checked like any other.
    for backend in ["tenant-a", "factory", "ops", "devices"] {
        wait_until(&format!("{backend} health-checked"), DEADLINE, || async {
            proxy.metric(&format!(
                "mqttlb_health_checks_total{{backend=\"{backend}\",result=\"ok\"}}"
            )) > 0.0
        })
        .await;
    }
    let status = proxy.handle.backends();
    assert_eq!(
        status.len(),
        5,
        "every pool's node in the admin API: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_pool_without_a_node_answers_server_unavailable() {
    let certs = certs();
    let main = BrokerUnderTest::start(|_| {}).await;
    // A port nobody listens on.
    let gone = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let raw = routed_config(
        &certs,
        main.addr,
        &[("gone", gone)],
        vec![route(Some("gone"), "gone", |r| {
            r.client_id_prefix = Some("lost/".into())
        })],
    );
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;
    // Its checks (a pool only a route names is checked too) take it out.
    wait_until("the routed pool's node down", DEADLINE, || async {
        proxy.metric("mqttlb_backend_up{backend=\"gone\"}") == 0.0
    })
    .await;

    let (mut s, code) = connect(&proxy, &certs, "localhost", None, "lost/1", None).await;
    assert_eq!(code, 3, "CONNACK server unavailable");
    assert!(read_to_close(&mut s).await.is_empty(), "then closed");
    assert_eq!(proxy.rejected("no_backend"), 1.0);
    assert_eq!(routed(&proxy, "gone", "gone"), 1.0);
    // The listener's own pool is untouched.
    let (_s, code) = connect(&proxy, &certs, "localhost", None, "kept/1", None).await;
    assert_eq!(code, 0);
    assert_eq!(holder(&[("main", &main)], "kept/1").await, "main");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_routes_a_tls_pass_through_listener() {
    let certs = certs();
    let main = BrokerUnderTest::start(|_| {}).await;
    let tenant = BrokerUnderTest::start(|_| {}).await;
    let mut raw = routed_config(
        &certs,
        main.addr,
        &[("tenant-a", tenant.addr)],
        vec![route(Some("tenant-a"), "tenant-a", |r| {
            r.sni = Some("*.tenant-a.example.com".into())
        })],
    );
    raw.listener[0].mqtt = None; // pass-through: the CONNECT is not read
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;
    let nodes = [("main", &main), ("tenant-a", &tenant)];

    let (_a, code) = connect(&proxy, &certs, "b.tenant-a.example.com", None, "p-1", None).await;
    assert_eq!(code, 0);
    assert_eq!(holder(&nodes, "p-1").await, "tenant-a");
    let (_b, code) = connect(&proxy, &certs, "mqtt.example.com", None, "p-2", None).await;
    assert_eq!(code, 0);
    assert_eq!(holder(&nodes, "p-2").await, "main");
    assert_eq!(
        proxy.metric("mqttlb_mqtt_connects_total{listener=\"mqtts\",protocol=\"3.1.1\"}"),
        0.0,
        "no CONNECT was read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_rules_for_new_connections() {
    let certs = certs();
    let main = BrokerUnderTest::start(|_| {}).await;
    let a = BrokerUnderTest::start(|_| {}).await;
    let b = BrokerUnderTest::start(|_| {}).await;
    let pools = [("a", a.addr), ("b", b.addr)];
    let config = |pool: &str| {
        let raw = routed_config(
            &certs,
            main.addr,
            &pools,
            vec![route(Some("fleet"), pool, |r| {
                r.client_id_prefix = Some("r-".into())
            })],
        );
        raw.to_toml()
    };
    let proxy = ProxyUnderTest::start(&config("a"), certs.dir.path()).await;
    let nodes = [("main", &main), ("a", &a), ("b", &b)];

    let (mut before, code) = connect(&proxy, &certs, "localhost", None, "r-1", None).await;
    assert_eq!(code, 0);
    assert_eq!(holder(&nodes, "r-1").await, "a");

    let next = parse_toml("test.toml", &config("b")).expect("parses");
    let next = Config::from_raw("test.toml", certs.dir.path(), next).expect("valid");
    proxy.handle.reload(next).await.expect("reload");

    let (_after, code) = connect(&proxy, &certs, "localhost", None, "r-2", None).await;
    assert_eq!(code, 0);
    assert_eq!(
        holder(&nodes, "r-2").await,
        "b",
        "new connections: the new rule"
    );
    // The open connection stays where it was and still works: PINGREQ.
    before.write_all(&[0xC0, 0x00]).await.expect("PINGREQ");
    let mut pong = [0u8; 2];
    tokio::time::timeout(DEADLINE, before.read_exact(&mut pong))
        .await
        .expect("PINGRESP before the deadline")
        .expect("PINGRESP");
    assert_eq!(pong, [0xD0, 0x00]);
    assert_eq!(holder(&nodes, "r-1").await, "a");
    // The metric follows the configuration: the old rule's series went.
    assert_eq!(routed(&proxy, "fleet", "b"), 1.0);
    let text = mqttlb::metrics::encode(&proxy.registry);
    assert!(!text.contains("route=\"fleet\",pool=\"a\""), "{text}");
}
