//! The lab's credentials: a CA made for this lab, a serving certificate for 127.0.0.1 signed by
//! it, and a bearer token. Written once into the state directory and reused on restarts, so a
//! kubeconfig handed out earlier keeps working.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// PEM texts and the token.
pub struct Credentials {
    /// The CA certificate clients trust.
    pub ca_pem: String,
    /// The server's certificate.
    pub cert_pem: String,
    /// The server's private key.
    pub key_pem: String,
    /// The bearer token clients present.
    pub token: String,
}

const CA: &str = "ca.crt";
const CERT: &str = "apiserver.crt";
const KEY: &str = "apiserver.key";
const TOKEN: &str = "token";

/// The files the credentials live in, in the lab's directory.
pub const FILES: [&str; 4] = [CA, CERT, KEY, TOKEN];

/// Writes a file only its owner may read (keys, tokens, kubeconfigs).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

impl Credentials {
    /// Loads the lab's credentials from `dir`, making them on first use.
    pub fn load_or_create(dir: &Path) -> Result<Credentials> {
        if dir.join(TOKEN).exists() {
            let read = |n: &str| {
                fs::read_to_string(dir.join(n))
                    .with_context(|| format!("reading {}", dir.join(n).display()))
            };
            return Ok(Credentials {
                ca_pem: read(CA)?,
                cert_pem: read(CERT)?,
                key_pem: read(KEY)?,
                token: read(TOKEN)?.trim().to_string(),
            });
        }
        let c = Credentials::generate()?;
        write_private(&dir.join(CA), &c.ca_pem)?;
        write_private(&dir.join(CERT), &c.cert_pem)?;
        write_private(&dir.join(KEY), &c.key_pem)?;
        // The token last: its presence says the set is complete.
        write_private(&dir.join(TOKEN), &c.token)?;
        Ok(c)
    }

    /// Fresh credentials.
    pub fn generate() -> Result<Credentials> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "services-lab-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes".to_string(),
        ])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let mut token_bytes = [0u8; 32];
        for b in &mut token_bytes {
            *b = fastrand::u8(..);
        }
        // fastrand is not a CSPRNG; mix in the OS's randomness through a fresh key pair's bytes.
        let entropy = KeyPair::generate()?.serialize_der();
        let token = sha2_hex(&[&token_bytes[..], &entropy].concat());
        Ok(Credentials {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            token,
        })
    }

    /// The server's TLS configuration (HTTP/1.1 only).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .context("reading the serving certificate")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .context("reading the serving key")?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("building the TLS configuration")?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
