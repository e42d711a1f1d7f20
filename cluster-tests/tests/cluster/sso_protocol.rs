//! Single sign-on at the protocol level on a 3-node cluster: silent status
//! detection, tickets issued on one node and redeemed on another, exactly-once
//! redemption, exact redirect-URI matching, cluster-wide throttling, tampered
//! cookies, a leader killed mid-flow, and a third-party OIDC client library.

use std::time::{Duration, Instant};

use baa_cluster_tests::harness::CONVERGE_DEADLINE;
use baa_cluster_tests::sso::{
    add_confidential_site, add_site, create_user, introspect_active, query_params, redeem, Agent,
    Answer, AuthRequest, SsoCookies, TestSite,
};
use baa_cluster_tests::sso::{REFERENCE_COOKIE, SESSION_COOKIE};
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::json;

const PASSWORD: &str = "correct horse battery";

fn claims(id_token: &str) -> serde_json::Value {
    let payload = id_token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("JSON")
}

/// The fields an auto-submitting form_post page carries, checking it posts
/// to `redirect_uri`.
fn posted(page: &Answer, redirect_uri: &str) -> std::collections::BTreeMap<String, String> {
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(
        page.form_action().as_deref(),
        Some(redirect_uri),
        "{}",
        page.body
    );
    assert!(page.body.contains("<noscript>"), "{}", page.body);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("nonce-"),
        "{csp}"
    );
    assert_eq!(page.headers["cache-control"], "no-store");
    page.inputs()
}

/// Signs `alice` in at node `node` and approves `site`; returns the agent.
async fn signed_in_with_trust(cluster: &Cluster, node: u64, site: &TestSite) -> Agent {
    let mut agent = Agent::new(cluster);
    let base = cluster.public_url(node);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;
    assert!(agent.sso_cookies().is_some());
    let trust = agent.get(&AuthRequest::new(site).url(&base)).await;
    assert!(trust.body.contains("id=\"trust\""), "{}", trust.body);
    let page = agent.approve(&base, &trust, "username", true, true).await;
    // By the form for seed-style sites, else in the redirect's query.
    let code = match page.location() {
        Some(location) => query_params(&location).contains_key("code"),
        None => posted(&page, &site.redirect_uri).contains_key("code"),
    };
    assert!(code, "{}", page.body);
    agent
}

