//! Benchmark: single sign-on through the public endpoints of a 3-node baa
//! cluster, each figure next to a reference measured in the same invocation
//! (the loads interleaved by `bench::driver`, reported by `bench::report`).
//!
//! 1. The login flow with a session already present, against baa and
//!    against Node's oidc-provider (the certified OpenID provider, in memory,
//!    one process, plain HTTP): `GET authorize` (`form_post`, PKCE S256,
//!    nonce) → `POST token` (`client_secret_basic`) → the ID token checked,
//!    the same Rust client for both (`bench::oidc`). baa through TLS on one
//!    node (its leader) and spread over three (authorize on one node, token
//!    on the next); RS256 and ES256 sites/clients. Raft proposals per flow
//!    come from the nodes' `/metrics`.
//! 2. Password sign-in (`POST /sso/signin`) next to the argon2id
//!    verification alone (same parameters as the nodes) on as many threads
//!    as a node's hasher pool.
//!
//! Build in release and run: `ops/bench-sso` (see BENCHMARKS.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use baa_cluster_tests::bench::driver::{interleave, Load, Plan, Rounds};
use baa_cluster_tests::bench::oidc::{self, jwks_keys, Browser, Provider};
use baa_cluster_tests::bench::peer::{self, OidcProvider};
use baa_cluster_tests::bench::report::{print_all, run_cells, Table};
use baa_cluster_tests::bench::{
    client_for, closed_loop, cpu_seconds, cpu_snapshot, csrf_pair, machine, node_pids,
    password_sign_in, print_resident, rss_bytes, server_means, server_times, unexpected, RunResult,
    Samples, Series, Tally,
};
use baa_cluster_tests::sso::CSRF_COOKIE;
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use baa_proto::api::CreateUserRequest;
use clap::Parser;
use jsonwebtoken::Algorithm;
use reqwest::header::{COOKIE, LOCATION};
use reqwest::StatusCode;

const USER: &str = "bench";
const PASSWORD: &str = "bench-password-0123456789";
const REDIRECT_URI: &str = "https://bench.example/cb";
/// Share of failed operations above which the program exits non-zero.
const MAX_ERROR_SHARE: f64 = 0.01;
/// The algorithms compared: (name, JOSE algorithm).
const ALGS: [(&str, Algorithm); 2] = [("RS256", Algorithm::RS256), ("ES256", Algorithm::ES256)];

#[derive(Parser, Debug)]
#[command(about = "baa single sign-on: login flows vs oidc-provider, password sign-in vs argon2id")]
struct Args {
    /// Concurrent clients per level for the login flows.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    levels: Vec<usize>,
    /// ID-token algorithms to run: RS256, ES256.
    #[arg(long, value_delimiter = ',', default_value = "RS256,ES256")]
    algs: Vec<String>,
    /// Concurrent clients per level for password sign-ins.
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    signin_levels: Vec<usize>,
    /// Measured seconds per load per round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Warm-up seconds per load at the start of each level.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Length of one measured slice in milliseconds.
    #[arg(long, default_value_t = 1000)]
    slice_ms: u64,
    /// Unmeasured milliseconds at the start of every slice.
    #[arg(long, default_value_t = 200)]
    settle_ms: u64,
    /// Measured rounds per level; the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The folder where `npm ci` installed ops/oidc-provider (ops/bench-sso
    /// makes one); without it the flows run against baa alone.
    #[arg(long)]
    oidc_provider: Option<PathBuf>,
    /// The Node.js binary.
    #[arg(long, default_value = "node")]
    node: PathBuf,
    /// Threads for the argon2id reference (one per core of this machine).
    #[arg(long, default_value_t = 2)]
    hash_threads: usize,
    /// `[limits] password_hash_threads` of each node (0 = one per CPU, the default).
    #[arg(long, default_value_t = 0)]
    node_hash_threads: usize,
    /// `[limits] storage_cache_mib` of each node (unset: the node's default).
    #[arg(long)]
    storage_cache_mib: Option<u64>,
    /// Send every sign-in to this node (as a node on its own machine would
    /// take them); 0 spreads them over all nodes.
    #[arg(long, default_value_t = 2)]
    signin_node: u64,
    /// Skip the login flows.
    #[arg(long)]
    no_flows: bool,
    /// Skip the password sign-ins.
    #[arg(long)]
    no_signins: bool,
    /// Also run this many logins as fast as 64 clients go (spread over the
    /// nodes) and print each node's data directory and resident memory
    /// before, after, and once the tickets have expired (0: skip).
    #[arg(long, default_value_t = 0)]
    soak: u64,
    /// Seconds to wait after the soak for the tickets' spent markers and
    /// remembered results to expire and be swept.
    #[arg(long, default_value_t = 300)]
    soak_wait_s: u64,
    /// Also make this many live sessions (password sign-ins, spread over
    /// the nodes) and print each node's resident memory and data directory
    /// per session (0: skip).
    #[arg(long, default_value_t = 0)]
    sessions: u64,
}

