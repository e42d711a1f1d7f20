//! A typed client of a node's admin API (HTTPS, bearer token), plus TLS helpers.

use std::path::Path;
use std::time::Duration;

use baa_proto::api::{
    ClusterStatus, CreateUserRequest, CreatedSite, ErrorBody, ListPage, ListQuery,
    UpdateUserRequest, UserList, UserView, MAX_PAGE_LIMIT,
};
use baa_proto::command::Consistency;
use baa_proto::model::NodeId;
use baa_proto::ErrorCode;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Default per-request timeout: above a node's default `write_timeout_ms` (10 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The node answered with an error status.
    #[error("HTTP {status}: {raw}")]
    Status {
        /// HTTP status.
        status: StatusCode,
        /// The parsed error body, if it was an `ErrorBody`.
        body: Option<ErrorBody>,
        /// The raw body text.
        raw: String,
    },
    /// No answer: connection refused or reset, TLS failure, timeout, bad JSON in a success body.
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
}

impl ApiError {
    /// The HTTP status, if the node answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            ApiError::Transport(_) => None,
        }
    }

    /// The error code of the body, if the node answered with an `ErrorBody`.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ApiError::Status { body: Some(b), .. } => Some(b.error),
            _ => None,
        }
    }

    /// Whether retrying the same request (same request id) may succeed: transport
    /// errors, 5xx, 408 and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Transport(_) => true,
            ApiError::Status { status, .. } => {
                status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS
            }
        }
    }
}

/// A reqwest client that trusts only the PEM CA at `ca_pem` (no built-in roots),
/// optionally presenting a client identity (PEM with certificate and key).
pub fn https_client(
    ca_pem: &Path,
    identity_pem: Option<&[u8]>,
    timeout: Duration,
) -> reqwest::Client {
    let ca = std::fs::read(ca_pem).unwrap_or_else(|e| panic!("reading {}: {e}", ca_pem.display()));
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA certificate PEM"))
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(Duration::from_secs(5));
    if let Some(id) = identity_pem {
        b = b.identity(reqwest::Identity::from_pem(id).expect("client identity PEM"));
    }
    b.build().expect("building the HTTPS client")
}

/// Reads a certificate and its key into one PEM buffer for [`https_client`].
pub fn identity_pem(cert: &Path, key: &Path) -> Vec<u8> {
    let mut pem = std::fs::read(cert).unwrap_or_else(|e| panic!("reading {}: {e}", cert.display()));
    pem.push(b'\n');
    pem.extend(std::fs::read(key).unwrap_or_else(|e| panic!("reading {}: {e}", key.display())));
    pem
}

/// The admin API of one node.
#[derive(Clone)]
pub struct AdminClient {
    node: NodeId,
    base: String,
    token: String,
    http: reqwest::Client,
}

impl AdminClient {
    /// A client of `base` (`https://127.0.0.1:PORT`) with the admin `token`.
    pub fn new(
        node: NodeId,
        base: impl Into<String>,
        token: impl Into<String>,
        http: reqwest::Client,
    ) -> Self {
        AdminClient {
            node,
            base: base.into(),
            token: token.into(),
            http,
        }
    }

