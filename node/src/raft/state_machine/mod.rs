//! The replicated state machine on sled. A batch of entries is applied
//! whole or not at all across a crash (records, remembered request results
//! and the applied log id together; see `staged`), so no entry is ever
//! applied a second time over half of itself. Apply is deterministic: it
//! reads no clock and no network; times come from the command.
//!
//! This file holds the apply loop and the deduplication of commands by
//! request id; `apply` applies one command, through the `staged` batch
//! (which also says how a batch survives a crash whole), to
//! the records laid out in `keyspace`; `snapshot` builds and installs
//! snapshots; `reader` serves request handlers; `database` says where the
//! sled database is and rebuilds it into a fresh one.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use baa_proto::codec;
use baa_proto::command::{Command, CommandResult};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::EntryPayload;
use serde::de::DeserializeOwned;

use super::{
    sm_read_err, Entry, LogId, SnapshotCover, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use crate::metrics::Metrics;

mod apply;
mod database;
mod keyspace;
mod reader;
mod snapshot;
mod staged;

pub use apply::MAX_DEVICE_GRANTS;
pub use database::StateDb;
pub use reader::{KeyPage, Named, StateDigest, StateReader};
pub use snapshot::{read_record, SnapshotBuilder};

use keyspace::{request_key, RequestRecord, KEY_APPLIED, KEY_MEMBERSHIP, ROOT_ACTIVE};
use staged::Staged;

/// State shared by the Raft-owned state machine, its snapshot builders and
/// the node's readers.
pub struct SmShared {
    /// The database and its trees. Apply and snapshot install take the
    /// write lock; reads take the read lock; a rebuild replaces it all
    /// under the write lock. What reads the whole tree (a digest, a
    /// snapshot build, the copy of a rebuild) clones the tree's handle and
    /// lets the lock go, so that it never holds apply up.
    live: RwLock<Live>,
    /// Held by whatever writes the state (apply, snapshot install, the
    /// switch of a rebuild), and for the short turns in which a build or a
    /// rebuild starts and stops keeping pre-images.
    writer: Mutex<()>,
    /// Held for a whole snapshot build, and taken by a snapshot install and
    /// a rebuild before the writer's turn: those replace the tree a build
    /// reads while apply goes on.
    building: Mutex<()>,
    /// While a snapshot build reads the tree: what every key written since
    /// it began held then (see `snapshot`).
    pre_images: Mutex<Option<snapshot::PreImages>>,
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

/// The state's database and its two trees.
struct Live {
    /// Shared with flushes in flight, which a rebuild waits for before it
    /// removes the database it replaced.
    state: Arc<StateDb>,
    /// Names the active tree and counts installs.
    root: sled::Tree,
    /// The live state.
    tree: sled::Tree,
    /// The last batch's writes (see `staged`).
    redo: sled::Tree,
}

impl Live {
    fn open(state: StateDb) -> anyhow::Result<Self> {
        let root = state.db().open_tree("sm_root")?;
        let name = match root.get(ROOT_ACTIVE)? {
            Some(n) => n.to_vec(),
            None => {
                let n = b"sm.0".to_vec();
                root.insert(ROOT_ACTIVE, n.clone())?;
                n
            }
        };
        let tree = state.db().open_tree(&name)?;
        let redo = state.db().open_tree(staged::REDO_TREE)?;
        if staged::recover(&tree, &redo)? {
            tracing::info!("replayed the last applied batch, which a crash had cut short");
        }
        Ok(Self {
            state: Arc::new(state),
            root,
            tree,
            redo,
        })
    }
}

/// The state machine handed to openraft.
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SmShared>,
}

impl StateMachineStore {
    /// Opens the state machine in `state`, with snapshot files under `snapshot_dir`.
    pub fn open(
        state: StateDb,
        snapshot_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(snapshot_dir)?;
        let live = Live::open(state)?;
        snapshot::remove_leftovers(live.state.db(), &live.tree.name(), snapshot_dir)?;
        let cover = SnapshotCover::default();
        cover.set(snapshot::covered(snapshot_dir)?);
        let shared = SmShared {
            live: RwLock::new(live),
            writer: Mutex::new(()),
            building: Mutex::new(()),
            pre_images: Mutex::new(None),
            snapshot_dir: snapshot_dir.to_path_buf(),
            snapshot_files: std::sync::Mutex::new(()),
            cover,
            metrics,
            snapshot_seq: AtomicU64::new(0),
        };
        shared.cover_applied_state()?;
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
        StateReader::new(self.shared.clone())
    }

    /// The flush and the rebuild of the state's database, for shutdown and
    /// the compaction task.
    pub fn storage(&self) -> StateStorage {
        StateStorage(self.shared.clone())
    }
}

/// The state's database as the log store and the compaction task see it.
#[derive(Clone)]
pub struct StateStorage(Arc<SmShared>);

impl StateStorage {
    /// Makes the applied state durable, whichever database holds it now.
    pub async fn flush(&self) -> sled::Result<()> {
        let state = self.0.live().state.clone();
        state.db().flush_async().await.map(drop)
    }

    /// Rebuilds the state into a fresh database if the current one takes
    /// more than `min_waste` bytes beyond twice the live records (the
    /// size of the snapshot on disk), and returns the sizes on disk before
    /// and after. Writes go on during the copy and wait only for the keys
    /// they wrote meanwhile to be brought over.
    pub fn rebuild_if_wasteful(&self, min_waste: u64) -> anyhow::Result<Option<(u64, u64)>> {
        self.0.rebuild_if_wasteful(min_waste)
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

/// The live state's tree under the read lock.
struct TreeRead<'a>(RwLockReadGuard<'a, Live>);

impl Deref for TreeRead<'_> {
    type Target = sled::Tree;
    fn deref(&self) -> &sled::Tree {
        &self.0.tree
    }
}

/// How long a rebuild waits for flushes of the database it replaced
/// before leaving its directory to the next start.
const RETIRE_WAIT: Duration = Duration::from_secs(30);

impl SmShared {
    // A poisoned lock only means a panic elsewhere; every change under it
    // is one sled batch or one handle swap, whole or not done.
    fn live(&self) -> RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner())
    }

    fn live_mut(&self) -> RwLockWriteGuard<'_, Live> {
        self.live.write().unwrap_or_else(|p| p.into_inner())
    }

    fn tree(&self) -> TreeRead<'_> {
        TreeRead(self.live())
    }

    /// The one writer's turn: see `writer`.
    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one snapshot build's turn: see `building`.
    fn building(&self) -> MutexGuard<'_, ()> {
        self.building.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn rebuild_if_wasteful(&self, min_waste: u64) -> anyhow::Result<Option<(u64, u64)>> {
        let live_bytes = match self.current_data_path()?.map(std::fs::metadata) {
            Some(Ok(m)) => m.len(),
            None => 0,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Some(Err(e)) => return Err(e.into()),
        };
        let _building = self.building();
        let (state, name, before) = {
            let live = self.live();
            let before = live.state.db().size_on_disk()?;
            if before <= min_waste.saturating_add(live_bytes.saturating_mul(2)) {
                tracing::debug!(
                    size = before,
                    live_bytes,
                    "the state's database is not worth rebuilding"
                );
                return Ok(None);
            }
            (live.state.clone(), live.tree.name(), before)
        };
        // The copy is made while writes go on, as a snapshot build reads
        // the tree; the keys written meanwhile are brought over in one
        // short turn of the writer, which then switches to the copy.
        let keeping = {
            let _writer = self.writer();
            self.start_keeping_pre_images()
        };
        let fresh = state.copy_to_next()?;
        let writer = self.writer();
        let written = self.take_pre_images();
        drop(keeping);
        state.catch_up(&fresh, &name, written.keys())?;
        drop(state);
        let path = fresh.path();
        let after = fresh.db().size_on_disk()?;
        let fresh = Live::open(fresh)?;
        anyhow::ensure!(
            fresh.tree.name() == name,
            "the rebuilt database names another active tree"
        );
        // From the moment `db.current` names the copy, writes must go to it.
        let durable = fresh.state.make_current()?;
        let old = std::mem::replace(&mut *self.live_mut(), fresh);
        drop(writer);
        self.metrics.state_rebuilds.inc();
        let Live {
            mut state,
            root,
            tree,
            redo,
        } = old;
        drop((root, tree, redo));
        let deadline = Instant::now() + RETIRE_WAIT;
        loop {
            match Arc::try_unwrap(state) {
                Ok(old) if durable => {
                    let old_path = old.path();
                    if let Err(e) = old.remove() {
                        tracing::warn!(path = %old_path.display(), error = %e, "the replaced state database stays until the next start");
                    }
                    break;
                }
                Ok(_) => break,
                Err(shared) if Instant::now() < deadline => {
                    state = shared;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(_) => {
                    tracing::warn!("a flush still holds the replaced state database; it goes at the next start");
                    break;
                }
            }
        }
        tracing::info!(path = %path.display(), before, after, "rebuilt the state into a fresh database");
        Ok(Some((before, after)))
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
        let _writer = self.shared.writer();
        let live = self.shared.live_mut();
        let mut staged = Staged::new(&live.tree);
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
        self.shared
            .keep_pre_images(&live.tree, staged.written_keys())?;
        staged.commit(&live.redo)?;
        drop(live);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder::new(self.shared.clone())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        snapshot::begin_receiving(&self.shared).await
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        snapshot::install(&self.shared, meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        snapshot::current(&self.shared).await
    }
}

/// Applies `cmd` unless its request id was seen before, in which case the
/// first result is returned and nothing changes. A command that answers its
/// own retries gets its request id instead of a remembered result.
fn apply_with_dedup(staged: &mut Staged<'_>, cmd: &Command) -> Result<CommandResult, StorageError> {
    if cmd.op.answers_its_own_retries() {
        return apply::apply_op(staged, cmd.time_ms, &cmd.op, cmd.request_id.as_deref());
    }
    if let Some(id) = &cmd.request_id {
        if let Some(rec) = staged.get::<RequestRecord>(&request_key(id))? {
            return Ok(rec.result);
        }
    }
    let result = apply::apply_op(staged, cmd.time_ms, &cmd.op, None)?;
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
mod reader_tests;
#[cfg(test)]
mod tests;

/// A state machine over a fresh sled database in `dir` to which `ops` were
/// applied, one entry each, at their times: what the tests of the layers
/// above (keys, sealing) read from.
#[cfg(test)]
pub(crate) async fn applied(
    dir: &std::path::Path,
    ops: Vec<(u64, baa_proto::command::Op)>,
) -> StateMachineStore {
    use baa_proto::command::{Command, Proposal};
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, EntryPayload, LogId};
    let state = StateDb::open(dir, 16 << 20).unwrap();
    let mut sm =
        StateMachineStore::open(state, &dir.join("snap"), crate::metrics::Metrics::new()).unwrap();
    for (i, (time_ms, op)) in ops.into_iter().enumerate() {
        let entry = crate::raft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![Command {
                    request_id: None,
                    time_ms,
                    op,
                }],
            }),
        };
        sm.apply(vec![entry]).await.unwrap();
    }
    sm
}
