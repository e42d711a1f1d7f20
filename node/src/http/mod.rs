//! The three HTTPS listeners. Public: the user-facing pages and the OAuth /
//! OpenID Connect endpoints, health. Management (its own address, loopback by
//! default): the admin API and `/metrics`, health. Cluster: Raft RPC and
//! forwarded requests, mutual TLS between current members.

pub mod admin;
pub mod authorize;
pub mod browser;
pub mod cluster_port;
pub mod deadline;
pub mod error;
pub mod federation;
pub mod forward_auth;
pub mod gateway;
pub mod health;
pub mod home;
pub mod logout;
pub mod native;
pub mod oidc;
pub mod pages;
pub mod signin;

use std::sync::Arc;
use std::time::Instant;

use actix::Actor;
use actix_web::body::MessageBody;
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpServer};

use crate::actors::cookie_validator::CookieValidator;
use crate::actors::federation_directory::FederationDirectory;
use crate::actors::hasher::Hashers;
use crate::actors::peer_sessions::PeerSessions;
use crate::actors::ticket_issuer::TicketIssuer;
use crate::actors::token_translator::TokenTranslator;
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

/// The header carrying a request's id, both ways.
const REQUEST_ID: &str = "x-request-id";

/// The client's request id when it is a valid one (the idempotency key of
/// an admin write: 8 to 64 letters, digits, `-`, `_`, `.`, safe in a log
/// line as is), else a fresh random one.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| baa_proto::command::valid_request_id(v))
        .map(String::from)
        .unwrap_or_else(|| hex::encode(rand::random::<[u8; 8]>()))
}

/// Serves each request inside a `request` span holding its id and route
/// pattern (never its path or query, which may carry a code), so that every
/// line logged while serving it names the request; the response carries
/// the id back in `X-Request-Id`.
async fn request_span(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    use tracing::Instrument;
    let id = request_id(&req);
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", id = %id, route = %route);
    let mut res = next.call(req).instrument(span).await?;
    if let Ok(v) = actix_web::http::header::HeaderValue::from_str(&id) {
        res.headers_mut().insert(
            actix_web::http::header::HeaderName::from_static(REQUEST_ID),
            v,
        );
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
    directory: actix::Addr<FederationDirectory>,
    identity: &NodeIdentity,
) -> anyhow::Result<Listeners> {
    let data = web::Data::from(agency);
    let shared = Shared {
        directory: web::Data::new(directory),
        hasher: web::Data::new(hasher),
        upstreams: web::Data::new(gateway::UpstreamClient::new(&data)?),
        json_limit: data.config.limits.max_json_bytes,
        agency: data,
    };
    // The dummy hash for unknown accounts is made now, not on the first sign-in.
    crate::sso::sign_in::dummy_hash();
    Ok(Listeners {
        manage: manage_server(shared.clone(), identity)?,
        public: public_server(shared.clone(), identity)?,
        cluster: cluster_server(shared.agency, identity)?,
    })
}

/// What the listeners' apps share.
#[derive(Clone)]
struct Shared {
    agency: web::Data<Agency>,
    directory: web::Data<actix::Addr<FederationDirectory>>,
    hasher: web::Data<Hashers>,
    upstreams: web::Data<gateway::UpstreamClient>,
    json_limit: usize,
}

impl Shared {
    /// The shared state and the extractors' limits and error answers.
    fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(self.agency.clone())
            .app_data(self.hasher.clone())
            .app_data(
                web::JsonConfig::default()
                    .limit(self.json_limit)
                    .error_handler(error::json_error),
            )
            .app_data(web::QueryConfig::default().error_handler(error::query_error))
            .app_data(web::PathConfig::default().error_handler(error::path_error))
            // Health, for load balancers, on both HTTPS listeners.
            .service(resource("/healthz").route(web::get().to(health::healthz)))
            .service(resource("/readyz").route(web::get().to(health::readyz)));
    }
}

/// Browsers use TLS for the agency from the first answer on.
fn hsts() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add(("Strict-Transport-Security", "max-age=31536000"))
}

/// The management listener: the admin API and `/metrics` (loopback by default).
fn manage_server(shared: Shared, identity: &NodeIdentity) -> anyhow::Result<Server> {
    let addr = shared.agency.config.manage_listen;
    let server = HttpServer::new(move || {
        App::new()
            .configure(|cfg| shared.configure(cfg))
            .app_data(Listener("manage"))
            .app_data(shared.directory.clone())
            .wrap(from_fn(record_metrics))
            .wrap(from_fn(request_span))
            .wrap(hsts())
            .service(resource("/metrics").route(web::get().to(health::metrics)))
            .service(web::scope("/admin/v1").configure(admin::configure))
            .default_service(web::to(error::not_found))
    });
    Ok(server
        .workers(1)
        .tcp_nodelay(true)
        .shutdown_timeout(5)
        .bind_rustls_0_23(addr, identity.public_server()?)?
        .run())
}

/// The public listener: single sign-on for browsers, sites and apps.
fn public_server(shared: Shared, identity: &NodeIdentity) -> anyhow::Result<Server> {
    let addr = shared.agency.config.public_listen;
    let server = HttpServer::new(move || {
        // One of each actor per worker: their messages never cross threads.
        let agency = shared.agency.clone().into_inner();
        let peers = PeerSessions::new(agency.clone()).start();
        let gate = CookieValidator::new(agency.clone(), peers.clone()).start();
        let issuer = TicketIssuer::new(agency.clone()).start();
        let broker = TokenTranslator::new(agency).start();
        App::new()
            .configure(|cfg| shared.configure(cfg))
            .app_data(web::Data::new(gate))
            .app_data(web::Data::new(peers))
            .app_data(web::Data::new(issuer))
            .app_data(web::Data::new(broker))
            .app_data(shared.upstreams.clone())
            .app_data(
                web::FormConfig::default()
                    .limit(64 * 1024)
                    .error_handler(error::form_error),
            )
            .app_data(Listener("public"))
            .wrap(from_fn(deadline::body_deadline))
            .wrap(from_fn(record_metrics))
            .wrap(from_fn(request_span))
            .wrap(hsts())
            .configure(routes)
            .default_service(web::to(error::not_found))
    });
    Ok(server
        .workers(2)
        .tcp_nodelay(true)
        .shutdown_timeout(5)
        .client_request_timeout(deadline::HEAD_TIMEOUT)
        .tls_handshake_timeout(deadline::HANDSHAKE_TIMEOUT)
        .bind_rustls_0_23(addr, identity.public_server()?)?
        .run())
}

/// The public listener's endpoints.
fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(oidc::configure)
        .configure(federation::configure)
        .configure(home::configure)
        .configure(authorize::configure)
        .configure(signin::configure)
        .configure(logout::configure)
        .configure(native::configure)
        .configure(forward_auth::configure)
        .configure(gateway::configure);
}

/// The cluster listener: Raft RPCs and forwarded requests, members only.
fn cluster_server(data: web::Data<Agency>, identity: &NodeIdentity) -> anyhow::Result<Server> {
    let addr = data.config.cluster_listen;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(Listener("cluster"))
            .wrap(from_fn(cluster_port::authorize_peer))
            .wrap(from_fn(record_metrics))
            .wrap(from_fn(request_span))
            .configure(cluster_port::configure)
            .default_service(web::to(error::not_found))
    });
    Ok(server
        .on_connect(crate::tls::record_peer_node)
        .workers(2)
        .tcp_nodelay(true)
        .shutdown_timeout(5)
        .bind_rustls_0_23(addr, identity.cluster_server()?)?
        .run())
}
