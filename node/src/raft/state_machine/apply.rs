//! Deterministic application of one command to staged state.

use std::collections::BTreeMap;

use baa_proto::codec;
use baa_proto::command::{ApplyError, CommandResult, NewUser, Op, Outcome, UserPatch};
use baa_proto::model::{self, User};
use baa_proto::ErrorCode;
use serde::{de::DeserializeOwned, Serialize};

use super::keyspace::{KEY_NEXT_USER_ID, PREFIX_REQUEST};
use super::{read_tree, user_key, RequestRecord};
use crate::raft::{sm_read_err, sm_write_err, StorageError};

/// Writes of one apply batch, visible to later entries of the same batch and
/// committed to sled as one atomic batch.
pub(super) struct Staged<'a> {
    tree: &'a sled::Tree,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Staged<'a> {
    pub(super) fn new(tree: &'a sled::Tree) -> Self {
        Self {
            tree,
            pending: BTreeMap::new(),
        }
    }

    pub(super) fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.pending.get(key) {
            Some(Some(v)) => codec::decode_record(v).map(Some).map_err(sm_read_err),
            Some(None) => Ok(None),
            None => read_tree(self.tree, key),
        }
    }

    pub(super) fn put<T: Serialize>(&mut self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let bytes = codec::encode_record(value).map_err(sm_write_err)?;
        self.pending.insert(key.to_vec(), Some(bytes));
        Ok(())
    }

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
        let mut keys = std::collections::BTreeSet::new();
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
        let mut keys = std::collections::BTreeSet::new();
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

pub(super) fn invalid(e: impl std::fmt::Display) -> ApplyError {
    ApplyError::new(ErrorCode::InvalidRequest, e.to_string())
}

/// Applies `op` at time `now_ms`. `Err` is a storage failure; a refusal of the
/// command itself is an `Ok(Err(ApplyError))`, identical on every node.
pub(super) fn apply_op(
    st: &mut Staged<'_>,
    now_ms: u64,
    op: &Op,
) -> Result<CommandResult, StorageError> {
    match op {
        Op::CreateUser(new) => create_user(st, now_ms, new),
        Op::UpdateUser { username, patch } => {
            let r = update_user(st, now_ms, username, |u| apply_patch(u, patch))?;
            // A new password ends every session opened with the old one.
            if patch.password_hash.is_some() {
                end_sessions_of(st, &r)?;
            }
            Ok(r)
        }
        Op::SetUserDisabled { username, disabled } => {
            let r = update_user(st, now_ms, username, |u| {
                u.disabled = *disabled;
                Ok(())
            })?;
            if *disabled {
                end_sessions_of(st, &r)?;
            }
            Ok(r)
        }
        Op::PurgeRequestResults { before_ms } => purge_requests(st, *before_ms),
        _ => super::sso::apply_sso(st, now_ms, op),
    }
}

/// Ends the sessions of the user an update just changed (if it succeeded).
fn end_sessions_of(st: &mut Staged<'_>, result: &CommandResult) -> Result<(), StorageError> {
    if let Ok(Outcome::User(u)) = result {
        super::sso::end_user_sessions(st, u.id)?;
    }
    Ok(())
}

fn validate_new(new: &NewUser) -> Result<(), ApplyError> {
    model::validate_username(&new.username).map_err(invalid)?;
    model::validate_text("display_name", &new.display_name).map_err(invalid)?;
    if let Some(e) = &new.email {
        model::validate_text("email", e).map_err(invalid)?;
    }
    model::validate_groups(&new.groups).map_err(invalid)?;
    if new.attributes.len() > model::MAX_ATTRIBUTES {
        return Err(invalid(format!(
            "at most {} attributes",
            model::MAX_ATTRIBUTES
        )));
    }
    for (k, v) in &new.attributes {
        model::validate_attribute(k, Some(v)).map_err(invalid)?;
    }
    Ok(())
}

fn create_user(
    st: &mut Staged<'_>,
    now_ms: u64,
    new: &NewUser,
) -> Result<CommandResult, StorageError> {
    if let Err(e) = validate_new(new) {
        return Ok(Err(e));
    }
    let key = user_key(&new.username);
    if st.get::<User>(&key)?.is_some() {
        return Ok(Err(ApplyError::new(
            ErrorCode::UserExists,
            format!("user {} already exists", new.username),
        )));
    }
    let id: u64 = st.get(KEY_NEXT_USER_ID)?.unwrap_or(1);
    let user = User {
        id,
        username: new.username.clone(),
        display_name: new.display_name.clone(),
        email: new.email.clone(),
        groups: new.groups.clone(),
        attributes: new.attributes.clone(),
        password_hash: new.password_hash.clone(),
        disabled: false,
        created_ms: now_ms,
        updated_ms: now_ms,
        revision: 1,
    };
    st.put(KEY_NEXT_USER_ID, &(id + 1))?;
    st.put(&super::sso::user_by_id_key(id), &user.username)?;
    st.put(&key, &user)?;
    Ok(Ok(Outcome::User(user)))
}

fn apply_patch(user: &mut User, patch: &UserPatch) -> Result<(), ApplyError> {
    if let Some(d) = &patch.display_name {
        model::validate_text("display_name", d).map_err(invalid)?;
        user.display_name = d.clone();
    }
    if let Some(e) = &patch.email {
        if let Some(e) = e {
            model::validate_text("email", e).map_err(invalid)?;
        }
        user.email = e.clone();
    }
    if let Some(g) = &patch.groups {
        model::validate_groups(g).map_err(invalid)?;
        user.groups = g.clone();
    }
    for (k, v) in &patch.attributes {
        model::validate_attribute(k, v.as_deref()).map_err(invalid)?;
        match v {
            Some(v) => {
                user.attributes.insert(k.clone(), v.clone());
            }
            None => {
                user.attributes.remove(k);
            }
        }
    }
    if user.attributes.len() > model::MAX_ATTRIBUTES {
        return Err(invalid(format!(
            "at most {} attributes",
            model::MAX_ATTRIBUTES
        )));
    }
    if let Some(h) = &patch.password_hash {
        user.password_hash = Some(h.clone());
    }
    Ok(())
}

fn update_user(
    st: &mut Staged<'_>,
    now_ms: u64,
    username: &str,
    change: impl FnOnce(&mut User) -> Result<(), ApplyError>,
) -> Result<CommandResult, StorageError> {
    let key = user_key(username);
    let Some(mut user) = st.get::<User>(&key)? else {
        return Ok(Err(ApplyError::new(
            ErrorCode::UserNotFound,
            format!("no user named {username}"),
        )));
    };
    if let Err(e) = change(&mut user) {
        return Ok(Err(e));
    }
    user.revision += 1;
    user.updated_ms = now_ms.max(user.updated_ms);
    st.put(&key, &user)?;
    Ok(Ok(Outcome::User(user)))
}

fn purge_requests(st: &mut Staged<'_>, before_ms: u64) -> Result<CommandResult, StorageError> {
    let mut doomed = Vec::new();
    for item in st.tree.scan_prefix(PREFIX_REQUEST) {
        let (k, v) = item.map_err(sm_read_err)?;
        if st.pending.contains_key(k.as_ref()) {
            continue;
        }
        let rec: RequestRecord = codec::decode_record(&v).map_err(sm_read_err)?;
        if rec.time_ms < before_ms {
            doomed.push(k.to_vec());
        }
    }
    let n = doomed.len() as u64;
    for k in doomed {
        st.remove(&k);
    }
    Ok(Ok(Outcome::Purged(n)))
}
