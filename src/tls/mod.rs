//! TLS termination: rustls server configuration from PEM files, certificate
//! selection by SNI, client authentication, and the handshake itself.
//!
//! Files are read once when the acceptor is built (never per connection).
//! The handshake is split in two ([`LazyConfigAcceptor`]): the ClientHello is
//! read first, so ALPN `mqtt` is negotiated only for clients that offer it —
//! a client offering other protocols (or none) is still served, where a
//! plain rustls config with ALPN set would refuse it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

pub mod client_chain;
pub use client_chain::ChainLimits;

/// Whether and how clients present certificates (mutual TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    Optional,
    Required,
}

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

/// A certificate chain and its private key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertKeyPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A DER OCSP response for the leaf, stapled to every handshake that
    /// asks for it (re-read on reload; refreshing it is the operator's job).
    pub ocsp: Option<PathBuf>,
}

/// The largest OCSP response file accepted (real ones are 1-4 KiB).
pub const MAX_OCSP_RESPONSE: u64 = 64 * 1024;

/// A listener's TLS settings, validated by `config` and turned into a
/// rustls configuration by [`TlsAcceptor::from_config`].
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Served when the client sends no SNI or one no other certificate matches.
    pub default_cert: CertKeyPaths,
    /// Further certificates, selected by the DNS names in their SAN.
    pub sni: Vec<CertKeyPaths>,
    pub client_auth: ClientAuth,
    pub client_ca: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    /// Bounds on a client's certificate chain, checked before it is
    /// verified (`max_client_chain`, `max_client_chain_size`).
    pub client_chain: ChainLimits,
    pub min_version: TlsVersion,
    /// Cipher suites by name, in order of preference (`None`: mqttlb's
    /// default order, see `tls::DEFAULT_CIPHER_SUITES`). Names are checked
    /// against the crypto provider when the listener is built.
    pub cipher_suites: Option<Vec<String>>,
    /// Key-exchange groups by name, in order of preference.
    pub kx_groups: Option<Vec<String>>,
    /// Choose the suite by the server's order, not the client's.
    pub prefer_server_order: bool,
    /// TLS 1.3 session tickets sent after each full handshake (0: no
    /// resumption by ticket).
    pub session_tickets: u8,
}

/// ALPN protocol id registered for MQTT.
pub const ALPN_MQTT: &[u8] = b"mqtt";

/// A TLS problem found while loading files, tied to its config key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TlsSetupError {
    pub key: String,
    pub reason: String,
}

impl TlsSetupError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        TlsSetupError {
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// The crypto provider used everywhere: aws-lc-rs, rustls' default.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Cipher suites a listener prefers, in order, when its config names none.
///
/// AES-128-GCM comes first. Clients (rustls, OpenSSL, Go) list
/// AES-256-GCM-SHA384 first, and without a server preference the server
/// follows them: TLS 1.3's transcript hash and key schedule then run on
/// SHA-384, which aws-lc computes with its generic SHA-512 code. Measured
/// here with a rustls client (`mqttlb bench handshake`, proxy pinned to one
/// core, proxy CPU per TLS 1.3 handshake with CONNECT/CONNACK and close):
/// 192 µs following the client's AES-256 choice, 175 µs with AES-128
/// first (−9 %; docs/performance.md). AES-128 is as strong as operators need for session keys and
/// hardware-accelerated on x86_64 and ARM64; ChaCha20 serves clients
/// without AES instructions, which list it first.
pub const DEFAULT_CIPHER_SUITES: &[&str] = &[
    "TLS13_AES_128_GCM_SHA256",
    "TLS13_AES_256_GCM_SHA384",
    "TLS13_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// Key-exchange groups a listener prefers when its config names none:
/// X25519 (the cheapest, what clients offer first), then the NIST curves,
/// then the post-quantum hybrid X25519MLKEM768 for clients that ask for it
/// (rustls' own default order).
pub const DEFAULT_KX_GROUPS: &[&str] = &["X25519", "secp256r1", "secp384r1", "X25519MLKEM768"];

/// The provider with the cipher suites and groups named, in that order;
/// errors name `key.cipher_suites` / `key.kx_groups` and the known names.
fn listener_provider(key: &str, cfg: &TlsConfig) -> Result<Arc<CryptoProvider>, TlsSetupError> {
    use rustls::crypto::aws_lc_rs::{ALL_CIPHER_SUITES, ALL_KX_GROUPS};
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    let suites: Vec<&str> = match &cfg.cipher_suites {
        Some(v) => v.iter().map(String::as_str).collect(),
        None => DEFAULT_CIPHER_SUITES.to_vec(),
    };
    p.cipher_suites = pick(
        &format!("{key}.cipher_suites"),
        &suites,
        ALL_CIPHER_SUITES,
        |s| format!("{:?}", s.suite()),
    )?;
    let groups: Vec<&str> = match &cfg.kx_groups {
        Some(v) => v.iter().map(String::as_str).collect(),
        None => DEFAULT_KX_GROUPS.to_vec(),
    };
    p.kx_groups = pick(&format!("{key}.kx_groups"), &groups, ALL_KX_GROUPS, |g| {
        format!("{:?}", g.name())
    })?;
    Ok(Arc::new(p))
}

/// `names` resolved against `all` (by `name_of`), in the order given.
fn pick<T: Copy>(
    key: &str,
    names: &[&str],
    all: &[T],
    name_of: impl Fn(&T) -> String,
) -> Result<Vec<T>, TlsSetupError> {
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|x| name_of(x).eq_ignore_ascii_case(n))
                .copied()
                .ok_or_else(|| {
                    let known: Vec<String> = all.iter().map(&name_of).collect();
                    TlsSetupError::new(key, format!("unknown {n:?}; known: {}", known.join(", ")))
                })
        })
        .collect()
}

