//! `mqttlb certs`: a development CA with a server and a client certificate.
//!
//! For tests, documentation and the demo. Never for production: the CA key
//! is written next to the certificates.

use std::fs;
use std::io::Write;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// Common name of the generated client certificate.
pub const CLIENT_CN: &str = "mqttlb-dev-client";

/// PEM text of a development PKI.
pub struct DevCerts {
    pub ca_pem: String,
    pub ca_key: String,
    pub server_pem: String,
    pub server_key: String,
    pub client_pem: String,
    pub client_key: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

fn params(cn: &str, sans: Vec<SanType>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "mqttlb development");
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2049, 12, 31);
    p
}

/// `mqttlb certs`: write a development CA, server and client certificate
/// to `out`; the exit code (0, or 1 with the reason on stderr).
pub fn main(out: &Path, hosts: &[String]) -> u8 {
    match DevCerts::generate(hosts, CLIENT_CN).and_then(|c| c.write(out)) {
        Ok(()) => {
            println!(
                "wrote {0}/ca.pem ca.key server.pem server.key client.pem client.key (development only)",
                out.display()
            );
            0
        }
        Err(e) => {
            eprintln!("mqttlb certs: {e}");
            1
        }
    }
}

impl DevCerts {
    /// Generate a CA, a server certificate for `localhost`, `127.0.0.1`,
    /// `::1` and every name in `hosts`, and a client certificate with CN
    /// [`CLIENT_CN`] (or `client_cn`).
    pub fn generate(hosts: &[String], client_cn: &str) -> Result<DevCerts, CertsError> {
        let mut ca = params("mqttlb development CA", Vec::new());
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;

        let mut sans = vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ];
        for h in hosts {
            match h.parse::<std::net::IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => sans.push(SanType::DnsName(h.clone().try_into()?)),
            }
        }
        let mut server = params("localhost", sans);
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = server.signed_by(&server_key, &ca)?;

        let mut client = params(client_cn, Vec::new());
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client_cert = client.signed_by(&client_key, &ca)?;

        Ok(DevCerts {
            ca_pem: ca.pem(),
            ca_key: ca.key().serialize_pem(),
            server_pem: server_cert.pem(),
            server_key: server_key.serialize_pem(),
            client_pem: client_cert.pem(),
            client_key: client_key.serialize_pem(),
        })
    }

    /// Write `ca.pem ca.key server.pem server.key client.pem client.key`
    /// into `dir` (created if missing). Keys are written mode 0600 on Unix.
    pub fn write(&self, dir: &Path) -> Result<(), CertsError> {
        let io = |path: &Path, source| CertsError::Write {
            path: path.display().to_string(),
            source,
        };
        fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        for (name, text, secret) in [
            ("ca.pem", &self.ca_pem, false),
            ("ca.key", &self.ca_key, true),
            ("server.pem", &self.server_pem, false),
            ("server.key", &self.server_key, true),
            ("client.pem", &self.client_pem, false),
            ("client.key", &self.client_key, true),
        ] {
            let path = dir.join(name);
            let mut opts = fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            if secret {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            #[cfg(not(unix))]
            let _ = secret;
            let mut f = opts.open(&path).map_err(|e| io(&path, e))?;
            f.write_all(text.as_bytes()).map_err(|e| io(&path, e))?;
        }
        Ok(())
    }
}