async fn code_from(agent: &mut Agent, base: &str, req: &AuthRequest, site: &TestSite) -> String {
    let page = agent.get(&req.url(base)).await;
    let f = posted(&page, &site.redirect_uri);
    assert_eq!(f.get("state").map(String::as_str), Some("st-123"));
    f.get("code")
        .cloned()
        .unwrap_or_else(|| panic!("no code: {f:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_cross_nodes_and_redeem_exactly_once() {
    let mut opts = ClusterOptions::default();
    opts.sso.insert("ticket_ttl_s".into(), 5.into());
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let news = add_confidential_site(&cluster, "news", "https://news.baa.localtest:9443/cb").await;
    let http = cluster.http().clone();
    let n1 = cluster.public_url(1);
    let n2 = cluster.public_url(2);
    let n3 = cluster.public_url(3);

    // Acceptance 3: prompt=none — no session → login_required posted back.
    let mut agent = Agent::new(&cluster);
    let silent = AuthRequest::new(&shop).set("prompt", "none");
    let f = posted(&agent.get(&silent.url(&n2)).await, &shop.redirect_uri);
    assert_eq!(f["error"], "login_required");
    assert_eq!(f["state"], "st-123");
    // Session but no trust → consent_required.
    let a = agent.sign_in(&n1, "alice", PASSWORD).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    let f = posted(&agent.get(&silent.url(&n3)).await, &shop.redirect_uri);
    assert_eq!(f["error"], "consent_required");
    // Approve, then prompt=none gives a ticket with no page.
    let trust = agent.get(&AuthRequest::new(&shop).url(&n1)).await;
    agent.approve(&n1, &trust, "username", true, true).await;
    let f = posted(&agent.get(&silent.url(&n2)).await, &shop.redirect_uri);
    assert!(f.contains_key("code") && !f.contains_key("error"), "{f:?}");

    // Acceptance 4: a ticket issued through node 1 is redeemed through node 3.
    let req = AuthRequest::new(&shop);
    let code = code_from(&mut agent, &n1, &req, &shop).await;
    let (status, tok) = redeem(&http, &n3, &shop, &code, req.verifier.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{tok}");
    let c = claims(tok["id_token"].as_str().unwrap());
    assert_eq!(c["aud"], "shop");
    assert_eq!(c["iss"], cluster.issuer());
    assert_eq!(c["nonce"], "n-456");
    assert_eq!(c["preferred_username"], "alice");
    assert!(c["sid"].as_str().is_some_and(|s| s.len() == 32), "{c}");
    let first_token = tok["access_token"].as_str().unwrap().to_string();
    assert!(introspect_active(&http, &n2, &shop, &first_token).await);

    // Acceptance 5: the same ticket again through another node → invalid_grant,
    // and the first redemption's token is revoked.
    let (status, err) = redeem(&http, &n2, &shop, &code, req.verifier.as_deref()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"], "invalid_grant");
    for n in [&n1, &n2, &n3] {
        assert!(!introspect_active(&http, n, &shop, &first_token).await);
    }
    // Twice through one node.
    let req = AuthRequest::new(&shop);
    let code = code_from(&mut agent, &n2, &req, &shop).await;
    let (s1, _) = redeem(&http, &n2, &shop, &code, req.verifier.as_deref()).await;
    let (s2, e2) = redeem(&http, &n2, &shop, &code, req.verifier.as_deref()).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::BAD_REQUEST));
    assert_eq!(e2["error"], "invalid_grant");
    // Concurrently through two nodes: exactly one success.
    for round in 0..3 {
        let req = AuthRequest::new(&shop);
        let code = code_from(&mut agent, &n3, &req, &shop).await;
        let v = req.verifier.as_deref();
        let (a, b) = tokio::join!(
            redeem(&http, &n1, &shop, &code, v),
            redeem(&http, &n3, &shop, &code, v)
        );
        let oks: Vec<_> = [&a, &b]
            .into_iter()
            .filter(|r| r.0 == StatusCode::OK)
            .collect();
        assert_eq!(oks.len(), 1, "round {round}: {a:?} {b:?}");
        let loser = if a.0 == StatusCode::OK { &b } else { &a };
        assert_eq!(loser.1["error"], "invalid_grant", "{loser:?}");
        let token = oks[0].1["access_token"].as_str().unwrap();
        assert!(!introspect_active(&http, &n2, &shop, token).await);
    }

    // Ticket of shop presented by news (with news's own credentials) → refused.
    let req = AuthRequest::new(&shop);
    let code = code_from(&mut agent, &n1, &req, &shop).await;
    let mut as_news = news.clone();
    as_news.redirect_uri = shop.redirect_uri.clone();
    let (s, e) = redeem(&http, &n2, &as_news, &code, req.verifier.as_deref()).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    // Wrong secret → invalid_client.
    let mut wrong = shop.clone();
    wrong.secret = Some("x".repeat(43));
    let (s, e) = redeem(&http, &n2, &wrong, &code, req.verifier.as_deref()).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    // Wrong or missing PKCE verifier → refused; the right one still works.
    let (other_verifier, _) = baa_cluster_tests::sso::pkce();
    let (s, e) = redeem(&http, &n3, &shop, &code, Some(&other_verifier)).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (s, e) = redeem(&http, &n3, &shop, &code, None).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (s, _) = redeem(&http, &n3, &shop, &code, req.verifier.as_deref()).await;
    assert_eq!(s, StatusCode::OK);

    // An expired ticket is refused (ticket_ttl_s = 5 here). Until then, a
    // redemption with the wrong redirect URI is refused for that reason and
    // leaves the ticket as it is; it is polled until the refusal says the
    // ticket expired, which must not happen before its lifetime is over.
    let req = AuthRequest::new(&shop);
    let issued = Instant::now();
    let code = code_from(&mut agent, &n1, &req, &shop).await;
    let mut elsewhere = shop.clone();
    elsewhere.redirect_uri.push_str("/elsewhere");
    poll_until(Duration::from_secs(30), "the ticket expires", || {
        let (http, n2, elsewhere, code) = (&http, &n2, &elsewhere, &code);
        async move {
            let (_, e) = redeem(http, n2, elsewhere, code, None).await;
            let why = e["error_description"].as_str().unwrap_or_default();
            why.contains("expired").then_some(())
        }
    })
    .await;
    assert!(
        issued.elapsed() >= Duration::from_secs(4),
        "the ticket expired after {:?}, before its 5 s lifetime",
        issued.elapsed()
    );
    let (s, e) = redeem(&http, &n2, &shop, &code, req.verifier.as_deref()).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // Userinfo with a fresh token shows the approved parameters.
    let req = AuthRequest::new(&shop);
    let code = code_from(&mut agent, &n2, &req, &shop).await;
    let (_, tok) = redeem(&http, &n1, &shop, &code, req.verifier.as_deref()).await;
    let info: serde_json::Value = http
        .get(format!("{n3}/sso/userinfo"))
        .bearer_auth(tok["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["preferred_username"], "alice");
    assert_eq!(info["email"], "alice@example.test");
    cluster.assert_no_panics();
}

/// Polls every node until `token` is inactive for `site`.
async fn inactive_everywhere(cluster: &Cluster, site: &TestSite, token: &str, why: &str) {
    for id in cluster.ids() {
        let base = cluster.public_url(id);
        poll_until(CONVERGE_DEADLINE, &format!("node {id}: {why}"), || {
            let (http, base) = (cluster.http(), &base);
            async move { (!introspect_active(http, base, site, token).await).then_some(()) }
        })
        .await;
    }
}

/// A ticket issued through node 1 for `agent`'s session, redeemed through
/// node 2: the access token.
async fn login_token(cluster: &Cluster, agent: &mut Agent, shop: &TestSite) -> String {
    let req = AuthRequest::new(shop);
    let code = code_from(agent, &cluster.public_url(1), &req, shop).await;
    let n2 = cluster.public_url(2);
    let (status, tok) = redeem(cluster.http(), &n2, shop, &code, req.verifier.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{tok}");
    tok["access_token"].as_str().unwrap().to_string()
}

/// A login's access token is sealed (no record of its own): it holds on
/// every node while its session, its site and the user's trust do, and
/// goes when it is revoked alone (RFC 7009), when its trust is revoked
/// (approving again does not bring it back), when any byte of it is
/// altered, or when the session ends; a token of another session or
/// issued later is not taken with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_access_tokens_hold_while_session_site_and_trust_do() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let mut agent = signed_in_with_trust(&cluster, 1, &shop).await;
    let http = cluster.http().clone();
    let (n1, n2, n3) = (
        cluster.public_url(1),
        cluster.public_url(2),
        cluster.public_url(3),
    );
    let first = login_token(&cluster, &mut agent, &shop).await;
    assert!(first.starts_with("a1."), "a sealed access token: {first}");
    let second = login_token(&cluster, &mut agent, &shop).await;
    for n in [&n1, &n2, &n3] {
        assert!(introspect_active(&http, n, &shop, &first).await);
    }
    // Any byte altered: inactive, and nothing else changes.
    let body_at = first.rfind('.').unwrap() + 1;
    for i in (body_at..first.len()).step_by(7) {
        let mut b = first.clone().into_bytes();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(b).unwrap();
        assert!(
            !introspect_active(&http, &n3, &shop, &altered).await,
            "byte {i}"
        );
    }
    // Revoked alone (RFC 7009) through node 3: gone everywhere; the
    // session's other token stays.
    let resp = http
        .post(format!("{n3}/sso/revoke"))
        .basic_auth(&shop.client_id, shop.secret.as_deref())
        .form(&[("token", first.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    inactive_everywhere(&cluster, &shop, &first, "the revoked token is inactive").await;
    assert!(introspect_active(&http, &n1, &shop, &second).await);

    // The trust revoked: the token goes, and approving again does not
    // bring it back; a token issued under the new trust holds.
    let resp = cluster
        .admin(2)
        .request(reqwest::Method::DELETE, "/admin/v1/users/alice/trust/shop")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    inactive_everywhere(&cluster, &shop, &second, "a token of a revoked trust").await;
    let trust = agent.get(&AuthRequest::new(&shop).url(&n1)).await;
    agent.approve(&n1, &trust, "username", true, true).await;
    assert!(!introspect_active(&http, &n2, &shop, &second).await);
    let third = login_token(&cluster, &mut agent, &shop).await;
    let info = http
        .get(format!("{n3}/sso/userinfo"))
        .bearer_auth(&third)
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), StatusCode::OK);

    // Another session of the same user keeps its token when this one ends.
    let mut other = Agent::new(&cluster);
    other.sign_in_ok(&n2, "alice", PASSWORD).await;
    let elsewhere = login_token(&cluster, &mut other, &shop).await;
    let page = agent.get(&format!("{n1}/sso/logout")).await;
    let fields: Vec<(String, String)> = page.inputs().into_iter().collect();
    agent.post_form(&format!("{n1}/sso/logout"), &fields).await;
    inactive_everywhere(&cluster, &shop, &third, "the ended session's token").await;
    assert!(introspect_active(&http, &n3, &shop, &elsewhere).await);
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_uri_must_match_exactly() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let registered = "https://shop.baa.localtest:9443/cb";
    let shop = add_confidential_site(&cluster, "shop", registered).await;
    let mut agent = signed_in_with_trust(&cluster, 1, &shop).await;
    let mut before = 0.0;
    for id in 1..=3 {
        before += cluster
            .metric(id, "baa_sso_tickets_issued_total")
            .await
            .unwrap_or(0.0);
    }
    let tricks = [
        format!("{registered}/x"),
        format!("{registered}?x=1"),
        format!("{registered}#frag"),
        "https://SHOP.baa.localtest:9443/cb".to_string(),
        "https://shop.baa.localtest:9443/CB".to_string(),
        format!("{registered}/..;/evil"),
        "https://shop.baa.localtest:9443/..;/cb".to_string(),
        "https://shop.baa.localtest:9443@evil.localtest/cb".to_string(),
        "https://evil.localtest@shop.baa.localtest:9443/cb".to_string(),
        "https://shop.baa.localtest.evil.localtest:9443/cb".to_string(),
        "https://shop-baa.localtest:9443/cb".to_string(),
        "https://shop.baa.localtest:9444/cb".to_string(),
        "http://shop.baa.localtest:9443/cb".to_string(),
        "https://shop.baa.localtest:9443/cb/".to_string(),
    ];
    for (i, uri) in tricks.iter().enumerate() {
        let node = cluster.public_url(1 + (i as u64 % 3));
        let req = AuthRequest::new(&shop).set("redirect_uri", uri);
        let page = agent.get(&req.url(&node)).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{uri}: {}", page.body);
        assert!(page.location().is_none(), "{uri} redirected");
        assert!(
            page.body.contains("invalid_redirect_uri"),
            "{uri}: {}",
            page.body
        );
        assert!(!page.body.contains("name=\"code\""), "{uri}: {}", page.body);
        assert_eq!(page.form_action(), None, "{uri}: a form on the error page");
    }
    let mut after = 0.0;
    for id in 1..=3 {
        after += cluster
            .metric(id, "baa_sso_tickets_issued_total")
            .await
            .unwrap_or(0.0);
    }
    assert_eq!(before, after, "a ticket was issued for a bad redirect URI");
    // The registered one still works.
    let page = agent
        .get(&AuthRequest::new(&shop).url(&cluster.public_url(2)))
        .await;
    assert!(posted(&page, registered).contains_key("code"));
    cluster.assert_no_panics();
}

/// The sign-in page's body with the per-response values (CSP nonce) blanked.
fn normalised(body: &str, typed: &str) -> String {
    let mut out = String::new();
    for (i, part) in body.split("nonce=\"").enumerate() {
        if i == 0 {
            out.push_str(part);
        } else {
            out.push_str("nonce=\"N");
            out.push_str(&part[part.find('"').unwrap_or(0)..]);
        }
    }
    out.replace(typed, "TYPED")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sign_ins_are_throttled_cluster_wide() {
    let mut opts = ClusterOptions::default();
    opts.sso.insert("max_account_failures".into(), 4.into());
    opts.sso.insert("lockout_s".into(), 120.into());
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    create_user(&cluster, "bob", PASSWORD).await;

    // Unknown user and wrong password: same status, same page, comparable time.
    let mut agent = Agent::new(&cluster);
    let n1 = cluster.public_url(1);
    let t = Instant::now();
    let wrong = agent.sign_in(&n1, "bob", "not the password").await;
    let wrong_time = t.elapsed();
    let t = Instant::now();
    let unknown = agent.sign_in(&n1, "nobodyxx", "not the password").await;
    let unknown_time = t.elapsed();
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.status, wrong.status);
    assert_eq!(
        normalised(&wrong.body, "bob"),
        normalised(&unknown.body, "nobodyxx")
    );
    assert!(!agent.has_session_cookie());
    println!("wrong password answered in {wrong_time:?}, unknown user in {unknown_time:?}");

    // Four failures spread over the three nodes lock alice everywhere.
    for (i, node) in [1u64, 2, 3, 1].iter().enumerate() {
        let a = agent
            .sign_in(&cluster.public_url(*node), "alice", "wrong guess")
            .await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "failure {i} on node {node}"
        );
    }
    for node in 1..=3 {
        let a = agent
            .sign_in(&cluster.public_url(node), "alice", PASSWORD)
            .await;
        assert_eq!(
            a.status,
            StatusCode::TOO_MANY_REQUESTS,
            "node {node}: {}",
            a.body
        );
        let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=120).contains(&retry), "{retry}");
        assert!(
            !agent.has_session_cookie(),
            "a locked account got a session"
        );
    }
    // An unknown name is locked the same way (nothing tells the two apart).
    for node in [2u64, 3, 1, 2] {
        agent
            .sign_in(&cluster.public_url(node), "ghost", "wrong guess")
            .await;
    }
    let a = agent.sign_in(&n1, "ghost", "anything at all").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    // bob (one failure) is unaffected.
    let a = agent.sign_in(&cluster.public_url(3), "bob", PASSWORD).await;
    assert_eq!(a.status, StatusCode::SEE_OTHER);
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_expired_or_orphaned_cookies_are_no_session() {
    let mut opts = ClusterOptions::default();
    opts.sso.insert("session_lifetime_s".into(), 20.into());
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    create_user(&cluster, "mallory", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let alice = signed_in_with_trust(&cluster, 1, &shop).await;
    let good = alice.sso_cookies().unwrap();
    let silent = AuthRequest::new(&shop).set("prompt", "none");
    let n2 = cluster.public_url(2);

    let answer_with = |session: Option<String>, reference: Option<String>| {
        let mut a = Agent::new(&cluster);
        a.cookies
            .extend(session.map(|v| (SESSION_COOKIE.to_string(), v)));
        a.cookies
            .extend(reference.map(|v| (REFERENCE_COOKIE.to_string(), v)));
        let url = silent.url(&n2);
        let redirect = shop.redirect_uri.clone();
        async move {
            let page = a.get(&url).await;
            posted(&page, &redirect)
        }
    };
    let both = |c: &SsoCookies| (Some(c.session.clone()), Some(c.reference.clone()));
    let (s, r) = both(&good);
    assert!(answer_with(s, r).await.contains_key("code"));

    let flip = |s: &str, at: usize| {
        let mut b = s.as_bytes().to_vec();
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let mut mallory = Agent::new(&cluster);
    mallory
        .sign_in(&cluster.public_url(3), "mallory", PASSWORD)
        .await;
    let planted = mallory.sso_cookies().unwrap();
    let (s, r) = both(&good);
    let variants = [
        (
            "flipped session byte",
            Some(flip(&good.session, 5)),
            r.clone(),
        ),
        (
            "flipped reference signature",
            s.clone(),
            Some(flip(&good.reference, good.reference.len() - 5)),
        ),
        ("session alone", s.clone(), None),
        ("reference alone", None, r.clone()),
        (
            "another session's reference",
            s.clone(),
            Some(planted.reference.clone()),
        ),
        (
            "truncated session",
            Some(good.session[..40].to_string()),
            r.clone(),
        ),
        ("garbage", Some("%%%".into()), Some("x.y.z".into())),
    ];
    for (what, session, reference) in variants {
        let f = answer_with(session, reference).await;
        assert_eq!(
            f.get("error").map(String::as_str),
            Some("login_required"),
            "{what}"
        );
    }

    // A planted session (mallory's own cookies) is replaced at sign-in.
    let mut victim = Agent::new(&cluster);
    victim.set_sso_cookies(&planted);
    victim.sign_in(&n2, "alice", PASSWORD).await;
    let fresh = victim.sso_cookies().unwrap();
    assert_ne!(fresh.session, planted.session, "same session id");
    assert_ne!(fresh.reference, planted.reference);

    // Signed by a key that is no longer published: an emergency rotation
    // retires the old key at once, and cookies it signed stop working.
    let resp = cluster
        .http()
        .post(format!(
            "{}/admin/v1/keys/rotate?retire_old_after_s=0",
            cluster.manage_url(1)
        ))
        .bearer_auth(cluster.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    poll_until(CONVERGE_DEADLINE, "old-key cookie refused", || {
        let (s, r) = both(&good);
        let check = answer_with(s, r);
        async move {
            (check.await.get("error").map(String::as_str) == Some("login_required")).then_some(())
        }
    })
    .await;

    // Expired: after the session lifetime (20 s here) a new session's cookie
    // stops working — polled, and not before the lifetime is over.
    let mut late = Agent::new(&cluster);
    let signed_in = Instant::now();
    late.sign_in(&n2, "alice", PASSWORD).await;
    let cookie = late.sso_cookies().unwrap();
    let (s, r) = both(&cookie);
    assert!(answer_with(s, r).await.contains_key("code"));
    poll_until(
        Duration::from_secs(60),
        "the session's cookie expires",
        || {
            let (s, r) = both(&cookie);
            let check = answer_with(s, r);
            async move {
                let f = check.await;
                (f.get("error").map(String::as_str) == Some("login_required")).then_some(())
            }
        },
    )
    .await;
    assert!(
        signed_in.elapsed() >= Duration::from_secs(19),
        "the session ended after {:?}, before its 20 s lifetime",
        signed_in.elapsed()
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_between_sign_in_and_trust_page() {
    let mut cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let (leader, follower, other) = roles(&cluster).await;
    let base = cluster.public_url(follower);
    let mut agent = Agent::new(&cluster);
    assert_eq!(
        agent.sign_in(&base, "alice", PASSWORD).await.status,
        StatusCode::SEE_OTHER
    );
    let req = AuthRequest::new(&shop);
    let trust = agent.get(&req.url(&base)).await;
    assert!(trust.body.contains("id=\"trust\""), "{}", trust.body);

    cluster.kill(leader);
    let started = Instant::now();
    let page = agent
        .approve(&base, &trust, "pseudonym", false, false)
        .await;
    let code = posted(&page, &shop.redirect_uri)["code"].clone();
    println!(
        "trust approved {:?} after the leader was killed",
        started.elapsed()
    );
    let (status, tok) = redeem(
        cluster.http(),
        &cluster.public_url(other),
        &shop,
        &code,
        req.verifier.as_deref(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tok}");
    let c = claims(tok["id_token"].as_str().unwrap());
    assert!(
        c["preferred_username"].as_str().unwrap().starts_with("u-"),
        "{c}"
    );
    assert!(c.get("name").is_none() && c.get("email").is_none(), "{c}");
}

/// A ticket issued, then the leader killed: the one redemption succeeds
/// through a survivor (its command waits for the new leader), a second one
/// through the other survivor is refused and takes the first one's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_between_ticket_and_redemption() {
    let mut cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let (leader, follower, other) = roles(&cluster).await;
    let mut agent = signed_in_with_trust(&cluster, follower, &shop).await;
    let req = AuthRequest::new(&shop);
    let code = code_from(&mut agent, &cluster.public_url(follower), &req, &shop).await;

    cluster.kill(leader);
    let v = req.verifier.as_deref();
    let http = cluster.http().clone();
    let (status, tok) = redeem(&http, &cluster.public_url(follower), &shop, &code, v).await;
    assert_eq!(status, StatusCode::OK, "{tok}");
    let token = tok["access_token"].as_str().unwrap().to_string();
    let (status, err) = redeem(&http, &cluster.public_url(other), &shop, &code, v).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{err}");
    assert_eq!(err["error"], "invalid_grant");
    for id in [follower, other] {
        let base = cluster.public_url(id);
        assert!(
            !introspect_active(&http, &base, &shop, &token).await,
            "node {id}"
        );
    }
    cluster.assert_no_panics();
}

/// The leader of the 3-node cluster and its two followers.
async fn roles(cluster: &Cluster) -> (u64, u64, u64) {
    let leader = cluster.leader().await;
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let other = (1..=3).find(|id| *id != leader && *id != follower).unwrap();
    (leader, follower, other)
}

/// Authlib, an OIDC client written elsewhere, completes the code flow for
/// sites registered for each ID-token algorithm, checking the ID token
/// (signature against the JWKS, `at_hash`, nonce) accepting only the
/// algorithm its site registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_oidc_client_completes_the_code_flow() {
    let python = std::env::var("BAA_PYTHON").unwrap_or_else(|_| {
        panic!("BAA_PYTHON is not set: run the tests through ops/test, which installs authlib")
    });
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    for (i, alg) in ["RS256", "ES256", "EdDSA"].into_iter().enumerate() {
        let site = add_site(
            &cluster,
            serde_json::json!({
                "client_id": format!("authlib-{}", alg.to_lowercase()),
                "name": format!("Authlib client ({alg})"),
                "redirect_uris": ["https://app.example.test/callback"],
                "id_token_signed_response_alg": alg,
            }),
        )
        .await;
        let view = cluster.admin(1).site(&site.client_id).await.unwrap();
        assert_eq!(view.id_token_signed_response_alg.name(), alg);
        let agent = signed_in_with_trust(&cluster, 1 + i as u64, &site).await;
        let cookie = agent.sso_cookies().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/oidc/authlib_flow.py");
        let out = tokio::process::Command::new(&python)
            .arg(script)
            .args(["--issuer", &cluster.issuer()])
            .args(["--discovery-base", &cluster.agency_url(3 - i as u64)])
            .args(["--client-id", &site.client_id])
            // `=`: a generated secret may begin with `-`.
            .arg(format!(
                "--client-secret={}",
                site.secret.as_deref().unwrap()
            ))
            .args(["--redirect-uri", &site.redirect_uri])
            .args(["--sso-cookie", &cookie.header()])
            .args(["--ca-file", cluster.ca_pem().to_str().unwrap()])
            .args(["--resolve", "login.baa.localtest=127.0.0.1"])
            .args(["--id-token-alg", alg])
            .output()
            .await
            .expect("running the authlib script");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "authlib flow ({alg}) failed:\n{stdout}\n{stderr}"
        );
        let line: serde_json::Value =
            serde_json::from_str(stdout.trim().lines().last().unwrap()).unwrap();
        assert_eq!(line["ok"], true, "{line}");
        assert_eq!(line["preferred_username"], "alice");
        assert_eq!(line["alg"], alg);
    }
}

/// Asks node `id`'s status endpoint about `reference`, as `site`.
async fn session_status(
    cluster: &Cluster,
    id: u64,
    site: &TestSite,
    reference: &str,
) -> serde_json::Value {
    let resp = cluster
        .http()
        .post(format!("{}/sso/session_status", cluster.public_url(id)))
        .basic_auth(&site.client_id, site.secret.as_deref())
        .form(&[("reference", reference)])
        .send()
        .await
        .expect("status request");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    resp.json().await.expect("status JSON")
}

/// Polls every node until `site`'s status answer about `reference` is
/// `want`; returns the time it took the slowest node, from `since`.
async fn status_flips(
    cluster: &Cluster,
    site: &TestSite,
    reference: &str,
    want: serde_json::Value,
    since: Instant,
) -> Duration {
    let mut slowest = Duration::ZERO;
    for id in cluster.ids() {
        poll_until(
            CONVERGE_DEADLINE,
            &format!("node {id} answers {want} to {}", site.client_id),
            || async { (session_status(cluster, id, site, reference).await == want).then_some(()) },
        )
        .await;
        slowest = slowest.max(since.elapsed());
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_endpoint_answers_sites_and_flips_within_a_second() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let news = add_confidential_site(&cluster, "news", "https://news.baa.localtest:9443/cb").await;
    let mut agent = signed_in_with_trust(&cluster, 1, &shop).await;
    let reference = agent.sso_cookies().unwrap().reference;
    let since = Instant::now();
    status_flips(
        &cluster,
        &shop,
        &reference,
        json!({"active": true, "trusted": true}),
        since,
    )
    .await;
    status_flips(
        &cluster,
        &news,
        &reference,
        json!({"active": true, "trusted": false}),
        since,
    )
    .await;
    // Not a reference of this agency's: simply inactive. No credential: refused.
    for bad in ["", "x.y.z", &reference[..reference.len() - 4]] {
        assert_eq!(
            session_status(&cluster, 2, &shop, bad).await,
            json!({"active": false, "trusted": false}),
            "{bad:?}"
        );
    }
    let anonymous = cluster
        .http()
        .post(format!("{}/sso/session_status", cluster.public_url(3)))
        .form(&[("reference", reference.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    // Trust revoked: every node tells the shop within a second.
    let revoked = cluster
        .http()
        .delete(format!(
            "{}/admin/v1/users/alice/trust/shop",
            cluster.manage_url(2)
        ))
        .bearer_auth(cluster.admin_token())
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{}", revoked.status());
    let t = Instant::now();
    let after_revoke = status_flips(
        &cluster,
        &shop,
        &reference,
        json!({"active": true, "trusted": false}),
        t,
    )
    .await;

    // Signed out: every node says inactive within a second.
    let base = cluster.public_url(3);
    let page = agent.get(&format!("{base}/sso/logout")).await;
    let csrf = page
        .inputs()
        .get("csrf")
        .cloned()
        .expect("csrf on the sign-out page");
    let out = agent
        .post_form(&format!("{base}/sso/logout"), &[("csrf".into(), csrf)])
        .await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    let t = Instant::now();
    let after_sign_out = status_flips(
        &cluster,
        &news,
        &reference,
        json!({"active": false, "trusted": false}),
        t,
    )
    .await;
    println!(
        "status answers flipped on every node {} ms after the trust revocation and {} ms after the sign-out",
        after_revoke.as_millis(),
        after_sign_out.as_millis()
    );
    assert!(after_revoke <= Duration::from_secs(1), "{after_revoke:?}");
    assert!(
        after_sign_out <= Duration::from_secs(1),
        "{after_sign_out:?}"
    );
    cluster.assert_no_panics();
}