/// Everything a listener needs to terminate TLS, built once per (re)load.
#[derive(Clone)]
pub struct TlsAcceptor {
    with_alpn: Arc<ServerConfig>,
    without_alpn: Arc<ServerConfig>,
    /// The served certificates (default first, then SNI ones in config
    /// order) and when each expires.
    certificates: Arc<[CertificateExpiry]>,
}

/// When a served certificate (the leaf of a configured chain) expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// The certificate file as configured.
    pub cert: PathBuf,
    /// The leaf's `notAfter`, in Unix seconds.
    pub not_after: i64,
}

/// Facts about a finished handshake that the PROXY header and routing use.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub sni: Option<String>,
    pub alpn: Option<Vec<u8>>,
    pub version: &'static str,
    /// The client presented a certificate (and, rustls having accepted the
    /// handshake, it verified against the configured CA).
    pub client_cert: bool,
    pub client_cn: Option<String>,
    /// The negotiated cipher suite (rustls' name, e.g.
    /// `TLS13_AES_128_GCM_SHA256`).
    pub cipher: &'static str,
    /// More of the client certificate, read only when asked for (see
    /// [`IdentityRequest`]); boxed, so a connection without it pays one
    /// pointer.
    pub identity: Option<Box<CertIdentity>>,
}

/// Which facts of a client certificate a connection needs beyond its CN
/// (for PROXY v2 TLVs or the client-id rule). Nothing is parsed or kept
/// that nobody asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdentityRequest {
    pub subject: bool,
    pub sans: bool,
    pub fingerprint: bool,
    pub der: bool,
}

impl IdentityRequest {
    fn any(self) -> bool {
        self.subject || self.sans || self.fingerprint || self.der
    }
}

/// Facts of a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// Subject distinguished name, RFC 4514 order and escaping
    /// (`CN=device-42,O=Example,C=DE`).
    pub subject: Option<String>,
    /// Subject alternative names as `DNS:…`, `email:…`, `URI:…` (other
    /// kinds are left out).
    pub sans: Vec<String>,
    /// SHA-256 of the DER certificate.
    pub sha256: Option<[u8; 32]>,
    /// The DER certificate itself.
    pub der: Option<Vec<u8>>,
}

impl CertIdentity {
    /// Read what `want` asks for from a DER certificate.
    pub fn read(der: &[u8], want: IdentityRequest) -> CertIdentity {
        let mut id = CertIdentity::default();
        if want.subject || want.sans {
            if let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) {
                if want.subject {
                    id.subject = Some(rfc4514(cert.subject()));
                }
                if want.sans {
                    id.sans = sans(&cert);
                }
            }
        }
        if want.fingerprint {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
            id.sha256 = digest.as_ref().try_into().ok();
        }
        if want.der {
            id.der = Some(der.to_vec());
        }
        id
    }

    /// Whether `name` is one of the SAN values (without the kind prefix).
    pub fn has_san(&self, name: &str) -> bool {
        self.sans
            .iter()
            .any(|s| s.split_once(':').is_some_and(|(_, v)| v == name))
    }
}

