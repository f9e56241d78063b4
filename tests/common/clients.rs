//! Clients for tests: raw TLS connections trusting the dev CA, CONNECT
//! helpers, rumqttc 3.1.1 and 5 clients whose packets arrive on a channel,
//! and a raw client speaking mqttlb's own codec.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Certs, DEADLINE, ProxyUnderTest};

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
    tls_connect_as(addr, source, certs, with_client_cert.then_some("client")).await
}

/// [`tls_connect_from`] presenting `<identity>.pem`/`<identity>.key` from
/// `certs` (e.g. one made with [`Certs::issue`]), or no certificate.
pub async fn tls_connect_as(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    certs: &Certs,
    identity: Option<&str>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    tls_connect_named(addr, source, certs, identity, "localhost").await
}

/// A TLS client configuration trusting `certs`' CA, presenting
/// `<identity>.pem`/`<identity>.key` from `certs`, or no certificate.
/// One configuration serves several connections (a second one can resume
/// the first one's session).
pub fn tls_client_config(certs: &Certs, identity: Option<&str>) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs.path("ca.pem")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let builder = rustls::ClientConfig::builder_with_provider(mqttlb::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    match identity {
        Some(name) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_file_iter(certs.path(&format!("{name}.pem")))
                    .expect("client cert")
                    .collect::<Result<_, _>>()
                    .expect("client cert");
            let key = PrivateKeyDer::from_pem_file(certs.path(&format!("{name}.key")))
                .expect("client key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    }
}

/// [`tls_connect_as`] for `server_name` (sent as SNI; the proxy's
/// certificate must name it).
pub async fn tls_connect_named(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    certs: &Certs,
    identity: Option<&str>,
    server_name: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client_config(certs, identity)));
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
    let name =
        rustls_pki_types::ServerName::try_from(server_name.to_string()).expect("server name");
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
    connack_code(s).await
}

/// Read a CONNACK's first four bytes (within the deadline) and return its
/// return/reason code; `None` on a close, a timeout or another packet.
pub async fn connack_code<S>(s: &mut S) -> Option<u8>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut buf = [0u8; 4];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut buf))
        .await
        .ok()?
        .ok()?;
    (buf[0] == 0x20).then_some(buf[3])
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

/// A rumqttc 3.1.1 client over `wss://localhost:PORT/mqtt`, trusting the
/// dev CA.
pub fn wss_client(port: u16, certs: &Certs, id: &str) -> MqttClient {
    let mut opts = rumqttc::MqttOptions::new(id, format!("wss://localhost:{port}/mqtt"), port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_transport(rumqttc::Transport::wss_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: certs.read("ca.pem"),
            alpn: None,
            client_auth: None,
        },
    ));
    MqttClient::start(opts)
}

/// Client ids whose client-id hash home among `nodes` is `home`.
pub fn homed_on(home: &str, nodes: &[&str], n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("dev-{i}"))
        .filter(|id| {
            let best = nodes
                .iter()
                .max_by_key(|node| {
                    mqttlb::balance::strategy::hrw_score(
                        id.as_bytes(),
                        mqttlb::balance::strategy::name_seed(node),
                    )
                })
                .expect("nodes");
            *best == home
        })
        .take(n)
        .collect()
}

/// Connect `id` (MQTT `level` 4 or 5) over TLS through `proxy` and read
/// the whole CONNACK (MQTT 5's carries properties), which must accept it.
pub async fn tls_session(
    proxy: SocketAddr,
    certs: &Certs,
    id: &str,
    level: u8,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut stream = tls_connect(proxy, certs, false).await.expect("TLS");
    stream
        .write_all(&connect_packet(level, id))
        .await
        .expect("CONNECT");
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await.expect("CONNACK");
    let mut body = vec![0u8; usize::from(head[1])];
    stream.read_exact(&mut body).await.expect("CONNACK body");
    assert_eq!((head[0], body.get(1)), (0x20, Some(&0)), "{id}");
    stream
}
