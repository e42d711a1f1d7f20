//! Federation of agencies (issue 12) in a real headless Chromium: two
//! agencies of 3 nodes each on one cookie domain, A at
//! `login-a.baa.localtest` with the partner site `shop`, B at
//! `login-b.baa.localtest` with the partner site `news`, peered both ways.
//! A user signed in at B is signed in at A's site with no password (A
//! checks B's reference, asks B, and makes a silent round trip to B); B's
//! reference alone, without B's session, gets nothing at A.

use std::time::{Duration, Instant};

use baa_cluster_tests::browser::{Cookie, DEFAULT_DEADLINE};
use baa_cluster_tests::federation::{Federation, HOST_A};
use baa_cluster_tests::harness::{signal, CONVERGE_DEADLINE};
use baa_cluster_tests::partner::PartnerSite;
use baa_cluster_tests::sso::{self, Agent, AuthRequest, REFERENCE_COOKIE, SESSION_COOKIE};
use baa_cluster_tests::{poll_until, Browser, Cluster};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

const HOST_RULES: &str = "MAP *.localtest 127.0.0.1";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery";
/// The account A makes for B's `alice`: B's name for her, then B's host label.
const LINKED_USER: &str = "alice.login-b";

/// Unwraps a browser step, printing the whole error chain (URL and page source).
fn must<T>(what: &str, r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: {e:#}"))
}

/// Dropped in field order: browser, sites, then the agencies.
struct Fixture {
    browser: Browser,
    shop: PartnerSite,
    news: PartnerSite,
    fed: Federation,
}

async fn fixture() -> Fixture {
    fixture_with(|_| {}).await
}

/// The fixture with both agencies' options adjusted by `tune`.
async fn fixture_with(tune: impl Fn(&mut baa_cluster_tests::ClusterOptions)) -> Fixture {
    let fed = Federation::start(tune).await;
    sso::create_user(&fed.b, USER, PASSWORD).await;
    let news = PartnerSite::start(&fed.b, "news", "news.baa.localtest").await;
    let shop = PartnerSite::start(&fed.a, "shop", "shop.baa.localtest").await;
    let browser = must("starting the browser", Browser::start(HOST_RULES).await);
    Fixture {
        browser,
        shop,
        news,
        fed,
    }
}

/// Opens `site` and follows its sign-in link.
async fn start_login(b: &Browser, site: &PartnerSite) {
    must(
        "opening the site",
        b.goto(&format!("{}/", site.url())).await,
    );
    must("the site's sign-in link", b.click("#signin").await);
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

/// The issuer a reference cookie's value names (its payload, unchecked).
fn issuer_of(reference: &str) -> String {
    let payload = reference.split('.').nth(1).expect("a JWS");
    let v: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON");
    v["iss"].as_str().expect("iss").to_string()
}

/// One metric summed over every node of `cluster`.
async fn sum_over_nodes(cluster: &Cluster, name: &str) -> f64 {
    let mut sum = 0.0;
    for id in cluster.ids() {
        sum += cluster.metric(id, name).await.unwrap_or(0.0);
    }
    sum
}

/// Acceptance 1 and 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_of_b_signs_in_at_a_site_of_a_with_no_password() {
    let f = fixture().await;
    let (b, a_agency, b_agency) = (&f.browser, &f.fed.a, &f.fed.b);

    // Signed in at B, through B's own site.
    sign_in_at_b(b, &f.news).await;

    // A's site: A asks B, goes to B and back without a page, and shows
    // its own trust page — never a password form.
    start_login(b, &f.shop).await;
    must(
        "A's trust page",
        b.wait_for_element("#trust", DEFAULT_DEADLINE).await,
    );
    let url = must("the URL", b.current_url().await);
    assert!(
        url.starts_with(&format!("https://{HOST_A}:")),
        "the trust page is not A's: {url}"
    );
    assert!(
        must("looking for a password form", b.text("form#signin").await).is_none(),
        "A asked for a password"
    );
    must("approving shop", b.click("#approve").await);
    wait_signed_in(b, &f.shop).await;
    assert_eq!(
        must(
            "the name shop got",
            b.text("#claim-preferred_username").await
        )
        .as_deref(),
        Some(LINKED_USER)
    );
    assert_eq!(f.shop.status().await["logins"], 1);

    // The shared reference still names B, the user's home agency.
    let cookies = must("reading cookies", b.cookies().await);
    let reference = cookies
        .iter()
        .find(|(n, _, _)| n == REFERENCE_COOKIE)
        .map(|(_, v, _)| v.clone())
        .expect("a reference cookie on the shared domain");
    assert_eq!(issuer_of(&reference), b_agency.issuer());

    // The next visit needs no input: no page of A, one more login at shop.
    let pages = |p: &str| format!("baa_sso_pages_total{{page=\"{p}\"}}");
    let trust_before = sum_over_nodes(a_agency, &pages("trust")).await;
    let sign_in_before = sum_over_nodes(a_agency, &pages("sign_in")).await;
    must(
        "forgetting shop's session",
        b.delete_cookie("site_session").await,
    );
    start_login(b, &f.shop).await;
    wait_signed_in(b, &f.shop).await;
    assert_eq!(f.shop.status().await["logins"], 2);
    assert_eq!(
        sum_over_nodes(a_agency, &pages("trust")).await,
        trust_before
    );
    assert_eq!(
        sum_over_nodes(a_agency, &pages("sign_in")).await,
        sign_in_before
    );
    let alive = r#"baa_federation_round_trips_total{peer="PEER",result="alive"}"#
        .replace("PEER", &b_agency.issuer());
    assert!(sum_over_nodes(a_agency, &alive).await >= 1.0);

    // Acceptance 2: B's reference copied into a fresh browser, which has
    // no session at B. A asks B (the session is alive), goes to B, and B
    // answers login_required: no session at A, and a page that says so.
    let fresh = browser_with_reference(&f.shop, &reference).await;
    start_login(&fresh, &f.shop).await;
    let error = must(
        "A's sign-in page with the refusal",
        fresh
            .wait_for_element(r#"#error[data-code="login_required"]"#, DEFAULT_DEADLINE)
            .await,
    );
    let _ = error;
    let url = must("the URL", fresh.current_url().await);
    assert!(url.starts_with(&format!("https://{HOST_A}:")), "{url}");
    assert!(
        must("the home-agency link", fresh.text("#home-agency a").await).is_some(),
        "the page offers no way to the home agency"
    );
    let at_a = must("A's cookies", fresh.cookies().await);
    assert!(
        !at_a.iter().any(|(n, _, _)| n == SESSION_COOKIE),
        "A made a session from a copied reference: {at_a:?}"
    );
    assert_eq!(f.shop.status().await["logins"], 2);
    let ended = r#"baa_federation_round_trips_total{peer="PEER",result="ended"}"#
        .replace("PEER", &b_agency.issuer());
    assert!(sum_over_nodes(a_agency, &ended).await >= 1.0);

    a_agency.assert_no_panics();
    b_agency.assert_no_panics();
}

/// A fresh browser holding only the reference cookie `value` on the shared
/// domain (set from `site`'s page).
async fn browser_with_reference(site: &PartnerSite, value: &str) -> Browser {
    let b = must("another browser", Browser::start(HOST_RULES).await);
    must(
        "opening the site",
        b.goto(&format!("{}/", site.url())).await,
    );
    let cookie = Cookie::parse(format!(
        "{REFERENCE_COOKIE}={value}; Domain=baa.localtest; Path=/; Secure; SameSite=Lax"
    ))
    .expect("a cookie");
    must("planting the reference", b.add_raw_cookie(cookie).await);
    b
}

/// Signs out at a follower of B, confirming on B's page; answers B's leader.
async fn sign_out_at_b(b: &Browser, agency: &Cluster) -> u64 {
    let leader = agency.leader().await;
    let via = sso::other_node(agency, leader);
    let page = format!("{}/sso/logout", agency.agency_url(via));
    must("B's sign-out page", b.goto(&page).await);
    must(
        "the sign-out form",
        b.wait_for_element("form#signout", DEFAULT_DEADLINE).await,
    );
    must("confirming", b.click("#confirm").await);
    leader
}

/// Fills in and submits the sign-in form on the page (as `user`).
async fn submit_sign_in(b: &Browser, user: &str) {
    must(
        "the sign-in form",
        b.wait_for_element("form#signin", DEFAULT_DEADLINE).await,
    );
    must("typing the username", b.fill("#username", user).await);
    must("typing the password", b.fill("#password", PASSWORD).await);
    must("submitting", b.click("#submit").await);
}

/// Signs in at B with the password, through B's site `news` (approving
/// news the first time; news forgets its own session first).
async fn sign_in_at_b(b: &Browser, news: &PartnerSite) {
    must("opening news", b.goto(&format!("{}/", news.url())).await);
    must(
        "forgetting news' session",
        b.delete_cookie("site_session").await,
    );
    start_login(b, news).await;
    submit_sign_in(b, USER).await;
    let home = format!("{}/", news.url());
    poll_until(
        DEFAULT_DEADLINE,
        "news signed in, or B's trust page",
        || async {
            if b.text("#trust").await.ok().flatten().is_some() {
                b.click("#approve").await.ok()?;
            }
            let url = b.current_url().await.ok()?;
            (url == home && b.text("#claims").await.ok().flatten().is_some()).then_some(())
        },
    )
    .await;
}

/// Signs in at B (password, through news), then opens A's shop: A's trust
/// page — never a password form — approved, shop signed in.
async fn first_login_through_b(f: &Fixture) {
    let b = &f.browser;
    sign_in_at_b(b, &f.news).await;
    start_login(b, &f.shop).await;
    must(
        "A's trust page",
        b.wait_for_element("#trust", DEFAULT_DEADLINE).await,
    );
    must("approving shop", b.click("#approve").await);
    wait_signed_in(b, &f.shop).await;
}

/// The browser's cookie `name` as `host`'s page sees it.
async fn cookie_at(b: &Browser, url: &str, name: &str) -> String {
    must("opening the page", b.goto(url).await);
    let cookies = must("reading cookies", b.cookies().await);
    cookies
        .into_iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, v, _)| v)
        .unwrap_or_else(|| panic!("no cookie {name} at {url}"))
}

