//! OpenID Connect endpoints for partner sites: discovery, JWKS, the token
//! endpoint (ticket redemption), userinfo, revocation, introspection, and the
//! back-channel logout sender.

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use baa_proto::command::{Consistency, Op, Outcome};
use baa_proto::sso::{
    secret_hash, subject, AccessToken, DevicePoll, Grant, LoginParams, PairwiseSalt, RefreshToken,
    RevokedSession, SecretHash, Session, Site,
};
use baa_proto::ErrorCode;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::OAuthError;
use crate::actors::ticket_issuer::random_secret;
use crate::agency::{now_ms, Agency};
use crate::error::NodeError;

/// Registers the OIDC endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/.well-known/openid-configuration").route(web::get().to(discovery)),
    )
    .service(super::resource("/.well-known/jwks.json").route(web::get().to(jwks)))
    .service(super::resource("/sso/token").route(web::post().to(token)))
    .service(
        super::resource("/sso/userinfo")
            .route(web::get().to(userinfo))
            .route(web::post().to(userinfo)),
    )
    .service(super::resource("/sso/revoke").route(web::post().to(revoke)))
    .service(super::resource("/sso/introspect").route(web::post().to(introspect)))
    .service(super::resource("/sso/session_status").route(web::post().to(session_status)));
}

fn no_store(mut b: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    b.insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    b
}

async fn discovery(agency: web::Data<Agency>) -> HttpResponse {
    let i = &agency.config.issuer;
    HttpResponse::Ok().json(serde_json::json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/sso/authorize"),
        "token_endpoint": format!("{i}/sso/token"),
        "userinfo_endpoint": format!("{i}/sso/userinfo"),
        "jwks_uri": format!("{i}/.well-known/jwks.json"),
        "end_session_endpoint": format!("{i}/sso/logout"),
        "revocation_endpoint": format!("{i}/sso/revoke"),
        "introspection_endpoint": format!("{i}/sso/introspect"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["form_post", "query"],
        "grant_types_supported": ["authorization_code", "refresh_token", DEVICE_GRANT],
        "device_authorization_endpoint": format!("{i}/sso/device_authorization"),
        "subject_types_supported": ["public", "pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "sid",
            "preferred_username", "name", "email", "amr", "at_hash"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "prompt_values_supported": ["none", "login", "consent"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "authorization_response_iss_parameter_supported": true,
        "baa_session_status_endpoint": format!("{i}/sso/session_status"),
        // Both default to true when absent (OIDC Discovery §3).
        "request_uri_parameter_supported": false,
        "request_parameter_supported": false,
    }))
}

async fn jwks(agency: web::Data<Agency>) -> Result<HttpResponse, NodeError> {
    let doc = agency.keys.jwks()?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=60"))
        .json(doc))
}

/// Client credentials as sent: HTTP Basic or form fields.
#[derive(Debug, Default, Deserialize)]
pub struct ClientAuthForm {
    /// `client_id` (form).
    pub client_id: Option<String>,
    /// `client_secret` (form).
    pub client_secret: Option<String>,
}

fn form_decode(s: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={s}")).ok()?;
    pairs.into_iter().next().map(|(_, v)| v)
}

/// Authenticates the calling site (RFC 6749 §2.3). A public client names
/// itself and proves possession through PKCE later.
pub async fn authenticate_client(
    agency: &Agency,
    req: &HttpRequest,
    form: &ClientAuthForm,
) -> Result<Site, NodeError> {
    let invalid = || NodeError::BadRequest {
        code: ErrorCode::InvalidClient,
        message: "client authentication failed".into(),
    };
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(|b| -> Result<(String, String), NodeError> {
            let raw = STANDARD.decode(b.trim()).map_err(|_| invalid())?;
            let raw = String::from_utf8(raw).map_err(|_| invalid())?;
            let (id, secret) = raw.split_once(':').ok_or_else(invalid)?;
            Ok((
                form_decode(id).ok_or_else(invalid)?,
                form_decode(secret).ok_or_else(invalid)?,
            ))
        })
        .transpose()?;
    let (client_id, secret) = match (basic, &form.client_id, &form.client_secret) {
        (Some(_), _, Some(_)) => return Err(invalid()),
        (Some((id, s)), fid, None) => {
            if fid.as_ref().is_some_and(|f| f != &id) {
                return Err(invalid());
            }
            (id, Some(s))
        }
        (None, Some(id), s) => (id.clone(), s.clone()),
        (None, None, _) => return Err(invalid()),
    };
    let site = registered_site(agency, &client_id)
        .await?
        .ok_or_else(invalid)?;
    match (&site.secret_hash, secret) {
        (Some(h), Some(s)) if bool::from(h.ct_eq(&secret_hash(s.as_bytes()))) => Ok(site),
        (None, None) => Ok(site),
        _ => Err(invalid()),
    }
}

