//! The admin API (`/admin/v1/…`): users and cluster membership. Every handler
//! requires the admin bearer credential and is served only over TLS.

use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use baa_proto::api::{
    CreateUserRequest, JoinRequest, LeaveRequest, UpdateUserRequest, UserList, UserView,
};
use baa_proto::command::{
    valid_request_id, Consistency, NewUser, Op, Outcome, RequestId, UserPatch,
};
use baa_proto::model;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::actors::hasher::Hashers;
use crate::agency::Agency;
use crate::error::{NodeError, Result};

/// Registers the admin routes under the current scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use super::resource;
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
    .service(resource("/users/{username}/enable").route(post().to(enable_user)))
    .service(resource("/cluster/init").route(post().to(cluster_init)))
    .service(resource("/cluster/join").route(post().to(cluster_join)))
    .service(resource("/cluster/leave").route(post().to(cluster_leave)))
    .service(resource("/cluster/status").route(get().to(cluster_status)))
    .service(resource("/cluster/members").route(get().to(cluster_members)));
    super::admin_sso::configure(cfg);
}

/// Proof that the request carried the admin credential.
pub struct Admin;

impl FromRequest for Admin {
    type Error = NodeError;
    type Future = Ready<Result<Self>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let Some(agency) = req.app_data::<web::Data<Agency>>() else {
            return ready(Err(NodeError::Internal("agency state missing".into())));
        };
        let presented = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = agency.config.admin_token.as_bytes();
        // Constant-time compare so the credential cannot be guessed byte by byte.
        let ok =
            presented.len() == expected.len() && bool::from(presented.as_bytes().ct_eq(expected));
        ready(if ok {
            Ok(Admin)
        } else {
            Err(NodeError::Unauthorized)
        })
    }
}

/// The optional `X-Request-Id` idempotency key of a write.
pub struct RequestIdHeader(pub Option<RequestId>);

impl FromRequest for RequestIdHeader {
    type Error = NodeError;
    type Future = Ready<Result<Self>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let Some(v) = req.headers().get("x-request-id") else {
            return ready(Ok(RequestIdHeader(None)));
        };
        ready(match v.to_str() {
            Ok(s) if valid_request_id(s) => Ok(RequestIdHeader(Some(s.to_string()))),
            _ => Err(NodeError::invalid(
                "X-Request-Id must be 8-64 characters of A-Z, a-z, 0-9, '-', '_' or '.'",
            )),
        })
    }
}

/// `?consistency=local|linearizable` on reads.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    #[serde(default)]
    pub consistency: Consistency,
}

fn user_of(outcome: Outcome) -> Result<UserView> {
    match outcome {
        Outcome::User(u) => Ok(UserView::from(&u)),
        other => Err(NodeError::Internal(format!("unexpected outcome {other:?}"))),
    }
}

async fn hash(hasher: &Hashers, password: String) -> Result<String> {
    if password.len() < 8 || password.len() > 1024 {
        return Err(NodeError::invalid(
            "a password must be 8 to 1024 bytes long",
        ));
    }
    hasher
        .hash(password)
        .await
        .map_err(|_| NodeError::Busy)?
        .map_err(NodeError::Internal)
}

fn check<T>(r: std::result::Result<T, model::ValidationError>) -> Result<T> {
    r.map_err(|e| NodeError::invalid(e.0))
}

async fn create_user(
    _: Admin,
    agency: web::Data<Agency>,
    hasher: web::Data<Hashers>,
    request_id: RequestIdHeader,
    body: web::Json<CreateUserRequest>,
) -> Result<HttpResponse> {
    let req = body.into_inner();
    check(model::validate_username(&req.username))?;
    let display_name = req.display_name.unwrap_or_else(|| req.username.clone());
    check(model::validate_text("display_name", &display_name))?;
    let email = req.email.filter(|e| !e.is_empty());
    if let Some(e) = &email {
        check(model::validate_text("email", e))?;
    }
    check(model::validate_groups(&req.groups))?;
    for (k, v) in &req.attributes {
        check(model::validate_attribute(k, Some(v)))?;
    }
    let password_hash = match req.password {
        Some(p) => Some(hash(&hasher, p).await?),
        None => None,
    };
    let new = NewUser {
        username: req.username,
        display_name,
        email,
        groups: req.groups,
        attributes: req.attributes,
        password_hash,
    };
    let user = user_of(agency.write(Op::CreateUser(new), request_id.0).await?)?;
    Ok(HttpResponse::Created().json(user))
}

