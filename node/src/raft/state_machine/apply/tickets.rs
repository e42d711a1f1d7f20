//! Login tickets (authorization codes): issued in a live session, redeemed
//! once. Redemption checks and marks the ticket in one apply, so it
//! succeeds once cluster-wide; a second redemption revokes what the first
//! one got.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::sso::{AccessToken, LoginTicket, RefreshToken, SecretHash, Session};
use baa_proto::ErrorCode;

use super::super::keyspace::{
    key, session_token_key, PREFIX_REFRESH, PREFIX_SESSION, PREFIX_TICKET, PREFIX_TOKEN,
};
use super::super::staged::{invalid, refuse, Staged};
use super::tokens;
use crate::raft::StorageError;

/// Stores a ticket for a site in a live session, which then counts the
/// site among those to tell at logout.
pub(super) fn issue(
    st: &mut Staged<'_>,
    now: u64,
    t: &LoginTicket,
) -> Result<CommandResult, StorageError> {
    let sk = key(PREFIX_SESSION, &t.session_key);
    let Some(mut s) = st.get::<Session>(&sk)? else {
        return refuse(ErrorCode::SessionNotFound, "the session has ended");
    };
    if !s.alive_at(now) {
        return refuse(ErrorCode::SessionNotFound, "the session has ended");
    }
    let tk = key(PREFIX_TICKET, &t.hash);
    if st.get::<LoginTicket>(&tk)?.is_some() {
        return Ok(Err(invalid("ticket collision")));
    }
    let lifetime = t.expires_ms.saturating_sub(t.issued_ms).min(60_000);
    let mut t = t.clone();
    t.issued_ms = now;
    t.expires_ms = now.saturating_add(lifetime);
    t.used = false;
    t.tokens.clear();
    st.put(&tk, &t)?;
    if !s.sites.contains(&t.client_id) {
        s.sites.push(t.client_id.clone());
    }
    s.last_seen_ms = s.last_seen_ms.max(now);
    st.put(&sk, &s)?;
    Ok(Ok(Outcome::Done))
}

/// Redeems a ticket for tokens, once.
#[allow(clippy::too_many_arguments)]
pub(super) fn redeem(
    st: &mut Staged<'_>,
    now: u64,
    hash: &SecretHash,
    client_id: &str,
    redirect_uri: &str,
    verifier_challenge: Option<&str>,
    token: &AccessToken,
    refresh: Option<&RefreshToken>,
) -> Result<CommandResult, StorageError> {
    let bad = |m: &str| refuse(ErrorCode::InvalidGrant, m);
    let tk = key(PREFIX_TICKET, hash);
    let Some(mut t) = st.get::<LoginTicket>(&tk)? else {
        return bad("the ticket is unknown or expired");
    };
    if t.client_id != client_id {
        return bad("the ticket was issued to another client");
    }
    if t.used {
        // A second redemption: whoever holds the first tokens may be an
        // attacker who replayed the ticket, so they go too (RFC 6749 §4.1.2).
        for h in std::mem::take(&mut t.tokens) {
            if let Some(at) = st.get::<AccessToken>(&key(PREFIX_TOKEN, &h))? {
                st.remove(&key(PREFIX_TOKEN, &h));
                st.remove(&session_token_key(&at.session_key, &h));
            }
            if let Some(rt) = st.get::<RefreshToken>(&key(PREFIX_REFRESH, &h))? {
                tokens::revoke_family(st, &rt.family)?;
            }
        }
        tokens::revoke_client_tokens(st, &t.session_key, client_id)?;
        st.put(&tk, &t)?;
        return bad("the ticket was already redeemed");
    }
    if now >= t.expires_ms {
        return bad("the ticket has expired");
    }
    if t.redirect_uri != redirect_uri {
        return bad("redirect_uri does not match the one the ticket was issued for");
    }
    match (&t.code_challenge, verifier_challenge) {
        (Some(c), Some(v)) if c == v => {}
        (Some(_), Some(_)) => return bad("the PKCE code_verifier does not match"),
        (Some(_), None) => return bad("a PKCE code_verifier is required"),
        (None, Some(_)) => return bad("no PKCE challenge was sent with the request"),
        (None, None) => {}
    }
    let Some(session) = st.get::<Session>(&key(PREFIX_SESSION, &t.session_key))? else {
        return bad("the session has ended");
    };
    if !session.alive_at(now) {
        return bad("the session has ended");
    }
    t.used = true;
    t.tokens.push(token.hash);
    if let Some(r) = refresh {
        t.tokens.push(r.hash);
    }
    st.put(&tk, &t)?;
    let scopes = t.scopes.clone();
    tokens::grant(
        st,
        now,
        &session,
        client_id,
        &scopes,
        t.nonce.clone(),
        token,
        refresh,
    )
}
