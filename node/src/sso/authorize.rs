//! Authorization requests, the seamless login's first step: a partner site
//! sends the browser here with its client id and exact redirect URI; the
//! request is checked against the site's registration, and then the
//! browser's session, its trust in the site and the site's prompt decide
//! what comes next (sign in, the trust page, a ticket, or an error for the
//! site).

use actix::Addr;
use baa_proto::command::Consistency;
use baa_proto::sso::{ResponseMode, Site};
use baa_proto::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::actors::cookie_validator::ValidSession;
use crate::actors::ticket_issuer::{IssueTicket, TicketIssuer, TicketRequest};
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;

/// The parameters of an authorization request, carried through the sign-in
/// and trust pages as hidden fields.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct AuthParams {
    /// The partner site.
    pub client_id: Option<String>,
    /// Where the answer goes.
    pub redirect_uri: Option<String>,
    response_type: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    response_mode: Option<String>,
    prompt: Option<String>,
    max_age: Option<String>,
    login_hint: Option<String>,
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

    /// The site's hint of who signs in (`login_hint`), if any.
    pub fn login_hint(&self) -> Option<&str> {
        self.login_hint.as_deref()
    }

    /// The continuation if it is a safe agency path (never another host).
    pub fn safe_continue(&self) -> Option<&str> {
        self.continue_to.as_deref().filter(|p| {
            (p.starts_with("/device") || p.starts_with("/auth/app/"))
                && !p.contains("//")
                && !p.contains('\\')
        })
    }

    /// The parameters as hidden form fields, to carry them through a page.
    pub fn hidden(&self) -> Vec<(String, String)> {
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
        push("login_hint", &self.login_hint);
        push("continue", &self.continue_to);
        out
    }
}

/// How the answer goes back to the site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An auto-submitting HTML form (OAuth 2.0 Form Post Response Mode).
    FormPost,
    /// A redirect with the answer in the query.
    Query,
}

/// A checked authorization request.
#[derive(Debug, Clone)]
pub struct Authz {
    /// The site.
    pub site: Site,
    /// The exact registered redirect URI.
    pub redirect_uri: String,
    /// How the answer goes back.
    pub mode: Mode,
    /// The site's state, echoed back.
    pub state: Option<String>,
    /// The site's nonce, for the ID token.
    pub nonce: Option<String>,
    /// The PKCE S256 challenge.
    pub challenge: Option<String>,
    /// The requested scopes.
    pub scopes: Vec<String>,
    /// `prompt=none`: answer without showing a page.
    pub prompt_none: bool,
    /// `prompt=login`: sign in again.
    pub prompt_login: bool,
    /// `prompt=consent`: show the trust page.
    pub prompt_consent: bool,
    /// The oldest sign-in the site accepts.
    pub max_age_s: Option<u64>,
    /// The client is a peer agency: the peering is its trust, no page asks.
    pub peer: bool,
}

