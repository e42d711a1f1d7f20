//! Trust relationships: a user's consent to a site, with the login
//! parameters chosen for it. Ending one takes the site's tokens of that
//! user with it.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::sso::{Site, Trust};
use baa_proto::ErrorCode;

use super::super::keyspace::{key, trust_key, user_by_id_key, PREFIX_SITE, PREFIX_TRUST};
use super::super::staged::{refuse, Staged};
use super::tokens;
use crate::raft::StorageError;

/// Records (or replaces) a user's trust in a site; its creation time stays
/// that of the first.
pub(super) fn set(
    st: &mut Staged<'_>,
    now: u64,
    trust: &Trust,
) -> Result<CommandResult, StorageError> {
    if st
        .get::<Site>(&key(PREFIX_SITE, trust.client_id.as_bytes()))?
        .is_none()
    {
        return refuse(
            ErrorCode::SiteNotFound,
            format!("no site {}", trust.client_id),
        );
    }
    if st.get::<String>(&user_by_id_key(trust.user_id))?.is_none() {
        return refuse(ErrorCode::UserNotFound, "no such user");
    }
    let k = trust_key(trust.user_id, &trust.client_id);
    let created_ms = st.get::<Trust>(&k)?.map_or(now, |t| t.created_ms);
    let mut t = trust.clone();
    t.created_ms = created_ms;
    t.updated_ms = now;
    st.put(&k, &t)?;
    Ok(Ok(Outcome::Trust(Box::new(t))))
}

/// Removes a user's trust in a site, and the site's tokens of that user.
pub(super) fn revoke(
    st: &mut Staged<'_>,
    user_id: u64,
    client_id: &str,
) -> Result<CommandResult, StorageError> {
    let k = trust_key(user_id, client_id);
    let existed = st.get::<Trust>(&k)?.is_some();
    if !existed {
        return refuse(ErrorCode::TrustNotFound, "no such trust relationship");
    }
    st.remove(&k);
    tokens::revoke_user_client_tokens(st, user_id, client_id)?;
    Ok(Ok(Outcome::Removed(true)))
}

/// Removes every user's trust in site `client_id` (the site is going), and
/// the site's tokens of each of those users.
pub(super) fn end_for_site(st: &mut Staged<'_>, client_id: &str) -> Result<(), StorageError> {
    for tk in st.keys_with_prefix(PREFIX_TRUST)? {
        if tk.len() >= PREFIX_TRUST.len() + 8
            && &tk[PREFIX_TRUST.len() + 8..] == client_id.as_bytes()
        {
            st.remove(&tk);
            let mut id = [0u8; 8];
            id.copy_from_slice(&tk[PREFIX_TRUST.len()..PREFIX_TRUST.len() + 8]);
            tokens::revoke_user_client_tokens(st, u64::from_be_bytes(id), client_id)?;
        }
    }
    Ok(())
}