/// What node `id` of A answers `site`'s `prompt=none` request with only
/// `agent`'s cookies: `Ok` with the ticket when A takes them for a live
/// session; else what A did instead: `login_required` for the site, or
/// `round trip` when it sent the browser to its home agency B to ask there
/// (which is no session at A either).
async fn probe(
    a: &Cluster,
    b_issuer: &str,
    id: u64,
    agent: &Agent,
    site: &sso::TestSite,
) -> Result<String, String> {
    let mut agent = agent.clone();
    let req = AuthRequest::new(site).set("prompt", "none");
    let answer = agent.get(&req.url(&a.public_url(id))).await;
    let fields = answer.inputs();
    if let Some(code) = fields.get("code") {
        return Ok(code.clone());
    }
    if let Some(e) = fields.get("error") {
        return Err(e.clone());
    }
    match answer.location() {
        Some(l) if l.starts_with(&format!("{b_issuer}/sso/authorize?")) => Err("round trip".into()),
        _ => Err(format!("HTTP {}: {}", answer.status, answer.body)),
    }
}

/// How long A may honour a session B ended: the cross-agency cache bound
/// (`[federation] cache_s`, 5 s by default) and a second for the request.
const PEER_LOGOUT_BOUND: Duration = Duration::from_secs(6);

