//! A rolling restart, as an upgrade does it: each node of a 3-node agency
//! stopped (SIGTERM) and started again in turn while users sign in and log
//! in to a site. Clients retry only as README ("Clients and restarts")
//! says: a request that got no answer goes to the next node, a 503 is
//! tried again after its `Retry-After`. No user request may fail and no
//! session may be lost.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baa_cluster_tests::bench::{client_for, set_cookie, sso_cookies};
use baa_cluster_tests::federation::approval;
use baa_cluster_tests::sso::{
    add_site, create_user, query_mode_request, query_params, TestSite, CSRF_COOKIE,
};
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use reqwest::header::{COOKIE, LOCATION, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde_json::json;

const PASSWORD: &str = "correct horse battery";
const REDIRECT: &str = "https://shop.baa.localtest:9443/cb";
const CLIENTS: usize = 6;
/// How long a client goes on retrying one request before it counts it failed.
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);

/// The site's authorization request (answer in the query) and its verifier.
fn authorize_query() -> (String, String) {
    query_mode_request("shop", REDIRECT)
}

/// A user's browser (and the site's back end, for redemptions) that retries
/// as README documents.
struct User {
    http: reqwest::Client,
    nodes: Vec<String>,
    at: usize,
    retried: usize,
}

impl User {
    /// Sends the request `build` makes for a node's base URL: to the next
    /// node when no answer came, again after `Retry-After` on a 503, for at
    /// most [`GIVE_UP_AFTER`].
    async fn send(&mut self, build: impl Fn(&str) -> RequestBuilder) -> Result<Response, String> {
        let end = Instant::now() + GIVE_UP_AFTER;
        loop {
            let why = match build(&self.nodes[self.at]).send().await {
                Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    let wait = r
                        .headers()
                        .get(RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1);
                    let why = format!("503 {}", r.text().await.unwrap_or_default());
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    why
                }
                Ok(r) => return Ok(r),
                Err(e) => {
                    self.at = (self.at + 1) % self.nodes.len();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    format!("no answer: {e}")
                }
            };
            self.retried += 1;
            if Instant::now() >= end {
                return Err(why);
            }
        }
    }

    /// A password sign-in: the new session's `Cookie` value.
    async fn sign_in(&mut self, user: &str) -> Result<String, String> {
        let http = self.http.clone();
        let page = self.send(|b| http.get(format!("{b}/sso/signin"))).await?;
        let csrf = set_cookie(&page, CSRF_COOKIE).ok_or("no CSRF cookie")?;
        let _ = page.bytes().await;
        let form = [
            ("csrf", csrf.as_str()),
            ("username", user),
            ("password", PASSWORD),
        ];
        let resp = self
            .send(|b| {
                http.post(format!("{b}/sso/signin"))
                    .header(COOKIE, format!("{CSRF_COOKIE}={csrf}"))
                    .form(&form)
            })
            .await?;
        if resp.status() != StatusCode::SEE_OTHER {
            return Err(format!("sign-in: {}", resp.status()));
        }
        let session = sso_cookies(&resp).ok_or("no session cookies")?;
        Ok(format!("{CSRF_COOKIE}={csrf}; {session}"))
    }

    /// A login at the site with the session `cookies`: the ticket issued and
    /// redeemed.
    async fn login(&mut self, cookies: &str, site: &TestSite) -> Result<(), String> {
        let (query, verifier) = authorize_query();
        let http = self.http.clone();
        let resp = self
            .send(|b| {
                http.get(format!("{b}/sso/authorize?{query}"))
                    .header(COOKIE, cookies)
            })
            .await?;
        let to = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Some(code) = query_params(to).get("code").cloned() else {
            return Err(format!("authorize: {} {to}", resp.status()));
        };
        let secret = site.secret.clone().unwrap_or_default();
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
        ];
        let resp = self
            .send(|b| {
                http.post(format!("{b}/sso/token"))
                    .basic_auth("shop", Some(&secret))
                    .form(&form)
            })
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(()),
            s => Err(format!(
                "redeem: {s} {}",
                resp.text().await.unwrap_or_default()
            )),
        }
    }
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    logins: AtomicUsize,
    retried: AtomicUsize,
    failures: Mutex<Vec<String>>,
    sessions: Mutex<Vec<String>>,
}

