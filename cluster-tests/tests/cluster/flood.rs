//! H1, acceptance 5 and issue 15's acceptance 4: anonymous floods. Ten
//! thousand unauthenticated requests to every endpoint of the public
//! listener that takes them (the list below follows the router, the
//! `configure` functions of `node/src/http/`) grow the replicated state by
//! a small bound — only what throttling itself must replicate and the
//! device grants the rate limits let through — are answered promptly
//! (429/503 where a limit applies, never an endless queue), and leave the
//! node's resident memory within a bound. The figures are printed and
//! recorded in RELIABILITY.md ("Anonymous requests").

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use baa_cluster_tests::harness::cli_gateway_app;
use baa_cluster_tests::sso::{self, Agent};
use baa_cluster_tests::upstream::Upstream;
use baa_cluster_tests::{Cluster, ClusterOptions};
use futures::StreamExt;
use reqwest::StatusCode;

/// Requests per endpoint.
const REQUESTS: usize = 10_000;
/// Requests in flight at once.
const CONCURRENCY: usize = 32;

/// The log entries a flood lasting `elapsed` from one address may add,
/// from the node's limits (`node/src/limits.rs`, the `[sso]` defaults):
/// - failed sign-ins are replicated (one `RecordFailedSignIn` each) until
///   the source is locked: `max_source_failures` (50), plus the one that
///   locks it and the requests already past the lock check when it lands
///   (at most `CONCURRENCY`); each time the lock runs out (first after `lockout_s`/16 = 18.75 s,
///   twice as long each further time) one more failure renews it, again
///   with up to `CONCURRENCY` in flight;
/// - device authorizations of the public client: `device_per_source`
///   lets 20 through at once, then one per 6 s;
/// - the reaper's sweeps, one round per 15 s, a few entries when there is
///   something to purge, and a key made now and then: 4 per round;
/// - nothing else: every other anonymous request is refused on the node
///   (made-up secrets are looked up before anything is proposed).
fn log_bound(elapsed: Duration) -> u64 {
    let s = elapsed.as_secs_f64();
    let c = CONCURRENCY as f64;
    let mut renewals = 0.0;
    let mut lock = 300.0 / 16.0;
    let mut t = lock;
    while t < s {
        renewals += 1.0;
        lock *= 2.0;
        t += lock;
    }
    let sign_in = 50.0 + (1.0 + renewals) * (1.0 + c);
    let device = 20.0 + s / 6.0;
    let reaper = 4.0 * (s / 15.0).ceil();
    (sign_in + device + reaper).ceil() as u64
}

/// How much the leader's data directory may grow: every entry the log bound
/// allows at 4 KiB (an entry and the records it writes are well under
/// that), plus 32 MiB for sled (it writes whole segments and reclaims them
/// later) — a bound that does not grow with the number of requests.
fn disk_bound_bytes(entries: u64) -> u64 {
    entries * 4096 + 32 * 1024 * 1024
}

/// Resident memory the flood may add to the node: the argon2 memory each
/// hashing thread keeps (19 MiB; one thread per CPU by default) and 32 MiB
/// for everything else (connections, caches, the allocator's slack).
fn rss_bound_kib() -> u64 {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() as u64);
    (32 + 20 * threads) * 1024
}
/// No single answer may take longer (a queue without end would).
const SLOWEST_ANSWER: Duration = Duration::from_secs(15);

/// How the answers to one endpoint's flood came back.
#[derive(Default)]
struct Tally {
    statuses: BTreeMap<u16, usize>,
    slowest: Duration,
    /// Requests that got no answer after every retry.
    errors: usize,
    /// Sends repeated after getting no answer.
    retried: usize,
}

/// Times a request that got no answer is sent again.
const RETRIES: usize = 2;