/// Acceptance 3: B ends the session; A refuses the session it derived from
/// it within the cache bound (measured), the tokens A issued from it are
/// dead on every node of A, and A's site hears of it. Then, with every node
/// of A paused so that B's delivery stays pending, B's leader is killed:
/// the delivery still arrives, from B's next leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_at_b_ends_what_a_derived_from_it() {
    let mut f = fixture().await;
    let b = &f.browser;
    first_login_through_b(&f).await;

    // The browser's cookies at A, for an agent that asks A's nodes.
    let (a, site) = (&f.fed.a, f.shop.site());
    let reference = cookie_at(b, &format!("{}/", f.shop.url()), REFERENCE_COOKIE).await;
    let a_session = cookie_at(b, &format!("{}/", a.agency_url(1)), SESSION_COOKIE).await;
    let mut agent = Agent::new(a);
    agent.cookies.insert(SESSION_COOKIE.into(), a_session);
    agent.cookies.insert(REFERENCE_COOKIE.into(), reference);
    // A token A issued in the derived session.
    let req = AuthRequest::new(&site);
    let answer = agent.clone().get(&req.url(&a.public_url(1))).await;
    let code = answer
        .inputs()
        .get("code")
        .cloned()
        .unwrap_or_else(|| panic!("no ticket at A: {} {}", answer.status, answer.body));
    let (status, tokens) = sso::redeem(
        a.http(),
        &a.public_url(2),
        &site,
        &code,
        req.verifier.as_deref(),
    )
    .await;
    assert!(status.is_success(), "{status}: {tokens}");
    let access = tokens["access_token"]
        .as_str()
        .expect("an access token")
        .to_string();
    let a_sid = f.shop.status().await["sessions"][0]["sid"]
        .as_str()
        .expect("shop's session names A's sid")
        .to_string();

    // B ends the session (at a follower of B).
    sign_out_at_b(b, &f.fed.b).await;
    let clicked = Instant::now();
    let ids = a.ids();
    let mut refused = Vec::new();
    let b_issuer = f.fed.b.issuer();
    for &id in &ids {
        let t = poll_until(CONVERGE_DEADLINE, "A refusing the derived session", || {
            let (agent, site, b_issuer) = (&agent, &site, &b_issuer);
            async move {
                match probe(a, b_issuer, id, agent, site).await {
                    Ok(_) => None,
                    Err(e) if e == "login_required" || e == "round trip" => Some(clicked.elapsed()),
                    Err(e) => panic!("node {id} of A answered {e}"),
                }
            }
        })
        .await;
        refused.push((id, t));
    }
    let slowest = refused.iter().map(|(_, t)| *t).max().unwrap_or_default();
    println!("A refuses the session B ended after {slowest:?} (per node {refused:?})");
    assert!(
        slowest <= PEER_LOGOUT_BOUND,
        "A honoured a session B ended for {slowest:?} (bound {PEER_LOGOUT_BOUND:?})"
    );
    // The session's tokens died with it, on every node of A, and shop heard.
    for &id in &ids {
        poll_until(CONVERGE_DEADLINE, "the token dead at A", || async {
            (!sso::introspect_active(a.http(), &a.public_url(id), &site, &access).await)
                .then_some(())
        })
        .await;
    }
    poll_until(CONVERGE_DEADLINE, "shop told of A's logout", || async {
        let st = f.shop.status().await;
        st["backchannel_sids"]
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s == a_sid.as_str()))
            .then_some(())
    })
    .await;

    // Again, with the delivery to A pending when B's leader dies.
    sign_in_at_b(b, &f.news).await;
    start_login(b, &f.shop).await;
    wait_signed_in(b, &f.shop).await;
    let sessions = f.shop.status().await["sessions"].clone();
    let a_sid = sessions
        .as_array()
        .and_then(|l| l.last())
        .map(|s| s["sid"].clone());
    let a_sid = a_sid
        .and_then(|s| s.as_str().map(String::from))
        .expect("A's new sid");
    for id in a.ids() {
        signal(a.node(id).pid().expect("a pid"), libc::SIGSTOP);
    }
    let b_leader = sign_out_at_b(b, &f.fed.b).await;
    let pending = "baa_sso_backchannel_outbox_items";
    poll_until(CONVERGE_DEADLINE, "a delivery pending at B", || async {
        let n = f.fed.b.metric(b_leader, pending).await.unwrap_or(0.0);
        (n >= 1.0).then_some(())
    })
    .await;
    f.fed.b.kill(b_leader);
    for id in f.fed.a.ids() {
        signal(f.fed.a.node(id).pid().expect("a pid"), libc::SIGCONT);
    }
    poll_until(
        Duration::from_secs(120),
        "shop told of A's second logout",
        || async {
            let st = f.shop.status().await;
            st["backchannel_sids"]
                .as_array()
                .is_some_and(|l| l.iter().any(|s| s == a_sid.as_str()))
                .then_some(())
        },
    )
    .await;
    f.fed.b.restart(b_leader).await;
    f.fed.a.assert_no_panics();
    f.fed.b.assert_no_panics();
}

