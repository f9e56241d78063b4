//! The files behind a listener's TLS: certificate chains and private keys
//! (PEM), stapled OCSP responses (DER) and CRLs (PEM), each read and
//! checked when the acceptor is built; errors name the config key and
//! the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use super::{CertKeyPaths, TlsSetupError};

/// The largest OCSP response file accepted (real ones are 1-4 KiB).
pub const MAX_OCSP_RESPONSE: u64 = 64 * 1024;

/// When a served certificate (the leaf of a configured chain) expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// The certificate file as configured.
    pub cert: PathBuf,
    /// The leaf's `notAfter`, in Unix seconds.
    pub not_after: i64,
}

/// The certificates in a PEM file (at least one).
pub(super) fn read_certs(
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
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

/// The CRLs in a PEM file (at least one).
pub(super) fn read_crls(
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsSetupError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsSetupError::new(key, format!("{}: {e}", path.display())))?;
    if crls.is_empty() {
        return Err(TlsSetupError::new(key, "no CRL found in the file"));
    }
    Ok(crls)
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

/// The permission bits of a secret file that others can read (`None`: only
/// its owner and this process's own groups can). Group read by one of the
/// process's groups is the usual shape, not a leak: Kubernetes mounts a
/// Secret root-owned with the pod's `fsGroup` as group, 0440.
#[cfg(unix)]
pub fn exposed_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode() & 0o7777;
    let own_group = || {
        let gid = meta.gid();
        rustix::process::getegid().as_raw() == gid
            || rustix::process::getgroups()
                .is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
    };
    (mode & 0o004 != 0 || (mode & 0o040 != 0 && !own_group())).then_some(mode)
}

/// Windows has ACLs, not mode bits: nothing to check here.
#[cfg(not(unix))]
pub fn exposed_mode(_path: &Path) -> Option<u32> {
    None
}

/// The `notAfter` of a DER certificate, in Unix seconds.
fn not_after(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A certificate chain, its private key and (when configured) its OCSP
/// response, checked to belong together; and when the leaf expires.
pub(super) fn load_pair(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
