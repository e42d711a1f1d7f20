//! Acceptance 1, 2 and 7 in a real headless Chromium against a 3-node
//! cluster and two demo partner sites (`shop.baa.localtest`,
//! `news.baa.localtest`): the first login goes through the sign-in and trust
//! pages, later logins of any site are seamless, and signing out at the
//! agency reaches every node and both sites.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use baa_cluster_tests::browser::DEFAULT_DEADLINE;
use baa_cluster_tests::harness::{AGENCY_HOST, CONVERGE_DEADLINE, COOKIE_DOMAIN};
use baa_cluster_tests::partner::PartnerSite;
use baa_cluster_tests::sso::{
    self, Agent, AuthRequest, SsoCookies, TestSite, REFERENCE_COOKIE, SESSION_COOKIE,
};
use baa_cluster_tests::{poll_until, Browser, Cluster};
use baa_proto::model::NodeId;
use reqwest::StatusCode;

const HOST_RULES: &str = "MAP *.localtest 127.0.0.1";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";
/// The display name and email `sso::create_user` gives `alice`.
const DISPLAY_NAME: &str = "alice Example";
const EMAIL: &str = "alice@example.test";
/// How long a sign-out may take to reach every node.
const LOGOUT_BOUND: Duration = Duration::from_secs(1);
/// How often the old cookie is tried on every node after the sign-out.
const LOGOUT_PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// Unwraps a browser step, printing the whole error chain (URL and page source).
fn must<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// Dropped in field order: the browser first, the cluster last.
struct Fixture {
    browser: Browser,
    shop: PartnerSite,
    news: PartnerSite,
    cluster: Cluster,
}

async fn fixture() -> Fixture {
    let cluster = Cluster::start(3).await;
    sso::create_user(&cluster, USER, PASSWORD).await;
    // The demo's choice: each site takes ID tokens of one of the algorithms
    // besides RS256, and verifies them against the JWKS with its own code.
    let shop = PartnerSite::start_with_alg(&cluster, "shop", "shop.baa.localtest", "ES256").await;
    let news = PartnerSite::start_with_alg(&cluster, "news", "news.baa.localtest", "EdDSA").await;
    let browser = must("starting the browser", Browser::start(HOST_RULES).await);
    Fixture {
        browser,
        shop,
        news,
        cluster,
    }
}

/// The login parameters chosen on the trust page.
#[derive(Debug, Clone, Copy)]
struct Choice {
    pseudonym: bool,
    share_name: bool,
    share_email: bool,
}

/// The node whose public port `url` names.
fn node_of(cluster: &Cluster, url: &str) -> NodeId {
    let u = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(u.host_str(), Some(AGENCY_HOST), "{url} is not the agency");
    let port = u.port().unwrap_or(443);
    cluster
        .ids()
        .into_iter()
        .find(|&id| cluster.node(id).public_addr().port() == port)
        .unwrap_or_else(|| panic!("no node listens on the port of {url}"))
}

fn on_agency(url: &str) -> bool {
    url.starts_with(&format!("https://{AGENCY_HOST}:"))
}

/// One metric of every node.
async fn per_node(cluster: &Cluster, name: &str) -> BTreeMap<NodeId, f64> {
    let mut out = BTreeMap::new();
    for id in cluster.ids() {
        out.insert(id, cluster.metric(id, name).await.unwrap_or(0.0));
    }
    out
}

async fn sum_over_nodes(cluster: &Cluster, name: &str) -> f64 {
    per_node(cluster, name).await.values().sum()
}

/// Starts a login at `site` (from its home page) and waits until the browser
/// is on the agency; returns that URL.
async fn start_login(b: &Browser, site: &PartnerSite) -> String {
    must(
        "opening the site",
        b.goto(&format!("{}/", site.url())).await,
    );
    must("the site's sign-in link", b.click("#signin").await);
    must(
        "reaching the agency",
        b.wait_for_url(on_agency, "the agency", DEFAULT_DEADLINE)
            .await,
    )
}

