//! Bounds on a client's certificate chain, checked before any path
//! building or signature verification.
//!
//! webpki builds a path from the client's leaf to a trust anchor through
//! whatever intermediates the client sent, trying every intermediate whose
//! subject names the current certificate's issuer. Its own budget (200,000
//! path-building calls, 100 signatures) keeps that finite but not cheap: a
//! client presenting 49 intermediates that all carry the same subject and
//! issuer (`CN=loop`) made the proxy explore the loop for ~80 ms of CPU per
//! handshake, ~200× a normal one, before any authentication.
//!
//! So the chain's shape is checked first, in time linear in its size:
//!
//! * at most `max_client_chain` certificates, leaf included;
//! * at most `max_client_chain_size` bytes of DER in all;
//! * at most [`MAX_SAME_SUBJECT`] intermediates with the same subject (a
//!   real chain has one per level, two where a CA is cross-signed).
//!
//! With at most two candidates per step and webpki's depth limit of six
//! intermediates, path building visits at most 2 + 4 + … + 64 = 126
//! partial paths, each scanning at most `max_client_chain - 1`
//! intermediates, and a path that reaches a trust anchor costs one
//! signature check with the anchor's (the operator's) key before the
//! attacker's signatures are ever looked at.
//!
//! The verifier wraps rustls' [`WebPkiClientVerifier`]; everything after
//! the shape check (path building, CRLs, signatures) is still webpki's.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError};

/// Intermediates that may share one subject name (a cross-signed CA).
pub const MAX_SAME_SUBJECT: usize = 2;

/// Bounds on a presented client chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainLimits {
    /// Certificates, leaf included.
    pub max_certs: usize,
    /// DER bytes of all certificates together.
    pub max_bytes: usize,
}

/// Why a client chain was refused before verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainRefused {
    #[error("client certificate chain of {0} certificates exceeds max_client_chain ({1})")]
    TooMany(usize, usize),
    #[error("client certificate chain of {0} bytes exceeds max_client_chain_size ({1})")]
    TooLarge(usize, usize),
    #[error("{0} intermediates share one subject (at most {MAX_SAME_SUBJECT})")]
    Ambiguous(usize),
    #[error("an intermediate certificate does not parse")]
    Malformed,
}

/// Check a chain's shape. Linear in its size (the subject comparison is
/// quadratic in the count, which is bounded first).
pub fn check_shape(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    limits: ChainLimits,
) -> Result<(), ChainRefused> {
    let count = intermediates.len().saturating_add(1);
    if count > limits.max_certs {
        return Err(ChainRefused::TooMany(count, limits.max_certs));
    }
    let bytes = intermediates
        .iter()
        .fold(end_entity.as_ref().len(), |n, c| {
            n.saturating_add(c.as_ref().len())
        });
    if bytes > limits.max_bytes {
        return Err(ChainRefused::TooLarge(bytes, limits.max_bytes));
    }
    let mut subjects: Vec<&[u8]> = Vec::with_capacity(intermediates.len());
    for cert in intermediates {
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
            .map_err(|_| ChainRefused::Malformed)?;
        subjects.push(parsed.tbs_certificate.subject.as_raw());
    }
    for subject in &subjects {
        let same = subjects.iter().filter(|s| *s == subject).count();
        if same > MAX_SAME_SUBJECT {
            return Err(ChainRefused::Ambiguous(same));
        }
    }
    Ok(())
}

/// Whether a handshake error was a chain refused here (for the rejection
/// reason), looking through the I/O error tokio-rustls wraps it in.
pub fn refused_chain(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| match e {
            rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
                other.0.downcast_ref::<ChainRefused>().is_some()
            }
            _ => false,
        })
}

/// [`WebPkiClientVerifier`] behind [`check_shape`].
#[derive(Debug)]
pub struct BoundedClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    limits: ChainLimits,
}

impl BoundedClientVerifier {
    pub fn new(inner: Arc<dyn ClientCertVerifier>, limits: ChainLimits) -> BoundedClientVerifier {
        BoundedClientVerifier { inner, limits }
    }
}

impl ClientCertVerifier for BoundedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        check_shape(end_entity, intermediates, self.limits).map_err(|refused| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                refused,
            ))))
        })?;
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate named `subject`, issued by a fresh CA named `issuer`.
    fn cert(subject: &str, issuer: &str) -> CertificateDer<'static> {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, issuer);
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, subject);
        let key = rcgen::KeyPair::generate().unwrap();
        p.signed_by(&key, &ca).unwrap().der().clone()
    }

    const LIMITS: ChainLimits = ChainLimits {
        max_certs: 8,
        max_bytes: 32 * 1024,
    };

    #[test]
    fn ordinary_and_cross_signed_chains_pass() {
        let leaf = cert("device-1", "Issuing CA");
        let chain = [cert("Issuing CA", "Root A"), cert("Issuing CA", "Root B")];
        assert_eq!(check_shape(&leaf, &chain, LIMITS), Ok(()));
        assert_eq!(check_shape(&leaf, &[], LIMITS), Ok(()));
    }

    #[test]
    fn chains_too_long_too_large_or_looping_are_refused() {
        let leaf = cert("device-1", "loop");
        let looping: Vec<_> = (0..3).map(|_| cert("loop", "loop")).collect();
        assert_eq!(
            check_shape(&leaf, &looping, LIMITS),
            Err(ChainRefused::Ambiguous(3))
        );
        let long: Vec<_> = (0..8).map(|i| cert(&format!("CA {i}"), "x")).collect();
        assert_eq!(
            check_shape(&leaf, &long, LIMITS),
            Err(ChainRefused::TooMany(9, 8))
        );
        let small = ChainLimits {
            max_certs: 8,
            max_bytes: 300,
        };
        let two = [cert("CA", "Root")];
        assert!(matches!(
            check_shape(&leaf, &two, small),
            Err(ChainRefused::TooLarge(_, 300))
        ));
        let garbage = [CertificateDer::from(vec![0x30, 0x03, 1, 2, 3])];
        assert_eq!(
            check_shape(&leaf, &garbage, LIMITS),
            Err(ChainRefused::Malformed)
        );
    }

    #[test]
    fn a_refusal_is_recognised_through_the_io_error() {
        let e = rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            ChainRefused::Ambiguous(3),
        ))));
        assert!(refused_chain(&std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e
        )));
        let other = rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer);
        assert!(!refused_chain(&std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            other
        )));
    }
}
