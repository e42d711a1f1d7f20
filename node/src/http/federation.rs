//! `/.well-known/openid-federation`: the agency's entity configuration (see
//! `sso::federation`), for peer agencies to fetch and check against the key
//! they pinned.

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use baa_proto::federation::ENTITY_CONFIGURATION_PATH;

use crate::agency::Agency;
use crate::error::NodeError;

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        super::resource(ENTITY_CONFIGURATION_PATH).route(web::get().to(entity_configuration)),
    );
}

async fn entity_configuration(agency: web::Data<Agency>) -> Result<HttpResponse, NodeError> {
    let jwt = crate::sso::federation::entity_configuration(&agency)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/entity-statement+jwt"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(jwt))
}
