//! Read indexes for linearizable reads, fetched in rounds. A reader needs an
//! index from a leader a quorum confirmed *after* it asked (the end of the
//! leader's log: see [`leader_read_index`]); one round
//! answers every reader that was waiting when the round began, and a node
//! runs one round at a time. So a burst of reads that miss locally (a flood of
//! made-up tokens, say) costs one quorum check per round trip, not one per
//! request, while a single reader still waits for exactly one.

use std::sync::Arc;
use std::time::Duration;

use baa_proto::api::{ForwardError, ReadIndexReply};
use baa_proto::model::NodeId;
use baa_proto::ErrorCode;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::sync::{mpsc, oneshot};

use super::network::ClusterClient;
use super::Raft;
use crate::metrics::Metrics;

/// The cluster-port path a follower asks the leader for a read index on.
pub const READ_INDEX_PATH: &str = "/cluster/v1/read-index";

/// What a round yields: the index to have applied (`Some(None)`: the log is
/// empty), or `None` when no leader could confirm one.
pub type RoundResult = Option<Option<u64>>;

/// Handle to the node's read-index task.
#[derive(Clone)]
pub struct ReadRounds {
    tx: mpsc::UnboundedSender<oneshot::Sender<RoundResult>>,
}

struct Context {
    id: NodeId,
    raft: Raft,
    cluster: Arc<ClusterClient>,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl ReadRounds {
    /// Starts the read-index task of node `id`; `timeout` bounds one round.
    pub fn start(
        id: NodeId,
        raft: Raft,
        cluster: Arc<ClusterClient>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(
            Context {
                id,
                raft,
                cluster,
                timeout,
                metrics,
            },
            rx,
        ));
        Self { tx }
    }

    /// The log index this node must have applied before a read started now
    /// is linearizable (see [`RoundResult`]).
    pub async fn next_index(&self) -> RoundResult {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).ok()?;
        rx.await.ok().flatten()
    }
}

async fn run(ctx: Context, mut rx: mpsc::UnboundedReceiver<oneshot::Sender<RoundResult>>) {
    while let Some(first) = rx.recv().await {
        // Everyone taken here asked before the round starts, so the index it
        // yields is valid for all of them; later askers wait for the next.
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        ctx.metrics.read_index_rounds.inc();
        ctx.metrics.read_index_readers.inc_by(waiting.len() as u64);
        let index = fetch(&ctx).await;
        for reader in waiting {
            let _ = reader.send(index);
        }
    }
}

/// One read index: from this node if it leads, else from the leader.
async fn fetch(ctx: &Context) -> RoundResult {
    match super::known_leader(&ctx.raft) {
        Some((leader, _)) if leader == ctx.id => leader_read_index(&ctx.raft).await.ok(),
        Some((_, Some(node))) => {
            let reply: Result<ReadIndexReply, _> = ctx
                .cluster
                .call(&node.cluster_addr, READ_INDEX_PATH, &(), ctx.timeout)
                .await;
            reply.ok().and_then(|r| r.ok())
        }
        _ => None,
    }
}

/// On the leader: confirms leadership with a quorum and returns the index a
/// reader must have applied: the end of the leader's log as it stands once
/// leadership is confirmed, not openraft's read log id alone. That one is
/// the larger of the commit index the leader knows and the first entry of
/// its term; a leader restarted after `kill -9` comes back as leader of its
/// old term (openraft restores it so) knowing as committed only what its
/// state machine had applied and flushed, while later entries of its log
/// were committed, and acknowledged, before the crash. Every acknowledged
/// entry is in the confirmed leader's log, so waiting for its end is safe;
/// it costs a reader at most the replication of the entries in flight.
pub async fn leader_read_index(raft: &Raft) -> ReadIndexReply {
    match raft.get_read_log_id().await {
        Ok((read, applied)) => {
            let last = raft.metrics().borrow().last_log_index;
            Ok(read.max(applied).map(|l| l.index).max(last))
        }
        Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
            Err(ForwardError::NotLeader {
                leader: f.leader_id,
            })
        }
        Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
            Err(ForwardError::Failed {
                code: ErrorCode::NoLeader,
                message: e.to_string(),
            })
        }
        Err(RaftError::Fatal(e)) => Err(ForwardError::Failed {
            code: ErrorCode::Internal,
            message: e.to_string(),
        }),
    }
}
