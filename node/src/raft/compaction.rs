//! Snapshots the log of a node whose load has stopped. openraft builds a
//! snapshot after `snapshot_after_logs` entries, so after a burst of logins
//! the log behind it and a snapshot of the state at its peak (every
//! ticket's spent marker) would stay on disk until as many entries came
//! again. When anything was applied since the last snapshot and none was
//! built for `snapshot_idle_s`, the node builds one: the expired records are
//! swept by then, so the new snapshot holds the live state, and the purge
//! that follows drops the log behind it (all but `logs_to_keep` entries).
//! At most one snapshot per `snapshot_idle_s` is built this way.

use std::time::{Duration, Instant};

use super::Raft;

/// How often the log is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Watches `raft` and triggers a snapshot as the module says.
pub fn start(raft: &Raft, idle: Duration) {
    let raft = raft.clone();
    tokio::spawn(async move {
        let mut last = (None, Instant::now());
        let mut every = tokio::time::interval(LOOK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let (snapshot, applied) = {
                let m = raft.metrics();
                let m = m.borrow();
                (m.snapshot, m.last_applied)
            };
            if snapshot != last.0 {
                last = (snapshot, Instant::now());
                continue;
            }
            let behind = applied
                .map_or(0, |a| a.index)
                .saturating_sub(snapshot.map_or(0, |s| s.index));
            if behind > 0 && last.1.elapsed() >= idle {
                tracing::info!(entries = behind, "building a snapshot of a quiet log");
                // Counted as built again only once the snapshot shows up.
                last.1 = Instant::now();
                if raft.trigger().snapshot().await.is_err() {
                    return;
                }
            }
        }
    });
}
