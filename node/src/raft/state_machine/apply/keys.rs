//! The cluster's secrets: signing keys (with the rotation that retires the
//! current one) and the salt of pairwise identifiers.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::sso::{PairwiseSalt, SigningKey};

use super::super::keyspace::{key, KEY_CURRENT_KID, KEY_PAIRWISE_SALT, PREFIX_KEY};
use super::super::staged::{invalid, Staged};
use crate::raft::StorageError;

/// Adds a signing key and makes it current; the key it replaces stays
/// published for `publish_old_for_ms`, so what it signed still verifies.
pub(super) fn add(
    st: &mut Staged<'_>,
    now: u64,
    new: &SigningKey,
    publish_old_for_ms: u64,
) -> Result<CommandResult, StorageError> {
    let k = key(PREFIX_KEY, new.kid.as_bytes());
    if st.get::<SigningKey>(&k)?.is_some() {
        return Ok(Err(invalid(format!("key {} exists", new.kid))));
    }
    if let Some(old_kid) = st.get::<String>(KEY_CURRENT_KID)? {
        let ok = key(PREFIX_KEY, old_kid.as_bytes());
        if let Some(mut old) = st.get::<SigningKey>(&ok)? {
            old.retired_ms = Some(now);
            old.publish_until_ms = Some(now.saturating_add(publish_old_for_ms));
            st.put(&ok, &old)?;
        }
    }
    let mut new = new.clone();
    new.created_ms = now;
    new.retired_ms = None;
    new.publish_until_ms = None;
    st.put(&k, &new)?;
    st.put(KEY_CURRENT_KID, &new.kid)?;
    Ok(Ok(Outcome::Done))
}

/// Sets the salt of pairwise identifiers unless one is set: the first wins,
/// as a changed salt would change every pseudonym.
pub(super) fn set_pairwise_salt(
    st: &mut Staged<'_>,
    salt: &PairwiseSalt,
) -> Result<CommandResult, StorageError> {
    if st.get::<PairwiseSalt>(KEY_PAIRWISE_SALT)?.is_none() {
        st.put(KEY_PAIRWISE_SALT, salt)?;
    }
    Ok(Ok(Outcome::Done))
}
