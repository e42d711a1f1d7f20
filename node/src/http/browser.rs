//! What every browser-facing page shares: the agency's cookies (session,
//! reference, CSRF), reading the session they prove, the client's address,
//! the sign-in, trust and error pages, and delivering an answer to a partner
//! site (auto-submitting form or redirect).

use actix::Addr;
use actix_web::cookie::{time::Duration as CookieDuration, Cookie, SameSite};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpRequest, HttpResponse};
use baa_proto::cookie::{CSRF_COOKIE, REFERENCE_COOKIE, SESSION_COOKIE, SESSION_SECRET_LEN};
use baa_proto::sso::{pseudonym, Session};
use baa_proto::ErrorCode;
use subtle::ConstantTimeEq;

use super::pages::{self, Csp};
use crate::actors::cookie_validator::{
    BrowserCookies, CookieValidator, ValidSession, ValidateCookies,
};
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;
use crate::metrics::{CookieCheck, Page};
use crate::sso::authorize::{self, origin_of, AuthParams, Authz, Mode, Next};

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
/// cookie validator).
pub async fn current_session(
    req: &HttpRequest,
    gate: &Addr<CookieValidator>,
    agency: &Agency,
) -> Option<ValidSession> {
    let Some(session) = cookie_value(req, SESSION_COOKIE) else {
        agency.metrics.cookie_check(CookieCheck::Absent);
        return None;
    };
    let cookies = BrowserCookies {
        session,
        reference: cookie_value(req, REFERENCE_COOKIE),
    };
    crate::actors::ask(&agency.metrics, gate, ValidateCookies(cookies))
        .await
        .ok()
        .flatten()
}

/// The request's CSRF token, or a new one with the cookie that carries it.
pub fn csrf_token(req: &HttpRequest) -> (String, Option<Cookie<'static>>) {
    if let Some(v) = cookie_value(req, CSRF_COOKIE) {
        if v.len() == 43 {
            return (v, None);
        }
    }
    let (v, _) = crate::secrets::random_secret();
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
        ErrorCode::CsrfMismatch,
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

/// Every cookie the agency sets: `Path=/`, `Secure`, `HttpOnly`,
/// `SameSite=Lax`, living `max_age_s` seconds; host-only unless a domain
/// is added.
pub fn agency_cookie(
    name: impl Into<std::borrow::Cow<'static, str>>,
    value: String,
    max_age_s: i64,
) -> actix_web::cookie::CookieBuilder<'static> {
    Cookie::build(name, value)
        .path("/")
        .secure(true)
        .http_only(true)
        .same_site(SameSite::Lax)
        .max_age(CookieDuration::seconds(max_age_s))
}

/// A redirect the browser must not cache.
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// The session cookie: host-only (`__Host-`: no `Domain`, `Path=/`), the bearer.
fn session_cookie(value: String, max_age_s: i64) -> Cookie<'static> {
    agency_cookie(SESSION_COOKIE, value, max_age_s).finish()
}

/// The session cookie of a session derived from a peer agency's: the
/// shared reference keeps naming the peer, the user's home agency.
pub fn session_cookie_of(
    secret: &[u8; SESSION_SECRET_LEN],
    session: &Session,
) -> Option<Cookie<'static>> {
    let max_age = (session.absolute_expiry_ms.saturating_sub(now_ms()) / 1000) as i64;
    (max_age > 0).then(|| session_cookie(baa_proto::cookie::session_value(secret), max_age))
}

/// The agency reference cookie, on the shared cookie domain when one is set.
fn reference_cookie(agency: &Agency, value: String, max_age_s: i64) -> Cookie<'static> {
    let mut b = agency_cookie(REFERENCE_COOKIE, value, max_age_s);
    if let Some(d) = &agency.config.sso.cookie_domain {
        b = b.domain(d.clone());
    }
    b.finish()
}

/// Both cookies of a new session, or the clearing of both (`None`).
pub fn browser_cookies(
    agency: &Agency,
    new: Option<(&[u8; SESSION_SECRET_LEN], &Session)>,
) -> Result<[Cookie<'static>; 2], NodeError> {
    let Some((secret, session)) = new else {
        return Ok([
            session_cookie(String::new(), 0),
            reference_cookie(agency, String::new(), 0),
        ]);
    };
    let reference = crate::sso::sessions::reference(agency, session)?;
    let max_age = (session.absolute_expiry_ms.saturating_sub(now_ms()) / 1000) as i64;
    Ok([
        session_cookie(baa_proto::cookie::session_value(secret), max_age),
        reference_cookie(agency, reference, max_age),
    ])
}

/// Sends `fields` to the site's redirect URI the way it asked.
pub fn deliver(a: &Authz, issuer: &str, mut fields: Vec<(String, String)>) -> HttpResponse {
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
            see_other(&format!("{}{sep}{query}", a.redirect_uri))
        }
    }
}

/// Sends the error `code` to the site's redirect URI the way it asked.
pub fn deliver_error(a: &Authz, issuer: &str, code: ErrorCode, description: &str) -> HttpResponse {
    deliver(
        a,
        issuer,
        vec![
            ("error".into(), code.as_str().into()),
            ("error_description".into(), description.into()),
        ],
    )
}

/// The page of a node too busy to check a password now (503, `Retry-After`).
pub fn busy_page(agency: &Agency) -> HttpResponse {
    let mut resp = error_page(
        agency,
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::TemporarilyUnavailable,
        "The agency is busy. Try again in a moment.",
    );
    resp.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    resp
}

