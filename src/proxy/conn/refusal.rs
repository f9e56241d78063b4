//! Why a connection task refused its client, and what follows from it.
//!
//! Every stage that can refuse returns a [`Refusal`]; [`Refusal::verdict`]
//! is the one place that says which `reason` of
//! `mqttlb_connections_rejected_total` it counts under and what the client
//! reads before the close, and `Conn::refuse` the one place that does both.
//! The cause (with its details: the error, the timeout, the certificate's
//! name) is logged where it is found.

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::super::websocket;
use crate::metrics::Rejection;
use crate::mqtt::ProtocolVersion;
use crate::mqtt::connect::ConnectError;
use crate::mqtt::packets::{
    connack_not_authorized, connack_rate_exceeded, connack_server_busy, connack_server_unavailable,
};

/// Why a client was refused before its connection was relayed.
#[derive(Debug)]
pub enum Refusal {
    /// `listener.proxy_protocol` on and the peer is not in
    /// `proxy_protocol_from`, header or not.
    ProxyUntrusted,
    /// `proxy_protocol = "required"` and the trusted peer sent no header.
    ProxyHeaderMissing,
    /// The inbound PROXY header is malformed or too large.
    ProxyHeaderInvalid,
    /// No complete inbound PROXY header within `proxy_protocol_timeout`.
    ProxyHeaderTimeout,
    /// `limits.source_connect_rate`, on the client's address from a PROXY
    /// header (other listeners check it in the accept loop).
    SourceRateLimit,
    /// No TLS handshake within `tls_handshake_timeout`.
    TlsTimeout,
    /// The TLS handshake failed.
    TlsFailed,
    /// The client's certificate chain broke `max_client_chain`,
    /// `max_client_chain_size` or its shape rule: refused before webpki
    /// saw it.
    ClientChain,
    /// The WebSocket upgrade was refused, or the client left or failed
    /// while sending it.
    Upgrade(websocket::Refusal),
    /// No complete upgrade request within `websocket.upgrade_timeout`.
    UpgradeTimeout,
    /// No complete CONNECT within `connect_timeout`.
    ConnectTimeout,
    /// The client closed before its CONNECT was complete.
    ClosedBeforeConnect,
    /// A read error before the CONNECT was complete.
    ReadError,
    /// The first packet is not a CONNECT the proxy takes (another packet,
    /// TLS or HTTP, too large, malformed, an unknown protocol).
    BadConnect(ConnectError),
    /// `listener.mqtt.client_id_match`: the client certificate does not
    /// name the CONNECT's client id.
    ClientIdMismatch(ProtocolVersion),
    /// `limits.client_connect_rate`: the client id reconnects too often.
    ClientRateLimit(ProtocolVersion),
    /// No node took the client; MQTT clients (`Some` protocol) are told.
    NoBackend(Option<ProtocolVersion>),
    /// The pool's admission queue had no room (or `queue.size` is 0);
    /// MQTT clients read "server busy", pass-through ones are closed.
    QueueFull(Option<ProtocolVersion>),
    /// Waited the pool's `queue.timeout` in vain; the same answer.
    QueueTimeout(Option<ProtocolVersion>),
    /// The client closed its connection while waiting for admission.
    QueueAbandoned,
}

/// What a refused client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Nothing, not even an orderly close: the socket is dropped (the TLS
    /// handshake already ended, the client is gone, or a pass-through
    /// client has no protocol to be told in).
    Drop,
    /// These bytes (a CONNACK refusal, an HTTP error; possibly none), then
    /// the write side is shut down (TLS: close_notify).
    Close(&'static [u8]),
}

