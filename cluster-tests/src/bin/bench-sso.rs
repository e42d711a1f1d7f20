//! Benchmark: single sign-on through the public endpoints of a 3-node baa
//! cluster, each figure next to a reference measured in the same invocation.
//!
//! 1. Ticket issue + redeem with the SSO cookie already present: a closed-loop
//!    client sends `GET /sso/authorize` (answered with a 303 carrying a
//!    one-time ticket) and redeems the ticket at `POST /sso/token` on the next
//!    node (an ID token comes back). Reference: the foundation's replicated
//!    write (`PATCH /admin/v1/users/…`, driven as `bench-writes` drives it) at
//!    the same concurrency on the same cluster.
//! 2. Password sign-in (`POST /sso/signin`, a 303 with a new SSO cookie) next
//!    to the argon2id verification alone (same parameters as the nodes) on as
//!    many threads as a node's hasher pool.
//!
//! Each round runs the loads it compares in turn, a short slice at a time
//! (the order rotating), so that a slow spell of the shared machine hits them
//! alike; the median round of each is reported.
//!
//! Build in release and run: `ops/bench-sso` (see BENCHMARKS.md).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use baa_cluster_tests::bench::{
    client_for, closed_loop, cpu_seconds, cpu_snapshot, cpu_split, csrf_pair, machine, median,
    median_of, node_pids, password_sign_in, report_errors, server_means, server_times, slicing,
    unexpected, RunResult, Samples, Series, Tally,
};
use baa_cluster_tests::sso::CSRF_COOKIE;
use baa_cluster_tests::{Cluster, ClusterOptions};
use baa_proto::api::CreateUserRequest;
use clap::Parser;
use reqwest::header::{COOKIE, LOCATION};
use reqwest::StatusCode;

/// The agency's CSRF cookie (double-submit: the form field carries the same value).
const USER: &str = "bench";
const PASSWORD: &str = "bench-password-0123456789";
const CLIENT_ID: &str = "bench";
const REDIRECT_URI: &str = "https://bench.example/cb";
/// Share of failed operations above which the program exits non-zero.
const MAX_ERROR_SHARE: f64 = 0.01;

#[derive(Parser, Debug)]
#[command(
    about = "baa single sign-on: ticket issue + redeem vs replicated writes, password sign-in vs argon2id"
)]
struct Args {
    /// Concurrent clients per level for ticket issue + redeem and the write reference.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    levels: Vec<usize>,
    /// Concurrent clients per level for password sign-ins.
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    signin_levels: Vec<usize>,
    /// Measured seconds per load per round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Warm-up seconds per load at the start of each level.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Length of one measured slice in milliseconds; a round runs the loads
    /// in turn, a slice at a time, until each has had `seconds`.
    #[arg(long, default_value_t = 1000)]
    slice_ms: u64,
    /// Unmeasured milliseconds at the start of every slice.
    #[arg(long, default_value_t = 200)]
    settle_ms: u64,
    /// Measured rounds per level; the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Threads for the argon2id reference (one per core of this machine).
    #[arg(long, default_value_t = 2)]
    hash_threads: usize,
    /// `[limits] password_hash_threads` of each node (0 = one per CPU, the default).
    #[arg(long, default_value_t = 0)]
    node_hash_threads: usize,
    /// Send every sign-in to this node (as a node on its own machine would
    /// take them); 0 spreads them over all nodes, whose hashing pools then
    /// share this machine's cores.
    #[arg(long, default_value_t = 2)]
    signin_node: u64,
    /// Skip the ticket issue + redeem part.
    #[arg(long)]
    no_flows: bool,
    /// Skip the password sign-in part.
    #[arg(long)]
    no_signins: bool,
}

/// The value of query parameter `name` in a `Location` header.
fn location_param(resp: &reqwest::Response, name: &str) -> Result<String, String> {
    let loc = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("no Location header")?;
    let url = url::Url::parse(loc).map_err(|e| format!("Location {loc:?}: {e}"))?;
    if let Some((_, e)) = url.query_pairs().find(|(k, _)| k == "error") {
        return Err(format!("site error {e} in {loc}"));
    }
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| format!("no {name} in {loc}"))
}

