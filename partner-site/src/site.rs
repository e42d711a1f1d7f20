//! The site itself: an OpenID Connect relying party (confidential client)
//! that signs users in through the agency with `response_mode=form_post`,
//! PKCE and a nonce, and honours back-channel logout. All of its state is in
//! memory.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use anyhow::Context;

use maud::Markup;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::oidc::{self, Claims, Expected, Keys, RoundRobin, TokenError};
use crate::pages;

/// Cookie binding a login flow to the browser that started it. It must reach
/// the cross-site form POST of the callback, hence `SameSite=None`.
const FLOW_COOKIE: &str = "site_flow";
/// Cookie naming the browser's site session.
const SESSION_COOKIE: &str = "site_session";
/// Cookie holding the error code of the browser's last failed login.
const LOGIN_ERROR_COOKIE: &str = "site_login_error";
/// How long a login flow may take.
const FLOW_LIFETIME: Duration = Duration::from_secs(600);
/// At most this many login flows are pending at once.
const MAX_FLOWS: usize = 10_000;
/// At most this many entries are kept in each diagnostic list.
const MAX_RECORDED: usize = 100;
/// Timeout of every call to the agency.
const AGENCY_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the partner site needs to run.
#[derive(Clone)]
pub struct SiteConfig {
    /// Address of the HTTPS listener.
    pub listen: SocketAddr,
    /// PEM certificate (chain) of the site.
    pub cert_file: PathBuf,
    /// PEM private key of the site.
    pub key_file: PathBuf,
    /// PEM CA that signs the agency's TLS certificates.
    pub ca_file: PathBuf,
    /// The site's URL as the browser sees it, e.g. `https://shop.baa.localtest:9443`.
    pub public_url: String,
    /// Display name.
    pub name: String,
    /// OAuth client id.
    pub client_id: String,
    /// OAuth client secret.
    pub client_secret: String,
    /// Expected `iss` of the agency's tokens.
    pub issuer: String,
    /// Base URLs of the agency nodes, used in turn.
    pub agencies: Vec<String>,
    /// Host name overrides for calls to the agency.
    pub resolve: Vec<(String, IpAddr)>,
    /// Scopes requested at the authorization endpoint.
    pub scope: String,
    /// The algorithm of the ID tokens, as registered at the agency.
    pub id_token_alg: jsonwebtoken::Algorithm,
    /// Bearer token that opens `/status.json` (sessions and claims of its
    /// users); without one that page is not served.
    pub status_token: Option<String>,
}

/// A login started at `/login` and not yet finished at `/callback`.
struct Flow {
    nonce: String,
    verifier: String,
    expires: Instant,
    /// Rotation position of the node that got the authorization request; the
    /// ticket is redeemed at the one after it, so the two steps never share a node.
    node: usize,
}

/// A signed-in browser.
struct Session {
    claims: Claims,
    sub: String,
    sid: Option<String>,
    id_token: String,
    access_token: String,
    created: Instant,
}

/// Mutable state of the site.
#[derive(Default)]
struct SiteState {
    flows: HashMap<String, Flow>,
    sessions: HashMap<String, Session>,
    logins: u64,
    login_errors: VecDeque<String>,
    agency_errors: VecDeque<String>,
    backchannel_logouts: u64,
    backchannel_sids: VecDeque<String>,
    /// `jti` of accepted logout tokens → their `exp`, to count replays once.
    logout_jtis: HashMap<String, u64>,
}

fn record(list: &mut VecDeque<String>, entry: String) {
    if list.len() >= MAX_RECORDED {
        list.pop_front();
    }
    list.push_back(entry);
}

/// The running site, shared by every worker.
struct Site {
    name: String,
    client_id: String,
    client_secret: String,
    issuer: String,
    public_url: String,
    redirect_uri: String,
    scope: String,
    id_token_alg: jsonwebtoken::Algorithm,
    agencies: RoundRobin,
    http: reqwest::Client,
    keys: Mutex<Keys>,
    state: Mutex<SiteState>,
    status_token: Option<String>,
}