/// The agency's error page; never redirects.
pub fn error_page(
    agency: &Agency,
    status: StatusCode,
    code: ErrorCode,
    message: &str,
) -> HttpResponse {
    agency.metrics.page(Page::Error);
    let csp = Csp::new(Vec::new());
    let body = pages::error_page(
        &csp,
        &pages::ErrorPage {
            title: "The request cannot be completed",
            code: code.as_str(),
            message,
        },
    );
    pages::html_response(status, body, &csp)
}

/// The error page of a request the agency could not complete.
pub fn failed(agency: &Agency, e: &NodeError) -> HttpResponse {
    let status = super::error::status_of(e.code());
    error_page(agency, status, e.code(), &e.to_string())
}

/// Renders what comes next in an authorization flow.
pub async fn render_next(
    req: &HttpRequest,
    agency: &Agency,
    params: &AuthParams,
    a: &Authz,
    session: Option<&ValidSession>,
    next: Result<Next, NodeError>,
) -> HttpResponse {
    match (next, session) {
        (Ok(Next::Ticket(code)), _) => {
            deliver(a, &agency.config.issuer, vec![("code".into(), code)])
        }
        (Ok(Next::SiteError(code, why)), _) => deliver_error(a, &agency.config.issuer, code, why),
        (Ok(Next::Trust), Some(v)) => trust_page(req, agency, params, a, &v.session).await,
        (Ok(Next::SignIn | Next::Trust), _) => {
            let page = SignInView::new(params, Some(&a.site.name));
            sign_in_page(req, agency, page, StatusCode::OK)
        }
        (Err(e), _) => failed(agency, &e),
    }
}

/// Renders a refused authorization request: a page when the site or its
/// redirect URI cannot be trusted, else the error delivered to the site.
pub fn refused(agency: &Agency, e: authorize::AuthzError) -> HttpResponse {
    match e {
        authorize::AuthzError::Page(code, msg) => {
            error_page(agency, StatusCode::BAD_REQUEST, code, &msg)
        }
        authorize::AuthzError::Site(a, code, msg) => {
            deliver_error(&a, &agency.config.issuer, code, &msg)
        }
        authorize::AuthzError::Failed(e) => failed(agency, &e),
    }
}

/// What the sign-in page shows.
pub struct SignInView<'a> {
    /// The request the sign-in continues, carried through as hidden fields.
    pub params: &'a AuthParams,
    /// The site (or app, or "a device") the user signs in for.
    pub site_name: Option<&'a str>,
    /// The username to fill in again.
    pub username: &'a str,
    /// Why the last attempt failed.
    pub error: Option<&'a str>,
    /// The error's machine-readable code, when it is not a failed password.
    pub code: Option<baa_proto::ErrorCode>,
    /// The user's home agency (name, URL), to sign in there instead.
    pub home: Option<(&'a str, &'a str)>,
}

impl<'a> SignInView<'a> {
    /// A fresh sign-in form that continues `params`.
    pub fn new(params: &'a AuthParams, site_name: Option<&'a str>) -> Self {
        Self {
            params,
            site_name,
            username: "",
            error: None,
            code: None,
            home: None,
        }
    }

    /// The form again, with what went wrong.
    pub fn failed(mut self, username: &'a str, error: &'a str) -> Self {
        self.username = username;
        self.error = Some(error);
        self
    }
}

/// The sign-in page.
pub fn sign_in_page(
    req: &HttpRequest,
    agency: &Agency,
    view: SignInView<'_>,
    status: StatusCode,
) -> HttpResponse {
    agency.metrics.page(Page::SignIn);
    let (csrf, cookie) = csrf_token(req);
    let csp = Csp::new(authorize::form_targets(agency, view.params));
    let hidden = view.params.hidden();
    // Home-agency discovery: the agencies of the set a user may come from.
    let agencies: Vec<(String, String)> = agency
        .peers
        .all()
        .iter()
        .map(|p| {
            let href = discover_href(&p.issuer, view.params);
            (p.name.clone(), href)
        })
        .collect();
    let body = pages::sign_in(
        &csp,
        &pages::SignInPage {
            action: "/sso/signin",
            csrf: &csrf,
            hidden: &hidden,
            username: view.username,
            error: view.error,
            code: view.code.map(|c| c.as_str()),
            home: view.home,
            agencies: &agencies,
            site_name: view.site_name,
        },
    );
    with_cookie(pages::html_response(status, body, &csp), cookie)
}

/// Where the sign-in page sends a user whose home is `peer`: a round
/// trip there that continues `params` here.
pub fn discover_href(peer: &str, params: &AuthParams) -> String {
    let mut q = vec![("peer".to_string(), peer.to_string())];
    q.extend(params.hidden());
    format!(
        "/federation/discover?{}",
        serde_urlencoded::to_string(&q).unwrap_or_default()
    )
}

/// The trust page: may the site learn who the user is?
pub async fn trust_page(
    req: &HttpRequest,
    agency: &Agency,
    params: &AuthParams,
    a: &Authz,
    s: &Session,
) -> HttpResponse {
    let (salt, user) = match crate::sso::consent::who(agency, s).await {
        Ok(found) => found,
        Err(e) => return failed(agency, &e),
    };
    agency.metrics.page(Page::Trust);
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

#[cfg(test)]
mod tests {
    use super::source_of;

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
}