/// A registered site, reading through to the leader once when this node
/// does not know it yet (registered a moment ago through another node).
pub async fn registered_site(agency: &Agency, client_id: &str) -> Result<Option<Site>, NodeError> {
    if let Some(site) = agency.state.site(client_id)? {
        return Ok(Some(site));
    }
    agency.read_barrier(Consistency::Linearizable).await?;
    Ok(agency.state.site(client_id)?)
}

/// The token request.
#[derive(Debug, Deserialize)]
struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    refresh_token: Option<String>,
    device_code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    #[serde(flatten)]
    client: ClientAuthForm,
}

/// S256 of a PKCE verifier (RFC 7636 §4.2).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
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

fn id_token(
    agency: &Agency,
    salt: &PairwiseSalt,
    g: &Grant,
    access_token: &str,
) -> Result<String, NodeError> {
    let now_s = now_ms() / 1000;
    let mut claims = user_claims(salt, &g.user, &g.client_id, &g.params, &g.scopes);
    let digest = Sha256::digest(access_token.as_bytes());
    let at_hash = URL_SAFE_NO_PAD.encode(&digest[..16]);
    claims.insert("iss".into(), agency.config.issuer.clone().into());
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
    agency.keys.sign_jwt(&claims, crate::keys::ID_TOKEN_TYP)
}

async fn token(
    req: HttpRequest,
    agency: web::Data<Agency>,
    form: web::Form<TokenForm>,
) -> Result<HttpResponse, OAuthError> {
    let form = form.into_inner();
    let result = redeem(&agency, &req, &form).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    };
    agency.metrics.redemptions.with_label_values(&[label]).inc();
    result.map_err(OAuthError)
}

/// The RFC 8628 grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A fresh access token and refresh token candidate for a grant. The state
/// machine keeps the refresh token only when `offline_access` was granted.
fn new_tokens(agency: &Agency, client_id: &str) -> (String, AccessToken, String, RefreshToken) {
    let (access, access_hash) = random_secret();
    let (refresh, refresh_hash) = random_secret();
    let now = now_ms();
    let sso = &agency.config.sso;
    let at = AccessToken {
        hash: access_hash,
        session_key: [0; 32],
        sid: String::new(),
        user_id: 0,
        client_id: client_id.to_string(),
        scopes: Vec::new(),
        issued_ms: now,
        expires_ms: now + sso.access_token_ttl_s * 1000,
    };
    let rt = RefreshToken {
        hash: refresh_hash,
        family: refresh_hash,
        session_key: [0; 32],
        client_id: client_id.to_string(),
        scopes: Vec::new(),
        issued_ms: now,
        expires_ms: now + sso.session_lifetime_s * 1000,
        used: false,
    };
    (access, at, refresh, rt)
}