impl Args {
    fn plan(&self) -> Plan {
        Plan {
            rounds: self.rounds,
            seconds: self.seconds,
            slice_ms: self.slice_ms,
            settle_ms: self.settle_ms,
            warmup: self.warmup,
        }
    }
}

/// The benchmark site of `alg` at baa.
fn site_id(alg: &str) -> String {
    format!("bench-{}", alg.to_lowercase())
}

/// The authorization request of `client_id` with the answer in the query.
fn query_request(client_id: &str) -> Vec<(&'static str, String)> {
    [
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT_URI),
        ("scope", "openid profile"),
        ("state", "s"),
        ("nonce", "n"),
        ("response_mode", "query"),
    ]
    .map(|(k, v)| (k, v.to_string()))
    .to_vec()
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

/// One password sign-in of the benchmark user; the new SSO cookie value.
async fn sign_in(http: &reqwest::Client, base: &str, csrf: &str) -> Result<String, String> {
    password_sign_in(http, base, csrf, (USER, PASSWORD)).await
}

/// A slice of closed-loop flows of `browsers` at `provider`.
fn flow_load<'a>(
    name: &str,
    provider: Arc<Provider>,
    browsers: &'a [Arc<Browser>],
    pids: Vec<u32>,
) -> Load<'a> {
    Load::new(name, move |settle, slice| {
        let provider = provider.clone();
        let pids = pids.clone();
        Box::pin(async move {
            let op = move |b: Arc<Browser>, seq: u64| {
                let p = provider.clone();
                async move { oidc::flow(&p, &b, seq).await }
            };
            Ok(closed_loop(browsers, op, &pids, settle, slice).await)
        })
    })
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

/// Server-side time by route, Raft proposal time and its parts, summed over the nodes.
const SERVER_SERIES: [Series; 7] = [
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
    ("raft proposal", "baa_raft_proposal_duration_seconds", ""),
    // Where a proposal's time goes (heartbeats included in the appends).
    ("log fsync", "baa_raft_log_flush_duration_seconds", ""),
    (
        "append RPC round trip",
        "baa_cluster_rpc_duration_seconds",
        "path=\"/raft/append\"",
    ),
    (
        "append handled by a follower",
        "baa_http_request_duration_seconds",
        "route=\"/raft/append\"",
    ),
];

/// Creates the bench user and a site per algorithm; returns each site's
/// secret.
async fn setup(cluster: &Cluster, algs: &[&str]) -> anyhow::Result<Vec<String>> {
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
    let mut secrets = Vec::new();
    for alg in algs {
        let site = serde_json::json!({
            "client_id": site_id(alg),
            "redirect_uris": [REDIRECT_URI],
            "id_token_signed_response_alg": alg,
        });
        let created = admin
            .create_site(&site)
            .await
            .context("registering a benchmark site")?;
        secrets.push(
            created
                .client_secret
                .ok_or_else(|| anyhow!("the confidential site came back without a secret"))?,
        );
        establish_trust(cluster, &site_id(alg)).await?;
    }
    Ok(secrets)
}

