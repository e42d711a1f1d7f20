//! Liveness, readiness and the Prometheus scrape endpoint.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::agency::Agency;

/// `GET /healthz`: the process serves requests.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// `GET /readyz`: a member with a known leader, applied up to the commit index.
pub async fn readyz(agency: web::Data<Agency>) -> HttpResponse {
    if agency.ready().await {
        HttpResponse::Ok().json(json!({ "ready": true }))
    } else {
        HttpResponse::ServiceUnavailable().json(json!({ "ready": false }))
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(agency: web::Data<Agency>) -> HttpResponse {
    if let Some(c) = agency.committed_index().await {
        agency.metrics.raft_committed_index.set(c as i64);
    }
    agency.metrics.observe_data_dir(&agency.config.data_dir);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(agency.metrics.render())
}
