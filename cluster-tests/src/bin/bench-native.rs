//! Benchmark: token → session translation for native apps on a 3-node baa
//! cluster, next to cookie validation and the trivial endpoint of the same
//! server, all measured in the same invocation.
//!
//! Every client is a native app signed in once (its own browser session,
//! its own access token from the loopback authorization-code flow with PKCE)
//! with its own keep-alive HTTPS connection to node i mod 3. Three loads:
//!
//! 1. Token → session translation: `GET /auth/verify` with
//!    `Authorization: Bearer <access token>` → 200 with `X-Baa-User`.
//! 2. Cookie validation: `GET /auth/verify` with the client's SSO cookie → 200.
//! 3. Reference: `GET /healthz`, the server's trivial 200.
//!
//! Per level, each round interleaves the three loads in short slices (so a
//! slow spell of the shared machine hits all three alike); the median round
//! of each load is reported with the ratios translation/trivial and
//! cookie/trivial.
//!
//! Build in release and run: `ops/bench-native` (see BENCHMARKS.md).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use baa_cluster_tests::bench::{
    client_for, closed_loop, cpu_snapshot, cpu_split, csrf_pair, machine, median, median_of,
    node_pids, password_sign_in, print_resident, report_errors, server_means, server_times,
    slicing, unexpected, RunResult, Samples, Series, Tally,
};
use baa_cluster_tests::harness::{app_table, TOOLS_APP, TOOLS_ORIGIN};
use baa_cluster_tests::sso::{pkce, CSRF_COOKIE};
use baa_cluster_tests::{Cluster, ClusterOptions};
use baa_proto::api::CreateUserRequest;
use clap::Parser;
use reqwest::header::{AUTHORIZATION, COOKIE, LOCATION};
use reqwest::StatusCode;

const USER: &str = "bench";
const PASSWORD: &str = "bench-password-0123456789";
const CLIENT_ID: &str = "bench-cli";
/// Share of failed requests above which the program exits non-zero.
const MAX_ERROR_SHARE: f64 = 0.01;
/// Translation rate / trivial rate the issue asks for.
const TARGET: f64 = 0.7;

#[derive(Parser, Debug)]
#[command(
    about = "baa native apps: token → session translation and cookie validation vs the trivial endpoint"
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
    /// Length of one measured slice in milliseconds; a round runs the loads
    /// in turn, a slice at a time, until each has had `seconds`.
    #[arg(long, default_value_t = 500)]
    slice_ms: u64,
    /// Unmeasured milliseconds at the start of every slice.
    #[arg(long, default_value_t = 100)]
    settle_ms: u64,
    /// Measured rounds per level; the median round of each load is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// The value of query parameter `name` in a `Location` header.
fn location_param(resp: &reqwest::Response, name: &str) -> anyhow::Result<String> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| anyhow!("no Location header"))?;
    let url = url::Url::parse(loc).with_context(|| format!("Location {loc:?}"))?;
    if let Some((_, e)) = url.query_pairs().find(|(k, _)| k == "error") {
        bail!("error {e} in {loc}");
    }
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| anyhow!("no {name} in {loc}"))
}

/// Signs in at `base` with a fresh CSRF pair; returns (CSRF value, SSO cookie value).
async fn sign_in(http: &reqwest::Client, base: &str) -> anyhow::Result<(String, String)> {
    let csrf = csrf_pair(http, base).await?;
    let sso = password_sign_in(http, base, &csrf, (USER, PASSWORD))
        .await
        .map_err(|e| anyhow!(e))?;
    Ok((csrf, sso))
}

/// Everything one simulated app needs: a session and a token from it.
struct App {
    http: reqwest::Client,
    base: String,
    sso: String,
    token: String,
}

