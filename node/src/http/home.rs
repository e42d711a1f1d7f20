//! The agency's home page: who is signed in, and the sites they trust.

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::browser::{self, current_session};
use super::pages::{self, Csp};
use crate::actors::cookie_validator::CookieValidator;
use crate::agency::Agency;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/").route(web::get().to(home)));
}

async fn home(
    req: HttpRequest,
    agency: web::Data<Agency>,
    gate: web::Data<Addr<CookieValidator>>,
) -> HttpResponse {
    let session = current_session(&req, &gate, &agency).await;
    let found = match &session {
        Some(v) => crate::sso::consent::trusted_sites(&agency, v.session.user_id),
        None => Ok(None),
    };
    let (user, sites) = match found {
        Ok(Some(t)) => (Some(t.user), t.sites),
        Ok(None) => (None, Vec::new()),
        Err(e) => return browser::failed(&agency, &e),
    };
    let csp = Csp::new(Vec::new());
    let page = pages::HomePage {
        agency: &agency.config.sso.agency,
        user: user
            .as_ref()
            .map(|u| (u.username.as_str(), u.display_name.as_str())),
        sites: &sites,
    };
    pages::html_response(StatusCode::OK, pages::home(&csp, &page), &csp)
}
