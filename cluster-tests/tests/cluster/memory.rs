//! A node's resident memory: idle after start-up, and after 20,000 logins
//! (a site's authorization request with a session and trust, the ticket
//! redeemed at the token endpoint), against the bound README's "Memory"
//! section gives for its configuration.

use std::time::{Duration, Instant};

use baa_cluster_tests::bench::{client_for, csrf_pair, password_sign_in};
use baa_cluster_tests::federation::approval;
use baa_cluster_tests::sso::{
    add_site, create_user, query_mode_request, query_params, redeem, CSRF_COOKIE,
};
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use futures::StreamExt;
use reqwest::header::{COOKIE, LOCATION};
use reqwest::StatusCode;
use serde_json::json;

const PASSWORD: &str = "correct horse battery";
const REDIRECT: &str = "https://shop.baa.localtest:9443/cb";
const LOGINS: usize = 20_000;
/// An idle node's resident memory, at most (README, "Memory").
const IDLE_MIB: f64 = 60.0;
/// sled's page cache configured for the node under test.
const CACHE_MIB: u64 = 32;
/// Memory a password-hashing thread holds while it hashes (argon2id, 19 MiB).
const HASH_THREAD_MIB: f64 = 20.0;

/// Resident memory of process `pid` in MiB (`VmRSS`).
fn resident_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

/// The site's authorization request (answer in the query) and its verifier.
fn authorize_query() -> (String, String) {
    query_mode_request("shop", REDIRECT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_idles_within_60_mib_and_stays_in_its_bound_after_20000_logins() {
    let mut opts = ClusterOptions::nodes(1);
    opts.limits
        .insert("storage_cache_mib".into(), (CACHE_MIB as i64).into());
    opts.limits.insert("password_hash_threads".into(), 1.into());
    let cluster = Cluster::start_with(opts).await;
    let pid = cluster.node(1).pid().expect("running");

    // Idle: the start-up's garbage is given back within a trim or two.
    let idle = poll_until(
        Duration::from_secs(45),
        &format!("an idle node at most {IDLE_MIB} MiB resident"),
        || async { Some(resident_mib(pid)).filter(|m| *m <= IDLE_MIB) },
    )
    .await;
    println!("idle: {idle:.1} MiB resident");

    create_user(&cluster, "alice", PASSWORD).await;
    let site = add_site(
        &cluster,
        json!({"client_id": "shop", "redirect_uris": [REDIRECT], "allowed_scopes": ["openid"]}),
    )
    .await;
    let http = client_for(&cluster.ca_pem()).unwrap();
    let base = cluster.public_url(1);
    let csrf = csrf_pair(&http, &base).await.unwrap();
    let session = password_sign_in(&http, &base, &csrf, ("alice", PASSWORD))
        .await
        .unwrap();
    let cookies = format!("{CSRF_COOKIE}={csrf}; {session}");
    let approved = http
        .post(format!("{base}/sso/consent"))
        .header(COOKIE, &cookies)
        .form(&approval(&authorize_query().0, &csrf).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(approved.status(), StatusCode::SEE_OTHER);

    let started = Instant::now();
    let ok = futures::stream::iter(0..LOGINS)
        .map(|_| {
            let (http, base, cookies, site) = (&http, &base, &cookies, &site);
            async move {
                let (query, verifier) = authorize_query();
                let resp = http
                    .get(format!("{base}/sso/authorize?{query}"))
                    .header(COOKIE, cookies)
                    .send()
                    .await
                    .ok()?;
                let to = resp.headers().get(LOCATION)?.to_str().ok()?.to_string();
                let code = query_params(&to).get("code")?.clone();
                let (status, _) = redeem(http, base, site, &code, Some(&verifier)).await;
                (status == StatusCode::OK).then_some(())
            }
        })
        .buffer_unordered(8)
        .filter(|r| futures::future::ready(r.is_some()))
        .count()
        .await;
    let took = started.elapsed();
    let after = resident_mib(pid);
    println!(
        "{ok} of {LOGINS} logins in {took:.1?} ({:.0}/s): {after:.1} MiB resident right after",
        ok as f64 / took.as_secs_f64()
    );
    assert_eq!(ok, LOGINS);

    let bound = IDLE_MIB + CACHE_MIB as f64 + HASH_THREAD_MIB;
    let settled = poll_until(
        Duration::from_secs(45),
        &format!("at most {bound} MiB resident after the logins"),
        || async { Some(resident_mib(pid)).filter(|m| *m <= bound) },
    )
    .await;
    println!("after {LOGINS} logins: {settled:.1} MiB resident (bound {bound} MiB)");
}