/// A distinguished name as RFC 4514 writes it: RDNs last-to-first,
/// comma-separated, attribute types by their short names (dotted OID when
/// there is none), special characters escaped, non-string values as `#hex`.
fn rfc4514(name: &x509_parser::x509::X509Name<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut out = String::new();
    for rdn in name.iter().collect::<Vec<_>>().into_iter().rev() {
        if !out.is_empty() {
            out.push(',');
        }
        for (i, attr) in rdn.iter().enumerate() {
            if i > 0 {
                out.push('+');
            }
            let oid = attr.attr_type();
            match x509_parser::objects::oid2abbrev(oid, registry) {
                Ok(abbrev) => out.push_str(abbrev),
                Err(_) => out.push_str(&oid.to_id_string()),
            }
            out.push('=');
            match attr.as_str() {
                Ok(v) => escape_rfc4514(v, &mut out),
                Err(_) => {
                    out.push('#');
                    for b in attr.attr_value().data.iter() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    out
}

fn escape_rfc4514(v: &str, out: &mut String) {
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        if c == '\0' {
            out.push_str("\\00");
        } else {
            out.push(c);
        }
    }
}

/// DNS, email and URI subject alternative names, prefixed with their kind.
fn sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(format!("DNS:{d}")),
            GeneralName::RFC822Name(e) => Some(format!("email:{e}")),
            GeneralName::URI(u) => Some(format!("URI:{u}")),
            _ => None,
        })
        .collect()
}

/// Why a handshake failed, for logs and the `result` metric label.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
}

impl TlsAcceptor {
    /// Load certificates, keys, CA and CRL named by `cfg` (key paths under
    /// `key`, e.g. `listener[0].tls`).
    pub fn from_config(key: &str, cfg: &TlsConfig) -> Result<TlsAcceptor, TlsSetupError> {
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
                    roots.add(cert).map_err(|e| {
                        TlsSetupError::new(&ca_key, format!("{}: {e}", ca_path.display()))
                    })?;
                }
                let mut vb =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                if let Some(crl_path) = &cfg.crl {
                    let crl_key = format!("{key}.crl");
                    let crls = CertificateRevocationListDer::pem_file_iter(crl_path)
                        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                        .map_err(|e| {
                            TlsSetupError::new(&crl_key, format!("{}: {e}", crl_path.display()))
                        })?;
                    if crls.is_empty() {
                        return Err(TlsSetupError::new(&crl_key, "no CRL found in the file"));
                    }
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
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| TlsSetupError::new(key, format!("session ticketer: {e}")))?;
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
            sni: conn.server_name().map(str::to_owned),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            version: match conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "unknown",
            },
            client_cert: client_cert.is_some(),
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

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::new(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsSetupError::new(
            key,
            format!("{}: no PEM certificate found", path.display()),
        ));
    }
    Ok(certs)
}

/// Whether a private key file grants read access to "other" users.
#[cfg(unix)]
pub fn key_readable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

/// Windows has ACLs, not mode bits: nothing to check here.
#[cfg(not(unix))]
pub fn key_readable_by_others(_path: &Path) -> bool {
    false
}

/// The `notAfter` of a DER certificate, in Unix seconds.
fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn load_pair(
    key: &str,
    pair: &CertKeyPaths,
    provider: &CryptoProvider,
) -> Result<(Arc<CertifiedKey>, CertificateExpiry), TlsSetupError> {
    let cert_key = format!("{key}.cert");
    let key_key = format!("{key}.key");
    let certs = read_certs(&cert_key, &pair.cert)?;
    // rustls checks the chain's syntax only as far as it must; the leaf's
    // validity is what clients check first, so it must parse.
    let expiry = certs
        .first()
        .and_then(not_after)
        .map(|not_after| CertificateExpiry {
            cert: pair.cert.clone(),
            not_after,
        })
        .ok_or_else(|| {
            TlsSetupError::new(
                &cert_key,
                format!(
                    "{}: the first certificate is not valid X.509",
                    pair.cert.display()
                ),
            )
        })?;
    if key_readable_by_others(&pair.key) {
        tracing::warn!(
            key = %key_key,
            file = %pair.key.display(),
            "private key file is readable by other users: chmod 600 (or 640 with a dedicated group)"
        );
    }
    // PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys are all recognised here.
    let private = PrivateKeyDer::from_pem_file(&pair.key)
        .map_err(|e| TlsSetupError::new(&key_key, format!("{}: {e}", pair.key.display())))?;
    let mut ck = CertifiedKey::from_der(certs, private, provider).map_err(|e| {
        TlsSetupError::new(
            &key_key,
            format!(
                "{} does not match {}: {e}",
                pair.key.display(),
                pair.cert.display()
            ),
        )
    })?;
    if let Some(path) = &pair.ocsp {
        ck.ocsp = Some(read_ocsp(&format!("{key}.ocsp"), path)?);
    }
    Ok((Arc::new(ck), expiry))
}

