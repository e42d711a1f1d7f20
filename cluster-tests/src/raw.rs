//! Raw HTTPS connections to a node, byte by byte, for what an HTTP client
//! library will not send: header lines trickled slowly (slowloris), bare CR
//! or LF and folded lines inside a header, or a connection that never
//! finishes its TLS handshake.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A TLS client configuration trusting only the CA in `ca_pem` (HTTP/1.1).
pub fn tls_config(ca_pem: &Path) -> Arc<rustls::ClientConfig> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pem = std::fs::read(ca_pem).unwrap_or_else(|e| panic!("reading {}: {e}", ca_pem.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A TLS connection to `addr` (whose certificate names 127.0.0.1).
pub async fn connect(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// Sends `request` as is and reads the answer until the server closes the
/// connection or `deadline` passes: the bytes read.
pub async fn exchange(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    request: &[u8],
    deadline: Duration,
) -> Vec<u8> {
    let mut tls = connect(config, addr).await;
    // A server may answer and close before it has read the whole request
    // (an oversized head): the write then fails, and the answer it sent is
    // still there to read.
    if tls.write_all(request).await.is_ok() {
        let _ = tls.flush().await;
    }
    let mut out = Vec::new();
    let end = Instant::now() + deadline;
    let mut buf = [0u8; 8192];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of a raw HTTP/1.1 answer, if it has one.
pub fn status_of(answer: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next()?;
    line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// How a connection that kept sending slowly ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The server closed it (with these bytes of answer, maybe none).
    Closed(Vec<u8>),
    /// It was still open when the test gave up.
    StillOpen,
}

/// Sends `head` at once, then one byte of `trickle` every `every`, until
/// the server answers or closes the connection, or `give_up` passes; also
/// returns how long the connection lived.
pub async fn trickle(
    config: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    head: &[u8],
    trickle: &[u8],
    every: Duration,
    give_up: Duration,
) -> (Ended, Duration) {
    let started = Instant::now();
    let mut tls = connect(config, addr).await;
    if tls.write_all(head).await.is_err() || tls.flush().await.is_err() {
        return (Ended::Closed(Vec::new()), started.elapsed());
    }
    let mut next = trickle.iter().cycle();
    let mut buf = [0u8; 4096];
    let mut answer = Vec::new();
    loop {
        if started.elapsed() >= give_up {
            return (Ended::StillOpen, started.elapsed());
        }
        match tokio::time::timeout(every, tls.read(&mut buf)).await {
            // The server spoke or hung up: read whatever else it sent.
            Ok(Ok(0)) | Ok(Err(_)) => return (Ended::Closed(answer), started.elapsed()),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {
                let byte = next.next().copied().unwrap_or(b'a');
                if tls.write_all(&[byte]).await.is_err() || tls.flush().await.is_err() {
                    return (Ended::Closed(answer), started.elapsed());
                }
            }
        }
    }
}

/// Opens a TCP connection to `addr` and never starts TLS: how long until
/// the server closes it (`None`: still open after `give_up`).
pub async fn silent_tcp(addr: SocketAddr, give_up: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut tcp = TcpStream::connect(addr).await.expect("TCP connect");
    let mut buf = [0u8; 64];
    match tokio::time::timeout(give_up, tcp.read(&mut buf)).await {
        Ok(_) => Some(started.elapsed()),
        Err(_) => None,
    }
}
