//! The cluster's secrets: signing keys and federation keys (each with the
//! rotation that retires the current one) and the salt of pairwise
//! identifiers.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::federation::FederationKey;
use baa_proto::sso::{PairwiseSalt, SigningKey, TicketKey};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::super::keyspace::{
    key, KEY_CURRENT_FEDERATION_KID, KEY_CURRENT_KID, KEY_CURRENT_TICKET_KID, KEY_PAIRWISE_SALT,
    PREFIX_FEDERATION_KEY, PREFIX_KEY, PREFIX_TICKET_KEY,
};
use super::super::staged::{invalid, Staged};
use crate::raft::StorageError;

/// A key that rotates: one current, older ones published for a while.
pub(super) trait Rotating: Clone + Serialize + DeserializeOwned {
    /// Where keys of this kind live, and the key naming the current one.
    const PREFIX: &'static [u8];
    /// The key that names the current one.
    const CURRENT: &'static [u8];
    /// Key id.
    fn kid(&self) -> &str;
    /// Stamps the key as added at `now`, current, never retired.
    fn added(&mut self, now: u64);
    /// Retires the key at `now`, published until `until`.
    fn retire(&mut self, now: u64, until: u64);
}

/// Both kinds of key keep their times in the same three fields.
macro_rules! rotating {
    ($key:ty, $prefix:expr, $current:expr) => {
        impl Rotating for $key {
            const PREFIX: &'static [u8] = $prefix;
            const CURRENT: &'static [u8] = $current;
            fn kid(&self) -> &str {
                &self.kid
            }
            fn added(&mut self, now: u64) {
                (self.created_ms, self.retired_ms, self.publish_until_ms) = (now, None, None);
            }
            fn retire(&mut self, now: u64, until: u64) {
                (self.retired_ms, self.publish_until_ms) = (Some(now), Some(until));
            }
        }
    };
}

rotating!(SigningKey, PREFIX_KEY, KEY_CURRENT_KID);
rotating!(
    FederationKey,
    PREFIX_FEDERATION_KEY,
    KEY_CURRENT_FEDERATION_KID
);
rotating!(TicketKey, PREFIX_TICKET_KEY, KEY_CURRENT_TICKET_KID);

/// Adds a key and makes it current; the key it replaces stays published
/// for `publish_old_for_ms`, so what it signed still verifies.
pub(super) fn add<K: Rotating>(
    st: &mut Staged<'_>,
    now: u64,
    new: &K,
    publish_old_for_ms: u64,
) -> Result<CommandResult, StorageError> {
    let k = key(K::PREFIX, new.kid().as_bytes());
    if st.get::<K>(&k)?.is_some() {
        return Ok(Err(invalid(format!("key {} exists", new.kid()))));
    }
    if let Some(old_kid) = st.get::<String>(K::CURRENT)? {
        let ok = key(K::PREFIX, old_kid.as_bytes());
        if let Some(mut old) = st.get::<K>(&ok)? {
            old.retire(now, now.saturating_add(publish_old_for_ms));
            st.put(&ok, &old)?;
        }
    }
    let mut new = new.clone();
    new.added(now);
    st.put(&k, &new)?;
    st.put(K::CURRENT, &new.kid().to_string())?;
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