/// The authorization request of the benchmark site (answer in the query).
fn authorize_query() -> [(&'static str, &'static str); 7] {
    [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid profile"),
        ("state", "s"),
        ("nonce", "n"),
        ("response_mode", "query"),
    ]
}

/// One password sign-in of the benchmark user; the new SSO cookie value.
async fn sign_in(http: &reqwest::Client, base: &str, csrf: &str) -> Result<String, String> {
    password_sign_in(http, base, csrf, (USER, PASSWORD)).await
}

/// One closed-loop client of the workload.
enum Worker {
    /// Ticket issue on node `i`, redeem on node `i + 1`, with a signed-in session.
    Flow {
        http: reqwest::Client,
        nodes: Vec<String>,
        client: usize,
        sso: String,
        secret: String,
    },
    /// The foundation's replicated write: one attribute of the client's own user.
    Write {
        http: reqwest::Client,
        base: String,
        token: String,
        user: String,
    },
    /// A full password sign-in with a CSRF pair obtained once.
    SignIn {
        http: reqwest::Client,
        nodes: Vec<String>,
        client: usize,
        csrf: String,
    },
}

impl Worker {
    async fn once(&self, seq: u64) -> Result<(), String> {
        match self {
            Worker::Flow {
                http,
                nodes,
                client,
                sso,
                secret,
            } => {
                let n = nodes.len();
                let i = (client + seq as usize) % n;
                let resp = http
                    .get(format!("{}/sso/authorize", nodes[i]))
                    .query(&authorize_query())
                    .header(COOKIE, sso.as_str())
                    .send()
                    .await
                    .map_err(|e| format!("GET /sso/authorize: {e}"))?;
                if resp.status() != StatusCode::SEE_OTHER {
                    return Err(unexpected("GET /sso/authorize", resp).await);
                }
                let code = location_param(&resp, "code")?;
                let _ = resp.bytes().await;
                let resp = http
                    .post(format!("{}/sso/token", nodes[(i + 1) % n]))
                    .basic_auth(CLIENT_ID, Some(secret))
                    .form(&[
                        ("grant_type", "authorization_code"),
                        ("code", &code),
                        ("redirect_uri", REDIRECT_URI),
                    ])
                    .send()
                    .await
                    .map_err(|e| format!("POST /sso/token: {e}"))?;
                if resp.status() != StatusCode::OK {
                    return Err(unexpected("POST /sso/token", resp).await);
                }
                let body: serde_json::Value = resp
                    .json()
                    .await
                    .map_err(|e| format!("POST /sso/token body: {e}"))?;
                match body["id_token"].as_str() {
                    Some(t) if t.split('.').count() == 3 => Ok(()),
                    _ => Err(format!("POST /sso/token: no ID token in {body}")),
                }
            }
            Worker::Write {
                http,
                base,
                token,
                user,
            } => {
                let resp = http
                    .patch(format!("{base}/admin/v1/users/{user}"))
                    .bearer_auth(token)
                    .json(&serde_json::json!({ "attributes": { "n": seq.to_string() } }))
                    .send()
                    .await
                    .map_err(|e| format!("PATCH user: {e}"))?;
                if !resp.status().is_success() {
                    return Err(unexpected("PATCH user", resp).await);
                }
                let _ = resp.bytes().await;
                Ok(())
            }
            Worker::SignIn {
                http,
                nodes,
                client,
                csrf,
            } => {
                let base = &nodes[(client + seq as usize) % nodes.len()];
                sign_in(http, base, csrf).await.map(drop)
            }
        }
    }
}

/// Runs the workers closed-loop: `warmup`, then `secs` measured; `pids` are
/// the node processes whose CPU time is recorded.
async fn measure(
    workers: &[Arc<Worker>],
    pids: &[u32],
    warmup: Duration,
    secs: Duration,
) -> Samples {
    closed_loop(
        workers,
        |w: Arc<Worker>, seq| async move { w.once(seq).await },
        pids,
        warmup,
        secs,
    )
    .await
}