/// Signs in at `base`, runs the loopback authorization-code flow with PKCE
/// for the native client (approving the trust page if it comes up), redeems
/// the code and checks both credentials once at `/auth/verify`.
async fn new_app(ca: &Path, base: &str, port: u16) -> anyhow::Result<App> {
    let http = client_for(ca)?;
    let (csrf, sso) = sign_in(&http, base).await?;
    let cookies = format!("{CSRF_COOKIE}={csrf}; {sso}");
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let (verifier, challenge) = pkce();
    let query = [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", &redirect_uri),
        ("scope", "openid profile offline_access"),
        ("state", "s"),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
        ("response_mode", "query"),
    ];
    let resp = http
        .get(format!("{base}/sso/authorize"))
        .query(&query)
        .header(COOKIE, &cookies)
        .send()
        .await?;
    let resp = match resp.status() {
        StatusCode::SEE_OTHER => resp,
        StatusCode::OK => {
            // The trust page: approve it once for the user.
            let _ = resp.bytes().await;
            let mut form: Vec<(&str, &str)> = vec![
                ("csrf", &csrf),
                ("decision", "approve"),
                ("account_name", "username"),
                ("share_name", "1"),
            ];
            form.extend(query);
            let resp = http
                .post(format!("{base}/sso/consent"))
                .header(COOKIE, &cookies)
                .form(&form)
                .send()
                .await?;
            if resp.status() != StatusCode::SEE_OTHER {
                bail!(unexpected("POST /sso/consent", resp).await);
            }
            resp
        }
        _ => bail!(unexpected("GET /sso/authorize", resp).await),
    };
    let code = location_param(&resp, "code").context("authorization")?;
    let _ = resp.bytes().await;
    let resp = http
        .post(format!("{base}/sso/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", &redirect_uri),
            ("code_verifier", &verifier),
            ("client_id", CLIENT_ID),
        ])
        .send()
        .await?;
    if resp.status() != StatusCode::OK {
        bail!(unexpected("POST /sso/token", resp).await);
    }
    let body: serde_json::Value = resp.json().await.context("token response")?;
    let token = body["access_token"]
        .as_str()
        .ok_or_else(|| anyhow!("no access_token in {body}"))?
        .to_string();
    let app = App {
        http,
        base: base.to_string(),
        sso,
        token,
    };
    for load in [Load::Translate, Load::Cookie] {
        app.once(load)
            .await
            .map_err(|e| anyhow!("first {}: {e}", load.name()))?;
    }
    Ok(app)
}

/// The three measured loads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Load {
    /// `/auth/verify` with the access token.
    Translate,
    /// `/auth/verify` with the SSO cookie.
    Cookie,
    /// `/healthz`.
    Trivial,
}

impl Load {
    const ALL: [Load; 3] = [Load::Translate, Load::Cookie, Load::Trivial];

    fn name(self) -> &'static str {
        match self {
            Load::Translate => "translations",
            Load::Cookie => "cookie validations",
            Load::Trivial => "healthz",
        }
    }
}

impl App {
    async fn once(&self, load: Load) -> Result<(), String> {
        let (path, req) = match load {
            Load::Translate => (
                "/auth/verify",
                self.http
                    .get(format!("{}/auth/verify?app={TOOLS_APP}", self.base))
                    .header(AUTHORIZATION, format!("Bearer {}", self.token)),
            ),
            Load::Cookie => (
                "/auth/verify",
                self.http
                    .get(format!("{}/auth/verify", self.base))
                    .header(COOKIE, self.sso.as_str()),
            ),
            Load::Trivial => ("/healthz", self.http.get(format!("{}/healthz", self.base))),
        };
        let resp = req.send().await.map_err(|e| format!("GET {path}: {e}"))?;
        if resp.status() != StatusCode::OK {
            return Err(unexpected(&format!("GET {path}"), resp).await);
        }
        if load != Load::Trivial {
            let user = resp
                .headers()
                .get("x-baa-user")
                .and_then(|v| v.to_str().ok());
            if user != Some(USER) {
                return Err(format!("GET {path}: X-Baa-User {user:?}"));
            }
        }
        let _ = resp.bytes().await;
        Ok(())
    }
}

/// Runs `load` closed-loop on every app: `settle` unmeasured, then `secs`
/// measured; `pids` are the node processes whose CPU time is recorded.
async fn measure(
    apps: &[Arc<App>],
    load: Load,
    pids: &[u32],
    settle: Duration,
    secs: Duration,
) -> Samples {
    closed_loop(
        apps,
        move |app: Arc<App>, _| async move { app.once(load).await },
        pids,
        settle,
        secs,
    )
    .await
}

/// Server-side series summed over the nodes: (name, metric, label filter).
const SERVER_SERIES: [Series; 3] = [
    (
        "/auth/verify",
        "baa_http_request_duration_seconds",
        "route=\"/auth/verify\"",
    ),
    (
        "/healthz",
        "baa_http_request_duration_seconds",
        "route=\"/healthz\"",
    ),
    ("raft proposals", "baa_raft_proposal_duration_seconds", ""),
];

/// Creates the bench user and registers the public native client.
async fn setup(cluster: &Cluster) -> anyhow::Result<()> {
    let admin = cluster.admin(1);
    let user = CreateUserRequest {
        username: USER.into(),
        password: Some(PASSWORD.into()),
        display_name: Some("Bench User".into()),
        email: Some("bench@bench.example".into()),
        ..Default::default()
    };
    admin
        .create_user(&user, None)
        .await
        .context("creating the bench user")?;
    let site = serde_json::json!({
        "client_id": CLIENT_ID,
        "redirect_uris": ["http://127.0.0.1/callback"],
        "allowed_scopes": ["openid", "profile", "offline_access"],
        "public": true,
    });
    admin
        .create_site(&site)
        .await
        .context("registering the native client")?;
    Ok(())
}

