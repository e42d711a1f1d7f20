//! Raft's gauges: follows openraft's metrics channel and mirrors term,
//! leader, log and apply indexes, elections and replication lag into the
//! node's Prometheus metrics.

use std::sync::Arc;

use super::Raft;
use crate::metrics::{Metrics, FOLLOW_INTERVAL};

/// Follows openraft's metrics channel and mirrors it into the gauges, at
/// most once per [`FOLLOW_INTERVAL`](crate::metrics::FOLLOW_INTERVAL).
pub fn follow(metrics: &Arc<Metrics>, raft: &Raft) {
    let me = metrics.clone();
    let mut rx = raft.metrics();
    tokio::spawn(async move {
        let mut last_term = None;
        let mut last_leader = None;
        loop {
            {
                let m = rx.borrow_and_update().clone();
                // Sampled, so count every term passed since the last look.
                if let Some(t) = last_term.filter(|t| *t < m.current_term) {
                    me.elections.inc_by(m.current_term - t);
                }
                if last_leader.is_some()
                    && last_leader != Some(m.current_leader)
                    && m.current_leader.is_some()
                {
                    me.leader_changes.inc();
                }
                last_term = Some(m.current_term);
                last_leader = Some(m.current_leader);
                me.raft_term.set(m.current_term as i64);
                me.raft_leader_id.set(m.current_leader.unwrap_or(0) as i64);
                me.raft_is_leader
                    .set(i64::from(m.current_leader == Some(m.id)));
                let last_log = m.last_log_index.unwrap_or(0);
                me.raft_last_log_index.set(last_log as i64);
                me.raft_applied_index
                    .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
                me.raft_replication_lag.reset();
                if let Some(rep) = &m.replication {
                    for (id, matched) in rep {
                        if *id == m.id {
                            continue;
                        }
                        let matched = matched.map(|l| l.index).unwrap_or(0);
                        me.raft_replication_lag
                            .with_label_values(&[&id.to_string()])
                            .set(last_log.saturating_sub(matched) as i64);
                    }
                }
            }
            if rx.changed().await.is_err() {
                break;
            }
            // Metrics change several times per write; sampling keeps this
            // task off the Raft thread's hot path.
            tokio::time::sleep(FOLLOW_INTERVAL).await;
        }
    });
}
