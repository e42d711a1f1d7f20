//! Single-sign-on records in the state machine: apply of the SSO commands and
//! the readers request handlers use. Ticket redemption checks and marks the
//! ticket in one apply, so it succeeds once cluster-wide.

use baa_proto::command::{CommandResult, Op, Outcome};
use baa_proto::model::User;
use baa_proto::sso::{
    AccessToken, DeviceGrant, DevicePoll, DeviceStatus, Failures, Grant, LoginTicket, RefreshToken,
    RevokedSession, SecretHash, Session, SigningKey, Site, SiteOptions, ThrottlePolicy,
    ThrottleRule, ThrottleSubject, Trust,
};
use baa_proto::ErrorCode;

use super::keyspace::{
    family_key, key, session_token_key, trust_key, user_by_id_key, user_session_key,
    user_sessions_prefix, RequestRecord, KEY_CURRENT_KID, KEY_DEVICE_GRANTS, KEY_PAIRWISE_SALT,
    KEY_SWEEP_CURSOR, PREFIX_DEVICE, PREFIX_FAILURES, PREFIX_FAMILY, PREFIX_KEY, PREFIX_REFRESH,
    PREFIX_REQUEST, PREFIX_SESSION, PREFIX_SESSION_BY_SID, PREFIX_SESSION_TOKENS, PREFIX_SITE,
    PREFIX_SITE_OPTIONS, PREFIX_TICKET, PREFIX_TOKEN, PREFIX_TRUST, PREFIX_USER, PREFIX_USER_CODE,
};
use super::staged::{invalid, refuse, Staged};
use crate::raft::StorageError;

/// Device grants stored at once, at most: an anonymous client may start
/// them, so they are capped cluster-wide (each expires in minutes).
pub const MAX_DEVICE_GRANTS: u64 = 10_000;

/// How long a used ticket is kept after expiry, so a late second redemption
/// still finds it and revokes the first one's tokens.
const USED_TICKET_GRACE_MS: u64 = 10 * 60 * 1000;

