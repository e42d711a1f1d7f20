//! Sessions for non-browser apps: the device authorization endpoint and the
//! device page (RFC 8628; see `sso::device`). Apps use the token they get at
//! the gateway and at forward-auth apps (`http::gateway`, `http::forward_auth`).

use actix::Addr;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::browser::{
    self, client_source, csrf_ok, csrf_refused, csrf_token, current_session, sign_in_page,
    with_cookie, SignInView,
};
use super::oidc::{authenticate_client, ClientAuthForm};
use super::pages::{self, Csp};
use crate::actors::cookie_validator::CookieValidator;
use crate::agency::Agency;
use crate::metrics::Page;
use crate::sso::authorize::AuthParams;
use crate::sso::device::{self, Decided};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/sso/device_authorization").route(web::post().to(device_authorization)),
    )
    .service(
        super::resource("/device")
            .route(web::get().to(device_get))
            .route(web::post().to(device_post)),
    )
    .service(super::resource("/device/decide").route(web::post().to(device_decide)));
}

#[derive(Debug, Deserialize)]
struct DeviceAuthForm {
    scope: Option<String>,
    #[serde(flatten)]
    client: ClientAuthForm,
}

async fn device_authorization(
    req: HttpRequest,
    agency: web::Data<Agency>,
    form: web::Form<DeviceAuthForm>,
) -> Result<HttpResponse, super::error::OAuthError> {
    let site = authenticate_client(&agency, &req, &form.client).await?;
    let source = client_source(&req, &agency);
    let started = device::start(&agency, &site, form.scope.as_deref(), &source).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(started))
}

#[derive(Debug, Default, Deserialize)]
struct DeviceQuery {
    user_code: Option<String>,
}

fn page(status: StatusCode, body: impl FnOnce(&Csp) -> maud::Markup) -> HttpResponse {
    let csp = Csp::new(Vec::new());
    let markup = body(&csp);
    pages::html_response(status, markup, &csp)
}

/// The device page for `code` as typed: the confirmation when it names a
/// pending request, else the entry form with `error`.
fn device_page(
    agency: &Agency,
    req: &HttpRequest,
    typed: &str,
    error: Option<&str>,
) -> HttpResponse {
    let pending = match device::pending(agency, typed) {
        Ok(p) => p,
        Err(e) => return browser::failed(agency, &e),
    };
    let (csrf, cookie) = csrf_token(req);
    let resp = match (pending, error) {
        (Some(d), None) => {
            agency.metrics.page(Page::DeviceConfirm);
            page(StatusCode::OK, |csp| {
                pages::device_confirm(csp, &csrf, &d.code, &d.app, &d.scopes)
            })
        }
        _ => {
            agency.metrics.page(Page::Device);
            let status = match error {
                Some(_) => StatusCode::BAD_REQUEST,
                None => StatusCode::OK,
            };
            page(status, |csp| pages::device_entry(csp, &csrf, typed, error))
        }
    };
    with_cookie(resp, cookie)
}

async fn device_get(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<CookieValidator>>,
    query: web::Query<DeviceQuery>,
) -> HttpResponse {
    let typed = query.user_code.clone().unwrap_or_default();
    if current_session(&req, &gate, &agency).await.is_none() {
        let path = match &query.user_code {
            Some(c) => format!(
                "/device?user_code={}",
                baa_proto::sso::normalise_user_code(c)
            ),
            None => "/device".into(),
        };
        return sign_in_first(&req, &agency, &path, StatusCode::OK);
    }
    device_page(&agency, &req, &typed, None)
}

/// The sign-in page, continuing at the device page `path` afterwards.
fn sign_in_first(
    req: &HttpRequest,
    agency: &Agency,
    path: &str,
    status: StatusCode,
) -> HttpResponse {
    let params = AuthParams::continue_to(path);
    sign_in_page(
        req,
        agency,
        SignInView::new(&params, Some("a device")),
        status,
    )
}

#[derive(Debug, Deserialize)]
struct DeviceForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    user_code: String,
    #[serde(default)]
    decision: String,
}

const BAD_CODE: &str = "That code is not valid or has expired. Check it and try again.";

async fn device_post(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<CookieValidator>>,
    form: web::Form<DeviceForm>,
) -> HttpResponse {
    if !csrf_ok(&req, &form.csrf) {
        return csrf_refused(&agency);
    }
    if current_session(&req, &gate, &agency).await.is_none() {
        return sign_in_first(&req, &agency, "/device", StatusCode::UNAUTHORIZED);
    }
    if let Some(refused) = code_guessing_locked(&agency, &req, &form.user_code) {
        return refused;
    }
    match device::pending(&agency, &form.user_code) {
        Ok(Some(_)) => device_page(&agency, &req, &form.user_code, None),
        Ok(None) => {
            device::record_wrong_code(&agency, &form.user_code, &client_source(&req, &agency))
                .await;
            device_page(&agency, &req, &form.user_code, Some(BAD_CODE))
        }
        Err(e) => browser::failed(&agency, &e),
    }
}

/// Guessing user codes is throttled like guessing passwords, per source
/// address, on the entry page and the decision alike: the 429 page while
/// the source is locked.
fn code_guessing_locked(agency: &Agency, req: &HttpRequest, typed: &str) -> Option<HttpResponse> {
    match device::guessing_locked(agency, &client_source(req, agency)) {
        Ok(false) => None,
        Ok(true) => {
            let why = "Too many wrong codes. Wait a few minutes, then try again.";
            let mut resp = device_page(agency, req, typed, Some(why));
            *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
            Some(resp)
        }
        Err(e) => Some(browser::failed(agency, &e)),
    }
}

async fn device_decide(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<CookieValidator>>,
    form: web::Form<DeviceForm>,
) -> HttpResponse {
    if !csrf_ok(&req, &form.csrf) {
        return csrf_refused(&agency);
    }
    let Some(v) = current_session(&req, &gate, &agency).await else {
        return sign_in_first(&req, &agency, "/device", StatusCode::UNAUTHORIZED);
    };
    if let Some(refused) = code_guessing_locked(&agency, &req, &form.user_code) {
        return refused;
    }
    let approve = form.decision == "approve";
    let source = client_source(&req, &agency);
    match device::decide(&agency, &v, &form.user_code, approve, &source).await {
        Ok(Decided::Done) => page(StatusCode::OK, |csp| pages::device_done(csp, approve)),
        Ok(Decided::WrongCode) => device_page(&agency, &req, &form.user_code, Some(BAD_CODE)),
        Err(e) => browser::failed(&agency, &e),
    }
}
