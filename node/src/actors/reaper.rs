//! The reaper: on the leader, periodically proposes sweeps of state that
//! has expired (remembered request results, sessions, tickets, tokens,
//! throttle records, retired keys) — each one bounded, a few in a row when
//! there is much to do — makes a signing key and a federation key if none
//! exists, and wraps under the current key-encryption key the secrets
//! stored in the clear or under a previous one.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context};
use baa_proto::command::{Op, Outcome};

use crate::agency::Agency;
use crate::clock::now_ms;

/// How long a request id's first result is remembered for retries. Long
/// enough to cover every retry a client or a forwarding node makes within a
/// write deadline many times over; short enough that the remembered results
/// stay a small part of the state (and of every snapshot) under load.
pub const REQUEST_RESULT_RETENTION: Duration = Duration::from_secs(120);

/// How long a result remembered under a request id a node made for its own
/// retries is kept: well past any write deadline.
pub const AUTO_REQUEST_RESULT_RETENTION: Duration = Duration::from_secs(60);

/// How often the reaper runs.
pub const REAPER_INTERVAL: Duration = Duration::from_secs(15);

/// Keys one sweep looks at: bounds the work of one apply.
pub const SWEEP_BUDGET: u32 = 2_000;

/// Sweeps one round proposes at most (until the cursor goes round).
const SWEEPS_PER_ROUND: usize = 50;

/// Proposes purge commands while this node leads.
pub struct Reaper {
    agency: Arc<Agency>,
    every: Duration,
}

impl Reaper {
    /// A reaper that runs every `every`.
    pub fn new(agency: Arc<Agency>, every: Duration) -> Self {
        Self { agency, every }
    }
}

impl Actor for Reaper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.every, |act, _| {
            let agency = act.agency.clone();
            // Every node counts its own state's sessions, off the workers.
            let counted = agency.clone();
            actix::spawn(async move {
                let state = counted.state.clone();
                if let Ok(Ok(n)) =
                    crate::raft::background::run("baa-count", move || state.session_count()).await
                {
                    counted.metrics.sessions.set(n as i64);
                }
            });
            if agency.leader().map(|(id, _)| id) != Some(agency.id) {
                return;
            }
            actix::spawn(async move {
                for _ in 0..SWEEPS_PER_ROUND {
                    let now = now_ms();
                    let op = Op::Sweep {
                        request_cutoff_ms: now
                            .saturating_sub(REQUEST_RESULT_RETENTION.as_millis() as u64),
                        auto_request_cutoff_ms: now
                            .saturating_sub(AUTO_REQUEST_RESULT_RETENTION.as_millis() as u64),
                        budget: SWEEP_BUDGET,
                    };
                    match agency.write(op, None).await {
                        Ok(Outcome::Swept { wrapped: false, .. }) => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "reaper: sweep failed");
                            break;
                        }
                    }
                }
                crate::key_rotation::maintain(&agency).await;
            });
        });
    }
}
