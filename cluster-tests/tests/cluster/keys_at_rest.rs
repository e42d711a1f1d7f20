//! Keys at rest: the agency's private signing keys (and the keys derived
//! from them), ticket keys, federation keys and pairwise salt are stored
//! only wrapped under the cluster's key-encryption key. After rotations and
//! sign-ins, no file of any node's data directory — the state's database,
//! the Raft log, snapshots — holds one in any form, while the same search
//! finds the public moduli and the envelopes. A node given another KEK, or
//! none, refuses to start and says why, and harms nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use baa_cluster_tests::at_rest::{assert_no_key_material, find_in_files, Secret};
use baa_cluster_tests::harness::CONVERGE_DEADLINE;
use baa_cluster_tests::sso::{add_confidential_site, create_user, redeem, Agent, AuthRequest};
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use baa_node::kek::{self, Form, KekRing};
use baa_node::metrics::Metrics;
use baa_node::raft::state_machine::{StateDb, StateMachineStore};
use baa_proto::model::NodeId;
use baa_proto::sso::SecretKind;
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery";

/// What a stopped cluster's data directories hold, opened with its KEK.
pub(super) struct AtRest {
    /// Every secret, in every form it could be stored in.
    pub secrets: Vec<Secret>,
    /// Values stored in the clear on purpose (public moduli) and the
    /// envelopes as stored: what the search must find.
    pub stored: Vec<(String, Vec<u8>)>,
    /// The key ids found, by kind of secret.
    pub kids: BTreeMap<&'static str, BTreeSet<String>>,
}

/// The base64 body of a PEM document: its first line, and all of it on one
/// line.
fn pem_bodies(name: &str, pem: &str) -> Vec<Secret> {
    let body: Vec<&str> = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    vec![
        Secret::new(format!("{name}, first line of the PEM body"), body[0]),
        Secret::new(format!("{name}, the PEM body on one line"), body.concat()),
    ]
}

/// Signing key `kid` (PKCS#1 DER `der`) in each form it could be stored in.
fn signing_key_forms(kid: &str, der: &[u8]) -> Vec<Secret> {
    use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey, LineEnding};
    use rsa::pkcs8::EncodePrivateKey;
    let key = rsa::RsaPrivateKey::from_pkcs1_der(der).expect("PKCS#1 DER");
    let name = format!("signing key {kid}");
    let mut out = vec![
        Secret::new(format!("{name} (PKCS#1 DER)"), der),
        Secret::new(
            format!("{name} (PKCS#8 DER)"),
            key.to_pkcs8_der().expect("PKCS#8").as_bytes(),
        ),
    ];
    out.extend(pem_bodies(
        &format!("{name} (PKCS#1 PEM)"),
        &key.to_pkcs1_pem(LineEnding::LF).expect("PEM"),
    ));
    out.extend(pem_bodies(
        &format!("{name} (PKCS#8 PEM)"),
        &key.to_pkcs8_pem(LineEnding::LF).expect("PEM"),
    ));
    for (i, derived) in baa_node::keys::derived_private_keys(der)
        .into_iter()
        .enumerate()
    {
        let what = [
            "P-256 scalar",
            "Ed25519 ID-token seed",
            "Ed25519 reference seed",
        ][i];
        out.push(Secret::new(format!("{name}'s derived {what}"), derived));
    }
    out
}

/// Opens a copy of the data directory `data` (the original stays as the
/// node left it) with baa's own state machine.
fn open_copy(data: &Path) -> (tempfile::TempDir, StateMachineStore) {
    let copy = tempfile::tempdir().expect("tempdir");
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", data.display()))
        .arg(copy.path())
        .status()
        .expect("running cp");
    assert!(status.success(), "copying {}", data.display());
    let state = StateDb::open(copy.path(), 16 << 20).expect("opening the state");
    let sm = StateMachineStore::open(state, &copy.path().join("snapshots"), Metrics::new())
        .expect("opening the state machine");
    (copy, sm)
}

