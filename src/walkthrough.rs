//! `mqttlb demo --failover`: why a small deployment still wants several
//! nodes, shown live. A subscriber and a publisher (MQTT 5, QoS 1) connect
//! through the proxy to different nodes; the publisher's node is stopped;
//! the publisher is disconnected, reconnects through the same proxy address
//! and lands on another node (client-id routing skips a node that is down),
//! resending what the stopped node never acknowledged; the proxy takes the
//! node out of rotation; the node comes back and returns to rotation. Every
//! message is accounted for at the end: lost, duplicated (QoS 1 resends).
//!
//! It drives the demo with the load generator's own client
//! ([`crate::bench::session`]), so it sits above both.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::{Instant, sleep, timeout};

use crate::bench::net::{Connector, TlsOptions};
use crate::bench::session::{Hello, Session};
use crate::demo::Demo;
use crate::mqtt::ProtocolVersion;
use crate::mqtt::codec::{AckKind, Packet, Properties, PublishPacket};

/// Messages the publisher sends, one every [`PACE`].
const TOTAL: u32 = 200;
const PACE: Duration = Duration::from_millis(50);
const TOPIC: &str = "demo/failover";
/// Bound of every wait in the walk-through.
const STEP: Duration = Duration::from_secs(20);

/// Run the walk-through on a started demo, narrating through `say`.
/// Returns whether every message arrived.
pub async fn failover(demo: &Demo, say: impl Fn(String)) -> bool {
    let started = Instant::now();
    let say = |line: String| say(format!("[{:5.1}s] {line}", started.elapsed().as_secs_f64()));
    match run(demo, &say).await {
        Ok(ok) => ok,
        Err(e) => {
            say(format!("walk-through failed: {e}"));
            false
        }
    }
}

