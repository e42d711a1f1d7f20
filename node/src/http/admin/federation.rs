//! `/admin/v1/federation/…`: peer agencies added (checked against the
//! pin), listed and removed; the directory; the agency's own key and pin
//! (see `sso::federation`).

use actix_web::{web, HttpResponse};
use baa_proto::api::{AddPeerRequest, PeerList};
use serde::Deserialize;

use super::{Admin, ReadParams, RequestIdHeader};
use crate::actors::federation_directory::FederationDirectory;
use crate::agency::Agency;
use crate::error::Result;
use crate::sso::federation;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use web::{delete, get, post};
    cfg.service(
        crate::http::resource("/federation/peers")
            .route(get().to(list_peers))
            .route(post().to(add_peer))
            .route(delete().to(remove_peer)),
    )
    .service(crate::http::resource("/federation/directory").route(get().to(directory)))
    .service(crate::http::resource("/federation/key").route(get().to(own_key)))
    .service(crate::http::resource("/federation/key/rotate").route(post().to(rotate_key)));
}

/// `?overlap_s=N`: how long the current key keeps signing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateQuery {
    overlap_s: Option<u64>,
}

/// `POST /admin/v1/federation/key/rotate[?overlap_s=N]`: a new federation
/// key, published now, signing after the overlap (default one day).
async fn rotate_key(
    _: Admin,
    agency: web::Data<Agency>,
    query: web::Query<RotateQuery>,
) -> Result<HttpResponse> {
    let overlap_s = query
        .overlap_s
        .unwrap_or(federation::DEFAULT_ROTATION_OVERLAP_S);
    Ok(HttpResponse::Ok().json(federation::rotate_key(&agency, overlap_s).await?))
}

/// `GET /admin/v1/federation/key`: this agency's current federation key
/// and its pin, for the administrators of peers to pin.
async fn own_key(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(federation::own_key(&agency)?))
}

/// `GET /admin/v1/federation/directory`: what this node holds of each peer
/// (reachable, when fetched, its keys).
async fn directory(
    _: Admin,
    agency: web::Data<Agency>,
    addr: web::Data<actix::Addr<FederationDirectory>>,
) -> Result<HttpResponse> {
    let peers = federation::directory(&agency, &addr).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "peers": peers })))
}

async fn add_peer(
    _: Admin,
    agency: web::Data<Agency>,
    request_id: RequestIdHeader,
    body: web::Json<AddPeerRequest>,
) -> Result<HttpResponse> {
    let req = body.into_inner();
    let peer = federation::add_peer(&agency, &req.issuer, &req.pin, request_id.0).await?;
    Ok(HttpResponse::Created().json(peer))
}

async fn list_peers(
    _: Admin,
    agency: web::Data<Agency>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse> {
    agency.read_barrier(params.consistency).await?;
    let peers = federation::peers(&agency)?;
    Ok(HttpResponse::Ok().json(PeerList { peers }))
}

/// `?issuer=<url>`: an issuer is a URL, awkward in a path.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssuerQuery {
    issuer: String,
}

async fn remove_peer(
    _: Admin,
    agency: web::Data<Agency>,
    request_id: RequestIdHeader,
    query: web::Query<IssuerQuery>,
) -> Result<HttpResponse> {
    federation::remove_peer(&agency, &query.issuer, request_id.0).await?;
    Ok(HttpResponse::NoContent().finish())
}