/// Fills in the trust page and approves it.
async fn approve_trust(b: &Browser, choice: Choice) {
    must(
        "the trust page",
        b.wait_for_element("#trust", DEFAULT_DEADLINE).await,
    );
    let radio = if choice.pseudonym {
        "#account_pseudonym"
    } else {
        "#account_username"
    };
    must("choosing the account name", b.click(radio).await);
    must(
        "the name checkbox",
        b.set_checked("#share_name", choice.share_name).await,
    );
    must(
        "the email checkbox",
        b.set_checked("#share_email", choice.share_email).await,
    );
    must("approving", b.click("#approve").await);
}

/// Waits until the browser is on `site`'s signed-in home page.
async fn wait_signed_in(b: &Browser, site: &PartnerSite) {
    let home = format!("{}/", site.url());
    must(
        "returning to the site",
        b.wait_for_url(|u| u == home, &home, DEFAULT_DEADLINE).await,
    );
    must(
        "the site's signed-in page",
        b.wait_for_element("#claims", DEFAULT_DEADLINE).await,
    );
}

/// A claim shown on the site's page, if any.
async fn claim(b: &Browser, name: &str) -> Option<String> {
    must("reading a claim", b.text(&format!("#claim-{name}")).await)
}

/// First login at `site`: the agency's sign-in page, then its trust page.
/// Returns the node that served the sign-in page.
async fn first_login_with_password(
    b: &Browser,
    cluster: &Cluster,
    site: &PartnerSite,
    choice: Choice,
) -> NodeId {
    let url = start_login(b, site).await;
    assert!(url.contains("/sso/authorize?"), "{url}");
    must(
        "the agency's sign-in page",
        b.wait_for_element("form#signin", DEFAULT_DEADLINE).await,
    );
    let node = node_of(cluster, &url);
    must("typing the username", b.fill("#username", USER).await);
    must("typing the password", b.fill("#password", PASSWORD).await);
    must("submitting the sign-in form", b.click("#submit").await);
    approve_trust(b, choice).await;
    wait_signed_in(b, site).await;
    node
}

