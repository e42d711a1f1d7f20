//! The one place where errors become HTTP responses: a status per stable
//! code and a JSON body `{"error": code, "error_description": message}`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use baa_proto::api::ErrorBody;
use baa_proto::ErrorCode;

use crate::error::NodeError;

/// The HTTP status of each error code.
pub fn status_of(code: ErrorCode) -> StatusCode {
    StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// A JSON error response.
pub fn error_response(code: ErrorCode, message: impl Into<String>) -> HttpResponse {
    let mut resp = HttpResponse::build(status_of(code));
    resp.insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"));
    match code {
        ErrorCode::Unauthorized => {
            resp.insert_header((
                actix_web::http::header::WWW_AUTHENTICATE,
                "Bearer realm=\"baa-admin\"",
            ));
        }
        // Busy: come back in a second rather than queue.
        ErrorCode::TemporarilyUnavailable => {
            resp.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
        }
        // RFC 6749 §5.2: a client that authenticated (or could have) by
        // HTTP Basic hears the scheme back.
        ErrorCode::InvalidClient => {
            resp.insert_header((
                actix_web::http::header::WWW_AUTHENTICATE,
                "Basic realm=\"baa\"",
            ));
        }
        _ => {}
    }
    resp.json(ErrorBody {
        error: code,
        error_description: message.into(),
    })
}

impl ResponseError for NodeError {
    fn status_code(&self) -> StatusCode {
        status_of(self.code())
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(self, NodeError::Storage(_) | NodeError::Internal(_)) {
            tracing::error!(error = %self, "request failed");
        }
        let mut resp = error_response(self.code(), self.to_string());
        if let NodeError::RateLimited { retry_after_s } = self {
            if let Ok(v) =
                actix_web::http::header::HeaderValue::from_str(&retry_after_s.to_string())
            {
                resp.headers_mut()
                    .insert(actix_web::http::header::RETRY_AFTER, v);
            }
        }
        if let NodeError::NotLeader {
            leader_addr: Some(addr),
            ..
        } = self
        {
            if let Ok(v) = actix_web::http::header::HeaderValue::from_str(addr) {
                resp.headers_mut().insert(
                    actix_web::http::header::HeaderName::from_static("x-baa-leader"),
                    v,
                );
            }
        }
        resp
    }
}

/// An error of an OAuth endpoint (token, revocation, introspection, device
/// authorization, session status): the body's `error` is one of the codes
/// RFC 6749 §5.2 (with RFC 8628's device codes) defines, so any OAuth client
/// understands it; internal conditions are `temporarily_unavailable` (503,
/// `Retry-After`) or `server_error`.
#[derive(Debug)]
pub struct OAuthError(pub NodeError);

impl<E: Into<NodeError>> From<E> for OAuthError {
    fn from(e: E) -> Self {
        OAuthError(e.into())
    }
}

impl std::fmt::Display for OAuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The OAuth code and status of a node error code.
fn oauth_form(code: ErrorCode) -> (&'static str, StatusCode) {
    let (error, status) = code.oauth();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (error, status)
}

impl ResponseError for OAuthError {
    fn status_code(&self) -> StatusCode {
        oauth_form(self.0.code()).1
    }

    fn error_response(&self) -> HttpResponse {
        let code = self.0.code();
        let (error, status) = oauth_form(code);
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self.0, "request failed");
        }
        let mut resp = HttpResponse::build(status);
        resp.insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"));
        match error {
            "invalid_client" => {
                resp.insert_header((
                    actix_web::http::header::WWW_AUTHENTICATE,
                    "Basic realm=\"baa\"",
                ));
            }
            "temporarily_unavailable" => {
                let after = match &self.0 {
                    NodeError::RateLimited { retry_after_s } => retry_after_s.to_string(),
                    _ => "1".into(),
                };
                resp.insert_header((actix_web::http::header::RETRY_AFTER, after));
            }
            _ => {}
        }
        resp.json(serde_json::json!({
            "error": error,
            "error_description": self.0.to_string(),
        }))
    }
}

/// Maps JSON extractor failures to stable codes.
pub fn json_error(
    err: actix_web::error::JsonPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as J;
    let e = match &err {
        J::OverflowKnownLength { .. } | J::Overflow { .. } => NodeError::BadRequest {
            code: ErrorCode::PayloadTooLarge,
            message: "the request body is too large".into(),
        },
        J::ContentType => NodeError::BadRequest {
            code: ErrorCode::UnsupportedMediaType,
            message: "the request body must be application/json".into(),
        },
        J::Payload(p) if super::deadline::timed_out(p) => NodeError::BadRequest {
            code: ErrorCode::RequestTimeout,
            message: super::deadline::TimedOut.to_string(),
        },
        J::Deserialize(e) => NodeError::BadRequest {
            code: ErrorCode::MalformedJson,
            message: format!("invalid JSON body: {e}"),
        },
        _ => NodeError::BadRequest {
            code: ErrorCode::InvalidRequest,
            message: "the request body could not be read".into(),
        },
    };
    e.into()
}

/// Maps form extractor failures to stable codes (never echoing the body: it
/// may hold a password).
pub fn form_error(
    err: actix_web::error::UrlencodedError,
    req: &actix_web::HttpRequest,
) -> actix_web::Error {
    use actix_web::error::UrlencodedError as U;
    let e = match &err {
        U::Overflow { .. } => NodeError::BadRequest {
            code: ErrorCode::PayloadTooLarge,
            message: "the form is too large".into(),
        },
        U::ContentType => NodeError::BadRequest {
            code: ErrorCode::UnsupportedMediaType,
            message: "the request body must be application/x-www-form-urlencoded".into(),
        },
        U::Payload(p) if super::deadline::timed_out(p) => NodeError::BadRequest {
            code: ErrorCode::RequestTimeout,
            message: super::deadline::TimedOut.to_string(),
        },
        _ => NodeError::invalid("the form could not be parsed"),
    };
    // The OAuth endpoints answer in their own vocabulary.
    if req.path().starts_with("/sso/") {
        return OAuthError(e).into();
    }
    e.into()
}

/// Maps query-string extractor failures to `invalid_request`.
pub fn query_error(
    err: actix_web::error::QueryPayloadError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    NodeError::invalid(format!("invalid query string: {err}")).into()
}

/// Maps path extractor failures to `invalid_request`.
pub fn path_error(
    err: actix_web::error::PathError,
    _req: &actix_web::HttpRequest,
) -> actix_web::Error {
    NodeError::invalid(format!("invalid path: {err}")).into()
}

/// Fallback for unknown routes.
pub async fn not_found() -> Result<HttpResponse, NodeError> {
    Err(NodeError::NotFound)
}

/// Fallback for known routes called with another method.
pub async fn method_not_allowed() -> Result<HttpResponse, NodeError> {
    Err(NodeError::MethodNotAllowed)
}
