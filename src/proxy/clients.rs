//! The client index behind `/api/v1/clients`: "where is device X?".
//!
//! Every relayed MQTT connection with a non-empty client id is entered by
//! that id while it is relayed (`admin.client_index = true`, the
//! default): listener, real address, SNI, protocol, backend node, since
//! when, whether the TLS session resumed, and its kick signal, which also
//! carries the live byte counts. A client id holds its newest connection
//! only: a second connection with the same id takes the entry over (the
//! broker is taking the session over too), and the older one's exit does
//! not remove the newer one's entry.
//!
//! Sharded by a hash of the id (64 std Mutexes, each held for one map
//! operation, never across an await), so registration does not contend.
//! Listing is bounded (`limit` ≤ [`MAX_LIST`]) and walks the shards once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::balance::{Backend, KickSignal};
use crate::mqtt::ProtocolVersion;

const SHARDS: usize = 64;
/// Most clients one listing returns.
pub const MAX_LIST: usize = 1000;

/// One connection of a client, as the index keeps it (boxed in the map:
/// a map slot is then two words, and a half-empty table costs little).
struct Entry {
    conn: u64,
    listener: Arc<str>,
    peer: SocketAddr,
    /// Shared with the connection's `TlsInfo`.
    sni: Option<Arc<str>>,
    protocol: ProtocolVersion,
    resumed: bool,
    /// Unix time, milliseconds.
    since_ms: u64,
    backend: Arc<Backend>,
    signal: Arc<KickSignal>,
}

/// What `/api/v1/clients` shows of one client.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientInfo {
    pub client_id: String,
    pub listener: String,
    pub peer: SocketAddr,
    pub sni: Option<String>,
    pub protocol: ProtocolVersion,
    pub resumed: bool,
    pub backend: String,
    pub since: SystemTime,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// What a connection registers.
pub struct Registration<'a> {
    pub client_id: &'a str,
    pub conn: u64,
    pub listener: &'a Arc<str>,
    pub peer: SocketAddr,
    pub sni: Option<&'a Arc<str>>,
    pub protocol: ProtocolVersion,
    pub resumed: bool,
    pub backend: &'a Arc<Backend>,
    pub signal: &'a Arc<KickSignal>,
}

/// One shard: client id → its newest connection.
type Shard = Mutex<HashMap<Arc<str>, Box<Entry>>>;

pub struct ClientIndex {
    shards: Box<[Shard]>,
}

