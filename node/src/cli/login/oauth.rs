//! The app's side of OAuth 2.0 / OpenID Connect as a public client: PKCE,
//! `state`, the authorization URL, the device-grant backoff, and the calls to
//! the agency's discovery, token, device, userinfo and revocation endpoints.
//!
//! Endpoints are built from the agency URL the user gave and the fixed paths
//! below, not taken from discovery: discovery names the issuer's host, which
//! the app may reach under another name or address.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;

use subtle::ConstantTimeEq;
use url::Url;

/// Scopes the app asks for: identity, profile, and a refresh token.
pub const SCOPE: &str = "openid profile offline_access";
/// The RFC 8628 grant type.
pub const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Path of the authorization endpoint.
pub const AUTHORIZE_PATH: &str = "/sso/authorize";
/// Path of the token endpoint.
pub const TOKEN_PATH: &str = "/sso/token";
/// Path of the userinfo endpoint.
pub const USERINFO_PATH: &str = "/sso/userinfo";
/// Path of the revocation endpoint.
pub const REVOKE_PATH: &str = "/sso/revoke";
/// Path of the device authorization endpoint.
pub const DEVICE_PATH: &str = "/sso/device_authorization";
/// Path of the discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// RFC 8628 §3.5: every `slow_down` adds this much to the polling interval.
pub const SLOW_DOWN_STEP_MS: u64 = 5_000;

/// `bytes` random bytes, base64url without padding.
pub fn random_string(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    URL_SAFE_NO_PAD.encode(b)
}

/// A PKCE verifier and its S256 challenge.
pub struct Pkce {
    /// Sent with the code to the token endpoint.
    pub verifier: String,
    /// Sent in the authorization URL.
    pub challenge: String,
}

impl Pkce {
    /// A fresh pair: 32 random bytes give a 43-character verifier.
    pub fn new() -> Self {
        let verifier = random_string(32);
        Self {
            challenge: baa_proto::pkce::s256(&verifier),
            verifier,
        }
    }
}

/// Whether the `state` that came back is the one sent, compared in constant time.
pub fn state_matches(expected: &str, got: &str) -> bool {
    bool::from(expected.as_bytes().ct_eq(got.as_bytes()))
}

/// `path` under the agency's base URL.
pub fn endpoint(agency: &str, path: &str) -> String {
    format!("{}{path}", agency.trim_end_matches('/'))
}

/// The loopback redirect URI for a listener on `port`.
pub fn loopback_redirect_uri(port: u16) -> String {
    format!("http://127.0.0.1:{port}/callback")
}

/// The authorization URL the browser opens (code flow, PKCE, query response mode).
pub fn authorize_url(
    agency: &str,
    client_id: &str,
    redirect_uri: &str,
    state: &str,
    challenge: &str,
) -> anyhow::Result<Url> {
    let mut url = Url::parse(&endpoint(agency, AUTHORIZE_PATH))
        .with_context(|| format!("{agency:?} is not a URL"))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", SCOPE)
        .append_pair("state", state)
        .append_pair("code_challenge", challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("response_mode", "query");
    Ok(url)
}

/// Whether `url` names this machine.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Checks that a bearer token may be sent to `url`: https, or http to this machine.
pub fn check_transport(url: &Url) -> anyhow::Result<()> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) => Ok(()),
        "http" => bail!("{url} is plain http: tokens are only sent over https"),
        other => bail!("{url}: unsupported scheme {other}"),
    }
}

/// The agency URL as given, checked, without a trailing slash.
pub fn normalise_agency(given: &str) -> anyhow::Result<String> {
    let url = Url::parse(given).with_context(|| format!("agency {given:?} is not a URL"))?;
    check_transport(&url)?;
    if url.query().is_some() || url.fragment().is_some() || url.host().is_none() {
        bail!("agency {given:?} must be a base URL such as https://login.example.org");
    }
    Ok(given.trim_end_matches('/').to_string())
}

/// The polling interval after a `slow_down`: five seconds more than both the
/// current interval and the one the agency announced, in whole seconds (the
/// agency counts its interval in seconds, so a fraction would only earn
/// another `slow_down`).
pub fn slowed_down(current_ms: u64, announced_ms: u64) -> u64 {
    (current_ms.max(announced_ms) + SLOW_DOWN_STEP_MS).div_ceil(1000) * 1000
}

/// When a token answered now with `expires_in` expires; 0 when not said.
pub fn expiry_ms(now_ms: u64, expires_in_s: Option<u64>) -> u64 {
    expires_in_s.map_or(0, |s| now_ms.saturating_add(s.saturating_mul(1000)))
}

