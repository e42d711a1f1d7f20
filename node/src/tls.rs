//! rustls configurations: the public listener (server auth only), the cluster
//! listener (client certificates of the cluster CA required) and the cluster
//! client (presents this node's cluster certificate, trusts only the cluster
//! CA); and the identity of a cluster-port peer, read from its certificate.

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

/// The node's certificates and keys, as given in the configuration.
pub struct NodeIdentity {
    /// PEM file of the public listener's certificate (chain).
    pub cert: std::path::PathBuf,
    /// PEM file of the public listener's private key.
    pub key: std::path::PathBuf,
    /// PEM file of the cluster CA, which issues node certificates only.
    pub cluster_ca: std::path::PathBuf,
    /// PEM file of this node's cluster certificate (`CN=node<id>`).
    pub cluster_cert: std::path::PathBuf,
    /// PEM file of this node's cluster key.
    pub cluster_key: std::path::PathBuf,
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

    /// Refuses a cluster certificate that does not name node `id`: peers
    /// would refuse this node, or take it for another.
    pub fn check_names_node(&self, id: baa_proto::model::NodeId) -> anyhow::Result<()> {
        let cert = load_certs(&self.cluster_cert)?.remove(0);
        let named = crate::pki::node_id_of(&cert);
        anyhow::ensure!(
            named == Some(id),
            "{} must name this node (CN=node{id}); it names {}",
            self.cluster_cert.display(),
            named.map_or("no node".to_string(), |n| format!("node {n}"))
        );
        Ok(())
    }

    /// TLS for the cluster listener: a client certificate signed by the
    /// cluster CA is required (which member it names is checked per request).
    pub fn cluster_server(&self) -> anyhow::Result<ServerConfig> {
        let verifier = WebPkiClientVerifier::builder(Arc::new(ca_roots(&self.cluster_ca)?))
            .build()
            .context("building the client-certificate verifier")?;
        let mut cfg = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                load_certs(&self.cluster_cert)?,
                load_key(&self.cluster_key)?,
            )
            .context("building the cluster TLS configuration")?;
        cfg.alpn_protocols = alpn();
        Ok(cfg)
    }

    /// TLS for connections to peers: trusts the cluster CA only and presents
    /// this node's cluster certificate.
    pub fn cluster_client(&self) -> anyhow::Result<ClientConfig> {
        let mut cfg = ClientConfig::builder()
            .with_root_certificates(ca_roots(&self.cluster_ca)?)
            .with_client_auth_cert(
                load_certs(&self.cluster_cert)?,
                load_key(&self.cluster_key)?,
            )
            .context("building the cluster client TLS configuration")?;
        cfg.alpn_protocols = alpn();
        Ok(cfg)
    }
}

/// The node a cluster-port connection's client certificate names, kept in
/// the connection's data by [`record_peer_node`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNode(pub Option<baa_proto::model::NodeId>);

/// `on_connect` hook of the cluster listener: reads the node id from the
/// verified client certificate (rustls has checked it chains to the
/// cluster CA) and stores it as [`PeerNode`].
pub fn record_peer_node(conn: &dyn std::any::Any, data: &mut actix_web::dev::Extensions) {
    use actix_tls::accept::rustls_0_23::TlsStream;
    let node = conn
        .downcast_ref::<TlsStream<actix_web::rt::net::TcpStream>>()
        .and_then(|tls| tls.get_ref().1.peer_certificates()?.first().cloned())
        .and_then(|cert| crate::pki::node_id_of(&cert));
    data.insert(PeerNode(node));
}

/// TLS for an admin or test client that trusts only `ca`.
pub fn client_trusting(ca: &Path) -> anyhow::Result<ClientConfig> {
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(ca_roots(ca)?)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn();
    Ok(cfg)
}
