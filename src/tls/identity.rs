//! What a client certificate says about its holder: the subject CN, and
//! when asked for, the subject as RFC 4514 writes it, the subject
//! alternative names, the SHA-256 fingerprint and the DER bytes.

use rustls_pki_types::CertificateDer;

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
    pub(super) fn any(self) -> bool {
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

/// The subject common name of a DER certificate, if it has one.
pub fn common_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
