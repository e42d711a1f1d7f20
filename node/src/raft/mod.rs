//! Raft wiring: the openraft type configuration, the log store (segment
//! files) and the state machine (sled), the mTLS network client, read indexes and proposals (the
//! cluster port's handlers are in `http::cluster_port`).

pub mod background;
pub mod compaction;
pub mod gauges;
pub mod log_store;
pub mod network;
pub mod proposer;
pub mod read_index;
pub mod state_machine;
pub mod wal;

#[cfg(test)]
mod compat_tests;

use baa_proto::command::{CommandResult, Proposal};
use baa_proto::model::{BaaNode, NodeId};

openraft::declare_raft_types!(
    /// The type configuration of baa's Raft group.
    pub TypeConfig:
        D = Proposal,
        R = Vec<CommandResult>,
        NodeId = NodeId,
        Node = BaaNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The Raft handle used everywhere in the node.
pub type Raft = openraft::Raft<TypeConfig>;
/// A log id of this configuration.
pub type LogId = openraft::LogId<NodeId>;
/// A log entry of this configuration.
pub type Entry = openraft::Entry<TypeConfig>;
/// Storage error of this configuration.
pub type StorageError = openraft::StorageError<NodeId>;
/// Stored membership of this configuration.
pub type StoredMembership = openraft::StoredMembership<NodeId, BaaNode>;
/// Snapshot metadata of this configuration.
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, BaaNode>;
/// Vote of this configuration.
pub type Vote = openraft::Vote<NodeId>;

/// The last log id the snapshot on disk covers, shared by the state machine
/// (which moves it when a snapshot's files are in place) and the log store
/// (which purges no further). openraft may ask to purge the log up to a
/// snapshot being installed before that install is durable; purging then
/// would leave a node that crashes in between with a purged log and an older
/// snapshot, which it cannot start from. Entries kept a little longer are
/// purged at the next purge.
#[derive(Clone, Default)]
pub struct SnapshotCover(std::sync::Arc<std::sync::RwLock<Option<LogId>>>);

impl SnapshotCover {
    /// The covered log id, if any snapshot is on disk.
    pub fn get(&self) -> Option<LogId> {
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that the snapshot on disk now covers `upto`.
    pub fn set(&self, upto: Option<LogId>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = upto;
    }
}

/// Wraps any displayable failure as a storage error for openraft.
pub(crate) fn sm_read_err(e: impl std::fmt::Display) -> StorageError {
    openraft::StorageIOError::read_state_machine(openraft::AnyError::error(e.to_string())).into()
}

/// Wraps any displayable failure as a state-machine write error for openraft.
pub(crate) fn sm_write_err(e: impl std::fmt::Display) -> StorageError {
    openraft::StorageIOError::write_state_machine(openraft::AnyError::error(e.to_string())).into()
}

/// The current leader and its address, as this node knows them.
pub fn known_leader(raft: &Raft) -> Option<(NodeId, Option<BaaNode>)> {
    let m = raft.metrics();
    let m = m.borrow();
    let leader = m.current_leader?;
    let node = m.membership_config.membership().get_node(&leader).cloned();
    Some((leader, node))
}
