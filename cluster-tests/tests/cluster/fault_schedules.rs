//! Issue 15, acceptance 1: seeded fault schedules with a history checker
//! (`baa_cluster_tests::schedule`). Runs `BAA_FAULT_SEEDS` schedules (10
//! unless set) from seed `BAA_FAULT_FIRST_SEED` (1 unless set) on
//! `BAA_FAULT_NODES` nodes (3 unless set), each with about
//! `BAA_FAULT_SECONDS` seconds of faults (12 unless set); prints every
//! schedule's figures and fails naming the seeds that broke a promise or
//! did not come back. `ops/faults` runs it with more seeds. A second test
//! runs `BAA_FED_FAULT_SEEDS` (2) schedules over two federated agencies.

use std::time::{Duration, Instant};

use baa_cluster_tests::schedule;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_fault_schedules_keep_every_promise() {
    let seeds = env_u64("BAA_FAULT_SEEDS", 10);
    let first = env_u64("BAA_FAULT_FIRST_SEED", 1);
    let nodes = env_u64("BAA_FAULT_NODES", 3);
    let budget = Duration::from_secs(env_u64("BAA_FAULT_SECONDS", 12));
    let what = format!("on {nodes} nodes");
    run_all(seeds, first, &what, |seed| {
        schedule::run(seed, nodes, budget)
    })
    .await;
}

/// The same over two federated agencies of 3 nodes each
/// (`BAA_FED_FAULT_SEEDS` schedules, 2 unless set; `ops/faults
/// --federated` runs more): faults on either agency, cross-agency
/// sign-ins and sign-outs in the load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_federated_fault_schedules_keep_every_promise() {
    let seeds = env_u64("BAA_FED_FAULT_SEEDS", 2);
    let first = env_u64("BAA_FAULT_FIRST_SEED", 1);
    let budget = Duration::from_secs(env_u64("BAA_FAULT_SECONDS", 12));
    run_all(seeds, first, "over two federated agencies", |seed| {
        schedule::run_federated(seed, budget)
    })
    .await;
}

/// Runs `seeds` schedules from `first` with `one`, prints each one's
/// figures and the totals, and fails naming the seeds that broke a promise
/// or did not complete.
async fn run_all<F, Fut>(seeds: u64, first: u64, what: &str, one: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = schedule::Report> + Send + 'static,
{
    let started = Instant::now();
    let mut failed = Vec::new();
    let (mut ops, mut unknown, mut faults, mut installs) = (0, 0, 0, 0);
    for seed in first..first + seeds {
        // A schedule whose cluster does not come back panics; the others go on.
        match tokio::spawn(one(seed)).await {
            Ok(report) => {
                println!("{report}");
                ops += report.counts.ops;
                unknown += report.counts.unknown;
                faults += report.faults.len();
                installs += report.snapshots_installed;
                if !report.violations.is_empty() {
                    failed.push(format!(
                        "seed {seed}: {} violations",
                        report.violations.len()
                    ));
                }
            }
            Err(e) => {
                let why = match e.try_into_panic() {
                    Ok(p) => p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                    Err(e) => e.to_string(),
                };
                println!("seed {seed}: the schedule did not complete: {why}");
                failed.push(format!("seed {seed}: did not complete: {why}"));
            }
        }
    }
    println!(
        "{seeds} schedules from seed {first} {what}: {ops} operations ({unknown} unknown), {faults} faults, {installs} snapshots installed, {} failed, {:.0} s",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{}\nreplay one with: ops/faults --seeds 1 --first SEED",
        failed.join("\n")
    );
}