/// Every secret of the stopped nodes' data directories `dirs`, opened with
/// the KEK in `kek_file`; asserts that each is stored as an envelope under
/// that KEK (none in the clear).
pub(super) fn key_material(dirs: &[PathBuf], kek_file: &Path) -> AtRest {
    let bytes = kek::read_kek_file(kek_file).expect("the KEK");
    let ring = KekRing::new(&bytes, &[]).unwrap();
    let kek_id = kek::kek_id(&bytes);
    let wrapped = |kind: SecretKind, what: &str, stored: &[u8]| {
        assert_eq!(
            kek::form(kind, stored),
            Some(Form::Wrapped(kek_id)),
            "{what} is not stored wrapped under the cluster's KEK"
        );
    };
    let mut secrets = BTreeMap::new();
    let mut stored = BTreeMap::new();
    let mut kids: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
    let mut seen = |kind: SecretKind, kid: &str| {
        kids.entry(kind.name()).or_default().insert(kid.to_string());
    };
    let mut add = |s: Secret| {
        secrets.insert(s.name.clone(), s);
    };
    for dir in dirs {
        let (_copy, sm) = open_copy(dir);
        let r = sm.reader();
        let (keys, _) = r.signing_keys().expect("signing keys");
        for k in &keys {
            let what = format!("signing key {}", k.kid);
            wrapped(SecretKind::SigningKey, &what, &k.private_der);
            seen(SecretKind::SigningKey, &k.kid);
            stored.insert(format!("{what}'s modulus"), k.n.clone());
            stored.insert(format!("{what}'s envelope"), k.private_der.clone());
            let der = ring.open_signing_key(k).expect("opening a signing key");
            signing_key_forms(&k.kid, &der)
                .into_iter()
                .for_each(&mut add);
        }
        for k in r.ticket_keys().expect("ticket keys").0 {
            let what = format!("ticket key {}", k.kid);
            wrapped(SecretKind::TicketKey, &what, &k.key);
            seen(SecretKind::TicketKey, &k.kid);
            add(Secret::new(&what, ring.open_ticket_key(&k).unwrap().key));
        }
        for k in r.federation_keys().expect("federation keys").0 {
            let what = format!("federation key {}", k.kid);
            wrapped(SecretKind::FederationKey, &what, &k.seed);
            seen(SecretKind::FederationKey, &k.kid);
            add(Secret::new(
                &what,
                ring.open_federation_key(&k).unwrap().seed,
            ));
        }
        let salt = r.pairwise_salt().expect("salt").expect("a pairwise salt");
        wrapped(SecretKind::PairwiseSalt, "the pairwise salt", &salt);
        seen(SecretKind::PairwiseSalt, "");
        add(Secret::new(
            "the pairwise salt",
            ring.open_salt(&salt).unwrap(),
        ));
    }
    AtRest {
        secrets: secrets.into_values().collect(),
        stored: stored.into_iter().collect(),
        kids,
    }
}

