//! The Raft log on sled: entries keyed by big-endian index, plus the vote,
//! the committed id and the last purged id. `append` acknowledges only after
//! the entries are flushed to disk, so an acknowledged write survives `kill -9`.
//!
//! The log has a sled database of its own (`raft-log/` beside the state's
//! `db/`): its entries are written once and purged in index order, which
//! keeps sled's file within a few times the entries between two snapshots,
//! while sharing a file with the state's short-lived records kept segments
//! of both alive (the file grew by ~1.7 KB per login and never shrank). A log an earlier release kept in the state's database is moved
//! over once, at start-up ([`open_log_db`]).
//!
//! Flushing is group commit: `append` writes the entries and hands its
//! completion callback to a flusher task, which flushes once for every
//! callback queued meanwhile and then completes them in order. Raft's core
//! loop never waits for the disk, and one fsync covers many appends.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;

use baa_proto::codec;
use baa_proto::model::NodeId;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, RaftLogReader, StorageIOError};
use std::sync::{mpsc, Arc};

use crate::metrics::Metrics;

use super::{Entry, LogId, SnapshotCover, StorageError, TypeConfig, Vote};

/// A key of the meta tree together with the type stored under it, so that
/// a record is always read back as the type it was written as.
struct MetaKey<T> {
    key: &'static [u8],
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T> MetaKey<T> {
    const fn new(key: &'static [u8]) -> Self {
        Self {
            key,
            _type: std::marker::PhantomData,
        }
    }
}

const VOTE: MetaKey<Vote> = MetaKey::new(b"vote");
/// Written as `Option<LogId>` since the first release; kept so that data
/// directories of every release open unchanged.
const LAST_PURGED: MetaKey<Option<LogId>> = MetaKey::new(b"last_purged");

/// The trees of the log, in whichever database holds it.
const LOG_TREES: [&str; 2] = ["raft_log", "raft_meta"];

/// Opens the log's own database at `dir` (with `cache_bytes` of page cache),
/// first moving the log trees an earlier release kept in the state's
/// database `state` into it. The move is copied into `<dir>.moving`, flushed
/// and renamed into place before the old trees are dropped, so a crash at
/// any point leaves one whole copy that the next start finishes from.
pub fn open_log_db(dir: &Path, state: &sled::Db, cache_bytes: u64) -> anyhow::Result<sled::Db> {
    let config = |path: &Path| sled::Config::new().path(path).cache_capacity(cache_bytes);
    let moving = dir.with_extension("moving");
    if moving.exists() {
        std::fs::remove_dir_all(&moving)?;
    }
    let has_old = |db: &sled::Db| {
        db.tree_names()
            .iter()
            .any(|n| LOG_TREES.iter().any(|t| n.as_ref() == t.as_bytes()))
    };
    if !dir.exists() && has_old(state) {
        let new = config(&moving).open()?;
        let mut moved = 0usize;
        for name in LOG_TREES {
            let (from, to) = (state.open_tree(name)?, new.open_tree(name)?);
            for item in from.iter() {
                let (k, v) = item?;
                to.insert(k, v)?;
                moved += 1;
            }
        }
        new.flush()?;
        drop(new);
        std::fs::rename(&moving, dir)?;
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        tracing::info!(records = moved, to = %dir.display(), "moved the Raft log to its own database");
    }
    let db = config(dir).open()?;
    if has_old(state) {
        for name in LOG_TREES {
            state.drop_tree(name)?;
        }
        state.flush()?;
    }
    Ok(db)
}

/// The sled-backed Raft log. Cheap to clone: readers share the trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    /// The state machine's database, flushed before a purge: what the
    /// purged entries applied must be on disk before they go.
    state: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
    node_id: NodeId,
    metrics: Arc<Metrics>,
    /// What the snapshot on disk covers: purges go no further.
    cover: SnapshotCover,
}

