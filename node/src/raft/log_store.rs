//! The Raft log: entries in segment files ([`super::wal`]), plus the vote
//! and the last purged id. `append` acknowledges only after the entries are
//! synced to disk, so an acknowledged write survives `kill -9`.
//!
//! The log lives beside the state's sled database (`raft-wal/` beside
//! `db/`) and is deleted a segment at a time as snapshots cover it, so the
//! disk follows the entries between two snapshots. A log an earlier release
//! kept in sled (`raft-log/`, or before that inside `db/`) is moved over
//! once, at start-up ([`open_log`]).
//!
//! Syncing is group commit: `append` writes the entries and hands its
//! completion callback to a flusher thread, which syncs once for every
//! callback queued meanwhile and then completes them in order. Raft's core
//! loop never waits for the disk, and one fsync covers many appends.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use anyhow::Context;
use baa_proto::codec;
use baa_proto::model::NodeId;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, RaftLogReader, StorageIOError};
use std::sync::{mpsc, Arc};

use crate::metrics::Metrics;

use super::wal::{Meta, Wal};
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
    // No timer flush: its thread holds the database a moment after the
    // last handle is dropped, and the copy is reopened right after its move.
    let config = |path: &Path| {
        sled::Config::new()
            .path(path)
            .cache_capacity(cache_bytes)
            .flush_every_ms(None)
    };
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

/// Opens the log at `dir`, first moving into it a log an earlier release
/// kept in sled: its own database at `sled_dir`, or the state's database
/// `state` (see [`open_log_db`]). The copy is written to `<dir>.moving`,
/// synced and renamed into place before the sled copy is removed, so a crash
/// at any point leaves one whole log that the next start goes on from.
pub fn open_log(dir: &Path, sled_dir: &Path, state: &sled::Db) -> anyhow::Result<Wal> {
    let moving = dir.with_extension("moving");
    if moving.exists() {
        std::fs::remove_dir_all(&moving)?;
    }
    let has_old = state
        .tree_names()
        .iter()
        .any(|n| LOG_TREES.iter().any(|t| n.as_ref() == t.as_bytes()));
    if !dir.exists() && (sled_dir.exists() || has_old) {
        let db = open_log_db(sled_dir, state, 1 << 20)?;
        let meta_tree = db.open_tree("raft_meta")?;
        let read_meta = |key: &[u8]| -> anyhow::Result<Option<Vec<u8>>> {
            Ok(meta_tree.get(key)?.map(|v| v.to_vec()))
        };
        let vote: Option<Vote> = read_meta(VOTE.key)?
            .map(|v| codec::decode_record(&v))
            .transpose()?;
        let last_purged: Option<LogId> = read_meta(LAST_PURGED.key)?
            .map(|v| codec::decode_record::<Option<LogId>>(&v))
            .transpose()?
            .flatten();
        let mut entries = Vec::new();
        for item in db.open_tree("raft_log")?.iter() {
            let (_, v) = item?;
            let entry: Entry = codec::decode_record(&v)?;
            // A purge that crashed before removing its entries left them.
            if last_purged.is_none_or(|p| entry.log_id.index > p.index) {
                entries.push(entry);
            }
        }
        let mut wal = Wal::open(&moving)?;
        wal.set_meta(Meta { vote, last_purged })?;
        wal.append(&entries)?;
        if let Some(f) = wal.active_file() {
            f.sync_data()?;
        }
        drop(wal);
        drop(db);
        std::fs::rename(&moving, dir)?;
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)?.sync_all()?;
        }
        tracing::info!(entries = entries.len(), to = %dir.display(), "moved the Raft log out of sled");
    }
    if sled_dir.exists() {
        std::fs::remove_dir_all(sled_dir)
            .with_context(|| format!("removing the moved log {}", sled_dir.display()))?;
    }
    Wal::open(dir).with_context(|| format!("opening the Raft log {}", dir.display()))
}

/// The Raft log. Cheap to clone: readers share the files.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
    node_id: NodeId,
    metrics: Arc<Metrics>,
    /// What the snapshot on disk covers: purges go no further.
    cover: SnapshotCover,
}

