//! The proposer groups concurrent writes into one Raft entry. Each node has
//! one: on the leader it proposes the group directly; on a follower it
//! forwards the group to the leader in one cluster-port call. A few groups may
//! be in flight at once; while they are, new writes queue up and form the next
//! group, so under load one log append, one replication round and one fsync
//! serve many writes, and with a single client nothing waits.

use std::sync::Arc;
use std::time::Duration;

use baa_proto::api::{ForwardError, ForwardedWrite, ForwardedWriteReply};
use baa_proto::command::{Command, CommandResult, Proposal};
use baa_proto::model::{BaaNode, NodeId};
use baa_proto::ErrorCode;
use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::network::ClusterClient;
use super::Raft;
use crate::error::NodeError;

/// Most commands in one group.
const MAX_GROUP: usize = 256;
/// Most groups in flight from one node.
const MAX_IN_FLIGHT: usize = 4;
/// Most writes waiting in one node's proposer: past it a write is refused
/// at once as busy (503, `Retry-After`) instead of queueing without end.
pub const MAX_QUEUED: usize = 8_192;

/// What became of one submitted command.
#[derive(Debug)]
pub enum Attempt {
    /// Applied (or refused by the state machine, deterministically).
    Done(CommandResult),
    /// Worth retrying: no leader, leader changed, peer unreachable, deadline.
    Retry(NodeError),
    /// Not worth retrying.
    Fail(NodeError),
}

struct Pending {
    command: Command,
    reply: oneshot::Sender<Attempt>,
}

/// Handle to the node's proposer task.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::UnboundedSender<Pending>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

/// A place in the proposer's queue, given back when dropped.
struct Queued(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Clone)]
struct Context {
    id: NodeId,
    raft: Raft,
    cluster: Arc<ClusterClient>,
    /// Bounds one proposal on the leader.
    timeout: Duration,
    /// Bounds one forwarding call to the leader.
    forward_timeout: Duration,
}

impl Proposer {
    /// Starts the proposer task of node `id`. `timeout` bounds one group's
    /// proposal on the leader, `forward_timeout` one forwarding call from a
    /// follower (which also ends as soon as this node sees the leader change).
    pub fn start(
        id: NodeId,
        raft: Raft,
        cluster: Arc<ClusterClient>,
        timeout: Duration,
        forward_timeout: Duration,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(
            Context {
                id,
                raft,
                cluster,
                timeout,
                forward_timeout,
            },
            rx,
        ));
        Self {
            tx,
            queued: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        }
    }

    /// Submits one command and waits for its outcome; refuses it as busy
    /// when `MAX_QUEUED` writes are waiting already.
    pub async fn submit(&self, command: Command) -> Attempt {
        let taken = self
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _place = Queued(self.queued.clone());
        if taken >= MAX_QUEUED {
            return Attempt::Fail(NodeError::Busy);
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Pending { command, reply }).is_err() {
            return Attempt::Fail(NodeError::Internal("the proposer has stopped".into()));
        }
        rx.await.unwrap_or_else(|_| {
            Attempt::Retry(NodeError::Internal("the proposer dropped a write".into()))
        })
    }
}

async fn run(ctx: Context, mut rx: mpsc::UnboundedReceiver<Pending>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        // Waiting for a free slot is what lets the next group grow.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(p) => group.push(p),
                Err(_) => break,
            }
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            dispatch(&ctx, group).await;
            drop(slot);
        });
    }
}

async fn dispatch(ctx: &Context, group: Vec<Pending>) {
    let (commands, replies): (Vec<Command>, Vec<oneshot::Sender<Attempt>>) =
        group.into_iter().map(|p| (p.command, p.reply)).unzip();
    let leader = super::known_leader(&ctx.raft);
    let outcome = match leader {
        Some((l, _)) if l == ctx.id => propose(&ctx.raft, commands, ctx.timeout).await,
        Some((l, Some(node))) => forward(ctx, l, &node, commands).await,
        _ => Err(Attempt::Retry(NodeError::NoLeader)),
    };
    match outcome {
        Ok(results) if results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Attempt::Done(result));
            }
        }
        Ok(results) => {
            let e = NodeError::Internal(format!(
                "{} results for {} commands",
                results.len(),
                replies.len()
            ));
            for reply in replies {
                let _ = reply.send(Attempt::Fail(e.clone()));
            }
        }
        Err(attempt) => {
            for reply in replies {
                let _ = reply.send(match &attempt {
                    Attempt::Retry(e) => Attempt::Retry(e.clone()),
                    Attempt::Fail(e) => Attempt::Fail(e.clone()),
                    Attempt::Done(r) => Attempt::Done(r.clone()),
                });
            }
        }
    }
}

/// Resolves when this node's view of the leader is no longer `leader`.
async fn leader_changed(raft: &Raft, leader: NodeId) {
    let mut metrics = raft.metrics();
    loop {
        if metrics.borrow_and_update().current_leader != Some(leader) {
            return;
        }
        if metrics.changed().await.is_err() {
            // Raft has stopped: the forwarding call's own timeout ends it.
            std::future::pending::<()>().await;
        }
    }
}

/// Proposes `commands` as one entry on this node, which must be the leader.
pub async fn propose(
    raft: &Raft,
    commands: Vec<Command>,
    within: Duration,
) -> Result<Vec<CommandResult>, Attempt> {
    match tokio::time::timeout(within, raft.client_write(Proposal { commands })).await {
        Ok(Ok(resp)) => Ok(resp.data),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(Attempt::Retry(NodeError::NoLeader))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(Attempt::Fail(NodeError::Membership(e.to_string())))
        }
        Ok(Err(RaftError::Fatal(e))) => Err(Attempt::Fail(NodeError::Internal(e.to_string()))),
        Err(_) => Err(Attempt::Retry(NodeError::Timeout)),
    }
}

/// Sends `commands` to `leader` in one call. The call is abandoned (and
/// the writes retried under the same request ids) when it takes longer than
/// the forwarding timeout or when this node sees another leader (or none):
/// a paused leader must not hold writes once the others have moved on. A
/// leader that applied them before going quiet answers the retry with the
/// remembered results.
async fn forward(
    ctx: &Context,
    leader_id: NodeId,
    leader: &BaaNode,
    commands: Vec<Command>,
) -> Result<Vec<CommandResult>, Attempt> {
    let request = ForwardedWrite { commands };
    let call = ctx.cluster.call::<_, ForwardedWriteReply>(
        &leader.cluster_addr,
        "/cluster/v1/write",
        &request,
        ctx.forward_timeout,
    );
    let reply = tokio::select! {
        reply = call => reply,
        () = leader_changed(&ctx.raft, leader_id) => {
            return Err(Attempt::Retry(NodeError::NoLeader));
        }
    };
    match reply {
        Ok(Ok(results)) => Ok(results),
        Ok(Err(ForwardError::NotLeader { .. })) => Err(Attempt::Retry(NodeError::NoLeader)),
        Ok(Err(ForwardError::Failed {
            code: ErrorCode::Timeout | ErrorCode::NoLeader,
            ..
        })) => Err(Attempt::Retry(NodeError::Timeout)),
        Ok(Err(ForwardError::Failed { code, message })) => Err(Attempt::Fail(NodeError::Internal(
            format!("{code}: {message}"),
        ))),
        Err(e) => {
            tracing::debug!(error = %e, "forwarding writes to the leader failed");
            Err(Attempt::Retry(NodeError::NoLeader))
        }
    }
}