impl LogStore {
    /// Opens (or creates) the log trees in `db` and starts the flusher thread,
    /// which ends when the last clone of the store is dropped. Purges stop at
    /// what `cover` says the snapshot on disk covers, and flush `state` first.
    pub fn open(
        db: &sled::Db,
        state: &sled::Db,
        node_id: NodeId,
        metrics: Arc<Metrics>,
        cover: SnapshotCover,
    ) -> Result<Self, sled::Error> {
        let (flusher, rx) = mpsc::channel();
        let flush_db = db.clone();
        let flush_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("baa-log-flush".into())
            .spawn(move || group_commit(flush_db, rx, flush_metrics))
            .map_err(sled::Error::Io)?;
        Ok(Self {
            db: db.clone(),
            state: state.clone(),
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            flusher,
            node_id,
            metrics,
            cover,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &MetaKey<T>,
    ) -> Result<Option<T>, StorageError> {
        let raw = self
            .meta
            .get(key.key)
            .map_err(|e| StorageIOError::read(&e))?;
        raw.map(|v| {
            codec::decode_record(&v).map_err(|e| StorageIOError::read(AnyError::new(&e)).into())
        })
        .transpose()
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &MetaKey<T>,
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes =
            codec::encode_record(value).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        self.meta
            .insert(key.key, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
        codec::decode_record(bytes).map_err(|e| StorageIOError::read_logs(AnyError::new(&e)).into())
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.log.range((Bound::Included(index_key(start)), end)) {
            let (_, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            out.push(Self::decode_entry(&v)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged = self.get_meta(&LAST_PURGED)?.flatten();
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            Some((_, v)) => Some(Self::decode_entry(&v)?.log_id),
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(&VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(&VOTE)
    }

    // `save_committed` / `read_committed` keep openraft's no-op defaults: the
    // state machine persists its applied id atomically with every apply, so a
    // restart loses nothing, and skipping a write per commit on every node
    // keeps it off the replication path.

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        // Plain inserts, in order: entries are acknowledged only after the
        // flush below, and sled recovers a prefix of its writes, so a crash can
        // lose a tail of unacknowledged entries but never leave a gap.
        let mut from_other_leader = false;
        for entry in entries {
            from_other_leader |= entry.log_id.leader_id.node_id != self.node_id;
            let bytes = codec::encode_record(&entry)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, AnyError::new(&e)))?;
            self.log
                .insert(index_key(entry.log_id.index), bytes)
                .map_err(|e| StorageIOError::write_log_entry(entry.log_id, &e))?;
        }
        if from_other_leader {
            // A follower answers the leader only after this flush and has
            // nothing else to do meanwhile: flushing here saves two thread
            // hand-offs on the replication path.
            let started = std::time::Instant::now();
            let result = self.db.flush().map(|_| ()).map_err(std::io::Error::other);
            self.metrics.log_flushes.inc();
            self.metrics.log_flushed_appends.inc();
            self.metrics
                .log_flush_duration
                .observe(started.elapsed().as_secs_f64());
            callback.log_io_completed(result);
        } else if let Err(mpsc::SendError(callback)) = self.flusher.send(callback) {
            // The leader's own entries: flushed by the group-commit thread
            // while replication to the followers proceeds in parallel.
            callback.log_io_completed(Err(std::io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for item in self.log.range(index_key(log_id.index)..) {
            let (k, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Never past the snapshot on disk (see `SnapshotCover`); what is left
        // goes at a later purge.
        let log_id = match self.cover.get() {
            Some(covered) if covered.index < log_id.index => covered,
            Some(_) => log_id,
            None => return Ok(()),
        };
        if self
            .get_meta(&LAST_PURGED)?
            .flatten()
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        // The state these entries were applied to is not flushed with each
        // apply; it must be on disk before they can no longer be replayed.
        self.state
            .flush_async()
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.put_meta(&LAST_PURGED, &Some(log_id)).await?;
        let mut batch = sled::Batch::default();
        for item in self.log.range(..=index_key(log_id.index)) {
            let (k, _) = item.map_err(|e| StorageIOError::write_logs(&e))?;
            batch.remove(k);
        }
        self.log
            .apply_batch(batch)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// Flushes the database once per group of queued appends and completes their
/// callbacks in order. Every callback in a group was queued after its entries
/// were written, so the one flush covers them all. Runs on its own thread so
/// that the fsync never occupies an async worker.
fn group_commit(db: sled::Db, rx: mpsc::Receiver<LogFlushed<TypeConfig>>, metrics: Arc<Metrics>) {
    let mut group = Vec::new();
    while let Ok(first) = rx.recv() {
        group.push(first);
        group.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let result = db.flush().map(|_| ());
        metrics
            .log_flush_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.log_flushes.inc();
        metrics.log_flushed_appends.inc_by(group.len() as u64);
        for callback in group.drain(..) {
            callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::{Duration, Instant};

    use baa_proto::command::{Command, Op, Proposal};
    use baa_proto::model::BaaNode;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload, Membership};

    use super::*;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    /// One entry of each payload kind, in turn.
    fn entry(index: u64) -> Entry {
        let payload = match index % 3 {
            0 => EntryPayload::Blank,
            1 => EntryPayload::Normal(Proposal {
                commands: vec![Command {
                    request_id: Some(format!("req-{index}")),
                    time_ms: 1_000 + index,
                    op: Op::PurgeExpired,
                }],
            }),
            _ => {
                let node = BaaNode {
                    public_addr: "127.0.0.1:1".into(),
                    cluster_addr: "127.0.0.1:2".into(),
                };
                EntryPayload::Membership(Membership::new(
                    vec![BTreeSet::from([1])],
                    BTreeMap::from([(1, node)]),
                ))
            }
        };
        Entry {
            log_id: log_id(2, index),
            payload,
        }
    }

    /// Opens the store at `dir`, waiting for the flusher thread of a store
    /// dropped just before to release the database's file lock.
    fn open(dir: &std::path::Path) -> LogStore {
        let db = open_sled(dir);
        let cover = SnapshotCover::default();
        cover.set(Some(log_id(2, 1_000)));
        LogStore::open(&db, &db, 1, Metrics::new(), cover).unwrap()
    }

    #[tokio::test]
    async fn every_record_reads_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let vote = Vote::new_committed(2, 1);
        let all: Vec<Entry> = (1..=30).map(entry).collect();
        {
            let mut store = open(dir.path());
            store.save_vote(&Vote::new(1, 3)).await.unwrap();
            store.save_vote(&vote).await.unwrap();
            store.blocking_append(all.clone()).await.unwrap();
            store.truncate(log_id(2, 26)).await.unwrap();
            store.purge(log_id(2, 10)).await.unwrap();
        }
        let mut store = open(dir.path());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 10)));
        assert_eq!(state.last_log_id, Some(log_id(2, 25)));
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        let entries = store.try_get_log_entries(0..100).await.unwrap();
        assert_eq!(entries, all[10..25].to_vec());

        // Purging everything leaves the purge point as the last log id.
        store.purge(log_id(2, 25)).await.unwrap();
        drop(store);
        let mut store = open(dir.path());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 25)));
        assert_eq!(state.last_log_id, Some(log_id(2, 25)));
        assert!(store.try_get_log_entries(..).await.unwrap().is_empty());
    }

    /// Opens `dir` as sled, waiting for a dropped store's flusher thread to
    /// let go of its file lock.
    fn open_sled(dir: &std::path::Path) -> sled::Db {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => return db,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("reopening {}: {e}", dir.display()),
            }
        }
    }

    #[tokio::test]
    async fn a_log_kept_in_the_state_database_moves_to_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let (state_dir, log_dir) = (dir.path().join("db"), dir.path().join("raft-log"));
        let vote = Vote::new_committed(2, 1);
        let all: Vec<Entry> = (1..=20).map(entry).collect();
        {
            // As earlier releases kept it: the log's trees in the state's database.
            let shared = open_sled(&state_dir);
            let mut store = LogStore::open(
                &shared,
                &shared,
                1,
                Metrics::new(),
                SnapshotCover::default(),
            )
            .unwrap();
            store.save_vote(&vote).await.unwrap();
            store.blocking_append(all.clone()).await.unwrap();
            shared
                .open_tree("sm.0")
                .unwrap()
                .insert(b"k", b"v")
                .unwrap();
            shared.flush().unwrap();
        }
        // A move that crashed half-way left its copy behind: it is redone.
        std::fs::create_dir_all(log_dir.with_extension("moving")).unwrap();
        std::fs::write(log_dir.with_extension("moving").join("db"), b"torn").unwrap();
        for round in 0..2 {
            let state = open_sled(&state_dir);
            let log_db = open_log_db(&log_dir, &state, 1 << 20).unwrap();
            assert!(!log_dir.with_extension("moving").exists());
            assert!(
                !state.tree_names().iter().any(|n| n.as_ref() == b"raft_log"),
                "round {round}: the old log is still in the state's database"
            );
            let state_record = state.open_tree("sm.0").unwrap().get(b"k").unwrap();
            assert_eq!(state_record.as_deref(), Some(&b"v"[..]), "round {round}");
            let mut store =
                LogStore::open(&log_db, &state, 1, Metrics::new(), SnapshotCover::default())
                    .unwrap();
            assert_eq!(
                store.read_vote().await.unwrap(),
                Some(vote),
                "round {round}"
            );
            assert_eq!(
                store.try_get_log_entries(..).await.unwrap(),
                all,
                "round {round}"
            );
            drop(store);
            drop(log_db);
            drop(state);
            // Let the flusher thread of the dropped store release the lock.
            drop(open_sled(&log_dir));
        }
    }

    #[tokio::test]
    async fn purges_stop_at_the_snapshot_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        store.blocking_append((1..=30).map(entry)).await.unwrap();
        store.cover.set(Some(log_id(2, 12)));
        store.purge(log_id(2, 20)).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 12)));
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap()[0].log_id.index,
            13
        );
        // Once the snapshot covers more, the next purge catches up.
        store.cover.set(Some(log_id(2, 25)));
        store.purge(log_id(2, 22)).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 22)));
        store.cover.set(None);
        store.purge(log_id(2, 28)).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 22)));
    }
}
