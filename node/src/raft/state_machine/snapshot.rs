//! Snapshots of the state machine as files: building one from the active
//! tree, serving the current one, receiving and installing one.
//!
//! A snapshot is two files under the snapshot directory: a data file, a
//! stream of length-prefixed `(key, value)` records of the active tree, and
//! `current.meta`, its openraft meta, which names the data file (the name
//! is derived from the meta). Writing the meta is the one commit point: a
//! new data file is complete under its own name before the meta names it,
//! and the old one goes only after, so a crash anywhere leaves a meta and
//! data that agree. openraft sends the data in chunks; a
//! received snapshot is streamed into a fresh tree that replaces the old one
//! with a single pointer update in the root tree, so a crash mid-install
//! leaves the old state whole.
//!
//! A build does not hold apply up: it notes where the state stands (applied
//! id, membership) and starts keeping pre-images, each key's value before
//! the first write to it since, all within one turn of the writer; then
//! reads the tree in key order while writes go on (a key's value is read
//! whole, from before or after any write to it), writing each key as read
//! unless it has a pre-image, which is written instead, and writing the
//! pre-images of keys deleted before the read got to them; a last short
//! turn takes the pre-images of keys past the last one read. The data is
//! exactly the state at the noted applied id, written in one pass and
//! handed to the disk a step at a time.

use std::collections::BTreeMap;

use anyhow::Context;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use baa_proto::codec;
use openraft::storage::Snapshot;
use openraft::RaftSnapshotBuilder;
use serde::{de::DeserializeOwned, Serialize};

use super::keyspace::{KEY_APPLIED, KEY_MEMBERSHIP, ROOT_ACTIVE, ROOT_INSTALLED, ROOT_SEQ};
use super::{database, read_tree, SmShared};
use crate::raft::{
    sm_read_err, sm_write_err, LogId, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

/// What every key written since a snapshot build began held then (`None`:
/// absent).
pub(super) type PreImages = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Stops keeping pre-images when a build (or a rebuild) ends, whichever way.
pub(super) struct KeepingPreImages<'a>(&'a SmShared);

impl Drop for KeepingPreImages<'_> {
    fn drop(&mut self) {
        self.0.pre_images().take();
    }
}

/// Builds snapshots for openraft.
pub struct SnapshotBuilder {
    shared: Arc<SmShared>,
}

