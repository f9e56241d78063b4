//! MQTT 5 behaviour of `mqttlb broker`: rumqttc's v5 client where it can
//! express the case, a raw connection (mqttlb's codec) for protocol edges
//! a well-behaved client never produces.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use mqttlb::mqtt::ProtocolVersion::{V5, V311};
use mqttlb::mqtt::codec::{Packet as P, Properties, PublishPacket};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, LastWillProperties, RetainForwardRule, SubscribeProperties,
};

fn publish(topic: &str, qos: u8, pkid: u16, payload: &'static [u8], props: Properties) -> P {
    P::Publish(PublishPacket {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        pkid,
        props,
        payload: Bytes::from_static(payload),
    })
}

fn disconnect_code(p: Option<P>) -> Option<u8> {
    match p {
        Some(P::Disconnect { code, .. }) => Some(code),
        _ => None,
    }
}

/// Normal DISCONNECT; the broker closes and the client is offline.
async fn leave(raw: &mut RawMqtt, node: &BrokerUnderTest, client_id: &str) {
    raw.send(&P::Disconnect {
        code: 0,
        props: Properties::default(),
    })
    .await;
    assert_eq!(raw.read().await, None, "broker closes after DISCONNECT");
    wait_until("offline", DEADLINE, || async {
        !node.broker.is_online(client_id)
    })
    .await;
}

