//! The gateway: upstream apps configured on each node (`[[gateway]]`) are
//! served under `/gw/<app>/…` by reverse proxy, so an app without a browser
//! that holds an access token can use a protected app that only understands a
//! session cookie.
//!
//! A request must carry the app's token as `Authorization: Bearer …`, issued
//! to one of the clients the app names in `accept_clients` (its audience: a
//! token a web site got for signing the user in opens nothing here); the
//! `TokenTranslator` translates it back into the browser session it belongs to
//! (and records the session's use). The SSO cookie is not accepted here: the
//! gateway is for apps without a browser, and honouring the cookie would let
//! any page a user visits send requests through the gateway in their name.
//! No valid token: 401 with `WWW-Authenticate: Bearer realm="baa"`, and
//! nothing is forwarded.
//!
//! The request goes to `<upstream>/<path>?<query>` with its method and body,
//! without the token, hop-by-hop headers, `Host`, and any cookie it brought
//! (an app's own cookies are not trusted), and with `X-Baa-User`,
//! `X-Baa-Session` (the public session id), `X-Baa-Agency`, `X-Forwarded-*`
//! and the session cookie the upstream expects. The agency never keeps the
//! secret of a browser's SSO cookie (only its hash), so that cookie cannot be
//! replayed; the cookie the upstream gets is instead a signed assertion of the
//! same session: an RS256 JWT (`typ` `baa-session+jwt`) with `iss` the
//! agency's issuer, `aud` the app's name, `sub` the user id,
//! `preferred_username`, `sid`, `iat` and a short `exp`, verifiable against
//! the agency's JWKS (`/.well-known/jwks.json`).
//!
//! The upstream's status, headers (minus hop-by-hop ones) and body are relayed
//! as they come; an unreachable upstream gives 502 `bad_gateway`.

use std::net::IpAddr;
use std::time::Duration;

use actix::Addr;
use actix_web::body::{BodyStream, SizedStream};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use baa_proto::ErrorCode;
use reqwest::header::{HeaderMap as UpstreamHeaders, HeaderName, HeaderValue};
use serde::Serialize;
use url::Url;

use super::error::error_response;
use super::oidc::bearer;
use crate::actors::token_translator::{TokenTranslator, TranslateToken, Translated};
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::config::GatewayApp;
use crate::error::NodeError;

/// Largest request body forwarded to an upstream.
pub const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// `typ` of the session assertion in the upstream's cookie.
pub const SESSION_ASSERTION_TYP: &str = "baa-session+jwt";

/// The HTTP client for upstream calls, shared by all workers.
#[derive(Clone)]
pub struct UpstreamClient(reqwest::Client);

impl UpstreamClient {
    /// A client trusting the agency's CA and the configured partner CA for
    /// `https://` upstreams. Redirects are relayed, not followed.
    pub fn new(agency: &Agency) -> anyhow::Result<Self> {
        let b = agency
            .partner_client()?
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60));
        Ok(Self(b.build()?))
    }
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/gw/{app}").route(web::route().to(forward)))
        .service(web::resource("/gw/{app}/{tail:.*}").route(web::route().to(forward)));
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection" | "keep-alive" | "te" | "trailer" | "transfer-encoding" | "upgrade"
    ) || name.starts_with("proxy-")
}

/// The header names a `Connection` header lists as hop-by-hop, lower case.
fn connection_listed<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
    values
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Headers by which proxies tell upstreams who the client is, which path
/// or method it really asked for: only the gateway may say such things, so
/// a client's own are dropped (upstream frameworks honour them).
const SPOOFABLE: &[&str] = &[
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "x-remote-addr",
    "x-remote-ip",
    "x-originating-ip",
    "client-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-method",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-host",
];

