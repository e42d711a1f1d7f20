//! Benchmark: cross-agency cookie validation (issue 12) on agency A of two
//! federated agencies (3 nodes each), next to local cookie validation on
//! the same nodes, in the same invocation; and the first cross-agency
//! login's latency next to a local seamless login.
//!
//! Every client has its own keep-alive connection to node i mod 3 of A and
//! two sessions there: a local one (an A user's password sign-in) and one
//! A derived from a B session (the client's own B user, signed in at B with
//! a password, then the silent round trip A → B → A). Two loads, in
//! interleaved slices per round:
//!
//! 1. Local: `GET /auth/verify` with the A session cookie and A's reference.
//! 2. Cross-agency: `GET /auth/verify` with the derived session's cookie and
//!    B's reference — checked with B's published key, the link to B's
//!    session, and B's word on it from the cross-agency actor's cache
//!    (warm: B is asked at most once per `cache_s` per session and worker).
//!
//! Build in release and run: `ops/bench-federation` (see BENCHMARKS.md).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use baa_cluster_tests::bench::{
    client_for, closed_loop, cpu_split, csrf_pair, machine, median, median_of, node_pids,
    password_sign_in, print_resident, report_errors, slicing, unexpected, RunResult, Samples,
    Tally,
};
use baa_cluster_tests::federation::{approval, first_login, Federation, FirstLogin};
use baa_cluster_tests::sso::{query_mode_request, CSRF_COOKIE};
use baa_cluster_tests::Cluster;
use baa_proto::api::CreateUserRequest;
use clap::Parser;
use reqwest::header::{COOKIE, LOCATION};
use reqwest::StatusCode;

const LOCAL_USER: &str = "local";
const PASSWORD: &str = "bench-password-0123456789";
const SITE: &str = "bench-site";
const REDIRECT: &str = "https://bench.baa.localtest/cb";
/// Share of failed requests above which the program exits non-zero.
const MAX_ERROR_SHARE: f64 = 0.01;
/// Cross-agency rate / local rate the issue asks for.
const TARGET: f64 = 0.8;

#[derive(Parser, Debug)]
#[command(
    about = "baa federation: cross-agency cookie validation vs local, first cross-agency login vs local seamless login"
)]
struct Args {
    /// Concurrent clients per level.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    levels: Vec<usize>,
    /// Measured seconds per load per round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Warm-up seconds per load at the start of each level.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Length of one measured slice in milliseconds.
    #[arg(long, default_value_t = 500)]
    slice_ms: u64,
    /// Unmeasured milliseconds at the start of every slice.
    #[arg(long, default_value_t = 100)]
    settle_ms: u64,
    /// Measured rounds per level; the median round of each load is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// One simulated browser: its connection, its node of A, its cookies.
struct Client {
    http: reqwest::Client,
    base: String,
    /// `Cookie` value of its local session at A.
    local: String,
    /// `Cookie` value of its session derived from B's.
    derived: String,
    /// The name A knows its B user by.
    linked: String,
}

/// The authorization request of the bench site (query response mode).
fn authorize_query() -> String {
    query_mode_request(SITE, REDIRECT).0
}

/// A local seamless login at A: the site's authorization request with a
/// session and trust → its ticket.
async fn seamless_login(c: &Client) -> Result<(), String> {
    let resp = c
        .http
        .get(format!("{}/sso/authorize?{}", c.base, authorize_query()))
        .header(COOKIE, &c.local)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let to = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !to.contains("code=") {
        return Err(unexpected("a seamless login", resp).await);
    }
    Ok(())
}

/// The two measured loads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    Local,
    Cross,
}

impl Load {
    const ALL: [Load; 2] = [Load::Local, Load::Cross];
    fn name(self) -> &'static str {
        match self {
            Load::Local => "local validations",
            Load::Cross => "cross-agency validations",
        }
    }
}

