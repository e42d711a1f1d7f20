//! `/sso/authorize` and `/sso/consent`: the seamless login of a partner
//! site. The request is checked, then the browser's session and trust decide
//! (see `sso::authorize`); a ticket goes to the site by an auto-submitting
//! form (or a redirect, if the site registered so).

use actix::Addr;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::browser::{self, csrf_ok, csrf_refused, current_session, SignInView};
use crate::actors::cookie_validator::CookieValidator;
use crate::actors::peer_sessions::PeerSessions;
use crate::actors::ticket_issuer::TicketIssuer;
use crate::agency::Agency;
use crate::sso::authorize::{self, AuthParams};
use crate::sso::consent::{self, Decision};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource("/sso/authorize")
            .route(web::get().to(authorize_get))
            .route(web::post().to(authorize_post)),
    )
    .service(super::resource("/sso/consent").route(web::post().to(consent_post)));
}

/// The actors an authorization request uses.
#[derive(Clone)]
struct Actors {
    gate: web::Data<Addr<CookieValidator>>,
    issuer: web::Data<Addr<TicketIssuer>>,
    peers: web::Data<Addr<PeerSessions>>,
}

impl actix_web::FromRequest for Actors {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let missing = || actix_web::error::ErrorInternalServerError("actor missing");
        std::future::ready((|| {
            Ok(Actors {
                gate: req
                    .app_data::<web::Data<Addr<CookieValidator>>>()
                    .ok_or_else(missing)?
                    .clone(),
                issuer: req
                    .app_data::<web::Data<Addr<TicketIssuer>>>()
                    .ok_or_else(missing)?
                    .clone(),
                peers: req
                    .app_data::<web::Data<Addr<PeerSessions>>>()
                    .ok_or_else(missing)?
                    .clone(),
            })
        })())
    }
}

async fn authorize(
    req: HttpRequest,
    agency: web::Data<Agency>,
    actors: Actors,
    params: AuthParams,
) -> HttpResponse {
    let (gate, issuer) = (&actors.gate, &actors.issuer);
    let a = match authorize::check(&agency, &params).await {
        Ok(a) => a,
        Err(e) => return browser::refused(&agency, e),
    };
    let session = current_session(&req, gate, &agency).await;
    if session.is_none() {
        let peers = &actors.peers;
        if let Some(resp) = super::federation::peer_sign_in(&req, &agency, peers, &params, &a).await
        {
            return resp;
        }
    }
    let next = authorize::proceed(&agency, issuer, &a, session.as_ref(), false).await;
    browser::render_next(&req, &agency, &params, &a, session.as_ref(), next).await
}

async fn authorize_get(
    req: HttpRequest,
    agency: web::Data<Agency>,
    actors: Actors,
    params: web::Query<AuthParams>,
) -> HttpResponse {
    authorize(req, agency, actors, params.into_inner()).await
}

async fn authorize_post(
    req: HttpRequest,
    agency: web::Data<Agency>,
    actors: Actors,
    params: web::Form<AuthParams>,
) -> HttpResponse {
    authorize(req, agency, actors, params.into_inner()).await
}

/// The trust page's form.
#[derive(Deserialize)]
struct ConsentForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    decision: String,
    #[serde(default)]
    account_name: Option<String>,
    #[serde(default)]
    share_name: Option<String>,
    #[serde(default)]
    share_email: Option<String>,
    #[serde(flatten)]
    params: AuthParams,
}

async fn consent_post(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<CookieValidator>>,
    issuer: web::Data<Addr<TicketIssuer>>,
    form: web::Form<ConsentForm>,
) -> HttpResponse {
    let f = form.into_inner();
    if !csrf_ok(&req, &f.csrf) {
        return csrf_refused(&agency);
    }
    let a = match authorize::check(&agency, &f.params).await {
        Ok(a) => a,
        Err(e) => return browser::refused(&agency, e),
    };
    let Some(v) = current_session(&req, &gate, &agency).await else {
        let view = SignInView::new(&f.params, Some(&a.site.name));
        let view = view.failed("", "Your session ended. Sign in again.");
        return browser::sign_in_page(
            &req,
            &agency,
            view,
            actix_web::http::StatusCode::UNAUTHORIZED,
        );
    };
    let d = Decision::from_form(
        &f.decision,
        f.account_name.as_deref(),
        f.share_name.is_some(),
        f.share_email.is_some(),
    );
    let next = consent::decide(&agency, &issuer, &a, &v, d).await;
    browser::render_next(&req, &agency, &f.params, &a, Some(&v), next).await
}
