//! The token endpoint's grants and the tokens they mint (RFC 6749 §4.1.3,
//! §6; RFC 8628 §3.4): a ticket redeemed (`sso::tickets`), a refresh token
//! rotated (`sso::refresh`) or a device grant polled (`sso::device`) — each
//! one replicated command — answered with an access token, a refresh token
//! when `offline_access` was granted, and an ID token. Also what a token
//! proves later: userinfo, introspection, revocation.

use baa_proto::command::{Consistency, Op, Outcome};
use baa_proto::sso::{
    secret_hash, subject, DevicePoll, Grant, IdTokenAlg, LoginParams, PairwiseSalt, RefreshToken,
    SealedAccess, Session, Site,
};
use baa_proto::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::grants::{new_tokens, TokenRequest};
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;

/// The RFC 8628 grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The request's grant type, if it is one the agency supports (checked
/// before the client is authenticated).
pub fn grant_type(req: &TokenRequest) -> Result<&str, NodeError> {
    match req.grant_type.as_deref() {
        None => Err(NodeError::invalid("grant_type is required")),
        Some(t @ ("authorization_code" | "refresh_token" | DEVICE_GRANT)) => Ok(t),
        Some(_) => Err(NodeError::BadRequest {
            code: ErrorCode::UnsupportedGrantType,
            message: format!("supported: authorization_code, refresh_token, {DEVICE_GRANT}"),
        }),
    }
}

/// Answers a token request of the authenticated `site`: the token
/// response's JSON body. For a sealed ticket, the tokens are made from the
/// grant this node expects while the redemption is replicated, and used if
/// the grant applied is that one (otherwise made again from it): a login
/// waits for its one Raft write, not for the write and then a signature.
pub async fn grant(
    agency: &Agency,
    site: &Site,
    req: &TokenRequest,
) -> Result<serde_json::Value, NodeError> {
    let grant_type = grant_type(req)?;
    let minted = new_tokens(agency, &site.client_id);
    let (op, sealed_for) = match grant_type {
        "authorization_code" => super::tickets::redemption(agency, site, req, &minted).await?,
        "refresh_token" => (
            super::refresh::rotation(agency, site, req, &minted).await?,
            None,
        ),
        _ => (super::device::poll(agency, site, req, &minted).await?, None),
    };
    let time_ms = now_ms();
    let minter = Minter {
        keys: agency.keys.clone(),
        tickets: agency.tickets.clone(),
        issuer: agency.config.issuer.clone(),
        salt: crate::key_rotation::pairwise_salt(agency).await?,
        alg: agency.state.id_token_alg(&site.client_id)?,
        peer: agency.state.peer_of_client(&site.client_id)?.is_some(),
        id_token: grant_type != "refresh_token",
        sealed_for,
        family: minted.refresh_record.family,
        stored_access: minted.access.clone(),
        time_ms,
    };
    let guess = match &op {
        Op::RedeemSealedOnce {
            ticket,
            access_ttl_ms,
            ..
        } => expected_grant(agency, ticket, time_ms, *access_ttl_ms)?,
        _ => None,
    };
    let write = agency.write_at(op, None, time_ms);
    let (outcome, early) = match guess {
        None => (write.await?, None),
        Some(g) => {
            let m = minter.clone();
            let made = tokio::task::spawn_blocking(move || m.tokens(&g).map(|t| (g, t)));
            let (outcome, made) = tokio::join!(write, made);
            (outcome?, made.ok().and_then(Result::ok))
        }
    };
    let grant = granted(outcome)?;
    let (access, id_token) = match early {
        Some((g, made)) if g == grant => made,
        _ => minter.tokens(&grant)?,
    };
    let mut body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": grant.expires_ms.saturating_sub(now_ms()) / 1000,
        "scope": grant.scopes.join(" "),
    });
    if grant.scopes.iter().any(|s| s == "offline_access") {
        body["refresh_token"] = minted.refresh.clone().into();
    }
    if let Some(t) = id_token {
        body["id_token"] = t.into();
    }
    Ok(body)
}