/// Acceptance 5: with B stopped entirely, A refuses B's references with a
/// page that says so (sign in here, or at the home agency), and A's own
/// users sign in as ever; with B back, the cross-agency sign-in works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_b_stopped_a_refuses_its_references_and_serves_its_own_users() {
    let mut f = fixture().await;
    sso::create_user(&f.fed.a, "dave", PASSWORD).await;
    first_login_through_b(&f).await;

    for id in f.fed.b.ids() {
        f.fed.b.stop(id).await;
    }
    // Once A's word from B is older than the cache bound, A refuses.
    let b = &f.browser;
    poll_until(
        CONVERGE_DEADLINE,
        "A's page saying B cannot be reached",
        || async {
            b.goto(&format!("{}/", f.shop.url())).await.ok()?;
            b.delete_cookie("site_session").await.ok()?;
            b.goto(&format!("{}/", f.shop.url())).await.ok()?;
            b.click("#signin").await.ok()?;
            let seen = b
                .wait_for_element("#claims, #error", DEFAULT_DEADLINE)
                .await
                .ok()?;
            let _ = seen;
            let code = b
                .execute(
                    "var e = document.getElementById('error'); return e ? e.dataset.code : null;",
                )
                .await
                .ok()?;
            (code == "peer_unreachable").then_some(())
        },
    )
    .await;
    assert!(
        must("the home-agency link", b.text("#home-agency a").await).is_some(),
        "the page offers no way to the home agency"
    );
    assert!(must("the sign-in form", b.text("form#signin").await).is_some());

    // A's own user, in another browser, is not affected.
    let own = must("a second browser", Browser::start(HOST_RULES).await);
    start_login(&own, &f.shop).await;
    submit_sign_in(&own, "dave").await;
    must(
        "A's trust page",
        own.wait_for_element("#trust", DEFAULT_DEADLINE).await,
    );
    must("approving shop", own.click("#approve").await);
    wait_signed_in(&own, &f.shop).await;
    assert_eq!(
        must(
            "dave's name at shop",
            own.text("#claim-preferred_username").await
        )
        .as_deref(),
        Some("dave")
    );

    // B back: the first browser's session at B is still there, and the
    // cross-agency sign-in works again.
    for id in f.fed.b.ids() {
        f.fed.b.restart(id).await;
    }
    let b = &f.browser;
    poll_until(
        Duration::from_secs(120),
        "the cross-agency sign-in again",
        || async {
            b.goto(&format!("{}/", f.shop.url())).await.ok()?;
            b.click("#signin").await.ok()?;
            b.wait_for_element("#claims, #error", DEFAULT_DEADLINE)
                .await
                .ok()?;
            let name = b.text("#claim-preferred_username").await.ok()??;
            (name == LINKED_USER).then_some(())
        },
    )
    .await;
    f.fed.a.assert_no_panics();
    f.fed.b.assert_no_panics();
}