/// A login step that failed; the message is shown to the user and never
/// contains a secret.
#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("the ID token was refused: {0}")]
    IdToken(#[from] TokenError),
    #[error("{0}")]
    Agency(String),
}

fn trim_url(url: &str) -> anyhow::Result<String> {
    let trimmed = url.trim_end_matches('/').to_string();
    let parsed = url::Url::parse(&trimmed).with_context(|| format!("invalid URL {url:?}"))?;
    anyhow::ensure!(
        matches!(parsed.scheme(), "https" | "http"),
        "{url:?} is not an http(s) URL"
    );
    Ok(trimmed)
}

/// `application/x-www-form-urlencoded` encoding of one value (RFC 6749 §2.3.1).
fn form_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl Site {
    fn new(config: &SiteConfig) -> anyhow::Result<Self> {
        let ca = std::fs::read(&config.ca_file)
            .with_context(|| format!("reading CA file {}", config.ca_file.display()))?;
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(AGENCY_TIMEOUT);
        let roots = reqwest::Certificate::from_pem_bundle(&ca)
            .with_context(|| format!("parsing CA file {}", config.ca_file.display()))?;
        anyhow::ensure!(
            !roots.is_empty(),
            "no certificate in {}",
            config.ca_file.display()
        );
        for cert in roots {
            builder = builder.add_root_certificate(cert);
        }
        for (host, ip) in &config.resolve {
            builder = builder.resolve(host, SocketAddr::new(*ip, 0));
        }
        let http = builder.build().context("building the HTTP client")?;
        let agencies = config
            .agencies
            .iter()
            .map(|a| trim_url(a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let agencies = RoundRobin::new(agencies).context("at least one --agency is required")?;
        let public_url = trim_url(&config.public_url)?;
        anyhow::ensure!(!config.client_id.is_empty(), "the client id is empty");
        anyhow::ensure!(
            !config.client_secret.is_empty(),
            "the client secret is empty"
        );
        Ok(Self {
            name: config.name.clone(),
            client_id: config.client_id.clone(),
            client_secret: config.client_secret.clone(),
            issuer: config.issuer.clone(),
            redirect_uri: format!("{public_url}/callback"),
            public_url,
            scope: config.scope.clone(),
            id_token_alg: config.id_token_alg,
            agencies,
            http,
            keys: Mutex::new(HashMap::new()),
            state: Mutex::new(SiteState::default()),
            status_token: config.status_token.clone(),
        })
    }

    fn state(&self) -> MutexGuard<'_, SiteState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What an ID token must be: from the agency, for this site, signed
    /// with the algorithm registered.
    fn expected(&self) -> Expected<'_> {
        Expected {
            issuer: &self.issuer,
            client_id: &self.client_id,
            alg: self.id_token_alg,
        }
    }

    /// What a logout token must be (always RS256).
    fn expected_logout(&self) -> Expected<'_> {
        Expected {
            alg: jsonwebtoken::Algorithm::RS256,
            ..self.expected()
        }
    }

    /// The cached signing keys, after fetching the agency's JWKS once more if
    /// `token` (signed with `alg`) names a key not seen yet.
    async fn keys_for(
        &self,
        token: &str,
        alg: jsonwebtoken::Algorithm,
    ) -> Result<Keys, LoginError> {
        let kid = oidc::signing_kid(token, alg)?;
        {
            let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            if keys.contains_key(&kid) {
                return Ok(keys.clone());
            }
        }
        let agency = self.agencies.next();
        let url = format!("{agency}/.well-known/jwks.json");
        let doc: Value = async {
            self.http
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await
        }
        .await
        .map_err(|e| LoginError::Agency(format!("fetching the agency's keys failed: {e}")))?;
        let fresh = oidc::parse_jwks(&doc);
        tracing::info!(
            agency,
            keys = fresh.len(),
            "fetched the agency's signing keys"
        );
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if !fresh.is_empty() {
            *keys = fresh;
        }
        Ok(keys.clone())
    }

    /// Redeems `code` at the next agency node and verifies the ID token.
    async fn redeem(
        &self,
        code: &str,
        flow: &Flow,
    ) -> Result<(oidc::IdToken, String, String), LoginError> {
        #[derive(Deserialize)]
        struct TokenResponse {
            access_token: Option<String>,
            token_type: Option<String>,
            id_token: Option<String>,
            error: Option<String>,
            error_description: Option<String>,
        }
        let agency = self.agencies.at(flow.node + 1);
        let resp = self
            .http
            .post(format!("{agency}/sso/token"))
            .basic_auth(
                form_encode(&self.client_id),
                Some(form_encode(&self.client_secret)),
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.redirect_uri),
                ("code_verifier", &flow.verifier),
            ])
            .send()
            .await
            .map_err(|e| LoginError::Agency(format!("the token request failed: {e}")))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| LoginError::Agency(format!("reading the token response failed: {e}")))?;
        let answer: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
            LoginError::Agency(format!(
                "the token endpoint answered {status} with a body that is not a token response"
            ))
        })?;
        if let Some(error) = answer.error {
            return Err(LoginError::Agency(format!(
                "the token endpoint refused the code ({status}): {error}: {}",
                answer.error_description.unwrap_or_default()
            )));
        }
        if !status.is_success() {
            return Err(LoginError::Agency(format!(
                "the token endpoint answered {status}"
            )));
        }
        if !answer
            .token_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
        {
            return Err(LoginError::Agency(
                "the token response has no Bearer token_type".into(),
            ));
        }
        let id_token = answer
            .id_token
            .ok_or_else(|| LoginError::Agency("the token response has no id_token".into()))?;
        let keys = self.keys_for(&id_token, self.id_token_alg).await?;
        let verified = oidc::verify_id_token(&id_token, &keys, self.expected(), &flow.nonce)?;
        tracing::info!(agency, "authorization code redeemed");
        Ok((verified, id_token, answer.access_token.unwrap_or_default()))
    }

    /// Records a failed login and renders it.
    fn login_failure(&self, message: String) -> HttpResponse {
        tracing::warn!(error = %message, "login failed");
        record(&mut self.state().login_errors, message.clone());
        page(
            StatusCode::BAD_REQUEST,
            pages::failure(&self.name, "Sign-in failed", &message),
        )
    }
}