/// Signs `alice` in at node `node`, approves `site` once, and redeems a
/// ticket through another node: sessions, sealed tickets, signed ID tokens.
async fn sign_in(cluster: &Cluster, node: NodeId, site: &baa_cluster_tests::sso::TestSite) {
    let mut agent = Agent::new(cluster);
    let base = cluster.public_url(node);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;
    let req = AuthRequest::new(site);
    let code = agent.code_for(&base, &req, true).await;
    let other = cluster.public_url(node % 3 + 1);
    let (status, tokens) =
        redeem(cluster.http(), &other, site, &code, req.verifier.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(tokens["id_token"].is_string(), "{tokens}");
}

/// Runs `baa serve` for node `id`'s configuration file `config` with extra
/// environment `env` (and without `BAA_KEK` unless given); expects it to
/// exit non-zero within a deadline and answers what it wrote.
async fn serve_fails(cluster: &Cluster, config: &Path, env: &[(&str, String)]) -> String {
    let mut cmd = tokio::process::Command::new(cluster.bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .env_remove(kek::ENV_KEK)
        .env_remove(kek::ENV_PREVIOUS_KEKS)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("baa serve did not stop within 60 s")
        .expect("running baa serve");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "baa serve started: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_material_is_stored_in_the_clear_and_a_wrong_kek_is_refused() {
    let mut opts = ClusterOptions::nodes(3);
    // Snapshots on every node, and the log kept beside them.
    opts.snapshot_after_logs = Some(20);
    let mut cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    sign_in(&cluster, 1, &shop).await;
    for _ in 0..2 {
        cluster
            .cli(1, &["keys", "rotate"])
            .await
            .assert_success("baa keys rotate");
    }
    cluster
        .cli(2, &["federation", "rotate-key", "--overlap-s", "3600"])
        .await
        .assert_success("baa federation rotate-key");
    for node in [1, 2, 3] {
        sign_in(&cluster, node, &shop).await;
    }
    for i in 0..20 {
        create_user(&cluster, &format!("filler-{i}"), PASSWORD).await;
    }
    let ids = cluster.ids();
    poll_until(CONVERGE_DEADLINE, "a snapshot on every node", || async {
        let st = cluster.statuses(&ids).await;
        (st.len() == 3 && st.iter().all(|s| s.snapshot_index.is_some())).then_some(())
    })
    .await;
    cluster.wait_converged(&ids).await;
    for &id in &ids {
        let stale = cluster
            .metric(id, "baa_secrets_not_under_current_kek")
            .await;
        assert_eq!(stale, Some(0.0), "node {id}");
    }
    for &id in &ids {
        assert!(cluster.stop(id).await.success(), "node {id} stopped");
    }

    let dirs: Vec<PathBuf> = ids
        .iter()
        .map(|&id| cluster.node(id).dir().join("data"))
        .collect();
    let at_rest = key_material(&dirs, &cluster.kek_file());
    let count = |kind: SecretKind| at_rest.kids.get(kind.name()).map_or(0, BTreeSet::len);
    assert!(count(SecretKind::SigningKey) >= 3, "{:?}", at_rest.kids);
    assert!(count(SecretKind::TicketKey) >= 1, "{:?}", at_rest.kids);
    assert!(count(SecretKind::FederationKey) >= 2, "{:?}", at_rest.kids);
    assert_eq!(count(SecretKind::PairwiseSalt), 1);
    // The search reads every node's files: each one finds every modulus and
    // every envelope, which are stored.
    for dir in &dirs {
        let needles: Vec<&[u8]> = at_rest.stored.iter().map(|(_, b)| b.as_slice()).collect();
        let found = find_in_files(std::slice::from_ref(dir), &needles);
        for ((what, _), files) in at_rest.stored.iter().zip(found) {
            assert!(
                !files.is_empty(),
                "{what} not found under {}",
                dir.display()
            );
        }
    }
    assert_no_key_material(&dirs, &at_rest.secrets);

    // Another KEK: node 3 refuses to start, naming the cluster's KEK and
    // its own; BAA_KEK takes precedence over the configured file.
    let id_of = |k: &[u8; 32]| KekRing::new(k, &[]).unwrap().current_id();
    let cluster_kek = id_of(&kek::read_kek_file(&cluster.kek_file()).unwrap());
    let wrong = [0x42u8; 32];
    let wrong_hex: String = wrong.iter().map(|b| format!("{b:02x}")).collect();
    let out = serve_fails(
        &cluster,
        cluster.node(3).config_path(),
        &[(kek::ENV_KEK, wrong_hex)],
    )
    .await;
    for needle in [
        cluster_kek.as_str(),
        &id_of(&wrong),
        "which this node does not have",
        "[secrets] kek_file",
        kek::ENV_KEK,
    ] {
        assert!(out.contains(needle), "no {needle:?} in: {out}");
    }
    // No KEK at all: refused before anything is opened.
    let text = std::fs::read_to_string(cluster.node(3).config_path()).unwrap();
    let mut config: toml::Table = toml::from_str(&text).unwrap();
    config.remove("secrets");
    let bare = cluster.root().join("node3-without-kek.toml");
    std::fs::write(&bare, toml::to_string(&config).unwrap()).unwrap();
    let out = serve_fails(&cluster, &bare, &[]).await;
    assert!(
        out.contains("no key-encryption key") && out.contains("[secrets] kek_file"),
        "{out}"
    );

    // Nothing was harmed: with its KEK every node starts, and the cluster
    // signs in and converges.
    for &id in &ids {
        cluster.restart(id).await;
    }
    cluster.wait_for_membership(&ids, &ids).await;
    sign_in(&cluster, 3, &shop).await;
    cluster.wait_converged(&ids).await;
    cluster.assert_no_panics();
}