/// Signs in once and approves site `client_id` (the trust relationship).
async fn establish_trust(cluster: &Cluster, client_id: &str) -> anyhow::Result<()> {
    let base = cluster.public_url(1);
    let http = client_for(&cluster.ca_pem())?;
    let csrf = csrf_pair(&http, &base).await?;
    let sso = sign_in(&http, &base, &csrf).await.map_err(|e| anyhow!(e))?;
    let cookies = format!("{CSRF_COOKIE}={csrf}; {sso}");
    let resp = http
        .get(format!("{base}/sso/authorize"))
        .query(&query_request(client_id))
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
    let request = query_request(client_id);
    form.extend(request.iter().map(|(k, v)| (*k, v.as_str())));
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

/// The login flows of one algorithm at every level: baa on its leader,
/// baa spread over the nodes, and the peer when there is one.
async fn bench_flows(
    cluster: &Cluster,
    args: &Args,
    (alg_name, alg): (&str, Algorithm),
    secret: &str,
    peer: Option<&OidcProvider>,
    tallies: &mut Vec<(String, Tally)>,
    (table, threads): (&mut Table, &mut Table),
) -> anyhow::Result<()> {
    let ca = cluster.ca_pem();
    let ids = cluster.ids();
    let leader = cluster.leader().await;
    let url = |id| cluster.public_url(id);
    let http = client_for(&ca)?;
    let jwks: serde_json::Value = http
        .get(format!("{}/.well-known/jwks.json", url(leader)))
        .send()
        .await?
        .json()
        .await?;
    let baa = |nodes: Vec<u64>, next_node_redeems| Provider {
        issuer: cluster.issuer(),
        authorize: nodes
            .iter()
            .map(|id| format!("{}/sso/authorize", url(*id)))
            .collect(),
        token: nodes
            .iter()
            .map(|id| format!("{}/sso/token", url(*id)))
            .collect(),
        client_id: site_id(alg_name),
        secret: secret.to_string(),
        redirect_uri: REDIRECT_URI.into(),
        alg,
        keys: jwks_keys(&jwks),
        next_node_redeems,
    };
    let one = Arc::new(baa(vec![leader], false));
    let spread = Arc::new(baa(ids.clone(), true));
    let max = args.levels.iter().copied().max().unwrap_or(1);
    let baa_browsers = signed_in_browsers(cluster, max).await?;
    let (peer_provider, peer_browsers) = match peer {
        None => (None, Vec::new()),
        Some(p) => {
            let http = OidcProvider::client()?;
            let jwks: serde_json::Value = http
                .get(format!("{}/jwks", p.url))
                .send()
                .await?
                .json()
                .await?;
            let client_id = site_id(alg_name);
            let provider = Provider {
                issuer: p.url.clone(),
                authorize: vec![format!("{}/auth", p.url)],
                token: vec![format!("{}/token", p.url)],
                secret: format!("bench-secret-{}", alg_name.to_lowercase()),
                client_id,
                redirect_uri: peer::REDIRECT_URI.into(),
                alg,
                keys: jwks_keys(&jwks),
                next_node_redeems: false,
            };
            let mut browsers = Vec::new();
            for c in 0..max {
                let http = OidcProvider::client()?;
                let cookies = p.sign_in(&http, &provider.client_id).await?;
                browsers.push(Arc::new(Browser {
                    http,
                    cookies,
                    index: c,
                }));
            }
            (Some(Arc::new(provider)), browsers)
        }
    };
    let pids = node_pids(cluster);
    for &c in &args.levels {
        let mut loads = vec![
            flow_load("baa 1 node", one.clone(), &baa_browsers[..c], pids.clone()),
            flow_load(
                "baa 3 nodes",
                spread.clone(),
                &baa_browsers[..c],
                pids.clone(),
            ),
        ];
        if let (Some(p), Some(node)) = (&peer_provider, peer) {
            let pid = node.pid().into_iter().collect();
            loads.push(flow_load(
                "oidc-provider",
                p.clone(),
                &peer_browsers[..c],
                pid,
            ));
        }
        let before = server_times(cluster, &SERVER_SERIES).await;
        let rounds = interleave(&args.plan(), &loads, &format!("{alg_name}, {c} clients")).await?;
        let after = server_times(cluster, &SERVER_SERIES).await;
        eprintln!(
            "  [{alg_name}, {c} clients, server side: {}]",
            server_means(&SERVER_SERIES, &before, &after)
        );
        print_resident(cluster, &format!("{alg_name}, {c} clients"));
        // Proposals over token requests answered, while only baa made them.
        let proposals = (after[3].1 - before[3].1) / (after[1].1 - before[1].1).max(1.0);
        table.row(flow_row(alg_name, c, &rounds, proposals));
        for (i, name) in rounds.names.iter().enumerate().take(2) {
            threads.row(thread_row(alg_name, c, name, &rounds.median(i)));
        }
        for (i, name) in rounds.names.iter().enumerate() {
            tallies.push((format!("{name} {alg_name}, {c} clients"), rounds.tally(i)));
        }
    }
    Ok(())
}

/// `n` browsers signed in at baa (spread over the nodes), each with its own
/// session and connection.
async fn signed_in_browsers(cluster: &Cluster, n: usize) -> anyhow::Result<Vec<Arc<Browser>>> {
    let ids = cluster.ids();
    let mut out = Vec::new();
    for c in 0..n {
        let http = client_for(&cluster.ca_pem())?;
        let base = cluster.public_url(ids[c % ids.len()]);
        let csrf = csrf_pair(&http, &base).await?;
        let cookies = sign_in(&http, &base, &csrf)
            .await
            .map_err(|e| anyhow!("signing in client {c}: {e}"))?;
        out.push(Arc::new(Browser {
            http,
            cookies,
            index: c,
        }));
    }
    Ok(out)
}

/// The clients of the soak.
const SOAK_CLIENTS: usize = 64;

/// Bytes under `path`, recursively.
fn dir_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The parts of a node's data directory: the state (`db/`, or `db.N/` once
/// rebuilt), the Raft log, snapshots.
const DATA_PARTS: [&str; 3] = ["db", "raft-wal", "snapshots"];

/// Bytes of the part `name` of the data directory `data`: every directory
/// called `name` or `name.N`.
fn part_bytes(data: &std::path::Path, name: &str) -> u64 {
    let Ok(entries) = std::fs::read_dir(data) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n == name
                || n.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|g| !g.is_empty() && g.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| dir_bytes(&e.path()))
        .sum()
}

