//! The reaper: on the leader, periodically proposes the purge of state that
//! has expired (remembered request results, sessions, tickets, tokens,
//! throttle records, retired keys) and makes a signing key if none exists.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, AsyncContext, Context};
use baa_proto::command::Op;

use crate::agency::{now_ms, Agency};

/// How long a request id's first result is remembered for retries. Long
/// enough to cover every retry a client or a forwarding node makes within a
/// write deadline many times over; short enough that the remembered results
/// stay a small part of the state (and of every snapshot) under load.
pub const REQUEST_RESULT_RETENTION: Duration = Duration::from_secs(120);

/// How often the reaper runs.
pub const REAPER_INTERVAL: Duration = Duration::from_secs(15);

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
            if agency.leader().map(|(id, _)| id) != Some(agency.id) {
                return;
            }
            actix::spawn(async move {
                let before_ms =
                    now_ms().saturating_sub(REQUEST_RESULT_RETENTION.as_millis() as u64);
                if let Err(e) = agency
                    .write(Op::PurgeRequestResults { before_ms }, None)
                    .await
                {
                    tracing::warn!(error = %e, "reaper: purge proposal failed");
                }
                if let Err(e) = agency.write(Op::PurgeExpired, None).await {
                    tracing::warn!(error = %e, "reaper: expiry purge failed");
                }
                if let Err(e) = agency.ensure_signing_key().await {
                    tracing::warn!(error = %e, "reaper: could not make a signing key");
                }
            });
        });
    }
}