/// The value of cookie `name`, if the request carries it.
fn cookie(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

/// A `Set-Cookie` value for a host-only, HTTPS-only, script-inaccessible cookie.
fn set_cookie(name: &str, value: &str, same_site: &str, max_age: Option<Duration>) -> String {
    let mut c = format!("{name}={value}; Path=/; HttpOnly; Secure; SameSite={same_site}");
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={}", age.as_secs()));
    }
    c
}

/// A `Set-Cookie` value that removes cookie `name`.
fn clear_cookie(name: &str, same_site: &str) -> String {
    format!("{name}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite={same_site}")
}

/// An error code fit to live in a cookie and to be shown.
fn sanitize_error_code(code: &str) -> String {
    let s: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        .take(64)
        .collect();
    if s.is_empty() {
        "error".into()
    } else {
        s
    }
}

/// Form or query fields; a field given twice is refused.
fn parse_fields(input: &[u8]) -> Result<HashMap<String, String>, String> {
    let mut fields = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(input) {
        if fields.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("parameter {k} is given more than once"));
        }
    }
    Ok(fields)
}

fn page(status: StatusCode, markup: Markup) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ))
        .body(markup.into_string())
}

fn see_other(location: &str) -> actix_web::HttpResponseBuilder {
    let mut b = HttpResponse::SeeOther();
    b.insert_header((header::LOCATION, location.to_string()));
    b
}

/// `GET /`: the session's claims, or the sign-in link.
async fn index(req: HttpRequest, site: web::Data<Site>) -> HttpResponse {
    if let Some(id) = cookie(&req, SESSION_COOKIE) {
        let state = site.state();
        if let Some(s) = state.sessions.get(&id) {
            let markup = pages::signed_in(
                &site.name,
                &s.claims,
                s.sid.as_deref(),
                !s.access_token.is_empty(),
            );
            return page(StatusCode::OK, markup);
        }
    }
    let last_error = cookie(&req, LOGIN_ERROR_COOKIE).map(|c| sanitize_error_code(&c));
    page(
        StatusCode::OK,
        pages::signed_out(&site.name, last_error.as_deref()),
    )
}

