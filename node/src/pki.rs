//! Throwaway CAs and certificates for demos, tests and small deployments.
//! Production deployments may bring their own files instead.
//!
//! Two CAs, kept apart on purpose. The **web CA** (`ca.pem`) signs what
//! browsers, admin clients and partner sites see: the nodes' public
//! listener certificates and, in the demo, the partner sites' and upstream
//! apps' server certificates — none of them with client authentication. The
//! **cluster CA** (`cluster-ca.pem`) signs node certificates and nothing
//! else: each names its node (`CN=node<id>`) and authenticates it on the
//! cluster port, where only current members of the membership may speak.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use baa_proto::model::NodeId;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;

/// The web CA's certificate in a PKI directory.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// The cluster CA's certificate in a PKI directory.
pub fn cluster_ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("cluster-ca.pem")
}

/// Certificate and key paths of the server certificate named `name`
/// (a node's public listener, a partner site, an upstream app).
pub fn server_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

/// Certificate and key paths of node `id`'s cluster certificate.
pub fn cluster_paths(dir: &Path, id: NodeId) -> (PathBuf, PathBuf) {
    server_paths(dir, &format!("node{id}-cluster"))
}

/// The common name a node certificate carries.
pub fn node_name(id: NodeId) -> String {
    format!("node{id}")
}

/// The node a cluster certificate names (`CN=node<id>`), if it names one.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Option<NodeId> {
    let params = CertificateParams::from_ca_cert_der(cert).ok()?;
    let cn = dn_text(params.distinguished_name.get(&DnType::CommonName)?)?;
    let id = cn.strip_prefix("node")?;
    // Canonical decimal only: `node01` or `node+1` name no node.
    (!id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit()))
        .then(|| id.parse().ok())
        .flatten()
}

