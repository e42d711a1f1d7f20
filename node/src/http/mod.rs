//! The three HTTPS listeners. Public: the user-facing pages and the OAuth /
//! OpenID Connect endpoints, health. Management (its own address, loopback by
//! default): the admin API and `/metrics`, health. Cluster: Raft RPC and
//! forwarded requests, mutual TLS between current members.

pub mod admin;
pub mod admin_sso;
pub mod error;
pub mod forward_auth;
pub mod gateway;
pub mod health;
pub mod native;
pub mod oidc;
pub mod pages;
pub mod sso;

use std::sync::Arc;
use std::time::Instant;

use actix::Actor;
use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};

use crate::actors::hasher::Hashers;
use crate::actors::native_broker::NativeBroker;
use crate::actors::session_gate::SessionGate;
use crate::actors::ticket_issuer::TicketIssuer;
use crate::agency::Agency;
use crate::tls::NodeIdentity;

/// A resource whose other methods answer 405 with a JSON error.
pub fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(error::method_not_allowed))
}

/// Names the listener in HTTP metrics.
#[derive(Clone, Copy)]
struct Listener(&'static str);

/// Counts and times every request by listener, route pattern, method and status.
async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    // The route pattern, not the path, keeps label cardinality bounded.
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let listener = req.app_data::<Listener>().map_or("unknown", |l| l.0);
    let metrics = req
        .app_data::<web::Data<Agency>>()
        .map(|a| a.metrics.clone());
    let res = next.call(req).await?;
    if let Some(m) = metrics {
        let status = res.status().as_u16().to_string();
        m.http_requests
            .with_label_values(&[listener, &route, &method, &status])
            .inc();
        m.http_duration
            .with_label_values(&[listener, &route])
            .observe(started.elapsed().as_secs_f64());
    }
    Ok(res)
}

/// The three listeners of a node.
pub struct Listeners {
    /// Users, partner sites and apps.
    pub public: Server,
    /// Administrators and Prometheus.
    pub manage: Server,
    /// The other members.
    pub cluster: Server,
}

/// Binds and starts the listeners. The returned servers run until stopped
/// (SIGINT/SIGTERM or `ServerHandle::stop`).
pub fn start(
    agency: Arc<Agency>,
    hasher: Hashers,
    identity: &NodeIdentity,
) -> anyhow::Result<Listeners> {
    let config = agency.config.clone();
    let data = web::Data::from(agency);
    let hasher = web::Data::new(hasher);
    let json_limit = config.limits.max_json_bytes;
    let backchannel = web::Data::new(oidc::Backchannel::new(&data)?);
    let upstreams = web::Data::new(gateway::UpstreamClient::new(&data)?);
    // The dummy hash for unknown accounts is made now, not on the first sign-in.
    sso::dummy_hash();

    let manage_data = data.clone();
    let manage_hasher = hasher.clone();
    let manage_backchannel = backchannel.clone();
    let manage = HttpServer::new(move || {
        App::new()
            .app_data(manage_data.clone())
            .app_data(manage_hasher.clone())
            .app_data(manage_backchannel.clone())
            .app_data(Listener("manage"))
            .app_data(
                web::JsonConfig::default()
                    .limit(json_limit)
                    .error_handler(error::json_error),
            )
            .app_data(web::QueryConfig::default().error_handler(error::query_error))
            .app_data(web::PathConfig::default().error_handler(error::path_error))
            .wrap(from_fn(record_metrics))
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add(("Strict-Transport-Security", "max-age=31536000")),
            )
            .service(resource("/healthz").route(web::get().to(health::healthz)))
            .service(resource("/readyz").route(web::get().to(health::readyz)))
            .service(resource("/metrics").route(web::get().to(health::metrics)))
            .service(web::scope("/admin/v1").configure(admin::configure))
            .default_service(web::to(error::not_found))
    })
    .workers(1)
    .tcp_nodelay(true)
    .shutdown_timeout(5)
    .bind_rustls_0_23(config.manage_listen, identity.public_server()?)?
    .run();

    let public_data = data.clone();
    let public = HttpServer::new(move || {
        // One gate and one issuer per worker: their messages never cross threads.
        let agency = public_data.clone().into_inner();
        let gate = web::Data::new(SessionGate::new(agency.clone()).start());
        let issuer = web::Data::new(TicketIssuer::new(agency.clone()).start());
        let broker = web::Data::new(NativeBroker::new(agency).start());
        App::new()
            .app_data(public_data.clone())
            .app_data(hasher.clone())
            .app_data(gate)
            .app_data(issuer)
            .app_data(broker)
            .app_data(backchannel.clone())
            .app_data(upstreams.clone())
            .app_data(
                web::FormConfig::default()
                    .limit(64 * 1024)
                    .error_handler(error::form_error),
            )
            .app_data(Listener("public"))
            .app_data(
                web::JsonConfig::default()
                    .limit(json_limit)
                    .error_handler(error::json_error),
            )
            .app_data(web::QueryConfig::default().error_handler(error::query_error))
            .app_data(web::PathConfig::default().error_handler(error::path_error))
            .wrap(from_fn(record_metrics))
            // Browsers use TLS for the agency from the first answer on.
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    .add(("Strict-Transport-Security", "max-age=31536000")),
            )
            // Health (for load balancers); metrics and the admin API live
            // on the management listener only.
            .service(resource("/healthz").route(web::get().to(health::healthz)))
            .service(resource("/readyz").route(web::get().to(health::readyz)))
            // Single sign-on.
            .configure(oidc::configure)
            .configure(sso::configure)
            .configure(native::configure)
            .configure(forward_auth::configure)
            .configure(gateway::configure)
            .default_service(web::to(error::not_found))
    })
    .workers(2)
    .tcp_nodelay(true)
    .shutdown_timeout(5)
    .bind_rustls_0_23(config.public_listen, identity.public_server()?)?
    .run();

    let cluster = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(Listener("cluster"))
            .wrap(from_fn(crate::raft::rpc::authorize_peer))
            .wrap(from_fn(record_metrics))
            // Raft RPC and forwarded requests.
            .configure(crate::raft::rpc::configure)
            .default_service(web::to(error::not_found))
    })
    .on_connect(crate::tls::record_peer_node)
    .workers(2)
    .tcp_nodelay(true)
    .shutdown_timeout(5)
    .bind_rustls_0_23(config.cluster_listen, identity.cluster_server()?)?
    .run();

    Ok(Listeners {
        public,
        manage,
        cluster,
    })
}