/// argon2id verifications of the bench password against `hash`, closed loop
/// on `threads` threads: `settle` unmeasured, then `secs` measured (only
/// verifications finishing inside the window count, as for the clients).
async fn argon2_rate(
    hash: String,
    threads: usize,
    settle: Duration,
    secs: Duration,
) -> anyhow::Result<Samples> {
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|e| anyhow!("parsing the hash: {e}"))?;
        let stop = AtomicBool::new(false);
        let from = Instant::now() + settle;
        let to = from + secs;
        let mut cpu = (0.0, 0.0);
        let per_thread: Vec<(Vec<u64>, usize)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    s.spawn(|| {
                        let a = Argon2::default();
                        let (mut lat, mut failed) = (Vec::new(), 0usize);
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            let ok = a.verify_password(PASSWORD.as_bytes(), &parsed).is_ok();
                            let done = Instant::now();
                            if done >= from && done <= to {
                                if ok {
                                    lat.push((done - t).as_micros() as u64);
                                } else {
                                    failed += 1;
                                }
                            }
                        }
                        (lat, failed)
                    })
                })
                .collect();
            std::thread::sleep(from.saturating_duration_since(Instant::now()));
            cpu.0 = cpu_seconds(None);
            std::thread::sleep(to.saturating_duration_since(Instant::now()));
            cpu.1 = cpu_seconds(None);
            stop.store(true, Ordering::Relaxed);
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        let mut out = Samples {
            elapsed: secs,
            self_cpu_s: cpu.1 - cpu.0,
            ..Samples::default()
        };
        for (lat, failed) in per_thread {
            out.latencies_us.extend(lat);
            out.errors += failed;
        }
        Ok(out)
    })
    .await?
}

/// Server-side time by route and Raft proposal time, summed over the nodes.
const SERVER_SERIES: [Series; 5] = [
    (
        "authorize",
        "baa_http_request_duration_seconds",
        "route=\"/sso/authorize\"",
    ),
    (
        "token",
        "baa_http_request_duration_seconds",
        "route=\"/sso/token\"",
    ),
    (
        "signin",
        "baa_http_request_duration_seconds",
        "route=\"/sso/signin\"",
    ),
    (
        "PATCH user",
        "baa_http_request_duration_seconds",
        "route=\"/admin/v1/users/{username}\"",
    ),
    ("raft proposal", "baa_raft_proposal_duration_seconds", ""),
];

/// Creates the bench user, `writers` write-reference users and the benchmark
/// site; returns the site's secret.
async fn setup(cluster: &Cluster, writers: usize) -> anyhow::Result<String> {
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
    for c in 0..writers {
        let req = CreateUserRequest {
            username: format!("bench-{c}"),
            ..Default::default()
        };
        admin
            .create_user(&req, None)
            .await
            .context("creating the write-reference users")?;
    }
    let site = serde_json::json!({ "client_id": CLIENT_ID, "redirect_uris": [REDIRECT_URI] });
    let created = admin
        .create_site(&site)
        .await
        .context("registering the benchmark site")?;
    created
        .client_secret
        .ok_or_else(|| anyhow!("the confidential site came back without a secret"))
}

/// Signs in once and approves the benchmark site (the trust relationship).
async fn establish_trust(cluster: &Cluster) -> anyhow::Result<()> {
    let base = cluster.public_url(1);
    let http = client_for(&cluster.ca_pem())?;
    let csrf = csrf_pair(&http, &base).await?;
    let sso = sign_in(&http, &base, &csrf).await.map_err(|e| anyhow!(e))?;
    let cookies = format!("{CSRF_COOKIE}={csrf}; {sso}");
    let resp = http
        .get(format!("{base}/sso/authorize"))
        .query(&authorize_query())
        .header(COOKIE, &cookies)
        .send()
        .await?;
    if resp.status() != StatusCode::OK {
        bail!(unexpected("GET /sso/authorize (trust page expected)", resp).await);
    }
    let _ = resp.bytes().await;
    let mut form: Vec<(&str, &str)> = vec![
        ("csrf", &csrf),
        ("decision", "approve"),
        ("account_name", "username"),
        ("share_name", "1"),
    ];
    form.extend(authorize_query());
    let resp = http
        .post(format!("{base}/sso/consent"))
        .header(COOKIE, &cookies)
        .form(&form)
        .send()
        .await?;
    if resp.status() != StatusCode::SEE_OTHER {
        bail!(unexpected("POST /sso/consent", resp).await);
    }
    location_param(&resp, "code").map_err(|e| anyhow!("POST /sso/consent: {e}"))?;
    Ok(())
}