impl SnapshotBuilder {
    pub(super) fn new(shared: Arc<SmShared>) -> Self {
        Self { shared }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let shared = self.shared.clone();
        let (meta, file) =
            crate::raft::background::run("baa-snapshot", move || shared.dump_snapshot())
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

/// The meta file of the current snapshot.
const META_FILE: &str = "current.meta";

/// The data file of snapshots kept before data files were named after
/// their meta: renamed to its name from the meta at open.
const LEGACY_DATA_FILE: &str = "current.data";

/// The name of the data file of the snapshot `meta` describes: two
/// snapshots with the same id hold the same state, so it may be replaced.
fn data_file_name(meta: &SnapshotMeta) -> String {
    use sha2::Digest;
    let (term, index) = meta
        .last_log_id
        .map_or((0, 0), |l| (l.leader_id.term, l.index));
    let id = sha2::Sha256::digest(meta.snapshot_id.as_bytes());
    format!("snapshot-{term}-{index}-{}.data", hex::encode(&id[..8]))
}

/// Removes what a crash may have left behind: trees of an install that did
/// not switch over to them, half-received and half-written snapshot files,
/// data files the meta does not name (written before a crash kept them
/// from being named, or left after one kept the old from going).
pub(super) fn remove_leftovers(
    db: &sled::Db,
    active: &[u8],
    snapshot_dir: &Path,
) -> anyhow::Result<()> {
    for t in db.tree_names() {
        if t.starts_with(b"sm.") && t.as_ref() != active {
            db.drop_tree(&t)?;
        }
    }
    let named = read_meta(&snapshot_dir.join(META_FILE))?.map(|m| data_file_name(&m));
    if let Some(named) = &named {
        let legacy = snapshot_dir.join(LEGACY_DATA_FILE);
        if legacy.exists() && !snapshot_dir.join(named).exists() {
            std::fs::rename(legacy, snapshot_dir.join(named))?;
            sync_dir(snapshot_dir)?;
        }
    }
    for entry in std::fs::read_dir(snapshot_dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let unnamed_data = name.ends_with(".data") && named.as_deref() != Some(name);
        if name.starts_with("incoming-") || name.ends_with(".tmp") || unnamed_data {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// What the snapshot on disk covers, as its meta says.
pub(super) fn covered(snapshot_dir: &Path) -> anyhow::Result<Option<LogId>> {
    Ok(read_meta(&snapshot_dir.join(META_FILE))?.and_then(|m| m.last_log_id))
}

/// Makes a directory's entries (new names, renames, removals) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A fresh file for a snapshot openraft is about to send us.
pub(super) async fn begin_receiving(
    shared: &SmShared,
) -> Result<Box<tokio::fs::File>, StorageError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = shared.snapshot_dir.join(format!("incoming-{nanos}.data"));
    let file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .await
        .map_err(|e| openraft::StorageIOError::write_snapshot(None, &e))?;
    Ok(Box::new(file))
}

/// Installs a received snapshot and keeps it as the current one.
pub(super) async fn install(
    shared: &Arc<SmShared>,
    meta: &SnapshotMeta,
    snapshot: Box<tokio::fs::File>,
) -> Result<(), StorageError> {
    let sm = shared.clone();
    let meta = meta.clone();
    let file = *snapshot;
    file.sync_all().await.map_err(sm_write_err)?;
    let std_file = file.into_std().await;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut f = std_file;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
        let copy = f.try_clone()?;
        sm.install_from(&meta, copy)?;
        // Keep the received file as the current snapshot, to serve other laggards.
        let tmp = sm.snapshot_dir.join("received.data.tmp");
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(0))?;
        let mut out = SyncingWriter::new(std::fs::File::create(&tmp)?);
        std::io::copy(&mut f, &mut out)?;
        out.finish()?;
        sm.keep_snapshot(&tmp, &meta)?;
        sm.cover.set(meta.last_log_id);
        Ok(())
    })
    .await
    .map_err(sm_write_err)?
    .map_err(sm_write_err)?;
    for entry in std::fs::read_dir(&shared.snapshot_dir).map_err(sm_write_err)? {
        let path = entry.map_err(sm_write_err)?.path();
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("incoming-"))
        {
            let _ = std::fs::remove_file(path);
        }
    }
    shared.metrics.snapshots_installed.inc();
    Ok(())
}

/// The current snapshot, if one was built or installed.
pub(super) async fn current(
    shared: &Arc<SmShared>,
) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
    let shared = shared.clone();
    let current = tokio::task::spawn_blocking(move || shared.current_snapshot())
        .await
        .map_err(sm_read_err)?
        .map_err(sm_read_err)?;
    Ok(current.map(|(meta, file)| Snapshot {
        meta,
        snapshot: Box::new(tokio::fs::File::from_std(file)),
    }))
}

impl SmShared {
    /// The current snapshot's data file, if there is one (for its size:
    /// the file may be replaced once this returns).
    pub(super) fn current_data_path(&self) -> anyhow::Result<Option<PathBuf>> {
        let meta = read_meta(&self.snapshot_dir.join(META_FILE))?;
        Ok(meta.map(|m| self.snapshot_dir.join(data_file_name(&m))))
    }