    /// The node this client talks to.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// `https://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The underlying HTTP client (trusts the cluster CA).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The same client with a different bearer token.
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        AdminClient {
            token: token.into(),
            ..self.clone()
        }
    }

    /// A request to `path` with the bearer token set; for the raw cases tests need.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
    }

    /// `POST /admin/v1/users`.
    pub async fn create_user(
        &self,
        req: &CreateUserRequest,
        request_id: Option<&str>,
    ) -> Result<UserView, ApiError> {
        self.send_json(
            self.with_id(self.request(Method::POST, "/admin/v1/users"), request_id)
                .json(req),
        )
        .await
    }

    /// `POST /admin/v1/sites` with a registration as JSON (raw, so tests can
    /// send what a typed request would refuse to build).
    pub async fn create_site(&self, body: &serde_json::Value) -> Result<CreatedSite, ApiError> {
        self.send_json(self.request(Method::POST, "/admin/v1/sites").json(body))
            .await
    }

    /// `GET /admin/v1/sites/{client_id}`.
    pub async fn site(&self, client_id: &str) -> Result<baa_proto::api::SiteView, ApiError> {
        let path = format!("/admin/v1/sites/{client_id}");
        self.send_json(self.request(Method::GET, &path)).await
    }

    /// `GET /admin/v1/users/{name}?consistency=…`.
    pub async fn get_user(
        &self,
        name: &str,
        consistency: Consistency,
    ) -> Result<UserView, ApiError> {
        let path = format!(
            "/admin/v1/users/{name}?consistency={}",
            consistency_str(consistency)
        );
        self.send_json(self.request(Method::GET, &path)).await
    }

    /// `PATCH /admin/v1/users/{name}`.
    pub async fn update_user(
        &self,
        name: &str,
        req: &UpdateUserRequest,
        request_id: Option<&str>,
    ) -> Result<UserView, ApiError> {
        let rb = self.request(Method::PATCH, &format!("/admin/v1/users/{name}"));
        self.send_json(self.with_id(rb, request_id).json(req)).await
    }

    /// Sets one attribute (`PATCH` with a single attribute).
    pub async fn set_attribute(
        &self,
        name: &str,
        key: &str,
        value: &str,
        request_id: Option<&str>,
    ) -> Result<UserView, ApiError> {
        let req = UpdateUserRequest {
            attributes: [(key.to_string(), Some(value.to_string()))].into(),
            ..Default::default()
        };
        self.update_user(name, &req, request_id).await
    }

    /// Every user (`GET /admin/v1/users?consistency=…`, page after page
    /// until a page names no next one), in one list.
    pub async fn list_users(&self, consistency: Consistency) -> Result<UserList, ApiError> {
        let mut query = Some(ListQuery {
            limit: Some(MAX_PAGE_LIMIT),
            consistency,
            ..Default::default()
        });
        let mut users = Vec::new();
        while let Some(q) = query {
            let (found, next) = self
                .list_page::<UserList>("/admin/v1/users", &q)
                .await?
                .into_parts();
            users.extend(found);
            query = q.after(next);
        }
        Ok(UserList {
            users,
            next_cursor: None,
        })
    }

    /// One page of an admin list: `GET path?limit=…&cursor=…&prefix=…`
    /// (`UserList`, `SiteList` or `SessionList`).
    pub async fn list_page<P: ListPage + DeserializeOwned>(
        &self,
        path: &str,
        query: &ListQuery,
    ) -> Result<P, ApiError> {
        let rb = self.request(Method::GET, path).query(query);
        self.send_json(rb).await
    }

    /// `POST /admin/v1/users/{name}/disable` or `/enable`.
    pub async fn set_disabled(
        &self,
        name: &str,
        disabled: bool,
        request_id: Option<&str>,
    ) -> Result<UserView, ApiError> {
        let verb = if disabled { "disable" } else { "enable" };
        let rb = self.request(Method::POST, &format!("/admin/v1/users/{name}/{verb}"));
        self.send_json(self.with_id(rb, request_id)).await
    }

    /// `GET /admin/v1/cluster/status`.
    pub async fn status(&self) -> Result<ClusterStatus, ApiError> {
        self.send_json(self.request(Method::GET, "/admin/v1/cluster/status"))
            .await
    }

    /// `GET /healthz` status code.
    pub async fn healthz(&self) -> Result<StatusCode, ApiError> {
        Ok(self
            .http
            .get(format!("{}/healthz", self.base))
            .send()
            .await?
            .status())
    }

    /// `GET /readyz` status code.
    pub async fn readyz(&self) -> Result<StatusCode, ApiError> {
        Ok(self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await?
            .status())
    }

    /// `GET /metrics` text.
    pub async fn metrics(&self) -> Result<String, ApiError> {
        let resp = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?;
        let status = resp.status();
        let raw = resp.text().await?;
        if status.is_success() {
            Ok(raw)
        } else {
            Err(ApiError::Status {
                status,
                body: serde_json::from_str(&raw).ok(),
                raw,
            })
        }
    }

    fn with_id(&self, rb: RequestBuilder, request_id: Option<&str>) -> RequestBuilder {
        match request_id {
            Some(id) => rb.header("X-Request-Id", id),
            None => rb,
        }
    }

    async fn send_json<T: DeserializeOwned>(&self, rb: RequestBuilder) -> Result<T, ApiError> {
        let resp = rb.send().await?;
        let status = resp.status();
        if status.is_success() {
            Ok(resp.json().await?)
        } else {
            let raw = resp.text().await.unwrap_or_default();
            Err(ApiError::Status {
                status,
                body: serde_json::from_str(&raw).ok(),
                raw,
            })
        }
    }
}

fn consistency_str(c: Consistency) -> &'static str {
    match c {
        Consistency::Local => "local",
        Consistency::Linearizable => "linearizable",
    }
}

/// Serialises a value as pretty JSON for messages.
pub fn pretty<T: Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("<unserialisable: {e}>"))
}

/// The value of one sample in Prometheus text. `name` is either a bare metric
/// name (matches the unlabelled sample; if there is none, the sum of all its
/// labelled samples) or a name with labels exactly as exported, e.g.
/// `baa_raft_replication_lag{follower="2"}`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    let mut sum = None::<f64>;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let key = key.trim();
        if key == name {
            return Some(v);
        }
        if !name.contains('{')
            && key
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
        {
            sum = Some(sum.unwrap_or(0.0) + v);
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    #[test]
    fn parses_metrics() {
        let text = "# HELP x y\n# TYPE baa_raft_term gauge\nbaa_raft_term 7\n\
                    baa_raft_replication_lag{follower=\"2\"} 3\nbaa_raft_replication_lag{follower=\"3\"} 4\n\
                    baa_raft_term_other 9\n";
        assert_eq!(metric_value(text, "baa_raft_term"), Some(7.0));
        assert_eq!(
            metric_value(text, "baa_raft_replication_lag{follower=\"3\"}"),
            Some(4.0)
        );
        assert_eq!(metric_value(text, "baa_raft_replication_lag"), Some(7.0));
        assert_eq!(metric_value(text, "baa_nothing"), None);
    }
}