impl Default for ClientIndex {
    fn default() -> Self {
        ClientIndex {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl ClientIndex {
    fn shard(&self, id: &str) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Box<Entry>>> {
        let i =
            usize::try_from(xxhash_rust::xxh3::xxh3_64(id.as_bytes()) % SHARDS as u64).unwrap_or(0);
        // `i < SHARDS == shards.len()`; the fallback is never taken.
        let shard = self.shards.get(i).or(self.shards.first());
        match shard {
            Some(s) => s.lock().unwrap_or_else(|p| p.into_inner()),
            None => unreachable!("the index has {SHARDS} shards"),
        }
    }

    /// Enter a connection; it leaves when the guard drops.
    pub fn register(self: &Arc<Self>, r: Registration<'_>) -> ClientGuard {
        let client_id: Arc<str> = r.client_id.into();
        let since_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.shard(r.client_id).insert(
            client_id.clone(),
            Box::new(Entry {
                conn: r.conn,
                listener: r.listener.clone(),
                peer: r.peer,
                sni: r.sni.cloned(),
                protocol: r.protocol,
                resumed: r.resumed,
                since_ms,
                backend: r.backend.clone(),
                signal: r.signal.clone(),
            }),
        );
        ClientGuard {
            index: self.clone(),
            client_id,
            conn: r.conn,
        }
    }

    /// The client's connection now.
    pub fn get(&self, client_id: &str) -> Option<ClientInfo> {
        self.shard(client_id)
            .get(client_id)
            .map(|e| info(client_id, e))
    }

    /// Clients whose id starts with `prefix`, sorted by id, at most
    /// `limit` (capped at [`MAX_LIST`]); and whether more matched.
    pub fn list(&self, prefix: &str, limit: usize) -> (Vec<ClientInfo>, bool) {
        let limit = limit.min(MAX_LIST);
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(
                shard
                    .iter()
                    .filter(|(id, _)| id.starts_with(prefix))
                    .map(|(id, e)| info(id, e)),
            );
            // Keep the smallest `limit` ids seen so far, and one more to
            // know whether there were more.
            if out.len() > 2 * (limit + 1) {
                out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
                out.truncate(limit + 1);
            }
        }
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        let more = out.len() > limit;
        out.truncate(limit);
        (out, more)
    }

    /// Close the client's connection at a packet boundary (MQTT 5:
    /// DISCONNECT 0x98 "administrative action"). `false`: not connected.
    pub fn disconnect(&self, client_id: &str) -> bool {
        match self.shard(client_id).get(client_id) {
            Some(e) => {
                e.signal.kick_by_admin();
                true
            }
            None => false,
        }
    }

    /// Clients in the index.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn info(id: &str, e: &Entry) -> ClientInfo {
    use std::sync::atomic::Ordering::Relaxed;
    ClientInfo {
        client_id: id.to_string(),
        listener: e.listener.to_string(),
        peer: e.peer,
        sni: e.sni.as_deref().map(str::to_string),
        protocol: e.protocol,
        resumed: e.resumed,
        backend: e.backend.name.clone(),
        since: UNIX_EPOCH + std::time::Duration::from_millis(e.since_ms),
        bytes_in: e.signal.bytes_in.load(Relaxed),
        bytes_out: e.signal.bytes_out.load(Relaxed),
    }
}

/// A connection's entry; removed on drop unless a newer connection of
/// the same client id took it over.
pub struct ClientGuard {
    index: Arc<ClientIndex>,
    /// The map's key, shared.
    client_id: Arc<str>,
    conn: u64,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        let mut shard = self.index.shard(&self.client_id);
        if shard
            .get(&*self.client_id)
            .is_some_and(|e| e.conn == self.conn)
        {
            shard.remove(&*self.client_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{Admission, NodeSpec};
    use crate::metrics::Metrics;
    use prometheus_client::registry::Registry;

    fn backend() -> Arc<Backend> {
        let metrics = Metrics::new(&mut Registry::default());
        let spec = NodeSpec {
            name: "n1".into(),
            addr: "127.0.0.1:1883".parse().expect("addr"),
            weight: 1,
            max_connections: 0,
        };
        let admission = Arc::new(Admission::new(metrics.admission("p")));
        let pool = crate::balance::config::test_pool("p", &[("n1", 1883)]);
        Arc::new(Backend::new(&spec, &pool.health, &admission, &metrics))
    }

    fn register(
        index: &Arc<ClientIndex>,
        b: &Arc<Backend>,
        id: &str,
        conn: u64,
    ) -> (ClientGuard, Arc<KickSignal>) {
        let signal = Arc::new(KickSignal::default());
        let listener: Arc<str> = "mqtts".into();
        let guard = index.register(Registration {
            client_id: id,
            conn,
            listener: &listener,
            peer: "10.0.0.7:40000".parse().expect("addr"),
            sni: Some(&"mqtt.example.com".into()),
            protocol: ProtocolVersion::V5,
            resumed: true,
            backend: b,
            signal: &signal,
        });
        (guard, signal)
    }

    #[test]
    fn a_client_is_found_listed_and_disconnected_and_leaves_with_its_connection() {
        let index = Arc::new(ClientIndex::default());
        let b = backend();
        let (g1, s1) = register(&index, &b, "dev-1", 1);
        let (_g2, _) = register(&index, &b, "dev-2", 2);
        let (_g3, _) = register(&index, &b, "other", 3);
        let got = index.get("dev-1").expect("dev-1");
        assert_eq!(
            (
                got.backend.as_str(),
                got.listener.as_str(),
                got.sni.as_deref()
            ),
            ("n1", "mqtts", Some("mqtt.example.com"))
        );
        assert!(got.resumed);
        s1.bytes_in.store(7, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(index.get("dev-1").expect("dev-1").bytes_in, 7);

        let (list, more) = index.list("dev-", 10);
        let ids: Vec<&str> = list.iter().map(|c| c.client_id.as_str()).collect();
        assert_eq!((ids, more), (vec!["dev-1", "dev-2"], false));
        let (list, more) = index.list("", 1);
        assert_eq!((list.len(), more), (1, true));
        assert_eq!(list[0].client_id, "dev-1");

        assert!(index.disconnect("dev-1"));
        assert!(s1.is_kicked());
        assert_eq!(
            s1.packet(),
            crate::mqtt::packets::DISCONNECT_ADMINISTRATIVE_ACTION
        );
        assert!(!index.disconnect("nobody"));
        drop(g1);
        assert_eq!(index.get("dev-1"), None);
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn a_newer_connection_keeps_its_entry_when_the_older_one_ends() {
        let index = Arc::new(ClientIndex::default());
        let b = backend();
        let (old, _) = register(&index, &b, "dev", 1);
        let (_new, _) = register(&index, &b, "dev", 2);
        drop(old);
        assert!(index.get("dev").is_some(), "the newer connection stays");
    }

    #[test]
    fn listing_is_bounded_and_sorted_across_shards() {
        let index = Arc::new(ClientIndex::default());
        let b = backend();
        let held: Vec<_> = (0..3000)
            .map(|i| register(&index, &b, &format!("c{i:05}"), i))
            .collect();
        let (list, more) = index.list("c", 5000);
        assert_eq!(list.len(), MAX_LIST);
        assert!(more);
        assert!(list.windows(2).all(|w| w[0].client_id < w[1].client_id));
        assert_eq!(list[0].client_id, "c00000");
        drop(held);
        assert!(index.is_empty());
    }
}