/// One row of the flow table.
struct FlowRow {
    clients: usize,
    flows: RunResult,
    writes: RunResult,
    /// Median over the rounds of flows/writes measured side by side.
    ratio: f64,
    /// Raft proposals per completed flow (token requests answered) while
    /// the flows ran, summed over the nodes.
    proposals_per_flow: f64,
}

/// Ticket issue + redeem vs replicated writes, per level.
async fn bench_flows(
    cluster: &Cluster,
    args: &Args,
    secret: &str,
    tallies: &mut Vec<(String, Tally)>,
) -> anyhow::Result<Vec<FlowRow>> {
    let ca = cluster.ca_pem();
    let nodes: Vec<String> = cluster
        .ids()
        .iter()
        .map(|id| cluster.public_url(*id))
        .collect();
    let max = args.levels.iter().copied().max().unwrap_or(1);
    // One signed-in browser per client, each with its own session.
    let mut flow_workers = Vec::new();
    let mut write_workers = Vec::new();
    for c in 0..max {
        let http = client_for(&ca)?;
        let base = &nodes[c % nodes.len()];
        let csrf = csrf_pair(&http, base).await?;
        let sso = sign_in(&http, base, &csrf)
            .await
            .map_err(|e| anyhow!("signing in client {c}: {e}"))?;
        flow_workers.push(Arc::new(Worker::Flow {
            http,
            nodes: nodes.clone(),
            client: c,
            sso,
            secret: secret.to_string(),
        }));
        let ids = cluster.ids();
        write_workers.push(Arc::new(Worker::Write {
            http: client_for(&ca)?,
            base: cluster.manage_url(ids[c % ids.len()]),
            token: cluster.admin_token().to_string(),
            user: format!("bench-{c}"),
        }));
    }
    let pids = node_pids(cluster);
    let warmup = Duration::from_secs(args.warmup);
    let (slices, slice, settle) = slicing(args.seconds, args.slice_ms, args.settle_ms);
    let mut rows = Vec::new();
    for &c in &args.levels {
        let before = server_times(cluster, &SERVER_SERIES).await;
        let mut flows = Vec::new();
        let mut writes = Vec::new();
        let mut tally = Tally::default();
        let mut ratios = Vec::new();
        // (proposals, token requests) while the flows ran.
        let mut during_flows = (0.0, 0.0);
        let loads = [&flow_workers[..c], &write_workers[..c]];
        for load in loads {
            let _ = measure(load, &pids, warmup, Duration::ZERO).await;
        }
        for round in 0..args.rounds {
            let mut samples: [Samples; 2] = Default::default();
            for n in 0..slices {
                for k in 0..loads.len() {
                    let i = (k + n + round) % loads.len();
                    let before = match i {
                        0 => Some(server_times(cluster, &SERVER_SERIES).await),
                        _ => None,
                    };
                    samples[i].absorb(measure(loads[i], &pids, settle, slice).await);
                    if let Some(b) = before {
                        let a = server_times(cluster, &SERVER_SERIES).await;
                        during_flows.0 += a[4].1 - b[4].1;
                        during_flows.1 += a[1].1 - b[1].1;
                    }
                }
            }
            let [f, w] = samples.map(Samples::finish);
            eprintln!(
                "  {c} clients, round {}: {:.0} flows/s ({} failed, {}), {:.0} writes/s ({} failed, {})",
                round + 1,
                f.rate(),
                f.errors,
                cpu_split(&f),
                w.rate(),
                w.errors,
                cpu_split(&w)
            );
            report_errors("flows", &f);
            report_errors("writes", &w);
            tally.add(&f);
            ratios.push(f.rate() / w.rate());
            flows.push(f);
            writes.push(w);
        }
        eprintln!(
            "  [{c} clients, server side: {}]",
            server_means(
                &SERVER_SERIES,
                &before,
                &server_times(cluster, &SERVER_SERIES).await
            )
        );
        tallies.push((format!("ticket issue + redeem, {c} clients"), tally));
        let flows = median(flows);
        let writes = median(writes);
        let ratio = median_of(ratios);
        rows.push(FlowRow {
            clients: c,
            flows,
            writes,
            ratio,
            proposals_per_flow: during_flows.0 / during_flows.1.max(1.0),
        });
    }
    Ok(rows)
}