/// `s` without control characters, for echoing text that came from outside.
pub fn printable(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect()
}

/// The token endpoint's answer. Deliberately not `Debug`: it holds secrets.
#[derive(Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// The refresh token, when `offline_access` was granted.
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Seconds until the access token expires.
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// The ID token (code and device grants with `openid`).
    #[serde(default)]
    pub id_token: Option<String>,
    /// `Bearer`.
    #[serde(default)]
    pub token_type: Option<String>,
}

/// An OAuth error answer (RFC 6749 §5.2).
#[derive(Debug, Clone, Deserialize)]
pub struct OAuthError {
    /// The error code, e.g. `invalid_grant`.
    pub error: String,
    /// Human-readable detail.
    #[serde(default)]
    pub error_description: Option<String>,
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", printable(&self.error))?;
        if let Some(d) = self.error_description.as_deref().filter(|d| !d.is_empty()) {
            write!(f, ": {}", printable(d))?;
        }
        Ok(())
    }
}

/// What the token endpoint said.
pub enum TokenOutcome {
    /// Tokens were issued.
    Issued(TokenResponse),
    /// The request was refused.
    Refused {
        /// HTTP status.
        status: u16,
        /// The OAuth error.
        error: OAuthError,
    },
}

/// The device authorization answer (RFC 8628 §3.2).
#[derive(Deserialize)]
pub struct DeviceStart {
    /// Secret the app polls with.
    pub device_code: String,
    /// Code the user enters.
    pub user_code: String,
    /// Where the user enters it.
    pub verification_uri: String,
    /// The same with the code filled in.
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    /// Seconds the codes live.
    pub expires_in: u64,
    /// Seconds between polls.
    #[serde(default)]
    pub interval: Option<u64>,
}

/// The parts of discovery the app uses.
#[derive(Debug, Deserialize)]
pub struct Discovery {
    /// The agency's issuer identifier.
    pub issuer: String,
    /// Whether authorization answers carry `iss` (RFC 9207).
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// Checks the claims of an ID token received straight from the token
/// endpoint over TLS (OpenID Connect Core §3.1.3.7 lets TLS stand in for the
/// signature there) and returns them.
pub fn id_token_claims(
    id_token: &str,
    issuer: &str,
    client_id: &str,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let payload = id_token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow!("the ID token is not a JWT"))?;
    let raw = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| anyhow!("the ID token is not a JWT"))?;
    let claims: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&raw).map_err(|_| anyhow!("the ID token is not a JWT"))?;
    if claims.get("iss").and_then(|v| v.as_str()) != Some(issuer) {
        bail!("the ID token was not issued by {issuer}");
    }
    let aud_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == client_id,
        Some(serde_json::Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(client_id)),
        _ => false,
    };
    if !aud_ok {
        bail!("the ID token was not issued to {client_id}");
    }
    Ok(claims)
}

/// An HTTP client for one agency, as one public client.
pub struct AgencyClient {
    /// The underlying client (no redirects followed; trusts only the given CA).
    pub http: reqwest::Client,
    base: String,
    client_id: String,
    has_ca: bool,
}

