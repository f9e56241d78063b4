//! TLS termination: rustls server configuration from PEM files, certificate
//! selection by SNI, client authentication, and the handshake itself.
//!
//! Files are read once when the acceptor is built (never per connection).
//!
//! # Layout
//!
//! Each file uses only the ones listed above it (this file re-exports
//! what the others make public, so every path is `tls::…`):
//!
//! * `client_chain` — bounds on a client's certificate chain, checked
//!   before webpki verifies it;
//! * this file — a listener's settings ([`TlsConfig`]), [`TlsSetupError`],
//!   the crypto provider and the cipher-suite and key-exchange preferences;
//! * `files` — certificates and keys (PEM), OCSP responses and CRLs, read
//!   and checked, errors tied to their config key;
//! * `identity` — facts of a client certificate: its CN, RFC 4514 subject,
//!   subject alternative names, fingerprint;
//! * `sni` — which certificate an SNI name gets (uses `files`, `identity`);
//! * `tickets` — session tickets: mqttlb's own ticketer, and the key sets
//!   it seals with, as a `ticket_keys` file holds them (uses `files`);
//! * `session_keys` — the process's own keys for listeners without
//!   `ticket_keys` ([`SessionKeys`]: rotation, takeover; uses `tickets`);
//! * `acceptor` — the rustls configurations built from all of the above,
//!   and the handshake.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;

mod acceptor;
pub mod client_chain;
mod files;
mod identity;
mod session_keys;
mod sni;
mod tickets;

pub use acceptor::{HandshakeError, TlsAcceptor, TlsInfo};
pub use client_chain::ChainLimits;
pub use files::{CertificateExpiry, MAX_OCSP_RESPONSE, key_readable_by_others};
pub use identity::{CertIdentity, IdentityRequest, common_name};
pub use session_keys::{KeyState, SessionKeys};
pub use sni::SniResolver;
pub use tickets::{KeyRing, TicketKey, TicketKeys, Ticketer};

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
    /// The ticket keys file (base64 keys, one a line, the first sealing),
    /// read whenever the acceptor is built; `None`: the process's own
    /// [`SessionKeys`].
    pub ticket_keys: Option<PathBuf>,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings naming placeholder files (the acceptor's tests use it too).
    pub(super) fn cfg(suites: Option<&[&str]>, groups: Option<&[&str]>) -> TlsConfig {
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
            ticket_keys: None,
        }
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
