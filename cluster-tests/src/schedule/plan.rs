//! The seeded generator of fault schedules: a [`Plan`] is a list of steps,
//! each one fault held for a while, then undone, then a quiet gap. Every
//! choice (which fault, which node or which side, how long) comes from
//! `StdRng::seed_from_u64(seed)`, so a seed names one schedule exactly. A
//! step that targets *the leader* or *a follower* is resolved when it runs
//! (which node leads depends on the run); the runner prints what it hit.

use std::fmt;
use std::time::Duration;

use baa_proto::model::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Raft timing of the schedule's clusters: every pause is longer than
/// [`ELECTION_TIMEOUT_MAX_MS`], so the paused node's peers elect without it.
pub const HEARTBEAT_MS: u64 = 100;
/// Lower bound of the election timeout.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 500;
/// Upper bound of the election timeout.
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 1_000;
/// The largest clock offset a schedule sets: inside the 30 s by which the
/// agency lets its nodes' clocks disagree (the spent-ticket grace, README
/// "Single sign-on").
pub const MAX_CLOCK_OFFSET_MS: i64 = 20_000;

/// A node a step acts on, chosen when the step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The current leader.
    Leader,
    /// The `pick`-th (modulo their number) current follower.
    Follower(u8),
    /// A fixed node.
    Node(NodeId),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Leader => write!(f, "the leader"),
            Target::Follower(p) => write!(f, "follower #{p}"),
            Target::Node(id) => write!(f, "node {id}"),
        }
    }
}

/// One fault, held for `hold` and then undone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `kill -9`, restart after `hold` (same data directory).
    Kill(Target),
    /// SIGSTOP, SIGCONT after `hold` (longer than the election timeout).
    Pause(Target),
    /// The cluster cut in two (both directions); `minority` is the smaller side.
    Partition {
        /// The smaller side.
        minority: Vec<NodeId>,
    },
    /// The leader cut off from every other node.
    IsolateLeader,
    /// Connections `from` opens to `to` are refused and reset; `to` still
    /// reaches `from` (and gets answers on its own connections).
    OneWay {
        /// The node whose connections are cut.
        from: Target,
        /// The node that refuses them.
        to: Target,
    },
    /// Every node killed at once (`kill -9`), all restarted after `hold`.
    KillAll,
    /// A node's wall clock set `offset_ms` ahead (behind when negative) of
    /// the others', back after `hold`. Within [`MAX_CLOCK_OFFSET_MS`].
    Clock {
        /// The node.
        target: Target,
        /// The offset.
        offset_ms: i64,
    },
    /// A fresh node joins as a voter (so a majority needs one more node),
    /// catches up by snapshot, and leaves again after `hold`.
    Join,
    /// No fault: load only.
    Quiet,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(t) => write!(f, "kill -9 {t}"),
            Fault::Pause(t) => write!(f, "pause {t}"),
            Fault::Partition { minority } => write!(f, "partition {minority:?} | rest"),
            Fault::IsolateLeader => write!(f, "isolate the leader"),
            Fault::OneWay { from, to } => write!(f, "cut {from} -> {to} one way"),
            Fault::KillAll => write!(f, "kill -9 every node"),
            Fault::Clock { target, offset_ms } => write!(f, "clock of {target} {offset_ms:+} ms"),
            Fault::Join => write!(f, "a new voter joins, then leaves"),
            Fault::Quiet => write!(f, "quiet"),
        }
    }
}

impl Fault {
    /// A short name for counting faults by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill(_) => "kill",
            Fault::Pause(_) => "pause",
            Fault::Partition { .. } => "partition",
            Fault::IsolateLeader => "isolate-leader",
            Fault::OneWay { .. } => "one-way",
            Fault::KillAll => "kill-all",
            Fault::Clock { .. } => "clock",
            Fault::Join => "join",
            Fault::Quiet => "quiet",
        }
    }
}

/// One step of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What happens.
    pub fault: Fault,
    /// How long it lasts before it is undone.
    pub hold: Duration,
    /// Quiet time after it is undone, before the next step.
    pub gap: Duration,
}

/// A whole schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The seed it came from.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: u64,
    /// Load alone before the first step.
    pub warmup: Duration,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

