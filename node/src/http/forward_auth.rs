//! Forward-auth endpoints: `/auth/verify` (nginx `auth_request`, Traefik
//! ForwardAuth, Caddy `forward_auth`) and the three steps that give a
//! browser a session on a forward-auth app's own host, `/auth/app/<name>/
//! {start,grant,callback}` (the proxy maps the app's `/.baa/…` to them).
//! The rules live in `sso::forward_auth`.

use actix::Addr;
use actix_web::cookie::Cookie;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use baa_proto::cookie::{app_cookie_name, APP_STATE_COOKIE, SESSION_COOKIE};
use serde::Deserialize;

use super::browser::{
    cookie_value, current_session, see_other, sign_in_page, with_cookies, SignInView,
};
use super::oidc::bearer;
use crate::actors::cookie_validator::CookieValidator;
use crate::actors::token_translator::{TokenTranslator, Translated};
use crate::agency::Agency;
use crate::sso::authorize::AuthParams;
use crate::sso::forward_auth::{self, Presented, Verdict, STATE_TTL_S};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/auth/verify").route(web::get().to(verify)))
        .service(super::resource("/auth/app/{app}/start").route(web::get().to(start)))
        .service(super::resource("/auth/app/{app}/grant").route(web::get().to(grant)))
        .service(super::resource("/auth/app/{app}/callback").route(web::get().to(callback)));
}

#[derive(Debug, Default, Deserialize)]
struct VerifyQuery {
    app: Option<String>,
}

fn verified(agency: &Agency, t: &Translated) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Baa-User", t.user.username.clone()))
        .insert_header(("X-Baa-Session", t.session.sid.clone()))
        .insert_header(("X-Baa-Agency", agency.config.sso.agency.clone()))
        .finish()
}

/// `GET /auth/verify[?app=<name>]`: 200 with `X-Baa-User`, `X-Baa-Session`,
/// `X-Baa-Agency` when the request may pass, else 401.
async fn verify(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<CookieValidator>>,
    broker: web::Data<Addr<TokenTranslator>>,
    query: web::Query<VerifyQuery>,
) -> HttpResponse {
    let app = query.app.as_deref();
    let token = bearer(&req).filter(|t| !t.is_empty());
    let agency_session = match token {
        None if cookie_value(&req, SESSION_COOKIE).is_some() => {
            current_session(&req, &gate, &agency).await
        }
        _ => None,
    };
    let app_cookie = app.and_then(|a| cookie_value(&req, &app_cookie_name(a)));
    let presented = Presented {
        token,
        app_cookie,
        agency_session,
    };
    match forward_auth::verify(&agency, &broker, app, presented).await {
        Ok(Verdict::Pass(t)) => verified(&agency, &t),
        Ok(Verdict::Refused(why)) => HttpResponse::Unauthorized()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"baa\""))
            .json(serde_json::json!({
                "error": "unauthorized",
                "error_description": why,
            })),
        Err(e) => e.error_response(),
    }
}

/// A host-only cookie on whichever host the browser sent the request to.
fn host_cookie(name: String, value: String, max_age_s: i64) -> Cookie<'static> {
    super::browser::agency_cookie(name, value, max_age_s).finish()
}

#[derive(Debug, Default, Deserialize)]
struct StartQuery {
    rd: Option<String>,
}

/// `GET /auth/app/<name>/start?rd=` (the app's `/.baa/start`): the state
/// cookie and a redirect to the agency.
async fn start(
    req: HttpRequest,
    agency: web::Data<Agency>,
    query: web::Query<StartQuery>,
) -> HttpResponse {
    let name = req.match_info().get("app").unwrap_or_default();
    let started = forward_auth::app(&agency, name)
        .and_then(|app| forward_auth::start(&agency, app, query.rd.as_deref()));
    match started {
        Ok(s) => with_cookies(
            see_other(&s.grant_url),
            [host_cookie(
                APP_STATE_COOKIE.into(),
                s.nonce,
                STATE_TTL_S as i64,
            )],
        ),
        Err(e) => e.error_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
struct GrantQuery {
    #[serde(default)]
    state: String,
    rd: Option<String>,
}

/// `GET /auth/app/<name>/grant?state=&rd=` (on the agency's host): the
/// sign-in page when not signed in, else a redirect to the app's callback.
async fn grant(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<CookieValidator>>,
    query: web::Query<GrantQuery>,
) -> HttpResponse {
    let name = req.match_info().get("app").unwrap_or_default();
    let app = match forward_auth::app(&agency, name) {
        Ok(a) => a,
        Err(e) => return e.error_response(),
    };
    let Some(v) = current_session(&req, &gate, &agency).await else {
        let path = format!("/auth/app/{}/grant?{}", app.name, req.query_string());
        let params = AuthParams::continue_to(&path);
        let view = SignInView::new(&params, Some(&app.name));
        return sign_in_page(&req, &agency, view, StatusCode::OK);
    };
    match forward_auth::grant(&agency, app, &v.session, &query.state, query.rd.as_deref()) {
        Ok(url) => see_other(&url),
        Err(e) => e.error_response(),
    }
}

#[derive(Debug, Default, Deserialize)]
struct CallbackQuery {
    #[serde(default)]
    code: String,
}

/// `GET /auth/app/<name>/callback?code=` (the app's `/.baa/callback`): the
/// app's session cookie, and back to where the browser was going.
async fn callback(
    req: HttpRequest,
    agency: web::Data<Agency>,
    query: web::Query<CallbackQuery>,
) -> HttpResponse {
    let name = req.match_info().get("app").unwrap_or_default();
    let nonce = cookie_value(&req, APP_STATE_COOKIE);
    let landed = match forward_auth::app(&agency, name) {
        Ok(app) => forward_auth::callback(&agency, app, &query.code, nonce.as_deref())
            .await
            .map(|l| (app, l)),
        Err(e) => Err(e),
    };
    match landed {
        Ok((app, l)) => with_cookies(
            see_other(&l.rd),
            [
                host_cookie(app_cookie_name(&app.name), l.cookie, l.max_age_s as i64),
                host_cookie(APP_STATE_COOKIE.into(), String::new(), 0),
            ],
        ),
        Err(e) => e.error_response(),
    }
}
