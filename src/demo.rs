//! `mqttlb demo`: the whole stack in one process — N meshed broker nodes on
//! loopback and the TLS proxy in front of them (client-id routing, MQTT
//! health checks, PROXY v2 to the nodes), with development certificates.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::{self, Broker};
use crate::certs::{CLIENT_CN, DevCerts};
use crate::config::broker::{BrokerConfig, ProxyIn};
use crate::config::{Config, Overrides};
use crate::proxy::{Proxy, ProxyHandle};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("certificates in {0}: {1}")]
    Certs(PathBuf, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("demo configuration: {0}")]
    Config(#[from] crate::config::ConfigErrors),
}

pub struct DemoOptions {
    pub nodes: usize,
    pub dir: PathBuf,
    pub listen: SocketAddr,
}

/// One broker node of the demo, which can be stopped and started again on
/// the same address.
struct Node {
    addr: SocketAddr,
    config: BrokerConfig,
    running: Mutex<Option<Running>>,
}

/// A serving node: its broker, its stop token and its serve task.
type Running = (Arc<Broker>, CancellationToken, JoinHandle<()>);

/// A running demo: the addresses it serves.
pub struct Demo {
    pub proxy: SocketAddr,
    pub nodes: Vec<SocketAddr>,
    pub ca: PathBuf,
    /// The proxy, for the admin API and for watching its backends.
    pub handle: ProxyHandle,
    brokers: Vec<Node>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Demo {
    /// Make certificates if missing, start nodes and proxy (its metrics on
    /// `registry`). Must run inside a tokio runtime; everything stops when
    /// `shutdown` is cancelled and [`Demo::wait`] returns.
    pub async fn start(
        opts: &DemoOptions,
        registry: &mut Registry,
        shutdown: CancellationToken,
    ) -> Result<Demo, DemoError> {
        let certs = opts.dir.join("certs");
        if !certs.join("server.pem").is_file() {
            DevCerts::generate(&[], CLIENT_CN)
                .and_then(|c| c.write(&certs))
                .map_err(|e| DemoError::Certs(certs.clone(), e.to_string()))?;
        }
        let tasks = TaskTracker::new();
        // Bind every node first: each needs the others' addresses.
        let mut listeners = Vec::new();
        for _ in 0..opts.nodes.max(1) {
            listeners.push(crate::sys::bind_tcp(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                1024,
            )?);
        }
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<_, _>>()?;
        let mut brokers = Vec::new();
        for (i, (listener, &addr)) in listeners.into_iter().zip(&addrs).enumerate() {
            let mut config = BrokerConfig::with_listen(addr);
            config.node_name = format!("node{}", i + 1);
            config.peers = addrs.iter().copied().filter(|a| *a != addr).collect();
            // The proxy sends PROXY v2; mesh links connect without one.
            config.proxy_protocol = ProxyIn::Optional;
            // A stopped node lets its clients go at once (MQTT 5: DISCONNECT).
            config.drain_timeout = Duration::from_secs(1);
            let node = Node {
                addr,
                config,
                running: Mutex::new(None),
            };
            node.serve(listener, &tasks, &shutdown);
            brokers.push(node);
        }

        let config_path = opts.dir.join("mqttlb.toml");
        std::fs::write(&config_path, proxy_config(opts.listen, &addrs))?;
        let config = Config::load(Some(&config_path), &Overrides::default())?;
        let proxy = Proxy::build(config, registry)?;
        let handle = proxy.handle();
        let proxy_listeners = proxy.bind()?;
        let proxy_addr = proxy_listeners
            .first()
            .map(|l| l.local_addr())
            .transpose()?
            .unwrap_or(opts.listen);
        tasks.spawn(proxy.run(proxy_listeners, shutdown.clone()));
        tasks.close();
        Ok(Demo {
            proxy: proxy_addr,
            nodes: addrs,
            ca: absolute(&certs.join("ca.pem")),
            handle,
            brokers,
            shutdown,
            tasks,
        })
    }

    /// Wait until every node and the proxy have stopped.
    pub async fn wait(self) {
        self.tasks.wait().await;
    }

    /// Node name (`node1`, …) of index `i`.
    pub fn node_name(i: usize) -> String {
        format!("node{}", i + 1)
    }

    /// Which node serves `client_id` now, if any.
    pub fn node_of(&self, client_id: &str) -> Option<usize> {
        self.brokers.iter().position(|n| {
            lock(&n.running)
                .as_ref()
                .is_some_and(|(b, _, _)| b.is_online(client_id))
        })
    }

    /// The proxy's view of node `i`: `up`, `down` or `draining`.
    pub fn node_state(&self, i: usize) -> &'static str {
        let name = Self::node_name(i);
        self.handle
            .backends()
            .into_iter()
            .find(|b| b.name == name)
            .map_or("unknown", |b| b.state)
    }

