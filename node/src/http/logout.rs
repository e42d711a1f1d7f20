//! `/sso/logout`: RP-initiated logout (see `sso::logout`). A site that
//! proves which session it means ends it at once; anything else asks the
//! user on a confirmation page first. The browser's cookies are cleared.

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use baa_proto::cookie::SESSION_COOKIE;

use super::browser::{self, cookie_value, csrf_ok, csrf_refused, current_session, with_cookie};
use super::pages::{self, Csp};
use crate::actors::cookie_validator::{CookieValidator, ValidSession};
use crate::agency::Agency;
use crate::metrics::Page;
use crate::sso::authorize::origin_of;
use crate::sso::logout::{self, LogoutParams};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/sso/logout")
            .route(web::get().to(logout_get))
            .route(web::post().to(logout_post)),
    );
}

async fn logout_get(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<CookieValidator>>,
    params: web::Query<LogoutParams>,
) -> HttpResponse {
    let p = params.into_inner();
    let target = match logout::check(&agency, &p) {
        Ok(t) => t,
        Err(e) => return browser::failed(&agency, &e),
    };
    let session = current_session(&req, &gate, &agency).await;
    match (&session, logout::hinted_sid(&agency, &p)) {
        (Some(v), Some(sid)) if v.session.sid == sid => {
            finish(&agency, session, None, target).await
        }
        _ => confirm_page(&req, &agency, &p, session.as_ref(), target.as_deref()),
    }
}

/// Asks the user to confirm signing out.
fn confirm_page(
    req: &HttpRequest,
    agency: &Agency,
    p: &LogoutParams,
    session: Option<&ValidSession>,
    target: Option<&str>,
) -> HttpResponse {
    agency.metrics.page(Page::SignOut);
    let (csrf, cookie) = browser::csrf_token(req);
    // Confirming may return to the site's registered post-logout URI.
    let csp = Csp::new(target.map(origin_of).into_iter().collect());
    let hidden: Vec<(String, String)> = [
        ("id_token_hint", &p.id_token_hint),
        ("post_logout_redirect_uri", &p.post_logout_redirect_uri),
        ("state", &p.state),
        ("client_id", &p.client_id),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
    .collect();
    let page = pages::SignOutPage {
        action: "/sso/logout",
        csrf: &csrf,
        hidden: &hidden,
        username: session.map(|v| v.session.username.as_str()),
    };
    let body = pages::sign_out(&csp, &page);
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
    gate: web::Data<Addr<CookieValidator>>,
    form: web::Form<LogoutForm>,
) -> HttpResponse {
    let f = form.into_inner();
    if !csrf_ok(&req, &f.csrf) {
        return csrf_refused(&agency);
    }
    let p = LogoutParams {
        id_token_hint: f.params.id_token_hint,
        post_logout_redirect_uri: f.params.post_logout_redirect_uri,
        state: f.params.state,
        client_id: f.params.client_id,
    };
    let target = match logout::check(&agency, &p) {
        Ok(t) => t,
        Err(e) => return browser::failed(&agency, &e),
    };
    let session = current_session(&req, &gate, &agency).await;
    let presented = cookie_value(&req, SESSION_COOKIE)
        .and_then(|c| baa_proto::cookie::parse_session(&c))
        .map(|secret| baa_proto::sso::secret_hash(&secret));
    finish(&agency, session, presented, target).await
}

/// Signs out, clears the cookies, and returns to the site or shows the
/// signed-out page.
async fn finish(
    agency: &web::Data<Agency>,
    session: Option<ValidSession>,
    presented: Option<baa_proto::sso::SecretHash>,
    target: Option<String>,
) -> HttpResponse {
    if let Err(e) = logout::sign_out(agency, session, presented).await {
        return browser::failed(agency, &e);
    }
    let clear = match browser::browser_cookies(agency, None) {
        Ok(c) => c,
        Err(e) => return browser::failed(agency, &e),
    };
    let resp = match target {
        Some(t) => browser::see_other(&t),
        None => {
            let csp = Csp::new(Vec::new());
            pages::html_response(StatusCode::OK, pages::signed_out(&csp, None), &csp)
        }
    };
    browser::with_cookies(resp, clear)
}
