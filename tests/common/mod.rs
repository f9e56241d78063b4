//! Shared test harness: real Mosquitto processes on ephemeral loopback
//! ports, mqttlb in-process on port 0, dev certificates, condition waits.
#![allow(dead_code)]

pub mod rabbitmq;

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mqttlb::balance::Pool;
use mqttlb::certs::{CLIENT_CN, DevCerts};
use mqttlb::config::{Config, parse_toml};
use mqttlb::proxy::Proxy;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Generous upper bound for anything a test waits on.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Poll `cond` until it holds or `deadline` passes; panics with `what`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Dev certificates written to a temporary directory.
pub struct Certs {
    pub dir: tempfile::TempDir,
}

impl Certs {
    pub fn new() -> Certs {
        let dir = tempfile::tempdir().expect("tempdir");
        DevCerts::generate(&[], CLIENT_CN)
            .expect("generate")
            .write(dir.path())
            .expect("write certs");
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    pub fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).expect("read cert")
    }
}

/// A free loopback port (bound and released; Mosquitto cannot report the
/// port it bound, so it needs a number up front).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn running_as_root() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }
    #[cfg(not(unix))]
    false
}

/// A real Mosquitto broker on 127.0.0.1.
pub struct Mosquitto {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    pub async fn start() -> Mosquitto {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut m = Mosquitto {
            port,
            dir,
            child: None,
        };
        m.spawn().await;
        m
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    async fn spawn(&mut self) {
        let conf = self.dir.path().join("mosquitto.conf");
        let mut text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest file {}\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\nconnection_messages true\n",
            self.port,
            self.log_path().display()
        );
        if running_as_root() {
            text.push_str("user root\n");
        }
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto is installed (apt-get install mosquitto)");
        self.child = Some(child);
        let addr = self.addr();
        wait_until("mosquitto accepts connections", DEADLINE, || async move {
            TcpStream::connect(addr).await.is_ok()
        })
        .await;
    }

    /// SIGKILL: the node vanishes as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start again on the same port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Whether Mosquitto logged a connection of `client_id`.
    pub fn saw_client(&self, client_id: &str) -> bool {
        let needle = format!(" as {client_id} ");
        self.log()
            .lines()
            .any(|l| l.contains("New client connected") && l.contains(&needle))
    }

    /// How many connections of `client_id` Mosquitto logged.
    pub fn connections_of(&self, client_id: &str) -> usize {
        let needle = format!(" as {client_id} ");
        self.log()
            .lines()
            .filter(|l| l.contains("New client connected") && l.contains(&needle))
            .count()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}

/// mqttlb running in-process on an ephemeral port.
pub struct ProxyUnderTest {
    pub addr: SocketAddr,
    pub registry: Arc<Registry>,
    pub handle: mqttlb::proxy::ProxyHandle,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    proxy_pools: Vec<Arc<Pool>>,
}

impl ProxyUnderTest {
    /// Start from TOML text; its first listener must use `listen =
    /// "127.0.0.1:0"`. Relative paths resolve against `base`.
    pub async fn start(toml: &str, base: &Path) -> ProxyUnderTest {
        let raw = parse_toml("test.toml", toml).expect("test config parses");
        let config = Config::from_raw("test.toml", base, raw).expect("test config converts");
        let pool_names: Vec<String> = config.pools.keys().cloned().collect();
        let mut registry = Registry::default();
        let proxy = Proxy::build(config, &mut registry).expect("proxy builds");
        let pools = pool_names.iter().filter_map(|n| proxy.pool(n)).collect();
        let listeners = proxy.bind().expect("bind");
        let addr = listeners[0].local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let handle = proxy.handle();
        let task = tokio::spawn(proxy.run(listeners, shutdown.clone()));
        ProxyUnderTest {
            addr,
            registry: Arc::new(registry),
            handle,
            shutdown,
            task,
            proxy_pools: pools,
        }
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.proxy_pools[0]
    }

    pub fn backend_up(&self, name: &str) -> bool {
        self.pool().find(name).expect("backend exists").is_up()
    }

    /// Current value of a metric sample, e.g.
    /// `mqttlb_connections_rejected_total{listener="l",reason="http"}`.
    pub fn metric(&self, sample: &str) -> f64 {
        metric_sample(&self.registry, sample)
    }