/// Whether an incoming request header (lower-case name) goes to the upstream.
/// Besides hop-by-hop headers this drops the credentials (`Authorization`,
/// `Cookie`), `Host`, `Content-Length` and `Expect` (the body is sent whole),
/// everything the gateway itself asserts (`X-Baa-*`, `Forwarded`,
/// `X-Forwarded-*`; `X-Forwarded-For` is extended, not copied), and the
/// client-address, rewrite and method-override headers of [`SPOOFABLE`].
fn forwards_request_header(name: &str, listed: &[String]) -> bool {
    !(is_hop_by_hop(name)
        || listed.iter().any(|l| l == name)
        || matches!(
            name,
            "host" | "authorization" | "cookie" | "content-length" | "expect" | "forwarded"
        )
        || SPOOFABLE.contains(&name)
        || name.starts_with("x-baa-")
        || name.starts_with("x-forwarded-"))
}

/// Whether an upstream response header (lower-case name) is relayed.
/// `Content-Length` is set from the body as it is relayed.
fn relays_response_header(name: &str, listed: &[String]) -> bool {
    !(is_hop_by_hop(name) || listed.iter().any(|l| l == name) || name == "content-length")
}

/// The request headers sent upstream, before the gateway's own are added.
fn upstream_headers(incoming: &header::HeaderMap) -> UpstreamHeaders {
    let listed = connection_listed(
        incoming
            .get_all(header::CONNECTION)
            .map(header::HeaderValue::as_bytes),
    );
    let mut out = UpstreamHeaders::new();
    for (name, value) in incoming {
        if !forwards_request_header(name.as_str(), &listed) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(n, v);
        }
    }
    out
}

/// The raw (still percent-encoded) path after `/gw/<app>/`.
fn raw_tail(path: &str) -> &str {
    path.strip_prefix("/gw/")
        .and_then(|rest| rest.split_once('/'))
        .map_or("", |(_, tail)| tail)
}

/// `<upstream>/<tail>?<query>`, or `None` when the result would leave the
/// upstream's origin or base path (dot segments, backslashes).
fn upstream_url(upstream: &str, tail: &str, query: &str) -> Option<Url> {
    let base = Url::parse(upstream).ok()?;
    let mut joined = format!("{}/{}", upstream.trim_end_matches('/'), tail);
    if !query.is_empty() {
        joined.push('?');
        joined.push_str(query);
    }
    let url = Url::parse(&joined).ok()?;
    let prefix = base.path().trim_end_matches('/');
    let inside = url.path() == prefix || url.path().starts_with(&format!("{prefix}/"));
    (url.origin() == base.origin() && url.fragment().is_none() && inside).then_some(url)
}

/// What the upstream is told about the request and its session.
struct Assertion<'a> {
    username: &'a str,
    sid: &'a str,
    agency: &'a str,
    /// `X-Forwarded-For` as received, if any.
    forwarded_for: Option<String>,
    peer: Option<IpAddr>,
    host: Option<&'a str>,
    prefix: String,
    cookie: String,
}

/// Adds the gateway's own headers to `headers`.
fn assert_identity(headers: &mut UpstreamHeaders, a: &Assertion<'_>) -> Result<(), NodeError> {
    let value = |s: &str| {
        HeaderValue::from_str(s)
            .map_err(|_| NodeError::Internal("a gateway header value is not valid".into()))
    };
    let forwarded_for = match (&a.forwarded_for, a.peer) {
        (Some(prior), Some(ip)) => Some(format!("{prior}, {ip}")),
        (Some(prior), None) => Some(prior.clone()),
        (None, Some(ip)) => Some(ip.to_string()),
        (None, None) => None,
    };
    headers.insert("x-baa-user", value(a.username)?);
    headers.insert("x-baa-session", value(a.sid)?);
    headers.insert("x-baa-agency", value(a.agency)?);
    if let Some(v) = forwarded_for {
        headers.insert("x-forwarded-for", value(&v)?);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    headers.insert("x-forwarded-prefix", value(&a.prefix)?);
    if let Some(h) = a.host {
        headers.insert("x-forwarded-host", value(h)?);
    }
    headers.insert(reqwest::header::COOKIE, value(&a.cookie)?);
    Ok(())
}

/// Claims of the session assertion the upstream gets as its cookie.
#[derive(Serialize)]
struct SessionClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    preferred_username: &'a str,
    sid: &'a str,
    iat: u64,
    exp: u64,
}

