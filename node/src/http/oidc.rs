//! OpenID Connect endpoints for partner sites: discovery, JWKS, the token
//! endpoint (see `sso::tokens`), userinfo, revocation, introspection and
//! session status. Handlers parse, call one `sso::` function, and answer in
//! OAuth's error vocabulary.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use baa_proto::sso::Site;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

use super::error::OAuthError;
use crate::agency::Agency;
use crate::error::NodeError;
use crate::sso::clients::{self, invalid_client, ClientCredentials};
use crate::sso::grants::TokenRequest;
use crate::sso::tokens::{self, DEVICE_GRANT};

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
        "id_token_signing_alg_values_supported": baa_proto::sso::IdTokenAlg::ALL.map(|a| a.name()),
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
    /// `client_assertion_type` (RFC 7523): must be the JWT bearer type.
    pub client_assertion_type: Option<String>,
    /// `client_assertion` (RFC 7523).
    pub client_assertion: Option<String>,
}

fn form_decode(s: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("v={s}")).ok()?;
    pairs.into_iter().next().map(|(_, v)| v)
}

/// The client credentials of a request (RFC 6749 §2.3): HTTP Basic (each
/// part form-encoded) or form fields, never both secrets.
fn credentials(req: &HttpRequest, form: &ClientAuthForm) -> Result<ClientCredentials, NodeError> {
    let basic = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .map(|b| -> Result<(String, String), NodeError> {
            let raw = STANDARD.decode(b.trim()).map_err(|_| invalid_client())?;
            let raw = String::from_utf8(raw).map_err(|_| invalid_client())?;
            let (id, secret) = raw.split_once(':').ok_or_else(invalid_client)?;
            let decoded = |s| form_decode(s).ok_or_else(invalid_client);
            Ok((decoded(id)?, decoded(secret)?))
        })
        .transpose()?;
    let (client_id, secret) = match (basic, &form.client_id, &form.client_secret) {
        (Some(_), _, Some(_)) => return Err(invalid_client()),
        (Some((id, _)), Some(fid), None) if fid != &id => return Err(invalid_client()),
        (Some((id, s)), _, None) => (id, Some(s)),
        (None, Some(id), s) => (id.clone(), s.clone()),
        (None, None, _) => return Err(invalid_client()),
    };
    let assertion = match (&form.client_assertion_type, &form.client_assertion) {
        (None, None) => None,
        (Some(t), Some(a)) if t == baa_proto::federation::CLIENT_ASSERTION_TYPE => Some(a.clone()),
        _ => return Err(invalid_client()),
    };
    Ok(ClientCredentials {
        client_id,
        secret,
        assertion,
    })
}

/// Authenticates the calling site (see `sso::clients`).
pub async fn authenticate_client(
    agency: &Agency,
    req: &HttpRequest,
    form: &ClientAuthForm,
) -> Result<Site, NodeError> {
    clients::authenticate(agency, &credentials(req, form)?).await
}

/// The token request.
#[derive(Deserialize)]
struct TokenForm {
    #[serde(flatten)]
    grant: TokenRequest,
    #[serde(flatten)]
    client: ClientAuthForm,
}

async fn token(
    req: HttpRequest,
    agency: web::Data<Agency>,
    form: web::Form<TokenForm>,
) -> Result<HttpResponse, OAuthError> {
    let result = async {
        tokens::grant_type(&form.grant)?;
        let site = authenticate_client(&agency, &req, &form.client).await?;
        tokens::grant(&agency, &site, &form.grant).await
    }
    .await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) => e.code().as_str(),
    };
    agency.metrics.redemptions.with_label_values(&[label]).inc();
    Ok(no_store(HttpResponse::Ok()).json(result?))
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
    let claims = match bearer(&req) {
        Some(token) => tokens::userinfo(&agency, &token).await,
        None => Ok(None),
    };
    match claims {
        Ok(Some(claims)) => no_store(HttpResponse::Ok()).json(claims),
        Ok(None) => HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(serde_json::json!({
                "error": "invalid_token",
                "error_description": "the access token is missing, expired or revoked",
            })),
        Err(e) => actix_web::ResponseError::error_response(&OAuthError(e)),
    }
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
    // RFC 7009: answer 200 whether or not the token existed.
    tokens::revoke(&agency, &site, value).await?;
    Ok(no_store(HttpResponse::Ok()).finish())
}

async fn introspect(
    req: HttpRequest,
    agency: web::Data<Agency>,
    form: web::Form<TokenQuery>,
) -> Result<HttpResponse, OAuthError> {
    let (site, value) = client_and_token(&agency, &req, &form).await?;
    let body = tokens::introspect(&agency, &site, value).await?;
    Ok(no_store(HttpResponse::Ok()).json(body))
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
