//! Browser-facing single sign-on: the authorization endpoint (seamless login
//! of a partner site by an auto-submitted form carrying a one-time ticket),
//! sign-in, the trust page, sign-out and the agency's home page.

use std::sync::OnceLock;

use actix::Addr;
use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use baa_proto::command::{Consistency, Op, Outcome};
use baa_proto::cookie::{
    Reference, CSRF_COOKIE, REFERENCE_COOKIE, SESSION_COOKIE, SESSION_SECRET_LEN,
};
use baa_proto::sso::{
    pseudonym, public_sid, secret_hash, AccountName, LoginParams, ResponseMode, Session, Site,
    ThrottlePolicy, ThrottleSubject, Trust,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::pages::{self, Csp};
use crate::actors::hasher::Hashers;
use crate::actors::session_gate::{BrowserCookies, SessionGate, ValidSession, ValidateCookies};
use crate::actors::ticket_issuer::{IssueTicket, TicketIssuer, TicketRequest};
use crate::agency::{now_ms, Agency};
use crate::error::NodeError;

/// Registers the browser-facing routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/").route(web::get().to(home)))
        .service(
            super::resource("/sso/authorize")
                .route(web::get().to(authorize_get))
                .route(web::post().to(authorize_post)),
        )
        .service(
            super::resource("/sso/signin")
                .route(web::get().to(sign_in_get))
                .route(web::post().to(sign_in_post)),
        )
        .service(super::resource("/sso/consent").route(web::post().to(consent_post)))
        .service(
            super::resource("/sso/logout")
                .route(web::get().to(logout_get))
                .route(web::post().to(logout_post)),
        );
}

/// The parameters of an authorization request, carried through the sign-in
/// and trust pages as hidden fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuthParams {
    client_id: Option<String>,
    redirect_uri: Option<String>,
    response_type: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    response_mode: Option<String>,
    prompt: Option<String>,
    max_age: Option<String>,
    /// Where a plain sign-in continues (an agency path, e.g. the device page).
    #[serde(rename = "continue")]
    continue_to: Option<String>,
}

impl AuthParams {
    /// A plain sign-in that continues at the agency path `path`.
    pub fn continue_to(path: &str) -> Self {
        Self {
            continue_to: Some(path.to_string()),
            ..Default::default()
        }
    }

    /// The continuation if it is a safe agency path (never another host).
    fn safe_continue(&self) -> Option<&str> {
        self.continue_to.as_deref().filter(|p| {
            (p.starts_with("/device") || p.starts_with("/auth/app/"))
                && !p.contains("//")
                && !p.contains('\\')
        })
    }

    fn hidden(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut push = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                out.push((k.to_string(), v.clone()));
            }
        };
        push("client_id", &self.client_id);
        push("redirect_uri", &self.redirect_uri);
        push("response_type", &self.response_type);
        push("scope", &self.scope);
        push("state", &self.state);
        push("nonce", &self.nonce);
        push("code_challenge", &self.code_challenge);
        push("code_challenge_method", &self.code_challenge_method);
        push("response_mode", &self.response_mode);
        push("prompt", &self.prompt);
        push("max_age", &self.max_age);
        push("continue", &self.continue_to);
        out
    }
}

/// How the answer goes back to the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    FormPost,
    Query,
}

/// A checked authorization request.
#[derive(Debug, Clone)]
struct Authz {
    site: Site,
    redirect_uri: String,
    mode: Mode,
    state: Option<String>,
    nonce: Option<String>,
    challenge: Option<String>,
    scopes: Vec<String>,
    prompt_none: bool,
    prompt_login: bool,
    prompt_consent: bool,
    max_age_s: Option<u64>,
}