/// Applies an SSO command.
pub(super) fn apply_sso(
    st: &mut Staged<'_>,
    now: u64,
    op: &Op,
) -> Result<CommandResult, StorageError> {
    match op {
        Op::CreateSession {
            session,
            account,
            source,
        } => create_session(st, now, session, account, source),
        Op::TouchSession { key: k } => {
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
        Op::RevokeSession { key: k } => revoke_session(st, k),
        Op::AddSite(site) => register_site(st, now, site, SiteOptions::default()),
        Op::RegisterSite { site, options } => register_site(st, now, site, *options),
        Op::RemoveSite { client_id } => {
            let k = key(PREFIX_SITE, client_id.as_bytes());
            if st.get::<Site>(&k)?.is_none() {
                return refuse(ErrorCode::SiteNotFound, format!("no site {client_id}"));
            }
            st.remove(&k);
            st.remove(&key(PREFIX_SITE_OPTIONS, client_id.as_bytes()));
            for tk in st.keys_with_prefix(PREFIX_TRUST)? {
                if tk.len() >= PREFIX_TRUST.len() + 8
                    && &tk[PREFIX_TRUST.len() + 8..] == client_id.as_bytes()
                {
                    st.remove(&tk);
                    let mut id = [0u8; 8];
                    id.copy_from_slice(&tk[PREFIX_TRUST.len()..PREFIX_TRUST.len() + 8]);
                    revoke_user_client_tokens(st, u64::from_be_bytes(id), client_id)?;
                }
            }
            Ok(Ok(Outcome::Removed(true)))
        }
        Op::SetTrust(trust) => {
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
            let mut t = trust.as_ref().clone();
            t.created_ms = created_ms;
            t.updated_ms = now;
            st.put(&k, &t)?;
            Ok(Ok(Outcome::Trust(Box::new(t))))
        }
        Op::RevokeTrust { user_id, client_id } => {
            let k = trust_key(*user_id, client_id);
            let existed = st.get::<Trust>(&k)?.is_some();
            if !existed {
                return refuse(ErrorCode::TrustNotFound, "no such trust relationship");
            }
            st.remove(&k);
            revoke_user_client_tokens(st, *user_id, client_id)?;
            Ok(Ok(Outcome::Removed(true)))
        }
        Op::IssueTicket(t) => issue_ticket(st, now, t),
        Op::RedeemTicket {
            hash,
            client_id,
            redirect_uri,
            verifier_challenge,
            token,
            refresh,
        } => redeem(
            st,
            now,
            hash,
            client_id,
            redirect_uri,
            verifier_challenge.as_deref(),
            token,
            refresh.as_deref(),
        ),
        Op::Refresh {
            hash,
            client_id,
            token,
            refresh,
        } => refresh_tokens(st, now, hash, client_id, token, refresh),
        Op::StartDevice(d) => {
            let k = key(PREFIX_DEVICE, &d.device_hash);
            let uk = key(PREFIX_USER_CODE, d.user_code.as_bytes());
            if st.get::<DeviceGrant>(&k)?.is_some() || st.get::<SecretHash>(&uk)?.is_some() {
                return Ok(Err(invalid("device or user code collision")));
            }
            let grants = st.get::<u64>(KEY_DEVICE_GRANTS)?.unwrap_or(0);
            if grants >= MAX_DEVICE_GRANTS {
                return refuse(
                    ErrorCode::TemporarilyUnavailable,
                    "too many device authorizations are pending; retry later",
                );
            }
            st.put(KEY_DEVICE_GRANTS, &(grants + 1))?;
            let lifetime = d.expires_ms.saturating_sub(d.issued_ms);
            let mut d = d.as_ref().clone();
            d.issued_ms = now;
            d.expires_ms = now.saturating_add(lifetime);
            d.last_poll_ms = 0;
            d.status = DeviceStatus::Pending;
            st.put(&k, &d)?;
            st.put(&uk, &d.device_hash)?;
            Ok(Ok(Outcome::Done))
        }
        Op::DecideDevice {
            user_code,
            session_key,
            approve,
        } => decide_device(st, now, user_code, session_key, *approve),
        Op::PollDevice {
            device_hash,
            client_id,
            token,
            refresh,
        } => poll_device(st, now, device_hash, client_id, token, refresh.as_deref()),
        Op::RevokeToken { hash } => {
            let k = key(PREFIX_TOKEN, hash);
            if let Some(t) = st.get::<AccessToken>(&k)? {
                st.remove(&k);
                st.remove(&session_token_key(&t.session_key, hash));
                return Ok(Ok(Outcome::Removed(true)));
            }
            // A refresh token takes its whole family with it (RFC 7009 §2.1).
            // and the access tokens of the same grant (its client in its session).
            match st.get::<RefreshToken>(&key(PREFIX_REFRESH, hash))? {
                Some(r) => {
                    revoke_family(st, &r.family)?;
                    revoke_client_tokens(st, &r.session_key, &r.client_id)?;
                    Ok(Ok(Outcome::Removed(true)))
                }
                None => Ok(Ok(Outcome::Removed(false))),
            }
        }
        Op::RecordSignInFailure {
            account,
            source,
            rule,
        } => record_failure(st, now, account, source, rule),
        Op::RecordFailedSignIn {
            account,
            source,
            policy,
        } => record_failed_sign_in(st, now, account, source, policy),
        Op::Sweep {
            request_cutoff_ms,
            auto_request_cutoff_ms,
            budget,
        } => sweep(
            st,
            now,
            Cutoffs {
                requests: *request_cutoff_ms,
                auto_requests: *auto_request_cutoff_ms,
            },
            *budget,
        ),
        Op::AddSigningKey {
            key: new,
            publish_old_for_ms,
        } => {
            let k = key(PREFIX_KEY, new.kid.as_bytes());
            if st.get::<SigningKey>(&k)?.is_some() {
                return Ok(Err(invalid(format!("key {} exists", new.kid))));
            }
            if let Some(old_kid) = st.get::<String>(KEY_CURRENT_KID)? {
                let ok = key(PREFIX_KEY, old_kid.as_bytes());
                if let Some(mut old) = st.get::<SigningKey>(&ok)? {
                    old.retired_ms = Some(now);
                    old.publish_until_ms = Some(now.saturating_add(*publish_old_for_ms));
                    st.put(&ok, &old)?;
                }
            }
            let mut new = new.as_ref().clone();
            new.created_ms = now;
            new.retired_ms = None;
            new.publish_until_ms = None;
            st.put(&k, &new)?;
            st.put(KEY_CURRENT_KID, &new.kid)?;
            Ok(Ok(Outcome::Done))
        }
        Op::PurgeExpired => purge_expired(st, now),
        Op::SetPairwiseSalt { salt } => {
            if st
                .get::<baa_proto::sso::PairwiseSalt>(KEY_PAIRWISE_SALT)?
                .is_none()
            {
                st.put(KEY_PAIRWISE_SALT, salt)?;
            }
            Ok(Ok(Outcome::Done))
        }
        Op::RevokeUserSessions { username } => {
            let Some(user) = st.get::<User>(&key(PREFIX_USER, username.as_bytes()))? else {
                return refuse(ErrorCode::UserNotFound, format!("no user named {username}"));
            };
            Ok(Ok(Outcome::RevokedAll(end_user_sessions(st, user.id)?)))
        }
        Op::CreateUser(_)
        | Op::UpdateUser { .. }
        | Op::SetUserDisabled { .. }
        | Op::PurgeRequestResults { .. } => Ok(Err(invalid("not an SSO command"))),
    }
}

fn register_site(
    st: &mut Staged<'_>,
    now: u64,
    site: &Site,
    options: SiteOptions,
) -> Result<CommandResult, StorageError> {
    if let Err(e) = baa_proto::model::validate_site(site) {
        return Ok(Err(invalid(e)));
    }
    let k = key(PREFIX_SITE, site.client_id.as_bytes());
    if st.get::<Site>(&k)?.is_some() {
        return refuse(
            ErrorCode::SiteExists,
            format!("site {} already exists", site.client_id),
        );
    }
    let mut site = site.clone();
    site.created_ms = now;
    st.put(&k, &site)?;
    if options != SiteOptions::default() {
        st.put(
            &key(PREFIX_SITE_OPTIONS, site.client_id.as_bytes()),
            &options,
        )?;
    }
    Ok(Ok(Outcome::Site(Box::new(site))))
}

fn user_by_id(st: &Staged<'_>, id: u64) -> Result<Option<User>, StorageError> {
    match st.get::<String>(&user_by_id_key(id))? {
        Some(name) => st.get::<User>(&key(PREFIX_USER, name.as_bytes())),
        None => Ok(None),
    }
}

fn create_session(
    st: &mut Staged<'_>,
    now: u64,
    session: &Session,
    account: &SecretHash,
    source: &str,
) -> Result<CommandResult, StorageError> {
    let keys = ThrottleSubject::of_sign_in(account, source).map(|s| key(PREFIX_FAILURES, &s.key()));
    for k in &keys {
        if let Some(f) = st.get::<Failures>(k)? {
            if f.locked_at(now) {
                return refuse(
                    ErrorCode::TooManyAttempts,
                    format!(
                        "locked for {} s more",
                        f.locked_until_ms.saturating_sub(now).div_ceil(1000)
                    ),
                );
            }
        }
    }
    let Some(user) = user_by_id(st, session.user_id)? else {
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
    st.put(&sk, &s)?;
    st.put(&key(PREFIX_SESSION_BY_SID, s.sid.as_bytes()), &s.key)?;
    st.put(&user_session_key(s.user_id, &s.key), &())?;
    // A right password forgives the account's failures, from here and all over.
    let [pair_key, account_key, _] = keys;
    st.remove(&pair_key);
    st.remove(&account_key);
    Ok(Ok(Outcome::Session(Box::new(s))))
}

fn revoke_session(st: &mut Staged<'_>, k: &SecretHash) -> Result<CommandResult, StorageError> {
    let sk = key(PREFIX_SESSION, k);
    let Some(s) = st.get::<Session>(&sk)? else {
        return refuse(ErrorCode::SessionNotFound, "no such session");
    };
    st.remove(&sk);
    st.remove(&key(PREFIX_SESSION_BY_SID, s.sid.as_bytes()));
    st.remove(&user_session_key(s.user_id, k));
    let tokens_revoked = revoke_session_tokens(st, k)?;
    Ok(Ok(Outcome::Revoked(RevokedSession {
        sid: s.sid,
        user_id: s.user_id,
        sites: s.sites,
        tokens_revoked,
    })))
}

/// Removes every token of session `k` (access and refresh); returns how many.
fn revoke_session_tokens(st: &mut Staged<'_>, k: &SecretHash) -> Result<u64, StorageError> {
    revoke_tokens_where(st, k, |_| true)
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
fn revoke_client_tokens(
    st: &mut Staged<'_>,
    session: &SecretHash,
    client_id: &str,
) -> Result<u64, StorageError> {
    revoke_tokens_where(st, session, |c| c == client_id)
}

/// Removes the tokens `client_id` holds in any session of user `user_id`
/// (its trust was revoked, or the site removed).
fn revoke_user_client_tokens(
    st: &mut Staged<'_>,
    user_id: u64,
    client_id: &str,
) -> Result<u64, StorageError> {
    let prefix = user_sessions_prefix(user_id);
    let mut n = 0;
    for uk in st.keys_with_prefix(&prefix)? {
        let mut session = [0u8; 32];
        session.copy_from_slice(&uk[prefix.len()..]);
        n += revoke_client_tokens(st, &session, client_id)?;
    }
    Ok(n)
}

/// Ends every session of user `user_id` with its tokens (the account was
/// disabled, its password reset, or an administrator asked).
pub(super) fn end_user_sessions(
    st: &mut Staged<'_>,
    user_id: u64,
) -> Result<Vec<RevokedSession>, StorageError> {
    let prefix = user_sessions_prefix(user_id);
    let mut ended = Vec::new();
    for uk in st.keys_with_prefix(&prefix)? {
        let mut session = [0u8; 32];
        session.copy_from_slice(&uk[prefix.len()..]);
        match revoke_session(st, &session)? {
            Ok(Outcome::Revoked(r)) => ended.push(r),
            // A dangling index entry: nothing left to end.
            _ => st.remove(&uk),
        }
    }
    Ok(ended)
}

fn issue_ticket(
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

#[allow(clippy::too_many_arguments)]
fn redeem(
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
                revoke_family(st, &rt.family)?;
            }
        }
        revoke_client_tokens(st, &t.session_key, client_id)?;
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
    grant(
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

/// Stores the access token (and refresh token) of a grant for `session`
/// and describes it, or refuses when the user can no longer sign in.
#[allow(clippy::too_many_arguments)]
fn grant(
    st: &mut Staged<'_>,
    now: u64,
    session: &Session,
    client_id: &str,
    scopes: &[String],
    nonce: Option<String>,
    token: &AccessToken,
    refresh: Option<&RefreshToken>,
) -> Result<CommandResult, StorageError> {
    let Some(mut user) = user_by_id(st, session.user_id)? else {
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
    let lifetime = token.expires_ms.saturating_sub(token.issued_ms);
    let expires_ms = now.saturating_add(lifetime).min(session.absolute_expiry_ms);
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

/// A live session by key, or why not.
fn live_session(
    st: &Staged<'_>,
    now: u64,
    k: &SecretHash,
) -> Result<Option<Session>, StorageError> {
    Ok(st
        .get::<Session>(&key(PREFIX_SESSION, k))?
        .filter(|s| s.alive_at(now)))
}

/// Revokes every refresh token of a family.
fn revoke_family(st: &mut Staged<'_>, family: &SecretHash) -> Result<(), StorageError> {
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

fn refresh_tokens(
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
        token,
        Some(&next),
    )
}

fn decide_device(
    st: &mut Staged<'_>,
    now: u64,
    user_code: &str,
    session_key: &SecretHash,
    approve: bool,
) -> Result<CommandResult, StorageError> {
    let Some(hash) = st.get::<SecretHash>(&key(PREFIX_USER_CODE, user_code.as_bytes()))? else {
        return refuse(ErrorCode::InvalidGrant, "no such code");
    };
    let dk = key(PREFIX_DEVICE, &hash);
    let Some(mut d) = st.get::<DeviceGrant>(&dk)? else {
        return refuse(ErrorCode::InvalidGrant, "no such code");
    };
    if now >= d.expires_ms {
        return refuse(ErrorCode::ExpiredToken, "the code has expired");
    }
    if d.status != DeviceStatus::Pending {
        return refuse(ErrorCode::InvalidGrant, "the code was already used");
    }
    if live_session(st, now, session_key)?.is_none() {
        return refuse(ErrorCode::SessionNotFound, "the session has ended");
    }
    d.status = if approve {
        DeviceStatus::Approved {
            session_key: *session_key,
        }
    } else {
        DeviceStatus::Denied
    };
    st.put(&dk, &d)?;
    Ok(Ok(Outcome::DeviceDecided(d.client_id)))
}

fn poll_device(
    st: &mut Staged<'_>,
    now: u64,
    device_hash: &SecretHash,
    client_id: &str,
    token: &AccessToken,
    refresh: Option<&RefreshToken>,
) -> Result<CommandResult, StorageError> {
    let dk = key(PREFIX_DEVICE, device_hash);
    let Some(mut d) = st.get::<DeviceGrant>(&dk)? else {
        return refuse(ErrorCode::InvalidGrant, "the device code is unknown");
    };
    if d.client_id != client_id {
        return refuse(
            ErrorCode::InvalidGrant,
            "the device code belongs to another client",
        );
    }
    if now >= d.expires_ms {
        return refuse(ErrorCode::ExpiredToken, "the device code has expired");
    }
    let too_soon = d.last_poll_ms > 0 && now < d.last_poll_ms + d.interval_s * 1000;
    d.last_poll_ms = now;
    if too_soon {
        // RFC 8628 §3.5: every slow_down adds 5 seconds to the interval.
        d.interval_s += 5;
        st.put(&dk, &d)?;
        return Ok(Ok(Outcome::DevicePending(DevicePoll::SlowDown(
            d.interval_s,
        ))));
    }
    match d.status.clone() {
        DeviceStatus::Pending => {
            st.put(&dk, &d)?;
            Ok(Ok(Outcome::DevicePending(DevicePoll::Pending)))
        }
        DeviceStatus::Denied => refuse(ErrorCode::AccessDenied, "the user declined"),
        DeviceStatus::Done => refuse(ErrorCode::InvalidGrant, "the device code was already used"),
        DeviceStatus::Approved { session_key } => {
            let Some(session) = live_session(st, now, &session_key)? else {
                return refuse(ErrorCode::InvalidGrant, "the approving session has ended");
            };
            d.status = DeviceStatus::Done;
            st.put(&dk, &d)?;
            let scopes = d.scopes.clone();
            grant(st, now, &session, client_id, &scopes, None, token, refresh)
        }
    }
}

fn record_failure(
    st: &mut Staged<'_>,
    now: u64,
    account: &SecretHash,
    source: &str,
    rule: &ThrottleRule,
) -> Result<CommandResult, StorageError> {
    let subjects = [
        (
            ThrottleSubject::Account(*account),
            rule.max_account_failures,
        ),
        (
            ThrottleSubject::Source(source.to_string()),
            rule.max_source_failures,
        ),
    ];
    for (subject, max) in subjects {
        let k = key(PREFIX_FAILURES, &subject.key());
        let f = st.get::<Failures>(&k)?.unwrap_or_default();
        st.put(&k, &f.record(now, rule, max.max(1)))?;
    }
    Ok(Ok(Outcome::Done))
}

fn record_failed_sign_in(
    st: &mut Staged<'_>,
    now: u64,
    account: &SecretHash,
    source: &str,
    p: &ThrottlePolicy,
) -> Result<CommandResult, StorageError> {
    let rule = ThrottleRule {
        window_ms: p.window_ms,
        max_account_failures: p.max_account_failures,
        max_source_failures: p.max_source_failures,
        lockout_ms: p.lockout_ms,
    };
    for subject in ThrottleSubject::of_sign_in(account, source) {
        let k = key(PREFIX_FAILURES, &subject.key());
        let f = st.get::<Failures>(&k)?.unwrap_or_default();
        let f = match subject {
            ThrottleSubject::Pair(..) => f.record_progressive(now, p),
            ThrottleSubject::Account(_) => f.record(now, &rule, p.max_account_failures.max(1)),
            ThrottleSubject::Source(_) => f.record(now, &rule, p.max_source_failures.max(1)),
        };
        st.put(&k, &f)?;
    }
    Ok(Ok(Outcome::Done))
}

/// When remembered request results expire (see `Op::Sweep`).
#[derive(Clone, Copy)]
struct Cutoffs {
    requests: u64,
    auto_requests: u64,
}

/// Every expired record, whatever its number: the `PurgeExpired` of earlier
/// releases (request results are `PurgeRequestResults`'s).
fn purge_expired(st: &mut Staged<'_>, now: u64) -> Result<CommandResult, StorageError> {
    let mut n = 0u64;
    for prefix in [
        PREFIX_SESSION,
        PREFIX_TICKET,
        PREFIX_TOKEN,
        PREFIX_REFRESH,
        PREFIX_DEVICE,
        PREFIX_FAILURES,
        PREFIX_KEY,
    ] {
        for k in st.keys_with_prefix(prefix)? {
            n += purge_if_expired(st, now, &k, None)?;
        }
    }
    Ok(Ok(Outcome::Purged(n)))
}

/// Looks at the next `budget` keys after the cursor and removes what has
/// expired; the cursor moves on, back to the start after the last key.
fn sweep(
    st: &mut Staged<'_>,
    now: u64,
    cutoffs: Cutoffs,
    budget: u32,
) -> Result<CommandResult, StorageError> {
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
        st.remove(k);
        st.remove(&key(PREFIX_SESSION_BY_SID, s.sid.as_bytes()));
        st.remove(&user_session_key(s.user_id, &s.key));
        return Ok(1 + revoke_session_tokens(st, &s.key)?);
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
    if let (Some(c), true) = (cutoffs, k.starts_with(PREFIX_REQUEST)) {
        let auto = k[PREFIX_REQUEST.len()..].starts_with(b"auto-");
        let cutoff = if auto { c.auto_requests } else { c.requests };
        return gone(st, k, |r: &RequestRecord| {
            (r.time_ms < cutoff).then(Vec::new)
        });
    }
    Ok(0)
}