/// Why an authorization request cannot go on.
pub enum AuthzError {
    /// The site or redirect URI cannot be trusted: show a page, never redirect.
    Page(ErrorCode, String),
    /// A protocol error the site should hear about at its redirect URI.
    Site(Box<Authz>, ErrorCode, String),
    /// The agency could not read its records.
    Failed(NodeError),
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

fn check_now(agency: &Agency, p: &AuthParams) -> Result<Authz, AuthzError> {
    let page = |code, msg: &str| Err(AuthzError::Page(code, msg.to_string()));
    let storage = |e: crate::raft::StorageError| Err(AuthzError::Failed(e.into()));
    let Some(client_id) = p.client_id.as_deref() else {
        return page(
            ErrorCode::InvalidRequest,
            "The request names no partner site (client_id).",
        );
    };
    let site = match agency.state.site(client_id) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return page(
                ErrorCode::UnknownSite,
                "The partner site is not registered here.",
            )
        }
        Err(e) => return storage(e),
    };
    let peer = match agency.state.peer_of_client(client_id) {
        Ok(p) => p.is_some(),
        Err(e) => return storage(e),
    };
    let Some(redirect_uri) = p.redirect_uri.clone() else {
        return page(
            ErrorCode::InvalidRequest,
            "The request has no redirect_uri.",
        );
    };
    // Exact string comparison (no normalisation, no prefix or pattern
    // match), except the port of a loopback URI (RFC 8252 §7.3).
    if !site
        .redirect_uris
        .iter()
        .any(|u| redirect_matches(u, &redirect_uri))
    {
        return page(
            ErrorCode::InvalidRedirectUri,
            "The redirect URI is not one the partner site registered. You were not sent anywhere.",
        );
    }
    // No response_mode: the site's registered default (query unless it
    // registered form_post, OIDC Core §3.1.2.5).
    let registered = match agency.state.site_options(&site.client_id) {
        Ok(o) => o.default_response_mode,
        Err(e) => return storage(e),
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
        peer,
    };
    let site_err =
        |a: &Authz, code, msg: String| Err(AuthzError::Site(Box::new(a.clone()), code, msg));
    if !matches!(
        p.response_mode.as_deref(),
        None | Some("form_post") | Some("query")
    ) {
        return site_err(
            &a,
            ErrorCode::InvalidRequest,
            "response_mode must be form_post or query".into(),
        );
    }
    for (v, max, name) in [
        (&p.state, 512, "state"),
        (&p.nonce, 256, "nonce"),
        (&p.login_hint, 256, "login_hint"),
        (&p.scope, 512, "scope"),
    ] {
        if let Err(m) = bounded(v, max, name) {
            a.state = None;
            return site_err(&a, ErrorCode::InvalidRequest, m);
        }
    }
    if p.response_type.as_deref() != Some("code") {
        return site_err(
            &a,
            ErrorCode::UnsupportedResponseType,
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
        return site_err(
            &a,
            ErrorCode::InvalidScope,
            "scope must include openid".into(),
        );
    }
    if let Some(s) = scopes.iter().find(|s| !a.site.allowed_scopes.contains(s)) {
        return site_err(
            &a,
            ErrorCode::InvalidScope,
            format!("scope {s} is not allowed for this site"),
        );
    }
    a.scopes = scopes;
    if a.prompt_none && (a.prompt_login || a.prompt_consent) {
        return site_err(
            &a,
            ErrorCode::InvalidRequest,
            "prompt=none cannot be combined".into(),
        );
    }
    if let Some(unknown) = prompts
        .iter()
        .find(|p| !p.is_empty() && !matches!(**p, "none" | "login" | "consent"))
    {
        return site_err(
            &a,
            ErrorCode::InvalidRequest,
            format!("unsupported prompt value {unknown}"),
        );
    }
    if let Some(m) = &p.max_age {
        match m.parse::<u64>() {
            Ok(v) => a.max_age_s = Some(v),
            Err(_) => {
                return site_err(
                    &a,
                    ErrorCode::InvalidRequest,
                    "max_age must be a number".into(),
                )
            }
        }
    }
    match (&p.code_challenge, p.code_challenge_method.as_deref()) {
        (Some(c), Some("S256")) => {
            let ok = (43..=128).contains(&c.len())
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            if !ok {
                return site_err(
                    &a,
                    ErrorCode::InvalidRequest,
                    "code_challenge is malformed".into(),
                );
            }
        }
        (Some(_), _) => {
            return site_err(
                &a,
                ErrorCode::InvalidRequest,
                "code_challenge_method must be S256".into(),
            )
        }
        (None, Some(_)) => {
            return site_err(
                &a,
                ErrorCode::InvalidRequest,
                "code_challenge is missing".into(),
            )
        }
        (None, None) if a.site.secret_hash.is_none() => {
            return site_err(
                &a,
                ErrorCode::InvalidRequest,
                "PKCE (S256) is required for public clients".into(),
            )
        }
        (None, None) => {}
    }
    Ok(a)
}

/// Checks an authorization request against the site's registration. A
/// site this node does not know yet (registered a moment ago through
/// another node) is looked up again after one read barrier.
pub async fn check(agency: &Agency, p: &AuthParams) -> Result<Authz, AuthzError> {
    let result = check_now(agency, p);
    if matches!(result, Err(AuthzError::Page(ErrorCode::UnknownSite, _)))
        && agency.read_barrier(Consistency::Linearizable).await.is_ok()
    {
        return check_now(agency, p);
    }
    result
}