/// Why an authorization request cannot go on.
enum AuthzError {
    /// The site or redirect URI cannot be trusted: show a page, never redirect.
    Page(&'static str, String),
    /// A protocol error the site should hear about at its redirect URI.
    Site(Box<Authz>, &'static str, String),
}

fn bounded(v: &Option<String>, max: usize, name: &str) -> Result<(), String> {
    match v {
        Some(s) if s.len() > max => Err(format!("{name} is longer than {max} characters")),
        Some(s) if s.bytes().any(|b| b < b' ' || b == 0x7f) => {
            Err(format!("{name} contains control characters"))
        }
        _ => Ok(()),
    }
}

fn check_authz(agency: &Agency, p: &AuthParams) -> Result<Authz, AuthzError> {
    let page = |code, msg: &str| Err(AuthzError::Page(code, msg.to_string()));
    let Some(client_id) = p.client_id.as_deref() else {
        return page(
            "invalid_request",
            "The request names no partner site (client_id).",
        );
    };
    let site = match agency.state.site(client_id) {
        Ok(Some(s)) => s,
        Ok(None) => return page("unknown_site", "The partner site is not registered here."),
        Err(_) => return page("storage_error", "The agency could not read its records."),
    };
    let Some(redirect_uri) = p.redirect_uri.clone() else {
        return page("invalid_request", "The request has no redirect_uri.");
    };
    // Exact string comparison (no normalisation, no prefix or pattern
    // match), except the port of a loopback URI (RFC 8252 §7.3).
    if !site
        .redirect_uris
        .iter()
        .any(|u| redirect_matches(u, &redirect_uri))
    {
        return page(
            "invalid_redirect_uri",
            "The redirect URI is not one the partner site registered. You were not sent anywhere.",
        );
    }
    // No response_mode: the site's registered default (query unless it
    // registered form_post, OIDC Core §3.1.2.5).
    let registered = match agency.state.site_options(&site.client_id) {
        Ok(o) => o.default_response_mode,
        Err(_) => return page("storage_error", "The agency could not read its records."),
    };
    let mode = match (p.response_mode.as_deref(), registered) {
        (Some("form_post"), _) | (None, ResponseMode::FormPost) => Mode::FormPost,
        _ => Mode::Query,
    };
    let prompts: Vec<&str> = p.prompt.as_deref().unwrap_or("").split(' ').collect();
    let mut a = Authz {
        site,
        redirect_uri,
        mode,
        state: p.state.clone(),
        nonce: p.nonce.clone(),
        challenge: p.code_challenge.clone(),
        scopes: Vec::new(),
        prompt_none: prompts.contains(&"none"),
        prompt_login: prompts.contains(&"login"),
        prompt_consent: prompts.contains(&"consent"),
        max_age_s: None,
    };
    let site_err =
        |a: &Authz, code, msg: String| Err(AuthzError::Site(Box::new(a.clone()), code, msg));
    if !matches!(
        p.response_mode.as_deref(),
        None | Some("form_post") | Some("query")
    ) {
        return site_err(
            &a,
            "invalid_request",
            "response_mode must be form_post or query".into(),
        );
    }
    for (v, max, name) in [
        (&p.state, 512, "state"),
        (&p.nonce, 256, "nonce"),
        (&p.scope, 512, "scope"),
    ] {
        if let Err(m) = bounded(v, max, name) {
            a.state = None;
            return site_err(&a, "invalid_request", m);
        }
    }
    if p.response_type.as_deref() != Some("code") {
        return site_err(
            &a,
            "unsupported_response_type",
            "response_type must be code".into(),
        );
    }
    let scopes: Vec<String> = p
        .scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    if !scopes.iter().any(|s| s == "openid") {
        return site_err(&a, "invalid_scope", "scope must include openid".into());
    }
    if let Some(s) = scopes.iter().find(|s| !a.site.allowed_scopes.contains(s)) {
        return site_err(
            &a,
            "invalid_scope",
            format!("scope {s} is not allowed for this site"),
        );
    }
    a.scopes = scopes;
    if a.prompt_none && (a.prompt_login || a.prompt_consent) {
        return site_err(
            &a,
            "invalid_request",
            "prompt=none cannot be combined".into(),
        );
    }
    if let Some(unknown) = prompts
        .iter()
        .find(|p| !p.is_empty() && !matches!(**p, "none" | "login" | "consent"))
    {
        return site_err(
            &a,
            "invalid_request",
            format!("unsupported prompt value {unknown}"),
        );
    }
    if let Some(m) = &p.max_age {
        match m.parse::<u64>() {
            Ok(v) => a.max_age_s = Some(v),
            Err(_) => return site_err(&a, "invalid_request", "max_age must be a number".into()),
        }
    }
    match (&p.code_challenge, p.code_challenge_method.as_deref()) {
        (Some(c), Some("S256")) => {
            let ok = (43..=128).contains(&c.len())
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            if !ok {
                return site_err(&a, "invalid_request", "code_challenge is malformed".into());
            }
        }
        (Some(_), _) => {
            return site_err(
                &a,
                "invalid_request",
                "code_challenge_method must be S256".into(),
            )
        }
        (None, Some(_)) => {
            return site_err(&a, "invalid_request", "code_challenge is missing".into())
        }
        (None, None) if a.site.secret_hash.is_none() => {
            return site_err(
                &a,
                "invalid_request",
                "PKCE (S256) is required for public clients".into(),
            )
        }
        (None, None) => {}
    }
    Ok(a)
}

/// Whether `candidate` may be used for the registered `registered`: equal
/// strings, or for an `http` loopback registration (a native app's local
/// listener) the same URI on any port.
pub fn redirect_matches(registered: &str, candidate: &str) -> bool {
    if registered == candidate {
        return true;
    }
    // Compared as typed, never as parsed: no normalisation (`..`, case,
    // escapes, default ports) may make two different strings match.
    let loopback = |u: &str| u.starts_with("http://127.0.0.1") || u.starts_with("http://[::1]");
    loopback(registered)
        && loopback(candidate)
        && !candidate.contains(['@', '#', '\\'])
        && canonical(candidate) == canonical(registered)
}

/// A loopback URI with its port removed, as typed (no parsing normalisation).
fn canonical(uri: &str) -> String {
    let Some(rest) = uri.strip_prefix("http://") else {
        return uri.to_string();
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = match authority.rfind(':') {
        Some(i)
            if !authority[i + 1..].is_empty()
                && authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && !authority.ends_with(']') =>
        {
            &authority[..i]
        }
        _ => authority,
    };
    format!("http://{host}{path}")
}

/// Checks an authorization request; a refusal is already the response
/// (error page, or the error delivered to the site).
async fn checked(agency: &Agency, p: &AuthParams) -> Result<Authz, HttpResponse> {
    let mut result = check_authz(agency, p);
    if matches!(result, Err(AuthzError::Page("unknown_site", _))) {
        // Registered a moment ago through another node? Ask the leader once.
        if agency.read_barrier(Consistency::Linearizable).await.is_ok() {
            result = check_authz(agency, p);
        }
    }
    result.map_err(|e| match e {
        AuthzError::Page(code, msg) => error_page(agency, StatusCode::BAD_REQUEST, code, &msg),
        AuthzError::Site(a, code, msg) => deliver_error(&a, &agency.config.issuer, code, &msg),
    })
}

/// The origin (`scheme://host[:port]`) of a URI, for the CSP form-action.
fn origin_of(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "'none'".into(),
    }
}

/// Sends `fields` to the site's redirect URI the way it asked.
fn deliver(a: &Authz, issuer: &str, mut fields: Vec<(String, String)>) -> HttpResponse {
    if let Some(s) = &a.state {
        fields.push(("state".into(), s.clone()));
    }
    fields.push(("iss".into(), issuer.to_string()));
    match a.mode {
        Mode::FormPost => {
            let csp = Csp::new(vec![origin_of(&a.redirect_uri)]);
            let body = pages::form_post(
                &csp,
                &pages::FormPostPage {
                    action: &a.redirect_uri,
                    fields: &fields,
                },
            );
            pages::html_response(StatusCode::OK, body, &csp)
        }
        Mode::Query => {
            let query = serde_urlencoded::to_string(&fields).unwrap_or_default();
            let sep = if a.redirect_uri.contains('?') {
                '&'
            } else {
                '?'
            };
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, format!("{}{sep}{query}", a.redirect_uri)))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish()
        }
    }
}

