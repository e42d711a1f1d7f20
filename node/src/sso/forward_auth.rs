//! Forward-auth apps (`[[forward_auth]]`): apps behind a reverse proxy that
//! asks `/auth/verify?app=<name>` whether a request may pass.
//!
//! A browser gets a session of its own on the app's host, never the agency's
//! cookies (those stay on the agency's host and the shared domain), by a
//! round trip through the agency — the oauth2-proxy / Authelia multi-domain
//! pattern. The proxy sends the app's `/.baa/…` paths to the agency's
//! `/auth/app/<name>/…`:
//!
//! 1. `start` (on the app's host): a random nonce in a host-only state
//!    cookie, and a redirect to the agency's `grant` carrying its SHA-256;
//! 2. `grant` (on the agency's host, signed in there, else the sign-in page
//!    first): a one-minute code, an RS256 JWS naming the app, the session
//!    and the state, sent back to the app's `/.baa/callback`;
//! 3. `callback` (on the app's host): the code is honoured only with the
//!    state cookie it names, so it works in no other browser; the answer sets
//!    the app's host-only session cookie, a JWS naming the app and the
//!    session, which passes only while that session is alive.
//!
//! Apps without a browser present an access token instead, and only tokens
//! issued to one of the app's `accept_clients` pass (a token a web site got
//! for signing the user in is for that site alone).

use actix::Addr;
use baa_proto::command::Consistency;
use baa_proto::cookie::{AppCode, AppSession, APP_CODE_TYP, APP_SESSION_TYP, MAX_COOKIE_LEN};
use baa_proto::model::User;
use baa_proto::sso::{secret_hash, Session};
use baa_proto::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, Validation};
use url::Url;

use crate::actors::cookie_validator::ValidSession;
use crate::actors::token_translator::{RecordUse, TokenTranslator, TranslateToken, Translated};
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::config::ForwardAuthApp;
use crate::error::{NodeError, Result};
use crate::secrets::random_secret;

/// How long a code from `grant` may take to reach the app's callback.
pub const CODE_TTL_S: u64 = 60;
/// How long a browser may take at the agency (signing in) between `start`
/// and `callback`: the state cookie's lifetime.
pub const STATE_TTL_S: u64 = 600;
/// Longest `rd` (return URL) accepted.
const MAX_RD_LEN: usize = 2048;

/// The forward-auth app named `name`.
pub fn app<'a>(agency: &'a Agency, name: &str) -> Result<&'a ForwardAuthApp> {
    agency
        .config
        .forward_auth
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| NodeError::BadRequest {
            code: ErrorCode::NotFound,
            message: format!("no forward-auth app named {name:?} is configured"),
        })
}

/// Where to send the browser back to: `rd` when it is a URL (or an absolute
/// path) under the app's origin, the app's root when absent. Anything else
/// is refused, so the agency never redirects to a host an attacker chose.
pub fn return_url(app: &ForwardAuthApp, rd: Option<&str>) -> Result<String> {
    let refused = || {
        NodeError::invalid(format!(
            "rd must be a URL under {} (or a path on it)",
            app.origin
        ))
    };
    let Some(rd) = rd.filter(|r| !r.is_empty()) else {
        return Ok(format!("{}/", app.origin));
    };
    if rd.len() > MAX_RD_LEN {
        return Err(refused());
    }
    let url = if rd.starts_with('/') {
        if rd.starts_with("//") || rd.contains('\\') {
            return Err(refused());
        }
        Url::parse(&app.origin)
            .and_then(|o| o.join(rd))
            .map_err(|_| refused())?
    } else {
        Url::parse(rd).map_err(|_| refused())?
    };
    if url.origin().ascii_serialization() != app.origin || !url.username().is_empty() {
        return Err(refused());
    }
    Ok(url.to_string())
}

/// The state a code is bound to: SHA-256 of the browser's nonce, base64url.
fn state_of(nonce: &str) -> String {
    URL_SAFE_NO_PAD.encode(secret_hash(nonce.as_bytes()))
}

/// The first step, on the app's host.
pub struct Start {
    /// The nonce for the host-only state cookie. Secret.
    pub nonce: String,
    /// The agency's grant URL to send the browser to.
    pub grant_url: String,
}