/// One row of the table: the median run of each load at one level.
struct Row {
    clients: usize,
    translate: RunResult,
    cookie: RunResult,
    trivial: RunResult,
    /// Per round: (translation, cookie validation) / trivial, measured side
    /// by side; the reported ratios are their medians.
    ratios: Vec<(f64, f64)>,
}

impl Row {
    fn translate_ratio(&self) -> f64 {
        median_of(self.ratios.iter().map(|r| r.0).collect())
    }
    fn cookie_ratio(&self) -> f64 {
        median_of(self.ratios.iter().map(|r| r.1).collect())
    }
}

/// The three loads per level, rounds alternating them.
async fn bench(
    cluster: &Cluster,
    args: &Args,
    apps: &[Arc<App>],
    tallies: &mut Vec<(String, Tally)>,
) -> Vec<Row> {
    let pids = node_pids(cluster);
    let warmup = Duration::from_secs(args.warmup);
    let (slices, slice, settle) = slicing(args.seconds, args.slice_ms, args.settle_ms);
    let mut rows = Vec::new();
    for &c in &args.levels {
        for load in Load::ALL {
            let _ = measure(&apps[..c], load, &pids, warmup, Duration::ZERO).await;
        }
        let mut runs: [Vec<RunResult>; 3] = Default::default();
        let mut ratios = Vec::new();
        let mut level_tallies = [Tally::default(); 3];
        let mut server: [String; 3] = Default::default();
        let mut server_totals = vec![vec![(0.0, 0.0); SERVER_SERIES.len()]; 3];
        for round in 0..args.rounds {
            // The loads take turns a slice at a time, the order rotating, so
            // that drift on a shared machine hits all three alike.
            let mut samples: [Samples; 3] = Default::default();
            for n in 0..slices {
                for k in 0..Load::ALL.len() {
                    let i = (k + n + round) % Load::ALL.len();
                    let before = server_times(cluster, &SERVER_SERIES).await;
                    let part = measure(&apps[..c], Load::ALL[i], &pids, settle, slice).await;
                    let after = server_times(cluster, &SERVER_SERIES).await;
                    for (t, (b, a)) in server_totals[i].iter_mut().zip(before.iter().zip(&after)) {
                        t.0 += a.0 - b.0;
                        t.1 += a.1 - b.1;
                    }
                    samples[i].absorb(part);
                }
            }
            let mut line = Vec::new();
            for (i, s) in samples.into_iter().enumerate() {
                let load = Load::ALL[i];
                let r = s.finish();
                line.push(format!(
                    "{:.0} {}/s ({} failed, {})",
                    r.rate(),
                    load.name(),
                    r.errors,
                    cpu_split(&r)
                ));
                report_errors(load.name(), &r);
                level_tallies[i].add(&r);
                runs[i].push(r);
            }
            let rate = |i: usize| runs[i].last().map_or(f64::NAN, RunResult::rate);
            ratios.push((rate(0) / rate(2), rate(1) / rate(2)));
            eprintln!("  {c} clients, round {}: {}", round + 1, line.join("; "));
        }
        for (i, load) in Load::ALL.iter().enumerate() {
            let zero = vec![(0.0, 0.0); SERVER_SERIES.len()];
            server[i] = server_means(&SERVER_SERIES, &zero, &server_totals[i]);
            eprintln!(
                "  [{c} clients, server side during {}: {}]",
                load.name(),
                server[i]
            );
            tallies.push((format!("{}, {c} clients", load.name()), level_tallies[i]));
        }
        let [t, k, h] = runs;
        print_resident(cluster, &format!("{c} clients"));
        rows.push(Row {
            clients: c,
            translate: median(t),
            cookie: median(k),
            trivial: median(h),
            ratios,
        });
    }
    rows
}

