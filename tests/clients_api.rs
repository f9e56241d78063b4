//! "Where is device X?": `/api/v1/clients` against 1,000 clients held
//! through a proxy in front of a real broker node (`mqttlb broker`,
//! in-process): lookup by client id (listener, address, SNI, protocol,
//! node, bytes, resumption), bounded prefix listings, an operator's
//! disconnect (MQTT 5 sees DISCONNECT 0x98 "administrative action", 3.1.1
//! a close), percent-encoded ids, and the index switched off.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLIENTS: usize = 1000;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The proxy's config for `node`, with an admin listener (the index
/// exists only with one) and `admin_extra` in it.
fn with_admin(certs: &Certs, node: SocketAddr, admin_extra: &str) -> String {
    format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n",
        config(certs, &[("node1", node)], "", "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_are_found_listed_and_disconnected() {
    let certs = Arc::new(Certs::new());
    let node = BrokerUnderTest::start(|_| {}).await;
    let proxy = ProxyUnderTest::start(&with_admin(&certs, node.addr, ""), certs.dir.path()).await;
    let admin = start_admin(&proxy).await;

    // 1,000 sessions, MQTT 5 and 3.1.1 alternating, opened 50 at a time.
    let ids: Vec<String> = (0..CLIENTS).map(|i| format!("dev-{i:04}")).collect();
    let mut held = Vec::with_capacity(CLIENTS);
    for chunk in ids.chunks(50) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|id| {
                let (certs, id, addr) = (certs.clone(), id.clone(), proxy.addr);
                let level = if id.ends_with(['0', '2', '4', '6', '8']) {
                    5
                } else {
                    4
                };
                tokio::spawn(async move { tls_session(addr, &certs, &id, level).await })
            })
            .collect();
        for t in tasks {
            held.push(t.await.expect("client"));
        }
    }

    // Lookup.
    let (code, body) = http(admin, "GET", "/api/v1/clients/dev-0042").await;
    assert_eq!(code, 200, "{body}");
    let c = json(&body);
    assert_eq!(c["client_id"], "dev-0042");
    assert_eq!(c["listener"], "mqtts", "{c}");
    assert_eq!(c["backend"], "node1");
    assert_eq!(c["protocol"], "5.0");
    assert_eq!(c["tls_resumed"], false);
    assert!(c["sni"].is_string(), "{c}");
    assert!(
        c["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{c}"
    );
    assert!(
        c["connected_since"].as_f64().is_some_and(|t| t > 1.7e9),
        "{c}"
    );
    assert_eq!(
        json(&http(admin, "GET", "/api/v1/clients/dev-0043").await.1)["protocol"],
        "3.1.1"
    );
    // Bytes relayed: a PINGREQ and its PINGRESP.
    let s = &mut held[42];
    s.write_all(&[0xc0, 0x00]).await.expect("PINGREQ");
    let mut pong = [0u8; 2];
    s.read_exact(&mut pong).await.expect("PINGRESP");
    assert_eq!(pong, [0xd0, 0x00]);
    wait_until("the ping's bytes are counted", DEADLINE, || async {
        let c = json(&http(admin, "GET", "/api/v1/clients/dev-0042").await.1);
        c["bytes_in"] == 2 && c["bytes_out"] == 2
    })
    .await;
    let (code, _) = http(admin, "GET", "/api/v1/clients/nobody").await;
    assert_eq!(code, 404);

    // Listings: by prefix, sorted, bounded.
    let (code, body) = http(admin, "GET", "/api/v1/clients?prefix=dev-00&limit=50").await;
    assert_eq!(code, 200, "{body}");
    let list = json(&body);
    let got: Vec<&str> = list["clients"]
        .as_array()
        .expect("clients")
        .iter()
        .filter_map(|c| c["client_id"].as_str())
        .collect();
    let want: Vec<&str> = ids[..50].iter().map(String::as_str).collect();
    assert_eq!(got, want);
    assert_eq!(list["more"], true);
    let list = json(&http(admin, "GET", "/api/v1/clients?prefix=dev-09").await.1);
    assert_eq!(list["clients"].as_array().map(Vec::len), Some(100));
    assert_eq!(list["more"], false);
    let list = json(&http(admin, "GET", "/api/v1/clients?limit=1000").await.1);
    assert_eq!(list["clients"].as_array().map(Vec::len), Some(1000));
    for bad in ["limit=0", "limit=1001", "limit=all"] {
        let (code, _) = http(admin, "GET", &format!("/api/v1/clients?{bad}")).await;
        assert_eq!(code, 400, "{bad}");
    }

    // An operator's disconnect: MQTT 5 gets 0x98, 3.1.1 a close; both
    // leave the index, the others stay.
    let (code, body) = http(admin, "POST", "/api/v1/clients/dev-0042/disconnect").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(read_to_close(&mut held[42]).await, [0xe0, 0x02, 0x98, 0x00]);
    let (code, _) = http(admin, "POST", "/api/v1/clients/dev-0043/disconnect").await;
    assert_eq!(code, 200);
    assert_eq!(read_to_close(&mut held[43]).await, b"");
    wait_until("both left the index", DEADLINE, || async {
        http(admin, "GET", "/api/v1/clients/dev-0042").await.0 == 404
            && http(admin, "GET", "/api/v1/clients/dev-0043").await.0 == 404
    })
    .await;
    let (code, _) = http(admin, "POST", "/api/v1/clients/dev-0042/disconnect").await;
    assert_eq!(code, 404, "gone");
    let (code, _) = http(admin, "GET", "/api/v1/clients/dev-0041").await;
    assert_eq!(code, 200, "a neighbour stays");

    // A client id that needs percent-encoding in a path.
    let _odd = tls_session(proxy.addr, &certs, "site 7/dev#1", 5).await;
    let (code, body) = http(admin, "GET", "/api/v1/clients/site%207%2Fdev%231").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["client_id"], "site 7/dev#1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_index_off_nothing_is_kept_and_the_api_says_so() {
    let certs = Certs::new();
    let node = BrokerUnderTest::start(|_| {}).await;
    let proxy = ProxyUnderTest::start(
        &with_admin(&certs, node.addr, "client_index = false"),
        certs.dir.path(),
    )
    .await;
    let admin = start_admin(&proxy).await;
    let _s = tls_session(proxy.addr, &certs, "dev-1", 5).await;
    for path in ["/api/v1/clients/dev-1", "/api/v1/clients"] {
        let (code, body) = http(admin, "GET", path).await;
        assert_eq!(code, 404, "{path}");
        assert!(body.contains("client_index = false"), "{body}");
    }
    assert!(proxy.handle.clients().is_none());
}
