//! The node's replicated core as request handlers see it: writes from any
//! node (forwarded to the leader and retried across leader changes within a
//! deadline), local or linearizable reads, status and membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baa_proto::api::{
    ClusterStatus, ForwardError, ForwardedWriteReply, JoinRequest, MembershipChange,
    MembershipReply, ReadIndexReply, SnapshotBuilt,
};
use baa_proto::command::{Command, Consistency, Op, Outcome, RequestId};
use baa_proto::model::{BaaNode, NodeId};
use baa_proto::ErrorCode;
use openraft::error::{ClientWriteError, InitializeError, RaftError};
use openraft::{ChangeMembers, RaftMetrics};

use crate::clock::now_ms;
use crate::config::Config;
use crate::error::{NodeError, Result};
use crate::metrics::Metrics;
use crate::raft::network::ClusterClient;
use crate::raft::proposer::{self, Attempt, Proposer};
use crate::raft::read_index::ReadRounds;
use crate::raft::state_machine::StateReader;
use crate::raft::Raft;

/// Shared by every handler and actor of a node.
pub struct Agency {
    /// This node's id.
    pub id: NodeId,
    /// The Raft handle.
    pub raft: Raft,
    /// Reads of the applied state.
    pub state: StateReader,
    /// Client for the cluster port of peers.
    pub cluster: Arc<ClusterClient>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Node configuration.
    pub config: Arc<Config>,
    /// Groups writes into proposals and sends them to the leader.
    pub proposer: Proposer,
    /// The key-encryption keys, which wrap the agency's secrets at rest.
    pub kek: Arc<crate::kek::KekRing>,
    /// The replicated signing keys.
    pub keys: crate::keys::KeyRing,
    /// Seals and opens login tickets with the replicated ticket keys.
    pub tickets: crate::sealing::TicketSealer,
    /// What this node knows of its peer agencies (kept by the federation directory).
    pub peers: Arc<crate::peers::PeerBook>,
    /// Read indexes for linearizable reads, one round at a time.
    pub reads: ReadRounds,
    /// Node-local rate limits on what anonymous clients can make it write.
    pub limits: crate::limits::Limits,
}

/// How long a membership change may take (a learner catching up included).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(120);

/// A fresh random request id for writes that came without one, so that
/// internal retries can never apply a command twice.
pub fn random_request_id() -> RequestId {
    format!("auto-{}", hex::encode(rand::random::<[u8; 16]>()))
}

