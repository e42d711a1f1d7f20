//! Backup and restore: `baa backup` taken from a 3-node agency under write
//! load, restored with `baa restore` into a fresh 3-node cluster (new data
//! directories, ports and certificates, the same KEK) that starts without
//! `cluster init`: every restored node shows the backup's digest at its
//! index, and a user created before the backup signs in there. A backup
//! taken after the load equals the live source's digest on every node. A
//! truncated, corrupted or newer-format backup is refused with a clear error
//! and writes nothing, as is a restore under another KEK; a backup holds no
//! key material in the clear. A data
//! directory of a newer format is refused at start.

use std::path::{Path, PathBuf};
use std::time::Instant;

use baa_cluster_tests::at_rest::{assert_no_key_material, find_in_files};
use baa_cluster_tests::harness::{run_baa, CliOutput, CONVERGE_DEADLINE};
use baa_cluster_tests::sso::{add_confidential_site, create_user, Agent};
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use baa_proto::model::NodeId;

use super::keys_at_rest::key_material;
use super::support::{
    assert_writers_ok, create_user as create_plain_user, start_writers, wait_acks,
};

const PASSWORD: &str = "correct horse battery";

/// What `baa backup` printed about the file it wrote.
#[derive(Debug)]
struct Written {
    index: u64,
    digest: String,
    records: u64,
    bytes: u64,
}

/// The value after `label ` in `line`, up to the next comma or space.
fn field<'a>(line: &'a str, label: &str) -> &'a str {
    let at = line
        .find(&format!("{label} "))
        .unwrap_or_else(|| panic!("no {label} in {line:?}"));
    line[at + label.len() + 1..]
        .split([',', ' '])
        .next()
        .unwrap_or_default()
}

/// `baa backup FILE` through node `via`; what it printed.
async fn backup(cluster: &Cluster, via: NodeId, file: &Path) -> Written {
    let out = cluster
        .cli(via, &["backup", file.to_str().expect("utf-8 path")])
        .await;
    out.assert_success("baa backup");
    assert!(
        out.stderr.contains("received") && out.stderr.contains("verifying"),
        "progress on stderr: {}",
        out.stderr
    );
    let line = out.stdout.trim();
    let parse = |label: &str| -> u64 {
        field(line, label)
            .parse()
            .unwrap_or_else(|_| panic!("{label} in {line:?}"))
    };
    // "… N records, B bytes, …": the number comes before its label.
    let before = |label: &str| -> u64 {
        let at = line.find(&format!(" {label},")).expect(label);
        line[..at]
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{label} in {line:?}"))
    };
    let written = Written {
        index: parse("index"),
        digest: field(line, "digest").to_string(),
        records: before("records"),
        bytes: before("bytes"),
    };
    assert_eq!(written.digest.len(), 64, "{line}");
    let meta = std::fs::metadata(file).expect("the backup file");
    assert_eq!(meta.len(), written.bytes, "{line}");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600,
        "a backup is readable by its owner only"
    );
    written
}

/// `baa restore FILE --config CONFIG --data-dir DIR`.
async fn restore(bin: &Path, file: &Path, config: &Path, data_dir: &Path) -> CliOutput {
    let s = |p: &Path| p.to_str().expect("utf-8 path").to_string();
    let (file, config, data_dir) = (s(file), s(config), s(data_dir));
    run_baa(
        bin,
        &[
            "restore",
            &file,
            "--config",
            &config,
            "--data-dir",
            &data_dir,
        ],
    )
    .await
}

/// `bytes` with one byte flipped at `at`, written to `dir/name`.
fn flipped(dir: &Path, name: &str, bytes: &[u8], at: usize) -> PathBuf {
    let mut bad = bytes.to_vec();
    bad[at] ^= 0x5a;
    let path = dir.join(name);
    std::fs::write(&path, bad).expect("writing a corrupted copy");
    path
}