fn deliver_error(a: &Authz, issuer: &str, code: &str, description: &str) -> HttpResponse {
    deliver(
        a,
        issuer,
        vec![
            ("error".into(), code.into()),
            ("error_description".into(), description.into()),
        ],
    )
}

/// The page of a node too busy to check a password now (503, `Retry-After`).
fn busy_page(agency: &Agency) -> HttpResponse {
    let mut resp = error_page(
        agency,
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "The agency is busy. Try again in a moment.",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

/// The agency's error page; never redirects.
pub fn error_page(agency: &Agency, status: StatusCode, code: &str, message: &str) -> HttpResponse {
    agency.metrics.pages.with_label_values(&["error"]).inc();
    let csp = Csp::new(Vec::new());
    let body = pages::error_page(
        &csp,
        &pages::ErrorPage {
            title: "The request cannot be completed",
            code,
            message,
        },
    );
    pages::html_response(status, body, &csp)
}

/// The value of the cookie named exactly `name` (see
/// [`baa_proto::cookie::exact_value`]): actix's own cookie parsing decodes
/// and trims names, which would let a sibling host's `%5F%5FHost-…` cookie
/// pass for a `__Host-` one.
pub fn cookie_value(req: &HttpRequest, name: &str) -> Option<String> {
    let headers = req
        .headers()
        .get_all(header::COOKIE)
        .map(header::HeaderValue::as_bytes);
    baa_proto::cookie::exact_value(headers, name).map(String::from)
}

/// The current session, if the request's cookies prove one (see the
/// session gate).
pub async fn current_session(
    req: &HttpRequest,
    gate: &Addr<SessionGate>,
    agency: &Agency,
) -> Option<ValidSession> {
    let Some(session) = cookie_value(req, SESSION_COOKIE) else {
        agency
            .metrics
            .cookie_validations
            .with_label_values(&["absent"])
            .inc();
        return None;
    };
    let cookies = BrowserCookies {
        session,
        reference: cookie_value(req, REFERENCE_COOKIE),
    };
    gate.send(ValidateCookies(cookies)).await.ok().flatten()
}

/// The request's CSRF token, or a new one with the cookie that carries it.
pub fn csrf_token(req: &HttpRequest) -> (String, Option<Cookie<'static>>) {
    if let Some(v) = cookie_value(req, CSRF_COOKIE) {
        if v.len() == 43 {
            return (v, None);
        }
    }
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let v = URL_SAFE_NO_PAD.encode(b);
    let c = Cookie::build(CSRF_COOKIE, v.clone())
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .finish();
    (v, Some(c))
}

/// The answer to a form whose CSRF token does not match the cookie.
pub fn csrf_refused(agency: &Agency) -> HttpResponse {
    error_page(
        agency,
        StatusCode::BAD_REQUEST,
        "csrf_mismatch",
        "The form expired or was not sent from this agency's page. Go back and try again.",
    )
}

/// Whether the submitted form token matches the CSRF cookie (constant time).
pub fn csrf_ok(req: &HttpRequest, submitted: &str) -> bool {
    match cookie_value(req, CSRF_COOKIE) {
        Some(c) => !c.is_empty() && bool::from(c.as_bytes().ct_eq(submitted.as_bytes())),
        None => false,
    }
}

/// Adds `c` (if any) to `resp`.
pub fn with_cookie(resp: HttpResponse, c: Option<Cookie<'static>>) -> HttpResponse {
    with_cookies(resp, c)
}

/// Adds every cookie of `cookies` to `resp`.
pub fn with_cookies(
    mut resp: HttpResponse,
    cookies: impl IntoIterator<Item = Cookie<'static>>,
) -> HttpResponse {
    for c in cookies {
        let _ = resp.add_cookie(&c);
    }
    resp
}

/// The session cookie: host-only (`__Host-`: no `Domain`, `Path=/`), the bearer.
fn session_cookie(value: String, max_age_s: i64) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, value)
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(CookieDuration::seconds(max_age_s))
        .finish()
}

