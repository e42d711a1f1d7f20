//! Seeded fault schedules with a history checker (issue 15): a schedule
//! ([`plan`]) of kills, pauses, partitions (both ways, one way, the leader
//! isolated), whole-cluster kills, clock offsets and membership changes,
//! generated from a seed; a concurrent
//! client load ([`workload`]) whose every operation is recorded as
//! invoked / ok / fail / unknown ([`history`]); and a checker ([`checker`])
//! run on the history and, after the cluster heals and converges, on what
//! every node shows. [`run`] puts one seed through all of it;
//! [`run_federated`] does it over two federated agencies, with a
//! cross-agency load ([`peer_load`]) beside A's own.
//!
//! The same seed replays the same schedule: the faults, their order, their
//! targets (as roles: the leader, a follower, a side of a partition) and
//! their timings. Which node holds a role, and the interleaving of the
//! load, are the run's.

pub mod checker;
pub mod history;
pub mod peer_load;
pub mod plan;
pub mod run;
pub mod workload;

pub use plan::Plan;
pub use run::{run, run_federated, Report};
