//! `/admin/v1/users…`: create, read, change, disable and enable users
//! (see `sso::users`).

use actix_web::{web, HttpResponse};
use baa_proto::api::{CreateUserRequest, ListQuery, UpdateUserRequest};

use super::{Admin, ReadParams, RequestIdHeader};
use crate::actors::hasher::Hashers;
use crate::agency::Agency;
use crate::error::Result;
use crate::sso::users;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::http::resource;
    use web::{get, patch, post};
    cfg.service(
        resource("/users")
            .route(get().to(list_users))
            .route(post().to(create_user)),
    )
    .service(
        resource("/users/{username}")
            .route(get().to(get_user))
            .route(patch().to(update_user)),
    )
    .service(resource("/users/{username}/disable").route(post().to(disable_user)))
    .service(resource("/users/{username}/enable").route(post().to(enable_user)));
}

async fn create_user(
    _: Admin,
    agency: web::Data<Agency>,
    hasher: web::Data<Hashers>,
    request_id: RequestIdHeader,
    body: web::Json<CreateUserRequest>,
) -> Result<HttpResponse> {
    let user = users::create(&agency, &hasher, body.into_inner(), request_id.0).await?;
    Ok(HttpResponse::Created().json(user))
}

async fn get_user(
    _: Admin,
    agency: web::Data<Agency>,
    path: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse> {
    agency.read_barrier(params.consistency).await?;
    Ok(HttpResponse::Ok().json(users::get(&agency, &path.into_inner())?))
}

async fn list_users(
    _: Admin,
    agency: web::Data<Agency>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse> {
    agency.read_barrier(query.consistency).await?;
    Ok(HttpResponse::Ok().json(users::list(&agency, &query)?))
}

async fn update_user(
    _: Admin,
    ctx: ChangeContext,
    path: web::Path<String>,
    body: web::Json<UpdateUserRequest>,
) -> Result<HttpResponse> {
    apply(ctx, &path, users::Change::Update(body.into_inner())).await
}

async fn disable_user(
    _: Admin,
    ctx: ChangeContext,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    apply(ctx, &path, users::Change::Disabled(true)).await
}

async fn enable_user(
    _: Admin,
    ctx: ChangeContext,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    apply(ctx, &path, users::Change::Disabled(false)).await
}

/// What a change to a user needs: the agency, the hashing pool and the
/// request id.
type ChangeContext = (web::Data<Agency>, web::Data<Hashers>, RequestIdHeader);

async fn apply(ctx: ChangeContext, username: &str, change: users::Change) -> Result<HttpResponse> {
    let (agency, hasher, request_id) = ctx;
    let agency = agency.into_inner();
    let user = users::change(&agency, &hasher, username, change, request_id.0).await?;
    Ok(HttpResponse::Ok().json(user))
}