/// One row of the sign-in table.
struct SignInRow {
    clients: usize,
    signins: RunResult,
    /// Median over the rounds of sign-ins/argon2id measured side by side.
    ratio: f64,
}

/// Password sign-ins vs argon2id alone, per level.
async fn bench_signins(
    cluster: &Cluster,
    args: &Args,
    tallies: &mut Vec<(String, Tally)>,
) -> anyhow::Result<(RunResult, Vec<SignInRow>)> {
    let ca = cluster.ca_pem();
    let nodes: Vec<String> = cluster
        .ids()
        .iter()
        .map(|id| cluster.public_url(*id))
        .collect();
    let hash = Argon2::default()
        .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
        .map_err(|e| anyhow!("hashing: {e}"))?
        .to_string();
    let nodes: Vec<String> = match args.signin_node {
        0 => nodes,
        id => vec![cluster.public_url(id)],
    };
    let max = args.signin_levels.iter().copied().max().unwrap_or(1);
    let mut workers = Vec::new();
    for c in 0..max {
        let http = client_for(&ca)?;
        let csrf = csrf_pair(&http, &nodes[c % nodes.len()]).await?;
        workers.push(Arc::new(Worker::SignIn {
            http,
            nodes: nodes.clone(),
            client: c,
            csrf,
        }));
    }
    let pids = node_pids(cluster);
    let warmup = Duration::from_secs(args.warmup);
    let (slices, slice, settle) = slicing(args.seconds, args.slice_ms, args.settle_ms);
    let before = server_times(cluster, &SERVER_SERIES).await;
    let mut pure = Vec::new();
    let mut per_level: Vec<Vec<RunResult>> =
        args.signin_levels.iter().map(|_| Vec::new()).collect();
    let mut level_tallies = vec![Tally::default(); args.signin_levels.len()];
    let mut level_ratios: Vec<Vec<f64>> = args.signin_levels.iter().map(|_| Vec::new()).collect();
    for &c in &args.signin_levels {
        let _ = measure(&workers[..c], &pids, warmup, Duration::ZERO).await;
    }
    // Load 0 is argon2id alone, load k the k-th sign-in level.
    let loads = args.signin_levels.len() + 1;
    for round in 0..args.rounds {
        let mut samples: Vec<Samples> = (0..loads).map(|_| Samples::default()).collect();
        for n in 0..slices {
            for k in 0..loads {
                let i = (k + n + round) % loads;
                let part = match i {
                    0 => argon2_rate(hash.clone(), args.hash_threads, settle, slice).await?,
                    _ => {
                        let c = args.signin_levels[i - 1];
                        measure(&workers[..c], &pids, settle, slice).await
                    }
                };
                samples[i].absorb(part);
            }
        }
        let mut samples = samples.into_iter().map(Samples::finish);
        let p = samples.next().unwrap_or_default();
        eprintln!(
            "  round {}: argon2id alone {:.1}/s on {} threads ({:.1} CPU ms each)",
            round + 1,
            p.rate(),
            args.hash_threads,
            p.cpu_ms_per_op()
        );
        let p_rate = p.rate();
        pure.push(p);
        for ((k, &c), r) in args.signin_levels.iter().enumerate().zip(samples) {
            eprintln!(
                "  round {}: {c} clients, {:.1} sign-ins/s ({} failed, {})",
                round + 1,
                r.rate(),
                r.errors,
                cpu_split(&r)
            );
            report_errors("sign-ins", &r);
            level_tallies[k].add(&r);
            level_ratios[k].push(r.rate() / p_rate);
            per_level[k].push(r);
        }
    }
    eprintln!(
        "  [server side: {}]",
        server_means(
            &SERVER_SERIES,
            &before,
            &server_times(cluster, &SERVER_SERIES).await
        )
    );
    let pure = median(pure);
    let mut rows = Vec::new();
    for (((c, runs), tally), ratios) in args
        .signin_levels
        .iter()
        .zip(per_level)
        .zip(level_tallies)
        .zip(level_ratios)
    {
        tallies.push((format!("password sign-in, {c} clients"), tally));
        let signins = median(runs);
        let ratio = median_of(ratios);
        rows.push(SignInRow {
            clients: *c,
            signins,
            ratio,
        });
    }
    Ok((pure, rows))
}