/// Builds the HTTP client: trusts `ca` only (this build has no system roots),
/// resolves the `resolve` host names to the given addresses, follows no redirects.
pub fn http_client(
    ca: Option<&Path>,
    resolve: &[(String, IpAddr)],
) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("baa/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .tls_built_in_root_certs(false);
    if let Some(ca) = ca {
        let pem =
            std::fs::read(ca).with_context(|| format!("reading the CA file {}", ca.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} holds no PEM certificate", ca.display()))?;
        if certs.is_empty() {
            bail!("{} holds no PEM certificate", ca.display());
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    for (host, ip) in resolve {
        b = b.resolve(host, SocketAddr::new(*ip, 0));
    }
    b.build().context("building the HTTP client")
}

impl AgencyClient {
    /// A client of the agency at `base` (already normalised) as `client_id`.
    pub fn new(
        base: &str,
        client_id: &str,
        ca: Option<&Path>,
        resolve: &[(String, IpAddr)],
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: http_client(ca, resolve)?,
            base: base.to_string(),
            client_id: client_id.to_string(),
            has_ca: ca.is_some(),
        })
    }

    /// The agency's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `path` at the agency.
    pub fn endpoint(&self, path: &str) -> String {
        endpoint(&self.base, path)
    }

    /// Describes a failed request to `url`, with a hint when TLS may be the cause.
    pub fn transport_error(&self, e: reqwest::Error, url: &str) -> anyhow::Error {
        // The TLS error sits deep in the source chain, behind an io::Error.
        let tls = format!("{e:?}")
            .to_ascii_lowercase()
            .contains("certificate");
        let hint = if !self.has_ca && tls {
            " (this build trusts no system CAs: pass --ca FILE or set BAA_CA)"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!("calling {url}{hint}"))
    }

    /// The agency's discovery document.
    pub async fn discover(&self) -> anyhow::Result<Discovery> {
        let url = self.endpoint(DISCOVERY_PATH);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.transport_error(e, &url))?;
        let status = resp.status();
        if !status.is_success() {
            bail!("{url} answered {status}");
        }
        resp.json()
            .await
            .with_context(|| format!("{url} is not an OpenID Connect discovery document"))
    }

    async fn token_call(&self, url: &str, form: &[(&str, &str)]) -> anyhow::Result<TokenOutcome> {
        let resp = self
            .http
            .post(url)
            .form(form)
            .send()
            .await
            .map_err(|e| self.transport_error(e, url))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if status.is_success() {
            // serde's messages may quote values; this answer holds secrets.
            let t: TokenResponse = serde_json::from_slice(&bytes)
                .map_err(|_| anyhow!("{url} did not answer a token response"))?;
            if let Some(tt) = &t.token_type {
                if !tt.eq_ignore_ascii_case("bearer") {
                    bail!("{url} issued a token of unsupported type {}", printable(tt));
                }
            }
            return Ok(TokenOutcome::Issued(t));
        }
        match serde_json::from_slice::<OAuthError>(&bytes) {
            Ok(error) => Ok(TokenOutcome::Refused {
                status: status.as_u16(),
                error,
            }),
            Err(_) => bail!("{url} answered {status}"),
        }
    }

    /// Redeems an authorization code (with its PKCE verifier).
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> anyhow::Result<TokenOutcome> {
        self.token_call(
            &self.endpoint(TOKEN_PATH),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", verifier),
                ("client_id", &self.client_id),
            ],
        )
        .await
    }

    /// Trades a refresh token for new tokens (the old refresh token dies).
    pub async fn refresh(&self, refresh_token: &str) -> anyhow::Result<TokenOutcome> {
        self.token_call(
            &self.endpoint(TOKEN_PATH),
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", &self.client_id),
            ],
        )
        .await
    }

    /// Starts the device grant.
    pub async fn start_device(&self) -> anyhow::Result<DeviceStart> {
        let url = self.endpoint(DEVICE_PATH);
        let resp = self
            .http
            .post(&url)
            .form(&[("client_id", self.client_id.as_str()), ("scope", SCOPE)])
            .send()
            .await
            .map_err(|e| self.transport_error(e, &url))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<OAuthError>(&bytes) {
                Ok(e) => anyhow!("the agency refused the device sign-in: {e}"),
                Err(_) => anyhow!("{url} answered {status}"),
            });
        }
        serde_json::from_slice(&bytes)
            .map_err(|_| anyhow!("{url} did not answer a device authorization response"))
    }

    /// Polls the token endpoint for the device grant.
    pub async fn poll_device(&self, device_code: &str) -> anyhow::Result<TokenOutcome> {
        self.token_call(
            &self.endpoint(TOKEN_PATH),
            &[
                ("grant_type", DEVICE_GRANT),
                ("device_code", device_code),
                ("client_id", &self.client_id),
            ],
        )
        .await
    }

    /// Revokes `token` (RFC 7009).
    pub async fn revoke(&self, token: &str, hint: &str) -> anyhow::Result<()> {
        let url = self.endpoint(REVOKE_PATH);
        let resp = self
            .http
            .post(&url)
            .form(&[
                ("token", token),
                ("token_type_hint", hint),
                ("client_id", &self.client_id),
            ])
            .send()
            .await
            .map_err(|e| self.transport_error(e, &url))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<OAuthError>(&bytes) {
            Ok(e) => bail!("{url} refused to revoke the {hint}: {e}"),
            Err(_) => bail!("{url} answered {status}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_verifier_is_valid_and_fresh() {
        let a = Pkce::new();
        let b = Pkce::new();
        assert_eq!(a.verifier.len(), 43);
        assert!(a
            .verifier
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~".contains(&c)));
        assert_eq!(a.challenge, baa_proto::pkce::s256(&a.verifier));
        assert_ne!(a.verifier, b.verifier);
    }

    #[test]
    fn state_check() {
        let s = random_string(24);
        assert!(state_matches(&s, &s.clone()));
        assert!(!state_matches(&s, &s[..s.len() - 1]));
        assert!(!state_matches(&s, &format!("{s}x")));
        assert!(!state_matches(&s, ""));
        let mut other = s.clone().into_bytes();
        other[0] = if other[0] == b'A' { b'B' } else { b'A' };
        assert!(!state_matches(&s, &String::from_utf8(other).unwrap()));
    }

    #[test]
    fn authorization_url() {
        let url = authorize_url(
            "https://127.0.0.1:8441/",
            "baa-cli",
            &loopback_redirect_uri(51234),
            "st",
            "ch",
        )
        .unwrap();
        assert_eq!(url.scheme(), "https");
        assert_eq!(url.path(), "/sso/authorize");
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "baa-cli");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:51234/callback");
        assert_eq!(q["scope"], "openid profile offline_access");
        assert_eq!(q["state"], "st");
        assert_eq!(q["code_challenge"], "ch");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["response_mode"], "query");
        assert_eq!(q.len(), 8);
    }

    #[test]
    fn endpoints_come_from_the_given_agency() {
        assert_eq!(
            endpoint("https://127.0.0.1:8441/", TOKEN_PATH),
            "https://127.0.0.1:8441/sso/token"
        );
        assert_eq!(
            endpoint("https://h.example/base", USERINFO_PATH),
            "https://h.example/base/sso/userinfo"
        );
    }

    #[test]
    fn agency_urls() {
        assert_eq!(
            normalise_agency("https://login.baa.localtest:8441/").unwrap(),
            "https://login.baa.localtest:8441"
        );
        assert!(normalise_agency("http://127.0.0.1:8080").is_ok());
        assert!(normalise_agency("http://login.example.org").is_err());
        assert!(normalise_agency("https://x.example/?a=b").is_err());
        assert!(normalise_agency("ftp://x.example").is_err());
        assert!(normalise_agency("not a url").is_err());
    }

    #[test]
    fn slow_down_adds_five_seconds() {
        // Polling faster than announced: back off from the announced interval.
        assert_eq!(slowed_down(100, 1_000), 6_000);
        assert_eq!(slowed_down(6_000, 1_000), 11_000);
        assert_eq!(slowed_down(5_000, 5_000), 10_000);
        // Whole seconds, never less than five more than now.
        assert_eq!(slowed_down(1_500, 1_000), 7_000);
        let mut i = 250;
        for _ in 0..4 {
            let next = slowed_down(i, 1_000);
            assert!(next >= i + SLOW_DOWN_STEP_MS);
            assert_eq!(next % 1000, 0);
            i = next;
        }
    }

    #[test]
    fn expiry() {
        assert_eq!(expiry_ms(1_000, Some(60)), 61_000);
        assert_eq!(expiry_ms(1_000, None), 0);
        assert_eq!(expiry_ms(u64::MAX, Some(1)), u64::MAX);
    }

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.sig",
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn id_token_checks_issuer_and_audience() {
        let iss = "https://login.baa.localtest:8441";
        let t = jwt(serde_json::json!({"iss": iss, "aud": "baa-cli", "sub": "1"}));
        assert_eq!(id_token_claims(&t, iss, "baa-cli").unwrap()["sub"], "1");
        let t = jwt(serde_json::json!({"iss": iss, "aud": ["x", "baa-cli"]}));
        assert!(id_token_claims(&t, iss, "baa-cli").is_ok());
        let t = jwt(serde_json::json!({"iss": "https://evil", "aud": "baa-cli"}));
        assert!(id_token_claims(&t, iss, "baa-cli").is_err());
        let t = jwt(serde_json::json!({"iss": iss, "aud": "other"}));
        assert!(id_token_claims(&t, iss, "baa-cli").is_err());
        assert!(id_token_claims("garbage", iss, "baa-cli").is_err());
    }

    #[test]
    fn transport_rules() {
        let ok = |s: &str| check_transport(&Url::parse(s).unwrap()).is_ok();
        assert!(ok("https://app.example/x"));
        assert!(ok("http://127.0.0.1:9/x"));
        assert!(ok("http://[::1]:9/x"));
        assert!(ok("http://localhost:9/x"));
        assert!(!ok("http://app.example/x"));
        assert!(!ok("file:///etc/passwd"));
    }

    #[test]
    fn errors_are_printable() {
        let e = OAuthError {
            error: "access_denied".into(),
            error_description: Some("no\u{1b}[31m way\n".into()),
        };
        assert_eq!(e.to_string(), "access_denied: no[31m way");
    }
}
