//! How a bench client reaches its target: optional source address (bound
//! with `IP_BIND_ADDRESS_NO_PORT` so the kernel picks the port at connect
//! time, per 4-tuple), TCP, optional TLS (tokio-rustls, with or without
//! session resumption, SNI, ALPN, client certificate, `--insecure`), and
//! optionally a PROXY header first, as a cloud balancer in front of a
//! listener with `proxy_protocol` sends one (`--proxy-protocol`).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use super::stats::ErrorKind;
use crate::proxy_protocol::{self, ProxyCommand, ProxyProtocol};

/// A client byte stream: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// TLS settings of a bench run.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    pub cafile: Option<std::path::PathBuf>,
    pub insecure: bool,
    pub sni: Option<String>,
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    pub alpn: Vec<String>,
    pub resumption: bool,
}

/// Opens connections to the target, spreading them over source addresses.
pub struct Connector {
    pub target: SocketAddr,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    sources: Vec<IpAddr>,
    connect_timeout: Duration,
    proxy_header: ProxyProtocol,
}

impl Connector {
    /// `host` is the target's host part (the default SNI).
    pub fn new(
        target: SocketAddr,
        host: &str,
        tls: Option<&TlsOptions>,
        sources: Vec<IpAddr>,
        connect_timeout: Duration,
    ) -> Result<Connector, String> {
        let tls = match tls {
            None => None,
            Some(o) => {
                let name = o.sni.as_deref().unwrap_or(host);
                let name = ServerName::try_from(name.to_owned())
                    .map_err(|e| format!("--sni {name:?}: {e}"))?;
                Some((client_config(o)?, name))
            }
        };
        Ok(Connector {
            target,
            tls,
            sources,
            connect_timeout,
            proxy_header: ProxyProtocol::Off,
        })
    }

    /// Send a PROXY header of `version` on each connection before anything
    /// else, naming the connection's own addresses (what a balancer in
    /// front of the target would send).
    pub fn with_proxy_header(mut self, version: ProxyProtocol) -> Connector {
        self.proxy_header = version;
        self
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connect client `i` (its source address is `sources[i % len]`),
    /// TCP and TLS under the connect timeout.
    pub async fn connect(&self, i: usize) -> Result<Box<dyn Io>, ErrorKind> {
        let source = match self.sources.len() {
            0 => None,
            n => self.sources.get(i % n).copied(),
        };
        let tcp = timeout(self.connect_timeout, tcp_connect(self.target, source))
            .await
            .map_err(|_| ErrorKind::ConnectTimeout)?
            .map_err(|e| ErrorKind::from_connect(&e))?;
        let _ = tcp.set_nodelay(true);
        let mut tcp = tcp;
        if self.proxy_header != ProxyProtocol::Off {
            let (Ok(local), Ok(peer)) = (tcp.local_addr(), tcp.peer_addr()) else {
                return Err(ErrorKind::Connect);
            };
            let mut header = Vec::with_capacity(64);
            proxy_protocol::encode_check(
                self.proxy_header,
                ProxyCommand::Proxy,
                local,
                peer,
                &mut header,
            );
            timeout(self.connect_timeout, tcp.write_all(&header))
                .await
                .map_err(|_| ErrorKind::ConnectTimeout)?
                .map_err(|e| ErrorKind::from_connect(&e))?;
        }
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((connector, name)) => {
                let stream = timeout(self.connect_timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| ErrorKind::ConnectTimeout)?
                    .map_err(|_| ErrorKind::Tls)?;
                Ok(Box::new(stream))
            }
        }
    }
}

async fn tcp_connect(target: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = source else {
        return TcpStream::connect(target).await;
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    // Let connect() choose the port per 4-tuple, so each source address
    // can reach many targets with the whole ephemeral range.
    #[cfg(target_os = "linux")]
    {
        use nix::sys::socket::{setsockopt, sockopt::IpBindAddressNoPort};
        let _ = setsockopt(&socket, IpBindAddressNoPort, &true);
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    let std: std::net::TcpStream = socket.into();
    TcpSocket::from_std_stream(std).connect(target).await
}

fn client_config(o: &TlsOptions) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = crate::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = if o.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let Some(ca) = &o.cafile else {
            return Err(
                "--tls needs --cafile (the CA that signed the server certificate) or --insecure"
                    .into(),
            );
        };
        for c in CertificateDer::pem_file_iter(ca).map_err(|e| pem_error(ca, &e))? {
            roots
                .add(c.map_err(|e| pem_error(ca, &e))?)
                .map_err(|e| format!("--cafile {}: {e}", ca.display()))?;
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&o.cert, &o.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| pem_error(cert, &e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("--cert/--key: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("--cert and --key go together".into()),
    };
    config.alpn_protocols = o.alpn.iter().map(|a| a.as_bytes().to_vec()).collect();
    if !o.resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

fn pem_error(path: &Path, e: &dyn std::fmt::Display) -> String {
    format!("{}: {e}", path.display())
}

/// `--insecure`: accept any server certificate (signatures are still
/// checked, so the handshake costs what a real one does). Also what tests
/// use to look at a certificate a name does not match.
#[derive(Debug)]
pub struct NoVerification(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Parse `--source-ips`: comma-separated addresses or IPv4 ranges such as
/// `127.0.0.2-127.0.0.50`.
pub fn parse_sources(spec: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            None => out.push(
                part.parse::<IpAddr>()
                    .map_err(|_| format!("--source-ips: {part:?} is not an IP address"))?,
            ),
            Some((a, b)) => {
                let (a, b) = match (
                    a.trim().parse::<std::net::Ipv4Addr>(),
                    b.trim().parse::<std::net::Ipv4Addr>(),
                ) {
                    (Ok(a), Ok(b)) => (u32::from(a), u32::from(b)),
                    _ => {
                        return Err(format!(
                            "--source-ips: {part:?}: ranges are IPv4, e.g. 127.0.0.2-127.0.0.50"
                        ));
                    }
                };
                if b < a || b - a >= 65_536 {
                    return Err(format!(
                        "--source-ips: {part:?}: the range must go up and hold at most 65536 addresses"
                    ));
                }
                out.extend((a..=b).map(|x| IpAddr::V4(x.into())));
            }
        }
    }
    if out.is_empty() {
        return Err("--source-ips: no address given".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lists_and_ranges() {
        let v = parse_sources("127.0.0.2-127.0.0.4, ::1").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], "127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(v[3], "::1".parse::<IpAddr>().unwrap());
        assert!(parse_sources("127.0.0.4-127.0.0.2").is_err());
        assert!(parse_sources("nope").is_err());
        assert!(parse_sources("").is_err());
        assert!(parse_sources("10.0.0.0-10.2.0.0").is_err());
    }
}