impl Plan {
    /// The schedule of `seed` over `nodes` nodes, with steps adding up to
    /// about `budget` (holds and gaps). Every schedule has at least one
    /// follower killed for long enough to fall behind the purged log.
    pub fn generate(seed: u64, nodes: u64, budget: Duration) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let ms = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.gen_range(lo..=hi));
        let pause_min = ELECTION_TIMEOUT_MAX_MS + 500;
        let mut steps = Vec::new();
        let mut total = Duration::ZERO;
        while total < budget {
            let fault = match rng.gen_range(0..100) {
                0..=16 => Fault::Kill(target(&mut rng)),
                17..=30 => Fault::Pause(target(&mut rng)),
                31..=44 => Fault::Partition {
                    minority: minority(&mut rng, nodes),
                },
                45..=55 => Fault::IsolateLeader,
                56..=67 => {
                    let from = target(&mut rng);
                    let to = match from {
                        Target::Leader => Target::Follower(rng.gen()),
                        _ => Target::Leader,
                    };
                    Fault::OneWay { from, to }
                }
                68..=77 => Fault::KillAll,
                78..=87 => {
                    let size = rng.gen_range(500..=MAX_CLOCK_OFFSET_MS);
                    Fault::Clock {
                        target: target(&mut rng),
                        offset_ms: if rng.gen_bool(0.5) { size } else { -size },
                    }
                }
                88..=94 => Fault::Join,
                _ => Fault::Quiet,
            };
            let hold = match fault {
                Fault::Kill(_) => ms(&mut rng, 300, 2_500),
                Fault::Pause(_) => ms(&mut rng, pause_min, pause_min + 2_000),
                Fault::KillAll => ms(&mut rng, 200, 1_200),
                Fault::Quiet => ms(&mut rng, 500, 1_500),
                Fault::Clock { .. } => ms(&mut rng, 1_000, 4_000),
                _ => ms(&mut rng, 1_000, 3_500),
            };
            let gap = ms(&mut rng, 100, 1_200);
            total += hold + gap;
            steps.push(Step { fault, hold, gap });
        }
        // A follower down long enough for the leader to snapshot and purge
        // past it: it comes back by snapshot.
        let lagging = steps.iter().any(|s| {
            matches!(s.fault, Fault::Kill(Target::Follower(_))) && s.hold.as_millis() >= 2_000
        });
        if !lagging {
            let at = rng.gen_range(0..=steps.len());
            let step = Step {
                fault: Fault::Kill(Target::Follower(rng.gen())),
                hold: ms(&mut rng, 2_000, 3_000),
                gap: ms(&mut rng, 100, 1_200),
            };
            steps.insert(at, step);
        }
        Plan {
            seed,
            nodes,
            warmup: ms(&mut rng, 800, 1_500),
            steps,
        }
    }

    /// Total planned time of the steps (holds and gaps).
    pub fn duration(&self) -> Duration {
        self.steps.iter().map(|s| s.hold + s.gap).sum()
    }
}

fn target(rng: &mut StdRng) -> Target {
    if rng.gen_bool(0.5) {
        Target::Leader
    } else {
        Target::Follower(rng.gen())
    }
}

/// A random minority of `1..=nodes`: fewer than half of the nodes.
fn minority(rng: &mut StdRng, nodes: u64) -> Vec<NodeId> {
    let size = rng.gen_range(1..=((nodes - 1) / 2).max(1));
    let mut ids: Vec<NodeId> = (1..=nodes).collect();
    let mut out = Vec::new();
    for _ in 0..size {
        let i = rng.gen_range(0..ids.len());
        out.push(ids.remove(i));
    }
    out.sort_unstable();
    out
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} ({} nodes, warm-up {} ms):",
            self.seed,
            self.nodes,
            self.warmup.as_millis()
        )?;
        for s in &self.steps {
            write!(
                f,
                " [{} for {} ms, gap {} ms]",
                s.fault,
                s.hold.as_millis(),
                s.gap.as_millis()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_names_one_schedule() {
        for seed in 0..50 {
            let a = Plan::generate(seed, 3, Duration::from_secs(12));
            let b = Plan::generate(seed, 3, Duration::from_secs(12));
            assert_eq!(a, b, "seed {seed}");
        }
        assert_ne!(
            Plan::generate(1, 3, Duration::from_secs(12)),
            Plan::generate(2, 3, Duration::from_secs(12))
        );
    }

    #[test]
    fn schedules_have_their_budget_and_a_lagging_follower() {
        for seed in 0..200 {
            let p = Plan::generate(seed, 3, Duration::from_secs(12));
            assert!(p.duration() >= Duration::from_secs(12), "{p}");
            assert!(p.duration() <= Duration::from_secs(12 + 10), "{p}");
            assert!(
                p.steps
                    .iter()
                    .any(|s| matches!(s.fault, Fault::Kill(Target::Follower(_)))
                        && s.hold >= Duration::from_secs(2)),
                "{p}"
            );
            for s in &p.steps {
                if let Fault::Pause(_) = s.fault {
                    assert!(
                        s.hold > Duration::from_millis(ELECTION_TIMEOUT_MAX_MS),
                        "{p}"
                    );
                }
                if let Fault::Clock { offset_ms, .. } = s.fault {
                    assert!(
                        offset_ms != 0 && offset_ms.abs() <= MAX_CLOCK_OFFSET_MS,
                        "{p}"
                    );
                }
            }
        }
    }

    #[test]
    fn minorities_are_minorities() {
        let mut rng = StdRng::seed_from_u64(7);
        for nodes in [3, 5] {
            for _ in 0..100 {
                let m = minority(&mut rng, nodes);
                assert!(!m.is_empty() && (m.len() as u64) * 2 < nodes, "{m:?}");
                assert!(m.iter().all(|id| (1..=nodes).contains(id)));
                assert!(m.windows(2).all(|w| w[0] < w[1]), "{m:?}");
            }
        }
    }

    #[test]
    fn every_kind_of_fault_comes_up() {
        let mut kinds = std::collections::BTreeSet::new();
        for seed in 0..100 {
            for s in Plan::generate(seed, 3, Duration::from_secs(12)).steps {
                kinds.insert(s.fault.kind());
            }
        }
        assert_eq!(kinds.len(), 9, "{kinds:?}");
    }
}
