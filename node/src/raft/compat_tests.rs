//! Data directories written by earlier releases open with this code and read
//! back as they were written (`node/fixtures/`).

use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogReader, RaftLogStorage, RaftStateMachine};

use super::log_store::LogStore;
use super::state_machine::{StateDb, StateMachineStore};
use crate::metrics::Metrics;

/// Release 0.1.0's cluster after a purge (see the fixture's README).
const PURGED_0_1_0: &str = "purged-0.1.0";
/// Its state digest as computed since the digest leaves the membership
/// record out (0.1.0 itself showed `665d035bc53e…`, membership included).
const DIGEST_0_1_0: &str = "867b0762daf98d99f090ea864ed3fcce42c4e61adb08e13904db11fdc2531d42";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Copies a directory tree: sled writes on open, and the fixture stays as committed.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn release_0_1_0_data_after_a_purge_opens() {
    for node in 1..=3u64 {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(
            &fixture(PURGED_0_1_0).join(format!("node{node}")),
            dir.path(),
        );
        let state = StateDb::open(dir.path(), 16 << 20).unwrap();
        let db = state.db().clone();
        let wal = super::log_store::open_log(
            &dir.path().join("raft-wal"),
            &dir.path().join("raft-log"),
            &db,
        )
        .unwrap();
        let mut sm =
            StateMachineStore::open(state, &dir.path().join("snapshots"), Metrics::new()).unwrap();
        let mut log = LogStore::open(wal, node, Metrics::new(), sm.snapshot_cover()).unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(
            state.last_purged_log_id.map(|l| l.index),
            Some(139),
            "node {node}"
        );
        assert_eq!(state.last_log_id.map(|l| l.index), Some(157), "node {node}");
        assert!(log.read_vote().await.unwrap().is_some(), "node {node} vote");
        let entries = log.try_get_log_entries(140..=157).await.unwrap();
        assert_eq!(entries.len(), 18, "node {node} entries after the purge");
        // The log moved to its own files: the state's database keeps no
        // copy, and no sled copy is left on the way.
        assert!(
            !db.tree_names().iter().any(|n| n.as_ref() == b"raft_log"),
            "node {node}: the old log tree is still in the state's database"
        );
        assert!(!dir.path().join("raft-log").exists(), "node {node}");

        let (applied, membership) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(157), "node {node}");
        assert_eq!(membership.membership().voter_ids().count(), 3);
        let reader = sm.reader();
        assert_eq!(
            reader.digest().unwrap(),
            Some((Some(157), DIGEST_0_1_0.to_string())),
            "node {node}"
        );
        reader.check_records().unwrap();
        for user in ["old-0", "old-1"] {
            assert!(reader.user(user).unwrap().is_some(), "node {node}: {user}");
        }
        let snapshot = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(149));
    }
}