impl Refusal {
    /// The `reason` label the refusal counts under, and the client's answer.
    pub fn verdict(&self) -> (Rejection, Answer) {
        use Answer::{Close, Drop};
        match self {
            // Before TLS, on a balancer's connection: nothing to say, the
            // socket is closed.
            Refusal::ProxyUntrusted => (Rejection::ProxyUntrusted, Drop),
            Refusal::ProxyHeaderMissing => (Rejection::ProxyHeaderMissing, Drop),
            Refusal::ProxyHeaderInvalid => (Rejection::ProxyHeaderInvalid, Drop),
            Refusal::ProxyHeaderTimeout => (Rejection::ProxyHeaderTimeout, Drop),
            Refusal::SourceRateLimit => (Rejection::SourceRateLimit, Drop),
            Refusal::TlsTimeout => (Rejection::TlsHandshakeTimeout, Drop),
            Refusal::TlsFailed => (Rejection::TlsHandshakeFailed, Drop),
            Refusal::ClientChain => (Rejection::ClientChainRefused, Drop),
            Refusal::Upgrade(refusal) => (
                match refusal {
                    websocket::Refusal::Status(..) => Rejection::WebSocketRefused,
                    websocket::Refusal::Closed => Rejection::ClosedBeforeConnect,
                    websocket::Refusal::Io(_) => Rejection::ClientError,
                },
                refusal.response().map_or(Drop, Close),
            ),
            Refusal::UpgradeTimeout => (Rejection::WebSocketTimeout, Drop),
            Refusal::ConnectTimeout => (Rejection::ConnectTimeout, Close(b"")),
            Refusal::ClosedBeforeConnect => (Rejection::ClosedBeforeConnect, Close(b"")),
            Refusal::ReadError => (Rejection::ClientError, Close(b"")),
            Refusal::BadConnect(e) => (Rejection::from(e), Close(b"")),
            Refusal::ClientIdMismatch(protocol) => (
                Rejection::ClientIdMismatch,
                Close(connack_not_authorized(*protocol)),
            ),
            Refusal::ClientRateLimit(protocol) => (
                Rejection::ClientRateLimit,
                Close(connack_rate_exceeded(*protocol)),
            ),
            Refusal::NoBackend(protocol) => (
                Rejection::NoBackend,
                protocol.map_or(Drop, |p| Close(connack_server_unavailable(p))),
            ),
            Refusal::QueueFull(protocol) => (
                Rejection::QueueFull,
                protocol.map_or(Drop, |p| Close(connack_server_busy(p))),
            ),
            Refusal::QueueTimeout(protocol) => (
                Rejection::QueueTimeout,
                protocol.map_or(Drop, |p| Close(connack_server_busy(p))),
            ),
            Refusal::QueueAbandoned => (Rejection::QueueAbandoned, Drop),
        }
    }
}

/// How long a refused client gets to take its answer before the close.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

