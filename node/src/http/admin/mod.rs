//! The admin API (`/admin/v1/…`), served on the management listener only:
//! users, partner sites, trust, sessions, signing keys and cluster
//! membership. Every handler requires the admin bearer credential; each
//! parses, calls one domain function, and answers JSON.

use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpRequest};
use baa_proto::command::{valid_request_id, Consistency, RequestId};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::agency::Agency;
use crate::error::{NodeError, Result};

mod cluster;
mod federation;
mod sites;
mod users;

/// Registers the admin routes under the current scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    users::configure(cfg);
    sites::configure(cfg);
    cluster::configure(cfg);
    federation::configure(cfg);
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

/// `?consistency=local|linearizable` on reads of one record (the lists take
/// `baa_proto::api::ListQuery`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    #[serde(default)]
    pub consistency: Consistency,
}
