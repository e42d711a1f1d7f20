//! The cluster's secrets: signing keys, ticket keys and federation keys
//! (each with the rotation that retires the current one), the salt of
//! pairwise identifiers, and their rewrapping. Secrets arrive wrapped under
//! the cluster's key-encryption key and are stored as they come; apply
//! never opens one. Ticket and federation keys, the salt too, of releases
//! before keys were wrapped live in families of their own (their layout
//! holds 32 clear bytes); a rewrap moves each into the wrapped family.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::federation::{FederationKey, WrappedFederationKey};
use baa_proto::sso::{
    stored_fingerprint, PairwiseSalt, Rewrap, SecretKind, SigningKey, TicketKey, WrappedTicketKey,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::super::keyspace::{
    key, KEY_CURRENT_FEDERATION_KID, KEY_CURRENT_KID, KEY_CURRENT_TICKET_KID, KEY_PAIRWISE_SALT,
    KEY_WRAPPED_PAIRWISE_SALT, PREFIX_FEDERATION_KEY, PREFIX_KEY, PREFIX_TICKET_KEY,
    PREFIX_WRAPPED_FEDERATION_KEY, PREFIX_WRAPPED_TICKET_KEY,
};
use super::super::staged::{invalid, Staged};
use crate::raft::StorageError;

/// A key that rotates: one current, older ones published for a while.
pub(super) trait Rotating: Clone + Serialize + DeserializeOwned {
    /// Where keys of this kind live.
    const PREFIX: &'static [u8];
    /// The key that names the current one.
    const CURRENT: &'static [u8];
    /// The same kind of key in its other layout (in the clear, or wrapped),
    /// whose family may hold the current key; itself if it has one layout.
    type Other: Rotating;
    /// Key id.
    fn kid(&self) -> &str;
    /// Stamps the key as added at `now`, current, never retired.
    fn added(&mut self, now: u64);
    /// Retires the key at `now`, published until `until`.
    fn retire(&mut self, now: u64, until: u64);
}

/// Every kind of key keeps its times in the same three fields.
macro_rules! rotating {
    ($key:ty, $prefix:expr, $current:expr, $other:ty) => {
        impl Rotating for $key {
            const PREFIX: &'static [u8] = $prefix;
            const CURRENT: &'static [u8] = $current;
            type Other = $other;
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

rotating!(SigningKey, PREFIX_KEY, KEY_CURRENT_KID, SigningKey);
rotating!(
    FederationKey,
    PREFIX_FEDERATION_KEY,
    KEY_CURRENT_FEDERATION_KID,
    WrappedFederationKey
);
rotating!(
    WrappedFederationKey,
    PREFIX_WRAPPED_FEDERATION_KEY,
    KEY_CURRENT_FEDERATION_KID,
    FederationKey
);
rotating!(
    TicketKey,
    PREFIX_TICKET_KEY,
    KEY_CURRENT_TICKET_KID,
    WrappedTicketKey
);
rotating!(
    WrappedTicketKey,
    PREFIX_WRAPPED_TICKET_KEY,
    KEY_CURRENT_TICKET_KID,
    TicketKey
);

/// The family (`K`'s, then its other layout's) that holds key `kid`.
fn holds<K: Rotating>(st: &Staged<'_>, kid: &str) -> Result<bool, StorageError> {
    Ok(st.get::<K>(&key(K::PREFIX, kid.as_bytes()))?.is_some()
        || st
            .get::<K::Other>(&key(K::Other::PREFIX, kid.as_bytes()))?
            .is_some())
}

/// Retires key `kid` of family `K` if it is there.
fn retire<K: Rotating>(
    st: &mut Staged<'_>,
    kid: &str,
    now: u64,
    until: u64,
) -> Result<(), StorageError> {
    let k = key(K::PREFIX, kid.as_bytes());
    if let Some(mut old) = st.get::<K>(&k)? {
        old.retire(now, until);
        st.put(&k, &old)?;
    }
    Ok(())
}

/// Adds a key and makes it current; the key it replaces (in either
/// layout) stays published for `publish_old_for_ms`, so what it signed
/// still verifies.
pub(super) fn add<K: Rotating>(
    st: &mut Staged<'_>,
    now: u64,
    new: &K,
    publish_old_for_ms: u64,
) -> Result<CommandResult, StorageError> {
    if holds::<K>(st, new.kid())? {
        return Ok(Err(invalid(format!("key {} exists", new.kid()))));
    }
    if let Some(old_kid) = st.get::<String>(K::CURRENT)? {
        let until = now.saturating_add(publish_old_for_ms);
        retire::<K>(st, &old_kid, now, until)?;
        if K::Other::PREFIX != K::PREFIX {
            retire::<K::Other>(st, &old_kid, now, until)?;
        }
    }
    let mut new = new.clone();
    new.added(now);
    st.put(&key(K::PREFIX, new.kid().as_bytes()), &new)?;
    st.put(K::CURRENT, &new.kid().to_string())?;
    Ok(Ok(Outcome::Done))
}

/// Whether a salt is set, in either form.
fn has_salt(st: &Staged<'_>) -> Result<bool, StorageError> {
    Ok(st.get::<PairwiseSalt>(KEY_PAIRWISE_SALT)?.is_some()
        || st.get::<Vec<u8>>(KEY_WRAPPED_PAIRWISE_SALT)?.is_some())
}

/// Sets the salt of pairwise identifiers in the clear (an earlier
/// release's command) unless one is set: the first wins, as a changed
/// salt would change every pseudonym.
pub(super) fn set_pairwise_salt(
    st: &mut Staged<'_>,
    salt: &PairwiseSalt,
) -> Result<CommandResult, StorageError> {
    if !has_salt(st)? {
        st.put(KEY_PAIRWISE_SALT, salt)?;
    }
    Ok(Ok(Outcome::Done))
}

/// Sets the wrapped salt of pairwise identifiers unless one is set.
pub(super) fn set_wrapped_pairwise_salt(
    st: &mut Staged<'_>,
    salt: &[u8],
) -> Result<CommandResult, StorageError> {
    if !has_salt(st)? {
        st.put(KEY_WRAPPED_PAIRWISE_SALT, &salt.to_vec())?;
    }
    Ok(Ok(Outcome::Done))
}

/// Replaces each stored secret named by `secrets` with its new envelope,
/// if it is still stored as the form the rewrap replaces; a key in the
/// clear family moves to the wrapped one. Secrets gone, or rewrapped
/// meanwhile, are left alone.
pub(super) fn rewrap(
    st: &mut Staged<'_>,
    secrets: &[Rewrap],
) -> Result<CommandResult, StorageError> {
    for r in secrets {
        match r.kind {
            // One family, whatever the form.
            SecretKind::SigningKey => rewrap_key::<SigningKey, SigningKey>(
                st,
                r,
                |k| &mut k.private_der,
                |k| &k.private_der,
                |k, wrapped| SigningKey {
                    private_der: wrapped,
                    ..k
                },
            )?,
            SecretKind::TicketKey => rewrap_key::<WrappedTicketKey, TicketKey>(
                st,
                r,
                |k| &mut k.key,
                |k| &k.key,
                TicketKey::stored_as,
            )?,
            SecretKind::FederationKey => rewrap_key::<WrappedFederationKey, FederationKey>(
                st,
                r,
                |k| &mut k.seed,
                |k| &k.seed,
                FederationKey::stored_as,
            )?,
            SecretKind::PairwiseSalt => rewrap_salt(st, r)?,
        }
    }
    Ok(Ok(Outcome::Done))
}

/// Rewraps key `r.kid` of wrapped family `W`, or moves it there from the
/// clear family `C` (for signing keys the same family: found in the first).
fn rewrap_key<W: Rotating, C: Rotating>(
    st: &mut Staged<'_>,
    r: &Rewrap,
    stored: impl Fn(&mut W) -> &mut Vec<u8>,
    clear: impl Fn(&C) -> &[u8],
    wrapped_form: impl Fn(C, Vec<u8>) -> W,
) -> Result<(), StorageError> {
    let wk = key(W::PREFIX, r.kid.as_bytes());
    if let Some(mut w) = st.get::<W>(&wk)? {
        let s = stored(&mut w);
        if stored_fingerprint(s) == r.replaces {
            s.clone_from(&r.wrapped);
            st.put(&wk, &w)?;
        }
        return Ok(());
    }
    let ck = key(C::PREFIX, r.kid.as_bytes());
    if let Some(c) = st.get::<C>(&ck)? {
        if stored_fingerprint(clear(&c)) == r.replaces {
            st.remove(&ck);
            st.put(&wk, &wrapped_form(c, r.wrapped.clone()))?;
        }
    }
    Ok(())
}

/// Rewraps the salt, or moves it from its clear form to the wrapped one.
fn rewrap_salt(st: &mut Staged<'_>, r: &Rewrap) -> Result<(), StorageError> {
    if let Some(w) = st.get::<Vec<u8>>(KEY_WRAPPED_PAIRWISE_SALT)? {
        if stored_fingerprint(&w) == r.replaces {
            st.put(KEY_WRAPPED_PAIRWISE_SALT, &r.wrapped)?;
        }
        return Ok(());
    }
    if let Some(c) = st.get::<PairwiseSalt>(KEY_PAIRWISE_SALT)? {
        if stored_fingerprint(&c) == r.replaces {
            st.remove(KEY_PAIRWISE_SALT);
            st.put(KEY_WRAPPED_PAIRWISE_SALT, &r.wrapped)?;
        }
    }
    Ok(())
}
