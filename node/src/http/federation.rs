//! Federation on the public port: `/.well-known/openid-federation`, the
//! agency's entity configuration (see `sso::federation`), for peer agencies
//! to fetch and check against the key they pinned; the silent round trip to
//! a user's home agency (see `sso::peer_login`) — its start from an
//! authorization request and its end at `/federation/callback`.

use actix::Addr;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use baa_proto::cookie::REFERENCE_COOKIE;
use baa_proto::federation::{
    BACKCHANNEL_LOGOUT_PATH, CALLBACK_PATH, ENTITY_CONFIGURATION_PATH, ROUND_TRIP_COOKIE,
};
use baa_proto::ErrorCode;

use super::browser::{self, agency_cookie, cookie_value, see_other, SignInView};
use crate::actors::peer_sessions::{CheckPeerReference, PeerRefusal, PeerSessions};
use crate::agency::Agency;
use crate::error::NodeError;
use crate::peers::PeerView;
use crate::sso::authorize::{AuthParams, Authz};
use crate::sso::peer_login::{self, Answer, Refused, ROUND_TRIP_TTL_S};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource(ENTITY_CONFIGURATION_PATH).route(web::get().to(entity_configuration)),
    )
    .service(super::resource(CALLBACK_PATH).route(web::post().to(callback)))
    .service(super::resource("/federation/discover").route(web::get().to(discover)))
    .service(super::resource(BACKCHANNEL_LOGOUT_PATH).route(web::post().to(backchannel_logout)));
}

/// A peer's back-channel logout.
#[derive(serde::Deserialize)]
struct LogoutForm {
    logout_token: Option<String>,
}

/// `POST /federation/backchannel-logout`: a peer says one of its sessions
/// ended; the sessions derived from it end here.
async fn backchannel_logout(
    agency: web::Data<Agency>,
    form: web::Form<LogoutForm>,
) -> Result<HttpResponse, NodeError> {
    let token = form
        .logout_token
        .as_deref()
        .ok_or_else(|| NodeError::invalid("logout_token is required"))?;
    let ended = peer_login::peer_logout(&agency, token).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({ "ended": ended })))
}

/// For an authorization request that found no session here: when the
/// browser's reference names a peer agency, the start of the silent round
/// trip there, or (the peer not vouching for it) the sign-in page that
/// says why; with no such reference, when the site's `login_hint` names a
/// peer's domain, the round trip to sign in there. `None` otherwise, or
/// when the site asked for no page at all.
pub async fn peer_sign_in(
    req: &HttpRequest,
    agency: &Agency,
    peers: &Addr<PeerSessions>,
    params: &AuthParams,
    a: &Authz,
) -> Option<HttpResponse> {
    if a.prompt_login {
        return None;
    }
    let refusal = match cookie_value(req, REFERENCE_COOKIE) {
        Some(reference) => {
            match crate::actors::ask(&agency.metrics, peers, CheckPeerReference(reference))
                .await
                .ok()?
            {
                Ok(p) => return Some(go(agency, &p.peer, params, true)),
                Err(PeerRefusal::NotAPeer) => None,
                Err(r) => Some(r),
            }
        }
        None => None,
    };
    if a.prompt_none {
        return None;
    }
    if let Some(r) = refusal {
        let r = refusal_of(&r, params);
        return Some(refused_page(req, agency, &r, Some(&a.site.name)));
    }
    let home = peer_login::hinted_home(agency, params)?;
    Some(go(agency, &home, params, false))
}

/// Sends the browser to `peer` for a round trip (see `peer_login::depart`).
fn go(agency: &Agency, peer: &PeerView, params: &AuthParams, silent: bool) -> HttpResponse {
    match peer_login::depart(agency, peer, params, silent) {
        Ok(d) => {
            let cookie = agency_cookie(ROUND_TRIP_COOKIE, d.cookie, ROUND_TRIP_TTL_S as i64);
            let mut resp = see_other(&d.url);
            let _ = resp.add_cookie(&cookie.finish());
            resp
        }
        Err(e) => browser::failed(agency, &e),
    }
}

/// `/federation/discover`: the home-agency discovery's choice.
#[derive(serde::Deserialize)]
struct DiscoverQuery {
    peer: String,
    #[serde(flatten)]
    params: AuthParams,
}

