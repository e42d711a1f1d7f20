//! `/admin/v1/cluster/…`: initialise a cluster, add and remove members,
//! the cluster's status as this node and every member see it, and a
//! snapshot built on demand.

use actix_web::{web, HttpResponse};
use baa_proto::api::{JoinRequest, LeaveRequest, MembershipChange};

use super::Admin;
use crate::agency::Agency;
use crate::error::Result;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::http::resource;
    use web::{get, post};
    cfg.service(resource("/cluster/init").route(post().to(cluster_init)))
        .service(resource("/cluster/join").route(post().to(cluster_join)))
        .service(resource("/cluster/leave").route(post().to(cluster_leave)))
        .service(resource("/cluster/status").route(get().to(cluster_status)))
        .service(resource("/cluster/members").route(get().to(cluster_members)))
        .service(resource("/cluster/snapshot").route(post().to(cluster_snapshot)));
}

async fn cluster_init(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    crate::key_rotation::initialize(&agency).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "initialized": true })))
}

async fn cluster_join(
    _: Admin,
    agency: web::Data<Agency>,
    body: web::Json<JoinRequest>,
) -> Result<HttpResponse> {
    let change = MembershipChange::Join(body.into_inner());
    Ok(HttpResponse::Ok().json(agency.change_membership(change).await?))
}

async fn cluster_leave(
    _: Admin,
    agency: web::Data<Agency>,
    body: web::Json<LeaveRequest>,
) -> Result<HttpResponse> {
    let change = MembershipChange::Leave(body.id);
    Ok(HttpResponse::Ok().json(agency.change_membership(change).await?))
}

async fn cluster_status(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(agency.status()?))
}

/// `GET /admin/v1/cluster/members`: every member's own status, or why it
/// could not be had, gathered by this node over the cluster port.
async fn cluster_members(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(agency.member_statuses().await?))
}

/// `POST /admin/v1/cluster/snapshot`: this node builds a snapshot of its
/// state now (before a backup, or to measure one); answers its status.
async fn cluster_snapshot(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(agency.snapshot_now().await?))
}
