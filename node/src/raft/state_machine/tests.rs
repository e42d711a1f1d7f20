//! Unit tests of deterministic apply, request deduplication and snapshots.

use std::collections::BTreeMap;

use baa_proto::command::{Command, NewUser, Op, Outcome, Proposal, UserPatch};
use baa_proto::ErrorCode;
use openraft::{CommittedLeaderId, EntryPayload, LogId};

use super::*;

fn store(dir: &std::path::Path) -> (sled::Db, StateMachineStore) {
    let db = sled::Config::new().path(dir.join("db")).open().unwrap();
    let sm = StateMachineStore::open(&db, &dir.join("snap"), Metrics::new()).unwrap();
    (db, sm)
}

fn entry(index: u64, request_id: Option<&str>, op: Op) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal {
            commands: vec![Command {
                request_id: request_id.map(String::from),
                time_ms: 1000 + index,
                op,
            }],
        }),
    }
}

fn create(name: &str) -> Op {
    Op::CreateUser(NewUser {
        username: name.into(),
        display_name: name.into(),
        email: None,
        groups: vec![],
        attributes: BTreeMap::new(),
        password_hash: None,
    })
}

fn set_attr(name: &str, k: &str, v: &str) -> Op {
    Op::UpdateUser {
        username: name.into(),
        patch: UserPatch {
            attributes: [(k.to_string(), Some(v.to_string()))].into(),
            ..Default::default()
        },
    }
}

#[tokio::test]
async fn apply_creates_updates_and_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, mut sm) = store(dir.path());
    let res = sm
        .apply(vec![
            entry(1, None, create("alice")),
            entry(2, None, set_attr("alice", "k", "v")),
            entry(3, None, create("alice")),
            entry(4, None, set_attr("bob", "k", "v")),
            entry(5, None, create("Not Valid")),
        ])
        .await
        .unwrap();
    let Ok(Outcome::User(u)) = &res[1][0] else {
        panic!("{res:?}")
    };
    assert_eq!(
        (u.revision, u.attributes.get("k").map(String::as_str)),
        (2, Some("v"))
    );
    assert_eq!(res[2][0].as_ref().unwrap_err().code, ErrorCode::UserExists);
    assert_eq!(
        res[3][0].as_ref().unwrap_err().code,
        ErrorCode::UserNotFound
    );
    assert_eq!(
        res[4][0].as_ref().unwrap_err().code,
        ErrorCode::InvalidRequest
    );
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(5));
    assert_eq!(sm.reader().user("alice").unwrap().unwrap().revision, 2);
}

#[tokio::test]
async fn a_request_id_is_applied_once_and_answered_with_the_first_result() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, mut sm) = store(dir.path());
    sm.apply(vec![entry(1, None, create("alice"))])
        .await
        .unwrap();
    let first = sm
        .apply(vec![entry(
            2,
            Some("req-00000001"),
            set_attr("alice", "k", "1"),
        )])
        .await
        .unwrap();
    // The retry carries the same id; even a different payload must not be applied.
    let retry = sm
        .apply(vec![entry(
            3,
            Some("req-00000001"),
            set_attr("alice", "k", "2"),
        )])
        .await
        .unwrap();
    assert_eq!(first, retry);
    let u = sm.reader().user("alice").unwrap().unwrap();
    assert_eq!((u.revision, u.attributes["k"].as_str()), (2, "1"));
    // Purging forgets old results.
    let res = sm
        .apply(vec![entry(
            4,
            None,
            Op::PurgeRequestResults { before_ms: 10_000 },
        )])
        .await
        .unwrap();
    assert_eq!(res[0][0], Ok(Outcome::Purged(1)));
}

#[tokio::test]
async fn snapshot_round_trip_reproduces_the_digest() {
    let a = tempfile::tempdir().unwrap();
    let (_db_a, mut sm_a) = store(a.path());
    let mut entries = vec![entry(1, None, create("alice"))];
    for i in 2..200 {
        entries.push(entry(
            i,
            Some(&format!("req-{i:08}")),
            set_attr("alice", &format!("k{i}"), "v"),
        ));
    }
    sm_a.apply(entries).await.unwrap();
    let mut builder = sm_a.get_snapshot_builder().await;
    let snap = builder.build_snapshot().await.unwrap();
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(199));

    let b = tempfile::tempdir().unwrap();
    let (_db_b, mut sm_b) = store(b.path());
    sm_b.apply(vec![entry(1, None, create("stale"))])
        .await
        .unwrap();
    let mut incoming = sm_b.begin_receiving_snapshot().await.unwrap();
    let mut src = *snap.snapshot;
    tokio::io::copy(&mut src, &mut *incoming).await.unwrap();
    sm_b.install_snapshot(&snap.meta, incoming).await.unwrap();

    assert_eq!(
        sm_a.reader().digest().unwrap(),
        sm_b.reader().digest().unwrap()
    );
    assert!(
        sm_b.reader().user("stale").unwrap().is_none(),
        "old state must be replaced"
    );
    assert_eq!(sm_b.reader().user("alice").unwrap().unwrap().revision, 199);
    // The installed snapshot is served onwards.
    let current = sm_b.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, snap.meta);
}

#[tokio::test]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let digest = {
        let (db, mut sm) = store(dir.path());
        sm.apply(vec![
            entry(1, None, create("alice")),
            entry(2, None, set_attr("alice", "k", "v")),
        ])
        .await
        .unwrap();
        db.flush().unwrap();
        sm.reader().digest().unwrap()
    };
    let (_db, sm) = store(dir.path());
    assert_eq!(sm.reader().digest().unwrap(), digest);
}
