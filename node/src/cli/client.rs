//! A small HTTPS client of the admin API for the CLI and the demo.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use baa_proto::api::ErrorBody;
use clap::Args;
use serde::{de::DeserializeOwned, Serialize};

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Base URL of a node's public listener, e.g. https://127.0.0.1:8441.
    #[arg(long, env = "BAA_URL", global = true)]
    pub url: Option<String>,
    /// CA certificate to trust for the node's TLS certificate.
    #[arg(long, env = "BAA_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Admin bearer credential. A token on the command line shows in `ps`:
    /// prefer --token-file or the environment.
    #[arg(long, env = "BAA_ADMIN_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the admin bearer credential (its first line).
    #[arg(
        long,
        env = "BAA_ADMIN_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
}

impl Connection {
    /// The admin credential, from --token or --token-file.
    fn admin_token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = self.token_file.as_ref().context(
            "--token or --token-file (or BAA_ADMIN_TOKEN, BAA_ADMIN_TOKEN_FILE) is required",
        )?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the admin token from {}", path.display()))?;
        let token = text.lines().next().unwrap_or_default().trim().to_string();
        anyhow::ensure!(!token.is_empty(), "{} holds no token", path.display());
        Ok(token)
    }
}

/// An error answered by the API.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {} ({})", .body.error_description, .body.error)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Error body.
    pub body: ErrorBody,
}

/// The API's error code, when `e` is an error answered by the API.
pub fn error_code(e: &anyhow::Error) -> Option<baa_proto::ErrorCode> {
    e.downcast_ref::<ApiError>().map(|a| a.body.error)
}

/// An authenticated admin API client bound to one node.
#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl AdminClient {
    /// A client for `conn`.
    pub fn new(conn: &Connection) -> anyhow::Result<Self> {
        let url = conn.url.clone().context("--url (or BAA_URL) is required")?;
        let token = conn.admin_token()?;
        let ca = conn.ca.clone().context("--ca (or BAA_CA) is required")?;
        Self::with(&url, &ca, &token)
    }

    /// A client for the node at `url`, trusting `ca`.
    pub fn with(url: &str, ca: &std::path::Path, token: &str) -> anyhow::Result<Self> {
        let tls = crate::tls::client_trusting(ca)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(130))
            .build()?;
        Ok(Self {
            http,
            base: url.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    /// Sends `req` with the credential; the response of a success, or the API's error.
    async fn respond(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("calling {}", self.base))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await?;
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ApiError {
                status: status.as_u16(),
                body,
            }
            .into()),
            Err(_) => anyhow::bail!("{status}: {}", String::from_utf8_lossy(&bytes)),
        }
    }

    /// Sends `req` with the credential; the body of a success, or the API's error.
    async fn call(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Vec<u8>> {
        let resp = self.respond(req).await?;
        Ok(resp.bytes().await?.to_vec())
    }

    /// GET a resource to be read a chunk at a time, allowing `timeout` for
    /// the whole of it: the response of a success, or the API's error.
    pub async fn get_streamed(
        &self,
        path: &str,
        timeout: Duration,
    ) -> anyhow::Result<reqwest::Response> {
        self.respond(
            self.http
                .get(format!("{}{path}", self.base))
                .timeout(timeout),
        )
        .await
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let bytes = self.call(req).await?;
        serde_json::from_slice(&bytes).context("decoding the answer")
    }

    /// GET a JSON resource.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// POST a JSON body.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// PATCH a JSON body.
    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.http.patch(format!("{}{path}", self.base)).json(body))
            .await
    }

    /// DELETE a resource; the answer has no body.
    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.call(self.http.delete(format!("{}{path}", self.base)))
            .await
            .map(drop)
    }

    /// DELETE a resource that answers with a JSON body.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// Whether `GET path` answers 200 (no credential needed).
    pub async fn is_ok(&self, path: &str) -> bool {
        matches!(self.http.get(format!("{}{path}", self.base)).timeout(Duration::from_secs(2)).send().await,
            Ok(r) if r.status().is_success())
    }
}