/// The grant redeeming `ticket` at `time_ms` would make, from this node's
/// state (`None` when the session is not here).
fn expected_grant(
    agency: &Agency,
    ticket: &baa_proto::sso::SealedTicket,
    time_ms: u64,
    ttl_ms: u64,
) -> Result<Option<Grant>, NodeError> {
    let Some(session) = agency.state.session(&ticket.session_key)? else {
        return Ok(None);
    };
    let Some(mut user) = agency.state.user_by_id(session.user_id)? else {
        return Ok(None);
    };
    user.password_hash = None;
    let params = agency
        .state
        .trust(user.id, &ticket.client_id)?
        .map(|t| t.params)
        .unwrap_or_default();
    Ok(Some(Grant {
        user,
        sid: session.sid,
        auth_time_ms: session.auth_time_ms,
        client_id: ticket.client_id.clone(),
        nonce: ticket.nonce.clone(),
        scopes: ticket.scopes.clone(),
        params,
        expires_ms: time_ms
            .saturating_add(ttl_ms)
            .min(session.absolute_expiry_ms),
    }))
}

/// Makes the tokens of a grant: everything it needs, owned, so it can run
/// on a blocking thread while the command is replicated.
#[derive(Clone)]
struct Minter {
    keys: crate::keys::KeyRing,
    tickets: crate::sealing::TicketSealer,
    issuer: String,
    salt: PairwiseSalt,
    alg: IdTokenAlg,
    peer: bool,
    /// Whether the grant type gives an ID token (not a refresh).
    id_token: bool,
    /// The session and ticket id of a sealed access token (`None`: the
    /// stored one).
    sealed_for: Option<(baa_proto::sso::SecretHash, [u8; 16])>,
    /// The family of the refresh token the grant may give.
    family: baa_proto::sso::SecretHash,
    stored_access: String,
    time_ms: u64,
}

impl Minter {
    /// The access token and, when the grant calls for one, the ID token.
    fn tokens(&self, g: &Grant) -> Result<(String, Option<String>), NodeError> {
        let access = match self.sealed_for {
            None => self.stored_access.clone(),
            Some((session_key, grant)) => self.tickets.seal_access(&SealedAccess {
                id: crate::secrets::random_bytes::<16>(),
                grant,
                family: g
                    .scopes
                    .iter()
                    .any(|s| s == "offline_access")
                    .then_some(self.family),
                session_key,
                user_id: g.user.id,
                client_id: g.client_id.clone(),
                scopes: g.scopes.clone(),
                issued_ms: self.time_ms,
                expires_ms: g.expires_ms,
            })?,
        };
        if !self.id_token || !g.scopes.iter().any(|s| s == "openid") {
            return Ok((access, None));
        }
        let token = match self.peer {
            true => peer_id_token(&self.keys, &self.issuer, &self.salt, g, &access)?,
            false => {
                let claims = id_token_claims(&self.issuer, &self.salt, g, &access, self.alg);
                self.keys.sign_id_token(&claims, self.alg)?
            }
        };
        Ok((access, Some(token)))
    }
}

/// The grant of a command's outcome, or the device grant's "not yet".
fn granted(outcome: Outcome) -> Result<Grant, NodeError> {
    match outcome {
        Outcome::Granted(g) => Ok(*g),
        Outcome::DevicePending(DevicePoll::Pending) => Err(NodeError::BadRequest {
            code: ErrorCode::AuthorizationPending,
            message: "the user has not decided yet".into(),
        }),
        Outcome::DevicePending(DevicePoll::SlowDown(s)) => Err(NodeError::BadRequest {
            code: ErrorCode::SlowDown,
            message: format!("poll at most every {s} seconds"),
        }),
        _ => Err(NodeError::Internal("unexpected grant outcome".into())),
    }
}

/// The claims a site sees, by the user's login parameters and the scopes.
fn user_claims(
    salt: &PairwiseSalt,
    user: &baa_proto::model::User,
    client_id: &str,
    params: &LoginParams,
    scopes: &[String],
) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    let (sub, name) = subject(salt, user, client_id, params);
    m.insert("sub".into(), sub.into());
    if scopes.iter().any(|s| s == "profile") {
        m.insert("preferred_username".into(), name.into());
        if params.share_name {
            m.insert("name".into(), user.display_name.clone().into());
        }
    }
    if scopes.iter().any(|s| s == "email") && params.share_email {
        if let Some(e) = &user.email {
            m.insert("email".into(), e.clone().into());
            // An administrator typed it in; no one proved the user receives mail there.
            m.insert("email_verified".into(), false.into());
        }
    }
    m
}