/// `GET /login`: starts a login flow at the next agency node.
async fn login(req: HttpRequest, site: web::Data<Site>) -> HttpResponse {
    let fields = match parse_fields(req.query_string().as_bytes()) {
        Ok(f) => f,
        Err(e) => return site.login_failure(e),
    };
    let prompt = fields.get("prompt").map(String::as_str);
    if !matches!(prompt, None | Some("none" | "login" | "consent")) {
        return site.login_failure("prompt must be none, login or consent".into());
    }
    let state = oidc::random_token();
    let nonce = oidc::random_token();
    let verifier = oidc::random_token();
    let challenge = oidc::pkce_challenge(&verifier);
    let node = site.agencies.next_index();
    {
        let mut st = site.state();
        let now = Instant::now();
        st.flows.retain(|_, f| f.expires > now);
        if st.flows.len() >= MAX_FLOWS {
            drop(st);
            return page(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::failure(&site.name, "Busy", "Too many sign-ins are in progress."),
            );
        }
        st.flows.insert(
            state.clone(),
            Flow {
                nonce: nonce.clone(),
                verifier,
                expires: now + FLOW_LIFETIME,
                node,
            },
        );
    }
    let agency = site.agencies.at(node);
    let mut url = match url::Url::parse(&format!("{agency}/sso/authorize")) {
        Ok(u) => u,
        Err(e) => return site.login_failure(format!("bad agency URL: {e}")),
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &site.client_id)
            .append_pair("redirect_uri", &site.redirect_uri)
            .append_pair("scope", &site.scope)
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("response_mode", "form_post");
        if let Some(p) = prompt {
            q.append_pair("prompt", p);
        }
    }
    tracing::info!(agency, prompt = prompt.unwrap_or(""), "login started");
    see_other(url.as_str())
        .append_header((
            header::SET_COOKIE,
            set_cookie(FLOW_COOKIE, &state, "None", Some(FLOW_LIFETIME)),
        ))
        .finish()
}

/// `POST /callback`: the agency's form_post with `code` or `error`.
async fn callback(req: HttpRequest, site: web::Data<Site>, body: web::Bytes) -> HttpResponse {
    let fields = match parse_fields(&body) {
        Ok(f) => f,
        Err(e) => return site.login_failure(e),
    };
    let Some(state) = fields.get("state").filter(|s| !s.is_empty()) else {
        return site.login_failure("the callback carries no state".into());
    };
    let bound = cookie(&req, FLOW_COOKIE);
    let flow = {
        let mut st = site.state();
        match st.flows.get(state) {
            None => None,
            Some(_)
                if !bound
                    .as_deref()
                    .is_some_and(|b| oidc::same_secret(b, state)) =>
            {
                drop(st);
                return site
                    .login_failure("the state does not belong to this browser's sign-in".into());
            }
            Some(_) => st.flows.remove(state),
        }
    };
    let Some(flow) = flow.filter(|f| f.expires > Instant::now()) else {
        return site.login_failure("unknown, expired or already used state".into());
    };
    let clear_flow = clear_cookie(FLOW_COOKIE, "None");

    if let Some(error) = fields.get("error") {
        let code = sanitize_error_code(error);
        let description = fields.get("error_description").cloned().unwrap_or_default();
        tracing::info!(error = %code, description = %description, "the agency answered with an error");
        record(
            &mut site.state().agency_errors,
            format!("{code}: {description}"),
        );
        return see_other("/")
            .append_header((header::SET_COOKIE, clear_flow))
            .append_header((
                header::SET_COOKIE,
                set_cookie(LOGIN_ERROR_COOKIE, &code, "Lax", None),
            ))
            .finish();
    }
    let Some(code) = fields.get("code").filter(|c| !c.is_empty()) else {
        return site.login_failure("the callback carries neither code nor error".into());
    };
    let (id_token, raw_id_token, access_token) = match site.redeem(code, &flow).await {
        Ok(r) => r,
        Err(e) => return site.login_failure(e.to_string()),
    };

    let session_id = oidc::random_token();
    {
        let mut st = site.state();
        if let Some(old) = cookie(&req, SESSION_COOKIE) {
            st.sessions.remove(&old);
        }
        st.logins += 1;
        st.sessions.insert(
            session_id.clone(),
            Session {
                claims: id_token.claims,
                sub: id_token.sub,
                sid: id_token.sid,
                id_token: raw_id_token,
                access_token,
                created: Instant::now(),
            },
        );
    }
    tracing::info!("user signed in");
    see_other("/")
        .append_header((header::SET_COOKIE, clear_flow))
        .append_header((header::SET_COOKIE, clear_cookie(LOGIN_ERROR_COOKIE, "Lax")))
        .append_header((
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, &session_id, "Lax", None),
        ))
        .finish()
}

