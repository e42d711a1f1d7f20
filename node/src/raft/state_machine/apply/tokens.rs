//! Access and refresh tokens: granting them, refreshing (once per refresh
//! token: reuse revokes the family), revoking, and the removals other
//! aggregates ask for when a session, trust or site ends. A stored access
//! token has a record; a sealed one has none, and is revoked by listing one
//! of its ids (`Y/`): its own, its ticket's or its refresh family's.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::sso::{AccessToken, Grant, RefreshToken, SecretHash, Session, Site, Trust};
use baa_proto::ErrorCode;

use super::super::keyspace::{
    family_key, key, session_token_key, trust_key, user_sessions_prefix, PREFIX_FAMILY,
    PREFIX_REFRESH, PREFIX_REVOKED_ACCESS, PREFIX_SESSION, PREFIX_SESSION_TOKENS, PREFIX_SITE,
    PREFIX_TOKEN,
};

/// The access token a grant hands out.
#[derive(Clone, Copy)]
pub(super) enum Access<'a> {
    /// A stored one (its record as the proposing node made it).
    Stored(&'a AccessToken),
    /// A sealed one the proposing node makes after the grant, living
    /// `ttl_ms` (cut to the session's absolute expiry).
    Sealed {
        /// Lifetime.
        ttl_ms: u64,
    },
}
use super::super::staged::{refuse, Staged};
use super::users;
use crate::raft::StorageError;

/// Revokes the token with hash `hash`: an access token alone, a refresh
/// token with its family and the access tokens of the same grant.
pub(super) fn revoke(
    st: &mut Staged<'_>,
    now: u64,
    hash: &SecretHash,
) -> Result<CommandResult, StorageError> {
    let k = key(PREFIX_TOKEN, hash);
    if let Some(t) = st.get::<AccessToken>(&k)? {
        st.remove(&k);
        st.remove(&session_token_key(&t.session_key, hash));
        return Ok(Ok(Outcome::Removed(true)));
    }
    // A refresh token takes its whole family with it (RFC 7009 §2.1),
    // and the access tokens of the same grant (its client in its session).
    match st.get::<RefreshToken>(&key(PREFIX_REFRESH, hash))? {
        Some(r) => {
            revoke_family(st, &r.family)?;
            list_revoked(st, &r.family, r.expires_ms.max(now))?;
            revoke_client_tokens(st, &r.session_key, &r.client_id)?;
            Ok(Ok(Outcome::Removed(true)))
        }
        None => Ok(Ok(Outcome::Removed(false))),
    }
}

/// Removes every token of session `k` (access and refresh); returns how many.
pub(super) fn revoke_session_tokens(
    st: &mut Staged<'_>,
    k: &SecretHash,
) -> Result<u64, StorageError> {
    revoke_tokens_where(st, k, |_| true)
}

/// Moves every token of session `from` (access and refresh) to session
/// `to`, with their index entries: what a re-authentication of the same
/// user keeps. Returns how many. Sealed access tokens name the session
/// they were issued in and end with it; their apps refresh.
pub(super) fn move_session_tokens(
    st: &mut Staged<'_>,
    from: &SecretHash,
    to: &SecretHash,
) -> Result<u64, StorageError> {
    let prefix = key(PREFIX_SESSION_TOKENS, from);
    let mut n = 0;
    for ik in st.keys_with_prefix(&prefix)? {
        let hash = &ik[prefix.len()..];
        let (tk, rk) = (key(PREFIX_TOKEN, hash), key(PREFIX_REFRESH, hash));
        if let Some(mut t) = st.get::<AccessToken>(&tk)? {
            t.session_key = *to;
            st.put(&tk, &t)?;
        } else if let Some(mut r) = st.get::<RefreshToken>(&rk)? {
            r.session_key = *to;
            st.put(&rk, &r)?;
        }
        st.remove(&ik);
        st.put(&session_token_key(to, hash), &())?;
        n += 1;
    }
    Ok(n)
}