/// `GET /federation/discover?peer=…`: the user chose their home agency on
/// the sign-in page; they sign in there and come back.
async fn discover(agency: web::Data<Agency>, query: web::Query<DiscoverQuery>) -> HttpResponse {
    match agency.peers.get(&query.peer) {
        Some(p) => go(&agency, &p, &query.params, false),
        None => browser::error_page(
            &agency,
            StatusCode::BAD_REQUEST,
            ErrorCode::PeerNotFound,
            "That agency is not one this agency federates with.",
        ),
    }
}

/// What the sign-in page says of a peer's refusal.
fn refusal_of(refusal: &PeerRefusal, params: &AuthParams) -> Refused {
    let (code, why) = match refusal {
        PeerRefusal::UnknownKey { .. } => (
            ErrorCode::PeerSessionRefused,
            "its signature does not check out",
        ),
        PeerRefusal::Ended { .. } => (ErrorCode::LoginRequired, "the session there has ended"),
        _ => (ErrorCode::PeerUnreachable, "that agency cannot be reached"),
    };
    Refused {
        peer: refusal.peer().map(String::from),
        params: Some(params.clone()),
        code,
        message: format!("Your sign-in at another agency cannot be used here: {why}."),
    }
}

/// The sign-in page after a peer's session could not be used: sign in
/// here, or at the home agency.
fn refused_page(
    req: &HttpRequest,
    agency: &Agency,
    r: &Refused,
    site_name: Option<&str>,
) -> HttpResponse {
    let params = r.params.clone().unwrap_or_default();
    let home = r.peer.as_deref().map(|p| {
        (
            agency
                .peers
                .get(p)
                .map(|v| v.name.clone())
                .unwrap_or_else(|| p.to_string()),
            p,
        )
    });
    let mut view = SignInView::new(&params, site_name).failed("", &r.message);
    view.code = Some(r.code);
    if let Some((name, url)) = &home {
        view.home = Some((name.as_str(), url));
    }
    browser::sign_in_page(req, agency, view, StatusCode::UNAUTHORIZED)
}

/// `POST /federation/callback`: the peer's answer to a silent round trip.
async fn callback(
    req: HttpRequest,
    agency: web::Data<Agency>,
    form: web::Form<Answer>,
) -> HttpResponse {
    let cookie = cookie_value(&req, ROUND_TRIP_COOKIE);
    let spent = agency_cookie(ROUND_TRIP_COOKIE, String::new(), 0).finish();
    let mut resp = match peer_login::arrive(&agency, cookie.as_deref(), &form).await {
        Ok(done) => match browser::session_cookie_of(&done.secret, &done.session.session) {
            Some(c) => {
                let query = serde_urlencoded::to_string(&done.params).unwrap_or_default();
                let next = match done.params.safe_continue() {
                    Some(path) => path.to_string(),
                    None => format!("/sso/authorize?{query}"),
                };
                let mut resp = see_other(&next);
                let _ = resp.add_cookie(&c);
                resp
            }
            None => browser::failed(&agency, &NodeError::Internal("no session cookie".into())),
        },
        Err(r) => after_refusal(&req, &agency, &r).await,
    };
    let _ = resp.add_cookie(&spent);
    resp
}

/// After a failed round trip: a site that asked for no page hears
/// `login_required`; anyone else gets the sign-in page that says why.
async fn after_refusal(req: &HttpRequest, agency: &Agency, r: &Refused) -> HttpResponse {
    if let Some(params) = &r.params {
        if let Ok(a) = crate::sso::authorize::check(agency, params).await {
            if a.prompt_none {
                let why = "the user is not signed in";
                return browser::deliver_error(
                    &a,
                    &agency.config.issuer,
                    ErrorCode::LoginRequired,
                    why,
                );
            }
            return refused_page(req, agency, r, Some(&a.site.name));
        }
    }
    refused_page(req, agency, r, None)
}

async fn entity_configuration(agency: web::Data<Agency>) -> Result<HttpResponse, NodeError> {
    let jwt = crate::sso::federation::entity_configuration(&agency)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/entity-statement+jwt"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(jwt))
}