async fn flood<F, Fut>(request: F) -> Tally
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let mut tally = Tally::default();
    let request = &request;
    let mut answers = futures::stream::iter(0..REQUESTS)
        .map(|i| async move {
            let started = Instant::now();
            let mut retries = 0;
            // A request that got no answer at all (a kept-alive connection
            // the server closed as it was reused) is sent again, as README's
            // "Clients and restarts" tells clients to; an answer of any
            // status counts as it is.
            let status = loop {
                match request(i).await {
                    Ok(resp) => {
                        let s = resp.status().as_u16();
                        let _ = resp.bytes().await;
                        break Some(s);
                    }
                    Err(_) if retries < RETRIES => retries += 1,
                    Err(_) => break None,
                }
            };
            (status, retries, started.elapsed())
        })
        .buffer_unordered(CONCURRENCY);
    while let Some((status, retries, took)) = answers.next().await {
        match status {
            Some(s) => *tally.statuses.entry(s).or_default() += 1,
            None => tally.errors += 1,
        }
        tally.retried += retries;
        tally.slowest = tally.slowest.max(took);
    }
    tally
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The replicated state as one node sees it.
#[derive(Debug, Clone, Copy)]
struct StateFigures {
    applied: u64,
    committed: u64,
    data_bytes: u64,
    sessions: u64,
}

/// Bytes under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

async fn state_of(cluster: &Cluster, id: u64) -> StateFigures {
    let status = cluster.status(id).await;
    let metric =
        |name: &'static str| async move { cluster.metric(id, name).await.unwrap_or(0.0) as u64 };
    StateFigures {
        applied: status.applied_index.unwrap_or(0),
        committed: metric("baa_raft_committed_index").await,
        data_bytes: dir_bytes(&cluster.node(id).dir().join("data")),
        sessions: metric("baa_sso_sessions").await,
    }
}