/// `url` (at `host`) with its origin replaced by node `id`'s of `cluster`,
/// for an agent that knows no host names.
fn at_node(cluster: &Cluster, id: u64, url: &str) -> String {
    let u = url::Url::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
    let rest = &url[u.origin().ascii_serialization().len()..];
    format!("{}{rest}", cluster.public_url(id))
}

/// Acceptance 6: A's leader is killed in the middle of a cross-agency
/// sign-in — after the browser went to B and before it came back — and
/// the sign-in completes on a node of A that is still up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_agency_sign_in_completes_when_a_loses_its_leader() {
    let mut f = fixture().await;
    let b = &f.browser;
    sign_in_at_b(b, &f.news).await;
    // The browser's cookies at B, for agents that speak HTTP step by step
    // (one per host: both agencies name their session cookie alike).
    let b_reference = cookie_at(b, &format!("{}/", f.news.url()), REFERENCE_COOKIE).await;
    let b_session = cookie_at(b, &format!("{}/", f.fed.b.agency_url(1)), SESSION_COOKIE).await;
    let mut at_b = Agent::new(&f.fed.b);
    at_b.cookies.insert(SESSION_COOKIE.into(), b_session);
    at_b.cookies
        .insert(REFERENCE_COOKIE.into(), b_reference.clone());
    let mut at_a = Agent::new(&f.fed.a);
    at_a.cookies.insert(REFERENCE_COOKIE.into(), b_reference);

    let a_leader = f.fed.a.leader().await;
    let node = sso::other_node(&f.fed.a, a_leader);
    let site = f.shop.site();
    let req = AuthRequest::new(&site);
    let out = at_a.get(&req.url(&f.fed.a.public_url(node))).await;
    let to_b = out.location().unwrap_or_else(|| {
        panic!(
            "A did not send the browser to B: {} {}",
            out.status, out.body
        )
    });
    assert!(
        to_b.starts_with(&format!("{}/sso/authorize?", f.fed.b.issuer())),
        "{to_b}"
    );
    let at_b_page = at_b.get(&at_node(&f.fed.b, 1, &to_b)).await;
    let callback = at_b_page.form_action().expect("B's answer is a form post");
    assert_eq!(
        callback,
        format!("{}/federation/callback", f.fed.a.issuer())
    );
    let fields: Vec<(String, String)> = at_b_page.inputs().into_iter().collect();
    assert!(fields.iter().any(|(k, _)| k == "code"), "{fields:?}");

    f.fed.a.kill(a_leader);
    let back = at_a
        .post_form(&at_node(&f.fed.a, node, &callback), &fields)
        .await;
    let next = back
        .location()
        .unwrap_or_else(|| panic!("the callback failed: {} {}", back.status, back.body));
    assert!(next.starts_with("/sso/authorize?"), "{next}");
    assert!(
        at_a.has_session_cookie(),
        "no session at A after the callback"
    );
    // The session A made is a live one on the surviving nodes: the request
    // continues to A's trust page (shop not approved yet).
    let trust = at_a
        .get(&format!("{}{next}", f.fed.a.public_url(node)))
        .await;
    assert!(
        trust.body.contains(r#"id="trust""#),
        "{} {}",
        trust.status,
        trust.body
    );
    f.fed.a.restart(a_leader).await;
    f.fed.a.assert_no_panics();
    f.fed.b.assert_no_panics();
}