/// Removes the tokens of session `session` that `doomed` picks by client
/// id, with their index entries; returns how many.
fn revoke_tokens_where(
    st: &mut Staged<'_>,
    session: &SecretHash,
    doomed: impl Fn(&str) -> bool,
) -> Result<u64, StorageError> {
    let prefix = key(PREFIX_SESSION_TOKENS, session);
    let mut n = 0;
    for ik in st.keys_with_prefix(&prefix)? {
        let hash = &ik[prefix.len()..];
        let (tk, rk) = (key(PREFIX_TOKEN, hash), key(PREFIX_REFRESH, hash));
        if let Some(t) = st.get::<AccessToken>(&tk)? {
            if !doomed(&t.client_id) {
                continue;
            }
            st.remove(&tk);
        } else if let Some(r) = st.get::<RefreshToken>(&rk)? {
            if !doomed(&r.client_id) {
                continue;
            }
            st.remove(&rk);
            st.remove(&family_key(&r.family, hash));
        }
        st.remove(&ik);
        n += 1;
    }
    Ok(n)
}

/// Removes the tokens `client_id` holds in session `session`: what reuse
/// detection of one of its grants takes with it.
pub(super) fn revoke_client_tokens(
    st: &mut Staged<'_>,
    session: &SecretHash,
    client_id: &str,
) -> Result<u64, StorageError> {
    revoke_tokens_where(st, session, |c| c == client_id)
}

/// Lists `id` as revoked until `keep_until_ms` (the sealed access tokens
/// naming it are refused).
pub(super) fn list_revoked(
    st: &mut Staged<'_>,
    id: &[u8],
    keep_until_ms: u64,
) -> Result<(), StorageError> {
    st.put(&key(PREFIX_REVOKED_ACCESS, id), &keep_until_ms)
}

/// Revokes one sealed access token (its id) until it would have expired.
pub(super) fn revoke_sealed(
    st: &mut Staged<'_>,
    now: u64,
    id: &[u8; 16],
    expires_ms: u64,
) -> Result<CommandResult, StorageError> {
    if now >= expires_ms {
        return Ok(Ok(Outcome::Removed(false)));
    }
    list_revoked(st, id, expires_ms)?;
    Ok(Ok(Outcome::Removed(true)))
}

/// Removes the tokens `client_id` holds in any session of user `user_id`
/// (its trust was revoked, or the site removed).
pub(super) fn revoke_user_client_tokens(
    st: &mut Staged<'_>,
    user_id: u64,
    client_id: &str,
) -> Result<u64, StorageError> {
    let prefix = user_sessions_prefix(user_id);
    let mut n = 0;
    for uk in st.keys_with_prefix(&prefix)? {
        let mut session = [0u8; 32];
        session.copy_from_slice(&uk[prefix.len()..]);
        // Sealed tokens need no cutoff here: they hold only while the
        // trust and the site they were issued under do.
        n += revoke_tokens_where(st, &session, |c| c == client_id)?;
    }
    Ok(n)
}

/// Stores the access token (unless sealed) and refresh token of a grant
/// for `session` and describes it, or refuses when the user can no longer
/// sign in.
#[allow(clippy::too_many_arguments)]
pub(super) fn grant(
    st: &mut Staged<'_>,
    now: u64,
    session: &Session,
    client_id: &str,
    scopes: &[String],
    nonce: Option<String>,
    access: Access<'_>,
    refresh: Option<&RefreshToken>,
) -> Result<CommandResult, StorageError> {
    let Some(mut user) = users::by_id(st, session.user_id)? else {
        return refuse(ErrorCode::InvalidGrant, "the user no longer exists");
    };
    if user.disabled {
        return refuse(ErrorCode::InvalidGrant, "the account is disabled");
    }
    if st
        .get::<Site>(&key(PREFIX_SITE, client_id.as_bytes()))?
        .is_none()
    {
        return refuse(ErrorCode::InvalidGrant, "the site is no longer registered");
    }
    let params = st
        .get::<Trust>(&trust_key(user.id, client_id))?
        .map(|tr| tr.params)
        .unwrap_or_default();
    user.password_hash = None;
    let lifetime = match access {
        Access::Stored(t) => t.expires_ms.saturating_sub(t.issued_ms),
        Access::Sealed { ttl_ms } => ttl_ms,
    };
    let expires_ms = now.saturating_add(lifetime).min(session.absolute_expiry_ms);
    if let Access::Stored(token) = access {
        let at = AccessToken {
            hash: token.hash,
            session_key: session.key,
            sid: session.sid.clone(),
            user_id: user.id,
            client_id: client_id.to_string(),
            scopes: scopes.to_vec(),
            issued_ms: now,
            expires_ms,
        };
        st.put(&key(PREFIX_TOKEN, &token.hash), &at)?;
        st.put(&session_token_key(&session.key, &token.hash), &())?;
    }
    let offline = scopes.iter().any(|s| s == "offline_access");
    if let Some(r) = refresh.filter(|_| offline) {
        let lifetime = r.expires_ms.saturating_sub(r.issued_ms);
        let rt = RefreshToken {
            session_key: session.key,
            client_id: client_id.to_string(),
            scopes: scopes.to_vec(),
            issued_ms: now,
            expires_ms: now.saturating_add(lifetime).min(session.absolute_expiry_ms),
            used: false,
            ..r.clone()
        };
        st.put(&key(PREFIX_REFRESH, &rt.hash), &rt)?;
        st.put(&family_key(&rt.family, &rt.hash), &())?;
        st.put(&session_token_key(&session.key, &rt.hash), &())?;
    }
    Ok(Ok(Outcome::Granted(Box::new(Grant {
        user,
        sid: session.sid.clone(),
        auth_time_ms: session.auth_time_ms,
        client_id: client_id.to_string(),
        nonce,
        scopes: scopes.to_vec(),
        params,
        expires_ms,
    }))))
}