/// Read a DER OCSP response and check that it is one a client can use: at
/// most [`MAX_OCSP_RESPONSE`] bytes, an `OCSPResponse` whose status is
/// `successful` (RFC 6960 §4.2.1). Its signature, freshness and whether it
/// names the served certificate are the client's to verify, as with
/// HAProxy's `.ocsp` files; a stale staple is refused by strict clients, so
/// refresh the file (e.g. `openssl ocsp ... -respout`) and reload before
/// `nextUpdate`.
fn read_ocsp(key: &str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    use std::io::Read;
    let err = |reason: String| TlsSetupError::new(key, format!("{}: {reason}", path.display()));
    let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
    let mut der = Vec::new();
    file.take(MAX_OCSP_RESPONSE + 1)
        .read_to_end(&mut der)
        .map_err(|e| err(e.to_string()))?;
    if der.len() as u64 > MAX_OCSP_RESPONSE {
        return Err(err(format!(
            "larger than {MAX_OCSP_RESPONSE} bytes: not an OCSP response"
        )));
    }
    match ocsp_status(&der) {
        Some(0) => Ok(der),
        Some(status) => Err(err(format!(
            "OCSP response status is {status}, not successful (0): nothing to staple"
        ))),
        None => Err(err(
            "not a DER OCSP response (convert PEM with `openssl ocsp -respin r.pem -respout r.der`)"
                .to_string(),
        )),
    }
}

/// `responseStatus` of a DER `OCSPResponse ::= SEQUENCE { responseStatus
/// ENUMERATED, responseBytes [0] EXPLICIT ... OPTIONAL }`.
fn ocsp_status(der: &[u8]) -> Option<u32> {
    use x509_parser::der_parser::ber::BerObjectContent;
    let (rest, outer) = x509_parser::der_parser::der::parse_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let items = outer.as_sequence().ok()?;
    match &items.first()?.content {
        BerObjectContent::Enum(v) => u32::try_from(*v).ok(),
        _ => None,
    }
}

/// DNS names a certificate answers for: SAN DNS entries, or the CN when the
/// certificate has no SAN extension.
fn dns_names(der: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    } else if let Some(cn) = common_name(der) {
        names.push(cn.to_ascii_lowercase());
    }
    names
}

