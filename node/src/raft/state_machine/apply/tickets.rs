//! Login tickets (authorization codes), redeemed once. A sealed ticket is
//! issued without a write (it carries its own checks) and its redemption
//! marks its id spent in the same apply that grants the tokens, so it
//! succeeds once cluster-wide; a second redemption revokes what the first
//! one got. Stored tickets (`IssueTicket`, `RedeemTicket`) are those of
//! earlier releases, still applied from their logs.

use baa_proto::command::{CommandResult, Outcome};
use baa_proto::sso::{
    secret_hash, AccessToken, LoginTicket, RefreshToken, SealedTicket, SecretHash, Session,
    SpentOnce, SpentTicket,
};
use baa_proto::ErrorCode;

use super::super::keyspace::{
    key, session_token_key, spent_once_key, PREFIX_REFRESH, PREFIX_SESSION, PREFIX_SPENT,
    PREFIX_TICKET, PREFIX_TOKEN,
};
use super::super::staged::{invalid, refuse, Staged};
use super::tokens::{self, Access};
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
        let issued = std::mem::take(&mut t.tokens);
        revoke_redeemed(st, issued, &t.session_key, client_id)?;
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
        Access::Stored(token),
        refresh,
    )
}

/// A second presentation of a sealed ticket: the first redemption's
/// tokens go ([`revoke_redeemed`]), its sealed access token with them.
fn revoke_replayed(
    st: &mut Staged<'_>,
    now: u64,
    t: &SealedTicket,
    access: Access<'_>,
    tokens_issued: Vec<SecretHash>,
    session_key: &SecretHash,
) -> Result<(), StorageError> {
    revoke_redeemed(st, tokens_issued, session_key, &t.client_id)?;
    if let Access::Sealed { ttl_ms } = access {
        // The sealed access token the first redemption got names this
        // ticket: listed until it would have expired.
        let until = t.expires_ms.max(now).saturating_add(ttl_ms);
        tokens::list_revoked(st, &t.id, until)?;
    }
    Ok(())
}

/// A second redemption: whoever holds the first one's tokens may be an
/// attacker who replayed the ticket, so they go too (RFC 6749 §4.1.2).
fn revoke_redeemed(
    st: &mut Staged<'_>,
    tokens_issued: Vec<SecretHash>,
    session_key: &SecretHash,
    client_id: &str,
) -> Result<(), StorageError> {
    for h in tokens_issued {
        if let Some(at) = st.get::<AccessToken>(&key(PREFIX_TOKEN, &h))? {
            st.remove(&key(PREFIX_TOKEN, &h));
            st.remove(&session_token_key(&at.session_key, &h));
        }
        if let Some(rt) = st.get::<RefreshToken>(&key(PREFIX_REFRESH, &h))? {
            tokens::revoke_family(st, &rt.family)?;
        }
    }
    tokens::revoke_client_tokens(st, session_key, client_id)?;
    Ok(())
}

/// How long a spent ticket's id is kept past the ticket's expiry, so a
/// replay that comes late is still known for one (and revokes).
pub(super) const SPENT_GRACE_MS: u64 = 10 * 60_000;

/// How long after its last recorded use a session's use is recorded again
/// by a login, at most.
const TOUCH_AFTER_MS: u64 = 60_000;

/// The same for a redemption granting a sealed access token: shorter, as
/// a login leaves nothing else behind (a replay after it is refused as
/// expired, without revoking).
pub(super) const SEALED_SPENT_GRACE_MS: u64 = 2 * 60_000;

/// The same for [`redeem_once`]. The grace is what the nodes' clocks may
/// disagree by: the marker goes by the time of the sweep's proposer, and a
/// redemption is checked against its own proposer's time, so a sweep by a
/// clock ahead by more than this could let a replay stamped by a clock
/// behind in before the ticket's expiry. Half a minute is far beyond what
/// synchronised clocks drift by, and keeps half as many markers as two
/// minutes did (each one on disk, in memory and in every snapshot).
pub(super) const ONCE_SPENT_GRACE_MS: u64 = 30_000;

/// What the token request presented with a ticket.
pub(super) struct Presented<'a> {
    /// The authenticated client.
    pub client_id: &'a str,
    /// Its `redirect_uri`.
    pub redirect_uri: &'a str,
    /// S256 of its `code_verifier`.
    pub verifier_challenge: Option<&'a str>,
}

impl<'a> Presented<'a> {
    /// What a redemption command carries.
    pub fn new(
        client_id: &'a str,
        redirect_uri: &'a str,
        verifier_challenge: &'a Option<String>,
    ) -> Self {
        Self {
            client_id,
            redirect_uri,
            verifier_challenge: verifier_challenge.as_deref(),
        }
    }
}

/// Redeems a sealed ticket, once (see the module comment), for a stored
/// or a sealed access token, marking it spent under its id (`S/`): the
/// commands of the releases before [`redeem_once`].
pub(super) fn redeem_sealed(
    st: &mut Staged<'_>,
    now: u64,
    t: &SealedTicket,
    p: &Presented<'_>,
    access: Access<'_>,
    refresh: Option<&RefreshToken>,
) -> Result<CommandResult, StorageError> {
    spend(st, now, t, p, access, refresh, Marker::Keyed)
}