async fn redeem(
    agency: &Agency,
    req: &HttpRequest,
    form: &TokenForm,
) -> Result<HttpResponse, NodeError> {
    let grant_type = form
        .grant_type
        .as_deref()
        .ok_or_else(|| NodeError::invalid("grant_type is required"))?;
    if !matches!(
        grant_type,
        "authorization_code" | "refresh_token" | DEVICE_GRANT
    ) {
        return Err(NodeError::BadRequest {
            code: ErrorCode::UnsupportedGrantType,
            message: format!("supported: authorization_code, refresh_token, {DEVICE_GRANT}"),
        });
    }
    let site = authenticate_client(agency, req, &form.client).await?;
    let (access, at, refresh, rt) = new_tokens(agency, &site.client_id);
    let required = |v: &Option<String>, name: &str| {
        v.as_deref()
            .filter(|c| !c.is_empty() && c.len() <= 128)
            .map(str::to_string)
            .ok_or_else(|| NodeError::invalid(format!("{name} is required")))
    };
    let op = match grant_type {
        "authorization_code" => {
            let code = required(&form.code, "code")?;
            known(agency, "the ticket is unknown or expired", |s| {
                s.ticket(&secret_hash(code.as_bytes()))
            })
            .await?;
            let redirect_uri = form
                .redirect_uri
                .clone()
                .ok_or_else(|| NodeError::invalid("redirect_uri is required"))?;
            let verifier_challenge = match &form.code_verifier {
                Some(v) => {
                    let ok = (43..=128).contains(&v.len())
                        && v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                    if !ok {
                        return Err(NodeError::BadRequest {
                            code: ErrorCode::InvalidGrant,
                            message: "code_verifier is malformed".into(),
                        });
                    }
                    Some(s256(v))
                }
                None => None,
            };
            Op::RedeemTicket {
                hash: secret_hash(code.as_bytes()),
                client_id: site.client_id.clone(),
                redirect_uri,
                verifier_challenge,
                token: Box::new(at),
                refresh: Some(Box::new(rt)),
            }
        }
        "refresh_token" => {
            let hash = secret_hash(required(&form.refresh_token, "refresh_token")?.as_bytes());
            known(
                agency,
                "the refresh token is unknown, expired or revoked",
                |s| s.refresh_token(&hash),
            )
            .await?;
            Op::Refresh {
                hash,
                client_id: site.client_id.clone(),
                token: Box::new(at),
                refresh: Box::new(rt),
            }
        }
        _ => {
            let device_hash = secret_hash(required(&form.device_code, "device_code")?.as_bytes());
            let d = known(agency, "the device code is unknown or expired", |s| {
                s.device(&device_hash)
            })
            .await?;
            // Too soon: answered here, without a write (RFC 8628 §3.5).
            let interval_ms = d.interval_s.saturating_mul(1000);
            if d.last_poll_ms != 0 && now_ms() < d.last_poll_ms.saturating_add(interval_ms) {
                return Err(NodeError::BadRequest {
                    code: ErrorCode::SlowDown,
                    message: format!("poll at most every {} seconds", d.interval_s),
                });
            }
            Op::PollDevice {
                device_hash,
                client_id: site.client_id.clone(),
                token: Box::new(at),
                refresh: Some(Box::new(rt)),
            }
        }
    };
    let grant = match agency.write(op, None).await? {
        Outcome::Granted(g) => g,
        Outcome::DevicePending(DevicePoll::Pending) => {
            return Err(NodeError::BadRequest {
                code: ErrorCode::AuthorizationPending,
                message: "the user has not decided yet".into(),
            })
        }
        Outcome::DevicePending(DevicePoll::SlowDown(s)) => {
            return Err(NodeError::BadRequest {
                code: ErrorCode::SlowDown,
                message: format!("poll at most every {s} seconds"),
            })
        }
        _ => return Err(NodeError::Internal("unexpected grant outcome".into())),
    };
    let mut body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": grant.expires_ms.saturating_sub(now_ms()) / 1000,
        "scope": grant.scopes.join(" "),
    });
    if grant.scopes.iter().any(|s| s == "offline_access") {
        body["refresh_token"] = refresh.into();
    }
    if grant_type != "refresh_token" && grant.scopes.iter().any(|s| s == "openid") {
        let salt = agency.pairwise_salt().await?;
        body["id_token"] = id_token(agency, &salt, &grant, &access)?.into();
    }
    Ok(no_store(HttpResponse::Ok()).json(body))
}

/// The record a presented one-time secret names, reading through to the
/// leader once when this node has not applied it yet; a secret no one
/// issued is refused here with `invalid_grant`, never proposed to Raft.
async fn known<T>(
    agency: &Agency,
    unknown: &str,
    find: impl Fn(
        &crate::raft::state_machine::StateReader,
    ) -> Result<Option<T>, crate::raft::StorageError>,
) -> Result<T, NodeError> {
    if let Some(found) = find(&agency.state)? {
        return Ok(found);
    }
    agency.read_barrier(Consistency::Linearizable).await?;
    find(&agency.state)?.ok_or_else(|| NodeError::BadRequest {
        code: ErrorCode::InvalidGrant,
        message: unknown.into(),
    })
}

/// Finds a live access token and its session, reading through to the
/// leader once when this node has not yet applied it.
pub async fn live_token(agency: &Agency, value: &str) -> Option<(AccessToken, Session)> {
    let hash: SecretHash = secret_hash(value.as_bytes());
    let find = |a: &Agency| -> Option<(AccessToken, Session)> {
        let t = a.state.access_token(&hash).ok().flatten()?;
        let s = a.state.session(&t.session_key).ok().flatten()?;
        // A removed site's tokens die with it, whatever index missed them.
        a.state.site(&t.client_id).ok().flatten()?;
        let now = now_ms();
        (now < t.expires_ms && s.alive_at(now)).then_some((t, s))
    };
    if let Some(found) = find(agency) {
        return Some(found);
    }
    agency.read_barrier(Consistency::Linearizable).await.ok()?;
    find(agency)
}

/// The bearer token of the `Authorization` header.
pub fn bearer(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
}