impl Agency {
    /// An HTTP client builder for calls to partner sites and upstream apps:
    /// trusts the roots of `[sso] partner_ca_file` (never the cluster CA),
    /// follows no redirects.
    pub fn partner_client(&self) -> anyhow::Result<reqwest::ClientBuilder> {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .redirect(reqwest::redirect::Policy::none());
        for f in self.config.sso.partner_ca_file.iter() {
            let pem = std::fs::read(f)?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                b = b.add_root_certificate(cert);
            }
        }
        Ok(b)
    }

    fn raft_metrics(&self) -> RaftMetrics<NodeId, BaaNode> {
        self.raft.metrics().borrow().clone()
    }

    /// The current leader and its address, as this node knows them.
    pub fn leader(&self) -> Option<(NodeId, Option<BaaNode>)> {
        crate::raft::known_leader(&self.raft)
    }

    /// Whether node `id` may speak on this node's cluster port: it is in the
    /// membership (voter or learner), or this node has no membership yet (a
    /// node being added first hears from the leader before it knows anyone).
    pub fn admits_peer(&self, id: NodeId) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        membership.nodes().next().is_none() || membership.get_node(&id).is_some()
    }

    /// Replicates `op` and returns its outcome. Any node accepts writes; a
    /// follower forwards to the leader. Retries across leader changes until the
    /// configured deadline, under one request id so nothing is applied twice:
    /// the caller's, or one made here when applying `op` twice would differ
    /// (see `Op::needs_request_id`; the state machine remembers results only
    /// under request ids).
    pub async fn write(&self, op: Op, request_id: Option<RequestId>) -> Result<Outcome> {
        self.write_at(op, request_id, now_ms()).await
    }

    /// [`Self::write`] of a command whose time (the `now` its apply sees)
    /// is `time_ms`, a moment ago on this node's clock: what a value made
    /// from the outcome before it is known records as its issue time.
    pub async fn write_at(
        &self,
        op: Op,
        request_id: Option<RequestId>,
        time_ms: u64,
    ) -> Result<Outcome> {
        let request_id = request_id.or_else(|| op.needs_request_id().then(random_request_id));
        let cmd = Command {
            request_id,
            time_ms,
            op,
        };
        let started = Instant::now();
        let deadline = started + self.config.write_timeout();
        let mut backoff = Duration::from_millis(20);
        loop {
            match self.proposer.submit(cmd.clone()).await {
                Attempt::Done(result) => {
                    self.metrics
                        .proposal_duration
                        .observe(started.elapsed().as_secs_f64());
                    return result.map_err(NodeError::Apply);
                }
                Attempt::Fail(e) => return Err(e),
                Attempt::Retry(e) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(e);
                    }
                    tokio::time::sleep(backoff.min(remaining)).await;
                    backoff = (backoff * 2).min(Duration::from_millis(400));
                }
            }
        }
    }

    /// Proposes commands forwarded by a follower as one entry; only the leader accepts them.
    pub async fn write_as_leader(&self, commands: Vec<Command>) -> ForwardedWriteReply {
        match self.leader() {
            Some((leader, _)) if leader == self.id => {}
            other => {
                return Err(ForwardError::NotLeader {
                    leader: other.map(|(id, _)| id),
                })
            }
        }
        match proposer::propose(&self.raft, commands, self.config.write_timeout()).await {
            Ok(results) => Ok(results),
            Err(Attempt::Retry(NodeError::NoLeader)) => {
                Err(ForwardError::NotLeader { leader: None })
            }
            Err(Attempt::Retry(e) | Attempt::Fail(e)) => Err(ForwardError::Failed {
                code: e.code(),
                message: e.to_string(),
            }),
            Err(Attempt::Done(_)) => Err(ForwardError::Failed {
                code: ErrorCode::Internal,
                message: "unexpected proposal outcome".into(),
            }),
        }
    }

    /// Waits until a read on this node reflects every write acknowledged
    /// before the call, when `consistency` asks for it.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<()> {
        if consistency == Consistency::Local {
            return Ok(());
        }
        let deadline = Instant::now() + self.config.write_timeout();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(NodeError::Timeout);
            }
            match tokio::time::timeout(remaining, self.reads.next_index()).await {
                Ok(Some(index)) => {
                    return match self
                        .raft
                        .wait(Some(remaining))
                        .applied_index_at_least(index, "linearizable read")
                        .await
                    {
                        Ok(_) => Ok(()),
                        Err(_) => Err(NodeError::Timeout),
                    };
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(50).min(remaining)).await,
                Err(_) => return Err(NodeError::Timeout),
            }
        }
    }

    /// Confirms leadership with a quorum and returns the index a reader must
    /// have applied.
    pub async fn read_index_as_leader(&self) -> ReadIndexReply {
        crate::raft::read_index::leader_read_index(&self.raft).await
    }

    /// The committed log index, from openraft's state.
    pub async fn committed_index(&self) -> Option<u64> {
        self.raft
            .with_raft_state(|s| s.committed.map(|l| l.index))
            .await
            .ok()
            .flatten()
    }

    /// Builds a snapshot of this node's state now (writes go on meanwhile)
    /// and answers what it covers once it is there. (Not the status: its
    /// digest reads the whole state again.)
    pub async fn snapshot_now(&self) -> Result<SnapshotBuilt> {
        self.snapshot_covering_now(self.config.write_timeout())
            .await?;
        let m = self.raft_metrics();
        Ok(SnapshotBuilt {
            node_id: self.id,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
        })
    }

    /// Builds a snapshot of this node's state covering at least what is
    /// applied now (writes go on meanwhile), waiting up to `timeout` (a
    /// large state takes longer than a write). openraft drops a request made
    /// while a build is under way, and that build may cover less: so the
    /// request is repeated every few seconds until a snapshot covers enough.
    pub async fn snapshot_covering_now(&self, timeout: Duration) -> Result<()> {
        const ASK_AGAIN: Duration = Duration::from_secs(2);
        let applied = self.raft_metrics().last_applied.map(|l| l.index);
        let deadline = Instant::now() + timeout;
        loop {
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| NodeError::Internal(format!("triggering a snapshot: {e}")))?;
            let wait = ASK_AGAIN.min(deadline.saturating_duration_since(Instant::now()));
            let built = self
                .raft
                .wait(Some(wait))
                .metrics(
                    |m| m.snapshot.map(|l| l.index) >= applied,
                    "a snapshot of the applied state",
                )
                .await;
            match built {
                Ok(_) => return Ok(()),
                Err(openraft::metrics::WaitError::Timeout(..)) if Instant::now() < deadline => {}
                Err(e) => {
                    return Err(NodeError::Storage(format!(
                        "building a snapshot within {} s: {e}",
                        timeout.as_secs()
                    )))
                }
            }
        }
    }

    /// This node's view of the cluster.
    pub async fn status(&self) -> Result<ClusterStatus> {
        // The digest reads the whole state: on a thread of its own at a
        // lower priority, neither on a request worker nor in the way of
        // writes.
        let state = self.state.clone();
        let digest = crate::raft::background::run("baa-digest", move || state.digest())
            .await
            .map_err(|e| NodeError::Internal(format!("taking the state's digest: {e}")))??;
        let m = self.raft_metrics();
        // Under a steady write load the digest may not settle: the applied
        // index then comes from Raft and the digest stays empty.
        let (applied, digest) =
            digest.unwrap_or_else(|| (m.last_applied.map(|l| l.index), String::new()));
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let nodes: BTreeMap<NodeId, BaaNode> =
            membership.nodes().map(|(id, n)| (*id, n.clone())).collect();
        Ok(ClusterStatus {
            node_id: self.id,
            state: format!("{:?}", m.state),
            initialized: !nodes.is_empty(),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            applied_index: applied,
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            digest,
            voters,
            learners,
            nodes,
        })
    }

    /// Every member's own status (this node's too), asked over the cluster
    /// port; an unreachable member gets the reason instead.
    pub async fn member_statuses(
        &self,
    ) -> Result<BTreeMap<NodeId, std::result::Result<ClusterStatus, String>>> {
        let own = self.status().await?;
        let mut out = BTreeMap::new();
        for (id, node) in &own.nodes {
            if *id == self.id {
                continue;
            }
            let view: std::result::Result<ClusterStatus, String> = self
                .cluster
                .call(
                    &node.cluster_addr,
                    "/cluster/v1/status",
                    &(),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| e.to_string());
            out.insert(*id, view);
        }
        out.insert(self.id, Ok(own));
        Ok(out)
    }

    /// Whether this node can serve: a member, a known leader, applied up to committed.
    pub async fn ready(&self) -> bool {
        let m = self.raft_metrics();
        let member = m
            .membership_config
            .membership()
            .get_node(&self.id)
            .is_some();
        let applied = m.last_applied.map(|l| l.index);
        member && m.current_leader.is_some() && self.committed_index().await <= applied
    }

    /// Initialises the Raft group of this node and its configured peers (see
    /// `sso::keys::initialize` for the agency around it).
    pub async fn initialize(&self) -> Result<()> {
        let mut members = BTreeMap::new();
        members.insert(self.id, self.config.advertise.clone());
        for p in &self.config.peers {
            members.insert(
                p.id,
                BaaNode {
                    public_addr: p.public_addr.clone(),
                    cluster_addr: p.cluster_addr.clone(),
                },
            );
        }
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                Err(NodeError::AlreadyInitialized)
            }
            Err(RaftError::APIError(e)) => Err(NodeError::Membership(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(NodeError::Internal(e.to_string())),
        }
    }

    fn require_leader(&self) -> Result<()> {
        match self.leader() {
            Some((leader, _)) if leader == self.id => Ok(()),
            Some((leader, node)) => Err(NodeError::NotLeader {
                leader: Some(leader),
                leader_addr: node.map(|n| n.public_addr),
            }),
            None => Err(NodeError::NoLeader),
        }
    }

    /// Changes the membership, on this node if it leads, else forwarded to
    /// the leader over the cluster port: an administrator may ask any node.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<ClusterStatus> {
        match self.leader() {
            Some((leader, _)) if leader == self.id => match change {
                MembershipChange::Join(req) => self.join(req).await,
                MembershipChange::Leave(id) => self.leave(id).await,
            },
            Some((_, Some(node))) => {
                let reply: MembershipReply = self
                    .cluster
                    .call(
                        &node.cluster_addr,
                        "/cluster/v1/membership",
                        &change,
                        MEMBERSHIP_TIMEOUT + Duration::from_secs(10),
                    )
                    .await
                    .map_err(|e| NodeError::Internal(format!("forwarding to the leader: {e}")))?;
                reply.map_err(|e| match e {
                    ForwardError::NotLeader { .. } => NodeError::NoLeader,
                    ForwardError::Failed { code, message } => match code {
                        ErrorCode::MembershipRejected => NodeError::Membership(message),
                        ErrorCode::Timeout => NodeError::Timeout,
                        ErrorCode::NoLeader => NodeError::NoLeader,
                        _ => NodeError::Internal(format!("{code}: {message}")),
                    },
                })
            }
            _ => Err(NodeError::NoLeader),
        }
    }

    /// Applies a membership change forwarded by another node; only the
    /// leader accepts it.
    pub async fn membership_as_leader(&self, change: MembershipChange) -> MembershipReply {
        let result = match change {
            MembershipChange::Join(req) => self.join(req).await,
            MembershipChange::Leave(id) => self.leave(id).await,
        };
        result.map_err(|e| match e {
            NodeError::NotLeader { leader, .. } => ForwardError::NotLeader { leader },
            e => ForwardError::Failed {
                code: e.code(),
                message: e.to_string(),
            },
        })
    }

    /// Adds a node as learner (waiting until it has caught up) and, if asked,
    /// promotes it to voter. Must run on the leader.
    pub async fn join(&self, req: JoinRequest) -> Result<ClusterStatus> {
        self.require_leader()?;
        let node = BaaNode {
            public_addr: req.public_addr,
            cluster_addr: req.cluster_addr,
        };
        self.membership(self.raft.add_learner(req.id, node, true))
            .await?;
        if req.voter {
            let change = ChangeMembers::AddVoterIds(BTreeSet::from([req.id]));
            self.membership(self.raft.change_membership(change, false))
                .await?;
        }
        self.status().await
    }

    /// Removes a node from the membership. Must run on the leader.
    pub async fn leave(&self, id: NodeId) -> Result<ClusterStatus> {
        self.require_leader()?;
        let m = self.raft_metrics();
        let membership = m.membership_config.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else if membership.learner_ids().any(|v| v == id) {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        } else {
            return Err(NodeError::Membership(format!("node {id} is not a member")));
        };
        self.membership(self.raft.change_membership(change, false))
            .await?;
        self.status().await
    }

    async fn membership<T>(
        &self,
        fut: impl std::future::Future<
            Output = std::result::Result<T, RaftError<NodeId, ClientWriteError<NodeId, BaaNode>>>,
        >,
    ) -> Result<T> {
        match tokio::time::timeout(MEMBERSHIP_TIMEOUT, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(NodeError::NotLeader {
                    leader: f.leader_id,
                    leader_addr: f.leader_node.map(|n| n.public_addr),
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(NodeError::Membership(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(e))) => Err(NodeError::Internal(e.to_string())),
            Err(_) => Err(NodeError::Timeout),
        }
    }
}
