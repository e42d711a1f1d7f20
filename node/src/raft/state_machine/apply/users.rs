//! Users: their creation and changes. A user change that ends the user's
//! sessions (a new password, a disabled account) gets the ending from the
//! dispatch, so users depend on no other aggregate while sessions and
//! tokens read users.

use baa_proto::command::{ApplyError, CommandResult, NewUser, Outcome, UserPatch};
use baa_proto::model::{self, User};
use baa_proto::sso::RevokedSession;
use baa_proto::ErrorCode;

use super::super::keyspace::{user_by_id_key, user_key, KEY_NEXT_USER_ID};
use super::super::staged::{invalid, Staged};
use crate::raft::StorageError;

/// Ends every session of a user (by id), returning what it ended.
pub(super) type EndSessions =
    fn(&mut Staged<'_>, u64, u64) -> Result<Vec<RevokedSession>, StorageError>;

/// The user with id `id`, through the id index.
pub(super) fn by_id(st: &Staged<'_>, id: u64) -> Result<Option<User>, StorageError> {
    match st.get::<String>(&user_by_id_key(id))? {
        Some(name) => st.get::<User>(&user_key(&name)),
        None => Ok(None),
    }
}

/// The user named `username`.
pub(super) fn by_name(st: &Staged<'_>, username: &str) -> Result<Option<User>, StorageError> {
    st.get::<User>(&user_key(username))
}

/// Changes the fields `patch` names; a new password ends every session
/// opened with the old one.
pub(super) fn update(
    st: &mut Staged<'_>,
    now: u64,
    username: &str,
    patch: &UserPatch,
    end_sessions: EndSessions,
) -> Result<CommandResult, StorageError> {
    let r = update_user(st, now, username, |u| apply_patch(u, patch))?;
    if patch.password_hash.is_some() {
        end_sessions_of(st, now, &r, end_sessions)?;
    }
    Ok(r)
}

/// Disables or re-enables a user; disabling ends the user's sessions.
pub(super) fn set_disabled(
    st: &mut Staged<'_>,
    now: u64,
    username: &str,
    disabled: bool,
    end_sessions: EndSessions,
) -> Result<CommandResult, StorageError> {
    let r = update_user(st, now, username, |u| {
        u.disabled = disabled;
        Ok(())
    })?;
    if disabled {
        end_sessions_of(st, now, &r, end_sessions)?;
    }
    Ok(r)
}

/// Ends the sessions of the user an update just changed (if it succeeded).
fn end_sessions_of(
    st: &mut Staged<'_>,
    now: u64,
    result: &CommandResult,
    end_sessions: EndSessions,
) -> Result<(), StorageError> {
    if let Ok(Outcome::User(u)) = result {
        end_sessions(st, now, u.id)?;
    }
    Ok(())
}

/// Creates a user with the next id, unless the name is taken or a field is
/// not valid.
pub(super) fn create(
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
    st.put(&user_by_id_key(id), &user.username)?;
    st.put(&key, &user)?;
    Ok(Ok(Outcome::User(user)))
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

pub(super) fn update_user(
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