/// Every endpoint of the public listener an anonymous client can reach,
/// flooded with 10,000 requests each from one address, concurrently 32 at a
/// time, against node 2 (a follower, so that its writes are forwarded); the
/// replicated state and the node's memory before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_anonymous_floods_do_not_grow_the_log_or_the_node() {
    let upstream = Upstream::start().await;
    let mut opts = ClusterOptions::default();
    opts.gateway.push(cli_gateway_app(upstream.port));
    let cluster = Cluster::start_with(opts).await;
    sso::add_cli_client(&cluster).await;
    sso::add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let node = 2;
    let base = cluster.public_url(node);
    let pid = cluster.node(node).pid().expect("node pid");
    let mut agent = Agent::new(&cluster);
    // Redirects are not followed: an anonymous client gets no further.
    let http = agent.http().clone();
    let page = agent.get(&format!("{base}/sso/signin")).await;
    let csrf = page.inputs().get("csrf").cloned().expect("csrf");
    let cookie = format!("__Host-baa_csrf={csrf}");
    let made_up = |i: usize| format!("made-up-{i:08}-{}", "x".repeat(24));
    let authorize = format!(
        "{base}/sso/authorize?client_id=baa-cli&response_type=code&scope=openid\
         &redirect_uri=http://127.0.0.1:9/callback&code_challenge={}&code_challenge_method=S256",
        "A".repeat(43)
    );

    let started = Instant::now();
    let rss_before = rss_kib(pid);
    let leader = cluster.leader().await;
    let state_before = state_of(&cluster, leader).await;
    let log_before = cluster.last_log_index().await;
    let mut report = Vec::new();
    macro_rules! endpoint {
        ($name:expr, $build:expr) => {{
            let before = cluster.last_log_index().await;
            let t = Instant::now();
            let tally = flood($build).await;
            let took = t.elapsed();
            let grew = cluster.last_log_index().await.saturating_sub(before);
            println!(
                "{:<40} log +{grew:<4} rss {:>4} MiB  {:>5.1} s  slowest {:>6} ms  errors {}  retried {}  {:?}",
                $name,
                rss_kib(pid) / 1024,
                took.as_secs_f64(),
                tally.slowest.as_millis(),
                tally.errors,
                tally.retried,
                tally.statuses
            );
            assert_eq!(tally.errors, 0, "{}: requests failed", $name);
            assert!(
                tally.slowest <= SLOWEST_ANSWER,
                "{}: an answer took {:?}",
                $name,
                tally.slowest
            );
            assert!(
                tally.statuses.keys().all(|s| *s < 500 || *s == 503),
                "{}: server errors {:?}",
                $name,
                tally.statuses
            );
            report.push(($name, grew, tally));
        }};
    }

    // Discovery, keys, health, the home page, an unknown route.
    endpoint!("GET /.well-known/openid-configuration", |_| http
        .get(format!("{base}/.well-known/openid-configuration"))
        .send());
    endpoint!("GET /.well-known/jwks.json", |_| http
        .get(format!("{base}/.well-known/jwks.json"))
        .send());
    endpoint!("GET /.well-known/openid-federation", |_| http
        .get(format!("{base}/.well-known/openid-federation"))
        .send());
    endpoint!("GET /healthz", |_| http
        .get(format!("{base}/healthz"))
        .send());
    endpoint!("GET /readyz", |_| http.get(format!("{base}/readyz")).send());
    endpoint!("GET /", |_| http.get(format!("{base}/")).send());
    endpoint!("GET /no/such/route", |i| http
        .get(format!("{base}/no/such/route/{i}"))
        .send());
    // The browser's pages and forms, with no session.
    endpoint!("GET /sso/signin", |_| http
        .get(format!("{base}/sso/signin"))
        .send());
    endpoint!("POST /sso/signin (wrong password)", |i| http
        .post(format!("{base}/sso/signin"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("username", &format!("user{}", i % 500)),
            ("password", "wrong password"),
        ])
        .send());
    endpoint!("GET /sso/authorize", |_| http.get(&authorize).send());
    endpoint!("POST /sso/authorize", |_| http
        .post(format!("{base}/sso/authorize"))
        .form(&[
            ("client_id", "shop"),
            ("response_type", "code"),
            ("scope", "openid"),
            ("redirect_uri", "https://shop.baa.localtest:9443/cb"),
        ])
        .send());
    endpoint!("POST /sso/consent (no session)", |_| http
        .post(format!("{base}/sso/consent"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str()), ("client_id", "baa-cli")])
        .send());
    endpoint!("GET /sso/logout (no session)", |_| http
        .get(format!("{base}/sso/logout?client_id=shop"))
        .send());
    endpoint!("POST /sso/logout (no session)", |_| http
        .post(format!("{base}/sso/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send());
    // The OAuth endpoints, with made-up secrets.
    endpoint!("POST /sso/token (made-up code)", |i| http
        .post(format!("{base}/sso/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "baa-cli"),
            ("code", &made_up(i)),
            ("redirect_uri", "http://127.0.0.1:9/callback"),
            ("code_verifier", &"v".repeat(43)),
        ])
        .send());
    endpoint!("POST /sso/token (made-up sealed code)", |i| http
        .post(format!("{base}/sso/token"))
        .form(&[
            ("grant_type", "authorization_code"),
            ("client_id", "baa-cli"),
            ("code", &format!("t1.{}", made_up(i))),
            ("redirect_uri", "http://127.0.0.1:9/callback"),
            ("code_verifier", &"v".repeat(43)),
        ])
        .send());
    endpoint!("POST /sso/token (made-up refresh)", |i| http
        .post(format!("{base}/sso/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", "baa-cli"),
            ("refresh_token", &made_up(i)),
        ])
        .send());
    endpoint!("POST /sso/token (made-up device)", |i| http
        .post(format!("{base}/sso/token"))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", "baa-cli"),
            ("device_code", &made_up(i)),
        ])
        .send());
    endpoint!("POST /sso/token (wrong client secret)", |i| http
        .post(format!("{base}/sso/token"))
        .basic_auth("shop", Some(made_up(i)))
        .form(&[("grant_type", "authorization_code"), ("code", "x")])
        .send());
    endpoint!("POST /sso/device_authorization", |_| http
        .post(format!("{base}/sso/device_authorization"))
        .form(&[("client_id", "baa-cli"), ("scope", "openid")])
        .send());
    endpoint!("GET /device (no session)", |i| http
        .get(format!("{base}/device?user_code=BCDF{i:04}"))
        .send());
    endpoint!("POST /device (no session)", |i| http
        .post(format!("{base}/device"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("user_code", &format!("BCDF{i:04}"))
        ])
        .send());
    endpoint!("POST /device/decide (no session)", |i| http
        .post(format!("{base}/device/decide"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("user_code", &format!("BCDF{i:04}")),
            ("decision", "approve"),
        ])
        .send());
    endpoint!("POST /sso/revoke (made-up token)", |i| http
        .post(format!("{base}/sso/revoke"))
        .form(&[("client_id", "baa-cli"), ("token", &made_up(i))])
        .send());
    endpoint!("POST /sso/introspect (made-up)", |i| http
        .post(format!("{base}/sso/introspect"))
        .basic_auth("shop", Some(made_up(i)))
        .form(&[("token", &made_up(i))])
        .send());
    endpoint!("POST /sso/session_status (made-up)", |i| http
        .post(format!("{base}/sso/session_status"))
        .form(&[("client_id", "baa-cli"), ("reference", &made_up(i))])
        .send());
    endpoint!("GET /sso/userinfo (made-up token)", |i| http
        .get(format!("{base}/sso/userinfo"))
        .bearer_auth(made_up(i))
        .send());
    // Forward-auth, the gateway, federation.
    endpoint!("GET /auth/verify (made-up token)", |i| http
        .get(format!("{base}/auth/verify?app=tools"))
        .bearer_auth(made_up(i))
        .send());
    endpoint!("GET /auth/verify (made-up cookies)", |i| http
        .get(format!("{base}/auth/verify"))
        .header(
            "cookie",
            format!("__Host-baa_session={}; __Secure-baa_ref=a.b.c", made_up(i)),
        )
        .send());
    endpoint!("GET /auth/app/tools/start", |_| http
        .get(format!("{base}/auth/app/tools/start?rd=/"))
        .send());
    endpoint!("GET /auth/app/tools/grant (no session)", |i| http
        .get(format!("{base}/auth/app/tools/grant?state={}", made_up(i)))
        .send());
    endpoint!("GET /auth/app/tools/callback (made-up)", |i| http
        .get(format!(
            "{base}/auth/app/tools/callback?code={}",
            made_up(i)
        ))
        .header("cookie", format!("__Host-baa_app_state={}", made_up(i)))
        .send());
    endpoint!("GET /gw/app/x (made-up token)", |i| http
        .get(format!("{base}/gw/app/x"))
        .bearer_auth(made_up(i))
        .send());
    endpoint!("GET /federation/discover (no peer)", |_| http
        .get(format!("{base}/federation/discover?peer=https://evil.test"))
        .send());
    endpoint!("POST /federation/callback (made-up)", |i| http
        .post(format!("{base}/federation/callback"))
        .header("cookie", format!("__Host-baa_fed={}", made_up(i)))
        .form(&[("code", made_up(i)), ("state", made_up(i))])
        .send());
    endpoint!("POST /federation/backchannel-logout", |i| http
        .post(format!("{base}/federation/backchannel-logout"))
        .form(&[("logout_token", format!("a.{}.c", made_up(i)))])
        .send());

    let elapsed = started.elapsed();
    let grew = cluster.last_log_index().await.saturating_sub(log_before);
    let state_after = state_of(&cluster, leader).await;
    let rss_after = rss_kib(pid);
    let bound = log_bound(elapsed);
    let disk_bound = disk_bound_bytes(bound);
    let disk_grew = state_after
        .data_bytes
        .saturating_sub(state_before.data_bytes);
    println!(
        "the whole flood: {} endpoints × {REQUESTS} requests in {:.0} s",
        report.len(),
        elapsed.as_secs_f64()
    );
    println!(
        "leader {leader}: log +{grew} entries (bound {bound}); applied {} → {}, committed {} → {}; \
         data directory {} KiB → {} KiB (+{} KiB, bound {} KiB); sessions {} → {}",
        state_before.applied,
        state_after.applied,
        state_before.committed,
        state_after.committed,
        state_before.data_bytes / 1024,
        state_after.data_bytes / 1024,
        disk_grew / 1024,
        disk_bound / 1024,
        state_before.sessions,
        state_after.sessions,
    );
    println!(
        "node {node} resident {} MiB → {} MiB (bound +{} MiB)",
        rss_before / 1024,
        rss_after / 1024,
        rss_bound_kib() / 1024
    );
    assert!(
        grew <= bound,
        "the log grew by {grew} entries (bound {bound})"
    );
    assert!(
        state_after.applied.saturating_sub(state_before.applied) <= bound,
        "{state_before:?} → {state_after:?}"
    );
    assert!(
        disk_grew <= disk_bound,
        "the data directory grew by {disk_grew} bytes"
    );
    assert_eq!(
        state_after.sessions, state_before.sessions,
        "anonymous requests made sessions"
    );
    assert!(
        rss_after.saturating_sub(rss_before) <= rss_bound_kib(),
        "resident memory grew from {rss_before} KiB to {rss_after} KiB"
    );
    // Only the throttled writers wrote, and they said "too many" or "busy"
    // rather than queue.
    for (name, grew, tally) in &report {
        let writer = name.contains("POST /sso/signin") || name.contains("device_authorization");
        if writer {
            let limited = tally.statuses.get(&429).copied().unwrap_or(0)
                + tally.statuses.get(&503).copied().unwrap_or(0);
            assert!(
                limited > 0,
                "{name}: never 429 or 503: {:?}",
                tally.statuses
            );
        } else {
            // The reaper's sweep may land while any endpoint is flooded.
            assert!(*grew <= 8, "{name}: the log grew by {grew}");
        }
    }
    assert!(
        upstream.requests().is_empty(),
        "a made-up token reached the upstream"
    );
    cluster.assert_no_panics();
}