async fn run(demo: &Demo, say: &dyn Fn(String)) -> Result<bool, String> {
    if demo.nodes.len() < 2 {
        return Err("needs at least 2 nodes (--nodes)".into());
    }
    let connector = Connector::new(
        demo.proxy,
        "localhost",
        Some(&TlsOptions {
            cafile: Some(demo.ca.clone()),
            ..TlsOptions::default()
        }),
        Vec::new(),
        Duration::from_secs(5),
    )?;
    until("every node in rotation", || {
        (0..demo.nodes.len()).all(|i| demo.node_state(i) == "up")
    })
    .await?;

    // The subscriber first; then a publisher id that the proxy routes to
    // another node (client ids are hashed onto nodes).
    let mut sub = open(&connector, "demo-sub").await?;
    sub.subscribe(TOPIC, 1, STEP)
        .await
        .map_err(|e| format!("subscribe: {e:?}"))?;
    let sub_node = demo.node_of("demo-sub").ok_or("subscriber on no node")?;
    say(format!(
        "subscriber demo-sub connected via {}, subscribed to {TOPIC} (QoS 1)",
        Demo::node_name(sub_node)
    ));
    let mut publisher = None;
    for k in 1..=16 {
        let id = format!("demo-pub-{k}");
        let s = open(&connector, &id).await?;
        match demo.node_of(&id) {
            Some(n) if n != sub_node => {
                publisher = Some((id, s, n));
                break;
            }
            _ => s.close().await,
        }
    }
    let (pub_id, pub_session, first_node) =
        publisher.ok_or("no publisher id landed on another node")?;
    say(format!(
        "publisher {pub_id} connected via {}, publishing {TOTAL} messages to {TOPIC}, QoS 1, {}/s",
        Demo::node_name(first_node),
        1000 / PACE.as_millis().max(1)
    ));

    let published = Cell::new(0u32);
    let pub_node = Cell::new(Some(first_node));
    let pub_done = Cell::new(false);
    let received = RefCell::new(BTreeSet::new());
    let duplicates = Cell::new(0u32);
    let resent = Cell::new(0usize);

    let publishing = async {
        let mut session = Some(pub_session);
        let mut unacked: BTreeMap<u16, u32> = BTreeMap::new();
        let mut pkid: u16 = 0;
        let mut tick = tokio::time::interval(PACE);
        let deadline = Instant::now() + STEP * 3;
        while (published.get() < TOTAL || !unacked.is_empty()) && Instant::now() < deadline {
            let Some(s) = session.as_mut() else {
                match open(&connector, &pub_id).await {
                    Ok(mut s) => {
                        let node = demo.node_of(&pub_id);
                        pub_node.set(node);
                        for (&id, &seq) in &unacked {
                            s.queue(&publish(id, seq, true));
                        }
                        let again = unacked.len();
                        resent.set(resent.get() + again);
                        say(format!(
                            "publisher reconnected through the same proxy address, now via {}; resent {again} unacknowledged message(s)",
                            node.map_or("?".into(), Demo::node_name)
                        ));
                        if s.flush().await.is_ok() {
                            session = Some(s);
                        }
                    }
                    Err(_) => sleep(Duration::from_millis(200)).await,
                }
                continue;
            };
            tokio::select! {
                _ = tick.tick(), if published.get() < TOTAL => {
                    pkid = pkid.checked_add(1).unwrap_or(1);
                    let seq = published.get() + 1;
                    published.set(seq);
                    unacked.insert(pkid, seq);
                    s.queue(&publish(pkid, seq, false));
                    if s.flush().await.is_err() {
                        session = None;
                        pub_node.set(None);
                        say("publisher lost its connection; reconnecting".into());
                    }
                }
                p = s.next() => match p {
                    Ok(Packet::Ack { kind: AckKind::Puback, pkid, .. }) => {
                        unacked.remove(&pkid);
                    }
                    Ok(Packet::Disconnect { code, .. }) => {
                        session = None;
                        pub_node.set(None);
                        say(format!("publisher got DISCONNECT {code:#04x} from its node; reconnecting"));
                    }
                    Ok(_) => {}
                    Err(_) => {
                        session = None;
                        pub_node.set(None);
                        say("publisher lost its connection; reconnecting".into());
                    }
                },
            }
        }
        pub_done.set(true);
        if let Some(s) = session {
            s.close().await;
        }
    };

    let subscribing = async {
        let mut session = Some(sub);
        let mut grace: Option<Instant> = None;
        loop {
            if received.borrow().len() >= TOTAL as usize {
                break;
            }
            if pub_done.get() {
                // Whatever is still in flight arrives within this.
                let end = *grace.get_or_insert_with(|| Instant::now() + Duration::from_secs(3));
                if Instant::now() >= end {
                    break;
                }
            }
            let Some(s) = session.as_mut() else {
                let again = match open(&connector, "demo-sub").await {
                    Ok(mut s) => s.subscribe(TOPIC, 1, STEP).await.is_ok().then_some(s),
                    Err(_) => None,
                };
                match again {
                    Some(s) => {
                        say(format!(
                            "subscriber reconnected via {}",
                            demo.node_of("demo-sub").map_or("?".into(), Demo::node_name)
                        ));
                        session = Some(s);
                    }
                    None => sleep(Duration::from_millis(200)).await,
                }
                continue;
            };
            match timeout(Duration::from_millis(200), s.next()).await {
                Err(_) => {}
                Ok(Ok(Packet::Publish(p))) => {
                    if p.qos > 0 {
                        s.queue(&Packet::ack(AckKind::Puback, p.pkid, 0));
                        let _ = s.flush().await;
                    }
                    let seq = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|t| t.strip_prefix("seq "))
                        .and_then(|n| n.parse::<u32>().ok());
                    if let Some(seq) = seq {
                        if !received.borrow_mut().insert(seq) {
                            duplicates.set(duplicates.get() + 1);
                        }
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) => {
                    session = None;
                    say("subscriber lost its connection; reconnecting".into());
                }
            }
        }
        if let Some(s) = session {
            s.close().await;
        }
    };

    let script = async {
        until("40 messages published", || published.get() >= 40).await?;
        let node = first_node;
        let name = Demo::node_name(node);
        say(format!("stopping {name}, the publisher's node"));
        demo.stop_node(node).await;
        until("the node leaves rotation", || {
            demo.node_state(node) == "down"
        })
        .await?;
        say(format!(
            "proxy: {name} is out of rotation (its health checks fail); new clients go elsewhere"
        ));
        until("the publisher on another node", || {
            pub_node.get().is_some_and(|n| n != node)
        })
        .await?;
        until("120 messages published", || published.get() >= 120).await?;
        demo.start_node(node)
            .map_err(|e| format!("restart {name}: {e}"))?;
        say(format!("starting {name} again"));
        until("the node back in rotation", || {
            demo.node_state(node) == "up"
        })
        .await?;
        say(format!("proxy: {name} is back in rotation"));
        Ok::<(), String>(())
    };

    let ((), (), scripted) = tokio::join!(publishing, subscribing, script);
    scripted?;
    let got = received.borrow().len();
    let lost = (1..=published.get())
        .filter(|s| !received.borrow().contains(s))
        .count();
    say(format!(
        "done: {} published (QoS 1), {got} received, {lost} lost, {} duplicate(s) ({} resent by the publisher after its node stopped)",
        published.get(),
        duplicates.get(),
        resent.get()
    ));
    say(format!(
        "the subscriber stayed on {} throughout; the publisher moved from {} without changing its address or configuration",
        Demo::node_name(sub_node),
        Demo::node_name(first_node)
    ));
    Ok(lost == 0 && published.get() == TOTAL)
}

/// TLS, CONNECT (MQTT 5, clean start) and CONNACK through the proxy.
async fn open(connector: &Connector, id: &str) -> Result<Session, String> {
    let io = connector
        .connect(0)
        .await
        .map_err(|e| format!("connect {id}: {e:?}"))?;
    let hello = Hello {
        client_id: id,
        clean: true,
        keep_alive: Duration::from_secs(10),
        username: None,
        password: None,
        session_expiry: None,
    };
    Session::open(io, ProtocolVersion::V5, &hello, Duration::from_secs(5))
        .await
        .map_err(|e| format!("CONNECT {id}: {e:?}"))
}

fn publish(pkid: u16, seq: u32, dup: bool) -> Packet {
    Packet::Publish(PublishPacket {
        dup,
        qos: 1,
        retain: false,
        topic: TOPIC.into(),
        pkid,
        props: Properties::default(),
        payload: Bytes::from(format!("seq {seq}")),
    })
}

/// Poll `cond` every 50 ms until it holds, at most [`STEP`].
async fn until(what: &str, cond: impl Fn() -> bool) -> Result<(), String> {
    let end = Instant::now() + STEP;
    while !cond() {
        if Instant::now() >= end {
            return Err(format!("timed out waiting for {what}"));
        }
        sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