/// `at_hash` (OIDC Core §3.1.3.6): the left half of the access token's
/// hash under the hash of the signing algorithm — SHA-512 for Ed25519, as
/// the OpenID Foundation's conformance suite and other providers take it.
fn at_hash(access_token: &str, alg: IdTokenAlg) -> String {
    match alg {
        IdTokenAlg::Rs256 | IdTokenAlg::Es256 => {
            URL_SAFE_NO_PAD.encode(&Sha256::digest(access_token.as_bytes())[..16])
        }
        IdTokenAlg::EdDsa => {
            URL_SAFE_NO_PAD.encode(&sha2::Sha512::digest(access_token.as_bytes())[..32])
        }
    }
}

/// The claims of a grant's ID token (OIDC Core §2), bound to the access
/// token by `at_hash`.
fn id_token_claims(
    issuer: &str,
    salt: &PairwiseSalt,
    g: &Grant,
    access_token: &str,
    alg: IdTokenAlg,
) -> serde_json::Map<String, serde_json::Value> {
    let now_s = now_ms() / 1000;
    let mut claims = user_claims(salt, &g.user, &g.client_id, &g.params, &g.scopes);
    let at_hash = at_hash(access_token, alg);
    claims.insert("iss".into(), issuer.into());
    claims.insert("aud".into(), g.client_id.clone().into());
    claims.insert("iat".into(), now_s.into());
    claims.insert("exp".into(), (g.expires_ms / 1000).into());
    claims.insert("auth_time".into(), (g.auth_time_ms / 1000).into());
    claims.insert("sid".into(), g.sid.clone().into());
    claims.insert("amr".into(), serde_json::json!(["pwd"]));
    claims.insert("at_hash".into(), at_hash.into());
    if let Some(n) = &g.nonce {
        claims.insert("nonce".into(), n.clone().into());
    }
    claims
}

/// The ID token of a grant to a peer agency: a subject pairwise for that
/// peer (so peers cannot join their users up), and the name, display name
/// and email it needs to make the user's account there. The peering, made
/// by both agencies' administrators, is the user's consent to it.
fn peer_id_token(
    keys: &crate::keys::KeyRing,
    issuer: &str,
    salt: &PairwiseSalt,
    g: &Grant,
    access_token: &str,
) -> Result<String, NodeError> {
    let params = LoginParams {
        account_name: baa_proto::sso::AccountName::Pseudonym,
        share_name: true,
        share_email: true,
    };
    let g = Grant {
        params,
        ..g.clone()
    };
    let mut claims = id_token_claims(issuer, salt, &g, access_token, IdTokenAlg::Rs256);
    claims.insert("preferred_username".into(), g.user.username.clone().into());
    keys.sign_jwt(&claims, crate::keys::ID_TOKEN_TYP)
}

/// A refresh token that can still be used, with its session.
fn live_refresh_token(
    agency: &Agency,
    value: &str,
) -> Result<Option<(RefreshToken, Session)>, NodeError> {
    let Some(r) = agency.state.refresh_token(&secret_hash(value.as_bytes()))? else {
        return Ok(None);
    };
    let Some(s) = agency.state.session(&r.session_key)? else {
        return Ok(None);
    };
    if agency.state.site(&r.client_id)?.is_none() {
        return Ok(None);
    }
    let now = now_ms();
    Ok((!r.used && now < r.expires_ms && s.alive_at(now)).then_some((r, s)))
}