impl Answer {
    /// Give a refused client its answer, best effort: it may already be
    /// gone.
    pub async fn give<S>(self, client: &mut S)
    where
        S: AsyncWrite + Unpin,
    {
        let Answer::Close(bytes) = self else {
            return;
        };
        let _ = timeout(REFUSAL_WRITE, async {
            client.write_all(bytes).await?;
            client.shutdown().await
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProtocolVersion::{V5, V311};

    /// Every refusal's label and answer, as users and dashboards know them.
    #[test]
    fn refusals_keep_their_reasons_and_answers() {
        let http_400: &[u8] =
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let close = Answer::Close(b"");
        let cases: Vec<(Refusal, &str, Answer)> = vec![
            (Refusal::ProxyUntrusted, "proxy_untrusted", Answer::Drop),
            (
                Refusal::ProxyHeaderMissing,
                "proxy_header_missing",
                Answer::Drop,
            ),
            (
                Refusal::ProxyHeaderInvalid,
                "proxy_header_invalid",
                Answer::Drop,
            ),
            (
                Refusal::ProxyHeaderTimeout,
                "proxy_header_timeout",
                Answer::Drop,
            ),
            (Refusal::SourceRateLimit, "source_rate_limit", Answer::Drop),
            (Refusal::TlsTimeout, "tls_handshake_timeout", Answer::Drop),
            (Refusal::TlsFailed, "tls_handshake_failed", Answer::Drop),
            (Refusal::ClientChain, "client_chain_refused", Answer::Drop),
            (
                Refusal::Upgrade(websocket::Refusal::Status(400, "bad")),
                "websocket_refused",
                Answer::Close(http_400),
            ),
            (
                Refusal::Upgrade(websocket::Refusal::Closed),
                "closed_before_connect",
                Answer::Drop,
            ),
            (
                Refusal::Upgrade(websocket::Refusal::Io("reset".into())),
                "client_error",
                Answer::Drop,
            ),
            (Refusal::UpgradeTimeout, "websocket_timeout", Answer::Drop),
            (Refusal::ConnectTimeout, "connect_timeout", close),
            (Refusal::ClosedBeforeConnect, "closed_before_connect", close),
            (Refusal::ReadError, "client_error", close),
            (
                Refusal::BadConnect(ConnectError::NotConnect(0x30)),
                "not_connect",
                close,
            ),
            (Refusal::BadConnect(ConnectError::Tls), "tls_in_mqtt", close),
            (Refusal::BadConnect(ConnectError::Http), "http", close),
            (
                Refusal::BadConnect(ConnectError::TooLarge { size: 9, limit: 8 }),
                "connect_too_large",
                close,
            ),
            (
                Refusal::BadConnect(ConnectError::UnsupportedProtocol),
                "unsupported_protocol",
                close,
            ),
            (
                Refusal::BadConnect(ConnectError::Truncated),
                "malformed_connect",
                close,
            ),
            (
                Refusal::ClientIdMismatch(V311),
                "client_id_mismatch",
                Answer::Close(&[0x20, 0x02, 0x00, 0x05]),
            ),
            (
                Refusal::ClientIdMismatch(V5),
                "client_id_mismatch",
                Answer::Close(&[0x20, 0x03, 0x00, 0x87, 0x00]),
            ),
            (
                Refusal::ClientRateLimit(V311),
                "client_rate_limit",
                Answer::Close(&[0x20, 0x02, 0x00, 0x03]),
            ),
            (
                Refusal::ClientRateLimit(V5),
                "client_rate_limit",
                Answer::Close(&[0x20, 0x03, 0x00, 0x9f, 0x00]),
            ),
            (
                Refusal::NoBackend(Some(V311)),
                "no_backend",
                Answer::Close(&[0x20, 0x02, 0x00, 0x03]),
            ),
            (
                Refusal::NoBackend(Some(V5)),
                "no_backend",
                Answer::Close(&[0x20, 0x03, 0x00, 0x88, 0x00]),
            ),
            (Refusal::NoBackend(None), "no_backend", Answer::Drop),
            (
                Refusal::QueueFull(Some(V311)),
                "queue_full",
                Answer::Close(&[0x20, 0x02, 0x00, 0x03]),
            ),
            (
                Refusal::QueueFull(Some(V5)),
                "queue_full",
                Answer::Close(&[0x20, 0x03, 0x00, 0x89, 0x00]),
            ),
            (Refusal::QueueFull(None), "queue_full", Answer::Drop),
            (
                Refusal::QueueTimeout(Some(V311)),
                "queue_timeout",
                Answer::Close(&[0x20, 0x02, 0x00, 0x03]),
            ),
            (
                Refusal::QueueTimeout(Some(V5)),
                "queue_timeout",
                Answer::Close(&[0x20, 0x03, 0x00, 0x89, 0x00]),
            ),
            (Refusal::QueueTimeout(None), "queue_timeout", Answer::Drop),
            (Refusal::QueueAbandoned, "queue_abandoned", Answer::Drop),
        ];
        assert_eq!(cases.len(), 35);
        for (refusal, reason, want) in cases {
            let (got_reason, got) = refusal.verdict();
            assert_eq!(got_reason.as_str(), reason, "{refusal:?}");
            assert_eq!(got, want, "{refusal:?}");
        }
    }
}