/// The header and payload of a compact JWS, decoded.
fn jws_parts(jws: &str) -> (serde_json::Value, serde_json::Value) {
    let mut parts = jws.split('.');
    let mut next = || -> serde_json::Value {
        let part = parts.next().expect("a JWS part");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
    };
    (next(), next())
}

/// A reference naming `issuer` and `sid`, signed with an Ed25519 key made
/// from `seed` — one the issuer never published.
fn forged_reference(issuer: &str, sid: &str, seed: u8) -> String {
    // RFC 8410 PKCS#8 wrapping of a raw Ed25519 seed.
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend([seed; 32]);
    let key = jsonwebtoken::EncodingKey::from_ed_der(&der);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.typ = Some("baa-ref+jwt".into());
    header.kid = Some("never-published".into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({ "iss": issuer, "sid": sid, "iat": now, "exp": now + 3600 });
    jsonwebtoken::encode(&header, &claims, &key).expect("signing")
}

/// Acceptance 4: B rotates its keys; A, which fetches B's configuration
/// only hourly here, accepts B's new references and ID tokens at their
/// first use (it fetches B's configuration out of turn when B names a key
/// it has not seen). A reference signed by a key B never published is
/// refused with a clear page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_rotates_its_keys_and_a_follows_at_first_use() {
    let f = fixture_with(|o| {
        o.federation.insert("refresh_s".into(), 3600.into());
    })
    .await;
    let b = &f.browser;
    first_login_through_b(&f).await;
    let before = cookie_at(b, &format!("{}/", f.shop.url()), REFERENCE_COOKIE).await;

    // B rotates; the user signs in at B again (a new session, a new
    // reference signed with B's new key), then opens shop.
    f.fed
        .b
        .cli(1, &["keys", "rotate"])
        .await
        .assert_success("baa keys rotate");
    must(
        "B's sign-out page",
        b.goto(&format!("{}/sso/logout", f.fed.b.agency_url(1)))
            .await,
    );
    must("confirming", b.click("#confirm").await);
    poll_until(DEFAULT_DEADLINE, "the signed-out page", || async {
        b.source()
            .await
            .ok()
            .filter(|s| s.contains("You are signed out."))
            .map(|_| ())
    })
    .await;
    sign_in_at_b(b, &f.news).await;
    let after = cookie_at(b, &format!("{}/", f.shop.url()), REFERENCE_COOKIE).await;
    let (old_kid, new_kid) = (
        jws_parts(&before).0["kid"].clone(),
        jws_parts(&after).0["kid"].clone(),
    );
    assert_ne!(
        old_kid, new_kid,
        "B did not sign the new reference with a new key"
    );
    must(
        "forgetting shop's session",
        b.delete_cookie("site_session").await,
    );
    start_login(b, &f.shop).await;
    wait_signed_in(b, &f.shop).await;
    assert_eq!(
        must(
            "the name shop got",
            b.text("#claim-preferred_username").await
        )
        .as_deref(),
        Some(LINKED_USER)
    );

    // A reference signed by a key B never published: refused, with a page.
    let sid = jws_parts(&after).1["sid"].as_str().unwrap().to_string();
    let forged = forged_reference(&f.fed.b.issuer(), &sid, 9);
    let other = browser_with_reference(&f.shop, &forged).await;
    start_login(&other, &f.shop).await;
    must(
        "A's refusal",
        other
            .wait_for_element(
                r#"#error[data-code="peer_session_refused"]"#,
                DEFAULT_DEADLINE,
            )
            .await,
    );
    let at_a = must("A's cookies", other.cookies().await);
    assert!(
        !at_a.iter().any(|(n, _, _)| n == SESSION_COOKIE),
        "{at_a:?}"
    );
    f.fed.a.assert_no_panics();
    f.fed.b.assert_no_panics();
}

