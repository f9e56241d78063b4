//! `mqttlb broker` against real third-party clients: rumqttc (3.1.1 and
//! 5.0) and mosquitto_pub/mosquitto_sub.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rumqttc::{LastWill, MqttOptions, QoS, SubscribeReasonCode};

type V4 = MqttClient;

/// A rumqttc 3.1.1 client straight to `addr`.
fn v4(addr: SocketAddr, id: &str, clean: bool, edit: impl FnOnce(&mut MqttOptions)) -> V4 {
    let mut opts = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    opts.set_clean_session(clean);
    opts.set_keep_alive(Duration::from_secs(10));
    edit(&mut opts);
    MqttClient::start(opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_and_retained_messages() {
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut sub = v4(node.addr, "sub", true, |_| {});
    sub.connack().await;
    assert_eq!(
        sub.subscribe("t/#", QoS::ExactlyOnce).await,
        vec![SubscribeReasonCode::Success(QoS::ExactlyOnce)]
    );
    let mut publ = v4(node.addr, "pub", true, |_| {});
    publ.connack().await;
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publ.publish(&format!("t/{i}"), qos, false, &[i as u8, 0, 255])
            .await;
        let m = sub.message().await;
        assert_eq!(m.topic, format!("t/{i}"));
        assert_eq!(m.qos, qos);
        assert_eq!(&m.payload[..], &[i as u8, 0, 255]);
        assert!(!m.retain);
    }

    // Retained: set, replace, delivered on subscribe with the retain flag.
    publ.publish("r/a", QoS::AtLeastOnce, true, b"one").await;
    publ.publish("r/a", QoS::AtLeastOnce, true, b"two").await;
    wait_until("retained stored", DEADLINE, || async {
        node.metric("mqttlb_broker_retained_messages") == 1.0
    })
    .await;
    let mut late = v4(node.addr, "late", true, |_| {});
    late.connack().await;
    late.subscribe("r/#", QoS::AtLeastOnce).await;
    let m = late.message().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..], m.retain),
        ("r/a", &b"two"[..], true)
    );

    // Cleared by an empty retained payload: a new subscriber gets only the
    // marker published after its subscription.
    publ.publish("r/a", QoS::AtLeastOnce, true, b"").await;
    wait_until("retained cleared", DEADLINE, || async {
        node.metric("mqttlb_broker_retained_messages") == 0.0
    })
    .await;
    let mut later = v4(node.addr, "later", true, |_| {});
    later.connack().await;
    later.subscribe("r/#", QoS::AtLeastOnce).await;
    publ.publish("r/marker", QoS::AtLeastOnce, false, b"m")
        .await;
    assert_eq!(later.message().await.topic, "r/marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_queues_while_offline_and_is_taken_over() {
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut dev = v4(node.addr, "dev", false, |_| {});
    assert!(!dev.connack().await, "first connect: no session");
    dev.subscribe("cmd/#", QoS::AtLeastOnce).await;
    dev.client.disconnect().await.expect("disconnect");
    wait_until("dev offline", DEADLINE, || async {
        !node.broker.is_online("dev")
    })
    .await;
    dev.task.abort();
    assert!(
        node.broker.has_session("dev"),
        "session outlives the connection"
    );

    let mut publ = v4(node.addr, "pub", true, |_| {});
    publ.connack().await;
    for i in 0..3u8 {
        publ.publish("cmd/x", QoS::AtLeastOnce, false, &[i]).await;
    }
    publ.publish("cmd/x", QoS::AtMostOnce, false, b"qos0").await;
    wait_until("queued offline", DEADLINE, || async {
        node.metric("mqttlb_broker_messages_dropped_total{reason=\"offline_qos0\"}") == 1.0
    })
    .await;

    let mut dev = v4(node.addr, "dev", false, |_| {});
    assert!(dev.connack().await, "session present on resume");
    for i in 0..3u8 {
        let m = dev.message().await;
        assert_eq!((&m.payload[..], m.qos), (&[i][..], QoS::AtLeastOnce));
    }

    // Takeover: a second connection with the same id closes the first.
    let mut thief = v4(node.addr, "dev", false, |_| {});
    assert!(thief.connack().await);
    tokio::time::timeout(DEADLINE, &mut dev.task)
        .await
        .expect("first connection closed by the takeover")
        .expect("event loop task");
    assert!(node.broker.is_online("dev"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_is_sent_on_abnormal_disconnect_only() {
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut watcher = v4(node.addr, "watcher", true, |_| {});
    watcher.connack().await;
    watcher.subscribe("will/#", QoS::AtLeastOnce).await;

    let will = |id: &'static str| {
        move |o: &mut MqttOptions| {
            o.set_last_will(LastWill::new(
                format!("will/{id}"),
                "gone",
                QoS::AtLeastOnce,
                false,
            ));
        }
    };
    // A clean DISCONNECT: no will.
    let mut polite = v4(node.addr, "polite", true, will("polite"));
    polite.connack().await;
    polite.client.disconnect().await.expect("disconnect");
    wait_until("polite gone", DEADLINE, || async {
        !node.broker.has_session("polite")
    })
    .await;
    // The socket just drops: will.
    let mut rude = v4(node.addr, "rude", true, will("rude"));
    rude.connack().await;
    rude.task.abort();
    let m = watcher.message().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("will/rude", &b"gone"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_filters_and_dollar_topics() {
    let node = BrokerUnderTest::start(|c| c.deny_subscribe = vec!["secret/#".into()]).await;
    let mut c = v4(node.addr, "c", true, |_| {});
    c.connack().await;
    assert_eq!(
        c.subscribe("secret/a", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Failure]
    );
    assert_eq!(
        c.subscribe("#", QoS::AtLeastOnce).await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    c.publish("$internal/x", QoS::AtLeastOnce, false, b"hidden")
        .await;
    c.publish("plain", QoS::AtLeastOnce, false, b"seen").await;
    let m = c.message().await;
    assert_eq!(m.topic, "plain", "'#' does not match $-topics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_properties_no_local_and_assigned_ids() {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet as P5, PublishProperties};
    use rumqttc::v5::{AsyncClient as C5, Event as E5, MqttOptions as O5};
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut opts = O5::new("", "127.0.0.1", node.addr.port());
    opts.set_clean_start(true);
    let (client, mut events) = C5::new(opts, 16);
    let mut no_local = Filter::new("p/own", Q5::AtLeastOnce);
    no_local.nolocal = true;
    client
        .subscribe_many([Filter::new("p/in", Q5::ExactlyOnce), no_local])
        .await
        .expect("subscribe");
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("text/plain".into()),
        response_topic: Some("p/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
        ..Default::default()
    };
    let got = tokio::time::timeout(DEADLINE, async {
        let mut assigned = None;
        loop {
            match events.poll().await.expect("connection stays up") {
                E5::Incoming(P5::ConnAck(c)) => {
                    assigned = c.properties.and_then(|p| p.assigned_client_identifier);
                }
                E5::Incoming(P5::SubAck(_)) => {
                    // Our own publish on the no-local filter must not come
                    // back; the one after it on p/in must.
                    client
                        .publish("p/own", Q5::AtLeastOnce, false, "own")
                        .await
                        .expect("publish");
                    client
                        .publish_with_properties(
                            "p/in",
                            Q5::ExactlyOnce,
                            false,
                            "in",
                            props.clone(),
                        )
                        .await
                        .expect("publish");
                }
                E5::Incoming(P5::Publish(p)) => return (assigned, p),
                _ => {}
            }
        }
    })
    .await
    .expect("message before the deadline");
    let (assigned, p) = got;
    assert!(
        assigned.is_some_and(|id| id.starts_with("auto-")),
        "server assigned an id"
    );
    assert_eq!(&p.topic[..], b"p/in");
    assert_eq!(p.qos, Q5::ExactlyOnce);
    let pp = p.properties.expect("properties forwarded");
    assert_eq!(pp.content_type.as_deref(), Some("text/plain"));
    assert_eq!(pp.response_topic.as_deref(), Some("p/reply"));
    assert_eq!(pp.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(pp.payload_format_indicator, Some(1));
    assert_eq!(pp.user_properties, props.user_properties);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_against_the_broker() {
    let node = BrokerUnderTest::start(|_| {}).await;
    let port = node.addr.port().to_string();
    for version in ["mqttv31", "mqttv311", "mqttv5"] {
        let topic = format!("m/{version}");
        let sub_id = format!("sub-{version}");
        let mut sub = tokio::process::Command::new("mosquitto_sub");
        sub.args(["-h", "127.0.0.1", "-p", &port, "-V", version, "-q", "2"])
            .args(["-i", &sub_id, "-t", &topic, "-C", "1", "-W", "15"]);
        let sub = tokio::spawn(async move { run(&mut sub).await });
        wait_until("subscription registered", DEADLINE, || async {
            node.metric("mqttlb_broker_subscriptions") == 1.0
        })
        .await;
        let (ok, out) = run(tokio::process::Command::new("mosquitto_pub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version,
            "-q",
            "2",
            "-t",
            &topic,
            "-m",
            "hello",
        ]))
        .await;
        assert!(ok, "mosquitto_pub: {out}");
        let (ok, out) = sub.await.expect("sub task");
        assert!(ok && out.trim() == "hello", "{version}: {out}");
        wait_until("subscriber session gone", DEADLINE, || async {
            node.metric("mqttlb_broker_subscriptions") == 0.0
        })
        .await;
    }
}

/// Raw MQTT 3.1.1 CONNECT with keep-alive and a will, built by hand so the
/// test controls exactly what is (not) sent afterwards.
fn connect_with_will(client_id: &str, keep_alive: u16, will_topic: &str) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x0e]); // clean, will QoS 1
    body.extend_from_slice(&keep_alive.to_be_bytes());
    for field in [client_id.as_bytes(), will_topic.as_bytes(), b"expired"] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field);
    }
    let mut out = vec![0x10, body.len() as u8];
    out.extend_from_slice(&body);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_cut_after_one_and_a_half_keep_alives_and_its_will_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut watcher = v4(node.addr, "watcher", true, |_| {});
    watcher.connack().await;
    watcher.subscribe("ka/#", QoS::AtLeastOnce).await;

    let mut raw = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    raw.write_all(&connect_with_will("silent", 1, "ka/silent"))
        .await
        .expect("CONNECT");
    let mut connack = [0u8; 4];
    raw.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    let started = tokio::time::Instant::now();
    // Send nothing more: the broker must close after 1.5 × 1 s.
    let closed = tokio::time::timeout(DEADLINE, async {
        let mut b = [0u8; 16];
        loop {
            match raw.read(&mut b).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "silent client closed");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "not before 1.5 × keep-alive: {:?}",
        started.elapsed()
    );
    let m = watcher.message().await;
    assert_eq!(
        (m.topic.as_str(), &m.payload[..]),
        ("ka/silent", &b"expired"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_header_required_refuses_direct_clients_and_serves_proxied_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = BrokerUnderTest::start(|c| {
        c.proxy_protocol = mqttlb::config::broker::ProxyIn::Required;
    })
    .await;
    // Without a header: closed, counted.
    let mut direct = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    direct
        .write_all(&connect_packet(4, "direct"))
        .await
        .expect("write");
    let got = read_to_close(&mut direct).await;
    assert!(got.is_empty(), "no CONNACK without a PROXY header: {got:?}");
    wait_until("refusal counted", DEADLINE, || async {
        node.metric("mqttlb_broker_connections_rejected_total{reason=\"proxy_header_missing\"}")
            == 1.0
    })
    .await;

    // With a v1 header: served.
    let mut proxied = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    let mut first = b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 1883\r\n".to_vec();
    first.extend_from_slice(&connect_packet(4, "proxied"));
    proxied.write_all(&first).await.expect("write");
    let mut connack = [0u8; 4];
    proxied.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    assert!(node.broker.is_online("proxied"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_qos1_is_redelivered_with_dup_after_reconnect() {
    use mqttlb::mqtt::codec::Packet as P;
    let v311 = mqttlb::mqtt::ProtocolVersion::V311;
    let node = BrokerUnderTest::start(|_| {}).await;
    let (mut s, connack) = RawMqtt::connect(node.addr, raw_connect(v311, "forgetful", false)).await;
    assert!(matches!(
        connack,
        P::Connack {
            session_present: false,
            code: 0,
            ..
        }
    ));
    s.subscribe("q/1", 1).await;

    let mut publ = v4(node.addr, "pub", true, |_| {});
    publ.connack().await;
    publ.publish("q/1", QoS::AtLeastOnce, false, b"again").await;
    let Some(P::Publish(first)) = s.read().await else {
        panic!("expected PUBLISH");
    };
    assert!(!first.dup);
    // Leave without PUBACK.
    drop(s);
    wait_until("offline", DEADLINE, || async {
        !node.broker.is_online("forgetful")
    })
    .await;

    let (mut s, connack) = RawMqtt::connect(node.addr, raw_connect(v311, "forgetful", false)).await;
    assert!(matches!(
        connack,
        P::Connack {
            session_present: true,
            code: 0,
            ..
        }
    ));
    let Some(P::Publish(again)) = s.read().await else {
        panic!("expected the redelivery");
    };
    assert!(again.dup, "redelivery carries DUP");
    assert_eq!(again.pkid, first.pkid);
    assert_eq!(&again.payload[..], b"again");
}

/// Hostile clients after a valid CONNECT — garbage, a second CONNECT, a
/// reserved packet type, an oversize length — are closed and counted by
/// reason, and a well-behaved client on the same broker never notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_are_closed_counted_and_isolated() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = BrokerUnderTest::start(|c| c.max_packet_size = 4096).await;
    let mut good = v4(node.addr, "good", true, |_| {});
    good.connack().await;
    good.subscribe("ok/#", QoS::AtLeastOnce).await;

    let attacks: [(&str, &[u8]); 4] = [
        ("malformed", &[0x30, 0x05, 0xff, 0xff, 0x61, 0x62, 0x63]),
        (
            "second_connect",
            &[0x10, 0x0c, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 30, 0, 0],
        ),
        ("malformed", &[0x00, 0x00]),
        ("packet_too_large", &[0x30, 0xff, 0xff, 0x7f]),
    ];
    for (i, (_, bytes)) in attacks.iter().enumerate() {
        let mut s = tokio::net::TcpStream::connect(node.addr)
            .await
            .expect("connect");
        s.write_all(&connect_packet(4, &format!("bad-{i}")))
            .await
            .expect("CONNECT");
        let mut connack = [0u8; 4];
        s.read_exact(&mut connack).await.expect("CONNACK");
        s.write_all(bytes).await.expect("attack");
        read_to_close(&mut s).await;
    }
    for reason in ["malformed", "second_connect", "packet_too_large"] {
        let want = attacks.iter().filter(|(r, _)| *r == reason).count() as f64;
        wait_until(reason, DEADLINE, || async {
            node.metric(&format!(
                "mqttlb_broker_disconnects_total{{reason=\"{reason}\"}}"
            )) == want
        })
        .await;
    }
    good.publish("ok/1", QoS::AtLeastOnce, false, b"unaffected")
        .await;
    assert_eq!(&good.message().await.payload[..], b"unaffected");
    assert!(!good.task.is_finished());
}
