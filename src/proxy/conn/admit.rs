//! Admission: the TLS handshake, the WebSocket upgrade, then the CONNECT
//! read under its deadline and size cap and the checks on it (client-id
//! rule, client-id rate), and the route. What is refused here never
//! touches a broker; the cause of each refusal is logged where it is found.
//!
//! The route is chosen once, when everything a rule may look at is known:
//! on pass-through listeners right after the handshake (SNI, client
//! certificate CN: rules there can use nothing else), on MQTT-aware
//! listeners after the CONNECT. An SNI or CN rule decides the same there as
//! it would at the handshake (rules are pure functions of the facts, and
//! nothing between the two depends on the pool), while a client-id rule
//! ahead of it keeps its precedence.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};
use tracing::{Span, debug, info};

use super::super::route::Route;
use super::super::websocket::{self, Upgrade};
use super::access::keep;
use super::{Conn, Refusal};
use crate::balance::route::{ConnectFacts, Facts};
use crate::config::{ClientIdMatch, HashKey, MqttListenerConfig, WebSocketConfig};
use crate::metrics::HandshakeResult;
use crate::mqtt::{Connect, Peek, ProtocolVersion, peek_connect};
use crate::ratelog::LogLimiter;
use crate::tls::{TlsAcceptor, TlsInfo};

/// First read size while waiting for a CONNECT: most CONNECTs are far
/// smaller, and the parser asks for exactly what is missing after that.
const INITIAL_CONNECT_READ: usize = 256;

/// What admission learned from the client: the bytes to forward, and what
/// routing and the relay need.
pub(super) struct Hello<'c> {
    /// The route that chose the client's pool.
    pub route: &'c Route,
    /// Bytes read from the client (the CONNECT and anything pipelined
    /// after it; on pass-through listeners a forwarded upgrade request, or
    /// nothing), forwarded verbatim to the backend.
    pub bytes: Vec<u8>,
    /// The CONNECT's protocol version; `None` on pass-through listeners
    /// (no CONNECT read, no CONNACK to wait for or to answer with).
    pub protocol: Option<ProtocolVersion>,
    /// The strategy's hash key (client id, username or certificate CN) of
    /// the route's pool.
    pub key: Option<Vec<u8>>,
    /// The relay's idle timeout.
    pub idle: Duration,
    /// The client id, kept for the client index (`None`: index off,
    /// empty id, or no CONNECT read).
    pub client_id: Option<Box<str>>,
}

impl Conn {
    /// The TLS handshake under `tls_handshake_timeout`.
    pub(super) async fn handshake(
        &self,
        acceptor: &TlsAcceptor,
        tcp: TcpStream,
    ) -> Result<(tokio_rustls::server::TlsStream<TcpStream>, TlsInfo), Refusal> {
        let ctx = &self.ctx;
        let started = Instant::now();
        let done = match timeout(
            ctx.limits.tls_handshake_timeout,
            acceptor.accept(tcp, ctx.identity),
        )
        .await
        {
            Err(_) => {
                ctx.metrics.handshake(HandshakeResult::Timeout);
                debug!("TLS handshake timed out");
                Err(Refusal::TlsTimeout)
            }
            Ok(Err(crate::tls::HandshakeError::Tls(e))) => {
                ctx.metrics.handshake(HandshakeResult::Failed);
                if crate::tls::client_chain::refused_chain(&e) {
                    static CHAINS: LogLimiter = crate::ratelog::per_kind();
                    if let Some(suppressed) = CHAINS.allow() {
                        info!(error = %e, suppressed, "client certificate chain refused before verification");
                    }
                    Err(Refusal::ClientChain)
                } else {
                    debug!(error = %e, "TLS handshake failed");
                    Err(Refusal::TlsFailed)
                }
            }
            Ok(Ok(done)) => {
                ctx.metrics.handshake(HandshakeResult::Ok);
                if done.1.resumed {
                    ctx.metrics.resumed.inc();
                }
                ctx.metrics
                    .handshake_duration
                    .observe(started.elapsed().as_secs_f64());
                Ok(done)
            }
        };
        self.note(|f| f.timings.tls = started.elapsed().into());
        done
    }

    /// Read and check the WebSocket upgrade request under `upgrade_timeout`.
    pub(super) async fn upgrade<S>(
        &self,
        ws: &WebSocketConfig,
        client: &mut S,
    ) -> Result<Upgrade, Refusal>
    where
        S: AsyncRead + Unpin,
    {
        match timeout(ws.upgrade_timeout, websocket::read_upgrade(client, ws)).await {
            Ok(Ok(upgrade)) => Ok(upgrade),
            Ok(Err(refusal)) => {
                static REFUSED: LogLimiter = crate::ratelog::per_kind();
                if let Some(suppressed) = REFUSED.allow() {
                    info!(reason = %refusal, suppressed, "WebSocket upgrade refused");
                }
                Err(Refusal::Upgrade(refusal))
            }
            Err(_) => {
                debug!(timeout = ?ws.upgrade_timeout, "no complete WebSocket upgrade request before the deadline");
                Err(Refusal::UpgradeTimeout)
            }
        }
    }