/// The session under key `k` if it is alive at `now`: tokens are granted
/// and refreshed only in a live one.
pub(super) fn live_session(
    st: &Staged<'_>,
    now: u64,
    k: &SecretHash,
) -> Result<Option<Session>, StorageError> {
    Ok(st
        .get::<Session>(&key(PREFIX_SESSION, k))?
        .filter(|s| s.alive_at(now)))
}

/// Revokes every refresh token of a family.
pub(super) fn revoke_family(st: &mut Staged<'_>, family: &SecretHash) -> Result<(), StorageError> {
    let prefix = key(PREFIX_FAMILY, family);
    for ik in st.keys_with_prefix(&prefix)? {
        let hash = &ik[prefix.len()..];
        let rk = key(PREFIX_REFRESH, hash);
        if let Some(r) = st.get::<RefreshToken>(&rk)? {
            st.remove(&session_token_key(&r.session_key, hash));
        }
        st.remove(&rk);
        st.remove(&ik);
    }
    Ok(())
}

/// Exchanges refresh token `hash` for a new access and refresh token of the
/// same family, once: a used one revokes its family and its grant's tokens.
pub(super) fn refresh(
    st: &mut Staged<'_>,
    now: u64,
    hash: &SecretHash,
    client_id: &str,
    token: &AccessToken,
    new_refresh: &RefreshToken,
) -> Result<CommandResult, StorageError> {
    let bad = |m: &str| refuse(ErrorCode::InvalidGrant, m);
    let rk = key(PREFIX_REFRESH, hash);
    let Some(mut old) = st.get::<RefreshToken>(&rk)? else {
        return bad("the refresh token is unknown, expired or revoked");
    };
    if old.client_id != client_id {
        return bad("the refresh token was issued to another client");
    }
    if old.used {
        // Reuse: one of the two holders is not the app; neither keeps access,
        // to the refresh tokens or to the access tokens issued from them.
        revoke_family(st, &old.family)?;
        list_revoked(st, &old.family, old.expires_ms.max(now))?;
        revoke_client_tokens(st, &old.session_key, client_id)?;
        return bad("the refresh token was already used; its family is revoked");
    }
    if now >= old.expires_ms {
        return bad("the refresh token has expired");
    }
    let Some(mut session) = live_session(st, now, &old.session_key)? else {
        return bad("the session has ended");
    };
    old.used = true;
    st.put(&rk, &old)?;
    // Using the app keeps the browser session alive.
    session.last_seen_ms = session.last_seen_ms.max(now);
    st.put(&key(PREFIX_SESSION, &session.key), &session)?;
    let next = RefreshToken {
        family: old.family,
        ..new_refresh.clone()
    };
    let scopes = old.scopes.clone();
    grant(
        st,
        now,
        &session,
        client_id,
        &scopes,
        None,
        Access::Stored(token),
        Some(&next),
    )
}
