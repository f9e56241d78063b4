//! Certificate selection by SNI: the names each configured certificate
//! serves, and the certificate a ClientHello gets.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::CertificateDer;

use super::files::{CertificateExpiry, load_pair};
use super::identity::common_name;
use super::{TlsConfig, TlsSetupError};

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
    pub(super) fn load(
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