fn print_flows(args: &Args, rows: &[FlowRow]) {
    println!();
    println!(
        "Ticket issue + redeem (SSO cookie present) vs replicated writes; median of {} rounds per level, each {}s per load in interleaved {} ms slices (+{} ms settling each), after {}s warm-up per load",
        args.rounds, args.seconds, args.slice_ms, args.settle_ms, args.warmup
    );
    println!(
        "{:>7} | {:>8} {:>7} {:>7} {:>6} {:>6} {:>9} | {:>8} {:>7} {:>7} {:>6} {:>6} | {:>12}",
        "clients",
        "flows/s",
        "p50 ms",
        "p99 ms",
        "CPU ms",
        "errors",
        "props/flow",
        "writes/s",
        "p50 ms",
        "p99 ms",
        "CPU ms",
        "errors",
        "flows/writes"
    );
    for r in rows {
        println!(
            "{:>7} | {:>8.0} {:>7.2} {:>7.2} {:>6.2} {:>6} {:>9.2} | {:>8.0} {:>7.2} {:>7.2} {:>6.2} {:>6} | {:>12.2}",
            r.clients,
            r.flows.rate(),
            r.flows.p50_ms,
            r.flows.p99_ms,
            r.flows.cpu_ms_per_op(),
            r.flows.errors,
            r.proposals_per_flow,
            r.writes.rate(),
            r.writes.p50_ms,
            r.writes.p99_ms,
            r.writes.cpu_ms_per_op(),
            r.writes.errors,
            r.ratio
        );
    }
    println!("CPU ms: CPU time of the three nodes and the load generator per completed operation");
    println!("flows/writes: median over the rounds of the ratio measured within each round");
    println!("props/flow: Raft proposals (batches; each carries one or more commands) per token request answered while the flows ran, all nodes, background writes included");
    println!("target: flows/writes >= 0.5 at every level");
}

fn print_signins(args: &Args, pure: &RunResult, rows: &[SignInRow]) {
    println!();
    println!(
        "Password sign-in vs argon2id verify alone (m=19456, t=2, p=1) on {} threads; median of {} rounds, each {}s per load in interleaved {} ms slices (+{} ms settling each)",
        args.hash_threads, args.rounds, args.seconds, args.slice_ms, args.settle_ms
    );
    match args.signin_node {
        0 => println!("sign-ins spread over every node (their hashing pools share this machine)"),
        id => println!(
            "sign-ins sent to node {id} (hashing pool: one thread per CPU, as on its own machine)"
        ),
    }
    println!(
        "argon2id verify alone: {:.1}/s ({:.1} CPU ms each)",
        pure.rate(),
        pure.cpu_ms_per_op()
    );
    println!(
        "{:>7} | {:>10} {:>8} {:>8} {:>6} {:>6} | {:>12}",
        "clients", "sign-ins/s", "p50 ms", "p99 ms", "CPU ms", "errors", "vs argon2id"
    );
    for r in rows {
        println!(
            "{:>7} | {:>10.1} {:>8.1} {:>8.1} {:>6.1} {:>6} | {:>12.2}",
            r.clients,
            r.signins.rate(),
            r.signins.p50_ms,
            r.signins.p99_ms,
            r.signins.cpu_ms_per_op(),
            r.signins.errors,
            r.ratio
        );
    }
    println!("vs argon2id: median over the rounds of the ratio measured within each round");
    println!("target: sign-ins / argon2id alone >= 0.85");
}