/// Starts a browser's sign-in to `app`, returning to `rd` afterwards.
pub fn start(agency: &Agency, app: &ForwardAuthApp, rd: Option<&str>) -> Result<Start> {
    let rd = return_url(app, rd)?;
    let (nonce, _) = random_secret();
    let mut grant = Url::parse(&agency.config.issuer)
        .and_then(|u| u.join(&format!("/auth/app/{}/grant", app.name)))
        .map_err(|e| NodeError::Internal(format!("the issuer is not a URL: {e}")))?;
    grant
        .query_pairs_mut()
        .append_pair("state", &state_of(&nonce))
        .append_pair("rd", &rd);
    Ok(Start {
        nonce,
        grant_url: grant.to_string(),
    })
}

/// The second step, on the agency's host with a live session: the app's
/// callback URL carrying a one-minute code bound to `state`.
pub fn grant(
    agency: &Agency,
    app: &ForwardAuthApp,
    session: &Session,
    state: &str,
    rd: Option<&str>,
) -> Result<String> {
    if state.len() != 43 || URL_SAFE_NO_PAD.decode(state).is_err() {
        return Err(NodeError::invalid(
            "state is missing or malformed; start again at the app",
        ));
    }
    let claims = AppCode {
        iss: agency.config.issuer.clone(),
        aud: app.name.clone(),
        sid: session.sid.clone(),
        state: state.to_string(),
        rd: return_url(app, rd)?,
        exp: now_ms() / 1000 + CODE_TTL_S,
    };
    let code = agency.keys.sign_jwt(&claims, APP_CODE_TYP)?;
    let mut callback = Url::parse(&app.origin)
        .and_then(|u| u.join("/.baa/callback"))
        .map_err(|e| NodeError::Internal(format!("an app origin is not a URL: {e}")))?;
    callback.query_pairs_mut().append_pair("code", &code);
    Ok(callback.to_string())
}

/// What the callback gives the browser.
pub struct Landed {
    /// The app's session cookie value. Secret.
    pub cookie: String,
    /// Its lifetime: until the agency session's absolute expiry.
    pub max_age_s: u64,
    /// Where the browser goes next (under the app's origin).
    pub rd: String,
}