/// `GET /logout`: ends the site session and sends the browser to the agency's
/// end-session endpoint.
async fn logout(req: HttpRequest, site: web::Data<Site>) -> HttpResponse {
    let session = cookie(&req, SESSION_COOKIE).and_then(|id| site.state().sessions.remove(&id));
    let clear = clear_cookie(SESSION_COOKIE, "Lax");
    let Some(session) = session else {
        return see_other("/")
            .append_header((header::SET_COOKIE, clear))
            .finish();
    };
    let agency = site.agencies.next();
    let mut url = match url::Url::parse(&format!("{agency}/sso/logout")) {
        Ok(u) => u,
        Err(_) => {
            return see_other("/")
                .append_header((header::SET_COOKIE, clear))
                .finish()
        }
    };
    url.query_pairs_mut()
        .append_pair("id_token_hint", &session.id_token)
        .append_pair("post_logout_redirect_uri", &format!("{}/", site.public_url))
        .append_pair("client_id", &site.client_id);
    tracing::info!(agency, "signed out; sending the browser to the agency");
    see_other(url.as_str())
        .append_header((header::SET_COOKIE, clear))
        .finish()
}

fn invalid_request(description: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({
        "error": "invalid_request",
        "error_description": description,
    }))
}

/// `POST /backchannel-logout`: the agency reports that session `sid` ended.
async fn backchannel_logout(site: web::Data<Site>, body: web::Bytes) -> HttpResponse {
    let fields = match parse_fields(&body) {
        Ok(f) => f,
        Err(e) => return invalid_request(&e),
    };
    let Some(token) = fields.get("logout_token").filter(|t| !t.is_empty()) else {
        return invalid_request("logout_token is missing");
    };
    let keys = match site.keys_for(token, jsonwebtoken::Algorithm::RS256).await {
        Ok(k) => k,
        Err(e) => return invalid_request(&e.to_string()),
    };
    let logout = match oidc::verify_logout_token(token, &keys, site.expected_logout()) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "refused a logout token");
            return invalid_request(&e.to_string());
        }
    };
    let removed = {
        let mut st = site.state();
        let before = st.sessions.len();
        st.sessions
            .retain(|_, s| s.sid.as_deref() != Some(logout.sid.as_str()));
        let removed = before - st.sessions.len();
        let now = jsonwebtoken::get_current_timestamp();
        st.logout_jtis
            .retain(|_, exp| *exp + oidc::LEEWAY_SECS >= now);
        if st.logout_jtis.insert(logout.jti, logout.exp).is_none() {
            st.backchannel_logouts += 1;
            record(&mut st.backchannel_sids, logout.sid.clone());
        }
        removed
    };
    tracing::info!(
        sid = %logout.sid,
        sub = logout.sub.as_deref().unwrap_or(""),
        removed,
        "back-channel logout"
    );
    HttpResponse::Ok().finish()
}

/// `GET /healthz`: 200 while the site serves (no data).
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

