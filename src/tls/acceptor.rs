//! The acceptor: a listener's rustls configuration, built once per (re)load
//! from its [`TlsConfig`], and the server handshake.
//!
//! The handshake is split in two ([`LazyConfigAcceptor`]): the ClientHello is
//! read first, so ALPN `mqtt` is negotiated only for clients that offer it —
//! a client offering other protocols (or none) is still served, where a
//! plain rustls config with ALPN set would refuse it.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::client_chain;
use super::files::{CertificateExpiry, read_certs, read_crls};
use super::identity::{CertIdentity, IdentityRequest, common_name};
use super::sni::SniResolver;
use super::tickets::{self, KeyRing, TicketKeys, Ticketer};
use super::{ALPN_MQTT, ClientAuth, TlsConfig, TlsSetupError, TlsVersion, listener_provider};

/// Everything a listener needs to terminate TLS, built once per (re)load.
#[derive(Clone)]
pub struct TlsAcceptor {
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
    /// The served certificates (default first, then SNI ones in config
    /// order) and when each expires.
    certificates: Arc<[CertificateExpiry]>,
}

/// Facts about a finished handshake that the PROXY header and routing use.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// Shared with the client index (`proxy::clients`).
    pub sni: Option<std::sync::Arc<str>>,
    pub alpn: Option<Vec<u8>>,
    pub version: &'static str,
    /// The client presented a certificate (and, rustls having accepted the
    /// handshake, it verified against the configured CA).
    pub client_cert: bool,
    pub client_cn: Option<String>,
    /// The handshake resumed a session (a ticket, or a TLS 1.2 session id)
    /// instead of a full handshake.
    pub resumed: bool,
    /// The negotiated cipher suite (rustls' name, e.g.
    /// `TLS13_AES_128_GCM_SHA256`).
    pub cipher: &'static str,
    /// More of the client certificate, read only when asked for (see
    /// [`IdentityRequest`]); boxed, so a connection without it pays one
    /// pointer.
    pub identity: Option<Box<CertIdentity>>,
}

/// Why a handshake failed, for logs and the `result` metric label.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

