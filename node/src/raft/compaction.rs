//! Gives back the disk a load took once it stops. openraft builds a
//! snapshot after `snapshot_after_logs` entries, so after a burst of logins
//! the log behind it and a snapshot of the state at its peak (every
//! ticket's spent marker) would stay on disk until as many entries came
//! again. When anything was applied since the last snapshot and none was
//! built for `snapshot_idle_s`, the node builds one: the expired records are
//! swept by then, so the new snapshot holds the live state, and the purge
//! that follows drops the log behind it (all but `logs_to_keep` entries).
//! At most one snapshot per `snapshot_idle_s` is built this way.
//!
//! The state's sled database keeps the size its peak took after the
//! records are swept: whenever a snapshot shows up (built or installed; its
//! size is that of the live records), the node rebuilds the database into
//! a fresh one if it wastes more than the configured space (see
//! `state_machine::StateDb`). The rebuild copies every live record (while
//! writes go on), so it waits for a snapshot rather than running on a clock.

use std::time::{Duration, Instant};

use super::state_machine::StateStorage;
use super::Raft;

/// How often the log is looked at.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Watches `raft` and triggers a snapshot, and a rebuild of `storage` when
/// it wastes more than `min_waste` bytes, as the module says.
pub fn start(raft: &Raft, idle: Duration, storage: StateStorage, min_waste: u64) {
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
                let storage = storage.clone();
                let rebuilt = super::background::run("baa-rebuild", move || {
                    storage.rebuild_if_wasteful(min_waste)
                })
                .await;
                if let Ok(Err(e)) = rebuilt {
                    tracing::warn!(error = %format!("{e:#}"), "rebuilding the state's database failed; the old one stays");
                }
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
