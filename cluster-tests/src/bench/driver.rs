//! The one driver of compared loads: each round runs every load in turn, a
//! short slice at a time with the order rotating, so that a slow spell of
//! the shared machine hits them alike; the figures of each round are kept,
//! and ratios are taken within a round before the median over rounds.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::{median, median_of, slicing, RunResult, Samples, Tally};

/// A measured slice of one load: settle, then measure for the slice.
pub type SliceFuture<'a> = Pin<Box<dyn Future<Output = anyhow::Result<Samples>> + 'a>>;

/// A load the driver can run a slice of: `(settle, slice) → samples`.
pub struct Load<'a> {
    /// Its name in progress lines and failure reports.
    pub name: String,
    /// Runs one slice.
    pub slice: Box<dyn Fn(Duration, Duration) -> SliceFuture<'a> + 'a>,
}

impl<'a> Load<'a> {
    /// A load named `name` running `slice`.
    pub fn new<F>(name: impl Into<String>, slice: F) -> Self
    where
        F: Fn(Duration, Duration) -> SliceFuture<'a> + 'a,
    {
        Self {
            name: name.into(),
            slice: Box::new(slice),
        }
    }
}

/// How long and how often.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Measured rounds.
    pub rounds: usize,
    /// Measured seconds per load per round.
    pub seconds: u64,
    /// Measured milliseconds per slice.
    pub slice_ms: u64,
    /// Unmeasured milliseconds at the start of every slice.
    pub settle_ms: u64,
    /// Unmeasured seconds per load before the first round.
    pub warmup: u64,
}

/// Every round of every load.
pub struct Rounds {
    /// `runs[load][round]`.
    pub runs: Vec<Vec<RunResult>>,
    /// Names, in load order.
    pub names: Vec<String>,
}

impl Rounds {
    /// The median round of load `i`.
    pub fn median(&self, i: usize) -> RunResult {
        median(self.runs[i].iter().map(RunResult::copy).collect())
    }

    /// The median over rounds of load `a`'s rate over load `b`'s, taken
    /// within each round.
    pub fn ratio(&self, a: usize, b: usize) -> f64 {
        median_of(
            self.runs[a]
                .iter()
                .zip(&self.runs[b])
                .map(|(x, y)| x.rate() / y.rate())
                .collect(),
        )
    }

    /// Successes and failures of load `i` over all rounds.
    pub fn tally(&self, i: usize) -> Tally {
        let mut t = Tally::default();
        for r in &self.runs[i] {
            t.add(r);
        }
        t
    }
}

/// Runs `loads` interleaved under `plan`; `progress` labels the progress
/// lines printed to standard error after each round.
pub async fn interleave(plan: &Plan, loads: &[Load<'_>], progress: &str) -> anyhow::Result<Rounds> {
    anyhow::ensure!(
        plan.rounds > 0 && plan.seconds > 0 && plan.slice_ms > 0,
        "rounds, seconds and slice must be at least 1"
    );
    let (slices, slice, settle) = slicing(plan.seconds, plan.slice_ms, plan.settle_ms);
    for l in loads {
        let _ = (l.slice)(Duration::from_secs(plan.warmup), Duration::ZERO).await?;
    }
    let mut runs: Vec<Vec<RunResult>> = loads.iter().map(|_| Vec::new()).collect();
    for round in 0..plan.rounds {
        let mut samples: Vec<Samples> = loads.iter().map(|_| Samples::default()).collect();
        for n in 0..slices {
            for k in 0..loads.len() {
                let i = (k + n + round) % loads.len();
                samples[i].absorb((loads[i].slice)(settle, slice).await?);
            }
        }
        let results: Vec<RunResult> = samples.into_iter().map(Samples::finish).collect();
        let line: Vec<String> = loads
            .iter()
            .zip(&results)
            .map(|(l, r)| {
                let failed = match &r.first_error {
                    Some(e) => format!(", {} failed: {e}", r.errors),
                    None => String::new(),
                };
                format!(
                    "{} {:.0}/s p50 {:.2} ms{failed}",
                    l.name,
                    r.rate(),
                    r.p50_ms
                )
            })
            .collect();
        eprintln!("  {progress}, round {}: {}", round + 1, line.join("; "));
        for (i, r) in results.into_iter().enumerate() {
            runs[i].push(r);
        }
    }
    Ok(Rounds {
        runs,
        names: loads.iter().map(|l| l.name.clone()).collect(),
    })
}
