//! The cluster client: Raft RPCs and forwarded requests to peers over HTTPS
//! with this node's client certificate, bodies in the project's binary codec.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use baa_proto::codec;
use baa_proto::model::{BaaNode, NodeId};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{de::DeserializeOwned, Serialize};

use super::TypeConfig;
use crate::metrics::Metrics;

/// Why a call to a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No connection could be made.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The connection broke or timed out.
    #[error("network error: {0}")]
    Network(String),
    /// The peer answered with an HTTP error.
    #[error("peer answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Body text (truncated).
        body: String,
    },
    /// The answer could not be decoded.
    #[error("undecodable answer: {0}")]
    Codec(#[from] codec::CodecError),
}

/// An HTTPS client for the cluster port, shared by every connection.
#[derive(Clone)]
pub struct ClusterClient {
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl ClusterClient {
    /// Builds the client from the node's mTLS configuration.
    pub fn new(
        tls: rustls::ClientConfig,
        source_ip: Option<IpAddr>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .local_address(source_ip)
            .connect_timeout(Duration::from_millis(500))
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()?;
        Ok(Self { http, metrics })
    }

    /// POSTs `req` to `https://{addr}{path}` and decodes the answer.
    pub async fn call<Req, Resp>(
        &self,
        addr: &str,
        path: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, PeerError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let started = std::time::Instant::now();
        let result = self.exchange(addr, path, req, timeout).await;
        self.metrics
            .cluster_rpc_duration
            .with_label_values(&[path])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn exchange<Resp: DeserializeOwned>(
        &self,
        addr: &str,
        path: &str,
        req: &impl Serialize,
        timeout: Duration,
    ) -> Result<Resp, PeerError> {
        let body = codec::encode(req)?;
        let resp = self
            .http
            .post(format!("https://{addr}{path}"))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(
                crate::versions::WIRE_VERSION_HEADER,
                crate::versions::WIRE_VERSION.to_string(),
            )
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    PeerError::Unreachable(e.to_string())
                } else {
                    PeerError::Network(e.to_string())
                }
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| PeerError::Network(e.to_string()))?;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(PeerError::Status {
                status: status.as_u16(),
                body,
            });
        }
        Ok(codec::decode(&bytes)?)
    }
}

/// Creates a connection per peer for openraft.
pub struct NetworkFactory {
    client: Arc<ClusterClient>,
}

impl NetworkFactory {
    /// A factory using `client` for every peer.
    pub fn new(client: Arc<ClusterClient>) -> Self {
        Self { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BaaNode) -> Self::Network {
        PeerConnection {
            client: self.client.clone(),
            target,
            addr: node.cluster_addr.clone(),
        }
    }
}

/// openraft's view of one peer.
pub struct PeerConnection {
    client: Arc<ClusterClient>,
    target: NodeId,
    addr: String,
}

impl PeerConnection {
    async fn rpc<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BaaNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let reply: Result<Resp, RaftError<NodeId, E>> = self
            .client
            .call(&self.addr, path, req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                PeerError::Unreachable(_) => RPCError::Unreachable(Unreachable::new(&e)),
                _ => RPCError::Network(NetworkError::new(&e)),
            })?;
        reply.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BaaNode, RaftError<NodeId>>> {
        self.rpc("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BaaNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BaaNode, RaftError<NodeId>>> {
        self.rpc("/raft/vote", &rpc, &option).await
    }
}