/// The agency reference cookie, on the shared cookie domain when one is set.
fn reference_cookie(agency: &Agency, value: String, max_age_s: i64) -> Cookie<'static> {
    let mut b = Cookie::build(REFERENCE_COOKIE, value)
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(CookieDuration::seconds(max_age_s));
    if let Some(d) = &agency.config.sso.cookie_domain {
        b = b.domain(d.clone());
    }
    b.finish()
}

/// Both cookies of a new session, or the clearing of both (`None`).
fn browser_cookies(
    agency: &Agency,
    new: Option<(&[u8; SESSION_SECRET_LEN], &Session)>,
) -> Result<[Cookie<'static>; 2], NodeError> {
    let Some((secret, session)) = new else {
        return Ok([
            session_cookie(String::new(), 0),
            reference_cookie(agency, String::new(), 0),
        ]);
    };
    let reference = agency.keys.sign_reference(&Reference {
        iss: agency.config.issuer.clone(),
        sid: session.sid.clone(),
        iat: session.created_ms / 1000,
        exp: session.absolute_expiry_ms / 1000,
    })?;
    let max_age = (session.absolute_expiry_ms.saturating_sub(now_ms()) / 1000) as i64;
    Ok([
        session_cookie(baa_proto::cookie::session_value(secret), max_age),
        reference_cookie(agency, reference, max_age),
    ])
}

/// Where a form of the agency's pages may lead besides the agency: the
/// origin of the redirect URI the request names, once checked against the
/// site's registration (browsers apply `form-action` to the redirect that
/// follows a form, so a sign-in that goes on to the site needs it).
fn continue_origin(agency: &Agency, params: &AuthParams) -> Vec<String> {
    // A forward-auth app's sign-in ends in a redirect to the app's host.
    if let Some(app) = params
        .safe_continue()
        .and_then(|p| p.strip_prefix("/auth/app/"))
        .and_then(|p| p.split('/').next())
        .and_then(|name| agency.config.forward_auth.iter().find(|a| a.name == name))
    {
        return vec![app.origin.clone()];
    }
    let (Some(client_id), Some(uri)) = (&params.client_id, &params.redirect_uri) else {
        return Vec::new();
    };
    match agency.state.site(client_id) {
        Ok(Some(site)) if site.redirect_uris.iter().any(|r| redirect_matches(r, uri)) => {
            vec![origin_of(uri)]
        }
        _ => Vec::new(),
    }
}

/// The sign-in page, carrying `params` through.
#[allow(clippy::too_many_arguments)]
pub fn sign_in_page(
    req: &HttpRequest,
    agency: &Agency,
    params: &AuthParams,
    site_name: Option<&str>,
    username: &str,
    error: Option<&str>,
    status: StatusCode,
) -> HttpResponse {
    agency.metrics.pages.with_label_values(&["sign_in"]).inc();
    let (csrf, cookie) = csrf_token(req);
    let csp = Csp::new(continue_origin(agency, params));
    let hidden = params.hidden();
    let body = pages::sign_in(
        &csp,
        &pages::SignInPage {
            action: "/sso/signin",
            csrf: &csrf,
            hidden: &hidden,
            username,
            error,
            site_name,
        },
    );
    with_cookie(pages::html_response(status, body, &csp), cookie)
}

async fn trust_page(
    req: &HttpRequest,
    agency: &Agency,
    params: &AuthParams,
    a: &Authz,
    s: &Session,
) -> HttpResponse {
    let salt = match agency.pairwise_salt().await {
        Ok(salt) => salt,
        Err(e) => return internal(agency, &e),
    };
    let user = match agency.state.user_by_id(s.user_id) {
        Ok(Some(u)) => u,
        _ => {
            return error_page(
                agency,
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage_error",
                "Your account could not be read.",
            )
        }
    };
    agency.metrics.pages.with_label_values(&["trust"]).inc();
    let (csrf, cookie) = csrf_token(req);
    // Approving may redirect straight to the site: the form may lead there.
    let csp = Csp::new(vec![origin_of(&a.redirect_uri)]);
    let hidden = params.hidden();
    let pseudo = pseudonym(&salt, user.id, &a.site.client_id);
    let body = pages::trust(
        &csp,
        &pages::TrustPage {
            action: "/sso/consent",
            csrf: &csrf,
            hidden: &hidden,
            site_name: &a.site.name,
            client_id: &a.site.client_id,
            scopes: &a.scopes,
            username: &user.username,
            pseudonym: &pseudo,
            display_name: &user.display_name,
            email: user.email.as_deref(),
        },
    );
    with_cookie(pages::html_response(StatusCode::OK, body, &csp), cookie)
}

fn internal(agency: &Agency, e: &NodeError) -> HttpResponse {
    let status = super::error::status_of(e.code());
    error_page(agency, status, e.code().as_str(), &e.to_string())
}

