//! The Raft log on sled: entries keyed by big-endian index, plus the vote,
//! the committed id and the last purged id. `append` acknowledges only after
//! the entries are flushed to disk, so an acknowledged write survives `kill -9`.
//!
//! Flushing is group commit: `append` writes the entries and hands its
//! completion callback to a flusher task, which flushes once for every
//! callback queued meanwhile and then completes them in order. Raft's core
//! loop never waits for the disk, and one fsync covers many appends.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use baa_proto::codec;
use baa_proto::model::NodeId;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, LogState, RaftLogReader, StorageIOError};
use std::sync::{mpsc, Arc};

use crate::metrics::Metrics;

use super::{Entry, LogId, StorageError, TypeConfig, Vote};

const KEY_VOTE: &[u8] = b"vote";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The sled-backed Raft log. Cheap to clone: readers share the trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
    node_id: NodeId,
    metrics: Arc<Metrics>,
}

impl LogStore {
    /// Opens (or creates) the log trees in `db` and starts the flusher thread,
    /// which ends when the last clone of the store is dropped.
    pub fn open(
        db: &sled::Db,
        node_id: NodeId,
        metrics: Arc<Metrics>,
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
            log: db.open_tree("raft_log")?,
            meta: db.open_tree("raft_meta")?,
            flusher,
            node_id,
            metrics,
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let raw = self.meta.get(key).map_err(|e| StorageIOError::read(&e))?;
        raw.map(|v| {
            codec::decode_record(&v).map_err(|e| StorageIOError::read(AnyError::new(&e)).into())
        })
        .transpose()
    }

    async fn put_meta<T: serde::Serialize>(
        &self,
        key: &[u8],
        value: &T,
    ) -> Result<(), StorageError> {
        let bytes =
            codec::encode_record(value).map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        self.meta
            .insert(key, bytes)
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
        let last_purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
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
        self.put_meta(KEY_VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
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
        // Record the purge point first: a crash in between leaves extra entries, never a gap.
        self.put_meta(KEY_LAST_PURGED, &Some(log_id)).await?;
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
