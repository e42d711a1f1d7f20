//! Removal of what has expired: remembered request results, and every
//! record with an end of life, either all at once or a bounded sweep at a
//! time.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::sso::{
    AccessToken, DeviceGrant, Failures, LoginTicket, RefreshToken, Session, SigningKey,
    SpentTicket, TicketKey, WrappedTicketKey,
};

use super::super::keyspace::{
    family_key, key, session_token_key, spent_once_until, RequestRecord, KEY_DEVICE_GRANTS,
    KEY_SWEEP_CURSOR, PREFIX_DEVICE, PREFIX_FAILURES, PREFIX_KEY, PREFIX_REFRESH, PREFIX_REQUEST,
    PREFIX_REVOKED_ACCESS, PREFIX_SESSION, PREFIX_SPENT, PREFIX_SPENT_ONCE, PREFIX_TICKET,
    PREFIX_TICKET_KEY, PREFIX_TOKEN, PREFIX_USER_CODE, PREFIX_WRAPPED_TICKET_KEY,
};
use super::super::staged::Staged;
use super::tokens;
use crate::raft::StorageError;

/// How long a used ticket is kept after expiry, so a late second redemption
/// still finds it and revokes the first one's tokens.
const USED_TICKET_GRACE_MS: u64 = 10 * 60 * 1000;

/// Forgets remembered request results older than `before_ms` (those this
/// batch wrote stay).
pub(super) fn request_results(
    st: &mut Staged<'_>,
    before_ms: u64,
) -> Result<CommandResult, StorageError> {
    let doomed = st.committed_keys_where(PREFIX_REQUEST, |rec: &RequestRecord| {
        rec.time_ms < before_ms
    })?;
    let n = doomed.len() as u64;
    for k in doomed {
        st.remove(&k);
    }
    Ok(Ok(Outcome::Purged(n)))
}

/// When remembered request results expire (see `Op::Sweep`).
#[derive(Clone, Copy)]
struct Cutoffs {
    requests: u64,
    auto_requests: u64,
}

/// Every expired record, whatever its number: the `PurgeExpired` of earlier
/// releases (request results are `PurgeRequestResults`'s).
pub(super) fn expired(st: &mut Staged<'_>, now: u64) -> Result<CommandResult, StorageError> {
    let mut n = 0u64;
    for prefix in [
        PREFIX_SESSION,
        PREFIX_TICKET,
        PREFIX_TOKEN,
        PREFIX_REFRESH,
        PREFIX_DEVICE,
        PREFIX_FAILURES,
        PREFIX_KEY,
        PREFIX_SPENT,
        PREFIX_SPENT_ONCE,
        PREFIX_TICKET_KEY,
        PREFIX_WRAPPED_TICKET_KEY,
    ] {
        for k in st.keys_with_prefix(prefix)? {
            n += purge_if_expired(st, now, &k, None)?;
        }
    }
    Ok(Ok(Outcome::Purged(n)))
}

/// Looks at the next `budget` keys after the cursor and removes what has
/// expired; the cursor moves on, back to the start after the last key.
pub(super) fn sweep(
    st: &mut Staged<'_>,
    now: u64,
    request_cutoff_ms: u64,
    auto_request_cutoff_ms: u64,
    budget: u32,
) -> Result<CommandResult, StorageError> {
    let cutoffs = Cutoffs {
        requests: request_cutoff_ms,
        auto_requests: auto_request_cutoff_ms,
    };
    let cursor: Vec<u8> = st.get(KEY_SWEEP_CURSOR)?.unwrap_or_default();
    let keys = st.keys_from(&cursor, budget as usize + 1)?;
    let (batch, next) = match keys.len() > budget as usize {
        true => (&keys[..budget as usize], keys[budget as usize].clone()),
        false => (&keys[..], Vec::new()),
    };
    let mut removed = 0;
    for k in batch {
        removed += purge_if_expired(st, now, k, Some(cutoffs))?;
    }
    let wrapped = next.is_empty();
    st.put(KEY_SWEEP_CURSOR, &next)?;
    Ok(Ok(Outcome::Swept { removed, wrapped }))
}

