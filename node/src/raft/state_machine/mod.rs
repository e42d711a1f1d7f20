//! The replicated state machine on sled. Applying a batch of entries is one
//! atomic sled batch (records, remembered request results and the applied log
//! id together), so a crash never leaves a half-applied entry that would be
//! applied a second time. Apply is deterministic: it reads no clock and no
//! network; times come from the command.
//!
//! This file holds the apply loop and the deduplication of commands by
//! request id; `apply` applies one command, through the `staged` batch, to
//! the records laid out in `keyspace`; `snapshot` builds and installs
//! snapshots; `reader` serves request handlers.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

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
mod keyspace;
mod reader;
mod snapshot;
mod staged;

pub use apply::MAX_DEVICE_GRANTS;
pub use reader::StateReader;
pub use snapshot::SnapshotBuilder;

use keyspace::{request_key, RequestRecord, KEY_APPLIED, KEY_MEMBERSHIP, ROOT_ACTIVE};
use staged::Staged;

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
        snapshot::remove_leftovers(db, &name, snapshot_dir)?;
        let cover = SnapshotCover::default();
        cover.set(snapshot::covered(snapshot_dir)?);
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
        StateReader::new(self.shared.clone())
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

impl SmShared {
    fn tree(&self) -> std::sync::RwLockReadGuard<'_, sled::Tree> {
        // A poisoned lock only means a panic elsewhere; the tree itself is intact.
        self.active.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tree_mut(&self) -> std::sync::RwLockWriteGuard<'_, sled::Tree> {
        self.active.write().unwrap_or_else(|p| p.into_inner())
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
        let mut staged = Staged::new(&tree);
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
    let db = sled::Config::new().path(dir.join("db")).open().unwrap();
    let mut sm =
        StateMachineStore::open(&db, &dir.join("snap"), crate::metrics::Metrics::new()).unwrap();
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