async fn userinfo(req: HttpRequest, agency: web::Data<Agency>) -> HttpResponse {
    let unauthorized = || {
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({
                "error": "invalid_token",
                "error_description": "the access token is missing, expired or revoked",
            }))
    };
    let Some(value) = bearer(&req) else {
        return unauthorized();
    };
    let Some((t, _)) = live_token(&agency, &value).await else {
        return unauthorized();
    };
    let Some(user) = agency.state.user_by_id(t.user_id).ok().flatten() else {
        return unauthorized();
    };
    let params = agency
        .state
        .trust(t.user_id, &t.client_id)
        .ok()
        .flatten()
        .map(|tr| tr.params)
        .unwrap_or_default();
    let Ok(salt) = agency.pairwise_salt().await else {
        return unauthorized();
    };
    let claims = user_claims(&salt, &user, &t.client_id, &params, &t.scopes);
    no_store(HttpResponse::Ok()).json(claims)
}

/// Revocation / introspection request.
#[derive(Debug, Deserialize)]
struct TokenQuery {
    token: Option<String>,
    #[serde(flatten)]
    client: ClientAuthForm,
}

/// The authenticated caller and the token it asks about.
async fn client_and_token<'a>(
    agency: &Agency,
    req: &HttpRequest,
    form: &'a TokenQuery,
) -> Result<(Site, &'a str), NodeError> {
    let site = authenticate_client(agency, req, &form.client).await?;
    let value = form
        .token
        .as_deref()
        .ok_or_else(|| NodeError::invalid("token is required"))?;
    Ok((site, value))
}

async fn revoke(
    req: HttpRequest,
    agency: web::Data<Agency>,
    form: web::Form<TokenQuery>,
) -> Result<HttpResponse, OAuthError> {
    let (site, value) = client_and_token(&agency, &req, &form).await?;
    let hash = secret_hash(value.as_bytes());
    // RFC 7009: answer 200 whether or not the token existed; only its owner revokes it.
    let owner = match agency.state.access_token(&hash)? {
        Some(t) => Some(t.client_id),
        None => agency.state.refresh_token(&hash)?.map(|r| r.client_id),
    };
    if owner.as_deref() == Some(site.client_id.as_str()) {
        agency.write(Op::RevokeToken { hash }, None).await?;
    }
    Ok(no_store(HttpResponse::Ok()).finish())
}

async fn introspect(
    req: HttpRequest,
    agency: web::Data<Agency>,
    form: web::Form<TokenQuery>,
) -> Result<HttpResponse, OAuthError> {
    let (site, value) = client_and_token(&agency, &req, &form).await?;
    let inactive = || no_store(HttpResponse::Ok()).json(serde_json::json!({ "active": false }));
    // A resource server asks to decide access: answer as of now, not as of
    // this node's replication lag (a revocation a moment ago must show).
    agency.read_barrier(Consistency::Linearizable).await?;
    let found = match live_token(&agency, value).await {
        Some((t, s)) => Some((
            t.client_id,
            t.scopes,
            s,
            t.issued_ms,
            t.expires_ms,
            "Bearer",
        )),
        // RFC 7662 §2.1: a refresh token too, to its own client.
        None => live_refresh_token(&agency, value).map(|(r, s)| {
            (
                r.client_id,
                r.scopes,
                s,
                r.issued_ms,
                r.expires_ms,
                "refresh_token",
            )
        }),
    };
    let Some((client_id, scopes, session, issued_ms, expires_ms, token_type)) = found else {
        return Ok(inactive());
    };
    if client_id != site.client_id {
        return Ok(inactive());
    }
    let Some(user) = agency.state.user_by_id(session.user_id)? else {
        return Ok(inactive());
    };
    let params = agency
        .state
        .trust(user.id, &client_id)?
        .map(|tr| tr.params)
        .unwrap_or_default();
    // The site learns the user as it knows them: a pseudonym stays one.
    let (sub, username) = subject(&agency.pairwise_salt().await?, &user, &client_id, &params);
    Ok(no_store(HttpResponse::Ok()).json(serde_json::json!({
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
    })))
}

/// A refresh token that can still be used, with its session.
fn live_refresh_token(agency: &Agency, value: &str) -> Option<(RefreshToken, Session)> {
    let r = agency
        .state
        .refresh_token(&secret_hash(value.as_bytes()))
        .ok()
        .flatten()?;
    let s = agency.state.session(&r.session_key).ok().flatten()?;
    agency.state.site(&r.client_id).ok().flatten()?;
    let now = now_ms();
    (!r.used && now < r.expires_ms && s.alive_at(now)).then_some((r, s))
}

/// The status request of a partner site: the reference cookie it received.
#[derive(Debug, Deserialize)]
struct StatusForm {
    reference: Option<String>,
    #[serde(flatten)]
    client: ClientAuthForm,
}