    /// Answer an upgrade the proxy terminates (`to = "tcp"`) with `101`;
    /// false when the client left first.
    pub(super) async fn accept_upgrade<S>(
        &self,
        ws: &WebSocketConfig,
        client: &mut S,
        upgrade: &Upgrade,
    ) -> bool
    where
        S: AsyncWrite + Unpin,
    {
        let answered = timeout(ws.upgrade_timeout, async {
            client
                .write_all(&websocket::accept_response(upgrade))
                .await?;
            client.flush().await
        })
        .await;
        let done = matches!(answered, Ok(Ok(())));
        if !done {
            debug!("client left before its WebSocket upgrade was answered");
        }
        done
    }

    /// Admit the client on its MQTT byte stream: on MQTT listeners, read
    /// the CONNECT and check it; pass-through listeners forward `preread`.
    pub(super) async fn admit<S>(
        &self,
        client: &mut S,
        preread: Vec<u8>,
    ) -> Result<Hello<'_>, Refusal>
    where
        S: AsyncRead + Unpin,
    {
        match &self.ctx.mqtt {
            Some(mqtt) => self.read_connect(mqtt, client).await,
            None => Ok(Hello {
                route: self.route(None),
                bytes: preread,
                protocol: None,
                key: None,
                idle: self.ctx.limits.idle_timeout,
                client_id: None,
            }),
        }
    }

    /// Read the CONNECT under its deadline and size cap, then check it.
    async fn read_connect<S>(
        &self,
        mqtt: &MqttListenerConfig,
        client: &mut S,
    ) -> Result<Hello<'_>, Refusal>
    where
        S: AsyncRead + Unpin,
    {
        let started = Instant::now();
        let limit = mqtt.max_connect_size;
        let mut buf = vec![0u8; INITIAL_CONNECT_READ.min(limit)];
        let mut filled = 0;
        let read = async {
            loop {
                match peek_connect(buf.get(..filled).unwrap_or_default(), limit) {
                    Ok(Peek::Complete { connect, .. }) => return self.check(mqtt, &connect),
                    Ok(Peek::Incomplete(need)) => {
                        if buf.len() < filled + need {
                            buf.resize(filled + need, 0);
                        }
                    }
                    Err(e) => {
                        static REFUSED: LogLimiter = crate::ratelog::per_kind();
                        if let Some(suppressed) = REFUSED.allow() {
                            info!(error = %e, suppressed, "first packet refused");
                        }
                        return Err(Refusal::BadConnect(e));
                    }
                }
                let Some(free) = buf.get_mut(filled..) else {
                    return Err(Refusal::ReadError);
                };
                match client.read(free).await {
                    Ok(0) => {
                        debug!("client left before sending a CONNECT");
                        return Err(Refusal::ClosedBeforeConnect);
                    }
                    Ok(n) => filled += n,
                    Err(e) => {
                        debug!(error = %e, "read error before CONNECT");
                        return Err(Refusal::ReadError);
                    }
                }
            }
        };
        let read = timeout(mqtt.connect_timeout, read).await;
        self.note(|f| f.timings.connect = started.elapsed().into());
        let mut hello = match read {
            Ok(checked) => checked?,
            Err(_) => {
                static LATE: LogLimiter = crate::ratelog::per_kind();
                if let Some(suppressed) = LATE.allow() {
                    info!(timeout = ?mqtt.connect_timeout, received = filled, suppressed, "no complete CONNECT before the deadline");
                }
                return Err(Refusal::ConnectTimeout);
            }
        };
        buf.truncate(filled);
        hello.bytes = buf;
        Ok(hello)
    }