/// What one node keeps at one moment.
#[derive(Clone, Copy)]
struct NodeState {
    /// Bytes of the data directory.
    disk: u64,
    /// Resident bytes.
    rss: u64,
    /// Bytes of each of [`DATA_PARTS`].
    parts: [u64; 3],
}

/// What every node keeps now.
fn node_state(cluster: &Cluster) -> Vec<NodeState> {
    cluster
        .ids()
        .iter()
        .map(|id| {
            let node = cluster.node(*id);
            let data = node.dir().join("data");
            NodeState {
                disk: dir_bytes(&data),
                rss: rss_bytes(node.pid()),
                parts: DATA_PARTS.map(|p| part_bytes(&data, p)),
            }
        })
        .collect()
}

/// `args.soak` logins at full speed, then the state each node keeps.
async fn soak(cluster: &Cluster, args: &Args, secret: &str) -> anyhow::Result<Table> {
    let alg = ALGS[0];
    let ids = cluster.ids();
    let url = |id: &u64| cluster.public_url(*id);
    let jwks: serde_json::Value = client_for(&cluster.ca_pem())?
        .get(format!("{}/.well-known/jwks.json", url(&ids[0])))
        .send()
        .await?
        .json()
        .await?;
    let provider = Arc::new(Provider {
        issuer: cluster.issuer(),
        authorize: ids
            .iter()
            .map(|id| format!("{}/sso/authorize", url(id)))
            .collect(),
        token: ids
            .iter()
            .map(|id| format!("{}/sso/token", url(id)))
            .collect(),
        client_id: site_id(alg.0),
        secret: secret.to_string(),
        redirect_uri: REDIRECT_URI.into(),
        alg: alg.1,
        keys: jwks_keys(&jwks),
        next_node_redeems: true,
    });
    let browsers = signed_in_browsers(cluster, SOAK_CLIENTS).await?;
    let before = node_state(cluster);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for b in browsers {
        let (p, done, failed, n) = (provider.clone(), done.clone(), failed.clone(), args.soak);
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            while done.fetch_add(1, Ordering::Relaxed) < n {
                seq += 1;
                if oidc::flow(&p, &b, seq).await.is_err() {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let took = started.elapsed().as_secs_f64();
    let after = node_state(cluster);
    let failed = failed.load(Ordering::Relaxed);
    let rate = args.soak as f64 / took;
    eprintln!(
        "  soak: {} logins in {took:.0} s ({rate:.0}/s), {failed} failed; waiting {} s for the tickets to expire",
        args.soak, args.soak_wait_s
    );
    tokio::time::sleep(Duration::from_secs(args.soak_wait_s)).await;
    let settled = node_state(cluster);
    let mib = |b: u64| format!("{:.1}", b as f64 / (1024.0 * 1024.0));
    let grew = |a: u64, b: u64| format!("{:+.1}", (a as f64 - b as f64) / (1024.0 * 1024.0));
    let mut t = Table::new(
        format!(
            "State per node after {} logins at full speed ({SOAK_CLIENTS} clients, {rate:.0} logins/s, {failed} failed), and {} s later",
            args.soak, args.soak_wait_s
        ),
        &[
            "node",
            "disk MiB before",
            "after",
            "growth",
            "later",
            "growth",
            "RSS MiB before",
            "after",
            "growth",
            "later",
            "growth",
        ],
    );
    for (i, id) in ids.iter().enumerate() {
        let [(d0, r0), (d1, r1), (d2, r2)] =
            [before[i], after[i], settled[i]].map(|n| (n.disk, n.rss));
        t.row(vec![
            id.to_string(),
            mib(d0),
            mib(d1),
            grew(d1, d0),
            mib(d2),
            grew(d2, d0),
            mib(r0),
            mib(r1),
            grew(r1, r0),
            mib(r2),
            grew(r2, r0),
        ]);
    }
    t.note("disk: the node's data directory (the state's sled files, the Raft log's segments, snapshots); RSS: VmRSS of the node process. target: growth < 50 MiB after 200,000 logins, back near the baseline once the tickets have expired.");
    for (i, id) in ids.iter().enumerate() {
        let parts: Vec<String> = DATA_PARTS
            .iter()
            .enumerate()
            .map(|(p, name)| {
                format!(
                    "{name} {} -> {}",
                    mib(after[i].parts[p]),
                    mib(settled[i].parts[p])
                )
            })
            .collect();
        t.note(format!(
            "node {id} disk MiB after -> later: {}",
            parts.join(", ")
        ));
    }
    Ok(t)
}

/// Sign-ins made before the sessions are counted: each hashing thread's
/// argon2 memory is taken once, not per session.
const SESSION_WARMUP: u64 = 32;
/// Concurrent sign-ins while sessions are made.
const SESSION_CLIENTS: u64 = 8;
/// How long resident memory is given to settle after the sessions.
const SESSION_SETTLE: Duration = Duration::from_secs(20);

/// `args.sessions` password sign-ins, each a new live session, and what
/// every node keeps per session: resident memory and data directory.
async fn sessions(cluster: &Cluster, args: &Args) -> anyhow::Result<Table> {
    let ids = cluster.ids();
    let ca = cluster.ca_pem();
    let sign_ins = |n: u64| {
        let ca = ca.clone();
        let urls: Vec<String> = ids.iter().map(|id| cluster.public_url(*id)).collect();
        async move {
            let done = Arc::new(AtomicU64::new(0));
            let failed = Arc::new(AtomicU64::new(0));
            let mut tasks = Vec::new();
            for c in 0..SESSION_CLIENTS {
                let base = urls[c as usize % urls.len()].clone();
                let (done, failed, ca) = (done.clone(), failed.clone(), ca.clone());
                tasks.push(tokio::spawn(async move {
                    while done.fetch_add(1, Ordering::Relaxed) < n {
                        // A fresh client per sign-in: nothing of one session
                        // is carried into the next.
                        let ok = match client_for(&ca) {
                            Ok(http) => match csrf_pair(&http, &base).await {
                                Ok(csrf) => sign_in(&http, &base, &csrf).await.is_ok(),
                                Err(_) => false,
                            },
                            Err(_) => false,
                        };
                        if !ok {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
            anyhow::Ok(failed.load(Ordering::Relaxed))
        }
    };
    let live = |id: u64| async move {
        cluster
            .metric(id, "baa_sso_sessions")
            .await
            .unwrap_or(f64::NAN)
    };
    sign_ins(SESSION_WARMUP).await?;
    // The session gauge is refreshed by the reaper: wait for the warm-up's.
    let first = *ids.first().context("no node")?;
    poll_until(
        Duration::from_secs(120),
        "the warm-up's sessions counted",
        || async { (live(first).await >= SESSION_WARMUP as f64).then_some(()) },
    )
    .await;
    let before = node_state(cluster);
    let live_before = live(first).await;
    let started = Instant::now();
    let failed = sign_ins(args.sessions).await?;
    let took = started.elapsed().as_secs_f64();
    let made = args.sessions - failed;
    eprintln!(
        "  sessions: {made} made in {took:.0} s ({:.0}/s), {failed} failed",
        made as f64 / took
    );
    let want = live_before + made as f64;
    poll_until(Duration::from_secs(120), "the sessions counted", || async {
        (live(first).await >= want).then_some(())
    })
    .await;
    tokio::time::sleep(SESSION_SETTLE).await;
    let after = node_state(cluster);
    let per = |a: u64, b: u64| (a as f64 - b as f64) / made.max(1) as f64;
    let mib = |b: u64| format!("{:.1}", b as f64 / (1024.0 * 1024.0));
    let mut t = Table::new(
        format!(
            "Memory and disk per live session: {made} sessions made by password sign-ins ({:.0}/s, {failed} failed), {} s later",
            made as f64 / took,
            SESSION_SETTLE.as_secs()
        ),
        &[
            "node",
            "live sessions",
            "RSS MiB before",
            "after",
            "bytes/session",
            "disk MiB before",
            "after",
            "bytes/session",
        ],
    );
    for (i, id) in ids.iter().enumerate() {
        t.row(vec![
            id.to_string(),
            format!("{:.0}", live(*id).await),
            mib(before[i].rss),
            mib(after[i].rss),
            format!("{:.0}", per(after[i].rss, before[i].rss)),
            mib(before[i].disk),
            mib(after[i].disk),
            format!("{:.0}", per(after[i].disk, before[i].disk)),
        ]);
    }
    t.note("RSS: VmRSS of the node process, before the sessions (after a warm-up of sign-ins that takes each hashing thread's argon2 memory) and after them; bytes/session: the growth over the sessions made, the Raft log's entries for them included. target: at most 2 KB of memory per live session. disk: the node's data directory.");
    Ok(t)
}

/// One row of the flow table.
fn flow_row(alg: &str, clients: usize, rounds: &Rounds, proposals: f64) -> Vec<String> {
    let mut row = vec![alg.to_string(), clients.to_string()];
    for i in 0..3 {
        match rounds.runs.get(i) {
            Some(_) => row.extend(run_cells(&rounds.median(i))),
            None => row.extend(["-"; 4].map(String::from)),
        }
    }
    let ratio = |i| match rounds.runs.len() {
        3 => format!("{:.2}", rounds.ratio(i, 2)),
        _ => "-".into(),
    };
    row.extend([ratio(0), ratio(1), format!("{proposals:.2}")]);
    row
}

fn flow_table(args: &Args) -> Table {
    let mut t = Table::new(
        format!(
            "Login flow with a session (authorize form_post + PKCE + nonce → token client_secret_basic → ID token checked): baa vs oidc-provider; median of {} rounds, {}s per load per round in interleaved {} ms slices",
            args.rounds, args.seconds, args.slice_ms
        ),
        &[
            "alg", "clients",
            "baa 1 node/s", "p50 ms", "p99 ms", "CPU ms",
            "baa 3 nodes/s", "p50 ms", "p99 ms", "CPU ms",
            "oidc-provider/s", "p50 ms", "p99 ms", "CPU ms",
            "1 node/peer", "3 nodes/peer", "props/flow",
        ],
    );
    t.note("baa 1 node: every request to the leader; 3 nodes: authorize on one node, token on the next (the command forwarded to the leader). TLS on every baa hop; oidc-provider on plain HTTP, in memory, as it ships.");
    t.note("CPU ms: CPU time per completed flow of the server processes (baa: all three nodes; oidc-provider: its Node process) and the load generator.");
    t.note("x/peer: median over the rounds of the ratio of flows/s measured within each round. props/flow: Raft proposals per token request answered, all nodes, background writes included.");
    t.note("targets (RS256): 1 client >= 1.0x, 16 clients >= 3.0x, 64 clients >= 6.0x.");
    t
}

/// The nodes' thread groups, as named in `bench::thread_cpu`, and what
/// runs on them.
const THREAD_GROUPS: [(&str, &[&str]); 5] = [
    ("main", &["baa"]),
    ("HTTP workers", &["actix-rt"]),
    ("blocking pool", &["tokio-rt-worker", "tokio-runtime-w"]),
    ("log fsync", &["baa-log-flush"]),
    ("sled I/O", &["sled-io"]),
];

/// Where a baa load's CPU went, by thread group, in ms per flow.
fn thread_row(alg: &str, clients: usize, load: &str, r: &RunResult) -> Vec<String> {
    let per = |s: f64| format!("{:.3}", s * 1000.0 / r.ops.max(1) as f64);
    let groups = THREAD_GROUPS.map(|(_, names)| {
        names
            .iter()
            .filter_map(|n| r.node_threads.get(*n))
            .sum::<f64>()
    });
    let other = r.node_cpu_s - groups.iter().sum::<f64>();
    let mut row = vec![
        alg.to_string(),
        clients.to_string(),
        load.to_string(),
        per(r.node_cpu_s),
    ];
    row.extend(groups.iter().map(|g| per(*g)));
    row.extend([per(other), per(r.self_cpu_s)]);
    row
}

fn thread_table() -> Table {
    let mut columns = vec!["alg", "clients", "load", "nodes CPU ms"];
    columns.extend(THREAD_GROUPS.map(|(label, _)| label));
    columns.extend(["other", "generator"]);
    let mut t = Table::new(
        "Where the CPU of a flow goes: CPU ms per completed flow by thread group, all three nodes, the median round of each load",
        &columns,
    );
    t.note("main: the node's actix System thread (openraft's core, the state machine's apply, the cluster RPC client, actors) and unnamed threads (the password hashers, idle here). HTTP workers: the public, cluster and manage listeners (TLS, the handlers, sealing and opening tickets, the followers' append RPCs). blocking pool: the token endpoint's signatures (made while the redemption is replicated) and snapshot builds. log fsync: the Raft log's group commit. sled I/O: the state database's threads.");
    t.note("other: the nodes' CPU not in these groups (threads that started or ended within a slice, such as the blocking pool's). generator: the load generator (TLS client, ID token check).");
    t
}

/// Password sign-ins vs argon2id alone, per level.
async fn bench_signins(
    cluster: &Cluster,
    args: &Args,
    tallies: &mut Vec<(String, Tally)>,
) -> anyhow::Result<Table> {
    let ca = cluster.ca_pem();
    let nodes: Vec<String> = match args.signin_node {
        0 => cluster
            .ids()
            .iter()
            .map(|id| cluster.public_url(*id))
            .collect(),
        id => vec![cluster.public_url(id)],
    };
    let hash = Argon2::default()
        .hash_password(PASSWORD.as_bytes(), &SaltString::generate(&mut OsRng))
        .map_err(|e| anyhow!("hashing: {e}"))?
        .to_string();
    let max = args.signin_levels.iter().copied().max().unwrap_or(1);
    let mut clients = Vec::new();
    for c in 0..max {
        let http = client_for(&ca)?;
        let base = nodes[c % nodes.len()].clone();
        let csrf = csrf_pair(&http, &base).await?;
        clients.push(Arc::new((http, base, csrf)));
    }
    let pids = node_pids(cluster);
    let threads = args.hash_threads;
    let mut loads = vec![Load::new("argon2id alone", move |settle, slice| {
        let hash = hash.clone();
        Box::pin(argon2_rate(hash, threads, settle, slice))
    })];
    for &c in &args.signin_levels {
        let (clients, pids) = (&clients[..c], pids.clone());
        loads.push(Load::new(format!("{c} clients"), move |settle, slice| {
            let pids = pids.clone();
            Box::pin(async move {
                let op = |s: Arc<(reqwest::Client, String, String)>, _| async move {
                    sign_in(&s.0, &s.1, &s.2).await.map(drop)
                };
                Ok(closed_loop(clients, op, &pids, settle, slice).await)
            })
        }));
    }
    let before = server_times(cluster, &SERVER_SERIES).await;
    let rounds = interleave(&args.plan(), &loads, "sign-ins").await?;
    eprintln!(
        "  [server side: {}]",
        server_means(
            &SERVER_SERIES,
            &before,
            &server_times(cluster, &SERVER_SERIES).await
        )
    );
    print_resident(cluster, "sign-ins");
    let pure = rounds.median(0);
    let mut t = Table::new(
        format!(
            "Password sign-in vs argon2id verify alone (m=19456, t=2, p=1) on {} threads; median of {} rounds. argon2id alone: {:.1}/s ({:.1} CPU ms each)",
            args.hash_threads, args.rounds, pure.rate(), pure.cpu_ms_per_op()
        ),
        &["clients", "sign-ins/s", "p50 ms", "p99 ms", "CPU ms/sign-in", "argon2id alone/s", "sign-ins/argon2id"],
    );
    for (k, &c) in args.signin_levels.iter().enumerate() {
        let r = rounds.median(k + 1);
        t.row(vec![
            c.to_string(),
            format!("{:.1}", r.rate()),
            format!("{:.1}", r.p50_ms),
            format!("{:.1}", r.p99_ms),
            format!("{:.1}", r.cpu_ms_per_op()),
            format!("{:.1}", pure.rate()),
            format!("{:.2}", rounds.ratio(k + 1, 0)),
        ]);
        tallies.push((
            format!("password sign-in, {c} clients"),
            rounds.tally(k + 1),
        ));
    }
    t.note(match args.signin_node {
        0 => "sign-ins spread over every node (their hashing pools share this machine)".to_string(),
        id => format!(
            "sign-ins sent to node {id} (hashing pool: one thread per CPU, as on its own machine)"
        ),
    });
    t.note("sign-ins/argon2id: median over the rounds of the ratio measured within each round; target >= 0.85");
    Ok(t)
}

async fn run(args: &Args) -> anyhow::Result<bool> {
    if args.levels.contains(&0) || args.signin_levels.contains(&0) {
        bail!("levels must be at least 1 client");
    }
    let algs: Vec<(&str, Algorithm)> = args
        .algs
        .iter()
        .map(|a| {
            ALGS.iter()
                .find(|(n, _)| n == a)
                .copied()
                .ok_or_else(|| anyhow!("--algs: {a:?} is not RS256 or ES256"))
        })
        .collect::<anyhow::Result<_>>()?;
    println!("baa single sign-on benchmark");
    println!("machine: {}", machine());
    println!(
        "command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!("cluster: 3 baa nodes on loopback, TLS on every hop, each client with its own keep-alive connection and session");
    let mut opts = ClusterOptions {
        log_level: "warn".into(),
        ..ClusterOptions::default()
    };
    opts.limits.insert(
        "password_hash_threads".into(),
        (args.node_hash_threads as i64).into(),
    );
    if let Some(mib) = args.storage_cache_mib {
        opts.limits
            .insert("storage_cache_mib".into(), (mib as i64).into());
    }
    eprintln!("starting a 3-node cluster");
    let cluster = Cluster::start_with(opts).await;
    let names: Vec<&str> = algs.iter().map(|(n, _)| *n).collect();
    let secrets = setup(&cluster, &names).await?;
    let peer = match &args.oidc_provider {
        Some(dir) => {
            let p = OidcProvider::start(&args.node, dir).await?;
            println!(
                "peer: oidc-provider at {} (Node {})",
                p.url,
                node_version(&args.node)
            );
            Some(p)
        }
        None => None,
    };
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
    let mut flows = flow_table(args);
    let mut threads = thread_table();
    if !args.no_flows {
        for (alg, secret) in algs.iter().zip(&secrets) {
            eprintln!("login flows, {}", alg.0);
            bench_flows(
                &cluster,
                args,
                *alg,
                secret,
                peer.as_ref(),
                &mut tallies,
                (&mut flows, &mut threads),
            )
            .await?;
        }
    }
    let soaked = match args.soak {
        0 => Table::default(),
        _ => {
            eprintln!("soak: {} logins", args.soak);
            soak(&cluster, args, &secrets[0]).await?
        }
    };
    let per_session = match args.sessions {
        0 => Table::default(),
        n => {
            eprintln!("sessions: {n} password sign-ins");
            sessions(&cluster, args).await?
        }
    };
    let signins = match args.no_signins {
        true => Table::default(),
        false => {
            eprintln!("password sign-in vs argon2id alone");
            bench_signins(&cluster, args, &mut tallies).await?
        }
    };
    cluster.assert_no_panics();
    drop(peer);
    drop(cluster);
    print_all(&[&flows, &threads, &signins, &soaked, &per_session]);
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

fn node_version(node: &std::path::Path) -> String {
    std::process::Command::new(node)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
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
