//! Steady writers for fault tests and benchmarks. Writer `c` owns user `load-c`
//! (or any name) and sets attribute `n<i>` = `"<i>"` for i = 1, 2, …, each write
//! with its own `X-Request-Id`, retrying a failed write with the same id on the
//! next node until it is acknowledged or the writer's deadline passes.
//!
//! Because each applied write adds exactly one attribute and bumps the revision
//! by one, a user record proves both "nothing acknowledged lost" and "nothing
//! applied twice": see [`WriterReport::verify`].

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baa_proto::api::UserView;
use baa_proto::model::NodeId;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::AdminClient;

/// One writer's setup.
pub struct Writer {
    /// The user this writer owns (must exist).
    pub user: String,
    /// Nodes to send to, in rotation order; the writer moves on after an error.
    pub targets: Vec<AdminClient>,
    /// Prefix making request ids unique per run.
    pub run_id: String,
    /// Give up (leaving the current write unresolved) after this instant.
    pub deadline: Instant,
    /// Pause after a failed attempt.
    pub retry_pause: Duration,
}

/// One acknowledged write.
#[derive(Debug, Clone)]
pub struct Ack {
    /// Sequence number `i` (attribute `n<i>`).
    pub seq: u64,
    /// First attempt.
    pub sent_at: Instant,
    /// Acknowledgement.
    pub acked_at: Instant,
    /// Attempts it took.
    pub attempts: u32,
    /// The node that acknowledged it.
    pub node: NodeId,
}

/// What a writer did.
#[derive(Debug, Clone, Default)]
pub struct WriterReport {
    /// The user written.
    pub user: String,
    /// Acknowledged writes in order.
    pub acked: Vec<Ack>,
    /// Every sequence number ever sent (acknowledged or not).
    pub attempted: BTreeSet<u64>,
    /// A write sent but neither acknowledged nor given up cleanly (deadline hit).
    pub unresolved: Option<u64>,
    /// A non-retryable error that stopped the writer.
    pub fatal: Option<String>,
    /// Failed attempts that were retried.
    pub retries: u64,
}

impl WriterReport {
    /// Checks a user record against this report: every acknowledged attribute is
    /// there with its value, every attribute was sent by this writer, and the
    /// revision is `1 + attributes` (one apply per write).
    pub fn verify(&self, view: &UserView) -> Result<(), String> {
        for ack in &self.acked {
            let key = format!("n{}", ack.seq);
            if view.attributes.get(&key) != Some(&ack.seq.to_string()) {
                return Err(format!(
                    "{}: acknowledged attribute {key} missing or wrong",
                    self.user
                ));
            }
        }
        for key in view.attributes.keys() {
            let seq = key.strip_prefix('n').and_then(|s| s.parse::<u64>().ok());
            if !seq.is_some_and(|s| self.attempted.contains(&s)) {
                return Err(format!("{}: attribute {key} was never sent", self.user));
            }
        }
        let want = 1 + view.attributes.len() as u64;
        if view.revision != want {
            return Err(format!(
                "{}: revision {} but {} attributes (expected revision {want}): a write was applied twice or lost",
                self.user,
                view.revision,
                view.attributes.len()
            ));
        }
        Ok(())
    }
}

/// Stops a group of writers and counts their acknowledgements.
pub struct Load {
    stop: watch::Sender<bool>,
    acks: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<WriterReport>>,
}

impl Load {
    /// Starts the writers.
    pub fn start(writers: Vec<Writer>) -> Load {
        let (stop, _) = watch::channel(false);
        let acks = Arc::new(AtomicU64::new(0));
        let tasks = writers
            .into_iter()
            .map(|w| tokio::spawn(run(w, stop.subscribe(), acks.clone())))
            .collect();
        Load { stop, acks, tasks }
    }

    /// Acknowledged writes so far, over all writers.
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }

    /// Asks the writers to stop after their current write and collects the reports.
    pub async fn finish(self) -> Vec<WriterReport> {
        self.stop.send_replace(true);
        let mut out = Vec::new();
        for t in self.tasks {
            out.push(t.await.expect("writer task panicked"));
        }
        out
    }
}

/// The first acknowledgement of a write first sent after `t`, over all
/// reports. (A write already in flight at `t` may be acknowledged just after
/// it without telling anything about recovery.)
pub fn first_ack_after(reports: &[WriterReport], t: Instant) -> Option<Instant> {
    reports
        .iter()
        .flat_map(|r| r.acked.iter())
        .filter(|a| a.sent_at > t)
        .map(|a| a.acked_at)
        .min()
}

async fn run(w: Writer, stop: watch::Receiver<bool>, acks: Arc<AtomicU64>) -> WriterReport {
    let mut report = WriterReport {
        user: w.user.clone(),
        ..Default::default()
    };
    assert!(!w.targets.is_empty(), "writer without targets");
    let mut target = 0usize;
    let mut seq = 0u64;
    while !*stop.borrow() {
        seq += 1;
        report.attempted.insert(seq);
        let request_id = format!("{}-{}-{seq}", w.run_id, w.user);
        let (key, value) = (format!("n{seq}"), seq.to_string());
        let sent_at = Instant::now();
        let mut attempts = 0u32;
        loop {
            if Instant::now() >= w.deadline {
                report.unresolved = Some(seq);
                return report;
            }
            attempts += 1;
            let client = &w.targets[target];
            match client
                .set_attribute(&w.user, &key, &value, Some(&request_id))
                .await
            {
                Ok(view) => {
                    if view.attributes.get(&key) != Some(&value) {
                        report.fatal = Some(format!(
                            "write {request_id} acknowledged without its attribute"
                        ));
                        return report;
                    }
                    report.acked.push(Ack {
                        seq,
                        sent_at,
                        acked_at: Instant::now(),
                        attempts,
                        node: client.node(),
                    });
                    acks.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) if e.is_retryable() => {
                    report.retries += 1;
                    target = (target + 1) % w.targets.len();
                    tokio::time::sleep(w.retry_pause).await;
                }
                Err(e) => {
                    report.fatal =
                        Some(format!("write {request_id} to node {}: {e}", client.node()));
                    return report;
                }
            }
        }
    }
    report
}