    /// Count and log a complete CONNECT, check it against the client-id
    /// rule and rate, choose its route and take its hash key. The bytes are
    /// the caller's to add.
    fn check(
        &self,
        mqtt: &MqttListenerConfig,
        connect: &Connect<'_>,
    ) -> Result<Hello<'_>, Refusal> {
        let ctx = &self.ctx;
        let tls = self.tls.as_ref();
        ctx.metrics.mqtt_connect(connect.protocol);
        Span::current().record("client_id", connect.client_id);
        // Copied only while the access log is on.
        self.note(|f| {
            f.protocol = Some(connect.protocol);
            f.client_id = Some(keep(connect.client_id));
            if self.wants_username() {
                f.username = connect.username.map(keep);
            }
        });
        debug!(
            protocol = connect.protocol.as_str(),
            keep_alive = connect.keep_alive,
            clean = connect.clean,
            username = connect.username.unwrap_or(""),
            "CONNECT"
        );
        if !client_id_matches(mqtt.client_id_match, connect.client_id, tls) {
            static MISMATCH: LogLimiter = crate::ratelog::per_kind();
            if let Some(suppressed) = MISMATCH.allow() {
                info!(
                    cert.cn = tls.and_then(|t| t.client_cn.as_deref()).unwrap_or(""),
                    suppressed, "client id not named by the client certificate; refused"
                );
            }
            return Err(Refusal::ClientIdMismatch(connect.protocol));
        }
        // An empty client id (the broker assigns one) names nobody.
        let client = (!connect.client_id.is_empty())
            .then(|| xxhash_rust::xxh3::xxh3_64(connect.client_id.as_bytes()));
        if client.is_some_and(|id| !ctx.state.client_limit.admit(&id)) {
            // Refused before any broker is touched.
            static STORMS: LogLimiter = crate::ratelog::per_kind();
            if let Some(suppressed) = STORMS.allow() {
                info!(suppressed, "client id reconnects too often; refused");
            }
            return Err(Refusal::ClientRateLimit(connect.protocol));
        }
        let route = self.route(Some(ConnectFacts {
            client_id: connect.client_id,
            username: connect.username,
        }));
        let key = match route.pool.hash_key {
            HashKey::ClientId => Some(connect.client_id.as_bytes().to_vec()),
            HashKey::Username => connect.username.map(|u| u.as_bytes().to_vec()),
            HashKey::CertCn => tls
                .and_then(|t| t.client_cn.as_ref())
                .map(|cn| cn.as_bytes().to_vec()),
        };
        Ok(Hello {
            route,
            bytes: Vec::new(),
            protocol: Some(connect.protocol),
            key,
            idle: idle_timeout(mqtt, connect.keep_alive, ctx.limits.idle_timeout),
            client_id: (ctx.clients.is_some() && !connect.client_id.is_empty())
                .then(|| connect.client_id.into()),
        })
    }

    /// The client's route: the first rule its handshake facts and CONNECT
    /// (`None` on pass-through listeners) match, else the listener's pool.
    fn route(&self, connect: Option<ConnectFacts<'_>>) -> &Route {
        let tls = self.tls.as_ref();
        self.ctx.routes.choose(&Facts {
            sni: tls.and_then(|t| t.sni.as_deref()),
            cert_cn: tls.and_then(|t| t.client_cn.as_deref()),
            connect,
        })
    }
}

/// `listener.mqtt.client_id_match`: whether the certificate names the
/// client id (an empty id, or no certificate, never matches).
fn client_id_matches(rule: ClientIdMatch, client_id: &str, tls: Option<&TlsInfo>) -> bool {
    let cn = || tls.and_then(|t| t.client_cn.as_deref()) == Some(client_id);
    let san = || {
        tls.and_then(|t| t.identity.as_deref())
            .is_some_and(|id| id.has_san(client_id))
    };
    match rule {
        ClientIdMatch::Off => true,
        _ if client_id.is_empty() => false,
        ClientIdMatch::Cn => cn(),
        ClientIdMatch::CnOrSan => cn() || san(),
    }
}

/// The idle timeout for a client: `factor` × its keep-alive, capped; the
/// listener-wide idle timeout when the client disabled keep-alive.
pub fn idle_timeout(
    mqtt: &MqttListenerConfig,
    keep_alive: u16,
    no_keepalive: Duration,
) -> Duration {
    if keep_alive == 0 {
        return no_keepalive;
    }
    Duration::from_secs_f64(f64::from(keep_alive) * mqtt.keepalive_factor)
        .min(mqtt.max_idle_timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_timeout_follows_keep_alive() {
        let m = MqttListenerConfig {
            connect_timeout: Duration::from_secs(5),
            max_connect_size: 1024,
            keepalive_factor: 1.5,
            max_idle_timeout: Duration::from_secs(3600),
            client_id_match: ClientIdMatch::Off,
        };
        let none = Duration::from_secs(300);
        assert_eq!(idle_timeout(&m, 60, none), Duration::from_secs(90));
        assert_eq!(idle_timeout(&m, 0, none), none);
        assert_eq!(idle_timeout(&m, 65535, none), Duration::from_secs(3600));
    }

    #[test]
    fn client_ids_must_be_named_by_the_certificate() {
        let tls = TlsInfo {
            client_cert: true,
            client_cn: Some("dev-1".into()),
            identity: Some(Box::new(crate::tls::CertIdentity {
                sans: vec!["DNS:dev-2.example".into(), "URI:urn:dev:3".into()],
                ..Default::default()
            })),
            ..TlsInfo::default()
        };
        let t = Some(&tls);
        use ClientIdMatch::*;
        assert!(client_id_matches(Off, "anything", None));
        assert!(client_id_matches(Cn, "dev-1", t));
        assert!(!client_id_matches(Cn, "dev-2.example", t));
        assert!(client_id_matches(CnOrSan, "dev-2.example", t));
        assert!(client_id_matches(CnOrSan, "urn:dev:3", t));
        assert!(!client_id_matches(CnOrSan, "dev-4", t));
        assert!(
            !client_id_matches(CnOrSan, "", t),
            "an empty id names nobody"
        );
        assert!(!client_id_matches(Cn, "dev-1", None), "no certificate");
    }
}
