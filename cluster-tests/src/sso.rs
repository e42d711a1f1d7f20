//! Single-sign-on test helpers at the HTTP level: registering users and
//! partner sites through the admin API, a small cookie-keeping user agent
//! that signs in and follows the authorization flow by hand, PKCE, and
//! parsing of the agency's HTML forms.

use std::collections::BTreeMap;
use std::time::Duration;

use baa_proto::model::NodeId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use reqwest::header::{HeaderMap, COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

use crate::harness::Cluster;

pub use baa_proto::cookie::{CSRF_COOKIE, REFERENCE_COOKIE, SESSION_COOKIE};

/// A browser's two agency cookies: the host-only session cookie (the
/// bearer) and the shared-domain reference cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoCookies {
    /// Value of the session cookie.
    pub session: String,
    /// Value of the reference cookie.
    pub reference: String,
}

impl SsoCookies {
    /// Both as one `Cookie` header value.
    pub fn header(&self) -> String {
        format!(
            "{SESSION_COOKIE}={}; {REFERENCE_COOKIE}={}",
            self.session, self.reference
        )
    }
}

/// A registered partner site.
#[derive(Debug, Clone)]
pub struct TestSite {
    /// `client_id`.
    pub client_id: String,
    /// Client secret (None for a public client).
    pub secret: Option<String>,
    /// Its registered redirect URI.
    pub redirect_uri: String,
}

/// Creates a user with a password through node 1's admin API.
pub async fn create_user(cluster: &Cluster, username: &str, password: &str) {
    let req = baa_proto::api::CreateUserRequest {
        username: username.into(),
        password: Some(password.into()),
        display_name: Some(format!("{username} Example")),
        email: Some(format!("{username}@example.test")),
        ..Default::default()
    };
    if let Err(e) = cluster.admin(1).create_user(&req, None).await {
        panic!("create user {username}: {e}");
    }
}

/// Registers `baa-cli`, the public native client `baa login` is (loopback
/// redirect on any port, scopes `openid profile offline_access`).
pub async fn add_cli_client(cluster: &Cluster) -> TestSite {
    add_site(
        cluster,
        serde_json::json!({
            "client_id": "baa-cli",
            "name": "baa command line",
            "redirect_uris": ["http://127.0.0.1/callback"],
            "allowed_scopes": ["openid", "profile", "offline_access"],
            "public": true,
        }),
    )
    .await
}

/// Registers a site through node 1's admin API.
pub async fn add_site(cluster: &Cluster, body: serde_json::Value) -> TestSite {
    let created = match cluster.admin(1).create_site(&body).await {
        Ok(c) => c,
        Err(e) => panic!("add site {body}: {e}"),
    };
    TestSite {
        client_id: created.site.client_id,
        secret: created.client_secret,
        redirect_uri: created
            .site
            .redirect_uris
            .first()
            .cloned()
            .unwrap_or_default(),
    }
}

/// A confidential seed-style site with one redirect URI: the ticket comes
/// by the auto-submitting form unless it asks otherwise.
pub async fn add_confidential_site(cluster: &Cluster, client_id: &str, redirect: &str) -> TestSite {
    add_site(
        cluster,
        serde_json::json!({
            "client_id": client_id,
            "name": format!("Site {client_id}"),
            "redirect_uris": [redirect],
            "default_response_mode": "form_post",
        }),
    )
    .await
}

/// A PKCE verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let mut b = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let verifier = URL_SAFE_NO_PAD.encode(b);
    let challenge = baa_proto::pkce::s256(&verifier);
    (verifier, challenge)
}

/// A code request of site `client_id` answered in the redirect's query
/// (scope `openid`, PKCE S256): the query string and its verifier.
pub fn query_mode_request(client_id: &str, redirect_uri: &str) -> (String, String) {
    let (verifier, challenge) = pkce();
    let query = serde_urlencoded::to_string([
        ("client_id", client_id),
        ("redirect_uri", redirect_uri),
        ("response_type", "code"),
        ("response_mode", "query"),
        ("scope", "openid"),
        ("state", "s"),
        ("nonce", "n"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ]);
    (query.unwrap_or_default(), verifier)
}

/// An HTTP answer with its body read.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Body text.
    pub body: String,
}