/// What the browser must see after an authorization request was checked.
pub enum Next {
    /// The sign-in page: no session, or the site wants a fresh sign-in.
    SignIn,
    /// The trust page: the user has not approved these scopes for the site.
    Trust,
    /// The site's ticket (a one-time login code), to deliver to it.
    Ticket(String),
    /// An error the site hears at its redirect URI.
    SiteError(ErrorCode, &'static str),
}

/// The core of the seamless login: session → trust → ticket, or the page
/// the user must see first (with `prompt=none`, the error instead).
/// `fresh_sign_in` says the session was made by this very request.
pub async fn proceed(
    agency: &Agency,
    issuer: &Addr<TicketIssuer>,
    a: &Authz,
    session: Option<&ValidSession>,
    fresh_sign_in: bool,
) -> Result<Next, NodeError> {
    let now = now_ms();
    let session = session.filter(|v| {
        let too_old = a
            .max_age_s
            .is_some_and(|m| now.saturating_sub(v.session.auth_time_ms) > m * 1000);
        fresh_sign_in || !(a.prompt_login || too_old)
    });
    let Some(v) = session else {
        return Ok(match a.prompt_none {
            true => Next::SiteError(ErrorCode::LoginRequired, "the user is not signed in"),
            false => Next::SignIn,
        });
    };
    if a.peer {
        return issue_ticket(agency, issuer, a, v).await;
    }
    let covers = || -> Result<bool, NodeError> {
        let trust = agency.state.trust(v.session.user_id, &a.site.client_id)?;
        Ok(trust.is_some_and(|t| a.scopes.iter().all(|s| t.scopes.contains(s))))
    };
    // A public native client's loopback redirect can be claimed by any local
    // program, so an earlier approval never carries over (RFC 8252 §8.6):
    // the user sees the page every time.
    let public_client = a.site.secret_hash.is_none();
    let mut covered = covers()?;
    if !covered && !a.prompt_consent && !public_client {
        // Approved a moment ago through another node, which this one has
        // not applied yet? One read barrier tells.
        agency.read_barrier(Consistency::Linearizable).await?;
        covered = covers()?;
    }
    if !covered || a.prompt_consent || public_client {
        return Ok(match a.prompt_none {
            true => Next::SiteError(
                ErrorCode::ConsentRequired,
                "the user has not approved this site",
            ),
            false => Next::Trust,
        });
    }
    issue_ticket(agency, issuer, a, v).await
}

/// Has the ticket issuer make the site's ticket for the session.
pub async fn issue_ticket(
    agency: &Agency,
    issuer: &Addr<TicketIssuer>,
    a: &Authz,
    v: &ValidSession,
) -> Result<Next, NodeError> {
    let req = TicketRequest {
        session_key: v.key,
        client_id: a.site.client_id.clone(),
        redirect_uri: a.redirect_uri.clone(),
        nonce: a.nonce.clone(),
        code_challenge: a.challenge.clone(),
        scopes: a.scopes.clone(),
    };
    let issued = crate::actors::ask(&agency.metrics, issuer, IssueTicket(req))
        .await
        .map_err(|_| NodeError::Internal("ticket issuer unavailable".into()))?;
    match issued {
        Ok(code) => Ok(Next::Ticket(code)),
        Err(NodeError::Apply(e)) if e.code == ErrorCode::SessionNotFound => Ok(Next::SiteError(
            ErrorCode::LoginRequired,
            "the session has ended",
        )),
        Err(e) => Err(e),
    }
}

/// Where a form of the agency's pages may lead besides the agency: the
/// origin of the redirect URI the request names, once checked against the
/// site's registration (browsers apply `form-action` to the redirect that
/// follows a form, so a sign-in that goes on to the site needs it), or the
/// origin of the forward-auth app a sign-in continues to.
pub fn form_targets(agency: &Agency, params: &AuthParams) -> Vec<String> {
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

/// The origin (`scheme://host[:port]`) of a URI, for a CSP `form-action`.
pub fn origin_of(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "'none'".into(),
    }
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
    // Only a loopback host takes any port (`127.0.0.1.evil` is a name).
    if host != "127.0.0.1" && host != "[::1]" {
        return uri.to_string();
    }
    format!("http://{host}{path}")
}

#[cfg(test)]
mod tests {
    use super::redirect_matches;

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
        // A registration that only starts like a loopback address is a
        // name, and matches exactly only (found by the differential property).
        for (reg, other) in [
            ("http://127.0.0.1.evil/cb", "http://127.0.0.1.evil:5000/cb"),
            ("http://[::1]x/cb", "http://[::1]x:5000/cb"),
            ("http://127.0.0.1:80:90/cb", "http://127.0.0.1:80:91/cb"),
        ] {
            assert!(!redirect_matches(reg, other), "{reg} {other}");
            assert!(redirect_matches(reg, reg));
        }
        // Non-loopback registrations match exactly only.
        assert!(!redirect_matches(
            "https://shop.example/cb",
            "https://shop.example:444/cb"
        ));
    }