/// First login at `site` with an SSO cookie already set: only the trust page.
/// Returns the node that served it.
async fn first_login_with_cookie(
    b: &Browser,
    cluster: &Cluster,
    site: &PartnerSite,
    choice: Choice,
) -> NodeId {
    let url = start_login(b, site).await;
    must(
        "the agency's trust page",
        b.wait_for_element("#trust", DEFAULT_DEADLINE).await,
    );
    assert!(
        must("looking for the sign-in form", b.text("form#signin").await).is_none(),
        "the agency asked for a password although the browser has its SSO cookie"
    );
    let node = node_of(cluster, &url);
    approve_trust(b, choice).await;
    wait_signed_in(b, site).await;
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seamless_login_across_sites() {
    let f = fixture().await;
    let (b, cluster) = (&f.browser, &f.cluster);

    // Shop: sign-in page, then trust with a pseudonym, the name and no email.
    let shop_choice = Choice {
        pseudonym: true,
        share_name: true,
        share_email: false,
    };
    let signin_node = first_login_with_password(b, cluster, &f.shop, shop_choice).await;
    let pseudonym = claim(b, "preferred_username")
        .await
        .expect("shop shows preferred_username");
    assert!(
        pseudonym.starts_with("u-") && pseudonym != USER,
        "shop got {pseudonym:?}, not a pseudonym"
    );
    assert_eq!(claim(b, "name").await.as_deref(), Some(DISPLAY_NAME));
    assert_eq!(
        claim(b, "email").await,
        None,
        "shop got the email it was not given"
    );
    let st = f.shop.status().await;
    assert_eq!(
        st["logins"], 1,
        "shop's /callback did not complete a login: {st}"
    );
    assert_eq!(st["login_errors"], serde_json::json!([]), "{st}");
    assert_eq!(
        st["sessions"][0]["claims"]["preferred_username"],
        pseudonym.as_str()
    );
    assert!(st["sessions"][0]["claims"].get("email").is_none(), "{st}");

    // The shop sees the agency reference cookie (shared domain), never the
    // session cookie (host-only on the agency).
    let cookies = must("reading cookies", b.cookies().await);
    assert!(
        cookies
            .iter()
            .any(|(n, _, d)| n == REFERENCE_COOKIE && d == &format!(".{COOKIE_DOMAIN}")),
        "no {REFERENCE_COOKIE} for .{COOKIE_DOMAIN} on shop: {cookies:?}"
    );
    assert!(
        !cookies.iter().any(|(n, _, _)| n == SESSION_COOKIE),
        "the session cookie is visible on shop: {cookies:?}"
    );

    // News: the trust page only, with the username and the email.
    let news_choice = Choice {
        pseudonym: false,
        share_name: true,
        share_email: true,
    };
    let trust_node = first_login_with_cookie(b, cluster, &f.news, news_choice).await;
    assert_eq!(claim(b, "preferred_username").await.as_deref(), Some(USER));
    assert_eq!(claim(b, "email").await.as_deref(), Some(EMAIL));
    assert_eq!(claim(b, "name").await.as_deref(), Some(DISPLAY_NAME));
    assert_eq!(f.news.status().await["logins"], 1);

    // Shop again, in a new tab, after shop forgot its own session: no page
    // of the agency is shown, a ticket is issued, the same pseudonym comes back.
    must("opening shop", b.goto(&format!("{}/", f.shop.url())).await);
    must(
        "shop's session",
        b.wait_for_element("#claims", DEFAULT_DEADLINE).await,
    );
    must(
        "deleting shop's session cookie",
        b.delete_cookie("site_session").await,
    );
    must("a new tab", b.new_tab().await);
    must("opening shop", b.goto(&format!("{}/", f.shop.url())).await);
    must(
        "shop's signed-out page",
        b.wait_for_element("a#signin", DEFAULT_DEADLINE).await,
    );
    assert_eq!(claim(b, "preferred_username").await, None);

    let pages_sign_in = r#"baa_sso_pages_total{page="sign_in"}"#;
    let pages_trust = r#"baa_sso_pages_total{page="trust"}"#;
    let tickets = "baa_sso_tickets_issued_total";
    let sign_in_before = sum_over_nodes(cluster, pages_sign_in).await;
    let trust_before = sum_over_nodes(cluster, pages_trust).await;
    let tickets_before = per_node(cluster, tickets).await;

    must("shop's sign-in link", b.click("#signin").await);
    wait_signed_in(b, &f.shop).await;
    assert_eq!(
        claim(b, "preferred_username").await.as_deref(),
        Some(pseudonym.as_str())
    );
    assert_eq!(claim(b, "email").await, None);

    assert_eq!(
        sum_over_nodes(cluster, pages_sign_in).await,
        sign_in_before,
        "the seamless login showed a sign-in page"
    );
    assert_eq!(
        sum_over_nodes(cluster, pages_trust).await,
        trust_before,
        "the seamless login showed a trust page"
    );
    let tickets_after = per_node(cluster, tickets).await;
    let seamless_nodes: Vec<NodeId> = tickets_after
        .iter()
        .filter(|(id, v)| **v > tickets_before[*id])
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(
        seamless_nodes.len(),
        1,
        "one node issues the seamless login's ticket: before {tickets_before:?}, after {tickets_after:?}"
    );
    let seamless_node = seamless_nodes[0];
    assert_eq!(f.shop.status().await["logins"], 2);

    let served = [signin_node, trust_node, seamless_node];
    println!(
        "authorize steps served by: shop sign-in page node {signin_node}, \
         news trust page node {trust_node}, shop seamless login node {seamless_node}"
    );
    assert!(
        served.iter().collect::<BTreeSet<_>>().len() > 1,
        "every authorize step went to node {signin_node}: the sites do not spread over the nodes"
    );
    cluster.assert_no_panics();
}

/// A `prompt=none` request of `site` at node `id` carrying only `cookies`:
/// `Ok(code)` or `Err(error)` from the auto-submitted form.
async fn probe(
    cluster: &Cluster,
    id: NodeId,
    site: &TestSite,
    cookies: &SsoCookies,
) -> Result<String, String> {
    let mut agent = Agent::new(cluster);
    agent.set_sso_cookies(cookies);
    let req = AuthRequest::new(site).set("prompt", "none");
    let answer = agent.get(&req.url(&cluster.public_url(id))).await;
    assert_eq!(answer.status, StatusCode::OK, "node {id}: {}", answer.body);
    let fields = answer.inputs();
    match (fields.get("code"), fields.get("error")) {
        (Some(code), None) => Ok(code.clone()),
        (None, Some(error)) => Err(error.clone()),
        _ => panic!("node {id} answered neither code nor error: {}", answer.body),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_out_reaches_every_node_and_both_sites() {
    let f = fixture().await;
    let (b, cluster) = (&f.browser, &f.cluster);
    let ids = cluster.ids();

    let choice = Choice {
        pseudonym: false,
        share_name: true,
        share_email: true,
    };
    first_login_with_password(b, cluster, &f.shop, choice).await;
    first_login_with_cookie(b, cluster, &f.news, choice).await;

    let shop_status = f.shop.status().await;
    let sid = shop_status["sessions"][0]["sid"]
        .as_str()
        .unwrap_or_else(|| panic!("shop has no session with a sid: {shop_status}"))
        .to_string();
    let news_status = f.news.status().await;
    assert_eq!(
        news_status["sessions"][0]["sid"],
        sid.as_str(),
        "news and shop hold different agency sessions: {news_status}"
    );
    assert_eq!(
        must("the sid on news", b.text("#sid").await).as_deref(),
        Some(sid.as_str())
    );

    // The agency's cookies, as the browser holds them on the agency's host.
    must(
        "the agency's home page",
        b.goto(&format!("{}/", cluster.agency_url(ids[0]))).await,
    );
    let cookies = must("reading cookies", b.cookies().await);
    let value = |name: &str| {
        cookies
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.clone())
            .unwrap_or_else(|| panic!("no {name} visible on the agency: {cookies:?}"))
    };
    let sso_cookie = SsoCookies {
        session: value(SESSION_COOKIE),
        reference: value(REFERENCE_COOKIE),
    };

    // A third site gets a ticket and an access token through the same session.
    let tool =
        sso::add_confidential_site(cluster, "tool", "https://tool.baa.localtest:8443/callback")
            .await;
    let mut agent = Agent::new(cluster);
    agent.set_sso_cookies(&sso_cookie);
    let base = cluster.public_url(ids[1]);
    let req = AuthRequest::new(&tool);
    let page = agent.get(&req.url(&base)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(
        page.body.contains("id=\"trust\""),
        "no trust page: {}",
        page.body
    );
    let posted = agent.approve(&base, &page, "username", true, true).await;
    let code = posted
        .inputs()
        .get("code")
        .cloned()
        .unwrap_or_else(|| panic!("approving gave no code: {}", posted.body));
    let (status, tokens) = sso::redeem(
        cluster.http(),
        &cluster.public_url(ids[2]),
        &tool,
        &code,
        req.verifier.as_deref(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access_token = tokens["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token: {tokens}"))
        .to_string();
    for &id in &ids {
        let base = cluster.public_url(id);
        poll_until(
            CONVERGE_DEADLINE,
            &format!("the access token is active on node {id}"),
            || async {
                sso::introspect_active(cluster.http(), &base, &tool, &access_token)
                    .await
                    .then_some(())
            },
        )
        .await;
    }
    // Before the sign-out the old cookie logs the third site in silently everywhere.
    for &id in &ids {
        poll_until(
            CONVERGE_DEADLINE,
            &format!("node {id} accepts the SSO cookie with prompt=none"),
            || async { probe(cluster, id, &tool, &sso_cookie).await.ok() },
        )
        .await;
    }

    // Sign out in the browser at a follower.
    let leader = cluster.leader().await;
    let via = sso::other_node(cluster, leader);
    let agency = cluster.agency_url(via);
    must(
        "the sign-out page",
        b.goto(&format!("{agency}/sso/logout")).await,
    );
    must(
        "the sign-out form",
        b.wait_for_element("form#signout", DEFAULT_DEADLINE).await,
    );
    let clicked = Instant::now();
    must("confirming the sign-out", b.click("#confirm").await);
    poll_until(DEFAULT_DEADLINE, "the signed-out page", || async {
        b.source()
            .await
            .ok()
            .filter(|s| s.contains("You are signed out."))
            .map(|_| ())
    })
    .await;
    let returned = Instant::now();

    // Every node refuses the old cookie within the bound.
    let mut refused_after: BTreeMap<NodeId, Duration> = BTreeMap::new();
    let give_up = returned + CONVERGE_DEADLINE;
    let (tool_ref, cookie_ref) = (&tool, &sso_cookie);
    while refused_after.len() < ids.len() {
        let pending: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|id| !refused_after.contains_key(id))
            .collect();
        let answers = futures::future::join_all(
            pending
                .iter()
                .map(|&id| async move { (id, probe(cluster, id, tool_ref, cookie_ref).await) }),
        )
        .await;
        for (id, answer) in answers {
            match answer {
                Ok(_) => {}
                Err(e) if e == "login_required" => {
                    refused_after.insert(id, returned.elapsed());
                }
                Err(e) => panic!("node {id} answered {e} instead of login_required"),
            }
        }
        assert!(
            Instant::now() < give_up,
            "the old cookie still works after {CONVERGE_DEADLINE:?}; refused so far: {refused_after:?}"
        );
        tokio::time::sleep(LOGOUT_PROBE_INTERVAL).await;
    }
    let slowest = refused_after.values().max().copied().unwrap_or_default();
    println!(
        "sign-out via node {via} (leader {leader}): every node refuses the old cookie \
         {slowest:?} after the logout POST returned ({:?} after the click); per node: {refused_after:?}",
        returned.duration_since(clicked) + slowest
    );
    assert!(
        slowest <= LOGOUT_BOUND,
        "the sign-out took {slowest:?} to reach every node (bound {LOGOUT_BOUND:?}): {refused_after:?}"
    );

    // The access token died with the session.
    for &id in &ids {
        assert!(
            !sso::introspect_active(
                cluster.http(),
                &cluster.public_url(id),
                &tool,
                &access_token
            )
            .await,
            "node {id}: the access token is still active after the sign-out"
        );
    }

    // Both sites heard of it over the back channel and dropped the session.
    for site in [&f.shop, &f.news] {
        let st = poll_until(
            CONVERGE_DEADLINE,
            &format!("back-channel logout of {sid} at {}", site.url()),
            || async {
                let st = site.status().await;
                let told = st["backchannel_sids"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|s| s == sid.as_str()));
                let empty = st["sessions"].as_array().is_some_and(Vec::is_empty);
                (told && empty).then_some(st)
            },
        )
        .await;
        assert!(st["backchannel_logouts"].as_u64() >= Some(1), "{st}");
    }

    // Shop's page shows the browser signed out.
    must("opening shop", b.goto(&format!("{}/", f.shop.url())).await);
    must(
        "shop's sign-in link",
        b.wait_for_element("a#signin", DEFAULT_DEADLINE).await,
    );
    assert_eq!(
        must("shop's status line", b.text("#status").await).as_deref(),
        Some("Not signed in.")
    );
    assert_eq!(claim(b, "preferred_username").await, None);
    let cookies = must("reading cookies", b.cookies().await);
    assert!(
        !cookies.iter().any(|(n, _, _)| n == REFERENCE_COOKIE),
        "the browser still holds {REFERENCE_COOKIE}: {cookies:?}"
    );
    cluster.assert_no_panics();
}