/// Redeems a sealed ticket for a sealed access token, leaving only its
/// spent marker: keyed by the time it may go, so markers are written and
/// swept in time order, and holding a fingerprint of the request, so that
/// a retry of the same request (a leader change lost its answer) gets the
/// grant again instead of being taken for a replay. A login then writes
/// no remembered result, which would carry the whole grant for a minute.
pub(super) fn redeem_once(
    st: &mut Staged<'_>,
    now: u64,
    t: &SealedTicket,
    p: &Presented<'_>,
    access_ttl_ms: u64,
    refresh: Option<&RefreshToken>,
    request_id: Option<&str>,
) -> Result<CommandResult, StorageError> {
    let request = match request_id {
        Some(id) => {
            let mut f = [0u8; 16];
            f.copy_from_slice(&secret_hash(id.as_bytes())[..16]);
            f
        }
        None => NO_REQUEST,
    };
    let access = Access::Sealed {
        ttl_ms: access_ttl_ms,
    };
    spend(st, now, t, p, access, refresh, Marker::Once { request })
}

/// The request fingerprint that no retry matches: a command without a
/// request id, or a redemption whose tokens a replay revoked.
const NO_REQUEST: [u8; 16] = [0; 16];

/// How a redemption marks its ticket spent.
#[derive(Clone, Copy)]
enum Marker {
    /// `S/` ticket id → `SpentTicket`.
    Keyed,
    /// `E/` keep-until ++ ticket id → `SpentOnce` with this fingerprint.
    Once { request: [u8; 16] },
}

/// The sealed redemption under either marker: either one found refuses
/// (and revokes), whichever command wrote it.
fn spend(
    st: &mut Staged<'_>,
    now: u64,
    t: &SealedTicket,
    p: &Presented<'_>,
    access: Access<'_>,
    refresh: Option<&RefreshToken>,
    marker: Marker,
) -> Result<CommandResult, StorageError> {
    let bad = |m: &str| refuse(ErrorCode::InvalidGrant, m);
    if t.client_id != p.client_id {
        return bad("the ticket was issued to another client");
    }
    let once_key = spent_once_key(t.expires_ms.saturating_add(ONCE_SPENT_GRACE_MS), &t.id);
    if let Some(spent) = st.get::<SpentOnce>(&once_key)? {
        if let Marker::Once { request } = marker {
            if request != NO_REQUEST && spent.request == request {
                // The same request again: what it was granted, unwritten.
                let Some(session) = tokens::live_session(st, now, &t.session_key)? else {
                    return bad("the session has ended");
                };
                let nonce = t.nonce.clone();
                return tokens::grant(
                    st,
                    now,
                    &session,
                    p.client_id,
                    &t.scopes,
                    nonce,
                    access,
                    None,
                );
            }
        }
        revoke_replayed(st, now, t, access, spent.tokens, &t.session_key)?;
        let revoked = SpentOnce {
            request: NO_REQUEST,
            tokens: Vec::new(),
        };
        st.put(&once_key, &revoked)?;
        return bad("the ticket was already redeemed");
    }
    let spent_key = key(PREFIX_SPENT, &t.id);
    if let Some(spent) = st.get::<SpentTicket>(&spent_key)? {
        revoke_replayed(st, now, t, access, spent.tokens.clone(), &spent.session_key)?;
        st.put(
            &spent_key,
            &SpentTicket {
                tokens: Vec::new(),
                ..spent
            },
        )?;
        return bad("the ticket was already redeemed");
    }
    if now >= t.expires_ms {
        return bad("the ticket has expired");
    }
    if t.redirect_uri != p.redirect_uri {
        return bad("redirect_uri does not match the one the ticket was issued for");
    }
    match (&t.code_challenge, p.verifier_challenge) {
        (Some(c), Some(v)) if c == v => {}
        (Some(_), Some(_)) => return bad("the PKCE code_verifier does not match"),
        (Some(_), None) => return bad("a PKCE code_verifier is required"),
        (None, Some(_)) => return bad("no PKCE challenge was sent with the request"),
        (None, None) => {}
    }
    let sk = key(PREFIX_SESSION, &t.session_key);
    let Some(mut session) = st.get::<Session>(&sk)? else {
        return bad("the session has ended");
    };
    if !session.alive_at(now) {
        return bad("the session has ended");
    }
    let mut issued = Vec::new();
    if let Access::Stored(token) = access {
        issued.push(token.hash);
    }
    if let Some(r) = refresh {
        issued.push(r.hash);
    }
    match marker {
        Marker::Keyed => {
            let spent = SpentTicket {
                session_key: t.session_key,
                client_id: t.client_id.clone(),
                tokens: issued,
                keep_until_ms: t.expires_ms.saturating_add(match access {
                    Access::Stored(_) => SPENT_GRACE_MS,
                    Access::Sealed { .. } => SEALED_SPENT_GRACE_MS,
                }),
            };
            st.put(&spent_key, &spent)?;
        }
        Marker::Once { request } => {
            let spent = SpentOnce {
                request,
                tokens: issued,
            };
            st.put(&once_key, &spent)?;
        }
    }
    // The site got a ticket in this session: it hears of its end.
    let new_site = !session.sites.contains(&t.client_id);
    if new_site {
        session.sites.push(t.client_id.clone());
    }
    // A sealed-access login rewrites the session only when it changes it
    // enough to matter (a new site, or use that moves the idle expiry by
    // a sixteenth of the timeout, at most a minute): most logins write
    // nothing but their spent marker.
    let stale = now.saturating_sub(session.last_seen_ms)
        >= (session.idle_timeout_ms / 16).min(TOUCH_AFTER_MS);
    if new_site || stale || matches!(access, Access::Stored(_)) {
        session.last_seen_ms = session.last_seen_ms.max(now);
        st.put(&sk, &session)?;
    }
    let nonce = t.nonce.clone();
    tokens::grant(
        st,
        now,
        &session,
        p.client_id,
        &t.scopes,
        nonce,
        access,
        refresh,
    )
}