    /// The host and what follows the port, if `u` is a loopback URI
    /// (RFC 8252 §7.3): `http://127.0.0.1` or `http://[::1]`, an optional
    /// `:digits` port, then nothing, a path or a query.
    fn loopback(u: &str) -> Option<(&str, &str)> {
        let rest = u.strip_prefix("http://")?;
        let (host, after) = ["127.0.0.1", "[::1]"]
            .iter()
            .find_map(|h| rest.strip_prefix(h).map(|r| (*h, r)))?;
        let after = match after.strip_prefix(':') {
            Some(p) => {
                let digits = p.bytes().take_while(u8::is_ascii_digit).count();
                (digits > 0).then_some(&p[digits..])?
            }
            None => after,
        };
        (after.is_empty() || after.starts_with(['/', '?'])).then_some((host, after))
    }

    /// The rule, read plainly: equal strings, or two loopback URIs that
    /// differ in their port only, the candidate without `@`, `#` or `\`.
    fn oracle(registered: &str, candidate: &str) -> bool {
        registered == candidate
            || (!candidate.contains(['@', '#', '\\'])
                && loopback(registered).is_some()
                && loopback(registered) == loopback(candidate))
    }

    const PORTS: [&str; 7] = ["", ":", ":80", ":5000", ":80:90", ":abc", ":0"];

    /// A URI's scheme with its host, and its path: tricky ones mostly.
    fn parts() -> impl proptest::strategy::Strategy<Value = (String, &'static str)> {
        use proptest::prelude::*;
        let scheme = prop::sample::select(vec!["http://", "https://", "HTTP://", ""]);
        let host = prop::sample::select(vec![
            "127.0.0.1",
            "[::1]",
            "127.0.0.1.evil",
            "127.0.0.2",
            "localhost",
            "[::1]x",
            "127.0.0.1@evil",
            "",
        ]);
        let path = prop::sample::select(vec![
            "", "/cb", "/cb?x=1", "/Cb", "/cb#f", "?a", "/../cb", "\\cb", "@evil/cb", "/cb/",
        ]);
        (scheme, host, path).prop_map(|(s, h, p)| (format!("{s}{h}"), p))
    }

    fn uri() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (parts(), prop::sample::select(PORTS.to_vec()))
            .prop_map(|((origin, path), port)| format!("{origin}{port}{path}"))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Differential: `redirect_matches` is the plain rule.
        #[test]
        fn redirect_matching_is_exact_match_plus_the_loopback_port_rule(
            registered in uri(),
            candidate in uri(),
        ) {
            proptest::prop_assert_eq!(
                redirect_matches(&registered, &candidate),
                oracle(&registered, &candidate)
            );
        }

        /// The same, for pairs that differ in their port only.
        #[test]
        fn uris_differing_in_their_port_match_by_the_plain_rule(
            (origin, path) in parts(),
            p in proptest::sample::select(PORTS.to_vec()),
            q in proptest::sample::select(PORTS.to_vec()),
        ) {
            let (registered, candidate) = (format!("{origin}{p}{path}"), format!("{origin}{q}{path}"));
            proptest::prop_assert_eq!(
                redirect_matches(&registered, &candidate),
                oracle(&registered, &candidate)
            );
        }

        #[test]
        fn arbitrary_strings_match_by_the_plain_rule(
            registered in "\\PC{0,30}",
            candidate in "\\PC{0,30}",
        ) {
            proptest::prop_assert_eq!(
                redirect_matches(&registered, &candidate),
                oracle(&registered, &candidate)
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Authorization parameters decode from any form or query string
        /// or are refused, and re-encode (as the sign-in pages carry them)
        /// to a fixed point; `safe_continue` never names another host.
        #[test]
        fn auth_params_decode_and_re_encode_to_a_fixed_point(
            s in "((client_id|redirect_uri|state|scope|continue|prompt|x)=[ -~]{0,12}&?){0,5}|\\PC{0,40}",
        ) {
            if let Ok(p) = serde_urlencoded::from_str::<super::AuthParams>(&s) {
                let once = serde_urlencoded::to_string(&p).unwrap();
                let back: super::AuthParams = serde_urlencoded::from_str(&once).unwrap();
                proptest::prop_assert_eq!(serde_urlencoded::to_string(&back).unwrap(), once);
                if let Some(c) = p.safe_continue() {
                    proptest::prop_assert!(c.starts_with('/') && !c.starts_with("//"), "{}", c);
                }
            }
        }
    }
}