/// Made-up secrets never reach Raft, but a real one issued a moment ago on
/// another node is still found (the lookup reads through to the leader).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_a_made_up_device_code_is_refused_without_a_write() {
    let cluster = Cluster::start(3).await;
    sso::add_cli_client(&cluster).await;
    let started: serde_json::Value = cluster
        .http()
        .post(format!(
            "{}/sso/device_authorization",
            cluster.public_url(1)
        ))
        .form(&[("client_id", "baa-cli"), ("scope", "openid")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let device_code = started["device_code"].as_str().expect("device code");
    let poll = |code: String, node: u64| {
        let http = cluster.http().clone();
        let url = format!("{}/sso/token", cluster.public_url(node));
        async move {
            let resp = http
                .post(url)
                .form(&[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("client_id", "baa-cli"),
                    ("device_code", code.as_str()),
                ])
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            (
                status,
                body["error"].as_str().unwrap_or_default().to_string(),
            )
        }
    };
    // The real one, at once and on another node: pending.
    let (status, error) = poll(device_code.to_string(), 3).await;
    assert_eq!(
        (status, error.as_str()),
        (StatusCode::BAD_REQUEST, "authorization_pending")
    );
    let before = cluster.last_log_index().await;
    for i in 0..50 {
        let (status, error) = poll(format!("made-up-{i}"), 2).await;
        assert_eq!(
            (status, error.as_str()),
            (StatusCode::BAD_REQUEST, "invalid_grant")
        );
    }
    let grew = cluster.last_log_index().await - before;
    assert_eq!(grew, 0, "50 made-up device codes added {grew} log entries");
    cluster.assert_no_panics();
}
