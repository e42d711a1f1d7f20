//! The two HTTPS listeners. Public: health, metrics, admin API (and later the
//! user-facing pages). Cluster: Raft RPC and forwarded requests, mutual TLS.

pub mod admin;
pub mod error;
pub mod health;

use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use actix_web::dev::{Server, Service};
use actix_web::{web, App, HttpServer};
use futures::FutureExt;

use crate::actors::hasher::PasswordHasher;
use crate::agency::Agency;
use crate::metrics::Metrics;
use crate::tls::NodeIdentity;

/// A resource whose other methods answer 405 with a JSON error.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(error::method_not_allowed))
}

fn observe(
    metrics: &Metrics,
    listener: &str,
    route: &str,
    method: &str,
    status: u16,
    started: Instant,
) {
    metrics
        .http_requests
        .with_label_values(&[listener, route, method, &status.to_string()])
        .inc();
    metrics
        .http_duration
        .with_label_values(&[listener, route])
        .observe(started.elapsed().as_secs_f64());
}

/// Binds and starts both listeners. The returned servers run until stopped
/// (SIGINT/SIGTERM or `ServerHandle::stop`).
pub fn start(
    agency: Arc<Agency>,
    hasher: Addr<PasswordHasher>,
    identity: &NodeIdentity,
) -> anyhow::Result<(Server, Server)> {
    let config = agency.config.clone();
    let data = web::Data::from(agency.clone());
    let hasher = web::Data::new(hasher);
    let json_limit = config.limits.max_json_bytes;

    let public_data = data.clone();
    let public = HttpServer::new(move || {
        let metrics = public_data.metrics.clone();
        App::new()
            .app_data(public_data.clone())
            .app_data(hasher.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(json_limit)
                    .error_handler(error::json_error),
            )
            .app_data(web::QueryConfig::default().error_handler(error::query_error))
            .app_data(web::PathConfig::default().error_handler(error::path_error))
            .wrap_fn(move |req, srv| {
                let started = Instant::now();
                let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
                let method = req.method().to_string();
                let metrics = metrics.clone();
                srv.call(req).map(move |res| {
                    if let Ok(r) = &res {
                        observe(
                            &metrics,
                            "public",
                            &route,
                            &method,
                            r.status().as_u16(),
                            started,
                        );
                    }
                    res
                })
            })
            // Health and metrics.
            .service(resource("/healthz").route(web::get().to(health::healthz)))
            .service(resource("/readyz").route(web::get().to(health::readyz)))
            .service(resource("/metrics").route(web::get().to(health::metrics)))
            // Admin API.
            .service(web::scope("/admin/v1").configure(admin::configure))
            .default_service(web::to(error::not_found))
    })
    .workers(2)
    .shutdown_timeout(5)
    .bind_rustls_0_23(config.public_listen, identity.public_server()?)?
    .run();

    let cluster_data = data;
    let cluster = HttpServer::new(move || {
        let metrics = cluster_data.metrics.clone();
        App::new()
            .app_data(cluster_data.clone())
            .wrap_fn(move |req, srv| {
                let started = Instant::now();
                let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
                let method = req.method().to_string();
                let metrics = metrics.clone();
                srv.call(req).map(move |res| {
                    if let Ok(r) = &res {
                        observe(
                            &metrics,
                            "cluster",
                            &route,
                            &method,
                            r.status().as_u16(),
                            started,
                        );
                    }
                    res
                })
            })
            .configure(crate::raft::rpc::configure)
            .default_service(web::to(error::not_found))
    })
    .workers(2)
    .shutdown_timeout(5)
    .bind_rustls_0_23(config.cluster_listen, identity.cluster_server()?)?
    .run();

    Ok((public, cluster))
}
