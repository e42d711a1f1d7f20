//! The outbox of back-channel logouts: a session's end puts one item per
//! site (or peer agency) that must hear of it, in the same apply, so no
//! node's death can lose a delivery; the leader delivers them and removes
//! them once delivered or given up on.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::sso::{OutboxItem, Site};

use super::super::keyspace::{key, KEY_NEXT_OUTBOX_ID, PREFIX_OUTBOX, PREFIX_SITE};
use super::super::staged::Staged;
use crate::raft::StorageError;

/// Puts a delivery for each of `sites` that takes back-channel logouts.
pub(super) fn enqueue(
    st: &mut Staged<'_>,
    now: u64,
    sites: &[String],
    sid: &str,
    user_id: u64,
) -> Result<(), StorageError> {
    for client_id in sites {
        let takes_logouts = st
            .get::<Site>(&key(PREFIX_SITE, client_id.as_bytes()))?
            .is_some_and(|s| s.backchannel_logout_uri.is_some());
        if !takes_logouts {
            continue;
        }
        let id: u64 = st.get(KEY_NEXT_OUTBOX_ID)?.unwrap_or(1);
        st.put(KEY_NEXT_OUTBOX_ID, &(id + 1))?;
        let item = OutboxItem {
            id,
            client_id: client_id.clone(),
            sid: sid.to_string(),
            user_id,
            created_ms: now,
        };
        st.put(&key(PREFIX_OUTBOX, &id.to_be_bytes()), &item)?;
    }
    Ok(())
}

/// Removes delivered (or given up) items; returns how many were there.
pub(super) fn complete(st: &mut Staged<'_>, ids: &[u64]) -> Result<CommandResult, StorageError> {
    let mut n = 0;
    for id in ids {
        let k = key(PREFIX_OUTBOX, &id.to_be_bytes());
        if st.get::<OutboxItem>(&k)?.is_some() {
            st.remove(&k);
            n += 1;
        }
    }
    Ok(Ok(Outcome::Purged(n)))
}