/// Whether the request carries the status token (compared in constant time).
fn status_allowed(site: &Site, req: &HttpRequest) -> bool {
    use subtle::ConstantTimeEq;
    let Some(want) = &site.status_token else {
        return false;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|got| bool::from(got.as_bytes().ct_eq(want.as_bytes())))
}

/// `GET /status.json`: sessions and counters, for tests — only with the
/// status token (it lists users' sessions and claims).
async fn status(req: HttpRequest, site: web::Data<Site>) -> HttpResponse {
    if site.status_token.is_none() {
        return not_found(site).await;
    }
    if !status_allowed(&site, &req) {
        return HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"status\""))
            .json(json!({
                "error": "unauthorized",
                "error_description": "the status token is required",
            }));
    }
    let st = site.state();
    let mut sessions: Vec<&Session> = st.sessions.values().collect();
    sessions.sort_by_key(|s| s.created);
    let body = json!({
        "client_id": site.client_id,
        "sessions": sessions.iter().map(|s| json!({
            "sid": s.sid,
            "sub": s.sub,
            "claims": s.claims,
        })).collect::<Vec<_>>(),
        "logins": st.logins,
        "login_errors": st.login_errors,
        "agency_errors": st.agency_errors,
        "backchannel_logouts": st.backchannel_logouts,
        "backchannel_sids": st.backchannel_sids,
    });
    drop(st);
    HttpResponse::Ok().json(body)
}

async fn not_found(site: web::Data<Site>) -> HttpResponse {
    page(
        StatusCode::NOT_FOUND,
        pages::failure(&site.name, "Not found", "There is no such page."),
    )
}