    pub fn rejected(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "mqttlb_connections_rejected_total{{listener=\"mqtts\",reason=\"{reason}\"}}"
        ))
    }
}

/// A TOML config for tests: one TLS MQTT-aware listener "mqtts" on port 0
/// in front of `servers`, with `extra_pool` and `extra_listener` lines added.
pub fn config(
    certs: &Certs,
    servers: &[(&str, SocketAddr)],
    extra_listener: &str,
    extra_pool: &str,
) -> String {
    let servers: Vec<String> = servers
        .iter()
        .map(|(name, addr)| format!("{{ name = \"{name}\", addr = \"{addr}\" }}"))
        .collect();
    format!(
        r#"
[[listener]]
name = "mqtts"
listen = "127.0.0.1:0"
pool = "brokers"
{extra_listener}
[listener.tls]
cert = "{cert}"
key = "{key}"
[listener.mqtt]
connect_timeout = "2s"

[pool.brokers]
servers = [ {servers} ]
{extra_pool}

[limits]
tls_handshake_timeout = "2s"
drain_timeout = "5s"
"#,
        cert = certs.p("server.pem"),
        key = certs.p("server.key"),
        servers = servers.join(", "),
    )
}

/// A raw TLS client (tokio-rustls) trusting the dev CA, optionally with the
/// dev client certificate.
pub async fn tls_connect(
    addr: SocketAddr,
    certs: &Certs,
    with_client_cert: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_from(addr, None, certs, with_client_cert).await
}

/// [`tls_connect`] from a chosen source address (e.g. `127.0.0.77`, so a
/// broker's log can be searched for it).
pub async fn tls_connect_from(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    certs: &Certs,
    with_client_cert: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = mqttlb::tls::provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.path("ca.pem")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = if with_client_cert {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certs.path("client.pem"))
                .expect("client cert")
                .collect::<Result<_, _>>()
                .expect("client cert");
        let key = PrivateKeyDer::from_pem_file(certs.path("client.key")).expect("client key");
        builder
            .with_client_auth_cert(chain, key)
            .expect("client auth")
    } else {
        builder.with_no_client_auth()
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = match source {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let socket = match ip {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
    };
    let name = ServerName::try_from("localhost").expect("name").to_owned();
    connector.connect(name, tcp).await
}

/// An MQTT 3.1.1 (level 4) or 5.0 (level 5) CONNECT with a clean session.
pub fn connect_packet(level: u8, client_id: &str) -> Vec<u8> {
    let version = match level {
        5 => mqttlb::mqtt::ProtocolVersion::V5,
        _ => mqttlb::mqtt::ProtocolVersion::V311,
    };
    mqttlb::mqtt::packets::encode_connect(version, client_id, 30, None, None)
}

/// Read until EOF (or error) and return what arrived, bounded by DEADLINE.
pub async fn read_to_close<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, async {
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    out
}

/// Send a CONNECT over `s` and return the CONNACK return/reason code.
pub async fn mqtt_connect<S>(s: &mut S, level: u8, client_id: &str) -> Option<u8>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(&connect_packet(level, client_id)).await.ok()?;
    let mut buf = [0u8; 4];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .ok()?
        .ok()?;
    (buf[0] == 0x20).then_some(buf[3])
}

/// Run a command with a deadline, returning (status success, stdout).
pub async fn run(cmd: &mut tokio::process::Command) -> (bool, String) {
    run_within(cmd, DEADLINE).await
}