    /// Makes `tmp`, a complete and synced data file, the current snapshot
    /// with `meta`: the data under its name first, then the meta naming it
    /// (the commit point), then the data file it replaces goes. Returns
    /// the data file's path.
    fn keep_snapshot(&self, tmp: &Path, meta: &SnapshotMeta) -> anyhow::Result<PathBuf> {
        let name = data_file_name(meta);
        let data = self.snapshot_dir.join(&name);
        let _files = self.lock_snapshot_files();
        std::fs::rename(tmp, &data)?;
        sync_dir(&self.snapshot_dir)?;
        write_meta(&self.snapshot_dir.join(META_FILE), meta)?;
        sync_dir(&self.snapshot_dir)?;
        for entry in std::fs::read_dir(&self.snapshot_dir)? {
            let path = entry?.path();
            let old_data = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".data") && n != name && !n.starts_with("incoming-"));
            if old_data {
                // A reader that opened it keeps reading it.
                std::fs::remove_file(&path)?;
            }
        }
        Ok(data)
    }

    fn pre_images(&self) -> std::sync::MutexGuard<'_, Option<PreImages>> {
        // A poisoned lock guards a map that is whole after every insert.
        self.pre_images.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts keeping pre-images, until the guard returned goes; called in
    /// the writer's turn, so that every batch applied after it is seen.
    pub(super) fn start_keeping_pre_images(&self) -> KeepingPreImages<'_> {
        *self.pre_images() = Some(PreImages::new());
        KeepingPreImages(self)
    }

    /// The pre-images kept so far; no more are kept after this. Called in
    /// the writer's turn, so that no batch is half seen.
    pub(super) fn take_pre_images(&self) -> PreImages {
        self.pre_images().take().unwrap_or_default()
    }

    /// While a build reads the tree, keeps what `keys` hold in `tree` before
    /// a batch's writes reach it (apply calls this in the writer's turn).
    pub(super) fn keep_pre_images<'k>(
        &self,
        tree: &sled::Tree,
        keys: impl Iterator<Item = &'k Vec<u8>>,
    ) -> Result<(), StorageError> {
        let mut guard = self.pre_images();
        let Some(images) = guard.as_mut() else {
            return Ok(());
        };
        for k in keys {
            if !images.contains_key(k) {
                let before = tree.get(k).map_err(sm_read_err)?.map(|v| v.to_vec());
                images.insert(k.clone(), before);
            }
        }
        Ok(())
    }

    /// Writes the active tree as it stands at its applied id to the current
    /// snapshot files, while apply goes on (see the module's doc), and
    /// returns its meta with the data file opened.
    fn dump_snapshot(&self) -> anyhow::Result<(SnapshotMeta, std::fs::File)> {
        let _building = self.building();
        let began = std::time::Instant::now();
        let tmp = self.snapshot_dir.join("build.data.tmp");
        let (keeping, tree, state, last_applied, membership) = {
            let _writer = self.writer();
            let live = self.live();
            let applied: Option<LogId> =
                read_tree::<Option<LogId>>(&live.tree, KEY_APPLIED)?.flatten();
            let membership: StoredMembership =
                read_tree(&live.tree, KEY_MEMBERSHIP)?.unwrap_or_default();
            let keeping = self.start_keeping_pre_images();
            (
                keeping,
                live.tree.clone(),
                live.state.clone(),
                applied,
                membership,
            )
        };
        let mut out = SyncingWriter::new(std::fs::File::create(&tmp)?);
        let mut last: Option<sled::IVec> = None;
        let mut kept_back = Vec::new();
        for item in tree.iter() {
            let (k, v) = item?;
            // What to write for the keys from just after the last one read
            // up to this one, as they stood when the build began: see
            // `pre_images_up_to`.
            let read = self.pre_images_up_to(last.as_deref(), &k, &mut kept_back);
            for (ik, iv) in kept_back.drain(..) {
                put_back(&mut out, ik, iv)?;
            }
            if !read {
                write_frame(&mut out, &(k.to_vec(), v.to_vec()))?;
            }
            last = Some(k);
        }
        let images = {
            let _writer = self.writer();
            self.take_pre_images()
        };
        let kept = images.len();
        drop(keeping);
        for (ik, iv) in images {
            if last.as_deref().is_none_or(|l| ik.as_slice() > l) {
                put_back(&mut out, ik, iv)?;
            }
        }
        out.finish()?;
        // The state is not flushed on a timer: make what this snapshot holds
        // durable in the state too, so that a restart never finds its own
        // state behind the snapshot on disk.
        state.db().flush()?;
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
        let data_path = self.keep_snapshot(&tmp, &meta)?;
        self.cover.set(meta.last_log_id);
        let data = std::fs::File::open(&data_path)?;
        tracing::info!(
            index = ?meta.last_log_id.map(|l| l.index),
            bytes = data.metadata().map(|m| m.len()).unwrap_or(0),
            written_meanwhile = kept,
            ms = began.elapsed().as_millis() as u64,
            "built a snapshot"
        );
        Ok((meta, data))
    }

    /// While a build reads the tree: whether the key `key` just read is
    /// to be written from its pre-image rather than as read, and in `out`,
    /// in key order, the records to write before it: the keys after
    /// `after` and before `key` that held a value when the build began
    /// but that the read did not meet (deleted before it got there), and
    /// `key`'s pre-image if it had a value. A key whose first write since
    /// the build began came before the read holds its pre-image in the
    /// map by then; one written after the read has the value read as its
    /// pre-image; either way the pre-image is the value to write.
    fn pre_images_up_to(
        &self,
        after: Option<&[u8]>,
        key: &[u8],
        out: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> bool {
        use std::ops::Bound;
        let guard = self.pre_images();
        let Some(images) = guard.as_ref() else {
            return false;
        };
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        out.extend(
            images
                .range::<[u8], _>((from, Bound::Excluded(key)))
                .filter(|(_, v)| v.is_some())
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        match images.get(key) {
            Some(pre) => {
                out.push((key.to_vec(), pre.clone()));
                true
            }
            None => false,
        }
    }

    /// Builds a snapshot of the state when the last snapshot installed is
    /// ahead of the snapshot on disk. A crash between switching the state
    /// to an installed snapshot and keeping that snapshot's files leaves the
    /// state past the end of the log with an older snapshot on disk: openraft
    /// then purges its log up to the applied entry and refuses to start with
    /// a snapshot behind its purged log. Run at open, before Raft starts
    /// (found by the fault schedules: a follower killed right after a
    /// snapshot install could not start again).
    pub(super) fn cover_applied_state(&self) -> anyhow::Result<()> {
        let installed: Option<LogId> = {
            let live = self.live();
            live.root
                .get(ROOT_INSTALLED)?
                .map(|v| codec::decode_record::<Option<LogId>>(&v))
                .transpose()?
                .flatten()
        };
        let covered = self.cover.get();
        if installed > covered {
            tracing::info!(
                installed = ?installed.map(|l| l.index),
                covered = ?covered.map(|l| l.index),
                "the snapshot installed last was not kept: building one of the state"
            );
            self.dump_snapshot()?;
        }
        Ok(())
    }

    fn lock_snapshot_files(&self) -> std::sync::MutexGuard<'_, ()> {
        // A poisoned lock guards no data of its own; the files are intact.
        self.snapshot_files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The current snapshot's meta and its data file, read as one pair.
    fn current_snapshot(&self) -> anyhow::Result<Option<(SnapshotMeta, std::fs::File)>> {
        let _files = self.lock_snapshot_files();
        let Some(meta) = read_meta(&self.snapshot_dir.join(META_FILE))? else {
            return Ok(None);
        };
        let name = data_file_name(&meta);
        let data = std::fs::File::open(self.snapshot_dir.join(&name))
            .with_context(|| format!("the current snapshot's data file {name}"))?;
        Ok(Some((meta, data)))
    }

    /// Replaces the state with the snapshot in `file`, streamed into a fresh tree.
    pub(super) fn install_from(
        &self,
        meta: &SnapshotMeta,
        file: std::fs::File,
    ) -> anyhow::Result<()> {
        let _building = self.building();
        let _writer = self.writer();
        let (state, root) = {
            let live = self.live();
            (live.state.clone(), live.root.clone())
        };
        let db = state.db();
        let seq: u64 = root
            .get(ROOT_SEQ)?
            .map(|v| codec::decode_record(&v))
            .transpose()?
            .unwrap_or(0)
            + 1;
        root.insert(ROOT_SEQ, codec::encode_record(&seq)?)?;
        let name = format!("sm.{seq}");
        let fresh = db.open_tree(&name)?;
        fresh.clear()?;
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let mut reader = BufReader::new(file);
        let mut progress = Progress::new(meta, total);
        database::load(
            &fresh,
            std::iter::from_fn(|| {
                let frame = read_frame::<(Vec<u8>, Vec<u8>)>(&mut reader).transpose();
                if let Some(Ok((k, v))) = &frame {
                    progress.record(k.len() + v.len() + 4);
                }
                frame
            }),
        )?;
        progress.done();
        // The dump was taken under the same lock as its meta, so the applied id
        // and membership records in it already agree with `meta`.
        let applied: Option<LogId> = read_tree::<Option<LogId>>(&fresh, KEY_APPLIED)?.flatten();
        anyhow::ensure!(
            applied == meta.last_log_id,
            "snapshot data does not match its meta"
        );
        db.flush()?;
        let mut live = self.live_mut();
        let old = live.tree.name();
        root.insert(ROOT_INSTALLED, codec::encode_record(&meta.last_log_id)?)?;
        root.insert(ROOT_ACTIVE, name.as_bytes())?;
        db.flush()?;
        live.tree = fresh;
        drop(live);
        db.drop_tree(old)?;
        Ok(())
    }
}

impl SmShared {
    /// The current snapshot's meta and its data file, read as one pair (a
    /// backup's source).
    pub(super) fn open_current_snapshot(
        &self,
    ) -> anyhow::Result<Option<(SnapshotMeta, std::fs::File)>> {
        self.current_snapshot()
    }
}

impl super::StateMachineStore {
    /// Seeds the empty state of a new node from a backup's `records`, held
    /// at `meta`'s last log id, with the membership record replaced by
    /// `meta`'s (the new cluster's): writes them as this node's current
    /// snapshot, then installs that as an install from a leader would.
    /// `progress` is told how many records are written so far.
    pub fn seed(
        &self,
        meta: &SnapshotMeta,
        records: impl Iterator<Item = anyhow::Result<(Vec<u8>, Vec<u8>)>>,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<()> {
        let shared = &self.shared;
        anyhow::ensure!(
            shared.tree().iter().next().is_none(),
            "the state to seed is not empty"
        );
        let tmp = shared.snapshot_dir.join("seed.data.tmp");
        let membership = codec::encode_record(&meta.last_membership)?;
        let (mut count, mut saw_membership, mut saw_applied) = (0u64, false, false);
        {
            let mut out = SyncingWriter::new(std::fs::File::create(&tmp)?);
            for record in records {
                let (k, v) = record?;
                if k.as_slice() == KEY_MEMBERSHIP {
                    saw_membership = true;
                    write_frame(&mut out, &(k, membership.clone()))?;
                } else {
                    if k.as_slice() == KEY_APPLIED {
                        let applied: Option<LogId> = codec::decode_record(&v)?;
                        anyhow::ensure!(
                            applied == meta.last_log_id,
                            "the records are applied up to {applied:?}, not {:?}",
                            meta.last_log_id
                        );
                        saw_applied = true;
                    }
                    write_frame(&mut out, &(k, v))?;
                }
                count += 1;
                if count.is_multiple_of(4096) {
                    progress(count);
                }
            }
            out.finish()?;
        }
        anyhow::ensure!(
            saw_membership && saw_applied,
            "the records hold no membership or no applied log id"
        );
        progress(count);
        let data_path = shared.keep_snapshot(&tmp, meta)?;
        shared.install_from(meta, std::fs::File::open(&data_path)?)?;
        shared.cover.set(meta.last_log_id);
        Ok(())
    }
}

/// The next `(key, value)` record of a snapshot's data (a backup's data
/// too), or `None` at its end; decoded under the record size limit.
pub fn read_record(input: &mut impl Read) -> anyhow::Result<Option<(Vec<u8>, Vec<u8>)>> {
    read_frame(input)
}

/// How much a snapshot's data file is written between two pushes of it
/// to the disk.
const SYNC_EVERY: u64 = 1 << 20;

/// A snapshot data file written in steps the disk takes one at a time:
/// every [`SYNC_EVERY`] bytes its writeback is started, and the step
/// before it waited for, as RocksDB's `bytes_per_sync` does. A single
/// sync of the whole file at its end would hand the disk megabytes at
/// once, and the log's own syncs, one per write, would queue behind them.
struct SyncingWriter {
    out: BufWriter<std::fs::File>,
    /// Bytes written, handed to the disk, and known to be on it (bar the
    /// file's metadata, which `finish` syncs).
    written: u64,
    pushed: u64,
    waited: u64,
}

impl SyncingWriter {
    fn new(file: std::fs::File) -> Self {
        Self {
            out: BufWriter::with_capacity(64 << 10, file),
            written: 0,
            pushed: 0,
            waited: 0,
        }
    }

    /// Writes what is buffered and syncs the file.
    fn finish(self) -> anyhow::Result<std::fs::File> {
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(file)
    }

    /// Waits for the step handed to the disk last, then hands it the
    /// bytes written since.
    fn push(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        if self.pushed > self.waited {
            self.sync_range(
                self.waited,
                self.pushed - self.waited,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )?;
            self.waited = self.pushed;
        }
        self.sync_range(
            self.pushed,
            self.written - self.pushed,
            libc::SYNC_FILE_RANGE_WRITE,
        )?;
        self.pushed = self.written;
        Ok(())
    }

    fn sync_range(&self, from: u64, len: u64, flags: libc::c_uint) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain system call on a descriptor this writer owns for
        // its whole life; it reads no memory of ours.
        let rc = unsafe {
            libc::sync_file_range(
                self.out.get_ref().as_raw_fd(),
                from as libc::off64_t,
                len as libc::off64_t,
                flags,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

impl Write for SyncingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        self.written += n as u64;
        if self.written - self.pushed >= SYNC_EVERY {
            self.push()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Writes a key's pre-image, if it had a value.
fn put_back(out: &mut impl Write, key: Vec<u8>, value: Option<Vec<u8>>) -> anyhow::Result<()> {
    match value {
        Some(v) => write_frame(out, &(key, v)),
        None => Ok(()),
    }
}

fn write_frame<T: Serialize>(out: &mut impl Write, value: &T) -> anyhow::Result<()> {
    let bytes = codec::encode_record(value)?;
    out.write_all(&(bytes.len() as u32).to_le_bytes())?;
    out.write_all(&bytes)?;
    Ok(())
}

/// The next record of a snapshot's data, or `None` at its end.
pub(super) fn read_frame<T: DeserializeOwned>(input: &mut impl Read) -> anyhow::Result<Option<T>> {
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

/// How often a long install says how far it got.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Logs how far the install of a snapshot got, now and then and at its end.
struct Progress {
    index: Option<u64>,
    total: u64,
    records: u64,
    bytes: u64,
    began: std::time::Instant,
    last: std::time::Instant,
}

impl Progress {
    fn new(meta: &SnapshotMeta, total: u64) -> Self {
        let now = std::time::Instant::now();
        tracing::info!(
            index = ?meta.last_log_id.map(|l| l.index),
            bytes = total,
            "installing a snapshot"
        );
        Self {
            index: meta.last_log_id.map(|l| l.index),
            total,
            records: 0,
            bytes: 0,
            began: now,
            last: now,
        }
    }

    fn record(&mut self, bytes: usize) {
        self.records += 1;
        self.bytes += bytes as u64;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = std::time::Instant::now();
            tracing::info!(
                index = ?self.index,
                records = self.records,
                percent = self.bytes * 100 / self.total.max(1),
                "installing a snapshot"
            );
        }
    }

    fn done(&self) {
        tracing::info!(
            index = ?self.index,
            records = self.records,
            bytes = self.bytes,
            ms = self.began.elapsed().as_millis() as u64,
            "snapshot records loaded"
        );
    }
}