impl TlsAcceptor {
    /// Load certificates, keys, CA, CRL and ticket keys named by `cfg` of
    /// listener `listener` (key paths under `key`, e.g. `listener[0].tls`).
    /// Without a `ticket_keys` file, tickets are sealed with `own_keys`,
    /// the process's (`SessionKeys::ring`).
    pub fn from_config(
        key: &str,
        listener: &str,
        cfg: &TlsConfig,
        own_keys: &KeyRing,
    ) -> Result<TlsAcceptor, TlsSetupError> {
        let provider = listener_provider(key, cfg)?;
        let (resolver, certificates) = SniResolver::load(key, cfg, &provider)?;
        let resolver = Arc::new(resolver);
        let versions: &[&rustls::SupportedProtocolVersion] = match cfg.min_version {
            TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::V13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| TlsSetupError::new(&format!("{key}.min_version"), e.to_string()))?;
        // What a resumed session inherits: the listener, its client
        // authentication and the files behind it (the ticket context).
        let mut ca_ders = Vec::new();
        let mut crl_ders = Vec::new();
        let builder = match cfg.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional | ClientAuth::Required => {
                let ca_key = format!("{key}.client_ca");
                let ca_path = cfg
                    .client_ca
                    .as_deref()
                    .ok_or_else(|| TlsSetupError::new(&ca_key, "missing"))?;
                let mut roots = RootCertStore::empty();
                for cert in read_certs(&ca_key, ca_path)? {
                    ca_ders.push(cert.as_ref().to_vec());
                    roots.add(cert).map_err(|e| {
                        TlsSetupError::new(&ca_key, format!("{}: {e}", ca_path.display()))
                    })?;
                }
                let mut vb =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if let Some(crl_path) = &cfg.crl {
                    let crls = read_crls(&format!("{key}.crl"), crl_path)?;
                    crl_ders.extend(crls.iter().map(|c| c.as_ref().to_vec()));
                    vb = vb.with_crls(crls);
                }
                if cfg.client_auth == ClientAuth::Optional {
                    vb = vb.allow_unauthenticated();
                }
                let verifier = vb
                    .build()
                    .map_err(|e| TlsSetupError::new(&ca_key, e.to_string()))?;
                builder.with_client_cert_verifier(Arc::new(
                    client_chain::BoundedClientVerifier::new(verifier, cfg.client_chain),
                ))
            }
        };
        let mut config = builder.with_cert_resolver(resolver);
        config.ignore_client_order = cfg.prefer_server_order;
        config.send_tls13_tickets = usize::from(cfg.session_tickets);
        // One ticketer for TLS 1.3 tickets and TLS 1.2 resumption alike.
        let keys = match &cfg.ticket_keys {
            Some(path) => Arc::new(ArcSwap::from_pointee(TicketKeys::read(
                &format!("{key}.ticket_keys"),
                path,
            )?)),
            None => own_keys.clone(),
        };
        let ca: Vec<&[u8]> = ca_ders.iter().map(Vec::as_slice).collect();
        let crls: Vec<&[u8]> = crl_ders.iter().map(Vec::as_slice).collect();
        let context = tickets::context(listener, cfg.client_auth, &ca, &crls);
        config.ticketer = Arc::new(Ticketer::new(keys, context));
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
        let without_alpn = Arc::new(config.clone());
        config.alpn_protocols = vec![ALPN_MQTT.to_vec()];
        Ok(TlsAcceptor {
            with_alpn: Arc::new(config),
            without_alpn,
            certificates: certificates.into(),
        })
    }

    /// The certificates this acceptor serves and their expiry, read when
    /// it was built (for the `mqttlb_tls_certificate_not_after_seconds`
    /// gauge and alerts on it).
    pub fn certificates(&self) -> &[CertificateExpiry] {
        &self.certificates
    }

    /// Run the server handshake on `io`. The caller bounds it with a deadline.
    pub async fn accept<IO>(
        &self,
        io: IO,
        want: IdentityRequest,
    ) -> Result<(TlsStream<IO>, TlsInfo), HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io)
            .await
            .map_err(HandshakeError::Tls)?;
        let offers_mqtt = start
            .client_hello()
            .alpn()
            .is_some_and(|mut protos| protos.any(|p| p == ALPN_MQTT));
        let config = if offers_mqtt {
            &self.with_alpn
        } else {
            &self.without_alpn
        };
        let stream = start
            .into_stream(config.clone())
            .await
            .map_err(HandshakeError::Tls)?;
        let (_, conn) = stream.get_ref();
        let client_cert = conn.peer_certificates().and_then(|c| c.first());
        let info = TlsInfo {
            sni: conn.server_name().map(Into::into),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "unknown",
            },
            client_cert: client_cert.is_some(),
            resumed: conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            client_cn: client_cert.and_then(|c| common_name(c)),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|s| s.suite().as_str())
                .unwrap_or("unknown"),
            identity: client_cert
                .filter(|_| want.any())
                .map(|c| Box::new(CertIdentity::read(c.as_ref(), want))),
        };
        Ok((stream, info))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertKeyPaths;
    use crate::tls::tests::cfg;

    #[test]
    fn certificates_list_each_served_leaf_and_its_not_after() {
        let dir = tempfile::tempdir().unwrap();
        let pair = |name: &str, host: &str, (y, m, d): (i32, u8, u8)| {
            let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
            params.not_after = rcgen::date_time_ymd(y, m, d);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let paths = CertKeyPaths {
                cert: dir.path().join(format!("{name}.crt")),
                key: dir.path().join(format!("{name}.key")),
                ocsp: None,
            };
            std::fs::write(&paths.cert, cert.pem()).unwrap();
            std::fs::write(&paths.key, key.serialize_pem()).unwrap();
            paths
        };
        let mut c = cfg(None, None);
        c.default_cert = pair("default", "lb.example", (2031, 1, 2));
        c.sni = vec![pair("other", "other.example", (2030, 6, 1))];
        let keys = crate::tls::SessionKeys::generate_now().unwrap().ring();
        let acceptor = TlsAcceptor::from_config("l.tls", "l", &c, &keys).unwrap();
        assert_eq!(
            acceptor.certificates(),
            [
                CertificateExpiry {
                    cert: c.default_cert.cert.clone(),
                    not_after: 1_925_078_400, // 2031-01-02T00:00:00Z
                },
                CertificateExpiry {
                    cert: c.sni[0].cert.clone(),
                    not_after: 1_906_502_400, // 2030-06-01T00:00:00Z
                },
            ]
        );
    }
}