/// `<cookie_name>=<signed session assertion>` for `app`.
fn session_cookie(agency: &Agency, app: &GatewayApp, t: &Translated) -> Result<String, NodeError> {
    let iat = now_ms() / 1000;
    let claims = SessionClaims {
        iss: &agency.config.issuer,
        aud: &app.name,
        sub: t.user.id.to_string(),
        preferred_username: &t.user.username,
        sid: &t.session.sid,
        iat,
        exp: iat + app.cookie_ttl_s,
    };
    let jwt = agency.keys.sign_jwt(&claims, SESSION_ASSERTION_TYP)?;
    Ok(format!("{}={jwt}", app.cookie_name))
}

fn unauthorized() -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"baa\""))
        .json(serde_json::json!({
            "error": "unauthorized",
            "error_description": "a valid access token of a client this app accepts is required (Authorization: Bearer)",
        }))
}

/// The upstream's body, chunk by chunk; it ends after the first error.
fn relay_body(
    resp: reqwest::Response,
) -> impl futures::Stream<Item = Result<web::Bytes, reqwest::Error>> {
    futures::stream::unfold(Some(resp), |state| async move {
        let mut resp = state?;
        match resp.chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(resp))),
            Ok(None) => None,
            Err(e) => Some((Err(e.without_url()), None)),
        }
    })
}

/// The upstream's answer as the client's.
fn relay(resp: reqwest::Response) -> HttpResponse {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let listed = connection_listed(
        resp.headers()
            .get_all(reqwest::header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    let mut out = HttpResponse::build(status);
    for (name, value) in resp.headers() {
        if !relays_response_header(name.as_str(), &listed) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_str().as_bytes()),
            header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append_header((n, v));
        }
    }
    let length = resp
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = relay_body(resp);
    match length {
        Some(len) => out.no_chunking(len).body(SizedStream::new(len, body)),
        None => out.body(BodyStream::new(body)),
    }
}