/// Validation of a JWT of ours for `app`, expiry checked without leeway.
fn validation(agency: &Agency, app: &ForwardAuthApp) -> Validation {
    let mut v = Validation::new(Algorithm::RS256);
    v.set_issuer(&[&agency.config.issuer]);
    v.set_audience(&[&app.name]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.leeway = 0;
    v
}

/// The third step, on the app's host: the code and the state cookie it must
/// be bound to become the app's session cookie.
pub async fn callback(
    agency: &Agency,
    app: &ForwardAuthApp,
    code: &str,
    nonce: Option<&str>,
) -> Result<Landed> {
    let refused = |why: &str| NodeError::BadRequest {
        code: ErrorCode::InvalidGrant,
        message: format!("{why}; start again at the app"),
    };
    let claims: AppCode = (code.len() <= MAX_COOKIE_LEN * 4)
        .then(|| {
            agency
                .keys
                .verify_jwt(code, &validation(agency, app), APP_CODE_TYP)
        })
        .flatten()
        .ok_or_else(|| refused("the code is not valid for this app or has expired"))?;
    if nonce.map(state_of).as_deref() != Some(claims.state.as_str()) {
        return Err(refused("this sign-in was started in another browser"));
    }
    let session = live_session(agency, &claims.sid)
        .await?
        .ok_or_else(|| refused("the agency session has ended"))?;
    let now_s = now_ms() / 1000;
    let exp = session.absolute_expiry_ms / 1000;
    let cookie = agency.keys.sign_jwt(
        &AppSession {
            iss: agency.config.issuer.clone(),
            aud: app.name.clone(),
            sid: session.sid.clone(),
            iat: now_s,
            exp,
        },
        APP_SESSION_TYP,
    )?;
    tracing::info!(app = %app.name, sid = %session.sid, "forward-auth app session set");
    Ok(Landed {
        cookie,
        max_age_s: exp.saturating_sub(now_s),
        rd: return_url(app, Some(&claims.rd))?,
    })
}

/// The live session whose public handle is `sid`, read through to the
/// leader once when this node has not seen it (it may be seconds old).
async fn live_session(agency: &Agency, sid: &str) -> Result<Option<Session>> {
    let find = |a: &Agency| -> Result<Option<Session>> {
        Ok(a.state
            .session_by_sid(sid)?
            .filter(|s| s.alive_at(now_ms())))
    };
    if let Some(s) = find(agency)? {
        return Ok(Some(s));
    }
    agency.read_barrier(Consistency::Linearizable).await?;
    find(agency)
}

/// The session's user, if the account still exists and is enabled.
fn user_of(agency: &Agency, session: &Session) -> Result<Option<User>> {
    Ok(agency
        .state
        .user(&session.username)?
        .filter(|u| u.id == session.user_id && !u.disabled))
}

/// The credentials a request to `/auth/verify` brought.
pub struct Presented {
    /// `Authorization: Bearer` token. Secret.
    pub token: Option<String>,
    /// The app's session cookie value. Secret.
    pub app_cookie: Option<String>,
    /// The agency session its cookies name, already validated.
    pub agency_session: Option<ValidSession>,
}

/// The answer to `/auth/verify`.
pub enum Verdict {
    /// The request may pass as this session's user.
    Pass(Box<Translated>),
    /// It may not; why, for the operator (the same for every bad credential).
    Refused(&'static str),
}

/// Whether a request to the app `app` (to the agency itself when `None`)
/// may pass. The agency's own cookies pass anywhere they reach (only the
/// agency's host); app cookies only at their app; tokens only at an app that
/// accepts their client.
pub async fn verify(
    agency: &Agency,
    broker: &Addr<TokenTranslator>,
    app: Option<&str>,
    presented: Presented,
) -> Result<Verdict> {
    let app = app.map(|name| self::app(agency, name)).transpose()?;
    if let Some(v) = presented.agency_session {
        return Ok(match user_of(agency, &v.session)? {
            Some(user) => Verdict::Pass(Box::new(Translated {
                session: v.session,
                user,
            })),
            None => Verdict::Refused("no valid session cookie or token"),
        });
    }
    let Some(app) = app else {
        return Ok(Verdict::Refused(if presented.token.is_some() {
            "a token passes only at an app that accepts its client: ask /auth/verify?app=<name>"
        } else {
            "no valid session cookie or token"
        }));
    };
    if let Some(token) = presented.token {
        let accept = app.accept_clients.clone();
        let found = crate::actors::ask(&agency.metrics, broker, TranslateToken { token, accept })
            .await
            .map_err(|_| NodeError::Internal("token translator unavailable".into()))??;
        return Ok(found.map_or(
            Verdict::Refused(
                "the token is not valid or was not issued to a client this app accepts",
            ),
            |t| Verdict::Pass(Box::new(t)),
        ));
    }
    let Some(value) = presented
        .app_cookie
        .filter(|v| v.len() <= MAX_COOKIE_LEN * 4)
    else {
        return Ok(Verdict::Refused("no valid session cookie or token"));
    };
    let Some(claims) =
        agency
            .keys
            .verify_jwt::<AppSession>(&value, &validation(agency, app), APP_SESSION_TYP)
    else {
        return Ok(Verdict::Refused("no valid session cookie or token"));
    };
    let Some(session) = live_session(agency, &claims.sid).await? else {
        return Ok(Verdict::Refused("the session has ended"));
    };
    let Some(user) = user_of(agency, &session)? else {
        return Ok(Verdict::Refused("the session has ended"));
    };
    broker.do_send(RecordUse(session.clone()));
    Ok(Verdict::Pass(Box::new(Translated { session, user })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> ForwardAuthApp {
        ForwardAuthApp {
            name: "wiki".into(),
            origin: "https://wiki.example.org".into(),
            accept_clients: vec!["baa-cli".into()],
        }
    }

    #[test]
    fn return_urls_stay_under_the_app_origin() {
        let a = app();
        let ok = |rd: Option<&str>| return_url(&a, rd).unwrap();
        assert_eq!(ok(None), "https://wiki.example.org/");
        assert_eq!(ok(Some("")), "https://wiki.example.org/");
        assert_eq!(
            ok(Some("https://wiki.example.org/a/b?c=d")),
            "https://wiki.example.org/a/b?c=d"
        );
        assert_eq!(ok(Some("/a?b=c")), "https://wiki.example.org/a?b=c");
        for bad in [
            "https://evil.example.org/",
            "https://wiki.example.org.evil.org/",
            "http://wiki.example.org/",
            "https://wiki.example.org:444/",
            "//evil.example.org/x",
            "/\\evil.example.org",
            "https://user@wiki.example.org/",
            "javascript:alert(1)",
            "wiki.example.org/x",
        ] {
            assert!(return_url(&a, Some(bad)).is_err(), "{bad} was accepted");
        }
        assert!(return_url(&a, Some(&format!("/{}", "a".repeat(3000)))).is_err());
    }

    #[test]
    fn state_is_the_nonce_hash() {
        let s = state_of("nonce");
        assert_eq!(s.len(), 43);
        assert_ne!(s, state_of("other"));
    }
}
