//! `/admin/v1/sites…`, users' trust and sessions, and signing-key rotation
//! (see `sso::sites`, `sso::sessions`, `key_rotation`).

use actix_web::{web, HttpResponse};
use baa_proto::api::{CreateSiteRequest, ListQuery, SessionsEnded, TrustList};

use super::{Admin, ReadParams, RequestIdHeader};
use crate::agency::Agency;
use crate::error::Result;
use crate::sso::{sessions, sites};

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::http::resource;
    use web::{delete, get, post};
    cfg.service(
        resource("/sites")
            .route(get().to(list_sites))
            .route(post().to(create_site)),
    )
    .service(
        resource("/sites/{client_id}")
            .route(get().to(get_site))
            .route(delete().to(remove_site)),
    )
    .service(resource("/users/{username}/trust").route(get().to(list_trust)))
    .service(resource("/users/{username}/trust/{client_id}").route(delete().to(revoke_trust)))
    .service(
        resource("/users/{username}/sessions")
            .route(get().to(list_sessions))
            .route(delete().to(end_user_sessions)),
    )
    .service(resource("/sessions/{sid}").route(delete().to(end_session)))
    .service(resource("/keys/rotate").route(post().to(rotate_key)));
}

async fn list_sessions(
    _: Admin,
    agency: web::Data<Agency>,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse> {
    agency.read_barrier(query.consistency).await?;
    Ok(HttpResponse::Ok().json(sessions::list(&agency, &path, &query)?))
}

async fn end_user_sessions(
    _: Admin,
    agency: web::Data<Agency>,
    request_id: RequestIdHeader,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let ended = sessions::end_all(&agency, &path.into_inner(), request_id.0).await?;
    let revoked = ended.len();
    Ok(HttpResponse::Ok().json(SessionsEnded { revoked }))
}

async fn end_session(
    _: Admin,
    agency: web::Data<Agency>,
    request_id: RequestIdHeader,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    sessions::end_one(&agency, &path.into_inner(), request_id.0).await?;
    Ok(HttpResponse::Ok().json(SessionsEnded { revoked: 1 }))
}

async fn create_site(
    _: Admin,
    agency: web::Data<Agency>,
    request_id: RequestIdHeader,
    body: web::Json<CreateSiteRequest>,
) -> Result<HttpResponse> {
    let created = sites::register(&agency, body.into_inner(), request_id.0).await?;
    Ok(HttpResponse::Created().json(created))
}

async fn list_sites(
    _: Admin,
    agency: web::Data<Agency>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse> {
    agency.read_barrier(query.consistency).await?;
    Ok(HttpResponse::Ok().json(sites::list(&agency, &query)?))
}

async fn get_site(
    _: Admin,
    agency: web::Data<Agency>,
    path: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse> {
    agency.read_barrier(params.consistency).await?;
    Ok(HttpResponse::Ok().json(sites::get(&agency, &path.into_inner())?))
}

async fn remove_site(
    _: Admin,
    agency: web::Data<Agency>,
    request_id: RequestIdHeader,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    sites::remove(&agency, path.into_inner(), request_id.0).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn list_trust(
    _: Admin,
    agency: web::Data<Agency>,
    path: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse> {
    agency.read_barrier(params.consistency).await?;
    let trust = sites::trust_of(&agency, &path.into_inner())?;
    Ok(HttpResponse::Ok().json(TrustList { trust }))
}

async fn revoke_trust(
    _: Admin,
    agency: web::Data<Agency>,
    request_id: RequestIdHeader,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (username, client_id) = path.into_inner();
    sites::revoke_trust(&agency, &username, client_id, request_id.0).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /admin/v1/keys/rotate[?retire_old_after_s=N]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateParams {
    retire_old_after_s: Option<u64>,
}

async fn rotate_key(
    _: Admin,
    agency: web::Data<Agency>,
    params: web::Query<RotateParams>,
) -> Result<HttpResponse> {
    let jwks = crate::key_rotation::rotate_and_publish(&agency, params.retire_old_after_s).await?;
    Ok(HttpResponse::Ok().json(jwks))
}