    /// Stop node `i` as an operator would (its clients are disconnected,
    /// MQTT 5 ones with DISCONNECT "server shutting down"); returns when it
    /// has stopped.
    pub async fn stop_node(&self, i: usize) {
        let Some(node) = self.brokers.get(i) else {
            return;
        };
        let running = lock(&node.running).take();
        if let Some((_, stop, task)) = running {
            stop.cancel();
            let _ = task.await;
        }
    }

    /// Start node `i` again on its address, with an empty session store.
    pub fn start_node(&self, i: usize) -> std::io::Result<()> {
        let Some(node) = self.brokers.get(i) else {
            return Ok(());
        };
        if lock(&node.running).is_some() {
            return Ok(());
        }
        let listener = crate::sys::bind_tcp(node.addr, 1024)?;
        node.serve(listener, &self.tasks, &self.shutdown);
        Ok(())
    }

    /// What to paste into another terminal.
    pub fn instructions(&self) -> String {
        let host = self.proxy.ip();
        let port = self.proxy.port();
        let ca = self.ca.display();
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{} {a}", Self::node_name(i)))
            .collect();
        format!(
            "mqttlb demo: TLS proxy on {proxy} in front of {n} meshed broker nodes ({nodes}).\n\
             In another terminal:\n\n  \
             mosquitto_sub -h {host} -p {port} --cafile {ca} -i sub-1 -t 'demo/#' -v\n  \
             mosquitto_pub -h {host} -p {port} --cafile {ca} -i pub-1 -t demo/hello -m 'hello through mqttlb'\n\n\
             Client ids are routed by hash: sub-1 and pub-1 may land on different nodes; the mesh delivers anyway.\n\
             Ctrl-C stops everything.",
            proxy = self.proxy,
            n = self.nodes.len(),
            nodes = nodes.join(", "),
        )
    }
}

impl Node {
    fn serve(&self, listener: TcpListener, tasks: &TaskTracker, shutdown: &CancellationToken) {
        let broker = Broker::new(self.config.clone(), &mut Registry::default());
        let stop = shutdown.child_token();
        let task = tasks.spawn(broker::serve(broker.clone(), listener, stop.clone()));
        *lock(&self.running) = Some((broker, stop, task));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn proxy_config(listen: SocketAddr, nodes: &[SocketAddr]) -> String {
    let names: Vec<(String, String)> = nodes
        .iter()
        .enumerate()
        .map(|(i, a)| (format!("node{}", i + 1), a.to_string()))
        .collect();
    let servers: Vec<(&str, &str)> = names
        .iter()
        .map(|(n, a)| (n.as_str(), a.as_str()))
        .collect();
    let mut raw = crate::config::template::tls_proxy(
        &listen.to_string(),
        "certs/server.pem",
        "certs/server.key",
        "nodes",
        &servers,
    );
    let pool = raw.pool_mut("nodes");
    pool.strategy = Some("client-id".into());
    pool.proxy_protocol = Some("v2".into());
    let health = pool.health_mut();
    health.check = Some("mqtt".into());
    health.interval = Some("1s".into());
    health.timeout = Some("500ms".into());
    health.rise = Some(2);
    health.fall = Some(2);
    health.mqtt_version = Some("5.0".into());
    raw.limits.drain_timeout = Some("2s".into());
    format!(
        "# Written by `mqttlb demo` (node ports are ephemeral: rewritten each start).\n{}",
        raw.to_toml()
    )
}
