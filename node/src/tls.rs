//! rustls configurations: the public listener (server auth only), the cluster
//! listener (client certificates of the agency CA required) and the cluster
//! client (presents this node's certificate, trusts only the agency CA).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// ALPN protocols offered on every listener and by the cluster client.
fn alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// Installs the process-wide crypto provider (ring). Safe to call more than once.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path)
        .with_context(|| format!("reading certificate file {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// Reads the private key of a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem =
        std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing key in {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

/// A root store holding only the agency CA.
pub fn ca_roots(ca: &Path) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .context("adding the CA certificate to the trust store")?;
    }
    Ok(roots)
}

/// The node's certificate and key, as given in the configuration.
pub struct NodeIdentity {
    /// PEM file of the agency CA.
    pub ca: std::path::PathBuf,
    /// PEM file of this node's certificate (chain).
    pub cert: std::path::PathBuf,
    /// PEM file of this node's private key.
    pub key: std::path::PathBuf,
}

impl NodeIdentity {
    /// TLS for the public listener: server authentication only.
    pub fn public_server(&self) -> anyhow::Result<ServerConfig> {
        let mut cfg = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(load_certs(&self.cert)?, load_key(&self.key)?)
            .context("building the public TLS configuration")?;
        cfg.alpn_protocols = alpn();
        Ok(cfg)
    }

    /// TLS for the cluster listener: a client certificate signed by the agency CA is required.
    pub fn cluster_server(&self) -> anyhow::Result<ServerConfig> {
        let verifier = WebPkiClientVerifier::builder(Arc::new(ca_roots(&self.ca)?))
            .build()
            .context("building the client-certificate verifier")?;
        let mut cfg = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(load_certs(&self.cert)?, load_key(&self.key)?)
            .context("building the cluster TLS configuration")?;
        cfg.alpn_protocols = alpn();
        Ok(cfg)
    }

    /// TLS for connections to peers: trusts the agency CA only and presents this node's certificate.
    pub fn cluster_client(&self) -> anyhow::Result<ClientConfig> {
        let mut cfg = ClientConfig::builder()
            .with_root_certificates(ca_roots(&self.ca)?)
            .with_client_auth_cert(load_certs(&self.cert)?, load_key(&self.key)?)
            .context("building the cluster client TLS configuration")?;
        cfg.alpn_protocols = alpn();
        Ok(cfg)
    }
}

/// TLS for an admin or test client that trusts only `ca`.
pub fn client_trusting(ca: &Path) -> anyhow::Result<ClientConfig> {
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(ca_roots(ca)?)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn();
    Ok(cfg)
}
