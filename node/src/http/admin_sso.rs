//! Admin API for single sign-on: partner sites, users' trust relationships
//! and sessions, and signing-key rotation.

use actix_web::{web, HttpResponse};
use baa_proto::api::{
    CreateSiteRequest, CreatedSite, SessionList, SessionsEnded, SiteList, SiteView, TrustList,
};
use baa_proto::command::{ApplyError, Op, Outcome};
use baa_proto::sso::{secret_hash, Site, SiteOptions};
use baa_proto::ErrorCode;

use super::admin::{Admin, ReadParams, RequestIdHeader};
use crate::actors::ticket_issuer::random_secret;
use crate::agency::Agency;
use crate::error::{NodeError, Result};

/// Registers the routes under `/admin/v1`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::resource;
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
    params: web::Query<ReadParams>,
) -> Result<HttpResponse> {
    agency.read_barrier(params.consistency).await?;
    let sessions = crate::sso::sessions::list(&agency, &path.into_inner())?;
    Ok(HttpResponse::Ok().json(SessionList { sessions }))
}

async fn end_user_sessions(
    _: Admin,
    agency: web::Data<Agency>,
    backchannel: web::Data<super::oidc::Backchannel>,
    request_id: RequestIdHeader,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let ended = crate::sso::sessions::end_all(&agency, &path.into_inner(), request_id.0).await?;
    let revoked = ended.len();
    for r in ended {
        backchannel.notify(agency.clone().into_inner(), r);
    }
    Ok(HttpResponse::Ok().json(SessionsEnded { revoked }))
}

async fn end_session(
    _: Admin,
    agency: web::Data<Agency>,
    backchannel: web::Data<super::oidc::Backchannel>,
    request_id: RequestIdHeader,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let ended = crate::sso::sessions::end_one(&agency, &path.into_inner(), request_id.0).await?;
    backchannel.notify(agency.clone().into_inner(), ended);
    Ok(HttpResponse::Ok().json(SessionsEnded { revoked: 1 }))
}

async fn create_site(
    _: Admin,
    agency: web::Data<Agency>,
    request_id: RequestIdHeader,
    body: web::Json<CreateSiteRequest>,
) -> Result<HttpResponse> {
    let req = body.into_inner();
    let secret = match (req.public, req.client_secret) {
        (true, Some(_)) => {
            return Err(NodeError::invalid(
                "a public client has no secret; drop client_secret or public",
            ))
        }
        (true, None) => None,
        (false, Some(s)) if s.len() < 32 || s.len() > 256 => {
            return Err(NodeError::invalid(
                "client_secret must be 32 to 256 characters",
            ))
        }
        (false, Some(s)) => Some(s),
        (false, None) => Some(random_secret().0),
    };
    let site = Site {
        name: req.name.unwrap_or_else(|| req.client_id.clone()),
        client_id: req.client_id,
        redirect_uris: req.redirect_uris,
        post_logout_redirect_uris: req.post_logout_redirect_uris,
        secret_hash: secret.as_ref().map(|s| secret_hash(s.as_bytes())),
        backchannel_logout_uri: req.backchannel_logout_uri,
        allowed_scopes: req
            .allowed_scopes
            .unwrap_or_else(|| ["openid", "profile", "email"].map(String::from).to_vec()),
        created_ms: 0,
    };
    baa_proto::model::validate_site(&site).map_err(|e| NodeError::invalid(e.0))?;
    let options = SiteOptions {
        default_response_mode: req.default_response_mode.unwrap_or_default(),
    };
    let op = Op::RegisterSite {
        site: Box::new(site),
        options,
    };
    match agency.write(op, request_id.0).await? {
        Outcome::Site(s) => Ok(HttpResponse::Created().json(CreatedSite {
            site: SiteView::new(&s, options),
            client_secret: secret,
        })),
        other => Err(NodeError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

async fn list_sites(
    _: Admin,
    agency: web::Data<Agency>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse> {
    agency.read_barrier(params.consistency).await?;
    let sites = agency
        .state
        .sites()?
        .iter()
        .map(|s| Ok(SiteView::new(s, agency.state.site_options(&s.client_id)?)))
        .collect::<Result<_>>()?;
    Ok(HttpResponse::Ok().json(SiteList { sites }))
}

fn no_site(id: &str) -> NodeError {
    ApplyError::new(ErrorCode::SiteNotFound, format!("no site {id}")).into()
}

async fn get_site(
    _: Admin,
    agency: web::Data<Agency>,
    path: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse> {
    agency.read_barrier(params.consistency).await?;
    let id = path.into_inner();
    let site = agency.state.site(&id)?.ok_or_else(|| no_site(&id))?;
    let options = agency.state.site_options(&id)?;
    Ok(HttpResponse::Ok().json(SiteView::new(&site, options)))
}

async fn remove_site(
    _: Admin,
    agency: web::Data<Agency>,
    request_id: RequestIdHeader,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let client_id = path.into_inner();
    agency
        .write(Op::RemoveSite { client_id }, request_id.0)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

fn user_id(agency: &Agency, username: &str) -> Result<u64> {
    agency.state.user(username)?.map(|u| u.id).ok_or_else(|| {
        ApplyError::new(ErrorCode::UserNotFound, format!("no user named {username}")).into()
    })
}

async fn list_trust(
    _: Admin,
    agency: web::Data<Agency>,
    path: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse> {
    agency.read_barrier(params.consistency).await?;
    let id = user_id(&agency, &path.into_inner())?;
    Ok(HttpResponse::Ok().json(TrustList {
        trust: agency.state.trusts(id)?,
    }))
}

async fn revoke_trust(
    _: Admin,
    agency: web::Data<Agency>,
    request_id: RequestIdHeader,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (username, client_id) = path.into_inner();
    let user_id = user_id(&agency, &username)?;
    agency
        .write(Op::RevokeTrust { user_id, client_id }, request_id.0)
        .await?;
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
    agency.rotate_signing_key(params.retire_old_after_s).await?;
    // Applied on the leader; here too before the keys are listed.
    agency
        .read_barrier(baa_proto::command::Consistency::Linearizable)
        .await?;
    agency.keys.invalidate();
    let jwks = agency.keys.jwks()?;
    Ok(HttpResponse::Ok().json(jwks))
}
