//! The node's error type. Each variant has a stable [`ErrorCode`]; the single
//! mapping to HTTP statuses lives in `http::error`.

use baa_proto::command::ApplyError;
use baa_proto::model::NodeId;
use baa_proto::ErrorCode;

/// Result alias of the node crate.
pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// Everything that can go wrong while serving a request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// The request is not acceptable as sent.
    #[error("{message}")]
    BadRequest {
        /// Stable code (invalid_request, malformed_json, ...).
        code: ErrorCode,
        /// Explanation.
        message: String,
    },
    /// Missing or wrong credential.
    #[error("a valid admin credential is required")]
    Unauthorized,
    /// A node-local rate limit refused the request.
    #[error("too many requests; retry in {retry_after_s} s")]
    RateLimited {
        /// When to come back.
        retry_after_s: u64,
    },
    /// A bounded queue of this node is full; the client should retry shortly.
    #[error("the agency is busy; retry in a moment")]
    Busy,
    /// A cluster-port peer whose certificate names no current member.
    #[error("the client certificate does not name a current member of this cluster")]
    NotAMember,
    /// No such route.
    #[error("no such endpoint")]
    NotFound,
    /// Method not allowed on the route.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The state machine refused the command.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// No leader could be reached before the deadline.
    #[error("the cluster has no reachable leader; retry later")]
    NoLeader,
    /// The write was not committed before the deadline; it may still be applied later.
    #[error("the request was not completed before the deadline; retry with the same X-Request-Id")]
    Timeout,
    /// This operation must be sent to the leader.
    #[error("this node is not the leader")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<NodeId>,
        /// The leader's public address, if known.
        leader_addr: Option<String>,
    },
    /// The cluster was initialised before.
    #[error("the cluster is already initialised")]
    AlreadyInitialized,
    /// A membership change was refused.
    #[error("membership change refused: {0}")]
    Membership(String),
    /// Storage failed.
    #[error("storage failure: {0}")]
    Storage(String),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

impl NodeError {
    /// A bad request with code `invalid_request`.
    pub fn invalid(message: impl Into<String>) -> Self {
        NodeError::BadRequest {
            code: ErrorCode::InvalidRequest,
            message: message.into(),
        }
    }

    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::BadRequest { code, .. } => *code,
            NodeError::Unauthorized => ErrorCode::Unauthorized,
            NodeError::NotAMember => ErrorCode::NotAMember,
            NodeError::Busy => ErrorCode::TemporarilyUnavailable,
            NodeError::RateLimited { .. } => ErrorCode::TooManyAttempts,
            NodeError::NotFound => ErrorCode::NotFound,
            NodeError::MethodNotAllowed => ErrorCode::MethodNotAllowed,
            NodeError::Apply(e) => e.code,
            NodeError::NoLeader => ErrorCode::NoLeader,
            NodeError::Timeout => ErrorCode::Timeout,
            NodeError::NotLeader { .. } => ErrorCode::NotLeader,
            NodeError::AlreadyInitialized => ErrorCode::AlreadyInitialized,
            NodeError::Membership(_) => ErrorCode::MembershipRejected,
            NodeError::Storage(_) => ErrorCode::StorageError,
            NodeError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<openraft::StorageError<NodeId>> for NodeError {
    fn from(e: openraft::StorageError<NodeId>) -> Self {
        NodeError::Storage(e.to_string())
    }
}