/// Read until the broker closes; the last DISCONNECT reason code seen.
async fn disconnect_reason(raw: &mut RawMqtt) -> Option<u8> {
    let mut last = None;
    while let Some(p) = raw.read().await {
        if let Some(c) = disconnect_code(Some(p)) {
            last = Some(c);
        }
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn will_delay_is_cancelled_by_a_resume_and_sent_otherwise() {
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut watcher = Mqtt5Client::start(node.addr, "watcher", |_| {});
    watcher.connack().await;
    watcher
        .client
        .subscribe("will/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    watcher.suback().await;

    let with_will = |payload: &'static str| {
        move |o: &mut rumqttc::v5::MqttOptions| {
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(60));
            o.set_last_will(LastWill::new(
                "will/dev",
                payload,
                QoS::AtLeastOnce,
                false,
                Some(LastWillProperties {
                    delay_interval: Some(1),
                    payload_format_indicator: None,
                    message_expiry_interval: None,
                    content_type: None,
                    response_topic: None,
                    correlation_data: None,
                    user_properties: Vec::new(),
                }),
            ));
        }
    };
    // First connection drops, but the client is back within the delay: its
    // will ("first") must never be published.
    let mut first = Mqtt5Client::start(node.addr, "dev", with_will("first"));
    first.connack().await;
    first.task.abort();
    wait_until("dev offline", DEADLINE, || async {
        !node.broker.is_online("dev")
    })
    .await;
    let mut second = Mqtt5Client::start(node.addr, "dev", with_will("second"));
    assert!(second.connack().await.0, "session resumed");
    // Second connection drops for good: its will comes after the delay.
    second.task.abort();
    let m = watcher.message().await;
    assert_eq!(&m.topic[..], b"will/dev");
    assert_eq!(
        &m.payload[..],
        b"second",
        "the resumed session's will was cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_set_on_connect_and_changed_on_disconnect() {
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut c = raw_connect(V5, "exp", true);
    c.props.session_expiry = Some(300);
    let (mut raw, _) = RawMqtt::connect(node.addr, c.clone()).await;
    leave(&mut raw, &node, "exp").await;
    assert!(
        node.broker.has_session("exp"),
        "kept for its expiry interval"
    );

    c.clean = false;
    let (mut raw, connack) = RawMqtt::connect(node.addr, c).await;
    assert!(matches!(
        connack,
        P::Connack {
            session_present: true,
            ..
        }
    ));
    raw.send(&P::Disconnect {
        code: 0,
        props: Properties {
            session_expiry: Some(0),
            ..Properties::default()
        },
    })
    .await;
    assert_eq!(raw.read().await, None);
    wait_until(
        "session dropped on DISCONNECT expiry 0",
        DEADLINE,
        || async { !node.broker.has_session("exp") },
    )
    .await;

    // Zero on CONNECT, non-zero on DISCONNECT: a protocol error.
    let (mut raw, _) = RawMqtt::connect(node.addr, raw_connect(V5, "exp0", true)).await;
    raw.send(&P::Disconnect {
        code: 0,
        props: Properties {
            session_expiry: Some(60),
            ..Properties::default()
        },
    })
    .await;
    assert_eq!(disconnect_reason(&mut raw).await, Some(0x82));
}

#[tokio::test]
async fn message_expiry_is_decremented_and_expired_messages_are_dropped() {
    let node = BrokerUnderTest::start(|_| {}).await;
    // An offline persistent session collects two messages: one that
    // expires in 1 s, one in 60 s.
    let mut c = raw_connect(V5, "late", true);
    c.props.session_expiry = Some(600);
    let (mut raw, _) = RawMqtt::connect(node.addr, c.clone()).await;
    raw.subscribe("e/#", 1).await;
    leave(&mut raw, &node, "late").await;

    let (mut publ, _) = RawMqtt::connect(node.addr, raw_connect(V5, "pub", true)).await;
    for (topic, secs, pkid) in [("e/short", 1, 1), ("e/long", 60, 2)] {
        let props = Properties {
            message_expiry: Some(secs),
            ..Properties::default()
        };
        publ.send(&publish(topic, 1, pkid, b"x", props)).await;
        assert!(matches!(publ.read().await, Some(P::Ack { .. })));
    }
    // The behaviour under test is the passage of time itself: advance the
    // (in-process) broker's clock rather than wait.
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(2100)).await;
    tokio::time::resume();

    c.clean = false;
    let (mut raw, _) = RawMqtt::connect(node.addr, c).await;
    let Some(P::Publish(p)) = raw.read().await else {
        panic!("expected a PUBLISH")
    };
    assert_eq!(p.topic, "e/long", "the expired message was dropped");
    let left = p.props.message_expiry.expect("expiry forwarded");
    assert!((1..60).contains(&left), "decremented: {left}");
    wait_until("expiry counted", DEADLINE, || async {
        node.metric("mqttlb_broker_messages_dropped_total{reason=\"expired\"}") == 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receive_maximum_exceeded_disconnects_with_0x93() {
    let node = BrokerUnderTest::start(|c| c.receive_maximum = 2).await;
    let (mut raw, connack) = RawMqtt::connect(node.addr, raw_connect(V5, "greedy", true)).await;
    let P::Connack { props, .. } = connack else {
        panic!("CONNACK")
    };
    assert_eq!(props.receive_maximum, Some(2));
    // QoS 2 publishes stay in flight until PUBREL, which is never sent.
    for pkid in 1..=3 {
        raw.send(&publish("rm", 2, pkid, b"x", Properties::default()))
            .await;
    }
    assert_eq!(disconnect_reason(&mut raw).await, Some(0x93));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_aliases_from_clients() {
    let node = BrokerUnderTest::start(|c| c.topic_alias_maximum = 4).await;
    let mut sub = Mqtt5Client::start(node.addr, "sub", |_| {});
    sub.connack().await;
    sub.client
        .subscribe("alias/#", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    sub.suback().await;

    let (mut raw, _) = RawMqtt::connect(node.addr, raw_connect(V5, "aliaser", true)).await;
    let alias = |n| Properties {
        topic_alias: Some(n),
        ..Properties::default()
    };
    raw.send(&publish("alias/one", 0, 0, b"1", alias(1))).await;
    raw.send(&publish("", 0, 0, b"2", alias(1))).await;
    for payload in [b"1", b"2"] {
        let m = sub.message().await;
        assert_eq!(
            (&m.topic[..], &m.payload[..]),
            (&b"alias/one"[..], &payload[..])
        );
    }
    // Beyond the advertised maximum: DISCONNECT 0x94.
    raw.send(&publish("alias/two", 0, 0, b"3", alias(5))).await;
    assert_eq!(disconnect_reason(&mut raw).await, Some(0x94));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_identifiers_and_retain_handling() {
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut publ = Mqtt5Client::start(node.addr, "pub", |_| {});
    publ.connack().await;
    publ.client
        .publish("rh/t", QoS::AtLeastOnce, true, "kept")
        .await
        .expect("publish");
    wait_until("retained", DEADLINE, || async {
        node.metric("mqttlb_broker_retained_messages") == 1.0
    })
    .await;

    let mut c = Mqtt5Client::start(node.addr, "c", |_| {});
    c.connack().await;
    let filter = |rule| {
        let mut f = Filter::new("rh/#", QoS::AtLeastOnce);
        f.retain_forward_rule = rule;
        f
    };
    let id = |n| SubscribeProperties {
        id: Some(n),
        user_properties: vec![],
    };
    // Retain handling 2: never send retained on subscribe.
    c.client
        .subscribe_many_with_properties([filter(RetainForwardRule::Never)], id(7))
        .await
        .expect("subscribe");
    c.suback().await;
    publ.client
        .publish("rh/live", QoS::AtLeastOnce, false, "live")
        .await
        .expect("publish");
    let m = c.message().await;
    assert_eq!(
        &m.topic[..],
        b"rh/live",
        "no retained message with handling 2"
    );
    assert_eq!(
        m.properties.map(|p| p.subscription_identifiers),
        Some(vec![7]),
        "subscription id forwarded"
    );
    // Retain handling 1 on an existing subscription: nothing; on a new one:
    // the retained message.
    c.client
        .subscribe_many_with_properties([filter(RetainForwardRule::OnNewSubscribe)], id(8))
        .await
        .expect("subscribe");
    c.suback().await;
    let mut fresh = Mqtt5Client::start(node.addr, "fresh", |_| {});
    fresh.connack().await;
    fresh
        .client
        .subscribe_many([filter(RetainForwardRule::OnNewSubscribe)])
        .await
        .expect("subscribe");
    fresh.suback().await;
    let r = fresh.message().await;
    assert_eq!((&r.topic[..], r.retain), (&b"rh/t"[..], true));
    publ.client
        .publish("rh/live", QoS::AtLeastOnce, false, "again")
        .await
        .expect("publish");
    let m = c.message().await;
    assert_eq!(
        &m.payload[..],
        b"again",
        "re-subscribing with handling 1 sent no retained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_split_the_load() {
    let node = BrokerUnderTest::start(|_| {}).await;
    let mut members = Vec::new();
    for id in ["w1", "w2"] {
        let mut c = Mqtt5Client::start(node.addr, id, |_| {});
        c.connack().await;
        c.client
            .subscribe("$share/workers/jobs/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        c.suback().await;
        members.push(c);
    }
    let mut publ = Mqtt5Client::start(node.addr, "pub", |_| {});
    publ.connack().await;
    for i in 0..10u8 {
        publ.client
            .publish("jobs/x", QoS::AtLeastOnce, false, vec![i])
            .await
            .expect("publish");
    }
    let mut seen = Vec::new();
    for m in &mut members {
        for _ in 0..5 {
            seen.push(m.message().await.payload[0]);
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<u8>>(),
        "each job once, five each"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_packet_size_both_ways() {
    let node = BrokerUnderTest::start(|c| c.max_packet_size = 1024).await;
    // A client that accepts at most 100-byte packets is not sent larger ones.
    let mut c = raw_connect(V5, "small", true);
    c.props.maximum_packet_size = Some(100);
    let (mut small, _) = RawMqtt::connect(node.addr, c).await;
    small.subscribe("mp/#", 0).await;
    let (mut publ, connack) = RawMqtt::connect(node.addr, raw_connect(V5, "pub", true)).await;
    let P::Connack { props, .. } = connack else {
        panic!("CONNACK")
    };
    assert_eq!(props.maximum_packet_size, Some(1024));
    publ.send(&publish("mp/big", 0, 0, &[7u8; 200], Properties::default()))
        .await;
    publ.send(&publish("mp/small", 0, 0, b"ok", Properties::default()))
        .await;
    let Some(P::Publish(p)) = small.read().await else {
        panic!("PUBLISH")
    };
    assert_eq!(p.topic, "mp/small", "the oversize message was not sent");
    assert_eq!(
        node.metric("mqttlb_broker_messages_dropped_total{reason=\"too_large_for_client\"}"),
        1.0
    );
    // A client sending more than the broker's maximum: DISCONNECT 0x95.
    publ.send(&publish(
        "mp/huge",
        0,
        0,
        &[0u8; 2000],
        Properties::default(),
    ))
    .await;
    assert_eq!(disconnect_reason(&mut publ).await, Some(0x95));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_counted() {
    let node = BrokerUnderTest::start(|c| c.max_queued_messages = 5).await;
    // Receive maximum 1 and no PUBACK: one message in flight, the rest queue.
    let mut c = raw_connect(V5, "slow", true);
    c.props.receive_maximum = Some(1);
    let (mut slow, _) = RawMqtt::connect(node.addr, c).await;
    slow.subscribe("sc/#", 1).await;
    let (mut publ, _) = RawMqtt::connect(node.addr, raw_connect(V311, "pub", true)).await;
    for pkid in 1..=10 {
        publ.send(&publish("sc/x", 1, pkid, b"x", Properties::default()))
            .await;
    }
    assert_eq!(
        disconnect_reason(&mut slow).await,
        Some(0x97),
        "quota exceeded"
    );
    assert!(node.metric("mqttlb_broker_messages_dropped_total{reason=\"slow_consumer\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_links_need_the_secret_and_never_come_through_a_proxy() {
    use mqttlb::config::broker::{ProxyIn, Secret};
    let node = BrokerUnderTest::start(|c| {
        c.mesh_secret = Some(Secret("s3cret".into()));
        c.proxy_protocol = ProxyIn::Optional;
    })
    .await;
    let peer_id = "$mqttlb-peer/intruder";
    let (_, connack) = RawMqtt::connect(node.addr, raw_connect(V311, peer_id, true)).await;
    assert!(
        matches!(connack, P::Connack { code: 0x05, .. }),
        "no secret: {connack:?}"
    );
    let mut c = raw_connect(V5, peer_id, true);
    c.password = Some(Bytes::from_static(b"s3cret"));
    let (_, connack) = RawMqtt::connect(node.addr, c).await;
    assert!(matches!(connack, P::Connack { code: 0, .. }), "{connack:?}");
    // The right secret behind a PROXY header (a client of the proxy).
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = raw_connect(V5, peer_id, true);
    c.password = Some(Bytes::from_static(b"s3cret"));
    let mut first = bytes::BytesMut::from(&b"PROXY TCP4 203.0.113.9 127.0.0.1 5000 1883\r\n"[..]);
    mqttlb::mqtt::codec::encode(&P::Connect(Box::new(c)), V5, &mut first);
    let mut s = tokio::net::TcpStream::connect(node.addr)
        .await
        .expect("connect");
    s.write_all(&first).await.expect("write");
    let mut connack = [0u8; 5];
    s.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack[3], 0x87, "not authorized through a proxy");
    assert_eq!(
        node.metric(
            "mqttlb_broker_connections_rejected_total{reason=\"mesh_link_not_authorized\"}"
        ),
        2.0
    );
}

/// A client must not send a Subscription Identifier in PUBLISH
/// [MQTT-3.3.4-6]: DISCONNECT 0x82 "protocol error", counted by reason.
#[tokio::test]
async fn a_client_publish_with_a_subscription_identifier_is_a_protocol_error() {
    let node = BrokerUnderTest::start(|_| {}).await;
    let (mut raw, _) = RawMqtt::connect(node.addr, raw_connect(V5, "sub-id", true)).await;
    let props = Properties {
        subscription_ids: vec![1],
        ..Properties::default()
    };
    raw.send(&publish("t", 0, 0, b"x", props)).await;
    assert_eq!(disconnect_reason(&mut raw).await, Some(0x82));
    wait_until("counted", DEADLINE, || async {
        node.metric("mqttlb_broker_disconnects_total{reason=\"misplaced_property\"}") == 1.0
    })
    .await;
}

/// Will-delay and session-expiry timers belong to the broker: a session
/// left to expire in 10 minutes holds a timer, and stopping the broker
/// cancels it instead of leaving it behind.
#[tokio::test]
async fn broker_timers_end_with_the_broker() {
    let mut node = BrokerUnderTest::start(|_| {}).await;
    let mut c = raw_connect(V5, "expiring", false);
    c.props.session_expiry = Some(600);
    let (raw, _) = RawMqtt::connect(node.addr, c).await;
    drop(raw);
    wait_until("an expiry timer is pending", DEADLINE, || async {
        node.broker.pending_timers() == 1
    })
    .await;
    node.stop().await;
    assert!(
        node.task.is_finished(),
        "the broker stopped within the deadline"
    );
    assert_eq!(node.broker.pending_timers(), 0);
}