/// Client `c`: signs its user in (again every tenth round) and logs in to
/// the site, until `stop`.
async fn run_client(
    mut user: User,
    c: usize,
    site: TestSite,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let name = format!("user-{c}");
    let mut cookies = None;
    let mut round = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if round.is_multiple_of(10) || cookies.is_none() {
            match user.sign_in(&name).await {
                Ok(s) => {
                    tally.sessions.lock().unwrap().push(s.clone());
                    cookies = Some(s);
                }
                Err(e) => tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{name} sign-in: {e}")),
            }
        }
        if let Some(s) = &cookies {
            match user.login(s, &site).await {
                Ok(()) => {
                    tally.logins.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{name} login: {e}")),
            }
        }
        round += 1;
    }
    tally.retried.fetch_add(user.retried, Ordering::Relaxed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_restarted_in_turn_under_load_fails_no_request_and_loses_no_session() {
    let mut cluster = Cluster::start_with(ClusterOptions::nodes(3)).await;
    let site = add_site(
        &cluster,
        json!({"client_id": "shop", "redirect_uris": [REDIRECT], "allowed_scopes": ["openid"]}),
    )
    .await;
    let nodes: Vec<String> = cluster
        .ids()
        .iter()
        .map(|i| cluster.public_url(*i))
        .collect();
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let name = format!("user-{c}");
        create_user(&cluster, &name, PASSWORD).await;
        let mut user = User {
            http: client_for(&cluster.ca_pem()).unwrap(),
            nodes: nodes.clone(),
            at: c % nodes.len(),
            retried: 0,
        };
        // Each user trusts the site once, before the load.
        let cookies = user.sign_in(&name).await.unwrap();
        let csrf = cookies
            .split("; ")
            .find_map(|c| c.strip_prefix(&format!("{CSRF_COOKIE}=")))
            .unwrap()
            .to_string();
        let form = approval(&authorize_query().0, &csrf).unwrap();
        let http = user.http.clone();
        let approved = user
            .send(|b| {
                http.post(format!("{b}/sso/consent"))
                    .header(COOKIE, &cookies)
                    .form(&form)
            })
            .await
            .unwrap();
        assert_eq!(approved.status(), StatusCode::SEE_OTHER);
        tasks.push(tokio::spawn(run_client(
            user,
            c,
            site.clone(),
            tally.clone(),
            stop.clone(),
        )));
    }

    let progress = |n: usize| {
        let tally = tally.clone();
        async move {
            let from = tally.logins.load(Ordering::Relaxed);
            poll_until(Duration::from_secs(60), "logins go on", || {
                let tally = tally.clone();
                async move { (tally.logins.load(Ordering::Relaxed) >= from + n).then_some(()) }
            })
            .await;
        }
    };
    progress(50).await;
    for id in cluster.ids() {
        let status = cluster.stop(id).await;
        assert!(status.success(), "node {id} stopped with {status}");
        progress(20).await;
        cluster.restart(id).await;
        let admin = cluster.admin(id);
        poll_until(
            Duration::from_secs(60),
            "the restarted node is ready",
            || {
                let admin = admin.clone();
                async move { (admin.readyz().await.ok()? == StatusCode::OK).then_some(()) }
            },
        )
        .await;
        progress(50).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }

    let failures = tally.failures.lock().unwrap().clone();
    let sessions = tally.sessions.lock().unwrap().clone();
    println!(
        "{} logins and {} sign-ins during the restarts, {} requests retried, {} failed",
        tally.logins.load(Ordering::Relaxed),
        sessions.len(),
        tally.retried.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "failed user requests: {failures:#?}");

    // Every session made during the restarts holds on every node.
    let http = client_for(&cluster.ca_pem()).unwrap();
    for base in &nodes {
        for s in &sessions {
            let resp = http
                .get(format!("{base}/auth/verify"))
                .header(COOKIE, s)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "a session lost at {base}");
        }
    }
}