/// `/gw/{app}/{tail}`, every method: checks the token and forwards.
async fn forward(
    req: HttpRequest,
    payload: web::Payload,
    agency: web::Data<Agency>,
    broker: web::Data<Addr<TokenTranslator>>,
    client: web::Data<UpstreamClient>,
) -> HttpResponse {
    let name = req.match_info().get("app").unwrap_or_default();
    let Some(app) = agency.config.gateway.iter().find(|a| a.name == name) else {
        return error_response(ErrorCode::NotFound, "no gateway app of that name");
    };
    let prepared = async {
        let t = translate(&req, &agency, &broker, app).await?;
        let target = target_of(&req, app)?;
        let body = read_body(payload).await?;
        let headers = identity_headers(&req, &agency, app, &t)?;
        Ok::<_, HttpResponse>((t, target, body, headers))
    };
    let (t, (method, url), body, headers) = match prepared.await {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let sent = client.0.request(method, url).headers(headers).body(body);
    match sent.send().await {
        Ok(resp) => {
            tracing::debug!(app = %app.name, sid = %t.session.sid, status = resp.status().as_u16(), "gateway request");
            relay(resp)
        }
        Err(e) => {
            tracing::warn!(app = %app.name, error = %e.without_url(), "gateway upstream unreachable");
            let why = format!("the upstream of {} could not be reached", app.name);
            error_response(ErrorCode::BadGateway, why)
        }
    }
}

/// Who the request's bearer token speaks for, if the app takes its client's tokens.
async fn translate(
    req: &HttpRequest,
    agency: &Agency,
    broker: &Addr<TokenTranslator>,
    app: &GatewayApp,
) -> Result<Translated, HttpResponse> {
    let Some(token) = bearer(req).filter(|t| !t.is_empty()) else {
        return Err(unauthorized());
    };
    let accept = app.accept_clients.clone();
    let found = crate::actors::ask(&agency.metrics, broker, TranslateToken { token, accept })
        .await
        .unwrap_or_else(|_| Err(NodeError::Internal("token translator unavailable".into())));
    match found {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(unauthorized()),
        Err(e) => Err(error_response(e.code(), e.to_string())),
    }
}

/// The upstream method and URL of the request.
fn target_of(req: &HttpRequest, app: &GatewayApp) -> Result<(reqwest::Method, Url), HttpResponse> {
    let Some(url) = upstream_url(&app.upstream, raw_tail(req.path()), req.query_string()) else {
        let why = "the path does not name a resource of this app";
        return Err(error_response(ErrorCode::InvalidRequest, why));
    };
    match reqwest::Method::from_bytes(req.method().as_str().as_bytes()) {
        Ok(method) => Ok((method, url)),
        Err(_) => Err(error_response(
            ErrorCode::InvalidRequest,
            "unsupported method",
        )),
    }
}

/// The request body, at most [`MAX_BODY_BYTES`].
async fn read_body(payload: web::Payload) -> Result<actix_web::web::Bytes, HttpResponse> {
    match payload.to_bytes_limited(MAX_BODY_BYTES).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(e))
            if e.as_error::<actix_web::error::PayloadError>()
                .is_some_and(super::deadline::timed_out) =>
        {
            Err(error_response(
                ErrorCode::RequestTimeout,
                super::deadline::TimedOut.to_string(),
            ))
        }
        Ok(Err(_)) => Err(error_response(
            ErrorCode::InvalidRequest,
            "the request body could not be read",
        )),
        Err(_) => Err(error_response(
            ErrorCode::PayloadTooLarge,
            "the request body is larger than 10 MiB",
        )),
    }
}