fn print_markdown(pure: Option<&RunResult>, flows: &[FlowRow], signins: &[SignInRow]) {
    println!();
    println!("Markdown:");
    if !flows.is_empty() {
        println!();
        println!("| clients | flows/s | flow p50 ms | flow p99 ms | CPU ms/flow | writes/s | write p50 ms | write p99 ms | CPU ms/write | flows/writes |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in flows {
            println!(
                "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.clients,
                r.flows.rate(),
                r.flows.p50_ms,
                r.flows.p99_ms,
                r.flows.cpu_ms_per_op(),
                r.writes.rate(),
                r.writes.p50_ms,
                r.writes.p99_ms,
                r.writes.cpu_ms_per_op(),
                r.ratio
            );
        }
    }
    if let Some(pure) = pure {
        println!();
        println!("| clients | sign-ins/s | p50 ms | p99 ms | CPU ms/sign-in | argon2id alone/s | sign-ins/argon2id |");
        println!("|---:|---:|---:|---:|---:|---:|---:|");
        for r in signins {
            println!(
                "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
                r.clients,
                r.signins.rate(),
                r.signins.p50_ms,
                r.signins.p99_ms,
                r.signins.cpu_ms_per_op(),
                pure.rate(),
                r.ratio
            );
        }
    }
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.rounds == 0 || args.seconds == 0 || args.slice_ms == 0 {
        bail!("--rounds, --seconds and --slice-ms must be at least 1");
    }
    if args.levels.contains(&0) || args.signin_levels.contains(&0) {
        bail!("levels must be at least 1 client");
    }
    println!("baa single sign-on benchmark");
    println!("machine: {}", machine());
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!("cluster: 3 baa nodes on loopback, TLS on every hop, clients spread over the nodes, each with its own keep-alive connections");
    let mut opts = ClusterOptions {
        log_level: "warn".into(),
        ..ClusterOptions::default()
    };
    opts.limits.insert(
        "password_hash_threads".into(),
        (args.node_hash_threads as i64).into(),
    );
    eprintln!("starting a 3-node cluster");
    let cluster = Cluster::start_with(opts).await;
    let writers = if args.no_flows {
        0
    } else {
        args.levels.iter().copied().max().unwrap_or(1)
    };
    let secret = setup(&cluster, writers).await?;
    establish_trust(&cluster).await?;
    eprintln!("set up: user {USER}, site {CLIENT_ID}, trust approved");
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
    let flows = if args.no_flows {
        Vec::new()
    } else {
        eprintln!("ticket issue + redeem vs replicated writes");
        bench_flows(&cluster, args, &secret, &mut tallies).await?
    };
    let signins = if args.no_signins {
        None
    } else {
        eprintln!("password sign-in vs argon2id alone");
        Some(bench_signins(&cluster, args, &mut tallies).await?)
    };
    cluster.assert_no_panics();
    drop(cluster);

    if !flows.is_empty() {
        print_flows(args, &flows);
    }
    if let Some((pure, rows)) = &signins {
        print_signins(args, pure, rows);
    }
    print_markdown(
        signins.as_ref().map(|(p, _)| p),
        &flows,
        signins.as_ref().map_or(&[][..], |(_, r)| r),
    );
    let mut ok = true;
    for (what, t) in &tallies {
        if t.error_share() > MAX_ERROR_SHARE {
            eprintln!(
                "FAILED: {what}: {} of {} operations failed ({:.2}%)",
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
            eprintln!("bench-sso: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn error_share_counts_failures_over_all_attempts() {
        let t = Tally { ops: 99, errors: 1 };
        assert!((t.error_share() - 0.01).abs() < 1e-9);
        assert_eq!(Tally::default().error_share(), 1.0);
    }
}
