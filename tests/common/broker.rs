//! mqttlb's broker running in-process on port 0: single nodes and meshes
//! of peered nodes ([`BrokerUnderTest`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::{DEADLINE, metric_sample, wait_until};

/// An mqttlb broker node running in-process on an ephemeral port.
pub struct BrokerUnderTest {
    pub addr: SocketAddr,
    pub broker: Arc<mqttlb::broker::Broker>,
    pub registry: Registry,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl BrokerUnderTest {
    pub async fn start(
        edit: impl FnOnce(&mut mqttlb::config::broker::BrokerConfig),
    ) -> BrokerUnderTest {
        Self::start_on(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
            edit,
        )
    }

    /// Start on an already-bound listener (a mesh binds every node first).
    pub fn start_on(
        listener: tokio::net::TcpListener,
        edit: impl FnOnce(&mut mqttlb::config::broker::BrokerConfig),
    ) -> BrokerUnderTest {
        let addr = listener.local_addr().expect("local addr");
        let mut config = mqttlb::config::broker::BrokerConfig::with_listen(addr);
        config.drain_timeout = Duration::from_secs(2);
        edit(&mut config);
        let mut registry = Registry::default();
        let broker = mqttlb::broker::Broker::new(config, &mut registry);
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(mqttlb::broker::serve(
            broker.clone(),
            listener,
            shutdown.clone(),
        ));
        BrokerUnderTest {
            addr,
            broker,
            registry,
            shutdown,
            task,
        }
    }

    pub fn metric(&self, sample: &str) -> f64 {
        metric_sample(&self.registry, sample)
    }

    /// Start `n` meshed nodes, each peered with all the others (node names
    /// node1…nodeN, fast peer reconnects), and wait until every link is up.
    /// `edit` adjusts node `i`'s config after that.
    pub async fn mesh(
        n: usize,
        edit: impl Fn(usize, &mut mqttlb::config::broker::BrokerConfig),
    ) -> Vec<BrokerUnderTest> {
        let mut listeners = Vec::with_capacity(n);
        for _ in 0..n {
            listeners.push(
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind"),
            );
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("addr"))
            .collect();
        let nodes: Vec<BrokerUnderTest> = listeners
            .into_iter()
            .enumerate()
            .map(|(i, l)| {
                let peers = addrs.iter().copied().filter(|a| *a != addrs[i]).collect();
                BrokerUnderTest::start_on(l, |c| {
                    c.node_name = format!("node{}", i + 1);
                    c.peers = peers;
                    c.peer_reconnect_max = Duration::from_millis(200);
                    edit(i, c);
                })
            })
            .collect();
        for node in &nodes {
            node.wait_links_up(n - 1).await;
        }
        nodes
    }

    /// Wait until this node has `links` mesh links up.
    pub async fn wait_links_up(&self, links: usize) {
        wait_until("mesh links up", DEADLINE, || async {
            self.metric("mqttlb_broker_peer_links_up") == links as f64
        })
        .await;
    }

    /// Restart a stopped node on its old address with its old peers.
    pub async fn restart(&self, peers: Vec<SocketAddr>) -> BrokerUnderTest {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("rebind");
        let name = self.broker.config.node_name.clone();
        BrokerUnderTest::start_on(listener, |c| {
            c.node_name = name;
            c.peers = peers;
            c.peer_reconnect_max = Duration::from_millis(200);
        })
    }

    /// Stop the node: listener closed, clients disconnected.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(DEADLINE, &mut self.task).await;
    }
}

impl Drop for BrokerUnderTest {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