/// Home-agency discovery: a browser with no cookie of either agency opens
/// A's site; A's sign-in page lists B; the user picks B, signs in there
/// with B's password and comes back to A signed in. A site's `login_hint`
/// at B's domain goes to B straight away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sign_in_page_leads_a_user_to_their_home_agency() {
    let f = fixture().await;
    let b = &f.browser;
    start_login(b, &f.shop).await;
    must(
        "A's sign-in page",
        b.wait_for_element("form#signin", DEFAULT_DEADLINE).await,
    );
    assert_eq!(
        must("the agencies listed", b.text("#agencies a.agency").await).as_deref(),
        Some(baa_cluster_tests::federation::NAME_B),
        "A's sign-in page does not list B"
    );
    must("choosing B", b.click("#agencies a.agency").await);
    let on_b = |u: &str| {
        u.starts_with(&format!(
            "https://{}:",
            baa_cluster_tests::federation::HOST_B
        ))
    };
    must(
        "B's sign-in page",
        b.wait_for_url(on_b, "B", DEFAULT_DEADLINE).await,
    );
    submit_sign_in(b, USER).await;
    must(
        "A's trust page",
        b.wait_for_element("#trust", DEFAULT_DEADLINE).await,
    );
    must("approving shop", b.click("#approve").await);
    wait_signed_in(b, &f.shop).await;
    assert_eq!(
        must(
            "the name shop got",
            b.text("#claim-preferred_username").await
        )
        .as_deref(),
        Some(LINKED_USER)
    );

    // A login_hint at B's domain: A sends the browser to sign in at B.
    let a = &f.fed.a;
    let mut agent = Agent::new(a);
    let hint = format!("{USER}@{}", baa_cluster_tests::federation::HOST_B);
    let req = AuthRequest::new(&f.shop.site()).set("login_hint", &hint);
    let answer = agent.get(&req.url(&a.public_url(2))).await;
    let to = answer.location().unwrap_or_default();
    assert!(
        to.starts_with(&format!("{}/sso/authorize?", f.fed.b.issuer())),
        "{} {to}",
        answer.status
    );
    let q = sso::query_params(&to);
    assert_eq!(q.get("login_hint"), Some(&hint));
    assert!(!q.contains_key("prompt"), "{q:?}");
    f.fed.a.assert_no_panics();
    f.fed.b.assert_no_panics();
}
