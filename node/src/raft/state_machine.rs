//! The replicated state machine on sled. Applying a batch of entries is one
//! atomic sled batch (records, remembered request results and the applied log
//! id together), so a crash never leaves a half-applied entry that would be
//! applied a second time. Apply is deterministic: it reads no clock and no
//! network; times come from the command.
//!
//! Snapshots are files: a stream of length-prefixed `(key, value)` records of
//! the active tree, sent in chunks by openraft and installed into a fresh tree
//! that replaces the old one with a single pointer update.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use baa_proto::codec;
use baa_proto::command::{Command, CommandResult};
use baa_proto::model::User;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    sm_read_err, sm_write_err, Entry, LogId, SnapshotCover, SnapshotMeta, StorageError,
    StoredMembership, TypeConfig,
};
use crate::metrics::Metrics;

mod apply;
mod keyspace;
mod sso;

pub use sso::MAX_DEVICE_GRANTS;

use keyspace::{KEY_APPLIED, KEY_MEMBERSHIP, PREFIX_REQUEST, PREFIX_USER};

const ROOT_ACTIVE: &[u8] = b"active";
const ROOT_SEQ: &[u8] = b"seq";

/// A remembered result of a command that carried a request id.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RequestRecord {
    time_ms: u64,
    result: CommandResult,
}

/// State shared by the Raft-owned state machine, its snapshot builders and
/// the node's readers.
pub struct SmShared {
    db: sled::Db,
    root: sled::Tree,
    /// The tree holding the live state. Apply and snapshot install take the
    /// write lock; reads, digests and snapshot builds take the read lock.
    active: RwLock<sled::Tree>,
    snapshot_dir: PathBuf,
    /// Held while the current snapshot's two files are replaced, and while
    /// a reader reads the meta and opens the data: a reader never pairs one
    /// snapshot's meta with another's data (an open file keeps its contents
    /// when a newer one is renamed over it).
    snapshot_files: std::sync::Mutex<()>,
    /// What the snapshot on disk covers, for the log store's purges.
    cover: SnapshotCover,
    metrics: Arc<Metrics>,
    snapshot_seq: AtomicU64,
}

/// The state machine handed to openraft.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SmShared>,
}

/// Read access to the applied state, for request handlers.
#[derive(Clone)]
pub struct StateReader {
    shared: Arc<SmShared>,
}

impl StateMachineStore {
    /// Opens the state machine in `db`, with snapshot files under `snapshot_dir`.
    pub fn open(db: &sled::Db, snapshot_dir: &Path, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        std::fs::create_dir_all(snapshot_dir)?;
        let root = db.open_tree("sm_root")?;
        let name = match root.get(ROOT_ACTIVE)? {
            Some(n) => n.to_vec(),
            None => {
                let n = b"sm.0".to_vec();
                root.insert(ROOT_ACTIVE, n.clone())?;
                n
            }
        };
        let active = db.open_tree(&name)?;
        // Remove leftovers of an install that crashed before switching trees.
        for t in db.tree_names() {
            if t.starts_with(b"sm.") && t.as_ref() != name.as_slice() {
                db.drop_tree(&t)?;
            }
        }
        for entry in std::fs::read_dir(snapshot_dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("incoming-") || n.ends_with(".tmp"))
            {
                std::fs::remove_file(path)?;
            }
        }
        let cover = SnapshotCover::default();
        cover.set(read_meta(&snapshot_dir.join("current.meta"))?.and_then(|m| m.last_log_id));
        let shared = SmShared {
            db: db.clone(),
            root,
            active: RwLock::new(active),
            snapshot_dir: snapshot_dir.to_path_buf(),
            snapshot_files: std::sync::Mutex::new(()),
            cover,
            metrics,
            snapshot_seq: AtomicU64::new(0),
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// What the snapshot on disk covers: the log store must purge no further.
    pub fn snapshot_cover(&self) -> SnapshotCover {
        self.shared.cover.clone()
    }

    /// A reader sharing this state machine.
    pub fn reader(&self) -> StateReader {
        StateReader {
            shared: self.shared.clone(),
        }
    }
}

fn read_tree<T: DeserializeOwned>(
    tree: &sled::Tree,
    key: &[u8],
) -> Result<Option<T>, StorageError> {
    match tree.get(key).map_err(sm_read_err)? {
        Some(v) => codec::decode_record(&v).map(Some).map_err(sm_read_err),
        None => Ok(None),
    }
}

fn user_key(username: &str) -> Vec<u8> {
    [PREFIX_USER, username.as_bytes()].concat()
}

fn request_key(id: &str) -> Vec<u8> {
    [PREFIX_REQUEST, id.as_bytes()].concat()
}

impl SmShared {
    fn tree(&self) -> std::sync::RwLockReadGuard<'_, sled::Tree> {
        // A poisoned lock only means a panic elsewhere; the tree itself is intact.
        self.active.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tree_mut(&self) -> std::sync::RwLockWriteGuard<'_, sled::Tree> {
        self.active.write().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot_paths(&self) -> (PathBuf, PathBuf) {
        (
            self.snapshot_dir.join("current.meta"),
            self.snapshot_dir.join("current.data"),
        )
    }