/// Polls until a backup through node 1 and every node's status agree on
/// the index (nothing was applied in between, e.g. by the reaper), and
/// answers that backup and the statuses.
async fn backup_at_rest(cluster: &Cluster, file: &Path) -> (Written, Vec<(NodeId, String)>) {
    let ids = cluster.ids();
    poll_until(
        CONVERGE_DEADLINE,
        "a backup at the index every node stands at",
        || async {
            let written = backup(cluster, 1, file).await;
            let st = cluster.statuses(&ids).await;
            let all_there =
                st.len() == ids.len() && st.iter().all(|s| s.applied_index == Some(written.index));
            all_there.then(|| {
                let digests = st.iter().map(|s| (s.node_id, s.digest.clone())).collect();
                (written, digests)
            })
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_into_a_fresh_cluster_with_the_same_digest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Cluster::start(3).await;
    create_user(&source, "alice", PASSWORD).await;
    let shop = add_confidential_site(&source, "shop", "https://shop.baa.localtest:9443/cb").await;
    Agent::new(&source)
        .sign_in_ok(&source.public_url(2), "alice", PASSWORD)
        .await;
    let writers: Vec<String> = (0..3).map(|i| format!("writer-{i}")).collect();
    for w in &writers {
        create_plain_user(&source, 1, w).await;
    }
    // Some bulk, so that the backup streams in more than one chunk.
    for round in 0..20 {
        let names: Vec<String> = (0..10).map(|i| format!("filler-{round}-{i}")).collect();
        futures::future::join_all(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| create_plain_user(&source, i as u64 % 3 + 1, n)),
        )
        .await;
    }

    // Under load: writers through every node while the backup is taken.
    let load = start_writers(
        &source,
        &writers,
        &source.ids(),
        std::time::Duration::from_secs(50),
    );
    wait_acks(&load, 20, "writes before the backup").await;
    let file = dir.path().join("agency.baa-backup");
    let started = Instant::now();
    let written = backup(&source, 2, &file).await;
    let backup_s = started.elapsed().as_secs_f64();
    let acks_during = load.acks();
    wait_acks(&load, 10, "writes after the backup").await;
    let reports = load.finish().await;
    assert_writers_ok(&reports);
    eprintln!(
        "backup under load: index {}, {} records, {} bytes in {backup_s:.1} s ({acks_during} \
         writes acknowledged by then)",
        written.index, written.records, written.bytes
    );
    assert!(!file.with_extension("baa-backup.partial").exists());

    // After the load: a backup equals the live state on every node.
    let quiet = dir.path().join("quiet.baa-backup");
    let (after, live) = backup_at_rest(&source, &quiet).await;
    assert!(after.index > written.index);
    for (id, digest) in &live {
        assert_eq!(digest, &after.digest, "node {id}'s live digest");
    }

    // Restore the backup taken under load into a fresh cluster.
    let started = Instant::now();
    let restored = Cluster::start_with(ClusterOptions {
        init: false,
        kek_from: Some(source.kek_file()),
        restore_from: Some(file.clone()),
        ..ClusterOptions::nodes(3)
    })
    .await;
    let ids = restored.ids();
    restored.wait_for_membership(&ids, &ids).await;
    let restore_s = started.elapsed().as_secs_f64();
    eprintln!("restored into 3 new nodes and a leader elected in {restore_s:.1} s");
    // Past the backup's index by the new leader's blank entry (one per
    // leader elected), which changes no record; the reaper's first sweep,
    // which would, is 15 s away.
    let statuses = poll_until(
        CONVERGE_DEADLINE,
        "every restored node at one index past the backup's",
        || async {
            let st = restored.statuses(&ids).await;
            let first = st.first()?.applied_index;
            let ok = st.len() == 3
                && first > Some(written.index)
                && st.iter().all(|s| s.applied_index == first);
            ok.then_some(st)
        },
    )
    .await;
    for s in &statuses {
        assert_eq!(
            s.digest, written.digest,
            "node {} of the restored cluster at index {:?}",
            s.node_id, s.applied_index
        );
        assert!(s.nodes.values().all(|n| {
            restored
                .ids()
                .iter()
                .any(|&id| restored.node(id).cluster_advertise().to_string() == n.cluster_addr)
        }));
    }
    // It is a cluster already: an init is refused.
    let init = restored.cli(2, &["cluster", "init"]).await;
    assert!(
        !init.status.success() && init.stderr.contains("already_initialized"),
        "{}",
        init.stderr
    );
    // A user of the source signs in on the restored cluster.
    Agent::new(&restored)
        .sign_in_ok(&restored.public_url(3), "alice", PASSWORD)
        .await;
    let site = restored.admin(1).site(&shop.client_id).await;
    assert!(site.is_ok(), "the site restored: {site:?}");

    // Refusals: nothing is written for a truncated, corrupted or newer file.
    let bytes = std::fs::read(&file).expect("the backup");
    let header_len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    let truncated = dir.path().join("truncated.baa-backup");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).expect("a truncated copy");
    let in_header = flipped(dir.path(), "header.baa-backup", &bytes, 16 + header_len / 2);
    let in_data = flipped(
        dir.path(),
        "data.baa-backup",
        &bytes,
        16 + header_len + (bytes.len() - 16 - header_len) / 2,
    );
    let mut newer_bytes = bytes.clone();
    newer_bytes[8..12].copy_from_slice(&(baa_node::backup::FORMAT + 1).to_le_bytes());
    let newer = dir.path().join("newer.baa-backup");
    std::fs::write(&newer, newer_bytes).expect("a newer copy");
    let config = restored.node(1).config_path().to_path_buf();
    for (bad, problem) in [
        (&truncated, "is truncated"),
        (&in_header, "is corrupt"),
        (&in_data, "is corrupt"),
        (&newer, "is newer than this baa reads"),
    ] {
        let target = dir.path().join("target");
        let out = restore(restored.bin(), bad, &config, &target).await;
        assert!(!out.status.success(), "{bad:?} restored: {}", out.stdout);
        assert!(
            out.stderr.contains(problem)
                && (problem.contains("newer") || out.stderr.contains(bad.to_str().unwrap())),
            "{bad:?}: {}",
            out.stderr
        );
        assert!(!target.exists(), "{bad:?} left {target:?}");
        assert!(!dir.path().join("target.restoring").exists());
    }
    // A node given another KEK than the backup's: refused, nothing left.
    let target = dir.path().join("target");
    let out = tokio::process::Command::new(restored.bin())
        .args(["restore", file.to_str().unwrap(), "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&target)
        .env(baa_node::kek::ENV_KEK, "ab".repeat(32))
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("running baa restore");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restored under another KEK");
    assert!(
        stderr.contains("does not open the backup's secrets"),
        "{stderr}"
    );
    assert!(!target.exists() && !dir.path().join("target.restoring").exists());
    // A data directory in use is never overwritten.
    let data = restored.node(1).dir().join("data");
    let out = restore(restored.bin(), &file, &config, &data).await;
    assert!(
        !out.status.success() && out.stderr.contains("is not empty"),
        "{}",
        out.stderr
    );

    // No key material in the clear in the backup, while the envelopes are
    // there to be found.
    drop(restored);
    let mut source = source;
    for id in source.ids() {
        source.stop(id).await;
    }
    let dirs: Vec<PathBuf> = source
        .ids()
        .iter()
        .map(|&id| source.node(id).dir().join("data"))
        .collect();
    let at_rest = key_material(&dirs, &source.kek_file());
    assert_no_key_material(&[file.clone(), quiet.clone()], &at_rest.secrets);
    let envelopes: Vec<&[u8]> = at_rest
        .stored
        .iter()
        .filter(|(what, _)| what.ends_with("envelope"))
        .map(|(_, v)| v.as_slice())
        .collect();
    assert!(!envelopes.is_empty());
    for (i, files) in find_in_files(std::slice::from_ref(&file), &envelopes)
        .iter()
        .enumerate()
    {
        assert!(!files.is_empty(), "envelope {i} not found in the backup");
    }

    // A data directory of a newer format: the node refuses to start, naming it.
    let data = source.node(1).dir().join("data");
    let format = data.join("FORMAT");
    assert_eq!(
        std::fs::read_to_string(&format).ok().as_deref(),
        Some("1\n")
    );
    std::fs::write(&format, "2\n").expect("writing FORMAT");
    let mut serve = tokio::process::Command::new(source.bin());
    serve
        .arg("serve")
        .arg("--config")
        .arg(source.node(1).config_path())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), serve.output())
        .await
        .expect("baa serve did not stop within 60 s")
        .expect("running baa serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a newer data directory served");
    assert!(
        stderr.contains(&format!(
            "data directory {} is in format 2, newer than this baa reads (≤ 1)",
            data.display()
        )),
        "{stderr}"
    );
}
