//! Stable, machine-readable error codes, in one table: each code's string
//! (never changed once published: clients and tests match on it), its HTTP
//! status, and its form at the OAuth endpoints (RFC 6749 §5.2 and RFC 8628
//! codes only, so any OAuth client understands the answer).

use serde::{Deserialize, Serialize};

/// Defines [`ErrorCode`] and its table from rows of
/// `Variant = "code", http_status, "oauth_code", oauth_status;`.
macro_rules! error_codes {
    ($( $(#[doc = $doc:expr])* $name:ident = $code:literal, $status:literal, $oauth:literal, $oauth_status:literal; )*) => {
        /// Every error a baa node reports to a client carries one of these codes.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* $name, )*
        }

        impl ErrorCode {
            /// Every code, in declaration (persisted) order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The stable string form, as it appears in JSON error bodies.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$name => $code,)* }
            }

            /// The HTTP status of an answer with this code.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$name => $status,)* }
            }

            /// The code and status an OAuth endpoint answers instead.
            pub fn oauth(self) -> (&'static str, u16) {
                match self { $(ErrorCode::$name => ($oauth, $oauth_status),)* }
            }
        }
    };
}

error_codes! {
    /// The request body or parameters are not valid.
    InvalidRequest = "invalid_request", 400, "invalid_request", 400;
    /// The body could not be parsed as JSON of the expected shape.
    MalformedJson = "malformed_json", 400, "invalid_request", 400;
    /// The request's Content-Type is not the one the endpoint accepts.
    UnsupportedMediaType = "unsupported_media_type", 415, "invalid_request", 415;
    /// The body is larger than the endpoint accepts.
    PayloadTooLarge = "payload_too_large", 413, "invalid_request", 413;
    /// No route matches the path.
    NotFound = "not_found", 404, "invalid_request", 404;
    /// The method is not allowed on this route.
    MethodNotAllowed = "method_not_allowed", 405, "invalid_request", 405;
    /// Authentication is missing or wrong.
    Unauthorized = "unauthorized", 401, "unauthorized_client", 401;
    /// No user with that name.
    UserNotFound = "user_not_found", 404, "invalid_grant", 400;
    /// A user with that name already exists.
    UserExists = "user_exists", 409, "server_error", 500;
    /// The cluster has no leader right now; retry later.
    NoLeader = "no_leader", 503, "temporarily_unavailable", 503;
    /// The write could not be committed before the deadline.
    Timeout = "timeout", 503, "temporarily_unavailable", 503;
    /// The cluster is already initialised.
    AlreadyInitialized = "already_initialized", 409, "server_error", 500;
    /// A membership change was refused.
    MembershipRejected = "membership_rejected", 409, "server_error", 500;
    /// The node is not the leader; send the request to the leader.
    NotLeader = "not_leader", 421, "temporarily_unavailable", 503;
    /// A frame on the cluster port could not be decoded.
    MalformedFrame = "malformed_frame", 400, "invalid_request", 400;
    /// The cluster port's peer is not a current member of the cluster.
    NotAMember = "not_a_member", 403, "unauthorized_client", 401;
    /// No partner site with that client id.
    SiteNotFound = "site_not_found", 404, "invalid_request", 404;
    /// A partner site with that client id already exists.
    SiteExists = "site_exists", 409, "server_error", 500;
    /// The login ticket (authorization code) is invalid, expired, used or not
    /// the caller's.
    InvalidGrant = "invalid_grant", 400, "invalid_grant", 400;
    /// Client authentication failed.
    InvalidClient = "invalid_client", 401, "invalid_client", 401;
    /// The session does not exist or has ended.
    SessionNotFound = "session_not_found", 404, "invalid_grant", 400;
    /// No such trust relationship.
    TrustNotFound = "trust_not_found", 404, "invalid_grant", 400;
    /// Too many failed sign-ins; wait before trying again.
    TooManyAttempts = "too_many_attempts", 429, "temporarily_unavailable", 429;
    /// The cluster has no signing key yet.
    NoSigningKey = "no_signing_key", 503, "temporarily_unavailable", 503;
    /// The token endpoint does not support that grant type.
    UnsupportedGrantType = "unsupported_grant_type", 400, "unsupported_grant_type", 400;
    /// A requested scope is unknown or not allowed for the client.
    InvalidScope = "invalid_scope", 400, "invalid_scope", 400;
    /// The request's form token (CSRF) is missing or wrong.
    CsrfMismatch = "csrf_mismatch", 400, "invalid_request", 400;
    /// Device grant: the user has not decided yet (RFC 8628).
    AuthorizationPending = "authorization_pending", 400, "authorization_pending", 400;
    /// Device grant: polling too fast (RFC 8628).
    SlowDown = "slow_down", 400, "slow_down", 400;
    /// Device grant: the device code expired (RFC 8628).
    ExpiredToken = "expired_token", 400, "expired_token", 400;
    /// The user declined.
    AccessDenied = "access_denied", 400, "access_denied", 400;
    /// The gateway could not reach the upstream app or read its answer.
    BadGateway = "bad_gateway", 502, "server_error", 500;
    /// The node is busy (a bounded queue is full); retry after `Retry-After`.
    TemporarilyUnavailable = "temporarily_unavailable", 503, "temporarily_unavailable", 503;
    /// Storage failed; the node may need attention.
    StorageError = "storage_error", 500, "server_error", 500;
    /// Something unexpected went wrong inside the node.
    Internal = "internal", 500, "server_error", 500;
    // Append new codes below: request results store this enum, so its
    // variant order is part of the persisted format.
    /// No partner site with that client id is registered (an authorization
    /// request; the browser sees a page, never a redirect).
    UnknownSite = "unknown_site", 400, "invalid_request", 400;
    /// The redirect URI is not one the site registered.
    InvalidRedirectUri = "invalid_redirect_uri", 400, "invalid_request", 400;
    /// The authorization request asks for a response type other than `code`.
    UnsupportedResponseType = "unsupported_response_type", 400, "unsupported_response_type", 400;
    /// `prompt=none`, and the user is not signed in (OIDC Core §3.1.2.6).
    LoginRequired = "login_required", 400, "login_required", 400;
    /// `prompt=none`, and the user has not approved the site (OIDC Core §3.1.2.6).
    ConsentRequired = "consent_required", 400, "consent_required", 400;
    /// The issuer is a peer agency already.
    PeerExists = "peer_exists", 409, "server_error", 500;
    /// No peer agency with that issuer.
    PeerNotFound = "peer_not_found", 404, "invalid_request", 404;
    /// The peer's entity configuration is not signed by the pinned key.
    PinMismatch = "pin_mismatch", 400, "invalid_request", 400;
    /// The peer agency could not be reached, or did not answer with a valid
    /// entity configuration.
    PeerUnreachable = "peer_unreachable", 502, "temporarily_unavailable", 503;
    /// A peer agency's user has no linked account here, and this agency
    /// links only accounts an administrator linked.
    AccountNotLinked = "account_not_linked", 403, "access_denied", 403;
    /// The session a peer agency's reference names could not be used here
    /// (unknown agency or key, session ended, peer unreachable).
    PeerSessionRefused = "peer_session_refused", 401, "login_required", 401;
    /// Data of a format or wire version newer than this node speaks (a
    /// cluster-port request from a newer release).
    UnsupportedVersion = "unsupported_version", 400, "invalid_request", 400;
    /// The request's body did not arrive in time (a client sending it
    /// slowly holds a connection; see `http::deadline`).
    RequestTimeout = "request_timeout", 408, "invalid_request", 408;
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
        for &code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn oauth_answers_use_only_the_codes_oauth_defines() {
        const OAUTH: &[&str] = &[
            "invalid_request",
            "invalid_client",
            "invalid_grant",
            "unauthorized_client",
            "unsupported_grant_type",
            "invalid_scope",
            "server_error",
            "temporarily_unavailable",
            "authorization_pending",
            "slow_down",
            "access_denied",
            "expired_token",
            "unsupported_response_type",
            "login_required",
            "consent_required",
        ];
        for &code in ErrorCode::ALL {
            let (oauth, status) = code.oauth();
            assert!(OAUTH.contains(&oauth), "{code}: {oauth}");
            assert!((400..600).contains(&status), "{code}: {status}");
            assert!((400..600).contains(&code.http_status()), "{code}");
        }
    }
}
