//! A throwaway agency CA and node certificates for demos, tests and small
//! deployments. Production deployments may bring their own files instead.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// File names inside a PKI directory.
pub fn ca_cert_path(dir: &Path) -> std::path::PathBuf {
    dir.join("ca.pem")
}

fn ca_key_path(dir: &Path) -> std::path::PathBuf {
    dir.join("ca.key")
}

/// Certificate and key paths of the node named `name`.
pub fn node_paths(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}

/// Creates a new agency CA in `dir` (refuses to overwrite an existing one).
pub fn init_ca(dir: &Path, agency: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    anyhow::ensure!(
        !ca_cert_path(dir).exists(),
        "{} already exists",
        ca_cert_path(dir).display()
    );
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("baa agency CA ({agency})"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    std::fs::write(ca_cert_path(dir), cert.pem())?;
    write_secret(&ca_key_path(dir), &key.serialize_pem())?;
    Ok(())
}

/// Issues a certificate for node `name`, valid for server and client auth, for
/// `localhost`, the loopback addresses and every extra `sans` entry.
pub fn issue_node(dir: &Path, name: &str, sans: &[String]) -> anyhow::Result<()> {
    let ca_pem =
        std::fs::read_to_string(ca_cert_path(dir)).context("reading the CA certificate")?;
    let ca_key = KeyPair::from_pem(
        &std::fs::read_to_string(ca_key_path(dir)).context("reading the CA key")?,
    )?;
    let ca_params = CertificateParams::from_ca_cert_pem(&ca_pem)?;
    let ca = ca_params.self_signed(&ca_key)?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::DnsName("localhost".try_into()?),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    for san in sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
            Err(_) => params
                .subject_alt_names
                .push(SanType::DnsName(san.clone().try_into()?)),
        }
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let (cert_path, key_path) = node_paths(dir, name);
    std::fs::write(cert_path, cert.pem())?;
    write_secret(&key_path, &key.serialize_pem())?;
    Ok(())
}

/// Whether the certificate at `path` exists and names every one of `sans`
/// (DNS names or IP addresses) among its subject alternative names.
pub fn cert_names_all(path: &Path, sans: &[String]) -> anyhow::Result<bool> {
    let pem = match std::fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let params = CertificateParams::from_ca_cert_pem(&pem)
        .with_context(|| format!("parsing {}", path.display()))?;
    Ok(sans.iter().all(|want| {
        let ip = want.parse::<IpAddr>().ok();
        params
            .subject_alt_names
            .iter()
            .any(|have| match (have, ip) {
                (SanType::IpAddress(a), Some(b)) => *a == b,
                (SanType::DnsName(n), None) => n.as_str().eq_ignore_ascii_case(want),
                _ => false,
            })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_load_into_rustls() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test").unwrap();
        issue_node(dir.path(), "node1", &["login.baa.localtest".into()]).unwrap();
        let (cert, key) = node_paths(dir.path(), "node1");
        let id = crate::tls::NodeIdentity {
            ca: ca_cert_path(dir.path()),
            cert,
            key,
        };
        id.public_server().unwrap();
        id.cluster_server().unwrap();
        id.cluster_client().unwrap();
        assert!(
            init_ca(dir.path(), "test").is_err(),
            "must not overwrite a CA"
        );
    }

    #[test]
    fn certificate_names_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test").unwrap();
        issue_node(dir.path(), "node1", &["login.baa.localtest".into()]).unwrap();
        let (cert, _) = node_paths(dir.path(), "node1");
        let names = |sans: &[&str]| {
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            cert_names_all(&cert, &sans).unwrap()
        };
        assert!(names(&[
            "login.baa.localtest",
            "localhost",
            "127.0.0.1",
            "::1"
        ]));
        assert!(!names(&["shop.baa.localtest"]));
        assert!(!names(&["10.0.0.1"]));
        let missing = dir.path().join("nope.pem");
        assert!(!cert_names_all(&missing, &[]).unwrap());
    }
}
