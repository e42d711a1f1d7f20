//! The staged writes of one apply batch, through which every command reads
//! and writes the state, and the two shapes of a command's refusal.
//!
//! Staging makes a batch of entries one atomic sled batch: a crash never
//! leaves half an entry applied, to be applied a second time on restart.

use std::collections::{BTreeMap, BTreeSet};

use baa_proto::codec;
use baa_proto::command::{ApplyError, CommandResult};
use baa_proto::ErrorCode;
use serde::{de::DeserializeOwned, Serialize};

use super::read_tree;
use crate::raft::{sm_read_err, sm_write_err, StorageError};

/// Writes of one apply batch, visible to later entries of the same batch and
/// committed to sled as one atomic batch.
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

    /// Writes the batch to the tree, atomically.
    pub(super) fn commit(self) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for (k, v) in self.pending {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree.apply_batch(batch).map_err(sm_write_err)
    }
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