/// `POST /sso/session_status`: is the session this reference names alive,
/// and does its user trust the calling site? (No identity in the answer.)
async fn session_status(
    req: HttpRequest,
    agency: web::Data<Agency>,
    form: web::Form<StatusForm>,
) -> Result<HttpResponse, OAuthError> {
    let site = authenticate_client(&agency, &req, &form.client).await?;
    let reference = form
        .reference
        .as_deref()
        .ok_or_else(|| NodeError::invalid("reference is required"))?;
    let status = crate::sso::status::session_status(&agency, &site, reference)?;
    Ok(no_store(HttpResponse::Ok()).json(status))
}

/// Sends OIDC back-channel logout tokens to partner sites, with retries.
#[derive(Clone)]
pub struct Backchannel {
    client: reqwest::Client,
}

/// An HTTP client builder for calls to partner sites and upstream apps:
/// trusts the roots of `[sso] partner_ca_file` (never the cluster CA),
/// follows no redirects.
pub fn partner_client(agency: &Agency) -> anyhow::Result<reqwest::ClientBuilder> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .redirect(reqwest::redirect::Policy::none());
    for f in agency.config.sso.partner_ca_file.iter() {
        let pem = std::fs::read(f)?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
            b = b.add_root_certificate(cert);
        }
    }
    Ok(b)
}

/// Attempts per site, and the wait before the first retry (doubling).
const BACKCHANNEL_ATTEMPTS: u32 = 4;
const BACKCHANNEL_FIRST_RETRY: Duration = Duration::from_millis(500);

impl Backchannel {
    /// A sender trusting the agency's CA and the configured partner CA.
    pub fn new(agency: &Agency) -> anyhow::Result<Self> {
        let b = partner_client(agency)?.timeout(Duration::from_secs(5));
        Ok(Self { client: b.build()? })
    }

    /// Tells every site that got a ticket in the revoked session, in the background.
    pub fn notify(&self, agency: Arc<Agency>, r: RevokedSession) {
        let salt = agency.state.pairwise_salt().ok().flatten();
        let user = agency.state.user_by_id(r.user_id).ok().flatten();
        for client_id in r.sites {
            let Some(site) = agency.state.site(&client_id).ok().flatten() else {
                continue;
            };
            let Some(uri) = site.backchannel_logout_uri.clone() else {
                continue;
            };
            // The subject as this site knows it (a pseudonym's pairwise `sub`).
            let params = agency
                .state
                .trust(r.user_id, &client_id)
                .ok()
                .flatten()
                .map(|t| t.params)
                .unwrap_or_default();
            let sub = match (&salt, &user) {
                (Some(salt), Some(user)) => subject(salt, user, &client_id, &params).0,
                _ => r.user_id.to_string(),
            };
            let mut jti = [0u8; 16];
            rand::rngs::OsRng.fill_bytes(&mut jti);
            let now_s = now_ms() / 1000;
            let claims = serde_json::json!({
                "iss": agency.config.issuer,
                "aud": client_id,
                "iat": now_s,
                "exp": now_s + 300,
                "jti": URL_SAFE_NO_PAD.encode(jti),
                "sub": sub,
                "sid": r.sid,
                "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
            });
            let token = match agency.keys.sign_jwt(&claims, crate::keys::LOGOUT_TOKEN_TYP) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot sign a logout token");
                    continue;
                }
            };
            let client = self.client.clone();
            let agency = agency.clone();
            actix_rt::spawn(async move {
                let mut wait = BACKCHANNEL_FIRST_RETRY;
                for attempt in 1..=BACKCHANNEL_ATTEMPTS {
                    let sent = client
                        .post(&uri)
                        .form(&[("logout_token", token.as_str())])
                        .send()
                        .await;
                    match sent {
                        Ok(resp) if resp.status().is_success() => {
                            agency
                                .metrics
                                .backchannel_logouts
                                .with_label_values(&["ok"])
                                .inc();
                            return;
                        }
                        Ok(resp) => {
                            tracing::warn!(site = %client_id, attempt, status = %resp.status(), "back-channel logout refused")
                        }
                        Err(e) => {
                            tracing::warn!(site = %client_id, attempt, error = %e, "back-channel logout failed")
                        }
                    }
                    if attempt < BACKCHANNEL_ATTEMPTS {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
                agency
                    .metrics
                    .backchannel_logouts
                    .with_label_values(&["failed"])
                    .inc();
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baa_proto::sso::{pairwise_sub, pseudonym, AccountName};

    #[test]
    fn pkce_s256_matches_rfc7636_example() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

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
