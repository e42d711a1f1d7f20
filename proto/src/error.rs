//! Stable, machine-readable error codes. The strings never change once
//! published: clients and tests match on them.

use serde::{Deserialize, Serialize};

/// Every error a baa node reports to a client carries one of these codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or parameters are not valid.
    InvalidRequest,
    /// The body could not be parsed as JSON of the expected shape.
    MalformedJson,
    /// The request's Content-Type is not the one the endpoint accepts.
    UnsupportedMediaType,
    /// The body is larger than the endpoint accepts.
    PayloadTooLarge,
    /// No route matches the path.
    NotFound,
    /// The method is not allowed on this route.
    MethodNotAllowed,
    /// Authentication is missing or wrong.
    Unauthorized,
    /// No user with that name.
    UserNotFound,
    /// A user with that name already exists.
    UserExists,
    /// The cluster has no leader right now; retry later.
    NoLeader,
    /// The write could not be committed before the deadline.
    Timeout,
    /// The cluster is already initialised.
    AlreadyInitialized,
    /// A membership change was refused.
    MembershipRejected,
    /// The node is not the leader; send the request to the leader.
    NotLeader,
    /// A frame on the cluster port could not be decoded.
    MalformedFrame,
    /// The cluster port's peer is not a current member of the cluster.
    NotAMember,
    /// No partner site with that client id.
    SiteNotFound,
    /// A partner site with that client id already exists.
    SiteExists,
    /// The login ticket (authorization code) is invalid, expired, used or not
    /// the caller's.
    InvalidGrant,
    /// Client authentication failed.
    InvalidClient,
    /// The session does not exist or has ended.
    SessionNotFound,
    /// No such trust relationship.
    TrustNotFound,
    /// Too many failed sign-ins; wait before trying again.
    TooManyAttempts,
    /// The cluster has no signing key yet.
    NoSigningKey,
    /// The token endpoint does not support that grant type.
    UnsupportedGrantType,
    /// A requested scope is unknown or not allowed for the client.
    InvalidScope,
    /// The request's form token (CSRF) is missing or wrong.
    CsrfMismatch,
    /// Device grant: the user has not decided yet (RFC 8628).
    AuthorizationPending,
    /// Device grant: polling too fast (RFC 8628).
    SlowDown,
    /// Device grant: the device code expired (RFC 8628).
    ExpiredToken,
    /// The user declined.
    AccessDenied,
    /// The gateway could not reach the upstream app or read its answer.
    BadGateway,
    /// The node is busy (a bounded queue is full); retry after `Retry-After`.
    TemporarilyUnavailable,
    /// Storage failed; the node may need attention.
    StorageError,
    /// Something unexpected went wrong inside the node.
    Internal,
}

impl ErrorCode {
    /// The stable string form, as it appears in JSON error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::UserExists => "user_exists",
            ErrorCode::NoLeader => "no_leader",
            ErrorCode::Timeout => "timeout",
            ErrorCode::AlreadyInitialized => "already_initialized",
            ErrorCode::MembershipRejected => "membership_rejected",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::SiteNotFound => "site_not_found",
            ErrorCode::SiteExists => "site_exists",
            ErrorCode::InvalidGrant => "invalid_grant",
            ErrorCode::InvalidClient => "invalid_client",
            ErrorCode::SessionNotFound => "session_not_found",
            ErrorCode::TrustNotFound => "trust_not_found",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::NoSigningKey => "no_signing_key",
            ErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            ErrorCode::InvalidScope => "invalid_scope",
            ErrorCode::CsrfMismatch => "csrf_mismatch",
            ErrorCode::AuthorizationPending => "authorization_pending",
            ErrorCode::SlowDown => "slow_down",
            ErrorCode::ExpiredToken => "expired_token",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_form_matches_as_str() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::NoLeader,
            ErrorCode::UserExists,
            ErrorCode::MalformedFrame,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
