//! Peer agencies of the federation: added (once the node that took the
//! request checked the peer's configuration against its pin) and removed.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::federation::PeerAgency;
use baa_proto::ErrorCode;

use super::super::keyspace::{key, PREFIX_PEER_AGENCY};
use super::super::staged::{refuse, Staged};
use crate::raft::StorageError;

/// Adds a peer agency, stamped with the command's time.
pub(super) fn add(
    st: &mut Staged<'_>,
    now: u64,
    peer: &PeerAgency,
) -> Result<CommandResult, StorageError> {
    let k = key(PREFIX_PEER_AGENCY, peer.issuer.as_bytes());
    if st.get::<PeerAgency>(&k)?.is_some() {
        return refuse(
            ErrorCode::PeerExists,
            format!(
                "{} is a peer already; remove it first to change its pin",
                peer.issuer
            ),
        );
    }
    let mut p = peer.clone();
    p.added_ms = now;
    st.put(&k, &p)?;
    Ok(Ok(Outcome::Done))
}

/// Removes a peer agency.
pub(super) fn remove(st: &mut Staged<'_>, issuer: &str) -> Result<CommandResult, StorageError> {
    let k = key(PREFIX_PEER_AGENCY, issuer.as_bytes());
    if st.get::<PeerAgency>(&k)?.is_none() {
        return refuse(ErrorCode::PeerNotFound, format!("{issuer} is not a peer"));
    }
    st.remove(&k);
    Ok(Ok(Outcome::Done))
}