/// Issues a ticket and answers with the auto-submitting form.
async fn issue_and_deliver(
    agency: &Agency,
    issuer: &Addr<TicketIssuer>,
    a: &Authz,
    v: &ValidSession,
) -> HttpResponse {
    let req = TicketRequest {
        session_key: v.key,
        client_id: a.site.client_id.clone(),
        redirect_uri: a.redirect_uri.clone(),
        nonce: a.nonce.clone(),
        code_challenge: a.challenge.clone(),
        scopes: a.scopes.clone(),
    };
    match issuer.send(IssueTicket(req)).await {
        Ok(Ok(code)) => deliver(a, &agency.config.issuer, vec![("code".into(), code)]),
        Ok(Err(NodeError::Apply(e))) if e.code == baa_proto::ErrorCode::SessionNotFound => {
            deliver_error(
                a,
                &agency.config.issuer,
                "login_required",
                "the session has ended",
            )
        }
        Ok(Err(e)) => internal(agency, &e),
        Err(_) => internal(
            agency,
            &NodeError::Internal("ticket issuer unavailable".into()),
        ),
    }
}

/// The core of the seamless login: session → trust → ticket, or the page
/// the user must see first (or, with prompt=none, the error instead).
#[allow(clippy::too_many_arguments)]
async fn continue_flow(
    req: &HttpRequest,
    agency: &Agency,
    issuer: &Addr<TicketIssuer>,
    params: &AuthParams,
    a: &Authz,
    session: Option<ValidSession>,
    fresh_sign_in: bool,
) -> HttpResponse {
    let iss = &agency.config.issuer;
    let now = now_ms();
    let session = session.filter(|v| {
        let too_old = a
            .max_age_s
            .is_some_and(|m| now.saturating_sub(v.session.auth_time_ms) > m * 1000);
        fresh_sign_in || !(a.prompt_login || too_old)
    });
    let Some(v) = session else {
        if a.prompt_none {
            return deliver_error(a, iss, "login_required", "the user is not signed in");
        }
        return sign_in_page(
            req,
            agency,
            params,
            Some(&a.site.name),
            "",
            None,
            StatusCode::OK,
        );
    };
    let trust = agency
        .state
        .trust(v.session.user_id, &a.site.client_id)
        .ok()
        .flatten();
    let covers = trust
        .as_ref()
        .is_some_and(|t| a.scopes.iter().all(|s| t.scopes.contains(s)));
    // A public native client's loopback redirect can be claimed by any local
    // program, so an earlier approval never carries over (RFC 8252 §8.6):
    // the user sees the page every time.
    let public_client = a.site.secret_hash.is_none();
    if !covers || a.prompt_consent || public_client {
        if a.prompt_none {
            return deliver_error(
                a,
                iss,
                "consent_required",
                "the user has not approved this site",
            );
        }
        return trust_page(req, agency, params, a, &v.session).await;
    }
    issue_and_deliver(agency, issuer, a, &v).await
}

async fn authorize(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<SessionGate>>,
    issuer: web::Data<Addr<TicketIssuer>>,
    params: AuthParams,
) -> HttpResponse {
    let a = match checked(&agency, &params).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let session = current_session(&req, &gate, &agency).await;
    continue_flow(&req, &agency, &issuer, &params, &a, session, false).await
}

async fn authorize_get(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<SessionGate>>,
    issuer: web::Data<Addr<TicketIssuer>>,
    params: web::Query<AuthParams>,
) -> HttpResponse {
    authorize(req, agency, gate, issuer, params.into_inner()).await
}

async fn authorize_post(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<SessionGate>>,
    issuer: web::Data<Addr<TicketIssuer>>,
    params: web::Form<AuthParams>,
) -> HttpResponse {
    authorize(req, agency, gate, issuer, params.into_inner()).await
}

async fn sign_in_get(req: HttpRequest, agency: web::Data<Agency>) -> HttpResponse {
    sign_in_page(
        &req,
        &agency,
        &AuthParams::default(),
        None,
        "",
        None,
        StatusCode::OK,
    )
}

/// The sign-in form.
#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(flatten)]
    params: AuthParams,
}

/// A hash that no password matches, verified for unknown accounts so that
/// they take the same path and time as wrong passwords.
pub fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        let mut b = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut b);
        crate::actors::hasher::hash_password(&URL_SAFE_NO_PAD.encode(b)).unwrap_or_default()
    })
}

/// The sign-in throttling rule of this node's configuration.
pub fn throttle_policy(agency: &Agency) -> ThrottlePolicy {
    let s = &agency.config.sso;
    ThrottlePolicy {
        window_ms: s.throttle_window_s * 1000,
        max_pair_failures: s.max_account_failures,
        max_account_failures: s.max_account_failures_all_sources,
        max_source_failures: s.max_source_failures,
        lockout_ms: s.lockout_s * 1000,
    }
}

/// The client's address: the peer's, or — when the peer is a trusted proxy
/// (`[sso] trusted_proxies`) — the last address of `X-Forwarded-For` that is
/// not one of them. Sign-ins and code guesses are throttled by it.
pub fn client_source(req: &HttpRequest, agency: &Agency) -> String {
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok());
    source_of(
        req.peer_addr().map(|a| a.ip()),
        forwarded,
        &agency.config.trusted_proxies,
    )
}

