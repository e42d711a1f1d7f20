//! `/sso/signin`: the sign-in form, and its submission (see
//! `sso::sign_in`), which sets the browser's two cookies and goes on with
//! the request it interrupted (a partner site's login, the device page, a
//! forward-auth app) or to the home page.

use actix::Addr;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::browser::{self, csrf_ok, csrf_refused, SignInView};
use crate::actors::cookie_validator::CookieValidator;
use crate::actors::hasher::Hashers;
use crate::actors::ticket_issuer::TicketIssuer;
use crate::agency::Agency;
use crate::sso::authorize::{self, AuthParams, Authz};
use crate::sso::sign_in::{self, Credentials, SignInError};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/sso/signin")
            .route(web::get().to(sign_in_get))
            .route(web::post().to(sign_in_post)),
    );
}

async fn sign_in_get(req: HttpRequest, agency: web::Data<Agency>) -> HttpResponse {
    let params = AuthParams::default();
    browser::sign_in_page(
        &req,
        &agency,
        SignInView::new(&params, None),
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

const BAD_CREDENTIALS: &str = "The username or password is not correct.";
const LOCKED: &str = "Too many failed sign-ins. Wait a few minutes, then try again.";

async fn sign_in_post(
    req: HttpRequest,
    agency: web::Data<Agency>,
    hasher: web::Data<Hashers>,
    issuer: web::Data<Addr<TicketIssuer>>,
    gate: web::Data<Addr<CookieValidator>>,
    form: web::Form<SignInForm>,
) -> HttpResponse {
    let f = form.into_inner();
    if !csrf_ok(&req, &f.csrf) {
        return csrf_refused(&agency);
    }
    // Where the sign-in continues: a partner site's request, or an agency page.
    let authz = match f.params.client_id.is_some() {
        true => match authorize::check(&agency, &f.params).await {
            Ok(a) => Some(a),
            Err(e) => return browser::refused(&agency, e),
        },
        false => None,
    };
    let source = browser::client_source(&req, &agency);
    let creds = Credentials {
        username: f.username,
        password: f.password,
        source,
    };
    // A session the browser already holds is replaced, not left beside
    // the new one (re-authentication, OWASP ASVS 5.0 V7.2.4).
    let previous = browser::current_session(&req, &gate, &agency)
        .await
        .map(|v| v.key);
    match sign_in::sign_in(&agency, &hasher, &creds, previous).await {
        Ok(done) => signed_in(&req, &agency, &issuer, &f.params, authz, done).await,
        Err(e) => refused(&req, &agency, &f.params, authz.as_ref(), &creds, e),
    }
}

/// Sets the cookies of the new session and goes on.
async fn signed_in(
    req: &HttpRequest,
    agency: &Agency,
    issuer: &Addr<TicketIssuer>,
    params: &AuthParams,
    authz: Option<Authz>,
    done: sign_in::SignedIn,
) -> HttpResponse {
    let cookies =
        match browser::browser_cookies(agency, Some((&done.secret, &done.session.session))) {
            Ok(c) => c,
            Err(e) => return browser::failed(agency, &e),
        };
    let v = Some(&done.session);
    let resp = match authz {
        Some(a) => {
            let next = authorize::proceed(agency, issuer, &a, v, true).await;
            browser::render_next(req, agency, params, &a, v, next).await
        }
        None => browser::see_other(params.safe_continue().unwrap_or("/")),
    };
    browser::with_cookies(resp, cookies)
}

/// The form again, saying why (or the error page of a failure).
fn refused(
    req: &HttpRequest,
    agency: &Agency,
    params: &AuthParams,
    authz: Option<&Authz>,
    creds: &Credentials,
    e: SignInError,
) -> HttpResponse {
    let typed = creds.account_name();
    let typed = if typed.len() > 256 {
        ""
    } else {
        typed.as_str()
    };
    let view = SignInView::new(params, authz.map(|a| a.site.name.as_str()));
    match e {
        SignInError::BadCredentials => {
            let view = view.failed(typed, BAD_CREDENTIALS);
            browser::sign_in_page(req, agency, view, StatusCode::UNAUTHORIZED)
        }
        SignInError::Locked { retry_after_s } => {
            let view = view.failed(typed, LOCKED);
            let mut resp = browser::sign_in_page(req, agency, view, StatusCode::TOO_MANY_REQUESTS);
            if let Ok(v) = header::HeaderValue::from_str(&retry_after_s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            resp
        }
        SignInError::Busy => browser::busy_page(agency),
        SignInError::Failed(e) => browser::failed(agency, &e),
    }
}
