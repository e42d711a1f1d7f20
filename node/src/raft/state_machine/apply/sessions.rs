//! Browser sessions at the agency: starting one (after the throttle's
//! check), its use, and its end, which takes the session's tokens with it.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::federation::PeerSessionLink;
use baa_proto::sso::{RevokedSession, SecretHash, Session};
use baa_proto::ErrorCode;

use super::super::keyspace::{
    key, peer_sessions_prefix, user_session_key, user_sessions_prefix, PREFIX_SESSION,
    PREFIX_SESSION_BY_SID, PREFIX_SESSION_PEER,
};
use super::super::staged::{invalid, refuse, Staged};
use super::{throttle, tokens, users};
use crate::raft::StorageError;

/// Starts a session after a successful sign-in, unless the sign-in is
/// locked or the user cannot sign in; times are the command's.
pub(super) fn create(
    st: &mut Staged<'_>,
    now: u64,
    session: &Session,
    account: &SecretHash,
    source: &str,
) -> Result<CommandResult, StorageError> {
    if let Err(e) = throttle::check_sign_in(st, now, account, source)? {
        return Ok(Err(e));
    }
    let Some(user) = users::by_id(st, session.user_id)? else {
        return refuse(ErrorCode::UserNotFound, "no such user");
    };
    if user.disabled {
        return refuse(ErrorCode::Unauthorized, "the account is disabled");
    }
    let sk = key(PREFIX_SESSION, &session.key);
    if st.get::<Session>(&sk)?.is_some() {
        return Ok(Err(invalid("session key collision")));
    }
    let lifetime = session
        .absolute_expiry_ms
        .saturating_sub(session.created_ms);
    let mut s = session.clone();
    s.username = user.username;
    s.created_ms = now;
    s.last_seen_ms = now;
    s.auth_time_ms = now;
    s.absolute_expiry_ms = now.saturating_add(lifetime);
    s.sites.clear();
    put_records(st, &s)?;
    throttle::forgive_sign_in(st, account, source);
    Ok(Ok(Outcome::Session(Box::new(s))))
}

/// Starts a session in place of `previous`, the one the browser held (see
/// `Op::ReplaceSession`): the previous session ends as a sign-out ends it,
/// its tokens moving to the new session first when both are the same
/// user's.
pub(super) fn replace(
    st: &mut Staged<'_>,
    now: u64,
    session: &Session,
    account: &SecretHash,
    source: &str,
    previous: &SecretHash,
) -> Result<CommandResult, StorageError> {
    let created = create(st, now, session, account, source)?;
    let Ok(Outcome::Session(new)) = &created else {
        return Ok(created);
    };
    let Some(old) = st.get::<Session>(&key(PREFIX_SESSION, previous))? else {
        return Ok(created);
    };
    if old.user_id == new.user_id {
        tokens::move_session_tokens(st, previous, &new.key)?;
    }
    remove_records(st, &old)?;
    super::outbox::enqueue(st, now, &old.sites, &old.sid, old.user_id)?;
    tokens::revoke_session_tokens(st, previous)?;
    Ok(created)
}

/// Stores session `s` with its index entries.
pub(super) fn put_records(st: &mut Staged<'_>, s: &Session) -> Result<(), StorageError> {
    st.put(&key(PREFIX_SESSION, &s.key), s)?;
    st.put(&key(PREFIX_SESSION_BY_SID, s.sid.as_bytes()), &s.key)?;
    st.put(&user_session_key(s.user_id, &s.key), &())
}

/// Links session `s` to the peer session it was derived from.
pub(super) fn link_to_peer(
    st: &mut Staged<'_>,
    s: &SecretHash,
    link: &PeerSessionLink,
) -> Result<(), StorageError> {
    st.put(&key(PREFIX_SESSION_PEER, s), link)?;
    let index = [peer_sessions_prefix(&link.peer, &link.peer_sid), s.to_vec()].concat();
    st.put(&index, &())
}

/// Removes session `s`'s records and index entries (not its tokens).
pub(super) fn remove_records(st: &mut Staged<'_>, s: &Session) -> Result<(), StorageError> {
    st.remove(&key(PREFIX_SESSION, &s.key));
    st.remove(&key(PREFIX_SESSION_BY_SID, s.sid.as_bytes()));
    st.remove(&user_session_key(s.user_id, &s.key));
    let pk = key(PREFIX_SESSION_PEER, &s.key);
    if let Some(link) = st.get::<PeerSessionLink>(&pk)? {
        st.remove(&pk);
        let index = [
            peer_sessions_prefix(&link.peer, &link.peer_sid),
            s.key.to_vec(),
        ]
        .concat();
        st.remove(&index);
    }
    Ok(())
}

/// Records use of a session, sliding its idle expiry.
pub(super) fn touch(
    st: &mut Staged<'_>,
    now: u64,
    k: &SecretHash,
) -> Result<CommandResult, StorageError> {
    let sk = key(PREFIX_SESSION, k);
    let Some(mut s) = st.get::<Session>(&sk)? else {
        return refuse(ErrorCode::SessionNotFound, "no such session");
    };
    if !s.alive_at(now) {
        return refuse(ErrorCode::SessionNotFound, "the session has ended");
    }
    s.last_seen_ms = s.last_seen_ms.max(now);
    st.put(&sk, &s)?;
    Ok(Ok(Outcome::Session(Box::new(s))))
}

/// Ends session `k` and its tokens; the sites that got tickets in it are
/// to be told (the outbox).
pub(super) fn revoke(
    st: &mut Staged<'_>,
    now: u64,
    k: &SecretHash,
) -> Result<CommandResult, StorageError> {
    let Some(s) = st.get::<Session>(&key(PREFIX_SESSION, k))? else {
        return refuse(ErrorCode::SessionNotFound, "no such session");
    };
    remove_records(st, &s)?;
    super::outbox::enqueue(st, now, &s.sites, &s.sid, s.user_id)?;
    let tokens_revoked = tokens::revoke_session_tokens(st, k)?;
    Ok(Ok(Outcome::Revoked(RevokedSession {
        sid: s.sid,
        user_id: s.user_id,
        sites: s.sites,
        tokens_revoked,
    })))
}

/// Ends every session of the user named `username`, at an administrator's
/// request.
pub(super) fn revoke_all_of(
    st: &mut Staged<'_>,
    now: u64,
    username: &str,
) -> Result<CommandResult, StorageError> {
    let Some(user) = users::by_name(st, username)? else {
        return refuse(ErrorCode::UserNotFound, format!("no user named {username}"));
    };
    Ok(Ok(Outcome::RevokedAll(end_user_sessions(
        st, now, user.id,
    )?)))
}

/// Ends every session of user `user_id` with its tokens (the account was
/// disabled, its password reset, or an administrator asked).
pub(super) fn end_user_sessions(
    st: &mut Staged<'_>,
    now: u64,
    user_id: u64,
) -> Result<Vec<RevokedSession>, StorageError> {
    let prefix = user_sessions_prefix(user_id);
    let mut ended = Vec::new();
    for uk in st.keys_with_prefix(&prefix)? {
        let mut session = [0u8; 32];
        session.copy_from_slice(&uk[prefix.len()..]);
        match revoke(st, now, &session)? {
            Ok(Outcome::Revoked(r)) => ended.push(r),
            // A dangling index entry: nothing left to end.
            _ => st.remove(&uk),
        }
    }
    Ok(ended)
}