fn source_of<'a>(
    peer: Option<std::net::IpAddr>,
    forwarded: impl Iterator<Item = &'a str>,
    trusted: &[ipnet::IpNet],
) -> String {
    let Some(peer) = peer else {
        return "unknown".into();
    };
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer.to_string();
    }
    // Walk back from the proxy that called us; the first hop we do not
    // trust is the client. Anything unparsable ends the walk there.
    let hops: Vec<&str> = forwarded
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<std::net::IpAddr>() {
            Ok(ip) if is_trusted(&ip) => client = ip,
            Ok(ip) => return ip.to_string(),
            Err(_) => break,
        }
    }
    client.to_string()
}

const BAD_CREDENTIALS: &str = "The username or password is not correct.";

async fn sign_in_post(
    req: HttpRequest,
    agency: web::Data<Agency>,
    hasher: web::Data<Hashers>,
    issuer: web::Data<Addr<TicketIssuer>>,
    form: web::Form<SignInForm>,
) -> HttpResponse {
    let form = form.into_inner();
    if !csrf_ok(&req, &form.csrf) {
        return csrf_refused(&agency);
    }
    // Where the sign-in continues: a partner site's request, or the home page.
    let authz = if form.params.client_id.is_some() {
        match checked(&agency, &form.params).await {
            Ok(a) => Some(a),
            Err(resp) => return resp,
        }
    } else {
        None
    };
    let site_name = authz.as_ref().map(|a| a.site.name.clone());
    let typed = form.username.trim().to_lowercase();
    if typed.len() > 256 || form.password.len() > 1024 {
        return sign_in_page(
            &req,
            &agency,
            &form.params,
            site_name.as_deref(),
            "",
            Some(BAD_CREDENTIALS),
            StatusCode::UNAUTHORIZED,
        );
    }
    let account = secret_hash(typed.as_bytes());
    let source = client_source(&req, &agency);

    // A lock known here refuses at once, without hashing. A lock this node has
    // not applied yet is enforced by the state machine, which refuses the
    // session (below) in log order.
    let now = now_ms();
    let locked = ThrottleSubject::of_sign_in(&account, &source)
        .iter()
        .filter_map(|s| agency.state.failures(s).ok())
        .map(|f| f.locked_until_ms)
        .filter(|t| *t > now)
        .max();
    let locked_page = |retry_after_s: u64| {
        agency.metrics.sign_ins.with_label_values(&["locked"]).inc();
        let mut resp = sign_in_page(
            &req,
            &agency,
            &form.params,
            site_name.as_deref(),
            &typed,
            Some("Too many failed sign-ins. Wait a few minutes, then try again."),
            StatusCode::TOO_MANY_REQUESTS,
        );
        if let Ok(v) = header::HeaderValue::from_str(&retry_after_s.max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    };
    if let Some(until) = locked {
        return locked_page(until.saturating_sub(now).div_ceil(1000));
    }

    let user = agency.state.user(&typed).ok().flatten();
    let hash = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_string());
    let Ok(verified) = hasher.verify(form.password.clone(), hash).await else {
        return busy_page(&agency);
    };
    let user = match user {
        Some(u) if verified && !u.disabled && u.password_hash.is_some() => u,
        _ => {
            agency.metrics.sign_ins.with_label_values(&["failed"]).inc();
            let op = Op::RecordFailedSignIn {
                account,
                source,
                policy: throttle_policy(&agency),
            };
            if let Err(e) = agency.write(op, None).await {
                tracing::warn!(error = %e, "could not record a failed sign-in");
            }
            return sign_in_page(
                &req,
                &agency,
                &form.params,
                site_name.as_deref(),
                &typed,
                Some(BAD_CREDENTIALS),
                StatusCode::UNAUTHORIZED,
            );
        }
    };

    // A new session id at every sign-in, whatever cookie the browser sent.
    let mut secret = [0u8; SESSION_SECRET_LEN];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let key = secret_hash(&secret);
    let s = &agency.config.sso;
    let session = Session {
        key,
        sid: public_sid(&key),
        user_id: user.id,
        username: user.username.clone(),
        agency: s.agency.clone(),
        created_ms: now,
        last_seen_ms: now,
        idle_timeout_ms: s.session_idle_timeout_s * 1000,
        absolute_expiry_ms: now + s.session_lifetime_s * 1000,
        auth_time_ms: now,
        methods: vec!["pwd".into()],
        sites: Vec::new(),
    };
    let created = agency
        .write(
            Op::CreateSession {
                session: Box::new(session),
                account,
                source: source.clone(),
            },
            None,
        )
        .await;
    let session = match created {
        Ok(Outcome::Session(s)) => *s,
        Err(NodeError::Apply(e)) if e.code == baa_proto::ErrorCode::TooManyAttempts => {
            let s = agency.config.sso.lockout_s;
            return locked_page(s);
        }
        Ok(_) => return internal(&agency, &NodeError::Internal("unexpected outcome".into())),
        Err(e) => return internal(&agency, &e),
    };
    let cookies = match browser_cookies(&agency, Some((&secret, &session))) {
        Ok(c) => c,
        Err(e) => return internal(&agency, &e),
    };
    agency.metrics.sign_ins.with_label_values(&["ok"]).inc();
    tracing::info!(user = %user.username, sid = %session.sid, "signed in");
    let v = ValidSession { session, key };
    let resp = match authz {
        Some(a) => continue_flow(&req, &agency, &issuer, &form.params, &a, Some(v), true).await,
        None => HttpResponse::SeeOther()
            .insert_header((
                header::LOCATION,
                form.params.safe_continue().unwrap_or("/").to_string(),
            ))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
    };
    with_cookies(resp, cookies)
}