/// Runs the site until SIGINT/SIGTERM. Must be called inside an actix System.
pub async fn run(config: SiteConfig) -> anyhow::Result<()> {
    crate::tls::install_crypto_provider();
    let tls = crate::tls::server_config(&config.cert_file, &config.key_file)?;
    let site = web::Data::new(Site::new(&config)?);
    let (name, public_url) = (site.name.clone(), site.public_url.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(site.clone())
            .app_data(web::PayloadConfig::new(64 * 1024))
            .wrap(DefaultHeaders::new().add((header::CACHE_CONTROL, "no-store")))
            .route("/", web::get().to(index))
            .route("/login", web::get().to(login))
            .route("/callback", web::post().to(callback))
            .route("/logout", web::get().to(logout))
            .route("/backchannel-logout", web::post().to(backchannel_logout))
            .route("/status.json", web::get().to(status))
            .route("/healthz", web::get().to(healthz))
            .default_service(web::to(not_found))
    })
    .workers(2)
    .shutdown_timeout(5)
    .bind_rustls_0_23(config.listen, tls)
    .with_context(|| format!("binding {}", config.listen))?
    .run();
    tracing::info!(listen = %config.listen, "partner site {name} listening on {public_url}");
    server.await?;
    tracing::info!("partner site {name} stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use jsonwebtoken::{EncodingKey, Header};
    use rsa::traits::PublicKeyParts;

    use super::*;
    use crate::oidc::*;

    const ISS: &str = "https://login.baa.localtest:8441";
    const CLIENT: &str = "shop";
    const KID: &str = "k1";

    struct TestKey {
        encoding: EncodingKey,
        jwks: Value,
    }

    fn test_key() -> &'static TestKey {
        static KEY: OnceLock<TestKey> = OnceLock::new();
        KEY.get_or_init(|| {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap();
            let der = private.to_pkcs1_der().unwrap();
            let public = private.to_public_key();
            TestKey {
                encoding: EncodingKey::from_rsa_der(der.as_bytes()),
                jwks: json!({"keys": [
                    {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
                    {"kty": "RSA", "kid": "enc", "use": "enc",
                     "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                     "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be())},
                    {"kty": "RSA", "kid": KID, "use": "sig", "alg": "RS256",
                     "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                     "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be())},
                ]}),
            }
        })
    }

    fn keys() -> Keys {
        parse_jwks(&test_key().jwks)
    }

    fn sign(claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &test_key().encoding).unwrap()
    }

    fn expected() -> Expected<'static> {
        Expected {
            issuer: ISS,
            client_id: CLIENT,
            alg: jsonwebtoken::Algorithm::RS256,
        }
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn logout_claims() -> Value {
        json!({
            "iss": ISS,
            "aud": CLIENT,
            "iat": now(),
            "exp": now() + 120,
            "jti": "j1",
            "sid": "s1",
            "sub": "alice",
            "events": {BACKCHANNEL_EVENT: {}},
        })
    }

    fn with(mut claims: Value, key: &str, value: Value) -> Value {
        claims[key] = value;
        claims
    }

    fn without(mut claims: Value, key: &str) -> Value {
        claims.as_object_mut().unwrap().remove(key);
        claims
    }

    #[test]
    fn pkce_challenge_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn random_tokens_are_long_and_distinct() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 43);
        assert_ne!(a, b);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }

    #[test]
    fn round_robin_rotates_over_every_node() {
        assert!(RoundRobin::new(Vec::new()).is_none());
        let rr = RoundRobin::new(vec!["a".into(), "b".into(), "c".into()]).unwrap();
        let seen: Vec<&str> = (0..7).map(|_| rr.next()).collect();
        assert_eq!(seen, ["a", "b", "c", "a", "b", "c", "a"]);
    }

    #[test]
    fn jwks_keeps_signature_keys_with_their_algorithm() {
        let keys = keys();
        assert_eq!(keys.len(), 2, "the encryption key is skipped");
        assert_eq!(keys[KID].0, jsonwebtoken::Algorithm::RS256);
        assert_eq!(keys["ec"].0, jsonwebtoken::Algorithm::ES256);
        let mislabelled = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "alg": "RS256", "x": "AA"},
        ]});
        assert!(parse_jwks(&mislabelled).is_empty());
        assert!(parse_jwks(&json!({"nokeys": 1})).is_empty());
    }

    #[test]
    fn valid_logout_token_is_accepted() {
        let token = sign(&logout_claims(), Some(KID));
        let logout = verify_logout_token(&token, &keys(), expected()).unwrap();
        assert_eq!(logout.sid, "s1");
        assert_eq!(logout.jti, "j1");
        assert_eq!(logout.sub.as_deref(), Some("alice"));
    }

    #[test]
    fn logout_token_claim_checks() {
        let refused = |claims: Value| {
            let token = sign(&claims, Some(KID));
            verify_logout_token(&token, &keys(), expected()).unwrap_err()
        };
        assert!(matches!(
            refused(with(logout_claims(), "nonce", json!("n"))),
            TokenError::Claim(_)
        ));
        assert!(matches!(
            refused(without(logout_claims(), "events")),
            TokenError::Claim(_)
        ));
        assert!(matches!(
            refused(with(logout_claims(), "events", json!({"other": {}}))),
            TokenError::Claim(_)
        ));
        assert!(matches!(
            refused(without(logout_claims(), "sid")),
            TokenError::Claim(_)
        ));
        assert!(matches!(
            refused(without(logout_claims(), "jti")),
            TokenError::Claim(_)
        ));
        assert!(matches!(
            refused(without(logout_claims(), "iat")),
            TokenError::Claim(_)
        ));
        assert!(matches!(
            refused(with(logout_claims(), "aud", json!("news"))),
            TokenError::Audience(_)
        ));
        assert!(matches!(
            refused(with(logout_claims(), "iss", json!("https://evil.example"))),
            TokenError::Issuer(_)
        ));
        assert!(matches!(
            refused(with(logout_claims(), "exp", json!(now() - 120))),
            TokenError::Expired
        ));
        // Within the leeway an expired token still passes.
        let token = sign(&with(logout_claims(), "exp", json!(now() - 30)), Some(KID));
        assert!(verify_logout_token(&token, &keys(), expected()).is_ok());
    }

    #[test]
    fn logout_token_signature_and_key_checks() {
        let token = sign(&logout_claims(), Some("other"));
        assert!(matches!(
            verify_logout_token(&token, &keys(), expected()),
            Err(TokenError::UnknownKey(k)) if k == "other"
        ));
        let token = sign(&logout_claims(), None);
        assert!(matches!(
            verify_logout_token(&token, &keys(), expected()),
            Err(TokenError::NoKid)
        ));
        let hs = jsonwebtoken::encode(
            &Header::default(),
            &logout_claims(),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert!(matches!(
            verify_logout_token(&hs, &keys(), expected()),
            Err(TokenError::Algorithm { .. })
        ));
        let token = sign(&logout_claims(), Some(KID));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&with(logout_claims(), "sid", json!("s2"))).unwrap());
        parts[1] = &forged;
        assert!(matches!(
            verify_logout_token(&parts.join("."), &keys(), expected()),
            Err(TokenError::Signature)
        ));
        assert!(matches!(
            verify_logout_token("garbage", &keys(), expected()),
            Err(TokenError::Malformed)
        ));
    }

    #[test]
    fn id_token_checks() {
        let claims = json!({
            "iss": ISS, "aud": [CLIENT], "iat": now(), "exp": now() + 60,
            "sub": "alice", "nonce": "n1", "sid": "s1", "email": "a@example.test",
        });
        let token = sign(&claims, Some(KID));
        let id = verify_id_token(&token, &keys(), expected(), "n1").unwrap();
        assert_eq!(id.sub, "alice");
        // A site registered for ES256 takes no RS256 token, even one the
        // agency signed.
        let es256 = Expected {
            alg: jsonwebtoken::Algorithm::ES256,
            ..expected()
        };
        assert!(matches!(
            verify_id_token(&token, &keys(), es256, "n1"),
            Err(TokenError::Algorithm { .. })
        ));
        assert_eq!(id.sid.as_deref(), Some("s1"));
        assert_eq!(id.claims["email"], "a@example.test");
        assert!(matches!(
            verify_id_token(&token, &keys(), expected(), "n2"),
            Err(TokenError::Claim(_))
        ));
        let token = sign(&without(claims.clone(), "nonce"), Some(KID));
        assert!(verify_id_token(&token, &keys(), expected(), "n1").is_err());
        let token = sign(&with(claims.clone(), "azp", json!("news")), Some(KID));
        assert!(verify_id_token(&token, &keys(), expected(), "n1").is_err());
        let token = sign(&with(claims, "iss", json!([ISS])), Some(KID));
        assert!(verify_id_token(&token, &keys(), expected(), "n1").is_err());
    }

    #[test]
    fn cookies_and_fields() {
        let req = actix_web::test::TestRequest::default()
            .insert_header((header::COOKIE, "a=1; site_session=abc; b=2"))
            .to_http_request();
        assert_eq!(cookie(&req, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&req, FLOW_COOKIE), None);
        assert_eq!(sanitize_error_code("login_required"), "login_required");
        assert_eq!(sanitize_error_code("<script>; x=1"), "scriptx1");
        assert_eq!(sanitize_error_code(";"), "error");
        assert!(parse_fields(b"state=a&state=b").is_err());
        assert_eq!(parse_fields(b"code=x%2By&state=s").unwrap()["code"], "x+y");
        assert_eq!(form_encode("a b:c"), "a+b%3Ac");
    }

    #[test]
    fn pages_escape_values() {
        let mut claims = Claims::new();
        claims.insert("sub".into(), json!("<b>alice</b>"));
        claims.insert("preferred_username".into(), json!("alice"));
        let html = pages::signed_in("Shop & Co", &claims, Some("s\"1"), true).into_string();
        assert!(html.contains("id=\"claim-sub\""));
        assert!(html.contains("&lt;b&gt;alice&lt;/b&gt;"));
        assert!(html.contains("Shop &amp; Co"));
        assert!(!html.contains("claim-email"));
        let html = pages::signed_out("Shop", Some("login_required")).into_string();
        assert!(html.contains("id=\"login-error\""));
        assert!(html.contains("href=\"/login\""));
    }
}