/// Certificate selection by SNI, as HAProxy does for a `crt` list: each
/// certificate serves the names in its SAN (exact or `*.` wildcard); a
/// missing or unknown name gets the default certificate.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn load(
        key: &str,
        cfg: &TlsConfig,
        provider: &CryptoProvider,
    ) -> Result<(SniResolver, Vec<CertificateExpiry>), TlsSetupError> {
        let (default, expiry) = load_pair(key, &cfg.default_cert, provider)?;
        let mut expiries = vec![expiry];
        let mut resolver = SniResolver {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default,
        };
        for (i, pair) in cfg.sni.iter().enumerate() {
            let (ck, expiry) = load_pair(&format!("{key}.sni[{i}]"), pair, provider)?;
            expiries.push(expiry);
            let names = ck.cert.first().map(dns_names).unwrap_or_default();
            if names.is_empty() {
                return Err(TlsSetupError::new(
                    &format!("{key}.sni[{i}].cert"),
                    "certificate names no DNS host (SAN or CN), so no SNI can select it",
                ));
            }
            for name in names {
                match name.strip_prefix("*.") {
                    Some(domain) => resolver
                        .wildcard
                        .entry(domain.to_string())
                        .or_insert(ck.clone()),
                    None => resolver.exact.entry(name).or_insert(ck.clone()),
                };
            }
        }
        Ok((resolver, expiries))
    }

    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        // rustls hands SNI over lower-cased already.
        if let Some(ck) = self.exact.get(name) {
            return ck.clone();
        }
        if let Some((_, domain)) = name.split_once('.') {
            if let Some(ck) = self.wildcard.get(domain) {
                return ck.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(suites: Option<&[&str]>, groups: Option<&[&str]>) -> TlsConfig {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_string()).collect();
        TlsConfig {
            default_cert: CertKeyPaths {
                cert: "c.pem".into(),
                key: "k.pem".into(),
                ocsp: None,
            },
            sni: Vec::new(),
            client_auth: ClientAuth::None,
            client_ca: None,
            crl: None,
            client_chain: ChainLimits {
                max_certs: 8,
                max_bytes: 32 * 1024,
            },
            min_version: TlsVersion::V12,
            cipher_suites: suites.map(owned),
            kx_groups: groups.map(owned),
            prefer_server_order: true,
            session_tickets: 1,
        }
    }

    #[test]
    fn certificate_identity_is_read_as_asked() {
        use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "DE");
        dn.push(DnType::OrganizationName, "Ex, ample+Co");
        dn.push(DnType::CommonName, " device-42");
        p.distinguished_name = dn;
        p.subject_alt_names = vec![
            SanType::DnsName("d42.example".try_into().unwrap()),
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            SanType::URI("urn:dev:42".try_into().unwrap()),
            SanType::IpAddress([10, 0, 0, 1].into()),
        ];
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let der = cert.der().as_ref();

        let all = IdentityRequest {
            subject: true,
            sans: true,
            fingerprint: true,
            der: true,
        };
        let id = CertIdentity::read(der, all);
        // RFC 4514: last RDN first, special characters and a leading
        // space escaped.
        assert_eq!(
            id.subject.as_deref(),
            Some("CN=\\ device-42,O=Ex\\, ample\\+Co,C=DE")
        );
        assert_eq!(
            id.sans,
            ["DNS:d42.example", "email:ops@example.com", "URI:urn:dev:42"]
        );
        assert!(id.has_san("urn:dev:42") && !id.has_san("10.0.0.1"));
        assert_eq!(id.der.as_deref(), Some(der));
        assert_eq!(id.sha256.map(|h| h.len()), Some(32));
        // Only what is asked for.
        let some = CertIdentity::read(
            der,
            IdentityRequest {
                sans: true,
                ..IdentityRequest::default()
            },
        );
        assert!(some.subject.is_none() && some.der.is_none() && some.sha256.is_none());
        assert_eq!(some.sans.len(), 3);
    }

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
        let acceptor = TlsAcceptor::from_config("l.tls", &c).unwrap();
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

    #[test]
    fn ocsp_files_must_hold_a_successful_response() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        // OCSPResponse { responseStatus successful } (no responseBytes: the
        // smallest well-formed response; the status is what is checked).
        let ok = file("ok.der", &[0x30, 0x03, 0x0a, 0x01, 0x00]);
        assert!(read_ocsp("l.ocsp", &ok).is_ok());
        // tryLater (3): a responder's refusal is nothing to staple.
        let later = file("later.der", &[0x30, 0x03, 0x0a, 0x01, 0x03]);
        let e = read_ocsp("l.ocsp", &later).unwrap_err();
        assert!(e.to_string().contains("status is 3"), "{e}");
        for (name, bytes) in [
            ("pem.der", &b"-----BEGIN OCSP RESPONSE-----"[..]),
            ("trailing.der", &[0x30, 0x03, 0x0a, 0x01, 0x00, 0x00][..]),
            ("empty.der", &[][..]),
            ("int.der", &[0x30, 0x03, 0x02, 0x01, 0x00][..]),
        ] {
            let e = read_ocsp("l.ocsp", &file(name, bytes)).unwrap_err();
            assert!(e.to_string().starts_with("l.ocsp: "), "{e}");
            assert!(
                e.to_string().contains("not a DER OCSP response"),
                "{name}: {e}"
            );
        }
        let big = vec![0u8; usize::try_from(MAX_OCSP_RESPONSE).unwrap() + 1];
        let e = read_ocsp("l.ocsp", &file("big.der", &big)).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
        let e = read_ocsp("l.ocsp", &dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn world_readable_keys_are_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        std::fs::write(&key, "x").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(key_readable_by_others(&key));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(!key_readable_by_others(&key));
    }

    #[test]
    fn default_preferences_resolve_in_order() {
        let p = listener_provider("l", &cfg(None, None)).expect("defaults resolve");
        let names: Vec<String> = p
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(names, DEFAULT_CIPHER_SUITES);
        let groups: Vec<String> = p
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect();
        assert_eq!(groups, DEFAULT_KX_GROUPS);
    }

    #[test]
    fn configured_preferences_and_unknown_names() {
        let p = listener_provider(
            "l",
            &cfg(
                Some(&["tls13_chacha20_poly1305_sha256"]),
                Some(&["secp256r1"]),
            ),
        )
        .expect("known names, any case");
        assert_eq!(p.cipher_suites.len(), 1);
        assert_eq!(p.kx_groups.len(), 1);
        let e = listener_provider(
            "listener[0].tls",
            &cfg(Some(&["TLS_RSA_WITH_RC4_128_MD5"]), None),
        )
        .expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("listener[0].tls.cipher_suites"), "{text}");
        assert!(
            text.contains("TLS13_AES_128_GCM_SHA256"),
            "lists the known names: {text}"
        );
        let e = listener_provider("l", &cfg(None, Some(&["ffdhe2048"]))).expect_err("refused");
        assert!(e.to_string().contains("l.kx_groups"), "{e}");
    }
}