/// The trust page's form.
#[derive(Deserialize)]
struct ConsentForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    account_name: Option<String>,
    #[serde(default)]
    share_name: Option<String>,
    #[serde(default)]
    share_email: Option<String>,
    #[serde(flatten)]
    params: AuthParams,
}

async fn consent_post(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<SessionGate>>,
    issuer: web::Data<Addr<TicketIssuer>>,
    form: web::Form<ConsentForm>,
) -> HttpResponse {
    let form = form.into_inner();
    if !csrf_ok(&req, &form.csrf) {
        return csrf_refused(&agency);
    }
    let a = match checked(&agency, &form.params).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let Some(v) = current_session(&req, &gate, &agency).await else {
        return sign_in_page(
            &req,
            &agency,
            &form.params,
            Some(&a.site.name),
            "",
            Some("Your session ended. Sign in again."),
            StatusCode::UNAUTHORIZED,
        );
    };
    if form.decision != "approve" {
        return deliver_error(
            &a,
            &agency.config.issuer,
            "access_denied",
            "the user declined",
        );
    }
    let params = LoginParams {
        account_name: match form.account_name.as_deref() {
            Some("pseudonym") => AccountName::Pseudonym,
            _ => AccountName::Username,
        },
        share_name: form.share_name.is_some(),
        share_email: form.share_email.is_some(),
    };
    let now = now_ms();
    let trust = Trust {
        user_id: v.session.user_id,
        client_id: a.site.client_id.clone(),
        scopes: a.scopes.clone(),
        params,
        created_ms: now,
        updated_ms: now,
    };
    if let Err(e) = agency.write(Op::SetTrust(Box::new(trust)), None).await {
        return internal(&agency, &e);
    }
    issue_and_deliver(&agency, &issuer, &a, &v).await
}

async fn home(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<SessionGate>>,
) -> HttpResponse {
    let session = current_session(&req, &gate, &agency).await;
    let user = session
        .as_ref()
        .and_then(|v| agency.state.user_by_id(v.session.user_id).ok().flatten());
    let sites: Vec<(String, String)> = match &user {
        Some(u) => agency
            .state
            .trusts(u.id)
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                let name = agency
                    .state
                    .site(&t.client_id)
                    .ok()
                    .flatten()
                    .map_or_else(|| t.client_id.clone(), |s| s.name);
                (t.client_id, name)
            })
            .collect(),
        None => Vec::new(),
    };
    let csp = Csp::new(Vec::new());
    let body = pages::home(
        &csp,
        &pages::HomePage {
            agency: &agency.config.sso.agency,
            user: user
                .as_ref()
                .map(|u| (u.username.as_str(), u.display_name.as_str())),
            sites: &sites,
        },
    );
    pages::html_response(StatusCode::OK, body, &csp)
}

/// RP-initiated logout parameters.
#[derive(Debug, Clone, Default, Deserialize)]
struct LogoutParams {
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    client_id: Option<String>,
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
fn check_logout(agency: &Agency, p: &LogoutParams) -> Result<Option<String>, HttpResponse> {
    let hint = p
        .id_token_hint
        .as_deref()
        .and_then(|t| hint_claims(agency, t));
    if p.id_token_hint.is_some() && hint.is_none() {
        return Err(error_page(
            agency,
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The id_token_hint is not a token this agency issued.",
        ));
    }
    let Some(uri) = &p.post_logout_redirect_uri else {
        return Ok(None);
    };
    let client = hint.map(|h| h.aud).or_else(|| p.client_id.clone());
    let site = client.and_then(|c| agency.state.site(&c).ok().flatten());
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
        _ => Err(error_page(
            agency,
            StatusCode::BAD_REQUEST,
            "invalid_redirect_uri",
            "The post-logout redirect URI is not one the partner site registered.",
        )),
    }
}

async fn logout_get(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<SessionGate>>,
    backchannel: web::Data<super::oidc::Backchannel>,
    params: web::Query<LogoutParams>,
) -> HttpResponse {
    let p = params.into_inner();
    let target = match check_logout(&agency, &p) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let session = current_session(&req, &gate, &agency).await;
    // A site that proves which session it means (id_token_hint) needs no
    // confirmation; anything else asks the user first.
    let hinted = p
        .id_token_hint
        .as_deref()
        .and_then(|t| hint_claims(&agency, t))
        .and_then(|h| h.sid);
    if let (Some(v), Some(sid)) = (&session, hinted) {
        if v.session.sid == sid {
            return perform_logout(&agency, &backchannel, Some(v.clone()), target).await;
        }
    }
    agency.metrics.pages.with_label_values(&["sign_out"]).inc();
    let (csrf, cookie) = csrf_token(&req);
    // Confirming may return to the site's registered post-logout URI.
    let csp = Csp::new(target.as_deref().map(origin_of).into_iter().collect());
    let mut hidden = Vec::new();
    for (k, v) in [
        ("id_token_hint", &p.id_token_hint),
        ("post_logout_redirect_uri", &p.post_logout_redirect_uri),
        ("state", &p.state),
        ("client_id", &p.client_id),
    ] {
        if let Some(v) = v {
            hidden.push((k.to_string(), v.clone()));
        }
    }
    let body = pages::sign_out(
        &csp,
        &pages::SignOutPage {
            action: "/sso/logout",
            csrf: &csrf,
            hidden: &hidden,
            username: session.as_ref().map(|v| v.session.username.as_str()),
        },
    );
    with_cookie(pages::html_response(StatusCode::OK, body, &csp), cookie)
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
    #[serde(flatten)]
    params: LogoutParamsForm,
}