    /// Writes the whole active tree to the current snapshot files and returns
    /// its meta with the data file opened.
    fn dump_snapshot(&self) -> anyhow::Result<(SnapshotMeta, std::fs::File)> {
        let (meta_path, data_path) = self.snapshot_paths();
        let tmp = self.snapshot_dir.join("build.data.tmp");
        let tree = self.tree();
        let last_applied: Option<LogId> = read_tree::<Option<LogId>>(&tree, KEY_APPLIED)?.flatten();
        let membership: StoredMembership = read_tree(&tree, KEY_MEMBERSHIP)?.unwrap_or_default();
        {
            let mut out = BufWriter::new(std::fs::File::create(&tmp)?);
            for item in tree.iter() {
                let (k, v) = item?;
                write_frame(&mut out, &(k.to_vec(), v.to_vec()))?;
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()?;
        }
        drop(tree);
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match &last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, seq),
            None => format!("0-0-{seq}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        };
        let _files = self.lock_snapshot_files();
        std::fs::rename(&tmp, &data_path)?;
        write_meta(&meta_path, &meta)?;
        self.cover.set(meta.last_log_id);
        let data = std::fs::File::open(&data_path)?;
        Ok((meta, data))
    }

    fn lock_snapshot_files(&self) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned lock guards no data of its own; the files are intact.
        self.snapshot_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The current snapshot's meta and its data file, read as one pair.
    fn current_snapshot(&self) -> anyhow::Result<Option<(SnapshotMeta, std::fs::File)>> {
        let (meta_path, data_path) = self.snapshot_paths();
        let _files = self.lock_snapshot_files();
        let Some(meta) = read_meta(&meta_path)? else {
            return Ok(None);
        };
        Ok(Some((meta, std::fs::File::open(&data_path)?)))
    }

    /// Replaces the state with the snapshot in `file`, streamed into a fresh tree.
    fn install_from(&self, meta: &SnapshotMeta, file: std::fs::File) -> anyhow::Result<()> {
        let seq: u64 = self
            .root
            .get(ROOT_SEQ)?
            .map(|v| codec::decode_record(&v))
            .transpose()?
            .unwrap_or(0)
            + 1;
        self.root.insert(ROOT_SEQ, codec::encode_record(&seq)?)?;
        let name = format!("sm.{seq}");
        let fresh = self.db.open_tree(&name)?;
        fresh.clear()?;
        let mut reader = BufReader::new(file);
        let mut batch = sled::Batch::default();
        let mut pending = 0usize;
        while let Some((k, v)) = read_frame::<(Vec<u8>, Vec<u8>)>(&mut reader)? {
            batch.insert(k, v);
            pending += 1;
            if pending == 1024 {
                fresh.apply_batch(std::mem::take(&mut batch))?;
                pending = 0;
            }
        }
        fresh.apply_batch(batch)?;
        // The dump was taken under the same lock as its meta, so the applied id
        // and membership records in it already agree with `meta`.
        let applied: Option<LogId> = read_tree::<Option<LogId>>(&fresh, KEY_APPLIED)?.flatten();
        anyhow::ensure!(
            applied == meta.last_log_id,
            "snapshot data does not match its meta"
        );
        self.db.flush()?;
        let mut active = self.tree_mut();
        let old = active.name();
        self.root.insert(ROOT_ACTIVE, name.as_bytes())?;
        self.db.flush()?;
        *active = fresh;
        drop(active);
        self.db.drop_tree(old)?;
        Ok(())
    }
}

fn write_frame<T: Serialize>(out: &mut impl Write, value: &T) -> anyhow::Result<()> {
    let bytes = codec::encode_record(value)?;
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(&bytes)?;
    Ok(())
}

fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> anyhow::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as u64;
    if len > codec::MAX_RECORD_BYTES {
        anyhow::bail!("snapshot record of {len} bytes exceeds the limit");
    }
    let mut buf = vec![0u8; len as usize];
    input.read_exact(&mut buf)?;
    Ok(Some(codec::decode_record(&buf)?))
}

fn write_meta(path: &Path, meta: &SnapshotMeta) -> anyhow::Result<()> {
    let tmp = path.with_extension("meta.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&codec::encode_record(meta)?)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

fn read_meta(path: &Path) -> anyhow::Result<Option<SnapshotMeta>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(codec::decode_record(&bytes)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl StateReader {
    /// The user named `username`, as applied on this node.
    pub fn user(&self, username: &str) -> Result<Option<User>, StorageError> {
        read_tree(&self.shared.tree(), &user_key(username))
    }

    /// Every user, in username order.
    pub fn users(&self) -> Result<Vec<User>, StorageError> {
        let tree = self.shared.tree();
        let mut out = Vec::new();
        for item in tree.scan_prefix(PREFIX_USER) {
            let (_, v) = item.map_err(sm_read_err)?;
            out.push(codec::decode_record(&v).map_err(sm_read_err)?);
        }
        Ok(out)
    }

    /// Decodes every record as the type its key family holds (see
    /// `keyspace`) and counts them by family; the first record that does not
    /// read back is an error naming it.
    pub fn check_records(&self) -> Result<BTreeMap<&'static str, usize>, String> {
        let tree = self.shared.tree();
        let mut counts = BTreeMap::new();
        for item in tree.iter() {
            let (k, v) = item.map_err(|e| e.to_string())?;
            *counts.entry(keyspace::decode(&k, &v)?).or_insert(0) += 1;
        }
        Ok(counts)
    }

    /// The applied log index and a SHA-256 digest of every record, taken
    /// together so that nodes at the same index can be compared.
    pub fn digest(&self) -> Result<(Option<u64>, String), StorageError> {
        let tree = self.shared.tree();
        let applied: Option<LogId> = read_tree::<Option<LogId>>(&tree, KEY_APPLIED)?.flatten();
        let mut h = Sha256::new();
        for item in tree.iter() {
            let (k, v) = item.map_err(sm_read_err)?;
            if k.as_ref() == KEY_APPLIED {
                continue;
            }
            h.update((k.len() as u64).to_le_bytes());
            h.update(&k);
            h.update((v.len() as u64).to_le_bytes());
            h.update(&v);
        }
        Ok((applied.map(|l| l.index), hex::encode(h.finalize())))
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let tree = self.shared.tree();
        let applied = read_tree::<Option<LogId>>(&tree, KEY_APPLIED)?.flatten();
        let membership = read_tree(&tree, KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<CommandResult>>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let tree = self.shared.tree_mut();
        let mut staged = apply::Staged::new(&tree);
        let mut results = Vec::new();
        for entry in entries {
            staged.put(KEY_APPLIED, &Some(entry.log_id))?;
            let result = match entry.payload {
                EntryPayload::Blank => Vec::new(),
                EntryPayload::Membership(m) => {
                    staged.put(
                        KEY_MEMBERSHIP,
                        &StoredMembership::new(Some(entry.log_id), m),
                    )?;
                    Vec::new()
                }
                EntryPayload::Normal(proposal) => proposal
                    .commands
                    .iter()
                    .map(|cmd| apply_with_dedup(&mut staged, cmd))
                    .collect::<Result<_, _>>()?,
            };
            results.push(result);
        }
        staged.commit()?;
        drop(tree);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self
            .shared
            .snapshot_dir
            .join(format!("incoming-{nanos}.data"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| openraft::StorageIOError::write_snapshot(None, &e))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        let meta = meta.clone();
        let file = *snapshot;
        file.sync_all().await.map_err(sm_write_err)?;
        let std_file = file.into_std().await;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut f = std_file;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
            let copy = f.try_clone()?;
            shared.install_from(&meta, copy)?;
            // Keep the received file as the current snapshot, to serve other laggards.
            let (meta_path, data_path) = shared.snapshot_paths();
            let tmp = shared.snapshot_dir.join("received.data.tmp");
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
            let mut out = std::fs::File::create(&tmp)?;
            std::io::copy(&mut f, &mut out)?;
            out.sync_all()?;
            let _files = shared.lock_snapshot_files();
            std::fs::rename(&tmp, &data_path)?;
            write_meta(&meta_path, &meta)?;
            shared.cover.set(meta.last_log_id);
            Ok(())
        })
        .await
        .map_err(sm_write_err)?
        .map_err(sm_write_err)?;
        for entry in std::fs::read_dir(&self.shared.snapshot_dir).map_err(sm_write_err)? {
            let path = entry.map_err(sm_write_err)?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("incoming-"))
            {
                let _ = std::fs::remove_file(path);
            }
        }
        self.shared.metrics.snapshots_installed.inc();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let shared = self.shared.clone();
        let current = tokio::task::spawn_blocking(move || shared.current_snapshot())
            .await
            .map_err(sm_read_err)?
            .map_err(sm_read_err)?;
        Ok(current.map(|(meta, file)| Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        }))
    }
}

/// Builds snapshots for openraft.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let (meta, file) = tokio::task::spawn_blocking(move || shared.dump_snapshot())
            .await
            .map_err(sm_read_err)?
            .map_err(sm_read_err)?;
        self.shared.metrics.snapshots_built.inc();
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}

/// Applies `cmd` unless its request id was seen before, in which case the
/// first result is returned and nothing changes.
fn apply_with_dedup(
    staged: &mut apply::Staged<'_>,
    cmd: &Command,
) -> Result<CommandResult, StorageError> {
    if let Some(id) = &cmd.request_id {
        if let Some(rec) = staged.get::<RequestRecord>(&request_key(id))? {
            return Ok(rec.result);
        }
    }
    let result = apply::apply_op(staged, cmd.time_ms, &cmd.op)?;
    if let Some(id) = &cmd.request_id {
        staged.put(
            &request_key(id),
            &RequestRecord {
                time_ms: cmd.time_ms,
                result: result.clone(),
            },
        )?;
    }
    Ok(result)
}

#[cfg(test)]
mod pinned_tests;
#[cfg(test)]
mod tests;