/// What userinfo answers for a live access token: the claims its site may
/// see; `None` when the token is not live (or its user is gone).
pub async fn userinfo(
    agency: &Agency,
    token: &str,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, NodeError> {
    let Some((t, _)) = crate::actors::token_translator::live_token(agency, token).await? else {
        return Ok(None);
    };
    let Some(user) = agency.state.user_by_id(t.user_id)? else {
        return Ok(None);
    };
    let params = agency
        .state
        .trust(t.user_id, &t.client_id)?
        .map(|tr| tr.params)
        .unwrap_or_default();
    let salt = crate::key_rotation::pairwise_salt(agency).await?;
    Ok(Some(user_claims(
        &salt,
        &user,
        &t.client_id,
        &params,
        &t.scopes,
    )))
}

/// Revokes a token at its own site's request (RFC 7009): an unknown token,
/// or another site's, is not an error and changes nothing.
pub async fn revoke(agency: &Agency, site: &Site, token: &str) -> Result<(), NodeError> {
    if crate::sealing::is_sealed_access(token) {
        if let Some(a) = agency.tickets.open_access(token) {
            if a.client_id == site.client_id && now_ms() < a.expires_ms {
                let op = Op::RevokeSealedAccess {
                    id: a.id,
                    expires_ms: a.expires_ms,
                };
                agency.write(op, None).await?;
            }
        }
        return Ok(());
    }
    let hash = secret_hash(token.as_bytes());
    let owner = match agency.state.access_token(&hash)? {
        Some(t) => Some(t.client_id),
        None => agency.state.refresh_token(&hash)?.map(|r| r.client_id),
    };
    if owner.as_deref() == Some(site.client_id.as_str()) {
        agency.write(Op::RevokeToken { hash }, None).await?;
    }
    Ok(())
}

/// Introspection (RFC 7662) of a token by its own site, as of now (a
/// revocation a moment ago must show): the response's JSON body.
pub async fn introspect(
    agency: &Agency,
    site: &Site,
    token: &str,
) -> Result<serde_json::Value, NodeError> {
    let inactive = serde_json::json!({ "active": false });
    agency.read_barrier(Consistency::Linearizable).await?;
    let found = match crate::actors::token_translator::live_token(agency, token).await? {
        Some((t, s)) => Some((
            t.client_id,
            t.scopes,
            s,
            t.issued_ms,
            t.expires_ms,
            "Bearer",
        )),
        // RFC 7662 §2.1: a refresh token too, to its own client.
        None => live_refresh_token(agency, token)?.map(|(r, s)| {
            let t = (r.issued_ms, r.expires_ms);
            (r.client_id, r.scopes, s, t.0, t.1, "refresh_token")
        }),
    };
    let Some((client_id, scopes, session, issued_ms, expires_ms, token_type)) = found else {
        return Ok(inactive);
    };
    let Some(user) = agency.state.user_by_id(session.user_id)? else {
        return Ok(inactive);
    };
    if client_id != site.client_id {
        return Ok(inactive);
    }
    let params = agency
        .state
        .trust(user.id, &client_id)?
        .map(|tr| tr.params)
        .unwrap_or_default();
    // The site learns the user as it knows them: a pseudonym stays one.
    let salt = crate::key_rotation::pairwise_salt(agency).await?;
    let (sub, username) = subject(&salt, &user, &client_id, &params);
    Ok(serde_json::json!({
        "active": true,
        "iss": agency.config.issuer,
        "sub": sub,
        "username": username,
        "client_id": client_id,
        "scope": scopes.join(" "),
        "sid": session.sid,
        "iat": issued_ms / 1000,
        "exp": expires_ms / 1000,
        "token_type": token_type,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use baa_proto::sso::{pairwise_sub, pseudonym, AccountName};

    #[test]
    fn claims_follow_login_parameters() {
        let user = baa_proto::model::User {
            id: 7,
            username: "alice".into(),
            display_name: "Alice A.".into(),
            email: Some("alice@example.test".into()),
            groups: vec![],
            attributes: Default::default(),
            password_hash: None,
            disabled: false,
            created_ms: 0,
            updated_ms: 0,
            revision: 1,
        };
        let scopes: Vec<String> = ["openid", "profile", "email"].map(String::from).to_vec();
        let p = LoginParams {
            account_name: AccountName::Pseudonym,
            share_name: false,
            share_email: true,
        };
        let salt = [3u8; 32];
        let c = user_claims(&salt, &user, "shop", &p, &scopes);
        assert_eq!(c["sub"], pairwise_sub(&salt, 7, "shop").as_str());
        assert_ne!(
            c["sub"],
            user_claims(&salt, &user, "news", &p, &scopes)["sub"]
        );
        assert_ne!(
            c["sub"],
            user_claims(&[4u8; 32], &user, "shop", &p, &scopes)["sub"]
        );
        assert_eq!(
            c["preferred_username"],
            pseudonym(&salt, 7, "shop").as_str()
        );
        assert!(!c.contains_key("name"));
        assert_eq!(c["email"], "alice@example.test");
        let c = user_claims(&salt, &user, "shop", &LoginParams::default(), &scopes[..1]);
        assert_eq!(c.len(), 1, "openid alone gives only sub");
        assert_eq!(
            c["sub"], "7",
            "a user who shows their name has the public sub"
        );
    }
}