/// The headers the upstream gets: the client's, cleaned, with the
/// gateway's assertion of who is calling.
fn identity_headers(
    req: &HttpRequest,
    agency: &Agency,
    app: &GatewayApp,
    t: &Translated,
) -> Result<UpstreamHeaders, HttpResponse> {
    let cookie = session_cookie(agency, app, t).map_err(|e| e.error_response())?;
    let mut headers = upstream_headers(req.headers());
    let prior: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    let assertion = Assertion {
        username: &t.user.username,
        sid: &t.session.sid,
        agency: &agency.config.sso.agency,
        forwarded_for: (!prior.is_empty()).then(|| prior.join(", ")),
        peer: req.peer_addr().map(|a| a.ip()),
        host: req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
        prefix: format!("/gw/{}", app.name),
        cookie,
    };
    assert_identity(&mut headers, &assertion).map_err(|e| e.error_response())?;
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L6: headers by which a client could speak for the gateway — claim an
    /// address, rewrite the path the upstream routes on, or change the
    /// method behind the gateway's back — never reach the upstream.
    #[test]
    fn l6_client_sent_routing_and_identity_headers_are_dropped() {
        let mut h = header::HeaderMap::new();
        let spoofed = [
            "x-real-ip",
            "x-client-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-cluster-client-ip",
            "x-remote-addr",
            "x-remote-ip",
            "x-originating-ip",
            "client-ip",
            "x-original-url",
            "x-original-uri",
            "x-rewrite-url",
            "x-original-method",
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
            "x-host",
        ];
        for n in spoofed {
            h.append(
                header::HeaderName::from_static(n),
                header::HeaderValue::from_static("1.2.3.4"),
            );
        }
        h.append(
            header::HeaderName::from_static("x-custom"),
            header::HeaderValue::from_static("kept"),
        );
        let out = upstream_headers(&h);
        for n in spoofed {
            assert!(!out.contains_key(n), "{n} was forwarded");
        }
        assert_eq!(out["x-custom"], "kept");
    }

    #[test]
    fn hop_by_hop_and_credentials_are_not_forwarded() {
        let mut h = header::HeaderMap::new();
        for (n, v) in [
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("host", "login.baa.localtest"),
            ("authorization", "Bearer secret"),
            ("cookie", "own=1"),
            ("content-length", "3"),
            ("x-private", "1"),
            ("x-baa-user", "mallory"),
            ("x-forwarded-prefix", "/elsewhere"),
            ("forwarded", "for=1.2.3.4"),
            ("accept", "application/json"),
            ("content-type", "text/plain"),
            ("x-custom", "kept"),
        ] {
            h.append(
                header::HeaderName::from_static(n),
                header::HeaderValue::from_static(v),
            );
        }
        let out = upstream_headers(&h);
        let mut names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["accept", "content-type", "x-custom"]);
    }

    #[test]
    fn response_headers_drop_hop_by_hop_and_connection_listed() {
        let listed = connection_listed([&b"close, X-Hop"[..], b" "].into_iter());
        assert_eq!(listed, ["close", "x-hop"]);
        for name in [
            "connection",
            "transfer-encoding",
            "proxy-authenticate",
            "x-hop",
            "content-length",
        ] {
            assert!(!relays_response_header(name, &listed), "{name}");
        }
        for name in ["set-cookie", "content-type", "location", "cache-control"] {
            assert!(relays_response_header(name, &listed), "{name}");
        }
    }

    #[test]
    fn gateway_headers_assert_the_session() {
        let mut h = UpstreamHeaders::new();
        let a = Assertion {
            username: "alice",
            sid: "s1",
            agency: "baa",
            forwarded_for: Some("10.0.0.1".into()),
            peer: Some("127.0.0.1".parse().unwrap()),
            host: Some("login.baa.localtest:8441"),
            prefix: "/gw/wiki".into(),
            cookie: "baa_session=a.b.c".into(),
        };
        assert_identity(&mut h, &a).unwrap();
        assert_eq!(h["x-baa-user"], "alice");
        assert_eq!(h["x-baa-session"], "s1");
        assert_eq!(h["x-baa-agency"], "baa");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-prefix"], "/gw/wiki");
        assert_eq!(h["x-forwarded-host"], "login.baa.localtest:8441");
        assert_eq!(h["cookie"], "baa_session=a.b.c");
        assert!(h.get("authorization").is_none());
    }

    #[test]
    fn tail_is_taken_from_the_raw_path() {
        assert_eq!(raw_tail("/gw/wiki"), "");
        assert_eq!(raw_tail("/gw/wiki/"), "");
        assert_eq!(raw_tail("/gw/wiki/a/b%2Fc"), "a/b%2Fc");
    }

    #[test]
    fn urls_are_joined_under_the_base() {
        let u = |base: &str, tail: &str, q: &str| upstream_url(base, tail, q).map(String::from);
        assert_eq!(
            u("http://app:9000", "x/y", "a=1&b=%20").as_deref(),
            Some("http://app:9000/x/y?a=1&b=%20")
        );
        assert_eq!(
            u("http://app:9000/", "", "").as_deref(),
            Some("http://app:9000/")
        );
        assert_eq!(
            u("https://app/base/", "x", "").as_deref(),
            Some("https://app/base/x")
        );
        assert_eq!(
            u("https://app/base", "", "").as_deref(),
            Some("https://app/base/")
        );
        assert_eq!(
            u("https://app/base", "a/../b%2Fc", "").as_deref(),
            Some("https://app/base/b%2Fc")
        );
        // Nothing outside the base path or origin.
        assert_eq!(u("https://app/base", "../admin", ""), None);
        assert_eq!(u("https://app/base", "%2e%2e/admin", ""), None);
        assert_eq!(u("https://app/base", "..\\admin", ""), None);
        assert_eq!(u("https://app/base", "x/../../base2", ""), None);
        assert_eq!(u("https://app/base", "x#frag", ""), None);
        assert_eq!(
            u("http://app", "/evil.example/x", "").as_deref(),
            Some("http://app//evil.example/x")
        );
    }
}