fn io_read(e: std::io::Error) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn io_write(e: std::io::Error) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

/// Syncs the file entries are appended to; every closed segment was synced
/// when it closed.
fn sync(wal: &Mutex<Wal>) -> std::io::Result<()> {
    let active = lock(wal).active_file();
    match active {
        Some(f) => f.sync_data(),
        None => Ok(()),
    }
}

/// The log, even if a thread panicked holding it: every change to it is
/// a file operation that either happened or did not.
fn lock(wal: &Mutex<Wal>) -> MutexGuard<'_, Wal> {
    wal.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogStore {
    /// Serves the log `wal` and starts the flusher thread, which ends when
    /// the last clone of the store is dropped. Purges stop at what `cover`
    /// says the snapshot on disk covers.
    pub fn open(
        wal: Wal,
        node_id: NodeId,
        metrics: Arc<Metrics>,
        cover: SnapshotCover,
    ) -> std::io::Result<Self> {
        let (flusher, rx) = mpsc::channel();
        let wal = Arc::new(Mutex::new(wal));
        let flush_wal = wal.clone();
        let flush_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("baa-log-flush".into())
            .spawn(move || group_commit(flush_wal, rx, flush_metrics))?;
        Ok(Self {
            wal,
            flusher,
            node_id,
            metrics,
            cover,
        })
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        lock(&self.wal)
    }

    /// After a snapshot install, openraft appends the entries that follow
    /// the snapshot before it purges the log behind it: when the entry
    /// `first` leaves a gap after the log's last (or after the purge point,
    /// when nothing is left), the log is purged up to the snapshot on disk
    /// first, which must end right before the entry. openraft issues its
    /// purge without waiting for the install to keep its files, so the
    /// snapshot may still be on its way to disk: it is waited for a while.
    async fn purge_before_gap(&mut self, first: u64) -> Result<(), StorageError> {
        let deadline = std::time::Instant::now() + COVER_WAIT;
        loop {
            let covered = self.cover.get();
            if let Some(c) = covered.filter(|c| c.index + 1 == first) {
                return self.wal().purge(c).map_err(io_write);
            }
            if covered.is_some_and(|c| c.index >= first) || std::time::Instant::now() >= deadline {
                let e = std::io::Error::other(format!(
                    "entry {first} does not follow the log's last, and the snapshot on disk \
                     (up to {:?}) does not end right before it",
                    covered.map(|c| c.index)
                ));
                return Err(io_write(e));
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// How long an append after a gap waits for the snapshot that fills it to
/// be kept on disk.
#[cfg(not(test))]
const COVER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
#[cfg(test)]
const COVER_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

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
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.wal().read(start, end).map_err(io_read)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let wal = self.wal();
        let last_purged = wal.meta().last_purged;
        let last = wal.last_log_id().map_err(io_read)?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let wal = self.wal.clone();
        let vote = *vote;
        tokio::task::spawn_blocking(move || {
            let mut wal = lock(&wal);
            let meta = Meta {
                vote: Some(vote),
                ..wal.meta().clone()
            };
            wal.set_meta(meta)
        })
        .await
        .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?
        .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.wal().meta().vote)
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
        // Written in order and acknowledged only after the sync below; a
        // crash can leave a torn tail of unacknowledged entries, which the
        // next open cuts off, never a gap.
        let entries: Vec<Entry> = entries.into_iter().collect();
        let first = entries.first().map(|e| e.log_id.index);
        // Found by the fault schedules: with every entry purged, a log
        // restarted at the leader's next entry and left a hole between its
        // purge point and that entry, which the next restart read into.
        if let Some(first) = first.filter(|f| self.wal().expected_index().is_some_and(|n| n < *f)) {
            self.purge_before_gap(first).await?;
        }
        let from_other_leader = entries
            .iter()
            .any(|e| e.log_id.leader_id.node_id != self.node_id);
        self.wal().append(&entries).map_err(io_write)?;
        if from_other_leader {
            // A follower answers the leader only after this sync and has
            // nothing else to do meanwhile: syncing here saves two thread
            // hand-offs on the replication path.
            let started = std::time::Instant::now();
            let result = sync(&self.wal);
            self.metrics.log_flushes.inc();
            self.metrics.log_flushed_appends.inc();
            self.metrics
                .log_flush_duration
                .observe(started.elapsed().as_secs_f64());
            callback.log_io_completed(result);
        } else if let Err(mpsc::SendError(callback)) = self.flusher.send(callback) {
            // The leader's own entries: synced by the group-commit thread
            // while replication to the followers proceeds in parallel.
            callback.log_io_completed(Err(std::io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal().truncate(log_id.index).map_err(io_write)
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
            .wal()
            .meta()
            .last_purged
            .is_some_and(|p| p.index >= log_id.index)
        {
            return Ok(());
        }
        // The state these entries were applied to is not flushed with each
        // apply, but it is on disk up to the cover: a build and an install
        // flush the state before they raise the cover, so no flush is
        // needed here (one would keep openraft's core, and with it every
        // append, waiting for a flush of the whole state database).
        // The purge point is recorded before any segment goes: a crash in
        // between leaves extra entries, never a gap.
        self.wal().purge(log_id).map_err(io_write)
    }
}

/// Syncs the log once per group of queued appends and completes their
/// callbacks in order. Every callback in a group was queued after its entries
/// were written, so the one sync covers them all. Runs on its own thread so
/// that the fsync never occupies an async worker.
fn group_commit(
    wal: Arc<Mutex<Wal>>,
    rx: mpsc::Receiver<LogFlushed<TypeConfig>>,
    metrics: Arc<Metrics>,
) {
    let mut group = Vec::new();
    while let Ok(first) = rx.recv() {
        group.push(first);
        group.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let result = sync(&wal);
        metrics
            .log_flush_duration
            .observe(started.elapsed().as_secs_f64());
        metrics.log_flushes.inc();
        metrics.log_flushed_appends.inc_by(group.len() as u64);
        for callback in group.drain(..) {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            callback.log_io_completed(r);
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
    use crate::raft::state_machine::{StateDb, StateMachineStore};

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

    /// Opens the store at `dir` (the log in `raft-wal/`, the state in `db/`).
    fn open(dir: &std::path::Path) -> LogStore {
        let (state, _sm) = open_state(dir);
        let wal = open_log(&dir.join("raft-wal"), &dir.join("raft-log"), &state).unwrap();
        let cover = SnapshotCover::default();
        cover.set(Some(log_id(2, 1_000)));
        LogStore::open(wal, 1, Metrics::new(), cover).unwrap()
    }

    /// The state machine of the data directory `dir` and its database.
    fn open_state(dir: &std::path::Path) -> (sled::Db, StateMachineStore) {
        // A dropped store's flusher thread may hold the file lock a moment.
        let deadline = Instant::now() + Duration::from_secs(30);
        let state = loop {
            match StateDb::open(dir, 16 << 20) {
                Ok(state) => break state,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => panic!("reopening the state in {}: {e:#}", dir.display()),
            }
        };
        let db = state.db().clone();
        let sm = StateMachineStore::open(state, &dir.join("snapshots"), Metrics::new()).unwrap();
        (db, sm)
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

    /// Writes the sled log of earlier releases: `vote`, `entries` and the
    /// purge point `purged` in the trees `raft_log` and `raft_meta` of `db`.
    fn write_sled_log(db: &sled::Db, vote: &Vote, entries: &[Entry], purged: Option<LogId>) {
        let (log, meta) = (
            db.open_tree("raft_log").unwrap(),
            db.open_tree("raft_meta").unwrap(),
        );
        meta.insert(VOTE.key, codec::encode_record(vote).unwrap())
            .unwrap();
        meta.insert(LAST_PURGED.key, codec::encode_record(&purged).unwrap())
            .unwrap();
        for e in entries {
            log.insert(
                e.log_id.index.to_be_bytes(),
                codec::encode_record(e).unwrap(),
            )
            .unwrap();
        }
        db.flush().unwrap();
    }

    /// A log in the state's database (the first releases) and one in its
    /// own sled database (the release before) both move to the log files,
    /// once: a torn copy left by a crash is redone, a second start finds
    /// the files and no sled copy.
    #[tokio::test]
    async fn a_log_kept_in_sled_moves_to_its_files() {
        let vote = Vote::new_committed(2, 1);
        let all: Vec<Entry> = (1..=20).map(entry).collect();
        for in_state in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (state_dir, sled_dir) = (dir.path().join("db"), dir.path().join("raft-log"));
            let wal_dir = dir.path().join("raft-wal");
            {
                let state = open_sled(&state_dir);
                let db = if in_state {
                    state.clone()
                } else {
                    open_sled(&sled_dir)
                };
                // Entries 1..=3 were purged, 3 was left behind by a crash.
                write_sled_log(&db, &vote, &all[2..], Some(log_id(2, 3)));
                state.open_tree("sm.0").unwrap().insert(b"k", b"v").unwrap();
                state.flush().unwrap();
            }
            std::fs::create_dir_all(wal_dir.with_extension("moving")).unwrap();
            std::fs::write(wal_dir.with_extension("moving").join("meta"), b"torn").unwrap();
            for round in 0..2 {
                let (state, _sm) = open_state(dir.path());
                let wal = open_log(&wal_dir, &sled_dir, &state).unwrap();
                let mut store =
                    LogStore::open(wal, 1, Metrics::new(), SnapshotCover::default()).unwrap();
                let what = format!("in the state's db: {in_state}, round {round}");
                assert!(!wal_dir.with_extension("moving").exists(), "{what}");
                assert!(!sled_dir.exists(), "{what}");
                assert!(
                    !state.tree_names().iter().any(|n| n.as_ref() == b"raft_log"),
                    "{what}: the old log is still in the state's database"
                );
                let record = state.open_tree("sm.0").unwrap().get(b"k").unwrap();
                assert_eq!(record.as_deref(), Some(&b"v"[..]), "{what}");
                assert_eq!(store.read_vote().await.unwrap(), Some(vote), "{what}");
                let log_state = store.get_log_state().await.unwrap();
                assert_eq!(log_state.last_purged_log_id, Some(log_id(2, 3)), "{what}");
                assert_eq!(log_state.last_log_id, Some(log_id(2, 20)), "{what}");
                assert_eq!(
                    store.try_get_log_entries(..).await.unwrap(),
                    all[3..].to_vec(),
                    "{what}"
                );
            }
        }
    }

    /// A crash mid-append leaves a torn record at the end of the last
    /// segment: it is cut off at the next open, and the log goes on from
    /// the entry before it. A bad record in an earlier segment is an error.
    #[tokio::test]
    async fn a_torn_tail_is_cut_off_and_the_log_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<Entry> = (1..=10).map(entry).collect();
        {
            let mut store = open(dir.path());
            store.blocking_append(all.clone()).await.unwrap();
        }
        let seg = dir.path().join("raft-wal").join(format!("{:020}.seg", 1));
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        {
            let mut store = open(dir.path());
            let log_state = store.get_log_state().await.unwrap();
            assert_eq!(log_state.last_log_id, Some(log_id(2, 9)));
            store.blocking_append(all[9..].to_vec()).await.unwrap();
            assert_eq!(store.try_get_log_entries(..).await.unwrap(), all);
        }
        // Zeros after the last record (blocks a crash left unwritten).
        let len = std::fs::metadata(&seg).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len + 4096).unwrap();
        drop(f);
        {
            let mut store = open(dir.path());
            assert_eq!(store.try_get_log_entries(..).await.unwrap(), all);
            assert_eq!(std::fs::metadata(&seg).unwrap().len(), len);
        }
        // A flipped byte in the middle of a segment that is not the last.
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        std::fs::copy(&seg, seg.with_file_name(format!("{:020}.seg", 11))).unwrap();
        assert!(Wal::open(&dir.path().join("raft-wal")).is_err());
    }

    /// Purged segments are deleted whole, and a log whose entries are all
    /// purged starts anew where the next entry is (after a snapshot
    /// install); truncation cuts inside a segment and across segments.
    #[tokio::test]
    async fn purged_segments_go_and_a_purged_log_starts_anew() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("raft-wal");
        let segments = || {
            std::fs::read_dir(&wal_dir)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .ends_with(".seg")
                })
                .count()
        };
        let mut store = open(dir.path());
        // Entries large enough that a few fill a segment.
        let big = |index: u64| {
            let mut e = entry(index);
            e.payload = EntryPayload::Normal(Proposal {
                commands: vec![Command {
                    request_id: Some("x".repeat(1 << 20)),
                    time_ms: index,
                    op: Op::PurgeExpired,
                }],
            });
            e.log_id = log_id(2, index);
            e
        };
        let all: Vec<Entry> = (1..=12).map(big).collect();
        store.blocking_append(all.clone()).await.unwrap();
        assert!(segments() >= 3, "{} segments", segments());
        store.truncate(log_id(2, 7)).await.unwrap();
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap(),
            all[..6].to_vec()
        );
        store.blocking_append(all[6..].to_vec()).await.unwrap();
        store.purge(log_id(2, 9)).await.unwrap();
        assert_eq!(
            store.try_get_log_entries(..).await.unwrap(),
            all[9..].to_vec()
        );
        assert!(segments() <= 2, "{} segments", segments());
        store.purge(log_id(2, 12)).await.unwrap();
        assert_eq!(segments(), 0);
        store.blocking_append([big(13)]).await.unwrap();
        // After a snapshot install the entries that follow it come before
        // the purge behind it: the log is purged up to the snapshot first.
        store.cover.set(Some(log_id(2, 39)));
        store.blocking_append([big(40)]).await.unwrap();
        let log_state = store.get_log_state().await.unwrap();
        assert_eq!(log_state.last_purged_log_id, Some(log_id(2, 39)));
        assert_eq!(store.try_get_log_entries(..).await.unwrap(), vec![big(40)]);
        // A gap no snapshot covers is refused.
        assert!(store.blocking_append([big(50)]).await.is_err());
        drop(store);
        let mut store = open(dir.path());
        let log_state = store.get_log_state().await.unwrap();
        assert_eq!(log_state.last_purged_log_id, Some(log_id(2, 39)));
        assert_eq!(log_state.last_log_id, Some(log_id(2, 40)));
        assert_eq!(store.try_get_log_entries(..).await.unwrap(), vec![big(40)]);
    }

    /// Found by the fault schedules (seed 16): openraft purges the log up
    /// to an installed snapshot before the install has kept its files, so
    /// the purge stops at the older snapshot on disk, which may leave
    /// nothing live; the entries after the installed snapshot then come.
    /// They must not start a log with a hole after the purge point, which
    /// the next start reads into.
    #[tokio::test]
    async fn entries_after_an_install_leave_no_hole_behind_an_emptied_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        store.blocking_append((1..=30).map(entry)).await.unwrap();
        // The snapshot on disk covers the whole log; openraft, installing
        // one up to 60, purges to 60: the purge stops at 30.
        store.cover.set(Some(log_id(2, 30)));
        store.purge(log_id(2, 60)).await.unwrap();
        assert_eq!(store.try_get_log_entries(..).await.unwrap(), vec![]);
        // The install keeps its files while the next entries wait.
        let cover = store.cover.clone();
        let install = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            cover.set(Some(log_id(2, 60)));
        });
        store.blocking_append((61..=62).map(entry)).await.unwrap();
        install.await.unwrap();
        drop(store);
        let mut store = open(dir.path());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(2, 60)));
        assert_eq!(state.last_log_id, Some(log_id(2, 62)));
        let read = store.try_get_log_entries(..).await.unwrap();
        assert_eq!(read, (61..=62).map(entry).collect::<Vec<_>>());
        // Entries after a purge point that no snapshot ends at are refused,
        // not written after a hole.
        store.cover.set(Some(log_id(2, 62)));
        store.purge(log_id(2, 62)).await.unwrap();
        assert!(store.blocking_append([entry(70)]).await.is_err());
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 62)));
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
