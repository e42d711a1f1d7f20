//! The staged writes of one apply batch, through which every command reads
//! and writes the state, and the two shapes of a command's refusal.
//!
//! A crash must never leave half a batch applied, to be applied a second
//! time on restart. sled's own atomic batch would do it, but it writes out
//! and range-syncs its log buffer twice per batch (before and after
//! pinning the log), two disk writes per applied entry beside the Raft
//! log's fsync, which cost a login 12-26 % of its throughput. So a batch is
//! written as one record of its own first (the redo record: every write,
//! in one value, atomic as any single sled write), then key by key with
//! the applied log id last. sled recovers a prefix of its log after a
//! crash: if any key of a batch is there, its redo record is too, and
//! [`recover`] replays a batch whose applied id did not make it.

use std::collections::{BTreeMap, BTreeSet};

use baa_proto::codec;
use baa_proto::command::{ApplyError, CommandResult};
use baa_proto::ErrorCode;
use serde::{de::DeserializeOwned, Serialize};

use super::keyspace::KEY_APPLIED;
use super::read_tree;
use crate::raft::{sm_read_err, sm_write_err, LogId, StorageError};

/// The tree holding the redo record, beside the state's tree.
pub(super) const REDO_TREE: &[u8] = b"sm_redo";
/// The redo record's key: the writes of the last batch applied.
pub(super) const REDO_KEY: &[u8] = b"last_batch";

/// The writes of one batch, in key order; `None` removes the key.
type Writes = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// Writes of one apply batch, visible to later entries of the same batch and
/// committed as the module says.
pub(super) struct Staged<'a> {
    tree: &'a sled::Tree,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Staged<'a> {
    /// An empty batch over `tree`.
    pub(super) fn new(tree: &'a sled::Tree) -> Self {
        Self {
            tree,
            pending: BTreeMap::new(),
        }
    }

    /// The record under `key` as staged: this batch's write if it made one.
    pub(super) fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.pending.get(key) {
            Some(Some(v)) => codec::decode_record(v).map(Some).map_err(sm_read_err),
            Some(None) => Ok(None),
            None => read_tree(self.tree, key),
        }
    }

    /// Stages `value` under `key`.
    pub(super) fn put<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = codec::encode_record(value).map_err(sm_write_err)?;
        self.pending.insert(key.to_vec(), Some(bytes));
        Ok(())
    }

    /// Stages the removal of `key`.
    pub(super) fn remove(&mut self, key: &[u8]) {
        self.pending.insert(key.to_vec(), None);
    }

    /// Up to `limit` keys from `start` on (inclusive), in order, as staged:
    /// the tree's keys not removed in this batch, plus pending inserts.
    pub(super) fn keys_from(
        &self,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut keys = BTreeSet::new();
        for item in self.tree.range(start.to_vec()..) {
            if keys.len() >= limit {
                break;
            }
            let (k, _) = item.map_err(sm_read_err)?;
            if !matches!(self.pending.get(k.as_ref()), Some(None)) {
                keys.insert(k.to_vec());
            }
        }
        for (k, v) in self.pending.range(start.to_vec()..) {
            if v.is_some() {
                keys.insert(k.clone());
            }
        }
        Ok(keys.into_iter().take(limit).collect())
    }

    /// Keys under `prefix`, as staged (tree keys not removed, plus pending inserts).
    pub(super) fn keys_with_prefix(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut keys = BTreeSet::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, _) = item.map_err(sm_read_err)?;
            if !matches!(self.pending.get(k.as_ref()), Some(None)) {
                keys.insert(k.to_vec());
            }
        }
        for (k, v) in self.pending.range(prefix.to_vec()..) {
            if !k.starts_with(prefix) {
                break;
            }
            if v.is_some() {
                keys.insert(k.clone());
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// Keys under `prefix` whose record, as committed before this batch,
    /// `pick` chooses; keys this batch has written or removed are left out.
    pub(super) fn committed_keys_where<T: DeserializeOwned>(
        &self,
        prefix: &[u8],
        pick: impl Fn(&T) -> bool,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let mut keys = Vec::new();
        for item in self.tree.scan_prefix(prefix) {
            let (k, v) = item.map_err(sm_read_err)?;
            if self.pending.contains_key(k.as_ref()) {
                continue;
            }
            if pick(&codec::decode_record(&v).map_err(sm_read_err)?) {
                keys.push(k.to_vec());
            }
        }
        Ok(keys)
    }

    /// The keys this batch writes or removes.
    pub(super) fn written_keys(&self) -> impl Iterator<Item = &Vec<u8>> {
        self.pending.keys()
    }

    /// Writes the batch to the tree: its redo record in `redo` first, then
    /// key by key, the applied log id last. A batch too large for one
    /// record goes as one sled batch instead.
    pub(super) fn commit(self, redo: &sled::Tree) -> Result<(), StorageError> {
        let writes: Writes = self.pending.into_iter().collect();
        match codec::encode_record(&writes) {
            Ok(record) => {
                redo.insert(REDO_KEY, record).map_err(sm_write_err)?;
                write_keys(self.tree, writes).map_err(sm_write_err)
            }
            Err(_) => {
                let mut batch = sled::Batch::default();
                for (k, v) in writes {
                    match v {
                        Some(v) => batch.insert(k, v),
                        None => batch.remove(k),
                    }
                }
                self.tree.apply_batch(batch).map_err(sm_write_err)
            }
        }
    }
}

/// Writes `writes` to `tree` one key at a time, the applied log id last.
fn write_keys(tree: &sled::Tree, writes: Writes) -> sled::Result<()> {
    let mut applied = None;
    for (k, v) in writes {
        if k == KEY_APPLIED {
            applied = Some(v);
            continue;
        }
        match v {
            Some(v) => tree.insert(k, v)?,
            None => tree.remove(k)?,
        };
    }
    if let Some(Some(v)) = applied {
        tree.insert(KEY_APPLIED, v)?;
    }
    Ok(())
}

/// Replays the redo record onto `tree` if its batch is ahead of the applied
/// log id there (a crash cut it short); a record behind it (a snapshot was
/// installed since) is left alone. Returns whether it replayed.
pub(super) fn recover(tree: &sled::Tree, redo: &sled::Tree) -> anyhow::Result<bool> {
    let Some(record) = redo.get(REDO_KEY)? else {
        return Ok(false);
    };
    let writes: Writes = codec::decode_record(&record)?;
    let Some(Some(batch_applied)) = writes
        .iter()
        .find(|(k, _)| k == KEY_APPLIED)
        .map(|(_, v)| v.as_deref())
    else {
        return Ok(false);
    };
    let batch_applied: Option<LogId> = codec::decode_record(batch_applied)?;
    let applied: Option<LogId> = match tree.get(KEY_APPLIED)? {
        Some(v) => codec::decode_record(&v)?,
        None => None,
    };
    if batch_applied.map(|l| l.index) <= applied.map(|l| l.index) {
        return Ok(false);
    }
    write_keys(tree, writes)?;
    Ok(true)
}

/// A refusal of a command that is not valid as sent.
pub(super) fn invalid(e: impl std::fmt::Display) -> ApplyError {
    ApplyError::new(ErrorCode::InvalidRequest, e.to_string())
}

/// A command's refusal with `code`: the same on every node, so it is a
/// result, not a storage failure.
pub(super) fn refuse(
    code: ErrorCode,
    message: impl Into<String>,
) -> Result<CommandResult, StorageError> {
    Ok(Err(ApplyError::new(code, message)))
}
