//! The proxy's start-up sequence in-process (`mqttlb::launch::proxy`): a
//! plain start (admin API, readiness notification), a start on sockets
//! passed as systemd passes them, and a takeover from a running proxy in
//! the same process — the new one serves on the very same listening and
//! admin sockets, the old one stops and drains.
#![cfg(unix)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use mqttlb::config::Config;
use mqttlb::config::raw::{RawAdmin, RawConfig, RawUpgrade};
use mqttlb::launch::{Launched, Notify, ProxyLaunch};
use mqttlb::upgrade::InheritedListener;
use tokio::net::UnixDatagram;

fn load(raw: &RawConfig, base: &Path) -> Config {
    let raw = mqttlb::config::parse_toml("test.toml", &raw.to_toml()).expect("config parses");
    Config::from_raw("test.toml", base, raw).expect("config converts")
}

/// A config with a TLS listener on `listen` in front of `broker`, an
/// admin API on `admin` and, when given, an upgrade socket.
fn raw_config(
    certs: &Certs,
    broker: SocketAddr,
    listen: SocketAddr,
    admin: SocketAddr,
    upgrade: Option<&Path>,
) -> RawConfig {
    let mut raw = proxy_config(certs, &[("node1", broker)]);
    raw.listener[0].listen = Some(listen.to_string());
    raw.limits.drain_timeout = Some("2s".into());
    raw.admin = Some(RawAdmin {
        listen: Some(admin.to_string()),
        ..RawAdmin::default()
    });
    raw.upgrade = upgrade.map(|s| RawUpgrade {
        socket: Some(s.display().to_string()),
        timeout: Some("10s".into()),
    });
    raw
}

/// TLS, CONNECT, CONNACK accepted through `addr`, bounded.
async fn served(addr: SocketAddr, certs: &Certs, id: &str) -> bool {
    let attempt = async {
        let mut s = tls_connect(addr, certs, false).await.ok()?;
        mqtt_connect(&mut s, 4, id).await
    };
    matches!(tokio::time::timeout(DEADLINE, attempt).await, Ok(Some(0)))
}

/// The next readiness notification, bounded.
async fn notification(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(DEADLINE, socket.recv(&mut buf))
        .await
        .expect("a notification within the deadline")
        .expect("recv");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn listener_addr(proxy: &Launched) -> SocketAddr {
    proxy.handle.listeners()[0].1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_start_serves_answers_admin_and_says_ready() {
    let certs = Certs::new();
    let broker = BrokerUnderTest::start(|_| {}).await;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let raw = raw_config(&certs, broker.addr, any, any, None);
    let notify_path = certs.path("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    let proxy = mqttlb::launch::proxy(ProxyLaunch {
        notify: Notify::To(notify_path),
        ..ProxyLaunch::new(load(&raw, certs.dir.path()))
    })
    .await
    .expect("launch");
    assert!(!proxy.took_over);
    assert_eq!(notification(&notify).await, "READY=1");
    let admin = proxy.admin.expect("admin API runs");
    assert_eq!(http(admin, "GET", "/healthz").await.0, 200);
    let (status, body) = http(admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("mqttlb_admin_connections_rejected_total"),
        "the admin server registers its own metrics"
    );
    assert!(served(listener_addr(&proxy), &certs, "plain").await);
    let shutdown = proxy.shutdown.clone();
    let run = tokio::spawn(proxy.run());
    shutdown.cancel();
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("stops within the deadline")
        .expect("run task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_systemd_sockets_serves_on_them() {
    let certs = Certs::new();
    let broker = BrokerUnderTest::start(|_| {}).await;
    // As systemd passes it: bound and listening, without SO_REUSEPORT, so
    // that binding the same address afresh would fail.
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("local addr");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let raw = raw_config(&certs, broker.addr, addr, any, None);
    let proxy = mqttlb::launch::proxy(ProxyLaunch {
        inherited: vec![InheritedListener {
            name: Some("mqtts".into()),
            addr,
            sockets: vec![socket],
        }],
        notify: Notify::Off,
        ..ProxyLaunch::new(load(&raw, certs.dir.path()))
    })
    .await
    .expect("launch on the inherited socket");
    assert_eq!(listener_addr(&proxy), addr);
    assert!(served(addr, &certs, "activated").await);
    proxy.shutdown.cancel();
    tokio::time::timeout(DEADLINE, proxy.run())
        .await
        .expect("stops within the deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_serves_on_the_same_sockets_and_the_old_proxy_drains() {
    let certs = Certs::new();
    let broker = BrokerUnderTest::start(|_| {}).await;
    let sock = certs.path("upgrade.sock");
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let old_raw = raw_config(&certs, broker.addr, any, any, Some(&sock));
    let old = mqttlb::launch::proxy(ProxyLaunch {
        notify: Notify::Off,
        ..ProxyLaunch::new(load(&old_raw, certs.dir.path()))
    })
    .await
    .expect("launch the old proxy");
    let addr = listener_addr(&old);
    let admin = old.admin.expect("admin API runs");
    assert!(served(addr, &certs, "before").await);
    let old_run = tokio::spawn(old.run());

    // The new proxy asks for the same addresses: it gets the very sockets.
    let new_raw = raw_config(&certs, broker.addr, addr, admin, Some(&sock));
    let notify_path = certs.path("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    let new = mqttlb::launch::proxy(ProxyLaunch {
        takeover: Some(sock.clone()),
        notify: Notify::To(notify_path),
        ..ProxyLaunch::new(load(&new_raw, certs.dir.path()))
    })
    .await
    .expect("take over");
    assert!(new.took_over);
    assert_eq!(listener_addr(&new), addr);
    assert_eq!(new.admin, Some(admin), "the admin socket crossed too");
    let said = notification(&notify).await;
    assert_eq!(
        said,
        format!("MAINPID={}\nREADY=1", std::process::id()),
        "after a takeover the new process is the service's main one"
    );

    // The old one stops accepting and drains (nothing is open: at once).
    tokio::time::timeout(DEADLINE, old_run)
        .await
        .expect("the old proxy stops after the takeover")
        .expect("old run task");
    assert!(served(addr, &certs, "after").await);
    assert_eq!(http(admin, "GET", "/healthz").await.0, 200);
    // It owns the upgrade socket now: a third process could take over.
    assert!(sock.exists(), "upgrade socket served by the new proxy");

    new.shutdown.cancel();
    tokio::time::timeout(DEADLINE, new.run())
        .await
        .expect("stops within the deadline");
}