async fn get_user(
    _: Admin,
    agency: web::Data<Agency>,
    path: web::Path<String>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse> {
    agency.read_barrier(params.consistency).await?;
    let name = path.into_inner();
    match agency.state.user(&name)? {
        Some(u) => Ok(HttpResponse::Ok().json(UserView::from(&u))),
        None => Err(baa_proto::command::ApplyError::new(
            baa_proto::ErrorCode::UserNotFound,
            format!("no user named {name}"),
        )
        .into()),
    }
}

async fn list_users(
    _: Admin,
    agency: web::Data<Agency>,
    params: web::Query<ReadParams>,
) -> Result<HttpResponse> {
    agency.read_barrier(params.consistency).await?;
    let users = agency.state.users()?.iter().map(UserView::from).collect();
    Ok(HttpResponse::Ok().json(UserList { users }))
}

async fn update_user(
    _: Admin,
    agency: web::Data<Agency>,
    hasher: web::Data<Hashers>,
    backchannel: web::Data<super::oidc::Backchannel>,
    request_id: RequestIdHeader,
    path: web::Path<String>,
    body: web::Json<UpdateUserRequest>,
) -> Result<HttpResponse> {
    let req = body.into_inner();
    if let Some(d) = &req.display_name {
        check(model::validate_text("display_name", d))?;
    }
    if let Some(e) = &req.email {
        check(model::validate_text("email", e))?;
    }
    if let Some(g) = &req.groups {
        check(model::validate_groups(g))?;
    }
    for (k, v) in &req.attributes {
        check(model::validate_attribute(k, v.as_deref()))?;
    }
    let password_hash = match req.password {
        Some(p) => Some(hash(&hasher, p).await?),
        None => None,
    };
    let patch = UserPatch {
        display_name: req.display_name,
        email: req.email.map(|e| if e.is_empty() { None } else { Some(e) }),
        groups: req.groups,
        attributes: req.attributes,
        password_hash,
    };
    let username = path.into_inner();
    let ends_sessions = patch.password_hash.is_some();
    let op = Op::UpdateUser {
        username: username.clone(),
        patch,
    };
    write_user(
        &agency,
        &backchannel,
        op,
        &username,
        ends_sessions,
        request_id,
    )
    .await
}

/// Writes a change to a user; one that ends the user's sessions (a new
/// password, a disabled account) tells their sites over the back channel.
async fn write_user(
    agency: &web::Data<Agency>,
    backchannel: &super::oidc::Backchannel,
    op: Op,
    username: &str,
    ends_sessions: bool,
    request_id: RequestIdHeader,
) -> Result<HttpResponse> {
    let ending = if ends_sessions {
        crate::sso::sessions::about_to_end(agency, username)?
    } else {
        Vec::new()
    };
    let user = user_of(agency.write(op, request_id.0).await?)?;
    for r in ending {
        backchannel.notify(agency.clone().into_inner(), r);
    }
    Ok(HttpResponse::Ok().json(user))
}

async fn disable_user(
    _: Admin,
    agency: web::Data<Agency>,
    backchannel: web::Data<super::oidc::Backchannel>,
    request_id: RequestIdHeader,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let username = path.into_inner();
    let op = Op::SetUserDisabled {
        username: username.clone(),
        disabled: true,
    };
    write_user(&agency, &backchannel, op, &username, true, request_id).await
}

async fn enable_user(
    _: Admin,
    agency: web::Data<Agency>,
    backchannel: web::Data<super::oidc::Backchannel>,
    request_id: RequestIdHeader,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let username = path.into_inner();
    let op = Op::SetUserDisabled {
        username: username.clone(),
        disabled: false,
    };
    write_user(&agency, &backchannel, op, &username, false, request_id).await
}

async fn cluster_init(_: Admin, agency: web::Data<Agency>) -> Result<HttpResponse> {
    agency.initialize().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "initialized": true })))
}

async fn cluster_join(
    _: Admin,
    agency: web::Data<Agency>,
    body: web::Json<JoinRequest>,
) -> Result<HttpResponse> {
    let change = baa_proto::api::MembershipChange::Join(body.into_inner());
    Ok(HttpResponse::Ok().json(agency.change_membership(change).await?))
}

async fn cluster_leave(
    _: Admin,
    agency: web::Data<Agency>,
    body: web::Json<LeaveRequest>,
) -> Result<HttpResponse> {
    let change = baa_proto::api::MembershipChange::Leave(body.id);
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
