//! The site's TLS material: its certificate chain and key from PEM files,
//! and rustls' crypto provider.

use std::path::Path;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Installs ring as rustls' process-wide crypto provider (once).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The site's server configuration: its chain and key, no client auth.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let chain_pem = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain_pem.as_slice())
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    anyhow::ensure!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .with_context(|| format!("parsing {}", key.display()))?
        .with_context(|| format!("no private key in {}", key.display()))?;
    let mut tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("building the site's TLS configuration")?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}