/// The same parameters as a form (flattened forms need owned strings).
#[derive(Deserialize, Default)]
struct LogoutParamsForm {
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    client_id: Option<String>,
}

async fn logout_post(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<SessionGate>>,
    backchannel: web::Data<super::oidc::Backchannel>,
    form: web::Form<LogoutForm>,
) -> HttpResponse {
    let form = form.into_inner();
    if !csrf_ok(&req, &form.csrf) {
        return csrf_refused(&agency);
    }
    let p = LogoutParams {
        id_token_hint: form.params.id_token_hint,
        post_logout_redirect_uri: form.params.post_logout_redirect_uri,
        state: form.params.state,
        client_id: form.params.client_id,
    };
    let target = match check_logout(&agency, &p) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let session = current_session(&req, &gate, &agency).await;
    perform_logout(&agency, &backchannel, session, target).await
}

/// Ends the session everywhere, tells the sites, clears the cookie.
async fn perform_logout(
    agency: &web::Data<Agency>,
    backchannel: &super::oidc::Backchannel,
    session: Option<ValidSession>,
    target: Option<String>,
) -> HttpResponse {
    if let Some(v) = session {
        match agency.write(Op::RevokeSession { key: v.key }, None).await {
            Ok(Outcome::Revoked(r)) => {
                tracing::info!(sid = %r.sid, tokens = r.tokens_revoked, "signed out");
                backchannel.notify(agency.clone().into_inner(), r);
            }
            Ok(_) => {}
            Err(NodeError::Apply(e)) if e.code == baa_proto::ErrorCode::SessionNotFound => {}
            Err(e) => return internal(agency, &e),
        }
    }
    let clear = match browser_cookies(agency, None) {
        Ok(c) => c,
        Err(e) => return internal(agency, &e),
    };
    let resp = match target {
        Some(t) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, t))
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .finish(),
        None => {
            let csp = Csp::new(Vec::new());
            pages::html_response(StatusCode::OK, pages::signed_out(&csp, None), &csp)
        }
    };
    with_cookies(resp, clear)
}

#[cfg(test)]
mod tests {
    use super::{redirect_matches, source_of};

    #[test]
    fn the_client_is_the_last_untrusted_forwarded_hop() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = |s: &str| Some(s.parse().unwrap());
        // A client that talks to us directly: its own address, whatever it claims.
        assert_eq!(
            source_of(peer("192.0.2.1"), ["203.0.113.9"].into_iter(), &trusted),
            "192.0.2.1"
        );
        // Through our proxies: the last hop they did not add.
        assert_eq!(
            source_of(
                peer("10.0.0.2"),
                ["198.51.100.1, 203.0.113.9, 10.0.0.5"].into_iter(),
                &trusted
            ),
            "203.0.113.9"
        );
        assert_eq!(
            source_of(
                peer("10.0.0.2"),
                ["198.51.100.1", "203.0.113.9"].into_iter(),
                &trusted
            ),
            "203.0.113.9"
        );
        // A proxy with no header, or garbage in it: the proxy itself.
        assert_eq!(
            source_of(peer("10.0.0.2"), std::iter::empty(), &trusted),
            "10.0.0.2"
        );
        assert_eq!(
            source_of(peer("10.0.0.2"), ["nonsense"].into_iter(), &trusted),
            "10.0.0.2"
        );
        assert_eq!(source_of(None, std::iter::empty(), &trusted), "unknown");
    }

    #[test]
    fn loopback_redirects_match_on_any_port_only() {
        let reg = "http://127.0.0.1/callback";
        for ok in [
            "http://127.0.0.1/callback",
            "http://127.0.0.1:1/callback",
            "http://127.0.0.1:51234/callback",
        ] {
            assert!(redirect_matches(reg, ok), "{ok}");
        }
        assert!(redirect_matches("http://[::1]/cb", "http://[::1]:8080/cb"));
        assert!(redirect_matches(
            "http://127.0.0.1:9/cb",
            "http://127.0.0.1:7/cb"
        ));
        for bad in [
            "http://127.0.0.1.evil.localtest/callback",
            "http://127.0.0.1.evil.localtest:80/callback",
            "http://127.0.0.1:80@evil.localtest/callback",
            "http://localhost:5000/callback",
            "http://127.0.0.2:5000/callback",
            "https://127.0.0.1:5000/callback",
            "http://127.0.0.1:5000/callback/x",
            "http://127.0.0.1:5000/Callback",
            "http://127.0.0.1:5000/callback?x=1",
            "http://127.0.0.1:5000/callback#f",
            "http://127.0.0.1:5000/../callback",
            "http://127.0.0.1:/callback",
            "http://127.0.0.1:5000:6000/callback",
            "http://[::1]:5000/callback",
        ] {
            assert!(!redirect_matches(reg, bad), "{bad}");
        }
        // Non-loopback registrations match exactly only.
        assert!(!redirect_matches(
            "https://shop.example/cb",
            "https://shop.example:444/cb"
        ));
    }
}
