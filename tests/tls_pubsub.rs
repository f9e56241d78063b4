//! Publish/subscribe end to end through mqttlb over TLS, with real clients
//! (mosquitto_pub/mosquitto_sub and rumqttc) and a real Mosquitto broker.

mod common;

use std::time::Duration;

use common::*;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::process::Command;

fn sub_cmd(proxy: &ProxyUnderTest, certs: &Certs, id: &str, topic: &str, version: &str) -> Command {
    let mut c = Command::new("mosquitto_sub");
    c.args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args([
            "--cafile",
            &certs.p("ca.pem"),
            "-i",
            id,
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "15",
            "-V",
            version,
        ]);
    c
}

fn pub_cmd(
    proxy: &ProxyUnderTest,
    certs: &Certs,
    id: &str,
    topic: &str,
    msg: &str,
    version: &str,
) -> Command {
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-p", &proxy.addr.port().to_string()])
        .args([
            "--cafile",
            &certs.p("ca.pem"),
            "-i",
            id,
            "-t",
            topic,
            "-m",
            msg,
            "-q",
            "1",
            "-V",
            version,
        ]);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_pub_sub_over_tls_on_311_and_5() {
    let certs = Certs::new();
    let broker = Mosquitto::start().await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("node1", broker.addr())]).await;

    let mut cases = 0;
    for version in ["mqttv311", "mqttv5"] {
        let sub_id = format!("sub-{version}");
        let mut sub = sub_cmd(&proxy, &certs, &sub_id, "t/hello", version);
        let sub = tokio::spawn(async move { run(&mut sub).await });
        wait_until(
            "subscriber connected through the proxy",
            DEADLINE,
            || async { broker.saw_client(&sub_id) },
        )
        .await;
        // The SUBSCRIBE follows the CONNECT; publish until it is delivered
        // (QoS 1, bounded attempts) since the exact SUBACK moment is not
        // observable from here.
        let delivered = async {
            for i in 0..50 {
                let (ok, out) = run(&mut pub_cmd(
                    &proxy,
                    &certs,
                    &format!("pub-{version}-{i}"),
                    "t/hello",
                    "hello",
                    version,
                ))
                .await;
                assert!(ok, "mosquitto_pub failed: {out}");
                if sub.is_finished() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        delivered.await;
        let (ok, out) = sub.await.expect("subscriber task");
        assert!(ok, "mosquitto_sub failed: {out}");
        assert_eq!(out.trim(), "hello");
        cases += 1;
    }
    assert_eq!(cases, 2);
    assert!(
        proxy.metric("mqttlb_mqtt_connects_total{listener=\"mqtts\",protocol=\"3.1.1\"}") >= 2.0
    );
    assert!(proxy.metric("mqttlb_mqtt_connects_total{listener=\"mqtts\",protocol=\"5.0\"}") >= 2.0);
    assert!(proxy.metric("mqttlb_tls_handshakes_total{listener=\"mqtts\",result=\"ok\"}") >= 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_round_trip_over_tls() {
    let certs = Certs::new();
    let broker = Mosquitto::start().await;
    let proxy = ProxyUnderTest::in_front_of(&certs, &[("node1", broker.addr())]).await;

    let mut opts = MqttOptions::new("rumqttc-1", "localhost", proxy.addr.port());
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_transport(Transport::Tls(TlsConfiguration::Simple {
        ca: certs.read("ca.pem"),
        alpn: Some(vec![b"mqtt".to_vec()]),
        client_auth: None,
    }));
    let (client, mut events) = AsyncClient::new(opts, 16);
    client
        .subscribe("r/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let got = tokio::time::timeout(DEADLINE, async {
        loop {
            match events.poll().await.expect("connection stays up") {
                Event::Incoming(Packet::SubAck(_)) => {
                    client
                        .publish("r/1", QoS::AtLeastOnce, false, vec![0u8, 255, 7])
                        .await
                        .expect("publish");
                }
                Event::Incoming(Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("message comes back before the deadline");
    assert_eq!(got.topic, "r/1");
    assert_eq!(&got.payload[..], &[0u8, 255, 7]);
    assert!(broker.saw_client("rumqttc-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_required_refuses_clients_without_a_certificate() {
    let certs = Certs::new();
    let broker = Mosquitto::start().await;
    let mut raw = proxy_config(&certs, &[("node1", broker.addr())]);
    tls_of(&mut raw).client_auth = Some("required".into());
    tls_of(&mut raw).client_ca = Some(certs.p("ca.pem"));
    let proxy = ProxyUnderTest::start(&raw.to_toml(), certs.dir.path()).await;

    let (ok, _) = run(&mut pub_cmd(
        &proxy, &certs, "no-cert", "m/t", "x", "mqttv311",
    ))
    .await;
    assert!(!ok, "a client without a certificate must be refused");
    assert!(!broker.saw_client("no-cert"));

    let (ok, out) = run(
        pub_cmd(&proxy, &certs, "with-cert", "m/t", "x", "mqttv311").args([
            "--cert",
            &certs.p("client.pem"),
            "--key",
            &certs.p("client.key"),
        ]),
    )
    .await;
    assert!(ok, "a client with a valid certificate is served: {out}");
    assert!(broker.saw_client("with-cert"));
    assert!(
        proxy.metric("mqttlb_tls_handshakes_total{listener=\"mqtts\",result=\"failed\"}") >= 1.0
    );
}
