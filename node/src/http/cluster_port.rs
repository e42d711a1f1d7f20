//! Cluster-port handlers: Raft RPCs from peers and requests forwarded by
//! followers. Only current members speak: every request's client certificate
//! (already checked against the cluster CA by TLS) must name a node of the
//! membership, else 403 `not_a_member`. Bodies are decoded with a size
//! limit; anything undecodable gets 400 `malformed_frame` and changes nothing.
//! Every request carries the wire version it speaks (`versions`); one newer
//! than this node's gets 400 `unsupported_version` saying which it speaks.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use baa_proto::api::{ForwardedWrite, ForwardedWriteReply, ReadIndexReply};
use baa_proto::codec;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::{de::DeserializeOwned, Serialize};

use crate::agency::Agency;
use crate::error::NodeError;
use crate::raft::TypeConfig;
use crate::tls::PeerNode;
use baa_proto::ErrorCode;

/// Registers the cluster-port routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/raft/append", web::post().to(append))
        .route("/raft/vote", web::post().to(vote))
        .route("/raft/snapshot", web::post().to(snapshot))
        .route("/cluster/v1/write", web::post().to(forwarded_write))
        .route("/cluster/v1/membership", web::post().to(membership))
        .route("/cluster/v1/status", web::post().to(status))
        .route(
            crate::raft::read_index::READ_INDEX_PATH,
            web::post().to(read_index),
        );
}

/// Middleware of the cluster listener: refuses requests from any peer that
/// is not a current member (see [`Agency::admits_peer`]), then requests of
/// a wire version this node does not speak.
pub async fn authorize_peer(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let peer = req.conn_data::<PeerNode>().and_then(|p| p.0);
    let admitted = match (peer, req.app_data::<web::Data<Agency>>()) {
        (Some(id), Some(agency)) => agency.admits_peer(id),
        _ => false,
    };
    if !admitted {
        tracing::warn!(
            peer = ?peer,
            path = req.path(),
            "refused a cluster-port request: the peer is not a current member"
        );
        let resp = actix_web::ResponseError::error_response(&NodeError::NotAMember);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    let version = req
        .headers()
        .get(crate::versions::WIRE_VERSION_HEADER)
        .map(|v| v.as_bytes());
    if let Err(message) = crate::versions::accept_wire_version(version) {
        tracing::warn!(peer = ?peer, path = req.path(), %message, "refused a cluster-port request");
        let e = NodeError::BadRequest {
            code: ErrorCode::UnsupportedVersion,
            message,
        };
        let resp = actix_web::ResponseError::error_response(&e);
        return Ok(req.into_response(resp).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, NodeError> {
    codec::decode(body).map_err(|e| match e {
        codec::CodecError::TooLarge { .. } => NodeError::BadRequest {
            code: ErrorCode::PayloadTooLarge,
            message: e.to_string(),
        },
        codec::CodecError::Malformed(_) => NodeError::BadRequest {
            code: ErrorCode::MalformedFrame,
            message: e.to_string(),
        },
    })
}

/// Reads a request body, refusing more than [`codec::MAX_FRAME_BYTES`].
async fn body(payload: web::Payload) -> Result<web::Bytes, NodeError> {
    match payload
        .to_bytes_limited(codec::MAX_FRAME_BYTES as usize)
        .await
    {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(NodeError::BadRequest {
            code: ErrorCode::MalformedFrame,
            message: format!("unreadable body: {e}"),
        }),
        Err(_) => Err(NodeError::BadRequest {
            code: ErrorCode::PayloadTooLarge,
            message: format!("frames are limited to {} bytes", codec::MAX_FRAME_BYTES),
        }),
    }
}

fn reply<T: Serialize>(value: &T) -> Result<HttpResponse, NodeError> {
    let bytes = codec::encode(value).map_err(|e| NodeError::Internal(e.to_string()))?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(bytes))
}

async fn append(
    agency: web::Data<Agency>,
    payload: web::Payload,
) -> Result<HttpResponse, NodeError> {
    let body = body(payload).await?;
    let req: AppendEntriesRequest<TypeConfig> = decode(&body)?;
    reply(&agency.raft.append_entries(req).await)
}

async fn vote(agency: web::Data<Agency>, payload: web::Payload) -> Result<HttpResponse, NodeError> {
    let body = body(payload).await?;
    let req: VoteRequest<u64> = decode(&body)?;
    reply(&agency.raft.vote(req).await)
}

async fn snapshot(
    agency: web::Data<Agency>,
    payload: web::Payload,
) -> Result<HttpResponse, NodeError> {
    let body = body(payload).await?;
    let req: InstallSnapshotRequest<TypeConfig> = decode(&body)?;
    reply(&agency.raft.install_snapshot(req).await)
}

async fn forwarded_write(
    agency: web::Data<Agency>,
    payload: web::Payload,
) -> Result<HttpResponse, NodeError> {
    let body = body(payload).await?;
    let req: ForwardedWrite = decode(&body)?;
    let result: ForwardedWriteReply = agency.write_as_leader(req.commands).await;
    reply(&result)
}

async fn membership(
    agency: web::Data<Agency>,
    payload: web::Payload,
) -> Result<HttpResponse, NodeError> {
    let body = body(payload).await?;
    let change: baa_proto::api::MembershipChange = decode(&body)?;
    reply(&agency.membership_as_leader(change).await)
}

async fn status(
    agency: web::Data<Agency>,
    payload: web::Payload,
) -> Result<HttpResponse, NodeError> {
    let body = body(payload).await?;
    let () = decode(&body)?;
    reply(&agency.status().await?)
}

async fn read_index(
    agency: web::Data<Agency>,
    payload: web::Payload,
) -> Result<HttpResponse, NodeError> {
    let body = body(payload).await?;
    let () = decode(&body)?;
    let result: ReadIndexReply = agency.read_index_as_leader().await;
    reply(&result)
}