fn dn_text(value: &DnValue) -> Option<String> {
    match value {
        DnValue::Utf8String(s) => Some(s.clone()),
        DnValue::PrintableString(s) => Some(s.as_str().to_string()),
        DnValue::Ia5String(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn ca_key_path(cert: &Path) -> PathBuf {
    cert.with_extension("key")
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

fn new_ca(cert_path: &Path, common_name: String) -> anyhow::Result<()> {
    anyhow::ensure!(
        !cert_path.exists(),
        "{} already exists",
        cert_path.display()
    );
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    std::fs::write(cert_path, cert.pem())?;
    write_secret(&ca_key_path(cert_path), &key.serialize_pem())?;
    Ok(())
}

/// Creates the web CA and the cluster CA in `dir` (refuses to overwrite either).
pub fn init_ca(dir: &Path, agency: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    anyhow::ensure!(
        !ca_cert_path(dir).exists() && !cluster_ca_cert_path(dir).exists(),
        "a CA already exists in {}",
        dir.display()
    );
    ensure_cas(dir, agency)
}

/// Creates whichever of the two CAs `dir` lacks.
pub fn ensure_cas(dir: &Path, agency: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    if !ca_cert_path(dir).exists() {
        new_ca(&ca_cert_path(dir), format!("baa web CA ({agency})"))?;
    }
    if !cluster_ca_cert_path(dir).exists() {
        new_ca(
            &cluster_ca_cert_path(dir),
            format!("baa cluster CA ({agency}): node certificates only"),
        )?;
    }
    Ok(())
}

fn load_ca(cert_path: &Path) -> anyhow::Result<(Certificate, KeyPair)> {
    let pem = std::fs::read_to_string(cert_path)
        .with_context(|| format!("reading the CA certificate {}", cert_path.display()))?;
    let key_path = ca_key_path(cert_path);
    let key = KeyPair::from_pem(
        &std::fs::read_to_string(&key_path)
            .with_context(|| format!("reading the CA key {}", key_path.display()))?,
    )?;
    let cert = CertificateParams::from_ca_cert_pem(&pem)?.self_signed(&key)?;
    Ok((cert, key))
}

/// Signs a leaf certificate named `common_name` for `localhost`, the
/// loopback addresses and every extra `sans` entry, and writes it to `paths`.
fn issue(
    ca_cert: &Path,
    paths: (PathBuf, PathBuf),
    common_name: &str,
    sans: &[String],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> anyhow::Result<()> {
    let (ca, ca_key) = load_ca(ca_cert)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
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
    params.extended_key_usages = usages;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    std::fs::write(&paths.0, cert.pem())?;
    write_secret(&paths.1, &key.serialize_pem())?;
    Ok(())
}

/// Issues a server certificate `name` from the web CA in `dir`: server
/// authentication only, so it can never authenticate as a client anywhere.
pub fn issue_server(dir: &Path, name: &str, sans: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.ends_with("-cluster") && !name.contains('/'),
        "{name:?} is not a valid certificate name"
    );
    issue(
        &ca_cert_path(dir),
        server_paths(dir, name),
        name,
        sans,
        vec![ExtendedKeyUsagePurpose::ServerAuth],
    )
}

/// Issues node `id`'s certificates: its public listener certificate from the
/// web CA (naming `sans` too) and its cluster certificate from the cluster
/// CA (`CN=node<id>`, server and client authentication, naming
/// `cluster_sans`).
pub fn issue_node(
    dir: &Path,
    id: NodeId,
    sans: &[String],
    cluster_sans: &[String],
) -> anyhow::Result<()> {
    issue_server(dir, &node_name(id), sans)?;
    issue(
        &cluster_ca_cert_path(dir),
        cluster_paths(dir, id),
        &node_name(id),
        cluster_sans,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )
}

/// Whether the certificate at `path` exists, names every one of `sans`
/// (DNS names or IP addresses) and authenticates clients exactly when
/// `client_auth` says so.
pub fn cert_fits(path: &Path, sans: &[String], client_auth: bool) -> anyhow::Result<bool> {
    let Some(params) = read_params(path)? else {
        return Ok(false);
    };
    let has_client_auth = params
        .extended_key_usages
        .contains(&ExtendedKeyUsagePurpose::ClientAuth);
    Ok(has_client_auth == client_auth && names_all(&params, sans))
}

fn read_params(path: &Path) -> anyhow::Result<Option<CertificateParams>> {
    let pem = match std::fs::read_to_string(path) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    CertificateParams::from_ca_cert_pem(&pem)
        .map(Some)
        .with_context(|| format!("parsing {}", path.display()))
}

fn names_all(params: &CertificateParams, sans: &[String]) -> bool {
    sans.iter().all(|want| {
        let ip = want.parse::<IpAddr>().ok();
        params
            .subject_alt_names
            .iter()
            .any(|have| match (have, ip) {
                (SanType::IpAddress(a), Some(b)) => *a == b,
                (SanType::DnsName(n), None) => n.as_str().eq_ignore_ascii_case(want),
                _ => false,
            })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(path: &Path) -> CertificateDer<'static> {
        crate::tls::load_certs(path).unwrap().remove(0)
    }

    #[test]
    fn issued_certificates_load_into_rustls() {
        crate::tls::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test").unwrap();
        issue_node(dir.path(), 1, &["login.baa.localtest".into()], &[]).unwrap();
        let (cert, key) = server_paths(dir.path(), "node1");
        let (cluster_cert, cluster_key) = cluster_paths(dir.path(), 1);
        let id = crate::tls::NodeIdentity {
            cert,
            key,
            cluster_ca: cluster_ca_cert_path(dir.path()),
            cluster_cert,
            cluster_key,
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
    fn certificate_names_and_usages_are_read_back() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test").unwrap();
        issue_node(dir.path(), 1, &["login.baa.localtest".into()], &[]).unwrap();
        issue_server(dir.path(), "shop", &["shop.baa.localtest".into()]).unwrap();
        let (cert, _) = server_paths(dir.path(), "node1");
        let fits = |sans: &[&str], client_auth| {
            let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
            cert_fits(&cert, &sans, client_auth).unwrap()
        };
        assert!(fits(
            &["login.baa.localtest", "localhost", "127.0.0.1", "::1"],
            false
        ));
        assert!(!fits(&["login.baa.localtest"], true), "no client auth");
        assert!(!fits(&["shop.baa.localtest"], false));
        assert!(!fits(&["10.0.0.1"], false));
        let (cluster, _) = cluster_paths(dir.path(), 1);
        assert!(cert_fits(&cluster, &[], true).unwrap());
        let missing = dir.path().join("nope.pem");
        assert!(!cert_fits(&missing, &[], false).unwrap());
    }

    #[test]
    fn only_node_certificates_name_a_node() {
        let dir = tempfile::tempdir().unwrap();
        init_ca(dir.path(), "test").unwrap();
        issue_node(dir.path(), 12, &[], &[]).unwrap();
        issue_server(dir.path(), "shop", &[]).unwrap();
        issue_server(dir.path(), "node012", &[]).unwrap();
        assert_eq!(
            node_id_of(&load(&cluster_paths(dir.path(), 12).0)),
            Some(12)
        );
        assert_eq!(node_id_of(&load(&server_paths(dir.path(), "shop").0)), None);
        assert_eq!(
            node_id_of(&load(&server_paths(dir.path(), "node012").0)),
            None
        );
        assert!(issue_server(dir.path(), "node1-cluster", &[]).is_err());
    }
}