impl Answer {
    /// The `Location` header.
    pub fn location(&self) -> Option<String> {
        self.headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Hidden (and other) inputs of the page's forms: name → value.
    pub fn inputs(&self) -> BTreeMap<String, String> {
        inputs(&self.body)
    }

    /// The first form's action.
    pub fn form_action(&self) -> Option<String> {
        form_action(&self.body)
    }
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let end = tag[start..].find('"')? + start;
    Some(unescape(&tag[start..end]))
}

/// Every `<input name=… value=…>` of an HTML page (radios/checkboxes excluded).
pub fn inputs(html: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for part in html.split("<input").skip(1) {
        let tag = &part[..part.find('>').unwrap_or(part.len())];
        if tag.contains("type=\"radio\"") || tag.contains("type=\"checkbox\"") {
            continue;
        }
        if let Some(n) = attr(tag, "name") {
            out.insert(n, attr(tag, "value").unwrap_or_default());
        }
    }
    out
}

/// The action of the first `<form>` of an HTML page.
pub fn form_action(html: &str) -> Option<String> {
    let part = html.split("<form").nth(1)?;
    attr(&part[..part.find('>')?], "action")
}

/// Query parameters of a URL.
pub fn query_params(url: &str) -> BTreeMap<String, String> {
    url::Url::parse(url)
        .map(|u| u.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

/// A user agent that keeps the agency's cookies (like a browser would, for
/// one cookie domain) and never follows redirects.
#[derive(Clone)]
pub struct Agent {
    http: reqwest::Client,
    /// Cookies by name.
    pub cookies: BTreeMap<String, String>,
}

impl Agent {
    /// A new agent trusting the cluster's CA.
    pub fn new(cluster: &Cluster) -> Self {
        Self::from_address(cluster, None)
    }

    /// A new agent whose connections leave from `source` (any 127.0.0.0/8
    /// address: a distinct client as far as the agency can tell).
    pub fn from_address(cluster: &Cluster, source: Option<std::net::IpAddr>) -> Self {
        Self::build(cluster, source, Duration::from_secs(30))
    }

    /// A new agent whose requests give up after `timeout`.
    pub fn with_timeout(cluster: &Cluster, timeout: Duration) -> Self {
        Self::build(cluster, None, timeout)
    }

    fn build(cluster: &Cluster, source: Option<std::net::IpAddr>, timeout: Duration) -> Self {
        let ca = std::fs::read(cluster.ca_pem()).expect("CA");
        let http = reqwest::Client::builder()
            .local_address(source)
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"))
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .expect("client");
        Self {
            http,
            cookies: BTreeMap::new(),
        }
    }

    /// Its HTTP client (no cookies of its own, redirects not followed).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The agency cookies, if both are set.
    pub fn sso_cookies(&self) -> Option<SsoCookies> {
        Some(SsoCookies {
            session: self.cookies.get(SESSION_COOKIE)?.clone(),
            reference: self.cookies.get(REFERENCE_COOKIE)?.clone(),
        })
    }

    /// Whether the agency's session cookie is set.
    pub fn has_session_cookie(&self) -> bool {
        self.cookies.contains_key(SESSION_COOKIE)
    }

    /// Sets both agency cookies.
    pub fn set_sso_cookies(&mut self, c: &SsoCookies) {
        self.cookies
            .insert(SESSION_COOKIE.into(), c.session.clone());
        self.cookies
            .insert(REFERENCE_COOKIE.into(), c.reference.clone());
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn absorb(&mut self, headers: &HeaderMap) {
        for v in headers.get_all(SET_COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            let first = v.split(';').next().unwrap_or_default();
            let Some((name, value)) = first.split_once('=') else {
                continue;
            };
            let expired = v.to_ascii_lowercase().contains("max-age=0");
            if expired || value.is_empty() {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_string(), value.trim().to_string());
            }
        }
    }

    async fn finish(&mut self, resp: reqwest::Response) -> Answer {
        let status = resp.status();
        let headers = resp.headers().clone();
        self.absorb(&headers);
        let body = resp.text().await.unwrap_or_default();
        Answer {
            status,
            headers,
            body,
        }
    }

    /// GET with the agent's cookies.
    pub async fn get(&mut self, url: &str) -> Answer {
        self.try_get(url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }

    /// GET with the agent's cookies; a transport error is returned.
    pub async fn try_get(&mut self, url: &str) -> Result<Answer, reqwest::Error> {
        let resp = self
            .http
            .get(url)
            .header(COOKIE, self.cookie_header())
            .send()
            .await?;
        self.try_finish(resp).await
    }

    /// POST a form with the agent's cookies; a transport error is returned.
    pub async fn try_post_form(
        &mut self,
        url: &str,
        fields: &[(String, String)],
    ) -> Result<Answer, reqwest::Error> {
        let resp = self
            .http
            .post(url)
            .header(COOKIE, self.cookie_header())
            .form(fields)
            .send()
            .await?;
        self.try_finish(resp).await
    }

    /// Like `finish`, but a body cut short is an error.
    async fn try_finish(&mut self, resp: reqwest::Response) -> Result<Answer, reqwest::Error> {
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.text().await?;
        self.absorb(&headers);
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// POST a form with the agent's cookies.
    pub async fn post_form(&mut self, url: &str, fields: &[(String, String)]) -> Answer {
        self.post_form_with(url, fields, &[]).await
    }

    /// POST a form with the agent's cookies and extra `headers`.
    pub async fn post_form_with(
        &mut self,
        url: &str,
        fields: &[(String, String)],
        headers: &[(&str, &str)],
    ) -> Answer {
        let mut req = self.http.post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req
            .header(COOKIE, self.cookie_header())
            .form(fields)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e}"));
        self.finish(resp).await
    }

    /// Signs in at `base` (a node URL) with a fresh CSRF pair; returns the answer.
    pub async fn sign_in(&mut self, base: &str, username: &str, password: &str) -> Answer {
        let page = self.get(&format!("{base}/sso/signin")).await;
        let csrf = page.inputs().get("csrf").cloned().expect("csrf field");
        self.post_form(
            &format!("{base}/sso/signin"),
            &[
                ("csrf".into(), csrf),
                ("username".into(), username.into()),
                ("password".into(), password.into()),
            ],
        )
        .await
    }

    /// Signs in at `base` and asserts it worked (a 303 with the session).
    pub async fn sign_in_ok(&mut self, base: &str, username: &str, password: &str) -> Answer {
        let a = self.sign_in(base, username, password).await;
        assert_eq!(
            a.status,
            StatusCode::SEE_OTHER,
            "sign-in of {username}: {}",
            a.body
        );
        a
    }

    /// Submits the trust page in `page` (approve, with the given parameters).
    pub async fn approve(
        &mut self,
        base: &str,
        page: &Answer,
        account_name: &str,
        share_name: bool,
        share_email: bool,
    ) -> Answer {
        let mut fields: Vec<(String, String)> = page.inputs().into_iter().collect();
        fields.retain(|(k, _)| k != "decision");
        fields.push(("decision".into(), "approve".into()));
        fields.push(("account_name".into(), account_name.into()));
        if share_name {
            fields.push(("share_name".into(), "1".into()));
        }
        if share_email {
            fields.push(("share_email".into(), "1".into()));
        }
        self.post_form(&format!("{base}/sso/consent"), &fields)
            .await
    }

    /// The ticket (`code`) a `form_post` site gets for `req` at `base`, in
    /// this agent's session; its trust page, if shown, is approved with the
    /// username, sharing name and email as `share` says.
    pub async fn code_for(&mut self, base: &str, req: &AuthRequest, share: bool) -> String {
        let mut page = self.get(&req.url(base)).await;
        if page.body.contains("id=\"trust\"") {
            page = self.approve(base, &page, "username", share, share).await;
        }
        page.inputs()
            .get("code")
            .cloned()
            .unwrap_or_else(|| panic!("no code: {}", page.body))
    }
}

/// An authorization request of a site.
#[derive(Debug, Clone)]
pub struct AuthRequest {
    /// Query parameters.
    pub params: Vec<(String, String)>,
    /// The PKCE verifier, if one was made.
    pub verifier: Option<String>,
}

impl AuthRequest {
    /// A form_post code request with state, nonce and PKCE.
    pub fn new(site: &TestSite) -> Self {
        let (verifier, challenge) = pkce();
        Self {
            params: vec![
                ("response_type".into(), "code".into()),
                ("client_id".into(), site.client_id.clone()),
                ("redirect_uri".into(), site.redirect_uri.clone()),
                ("scope".into(), "openid profile email".into()),
                ("state".into(), "st-123".into()),
                ("nonce".into(), "n-456".into()),
                ("code_challenge".into(), challenge),
                ("code_challenge_method".into(), "S256".into()),
            ],
            verifier: Some(verifier),
        }
    }

    /// Sets (or adds) a parameter.
    pub fn set(mut self, k: &str, v: &str) -> Self {
        self.params.retain(|(n, _)| n != k);
        self.params.push((k.into(), v.into()));
        self
    }

    /// Removes a parameter.
    pub fn without(mut self, k: &str) -> Self {
        self.params.retain(|(n, _)| n != k);
        self
    }

    /// The authorize URL at `base`.
    pub fn url(&self, base: &str) -> String {
        let q = serde_urlencoded_like(&self.params);
        format!("{base}/sso/authorize?{q}")
    }
}

fn serde_urlencoded_like(params: &[(String, String)]) -> String {
    let mut u = url::Url::parse("https://x/").expect("url");
    u.query_pairs_mut().extend_pairs(params.iter());
    u.query().unwrap_or_default().to_string()
}

/// Redeems `code` at node `base` as `site`; returns status and JSON.
pub async fn redeem(
    http: &reqwest::Client,
    base: &str,
    site: &TestSite,
    code: &str,
    verifier: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut form = vec![
        ("grant_type", "authorization_code".to_string()),
        ("code", code.to_string()),
        ("redirect_uri", site.redirect_uri.clone()),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v.to_string()));
    }
    let mut req = http.post(format!("{base}/sso/token"));
    match &site.secret {
        Some(s) => req = req.basic_auth(&site.client_id, Some(s)),
        None => form.push(("client_id", site.client_id.clone())),
    }
    let resp = req.form(&form).send().await.expect("token request");
    let status = resp.status();
    let v = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, v)
}

/// Introspects `token` at `base` as `site`: is it active?
pub async fn introspect_active(
    http: &reqwest::Client,
    base: &str,
    site: &TestSite,
    token: &str,
) -> bool {
    let mut req = http.post(format!("{base}/sso/introspect"));
    if let Some(s) = &site.secret {
        req = req.basic_auth(&site.client_id, Some(s));
    }
    let resp = req
        .form(&[("token", token)])
        .send()
        .await
        .expect("introspect");
    assert_eq!(resp.status(), StatusCode::OK);
    let v: serde_json::Value = resp.json().await.expect("introspect JSON");
    v["active"].as_bool().unwrap_or(false)
}

/// Node ids of the cluster in order, cycling: handy for spreading steps.
pub fn other_node(cluster: &Cluster, id: NodeId) -> NodeId {
    let ids = cluster.ids();
    let i = ids.iter().position(|x| *x == id).unwrap_or(0);
    ids[(i + 1) % ids.len()]
}

/// Who the `Cookie` header value `cookies` signs in as at node `id` of
/// `cluster` (`/auth/verify`): `None` when it is refused (panics when the
/// node does not answer, which is no refusal).
pub async fn verified_user(cluster: &Cluster, id: u64, cookies: &str) -> Option<String> {
    let resp = cluster
        .http()
        .get(format!("{}/auth/verify", cluster.public_url(id)))
        .header(COOKIE, cookies)
        .send()
        .await
        .unwrap_or_else(|e| panic!("verify on node {id}: {e}"));
    if resp.status() != StatusCode::OK {
        return None;
    }
    resp.headers()
        .get("x-baa-user")
        .and_then(|v| v.to_str().ok())
        .map(String::from)
}