/// Removes the record under `k` if it has expired at `now`, with the index
/// entries that go with it (and a session's tokens); request results only
/// when `cutoffs` are given. Returns how many records went.
fn purge_if_expired(
    st: &mut Staged<'_>,
    now: u64,
    k: &[u8],
    cutoffs: Option<Cutoffs>,
) -> Result<u64, StorageError> {
    fn gone<T: serde::de::DeserializeOwned>(
        st: &mut Staged<'_>,
        k: &[u8],
        doomed: impl Fn(&T) -> Option<Vec<Vec<u8>>>,
    ) -> Result<u64, StorageError> {
        let Some(extra) = st.get::<T>(k)?.as_ref().and_then(doomed) else {
            return Ok(0);
        };
        st.remove(k);
        for e in extra {
            st.remove(&e);
        }
        Ok(1)
    }
    if k.starts_with(PREFIX_SESSION) {
        let Some(s) = st.get::<Session>(k)? else {
            return Ok(0);
        };
        if s.alive_at(now) {
            return Ok(0);
        }
        super::sessions::remove_records(st, &s)?;
        return Ok(1 + tokens::revoke_session_tokens(st, &s.key)?);
    }
    if k.starts_with(PREFIX_TICKET) {
        return gone(st, k, |t: &LoginTicket| {
            let grace = if t.used { USED_TICKET_GRACE_MS } else { 0 };
            (now >= t.expires_ms.saturating_add(grace)).then(Vec::new)
        });
    }
    if k.starts_with(PREFIX_TOKEN) {
        return gone(st, k, |t: &AccessToken| {
            (now >= t.expires_ms).then(|| vec![session_token_key(&t.session_key, &t.hash)])
        });
    }
    if k.starts_with(PREFIX_REFRESH) {
        return gone(st, k, |r: &RefreshToken| {
            (now >= r.expires_ms).then(|| {
                vec![
                    family_key(&r.family, &r.hash),
                    session_token_key(&r.session_key, &r.hash),
                ]
            })
        });
    }
    if k.starts_with(PREFIX_DEVICE) {
        let n = gone(st, k, |d: &DeviceGrant| {
            (now >= d.expires_ms).then(|| vec![key(PREFIX_USER_CODE, d.user_code.as_bytes())])
        })?;
        if n > 0 {
            let grants = st.get::<u64>(KEY_DEVICE_GRANTS)?.unwrap_or(0);
            st.put(KEY_DEVICE_GRANTS, &grants.saturating_sub(1))?;
        }
        return Ok(n);
    }
    if k.starts_with(PREFIX_FAILURES) {
        // A throttle record outside any window and lock no longer matters.
        return gone(st, k, |f: &Failures| {
            (now >= f.locked_until_ms && now >= f.window_start_ms.saturating_add(3_600_000))
                .then(Vec::new)
        });
    }
    if k.starts_with(PREFIX_KEY) {
        return gone(st, k, |k: &SigningKey| {
            (!k.published_at(now)).then(Vec::new)
        });
    }
    if k.starts_with(PREFIX_TICKET_KEY) {
        return gone(st, k, |k: &TicketKey| (!k.published_at(now)).then(Vec::new));
    }
    if k.starts_with(PREFIX_WRAPPED_TICKET_KEY) {
        return gone(st, k, |k: &WrappedTicketKey| {
            (!k.published_at(now)).then(Vec::new)
        });
    }
    if k.starts_with(PREFIX_REVOKED_ACCESS) {
        return gone(st, k, |expires_ms: &u64| {
            (now >= *expires_ms).then(Vec::new)
        });
    }
    if k.starts_with(PREFIX_SPENT_ONCE) {
        // The key holds when the marker may go: nothing to decode.
        if spent_once_until(k).is_none_or(|until| now >= until) {
            st.remove(k);
            return Ok(1);
        }
        return Ok(0);
    }
    if k.starts_with(PREFIX_SPENT) {
        return gone(st, k, |s: &SpentTicket| {
            (now >= s.keep_until_ms).then(Vec::new)
        });
    }
    if let (Some(c), true) = (cutoffs, k.starts_with(PREFIX_REQUEST)) {
        let auto = k[PREFIX_REQUEST.len()..].starts_with(b"auto-");
        let cutoff = if auto { c.auto_requests } else { c.requests };
        return gone(st, k, |r: &RequestRecord| {
            (r.time_ms < cutoff).then(Vec::new)
        });
    }
    Ok(0)
}
