//! Signing out (RP-initiated logout, OIDC RP-Initiated Logout 1.0): the
//! site's parameters checked (an ID token hint the agency issued, a
//! registered post-logout URI), the session ended everywhere through Raft,
//! and every site that got a ticket in it told over the back channel (the
//! replicated outbox, delivered by the leader's courier).

use baa_proto::command::{Consistency, Op, Outcome};
use baa_proto::sso::SecretHash;
use baa_proto::ErrorCode;
use serde::Deserialize;

use crate::actors::cookie_validator::ValidSession;
use crate::agency::Agency;
use crate::error::NodeError;

/// RP-initiated logout parameters.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LogoutParams {
    /// An ID token the agency issued to the site (expired or not).
    pub id_token_hint: Option<String>,
    /// Where to return after signing out (registered by the site).
    pub post_logout_redirect_uri: Option<String>,
    /// The site's state, echoed back.
    pub state: Option<String>,
    /// The site, when there is no hint.
    pub client_id: Option<String>,
}

/// The `sid` and audience of an ID token we issued (expired or not).
#[derive(Deserialize)]
struct HintClaims {
    sid: Option<String>,
    aud: String,
}

fn hint_claims(agency: &Agency, token: &str) -> Option<HintClaims> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_exp = false;
    v.validate_aud = false;
    v.set_issuer(&[agency.config.issuer.as_str()]);
    v.required_spec_claims.clear();
    agency
        .keys
        .verify_jwt::<HintClaims>(token, &v, crate::keys::ID_TOKEN_TYP)
}

/// Checks the logout parameters; `Ok(Some(uri))` is where to return after.
pub fn check(agency: &Agency, p: &LogoutParams) -> Result<Option<String>, NodeError> {
    let hint = p
        .id_token_hint
        .as_deref()
        .and_then(|t| hint_claims(agency, t));
    if p.id_token_hint.is_some() && hint.is_none() {
        return Err(NodeError::invalid(
            "The id_token_hint is not a token this agency issued.",
        ));
    }
    let Some(uri) = &p.post_logout_redirect_uri else {
        return Ok(None);
    };
    let client = hint.map(|h| h.aud).or_else(|| p.client_id.clone());
    let site = match client {
        Some(c) => agency.state.site(&c)?,
        None => None,
    };
    match site {
        Some(s) if s.post_logout_redirect_uris.iter().any(|u| u == uri) => {
            let mut target = uri.clone();
            if let Some(state) = &p.state {
                let q = serde_urlencoded::to_string([("state", state)]).unwrap_or_default();
                target.push(if target.contains('?') { '&' } else { '?' });
                target.push_str(&q);
            }
            Ok(Some(target))
        }
        _ => Err(NodeError::BadRequest {
            code: ErrorCode::InvalidRedirectUri,
            message: "The post-logout redirect URI is not one the partner site registered.".into(),
        }),
    }
}

/// The session a valid ID token hint names, if the hint names one: a site
/// that proves which session it means needs no confirmation from the user.
pub fn hinted_sid(agency: &Agency, p: &LogoutParams) -> Option<String> {
    p.id_token_hint
        .as_deref()
        .and_then(|t| hint_claims(agency, t))
        .and_then(|h| h.sid)
}

/// Ends the session everywhere; the sites hear of it through the outbox.
/// A session that has already ended is not an error. `presented` is the
/// key of the session cookie the browser sent, if it sent a well-formed
/// one: when the cookies proved no live session here, that must be the
/// cluster's answer, not this node's while it is behind or cannot reach
/// the leader (the session may have been signed in on the other side of a
/// partition, or a moment ago on another node), or the user would be told
/// "signed out" of a session that lives on. So the node catches up with
/// the leader first and looks again.
pub async fn sign_out(
    agency: &Agency,
    session: Option<ValidSession>,
    presented: Option<SecretHash>,
) -> Result<(), NodeError> {
    let key = match session {
        Some(v) => v.key,
        None => {
            let Some(key) = presented else {
                return Ok(());
            };
            agency.read_barrier(Consistency::Linearizable).await?;
            // Found by the fault schedules: the lookup before the barrier
            // can miss a session this node had not applied yet, while the
            // barrier then succeeds once the partition heals.
            if agency.state.session(&key)?.is_none() {
                return Ok(());
            }
            key
        }
    };
    match agency.write(Op::RevokeSession { key }, None).await {
        Ok(Outcome::Revoked(r)) => {
            tracing::info!(sid = %r.sid, tokens = r.tokens_revoked, "signed out");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(NodeError::Apply(e)) if e.code == ErrorCode::SessionNotFound => Ok(()),
        Err(e) => Err(e),
    }
}