/// [`run`] with its own deadline.
pub async fn run_within(cmd: &mut tokio::process::Command, deadline: Duration) -> (bool, String) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(deadline, cmd.output())
        .await
        .expect("command finished before the deadline")
        .expect("command runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Current value of a metric sample in `registry` (0 when absent), e.g.
/// `mqttlb_broker_retained_messages`.
pub fn metric_sample(registry: &Registry, sample: &str) -> f64 {
    let text = mqttlb::metrics::encode(registry);
    text.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

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

/// A rumqttc client (3.1.1) whose incoming packets arrive on a channel. The
/// event loop stops at the first connection error (no reconnects).
pub struct MqttClient {
    pub client: rumqttc::AsyncClient,
    pub rx: tokio::sync::mpsc::UnboundedReceiver<rumqttc::Packet>,
    pub task: tokio::task::JoinHandle<()>,
}

impl MqttClient {
    pub fn start(opts: rumqttc::MqttOptions) -> MqttClient {
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 64);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(ev) = events.poll().await {
                if let rumqttc::Event::Incoming(p) = ev {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
            }
        });
        MqttClient { client, rx, task }
    }

    /// Next incoming packet matching `f`, within the deadline.
    pub async fn next<T>(&mut self, what: &str, f: impl FnMut(rumqttc::Packet) -> Option<T>) -> T {
        next_matching(&mut self.rx, what, f).await
    }

    pub async fn connack(&mut self) -> bool {
        self.next("CONNACK", |p| match p {
            rumqttc::Packet::ConnAck(c) => Some(c.session_present),
            _ => None,
        })
        .await
    }

    pub async fn subscribe(
        &mut self,
        filter: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client.subscribe(filter, qos).await.expect("subscribe");
        self.next("SUBACK", |p| match p {
            rumqttc::Packet::SubAck(s) => Some(s.return_codes),
            _ => None,
        })
        .await
    }

    pub async fn publish(&self, topic: &str, qos: rumqttc::QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("publish");
    }

    pub async fn message(&mut self) -> rumqttc::Publish {
        self.next("PUBLISH", |p| match p {
            rumqttc::Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }
}

/// Next item on `rx` for which `f` returns `Some`, within [`DEADLINE`];
/// panics naming `what` when the channel closes or time runs out.
pub async fn next_matching<P, T>(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<P>,
    what: &str,
    mut f: impl FnMut(P) -> Option<T>,
) -> T {
    tokio::time::timeout(DEADLINE, async {
        loop {
            match rx.recv().await {
                Some(p) => {
                    if let Some(t) = f(p) {
                        return t;
                    }
                }
                None => panic!("connection ended while waiting for {what}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A rumqttc MQTT 5 client; incoming packets arrive on a channel, the
/// event loop stops at the first connection error.
pub struct Mqtt5Client {
    pub client: rumqttc::v5::AsyncClient,
    pub rx: tokio::sync::mpsc::UnboundedReceiver<rumqttc::v5::mqttbytes::v5::Packet>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Mqtt5Client {
    /// A client straight to `addr` with clean start; `edit` adjusts options.
    pub fn start(
        addr: SocketAddr,
        id: &str,
        edit: impl FnOnce(&mut rumqttc::v5::MqttOptions),
    ) -> Mqtt5Client {
        let mut opts = rumqttc::v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(10));
        edit(&mut opts);
        let (client, mut events) = rumqttc::v5::AsyncClient::new(opts, 64);
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Ok(ev) = events.poll().await {
                if let rumqttc::v5::Event::Incoming(p) = ev {
                    if tx.send(p).is_err() {
                        return;
                    }
                }
            }
        });
        Mqtt5Client { client, rx, task }
    }

    pub async fn next<T>(
        &mut self,
        what: &str,
        f: impl FnMut(rumqttc::v5::mqttbytes::v5::Packet) -> Option<T>,
    ) -> T {
        next_matching(&mut self.rx, what, f).await
    }

    /// The CONNACK: (session present, reason code).
    pub async fn connack(&mut self) -> (bool, rumqttc::v5::mqttbytes::v5::ConnectReturnCode) {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.next("CONNACK", |p| match p {
            Packet::ConnAck(c) => Some((c.session_present, c.code)),
            _ => None,
        })
        .await
    }

    pub async fn suback(&mut self) -> Vec<rumqttc::v5::mqttbytes::v5::SubscribeReasonCode> {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.next("SUBACK", |p| match p {
            Packet::SubAck(s) => Some(s.return_codes),
            _ => None,
        })
        .await
    }

    pub async fn message(&mut self) -> rumqttc::v5::mqttbytes::v5::Publish {
        use rumqttc::v5::mqttbytes::v5::Packet;
        self.next("PUBLISH", |p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .await
    }
}

/// A raw MQTT connection speaking mqttlb's own codec, for protocol edges no
/// well-behaved client produces (withheld acknowledgements, aliases,
/// oversize packets). Behaviour is still judged by what the broker does.
pub struct RawMqtt {
    pub stream: tokio::net::TcpStream,
    pub protocol: mqttlb::mqtt::ProtocolVersion,
    buf: bytes::BytesMut,
}

impl RawMqtt {
    /// Connect and send CONNECT; returns the connection and the CONNACK.
    pub async fn connect(
        addr: SocketAddr,
        connect: mqttlb::mqtt::codec::ConnectPacket,
    ) -> (RawMqtt, mqttlb::mqtt::codec::Packet) {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut raw = RawMqtt {
            stream,
            protocol: connect.protocol,
            buf: bytes::BytesMut::new(),
        };
        raw.send(&mqttlb::mqtt::codec::Packet::Connect(Box::new(connect)))
            .await;
        let connack = raw.read().await.expect("CONNACK");
        (raw, connack)
    }

    pub async fn send(&mut self, p: &mqttlb::mqtt::codec::Packet) {
        let mut out = bytes::BytesMut::new();
        mqttlb::mqtt::codec::encode(p, self.protocol, &mut out);
        self.stream.write_all(&out).await.expect("write");
    }

    /// SUBSCRIBE to one filter at `qos` (packet id 1) and wait for the SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: u8) {
        use mqttlb::mqtt::codec::{Packet, Properties, SubOptions};
        self.send(&Packet::Subscribe {
            pkid: 1,
            filters: vec![(
                filter.into(),
                SubOptions {
                    qos,
                    ..SubOptions::default()
                },
            )],
            props: Properties::default(),
        })
        .await;
        assert!(
            matches!(self.read().await, Some(Packet::Suback { .. })),
            "SUBACK for {filter}"
        );
    }

    /// Next packet, or `None` once the broker closed the connection.
    pub async fn read(&mut self) -> Option<mqttlb::mqtt::codec::Packet> {
        use mqttlb::mqtt::codec;
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(n) = codec::frame_len(&self.buf, 1 << 24).expect("framing") {
                    let frame = self.buf.split_to(n).freeze();
                    return Some(codec::decode(frame, self.protocol).expect("decode"));
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("packet or close before the deadline")
    }
}

/// A CONNECT for [`RawMqtt`]: clean start, keep-alive 30 s, no will.
pub fn raw_connect(
    protocol: mqttlb::mqtt::ProtocolVersion,
    client_id: &str,
    clean: bool,
) -> mqttlb::mqtt::codec::ConnectPacket {
    mqttlb::mqtt::codec::ConnectPacket {
        protocol,
        clean,
        keep_alive: 30,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
        props: mqttlb::mqtt::codec::Properties::default(),
    }
}

/// A plain HTTP/1.0 request to an admin server: (status, body).
pub async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let raw = String::from_utf8(read_to_close(&mut s).await).expect("utf-8 response");
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Serve the admin API of `proxy` on an ephemeral loopback port.
pub async fn start_admin(proxy: &ProxyUnderTest) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind admin");
    let addr = listener.local_addr().expect("admin addr");
    let admin = Arc::new(mqttlb::admin::Admin {
        registry: proxy.registry.clone(),
        role: mqttlb::admin::Role::Proxy(proxy.handle.clone()),
    });
    tokio::spawn(mqttlb::admin::serve(
        listener,
        admin,
        proxy.shutdown.clone(),
    ));
    addr
}

/// `promtool check metrics` on a scrape: Ok, or promtool's complaint.
pub async fn promtool_check(scrape: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool is installed (scripts/test installs the prometheus package)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(scrape.as_bytes())
        .await
        .expect("feed promtool");
    drop(stdin);
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("promtool finishes")
        .expect("promtool output");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr))
    }
}

/// A rumqttc 3.1.1 client through `proxy` over TLS, trusting the dev CA.
pub fn tls_client(proxy: &ProxyUnderTest, certs: &Certs, id: &str) -> MqttClient {
    let mut opts = rumqttc::MqttOptions::new(id, "localhost", proxy.addr.port());
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Simple {
        ca: certs.read("ca.pem"),
        alpn: None,
        client_auth: None,
    }));
    MqttClient::start(opts)
}