impl Client {
    async fn once(&self, load: Load) -> Result<(), String> {
        let (cookies, user) = match load {
            Load::Local => (&self.local, LOCAL_USER),
            Load::Cross => (&self.derived, self.linked.as_str()),
        };
        let resp = self
            .http
            .get(format!("{}/auth/verify", self.base))
            .header(COOKIE, cookies.as_str())
            .send()
            .await
            .map_err(|e| format!("GET /auth/verify: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(unexpected("GET /auth/verify", resp).await);
        }
        let got = resp
            .headers()
            .get("x-baa-user")
            .and_then(|v| v.to_str().ok());
        if got != Some(user) {
            return Err(format!("X-Baa-User {got:?}, not {user}"));
        }
        let _ = resp.bytes().await;
        Ok(())
    }
}

/// Users, site and trust for the run: the local user and the bench site at
/// A, `n` users at B.
async fn setup(fed: &Federation, n: usize) -> anyhow::Result<()> {
    let user = |name: String| CreateUserRequest {
        username: name,
        password: Some(PASSWORD.into()),
        ..Default::default()
    };
    let a = fed.a.admin(1);
    a.create_user(&user(LOCAL_USER.into()), None).await?;
    let site = serde_json::json!({
        "client_id": SITE,
        "redirect_uris": [REDIRECT],
        "allowed_scopes": ["openid"],
    });
    a.create_site(&site)
        .await
        .context("registering the bench site")?;
    let b = fed.b.admin(1);
    for i in 0..n {
        b.create_user(&user(format!("b{i}")), None).await?;
    }
    Ok(())
}

/// Sets up client `i`: its sessions at A (local, approved for the site
/// once) and at B, then its first cross-agency login (timed).
async fn new_client(fed: &Federation, i: usize) -> anyhow::Result<(Client, FirstLogin)> {
    let http = client_for(&fed.ca_bundle())?;
    let a_nodes = fed.a.ids();
    let base = fed.a.public_url(a_nodes[i % a_nodes.len()]);
    let b_base = fed.b.public_url(1);
    let csrf = csrf_pair(&http, &base).await?;
    let local = password_sign_in(&http, &base, &csrf, (LOCAL_USER, PASSWORD))
        .await
        .map_err(|e| anyhow!(e))?;
    let b_csrf = csrf_pair(&http, &b_base).await?;
    let b_user = format!("b{i}");
    let b_cookies = password_sign_in(&http, &b_base, &b_csrf, (&b_user, PASSWORD))
        .await
        .map_err(|e| anyhow!(e))?;
    let (derived, first) =
        first_login(&http, &base, &b_base, &b_cookies, &csrf, &authorize_query()).await?;
    let c = Client {
        http,
        base,
        local: format!("{CSRF_COOKIE}={csrf}; {local}"),
        derived,
        linked: format!("{b_user}.login-b"),
    };
    if i == 0 {
        // The local user approves the site once, for the seamless logins.
        approve_once(&c, &csrf).await?;
    }
    for load in Load::ALL {
        c.once(load)
            .await
            .map_err(|e| anyhow!("first {}: {e}", load.name()))?;
    }
    Ok((c, first))
}

/// The local user's approval of the bench site.
async fn approve_once(c: &Client, csrf: &str) -> anyhow::Result<()> {
    let query = authorize_query();
    let resp = c
        .http
        .post(format!("{}/sso/consent", c.base))
        .header(COOKIE, &c.local)
        .form(&approval(&query, csrf)?)
        .send()
        .await?;
    if resp.status() != StatusCode::SEE_OTHER {
        bail!(unexpected("approving the site", resp).await);
    }
    Ok(())
}

/// p50 and p99 of `d`, in milliseconds.
fn percentiles(mut d: Vec<Duration>) -> (f64, f64) {
    d.sort();
    let pct = |p: f64| {
        d.get(((d.len() as f64 * p) as usize).min(d.len().saturating_sub(1)))
            .map_or(f64::NAN, |x| x.as_secs_f64() * 1000.0)
    };
    (pct(0.5), pct(0.99))
}

/// One row: the median run of each load at one level, and the ratios.
struct Row {
    clients: usize,
    local: RunResult,
    cross: RunResult,
    ratios: Vec<f64>,
}

/// Runs `load` closed-loop on every client: `settle` unmeasured, then
/// `secs` measured; `pids` are the node processes whose CPU is recorded.
async fn measure(
    clients: &[Arc<Client>],
    load: Load,
    pids: &[u32],
    settle: Duration,
    secs: Duration,
) -> Samples {
    closed_loop(
        clients,
        move |c: Arc<Client>, _| async move { c.once(load).await },
        pids,
        settle,
        secs,
    )
    .await
}

async fn bench(
    a: &Cluster,
    args: &Args,
    clients: &[Arc<Client>],
    tallies: &mut Vec<(String, Tally)>,
) -> Vec<Row> {
    let pids = node_pids(a);
    let warmup = Duration::from_secs(args.warmup);
    let (slices, slice, settle) = slicing(args.seconds, args.slice_ms, args.settle_ms);
    let mut rows = Vec::new();
    for &n in &args.levels {
        for load in Load::ALL {
            let _ = measure(&clients[..n], load, &pids, warmup, Duration::ZERO).await;
        }
        let mut runs: [Vec<RunResult>; 2] = Default::default();
        let mut ratios = Vec::new();
        let mut level_tallies = [Tally::default(); 2];
        for round in 0..args.rounds {
            let mut samples: [Samples; 2] = Default::default();
            for s in 0..slices {
                for k in 0..2 {
                    let i = (k + s + round) % 2;
                    let part = measure(&clients[..n], Load::ALL[i], &pids, settle, slice).await;
                    samples[i].absorb(part);
                }
            }
            let mut line = Vec::new();
            for (i, s) in samples.into_iter().enumerate() {
                let r = s.finish();
                let name = Load::ALL[i].name();
                line.push(format!(
                    "{:.0} {name}/s ({} failed, {})",
                    r.rate(),
                    r.errors,
                    cpu_split(&r)
                ));
                report_errors(name, &r);
                level_tallies[i].add(&r);
                runs[i].push(r);
            }
            let rate = |i: usize| runs[i].last().map_or(f64::NAN, RunResult::rate);
            ratios.push(rate(1) / rate(0));
            eprintln!("  {n} clients, round {}: {}", round + 1, line.join("; "));
        }
        for (i, load) in Load::ALL.iter().enumerate() {
            tallies.push((format!("{}, {n} clients", load.name()), level_tallies[i]));
        }
        print_resident(a, &format!("agency A, {n} clients"));
        let [l, c] = runs;
        rows.push(Row {
            clients: n,
            local: median(l),
            cross: median(c),
            ratios,
        });
    }
    rows
}

fn report(args: &Args, rows: &[Row], first: &[FirstLogin], seamless: &[Duration]) {
    println!();
    println!(
        "Cookie validation at agency A (GET /auth/verify): a derived session with B's reference vs a local session; median of {} rounds per level, {}s per load in interleaved {} ms slices (+{} ms settling), after {}s warm-up",
        args.rounds, args.seconds, args.slice_ms, args.settle_ms, args.warmup
    );
    println!(
        "{:>7} | {:>9} {:>6} {:>6} {:>6} | {:>9} {:>6} {:>6} {:>6} | {:>6}",
        "clients", "local/s", "p50", "p99", "CPU ms", "cross/s", "p50", "p99", "CPU ms", "ratio"
    );
    for r in rows {
        let cells = |x: &RunResult| {
            format!(
                "{:>9.0} {:>6.2} {:>6.2} {:>6.3}",
                x.rate(),
                x.p50_ms,
                x.p99_ms,
                x.cpu_ms_per_op()
            )
        };
        println!(
            "{:>7} | {} | {} | {:>6.2}",
            r.clients,
            cells(&r.local),
            cells(&r.cross),
            median_of(r.ratios.clone())
        );
    }
    println!(
        "p50/p99 in ms; CPU ms: CPU time of A's three nodes and the load generator per request"
    );
    println!("ratio: cross-agency/local, median over the rounds of the ratio within each round; target >= {TARGET}");
    let (s50, s99) = percentiles(first.iter().map(|f| f.session).collect());
    let (t50, t99) = percentiles(first.iter().map(|f| f.ticket).collect());
    let (l50, l99) = percentiles(seamless.to_vec());
    println!();
    println!("Logins, one at a time ({} each):", first.len());
    println!("  first cross-agency login, until A has a session (A → B → A callback): p50 {s50:.2} ms, p99 {s99:.2} ms");
    println!("  first cross-agency login, until the site has its ticket (+ A's trust page and its approval): p50 {t50:.2} ms, p99 {t99:.2} ms");
    println!("  local seamless login (authorize with a session and trust → ticket): p50 {l50:.2} ms, p99 {l99:.2} ms");
    println!();
    println!("Markdown:");
    println!();
    println!("| clients | local validations/s | p50 ms | p99 ms | CPU ms | cross-agency validations/s | p50 ms | p99 ms | CPU ms | cross/local |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let cells = |x: &RunResult| {
            format!(
                "{:.0} | {:.2} | {:.2} | {:.3}",
                x.rate(),
                x.p50_ms,
                x.p99_ms,
                x.cpu_ms_per_op()
            )
        };
        println!(
            "| {} | {} | {} | {:.2} |",
            r.clients,
            cells(&r.local),
            cells(&r.cross),
            median_of(r.ratios.clone())
        );
    }
    println!();
    println!("| login | p50 ms | p99 ms |");
    println!("|---|---:|---:|");
    println!("| first cross-agency, until A has a session | {s50:.2} | {s99:.2} |");
    println!("| first cross-agency, until the site's ticket (trust page approved) | {t50:.2} | {t99:.2} |");
    println!("| local seamless (session and trust → ticket) | {l50:.2} | {l99:.2} |");
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.rounds == 0 || args.seconds == 0 || args.slice_ms == 0 {
        bail!("--rounds, --seconds and --slice-ms must be at least 1");
    }
    if args.levels.is_empty() || args.levels.contains(&0) {
        bail!("levels must be at least 1 client");
    }
    println!(
        "baa federation benchmark: cross-agency cookie validation and the first cross-agency login"
    );
    println!("machine: {}", machine());
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!("agencies: A and B, 3 baa nodes each on loopback, TLS on every hop, peered both ways; client i on node i mod 3 of A");
    eprintln!("starting two federated agencies");
    let fed = Federation::start(|o| o.log_level = "warn".into()).await;
    let max = args.levels.iter().copied().max().unwrap_or(1);
    setup(&fed, max).await?;
    let mut clients = Vec::new();
    let mut first = Vec::new();
    for i in 0..max {
        let (c, f) = new_client(&fed, i)
            .await
            .with_context(|| format!("setting up client {i}"))?;
        clients.push(Arc::new(c));
        first.push(f);
    }
    let mut seamless = Vec::new();
    for c in &clients {
        let t = Instant::now();
        seamless_login(c)
            .await
            .map_err(|e| anyhow!("a seamless login: {e}"))?;
        seamless.push(t.elapsed());
    }
    eprintln!("set up: {max} clients, each with a local session and one derived from B");
    let mut tallies = Vec::new();
    let rows = bench(&fed.a, args, &clients, &mut tallies).await;
    fed.a.assert_no_panics();
    fed.b.assert_no_panics();
    drop(clients);
    report(args, &rows, &first, &seamless);
    let mut ok = true;
    for (what, t) in &tallies {
        if t.error_share() > MAX_ERROR_SHARE {
            eprintln!(
                "FAILED: {what}: {} of {} requests failed",
                t.errors,
                t.ops + t.errors
            );
            ok = false;
        }
    }
    Ok(ok)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench-federation: {e:#}");
            ExitCode::FAILURE
        }
    }
}
