//! Raft's gauges: follows openraft's metrics channel and mirrors term,
//! leader, log and apply indexes, elections and replication lag (in
//! entries and in seconds) into the node's Prometheus metrics.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
        let mut appended = Appended::default();
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
                me.raft_has_leader
                    .set(i64::from(m.current_leader.is_some()));
                let last_log = m.last_log_index.unwrap_or(0);
                appended.note(last_log);
                me.raft_last_log_index.set(last_log as i64);
                me.raft_applied_index
                    .set(m.last_applied.map(|l| l.index).unwrap_or(0) as i64);
                me.raft_replication_lag.reset();
                me.raft_replication_lag_seconds.reset();
                if let Some(rep) = &m.replication {
                    for (id, matched) in rep {
                        if *id == m.id {
                            continue;
                        }
                        let matched = matched.map(|l| l.index).unwrap_or(0);
                        me.raft_replication_lag
                            .with_label_values(&[&id.to_string()])
                            .set(last_log.saturating_sub(matched) as i64);
                        me.raft_replication_lag_seconds
                            .with_label_values(&[&id.to_string()])
                            .set(appended.behind(matched).as_secs_f64());
                    }
                }
            }
            // A follower cut off while nothing is written changes no
            // metric, but its lag in seconds grows: look again each second.
            if let Ok(Err(_)) = tokio::time::timeout(LOOK_AGAIN, rx.changed()).await {
                break;
            }
            // Metrics change several times per write; sampling keeps this
            // task off the Raft thread's hot path.
            tokio::time::sleep(FOLLOW_INTERVAL).await;
        }
    });
}

/// How often the gauges are refreshed when openraft's metrics do not change.
const LOOK_AGAIN: Duration = Duration::from_secs(1);

/// How far back the leader's appends are remembered: a follower further
/// behind shows this long.
const REMEMBERED: Duration = Duration::from_secs(3600);

/// When the leader's log reached each last index seen (sampled), to tell
/// how long ago the first entry a follower lacks was appended.
#[derive(Default)]
struct Appended(VecDeque<(u64, Instant)>);

impl Appended {
    /// Notes that the log's last index is `last` now.
    fn note(&mut self, last: u64) {
        let now = Instant::now();
        if self.0.back().is_none_or(|(i, _)| *i < last) {
            self.0.push_back((last, now));
        } else if self.0.back().is_some_and(|(i, _)| *i > last) {
            // A new leader's log, or a truncated one: start again.
            self.0.clear();
            self.0.push_back((last, now));
        }
        while self
            .0
            .front()
            .is_some_and(|(_, t)| now.duration_since(*t) > REMEMBERED)
        {
            self.0.pop_front();
        }
    }

    /// How long ago the first entry after `matched` was appended (zero when
    /// there is none).
    fn behind(&self, matched: u64) -> Duration {
        match self.0.iter().find(|(i, _)| *i > matched) {
            Some((_, t)) => t.elapsed(),
            None => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A follower with every entry is not behind; one without the entries
    /// appended a while ago is behind by that while.
    #[test]
    fn lag_in_seconds_counts_from_the_first_missing_entry() {
        let mut a = Appended::default();
        a.note(10);
        std::thread::sleep(Duration::from_millis(50));
        a.note(20);
        assert_eq!(a.behind(20), Duration::ZERO);
        assert!(a.behind(15) < Duration::from_millis(50));
        assert!(a.behind(5) >= Duration::from_millis(50));
        // A shorter log (a new leader) starts the memory again.
        a.note(3);
        assert_eq!(a.behind(3), Duration::ZERO);
        assert!(a.behind(1) < Duration::from_millis(50));
    }
}