fn print_table(args: &Args, rows: &[Row]) {
    println!();
    println!(
        "Token → session translation and cookie validation (GET /auth/verify) vs GET /healthz; median of {} rounds per level, each {}s per load in interleaved {} ms slices (+{} ms settling each), after {}s warm-up per load",
        args.rounds, args.seconds, args.slice_ms, args.settle_ms, args.warmup
    );
    println!(
        "{:>7} | {:>8} {:>6} {:>6} {:>6} {:>4} | {:>8} {:>6} {:>6} {:>6} {:>4} | {:>8} {:>6} {:>6} {:>6} {:>4} | {:>7} {:>7}",
        "clients",
        "token/s",
        "p50",
        "p99",
        "CPU ms",
        "err",
        "cookie/s",
        "p50",
        "p99",
        "CPU ms",
        "err",
        "health/s",
        "p50",
        "p99",
        "CPU ms",
        "err",
        "tok/hz",
        "cook/hz"
    );
    for r in rows {
        let cells = |x: &RunResult| {
            format!(
                "{:>8.0} {:>6.2} {:>6.2} {:>6.3} {:>4}",
                x.rate(),
                x.p50_ms,
                x.p99_ms,
                x.cpu_ms_per_op(),
                x.errors
            )
        };
        println!(
            "{:>7} | {} | {} | {} | {:>7.2} {:>7.2}",
            r.clients,
            cells(&r.translate),
            cells(&r.cookie),
            cells(&r.trivial),
            r.translate_ratio(),
            r.cookie_ratio()
        );
    }
    println!("p50/p99 in ms; CPU ms: CPU time of the three nodes and the load generator per completed request");
    println!("ratios: median over the rounds of the ratio measured within each round (rates above: the median round of each load)");
    println!("target: translations/healthz >= {TARGET} at every level");
}

fn print_markdown(rows: &[Row]) {
    println!();
    println!("Markdown:");
    println!();
    println!("| clients | translations/s | p50 ms | p99 ms | CPU ms | cookie validations/s | p50 ms | p99 ms | CPU ms | healthz/s | p50 ms | p99 ms | CPU ms | translation/trivial | cookie/trivial |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
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
            "| {} | {} | {} | {} | {:.2} | {:.2} |",
            r.clients,
            cells(&r.translate),
            cells(&r.cookie),
            cells(&r.trivial),
            r.translate_ratio(),
            r.cookie_ratio()
        );
    }
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.rounds == 0 || args.seconds == 0 || args.slice_ms == 0 {
        bail!("--rounds, --seconds and --slice-ms must be at least 1");
    }
    if args.levels.is_empty() || args.levels.contains(&0) {
        bail!("levels must be at least 1 client");
    }
    println!("baa native-app benchmark: token → session translation");
    println!("machine: {}", machine());
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!("cluster: 3 baa nodes on loopback, TLS on every hop, client i on node i mod 3 with its own keep-alive connection");
    let opts = ClusterOptions {
        log_level: "warn".into(),
        forward_auth: vec![app_table(TOOLS_APP, "origin", TOOLS_ORIGIN, &[CLIENT_ID])],
        ..ClusterOptions::default()
    };
    eprintln!("starting a 3-node cluster");
    let cluster = Cluster::start_with(opts).await;
    setup(&cluster).await?;
    let ca = cluster.ca_pem();
    let nodes: Vec<String> = cluster
        .ids()
        .iter()
        .map(|id| cluster.public_url(*id))
        .collect();
    let max = args.levels.iter().copied().max().unwrap_or(1);
    let mut apps = Vec::new();
    for c in 0..max {
        let base = &nodes[c % nodes.len()];
        let app = new_app(&ca, base, 40_000 + c as u16)
            .await
            .with_context(|| format!("setting up client {c}"))?;
        apps.push(Arc::new(app));
    }
    eprintln!("set up: user {USER}, native client {CLIENT_ID}, {max} sessions with a token each");
    let pids = node_pids(&cluster);
    let idle_before = cpu_snapshot(&pids).0;
    let idle_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = (cpu_snapshot(&pids).0 - idle_before) / idle_started.elapsed().as_secs_f64();
    println!(
        "idle cluster: the three nodes use {:.1}% of one core with no load (counted in the CPU columns)",
        idle * 100.0
    );

    let mut tallies = Vec::new();
    let rows = bench(&cluster, args, &apps, &mut tallies).await;
    cluster.assert_no_panics();
    drop(apps);
    drop(cluster);

    print_table(args, &rows);
    print_markdown(&rows);
    let mut ok = true;
    for (what, t) in &tallies {
        if t.error_share() > MAX_ERROR_SHARE {
            eprintln!(
                "FAILED: {what}: {} of {} requests failed ({:.2}%)",
                t.errors,
                t.ops + t.errors,
                t.error_share() * 100.0
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
            eprintln!("bench-native: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{median, RunResult, Tally};
    use std::time::Duration;

    #[test]
    fn error_share_counts_failures_over_all_attempts() {
        let t = Tally { ops: 99, errors: 1 };
        assert!((t.error_share() - 0.01).abs() < 1e-9);
        assert_eq!(Tally::default().error_share(), 1.0);
    }

    #[test]
    fn median_picks_the_middle_rate() {
        let run = |ops| RunResult {
            ops,
            elapsed: Duration::from_secs(1),
            ..RunResult::default()
        };
        assert_eq!(median(vec![run(5), run(1), run(3)]).ops, 3);
    }
}
