//! The attack cases of the review (ATTACKS.md), one named test each (the
//! case id leads the name), tried against a real cluster as an attacker
//! would. C1 lives with the other cluster-port checks in `cluster_port.rs`.

use std::time::{Duration, Instant};

use baa_cluster_tests::harness::{cli_gateway_app, CONVERGE_DEADLINE};
use baa_cluster_tests::partner::PartnerSite;
use baa_cluster_tests::sso::{
    self, add_confidential_site, create_user, query_params, Agent, AuthRequest, TestSite,
    CSRF_COOKIE,
};
use baa_cluster_tests::upstream::Upstream;
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use reqwest::header::SET_COOKIE;
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery";

/// H5: a cookie whose name only decodes or trims to the CSRF cookie's name
/// (which a sibling host under the shared domain can set) is not the CSRF
/// cookie: a form carrying its value is refused and nothing happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h5_csrf_cookie_names_are_matched_exactly() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let base = cluster.public_url(1);
    let forged = "A".repeat(43);
    for name in [
        CSRF_COOKIE.replace("__", "%5F%5F"),
        format!("\u{2000}{CSRF_COOKIE}"),
        format!("{CSRF_COOKIE}\u{2000}"),
        CSRF_COOKIE.replace('-', "%2D"),
    ] {
        let mut agent = Agent::new(&cluster);
        agent.cookies.insert(name.clone(), forged.clone());
        let answer = agent
            .post_form(
                &format!("{base}/sso/signin"),
                &[
                    ("csrf".into(), forged.clone()),
                    ("username".into(), "alice".into()),
                    ("password".into(), PASSWORD.into()),
                ],
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "a cookie named {name:?} was taken for the CSRF cookie: {}",
            answer.body
        );
        assert!(answer.body.contains("csrf_mismatch"), "{}", answer.body);
        assert!(
            !agent.has_session_cookie(),
            "a forged sign-in made a session"
        );
    }
    // The real cookie still works.
    let mut agent = Agent::new(&cluster);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;
    cluster.assert_no_panics();
}

/// H4: everything a sibling host under the shared cookie domain receives
/// (every cookie the agency sets with `Domain=`) opens nothing: replayed
/// alone it passes no forward-auth check and signs no one in at a site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_shared_domain_cookies_open_nothing() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let site = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest/cb").await;
    let base = cluster.public_url(1);
    let mut user = Agent::new(&cluster);
    let signed_in = user.sign_in_ok(&base, "alice", PASSWORD).await;
    // The victim's session works: the site gets as far as the trust question.
    let own = user
        .get(
            &AuthRequest::new(&site)
                .set("response_mode", "query")
                .set("prompt", "none")
                .url(&base),
        )
        .await;
    let own = query_params(&own.location().unwrap_or_default());
    assert_eq!(
        own.get("error").map(String::as_str),
        Some("consent_required")
    );

    let mut thief = Agent::new(&cluster);
    for v in signed_in.headers.get_all(SET_COOKIE) {
        let v = v.to_str().unwrap();
        if v.to_ascii_lowercase().contains("domain=") {
            let (name, value) = v.split(';').next().unwrap().split_once('=').unwrap();
            thief.cookies.insert(name.to_string(), value.to_string());
        }
    }
    assert!(!thief.cookies.is_empty(), "no shared-domain cookie was set");
    for node in 1..=3 {
        let base = cluster.public_url(node);
        let verify = thief.get(&format!("{base}/auth/verify")).await;
        assert_eq!(
            verify.status,
            StatusCode::UNAUTHORIZED,
            "node {node}: shared-domain cookies {:?} passed /auth/verify",
            thief.cookies.keys()
        );
        let silent = thief
            .get(
                &AuthRequest::new(&site)
                    .set("response_mode", "query")
                    .set("prompt", "none")
                    .url(&base),
            )
            .await;
        let silent = query_params(&silent.location().unwrap_or_default());
        assert_eq!(
            silent.get("error").map(String::as_str),
            Some("login_required"),
            "node {node}: shared-domain cookies were taken for a session: {silent:?}"
        );
    }
    cluster.assert_no_panics();
}

/// M1: guessing user codes at `/device/decide` is throttled like at
/// `/device`: past the per-source limit (50 by default) the answer is 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m1_device_decisions_are_throttled() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;
    let page = agent.get(&format!("{base}/device")).await;
    let csrf = page
        .inputs()
        .get("csrf")
        .cloned()
        .expect("csrf on the device page");
    let letters = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut throttled_at = None;
    for i in 0..60usize {
        let code: String = (0..8)
            .map(|j| letters[(i * 7 + j * 13 + i / 3) % letters.len()] as char)
            .collect();
        let answer = agent
            .post_form(
                &format!("{base}/device/decide"),
                &[
                    ("csrf".into(), csrf.clone()),
                    ("user_code".into(), code),
                    ("decision".into(), "approve".into()),
                ],
            )
            .await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            throttled_at = Some(i);
            break;
        }
        assert_ne!(answer.status, StatusCode::OK, "wrong code {i} accepted");
    }
    let at = throttled_at.expect("60 wrong codes at /device/decide and never a 429");
    println!("/device/decide throttled after {at} wrong codes");
    cluster.assert_no_panics();
}

/// A site that may ask for refresh tokens (`offline_access`).
async fn offline_site(cluster: &Cluster, client_id: &str) -> TestSite {
    sso::add_site(
        cluster,
        serde_json::json!({
            "client_id": client_id,
            "name": client_id,
            "redirect_uris": [format!("https://{client_id}.baa.localtest/cb")],
            "allowed_scopes": ["openid", "profile", "offline_access"],
            "default_response_mode": "form_post",
        }),
    )
    .await
}

/// Signs `alice` in at node 1 (or reuses `agent`'s session), approves
/// `site` and redeems a code with `offline_access`: the token answer.
async fn tokens_for(cluster: &Cluster, agent: &mut Agent, site: &TestSite) -> serde_json::Value {
    let base = cluster.public_url(1);
    if !agent.has_session_cookie() {
        agent.sign_in_ok(&base, "alice", PASSWORD).await;
    }
    let req = AuthRequest::new(site).set("scope", "openid offline_access");
    let code = agent.code_for(&base, &req, false).await;
    let (status, tokens) = sso::redeem(
        cluster.http(),
        &cluster.public_url(2),
        site,
        &code,
        req.verifier.as_deref(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert!(tokens["refresh_token"].is_string(), "{tokens}");
    tokens
}

/// H2: an access token opens only the apps that name its client. The token
/// the web site `shop` got for signing alice in passes neither the
/// forward-auth check nor the gateway, on any node; the command-line
/// client's token, which both accept, passes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_tokens_are_bound_to_their_audience() {
    let upstream = Upstream::start().await;
    let mut opts = ClusterOptions::default();
    opts.gateway.push(cli_gateway_app(upstream.port));
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = offline_site(&cluster, "shop").await;
    let cli = sso::add_cli_client(&cluster).await;
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    let shop_token = tokens_for(&cluster, &mut agent, &shop).await["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let req = AuthRequest::new(&cli)
        .set("scope", "openid profile")
        .set("response_mode", "query");
    let trust = agent.get(&req.url(&base)).await;
    assert!(
        trust.body.contains("id=\"trust\""),
        "{} {:?} {}",
        trust.status,
        trust.location(),
        trust.body
    );
    let done = agent.approve(&base, &trust, "username", false, false).await;
    let code =
        query_params(&done.location().unwrap_or_else(|| panic!("{}", done.body)))["code"].clone();
    let (status, tokens) =
        sso::redeem(cluster.http(), &base, &cli, &code, req.verifier.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let cli_token = tokens["access_token"].as_str().unwrap().to_string();

    let http = cluster.http().clone();
    let verify = |id: u64, query: &'static str, token: String| {
        let url = format!("{}/auth/verify{query}", cluster.public_url(id));
        let http = http.clone();
        async move {
            let resp = http.get(url).bearer_auth(token).send().await.unwrap();
            let user = resp
                .headers()
                .get("x-baa-user")
                .map(|u| u.to_str().unwrap().to_string());
            (resp.status(), user)
        }
    };
    let gateway = |id: u64, token: String| {
        let url = format!("{}/gw/app/hello", cluster.public_url(id));
        let http = http.clone();
        async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for id in 1..=3 {
        for query in ["?app=tools", ""] {
            assert_eq!(
                verify(id, query, shop_token.clone()).await,
                (StatusCode::UNAUTHORIZED, None),
                "node {id}: shop's token passed /auth/verify{query}"
            );
        }
        assert_eq!(
            gateway(id, shop_token.clone()).await,
            StatusCode::UNAUTHORIZED,
            "node {id}: shop's token passed the gateway"
        );
        assert_eq!(
            verify(id, "?app=tools", cli_token.clone()).await,
            (StatusCode::OK, Some("alice".to_string())),
            "node {id}"
        );
        // A token is checked against an app, never on its own.
        assert_eq!(
            verify(id, "", cli_token.clone()).await.0,
            StatusCode::UNAUTHORIZED,
            "node {id}"
        );
        assert_eq!(
            gateway(id, cli_token.clone()).await,
            StatusCode::OK,
            "node {id}"
        );
    }
    assert_eq!(
        upstream.requests().len(),
        3,
        "only the accepted token got through"
    );
    cluster.assert_no_panics();
}

/// `grant_type=refresh_token` as `site` at node `id`.
async fn refresh(
    cluster: &Cluster,
    id: u64,
    site: &TestSite,
    token: &str,
) -> (StatusCode, serde_json::Value) {
    let resp = cluster
        .http()
        .post(format!("{}/sso/token", cluster.public_url(id)))
        .basic_auth(&site.client_id, site.secret.as_deref())
        .form(&[("grant_type", "refresh_token"), ("refresh_token", token)])
        .send()
        .await
        .expect("refresh request");
    let status = resp.status();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// `GET /sso/userinfo` with `token` at node `id`: the status.
async fn userinfo(cluster: &Cluster, id: u64, token: &str) -> StatusCode {
    cluster
        .http()
        .get(format!("{}/sso/userinfo", cluster.public_url(id)))
        .bearer_auth(token)
        .send()
        .await
        .expect("userinfo request")
        .status()
}

/// Polls every node until `dead` holds of it; the slowest node's time from `since`.
async fn dead_everywhere<F, Fut>(cluster: &Cluster, what: &str, since: Instant, dead: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut slowest = Duration::ZERO;
    for id in cluster.ids() {
        poll_until(CONVERGE_DEADLINE, &format!("{what} on node {id}"), || {
            let f = dead(id);
            async move { f.await.then_some(()) }
        })
        .await;
        slowest = slowest.max(since.elapsed());
    }
    slowest
}

/// L1: reusing a refresh token revokes its family *and* the access tokens
/// issued from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_refresh_reuse_kills_the_family_s_access_tokens() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let app = offline_site(&cluster, "app").await;
    let mut agent = Agent::new(&cluster);
    let first = tokens_for(&cluster, &mut agent, &app).await;
    let r1 = first["refresh_token"].as_str().unwrap();
    let (status, second) = refresh(&cluster, 3, &app, r1).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let a2 = second["access_token"].as_str().unwrap().to_string();
    assert_eq!(userinfo(&cluster, 1, &a2).await, StatusCode::OK);
    // An attacker replays the first refresh token.
    let (status, _) = refresh(&cluster, 2, &app, r1).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let t = Instant::now();
    let a2 = a2.as_str();
    let took = dead_everywhere(&cluster, "the family's access token refused", t, |id| {
        let cluster = &cluster;
        async move { userinfo(cluster, id, a2).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    println!("access token of the reused family dead everywhere after {took:?}");
    let r2 = second["refresh_token"].as_str().unwrap();
    assert_eq!(
        refresh(&cluster, 1, &app, r2).await.0,
        StatusCode::BAD_REQUEST
    );
    cluster.assert_no_panics();
}

/// M5: revoking a trust relationship, or removing a site, revokes the
/// tokens the site holds for it — refresh tokens included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m5_revoking_trust_or_removing_a_site_revokes_its_tokens() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let (shop, news) = (
        offline_site(&cluster, "shop").await,
        offline_site(&cluster, "news").await,
    );
    let mut agent = Agent::new(&cluster);
    let at_shop = tokens_for(&cluster, &mut agent, &shop).await;
    let at_news = tokens_for(&cluster, &mut agent, &news).await;
    let admin = |method: reqwest::Method, path: &str| {
        cluster
            .http()
            .request(method, format!("{}/admin/v1{path}", cluster.manage_url(3)))
            .bearer_auth(cluster.admin_token())
            .send()
    };
    let resp = admin(reqwest::Method::DELETE, "/users/alice/trust/shop")
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let t = Instant::now();
    let access = at_shop["access_token"].as_str().unwrap();
    let took = dead_everywhere(&cluster, "shop's access token refused", t, |id| {
        let cluster = &cluster;
        async move { userinfo(cluster, id, access).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    let shop_refresh = at_shop["refresh_token"].as_str().unwrap();
    assert_eq!(
        refresh(&cluster, 2, &shop, shop_refresh).await.0,
        StatusCode::BAD_REQUEST,
        "shop's refresh token survived the revoked trust"
    );
    // The other site is untouched.
    let news_access = at_news["access_token"].as_str().unwrap();
    assert_eq!(userinfo(&cluster, 1, news_access).await, StatusCode::OK);

    let resp = admin(reqwest::Method::DELETE, "/sites/news").await.unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let t = Instant::now();
    let took_site = dead_everywhere(&cluster, "news's access token refused", t, |id| {
        let cluster = &cluster;
        async move { userinfo(cluster, id, news_access).await == StatusCode::UNAUTHORIZED }
    })
    .await;
    println!("tokens dead everywhere {took:?} after the trust revocation, {took_site:?} after the site removal");
    cluster.assert_no_panics();
}

/// Everything that opens alice's session: the browser cookies at
/// `/auth/verify`, the site's access token at userinfo, its refresh token.
struct Held {
    agent: Agent,
    site: TestSite,
    access: String,
    refresh: String,
}

impl Held {
    async fn new(cluster: &Cluster, site: &TestSite) -> Held {
        let mut agent = Agent::new(cluster);
        let tokens = tokens_for(cluster, &mut agent, site).await;
        Held {
            agent,
            site: site.clone(),
            access: tokens["access_token"].as_str().unwrap().to_string(),
            refresh: tokens["refresh_token"].as_str().unwrap().to_string(),
        }
    }

    /// Whether nothing of it opens anything on node `id` any more.
    async fn dead_on(&self, cluster: &Cluster, id: u64) -> bool {
        let mut agent = self.agent.clone();
        let verify = agent
            .get(&format!("{}/auth/verify", cluster.public_url(id)))
            .await;
        let introspect = sso::introspect_active(
            cluster.http(),
            &cluster.public_url(id),
            &self.site,
            &self.access,
        )
        .await;
        verify.status == StatusCode::UNAUTHORIZED
            && !introspect
            && userinfo(cluster, id, &self.access).await == StatusCode::UNAUTHORIZED
    }

    /// Asserts it is dead on every node within a second of `since`, and
    /// that its refresh token is refused.
    async fn assert_dead_within_a_second(&self, cluster: &Cluster, what: &str, since: Instant) {
        let took = dead_everywhere(cluster, what, since, |id| self.dead_on(cluster, id)).await;
        println!("{what}: cookies and tokens refused on every node after {took:?}");
        assert!(took <= Duration::from_secs(1), "{what}: took {took:?}");
        let (status, body) = refresh(cluster, 1, &self.site, &self.refresh).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: refresh {body}");
    }
}

/// H3: disabling a user or resetting their password ends their sessions and
/// tokens on every node within a second; the admin API lists and ends a
/// user's sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_disabling_or_resetting_a_password_ends_sessions() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let app = offline_site(&cluster, "app").await;
    let admin = |method: reqwest::Method, path: &str| {
        cluster
            .http()
            .request(method, format!("{}/admin/v1{path}", cluster.manage_url(2)))
            .bearer_auth(cluster.admin_token())
    };

    let held = Held::new(&cluster, &app).await;
    assert!(!held.dead_on(&cluster, 3).await);
    let resp = admin(reqwest::Method::POST, "/users/alice/disable")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    held.assert_dead_within_a_second(&cluster, "disabled", Instant::now())
        .await;

    let resp = admin(reqwest::Method::POST, "/users/alice/enable")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let held = Held::new(&cluster, &app).await;
    let resp = admin(reqwest::Method::PATCH, "/users/alice")
        .json(&serde_json::json!({ "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    held.assert_dead_within_a_second(&cluster, "password reset", Instant::now())
        .await;

    // The admin API lists a user's sessions and ends one, or all.
    let (one, two) = (
        Held::new(&cluster, &app).await,
        Held::new(&cluster, &app).await,
    );
    let listed: serde_json::Value = admin(reqwest::Method::GET, "/users/alice/sessions")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sids: Vec<&str> = listed["sessions"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|s| s["sid"].as_str().unwrap())
        .collect();
    assert_eq!(sids.len(), 2, "{listed}");
    let mut probe = one.agent.clone();
    let one_sid = probe
        .get(&format!("{}/auth/verify", cluster.public_url(1)))
        .await
        .headers["x-baa-session"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(sids.contains(&one_sid.as_str()), "{listed}");
    let resp = admin(reqwest::Method::DELETE, &format!("/sessions/{one_sid}"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    one.assert_dead_within_a_second(&cluster, "one session ended", Instant::now())
        .await;
    assert!(
        !two.dead_on(&cluster, 1).await,
        "the other session ended too"
    );
    let resp = admin(reqwest::Method::DELETE, "/users/alice/sessions")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    two.assert_dead_within_a_second(&cluster, "every session ended", Instant::now())
        .await;

    // And the CLI: an empty list now; an unknown session is a clear error.
    let out = cluster
        .cli(1, &["session", "list", "--user", "alice"])
        .await;
    out.assert_success("baa session list");
    assert!(!out.stdout.contains(&one_sid), "{}", out.stdout);
    let out = cluster
        .cli(1, &["session", "revoke", "--sid", &one_sid])
        .await;
    assert!(
        !out.status.success() && out.stderr.contains("session_not_found"),
        "{}",
        out.stderr
    );
    cluster.assert_no_panics();
}

/// M4: a public native client never gets a code without the user seeing a
/// page (RFC 8252 §8.6): any local program can claim its loopback redirect,
/// so an earlier approval does not carry over; `prompt=none` gets
/// `consent_required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m4_public_native_clients_ask_the_user_every_time() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let cli = sso::add_cli_client(&cluster).await;
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;
    let request = |port: u16| {
        AuthRequest::new(&cli)
            .set("redirect_uri", &format!("http://127.0.0.1:{port}/callback"))
            .set("scope", "openid profile")
            .set("response_mode", "query")
    };
    let trust = agent.get(&request(40001).url(&base)).await;
    assert!(
        trust.body.contains("id=\"trust\""),
        "{} {:?} {}",
        trust.status,
        trust.location(),
        trust.body
    );
    let done = agent.approve(&base, &trust, "username", false, false).await;
    assert!(query_params(&done.location().unwrap()).contains_key("code"));

    // Another local program, another port, the same browser session.
    let again = agent.get(&request(40002).url(&base)).await;
    assert!(
        again.body.contains("id=\"trust\""),
        "a second authorization of the public client got no page: {} {:?}",
        again.status,
        again.location()
    );
    let silent = agent
        .get(&request(40003).set("prompt", "none").url(&base))
        .await;
    let silent = query_params(&silent.location().unwrap_or_default());
    assert_eq!(
        silent.get("error").map(String::as_str),
        Some("consent_required"),
        "{silent:?}"
    );
    cluster.assert_no_panics();
}

fn jwt_claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// M3: a user who chose a pseudonym is not linkable across sites: `sub` is a
/// salted pairwise identifier per site, never the global user id, and
/// introspection does not name the user to such a site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m3_pseudonyms_are_unlinkable() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let global_id = cluster
        .admin(1)
        .get_user("alice", baa_proto::command::Consistency::Linearizable)
        .await
        .unwrap()
        .id
        .to_string();
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    agent.sign_in(&base, "alice", PASSWORD).await;
    let mut seen = Vec::new();
    for name in ["shop", "news"] {
        let site =
            add_confidential_site(&cluster, name, &format!("https://{name}.baa.localtest/cb"))
                .await;
        let req = AuthRequest::new(&site).set("scope", "openid profile");
        let trust = agent.get(&req.url(&base)).await;
        let page = agent
            .approve(&base, &trust, "pseudonym", false, false)
            .await;
        let code = page
            .inputs()
            .get("code")
            .cloned()
            .unwrap_or_else(|| panic!("{}", page.body));
        let (status, tokens) =
            sso::redeem(cluster.http(), &base, &site, &code, req.verifier.as_deref()).await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        let claims = jwt_claims(tokens["id_token"].as_str().unwrap());
        let sub = claims["sub"].as_str().unwrap().to_string();
        assert_ne!(sub, global_id, "{name}: the global user id is the sub");
        assert_ne!(claims["preferred_username"], "alice");
        let introspected: serde_json::Value = cluster
            .http()
            .post(format!("{base}/sso/introspect"))
            .basic_auth(&site.client_id, site.secret.as_deref())
            .form(&[("token", tokens["access_token"].as_str().unwrap())])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(introspected["active"], true);
        assert_eq!(introspected["sub"], sub.as_str(), "{introspected}");
        let text = introspected.to_string();
        assert!(
            !text.contains("\"alice\"") && !text.contains(&format!("\"{global_id}\"")),
            "{text}"
        );
        seen.push(sub);
    }
    assert_ne!(seen[0], seen[1], "the same sub at two sites");
    cluster.assert_no_panics();
}

/// L2: every answer of the agency carries HSTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l2_hsts_on_every_response() {
    let cluster = Cluster::start(3).await;
    let base = cluster.public_url(2);
    let http = cluster.http();
    let answers = [
        ("GET /", http.get(format!("{base}/")).send().await),
        (
            "GET /healthz",
            http.get(format!("{base}/healthz")).send().await,
        ),
        ("GET /nope", http.get(format!("{base}/nope")).send().await),
        (
            "GET /sso/authorize",
            http.get(format!("{base}/sso/authorize")).send().await,
        ),
        (
            "GET jwks",
            http.get(format!("{base}/.well-known/jwks.json"))
                .send()
                .await,
        ),
        (
            "POST /sso/token",
            http.post(format!("{base}/sso/token")).send().await,
        ),
        (
            "DELETE /healthz",
            http.delete(format!("{base}/healthz")).send().await,
        ),
    ];
    for (what, answer) in answers {
        let answer = answer.unwrap();
        let hsts = answer
            .headers()
            .get("strict-transport-security")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{what} ({}) has no HSTS", answer.status()));
        let max_age: u64 = hsts
            .split(';')
            .find_map(|p| p.trim().strip_prefix("max-age="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        assert!(max_age >= 31_536_000, "{what}: {hsts}");
    }
    cluster.assert_no_panics();
}

/// L8: a flood of sign-ins is answered 503 `Retry-After` once the hashing
/// queue is full, at once, instead of waiting behind each other without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l8_a_flood_of_sign_ins_gets_busy_not_an_endless_queue() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    let page = agent.get(&format!("{base}/sso/signin")).await;
    let csrf = page.inputs().get("csrf").cloned().expect("csrf");
    let flood = (0..300).map(|_| {
        let mut agent = agent.clone();
        let (url, csrf) = (format!("{base}/sso/signin"), csrf.clone());
        async move {
            let started = Instant::now();
            let answer = agent
                .post_form(
                    &url,
                    &[
                        ("csrf".into(), csrf),
                        ("username".into(), "alice".into()),
                        ("password".into(), PASSWORD.into()),
                    ],
                )
                .await;
            (answer, started.elapsed())
        }
    });
    let answers = futures::future::join_all(flood).await;
    let mut busy = 0;
    for (answer, _) in &answers {
        match answer.status {
            StatusCode::SEE_OTHER => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(answer.headers["retry-after"], "1");
                assert!(
                    answer.body.contains("temporarily_unavailable"),
                    "{}",
                    answer.body
                );
                busy += 1;
            }
            other => panic!("a sign-in answered {other}: {}", answer.body),
        }
    }
    let slowest = answers.iter().map(|(_, t)| *t).max().unwrap_or_default();
    println!("300 concurrent sign-ins: {busy} answered busy; slowest answer {slowest:?}");
    assert!(busy > 0, "300 concurrent sign-ins and none answered busy");
    cluster.assert_no_panics();
}

/// L5: the demo partner site's `/status.json` (its users' sessions and
/// claims) is not public: it needs the site's status token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l5_the_demo_site_status_is_not_public() {
    let cluster = Cluster::start(3).await;
    let shop = PartnerSite::start(&cluster, "shop", "shop.baa.localtest").await;
    let anonymous = cluster.http().get(shop.status_url()).send().await.unwrap();
    assert_eq!(
        anonymous.status(),
        StatusCode::UNAUTHORIZED,
        "/status.json is public"
    );
    let wrong = cluster
        .http()
        .get(shop.status_url())
        .bearer_auth("not the token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(shop.status().await["client_id"], "shop");
    cluster.assert_no_panics();
}

/// One sign-in POST from `agent` (whose CSRF pair it gets first) with extra headers.
async fn sign_in_from(
    agent: &mut Agent,
    base: &str,
    user: &str,
    password: &str,
    headers: &[(&str, &str)],
) -> sso::Answer {
    let page = agent.get(&format!("{base}/sso/signin")).await;
    let csrf = page.inputs().get("csrf").cloned().expect("csrf");
    agent
        .post_form_with(
            &format!("{base}/sso/signin"),
            &[
                ("csrf".into(), csrf),
                ("username".into(), user.into()),
                ("password".into(), password.into()),
            ],
            headers,
        )
        .await
}

/// M2: failures from one source lock that source's attempts at the account
/// (briefly, longer each time), not the account for everyone: an outsider
/// cannot lock a user out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m2_an_outsider_cannot_lock_a_user_out() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let base = cluster.public_url(1);
    let attacker: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let user: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let mut mallory = Agent::from_address(&cluster, Some(attacker));
    for i in 0..5 {
        let a = sign_in_from(&mut mallory, &base, "alice", "guess", &[]).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "guess {i}");
    }
    let again = sign_in_from(&mut mallory, &base, "alice", PASSWORD, &[]).await;
    assert_eq!(
        again.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        again.body
    );
    let mut alice = Agent::from_address(&cluster, Some(user));
    let signed_in = sign_in_from(&mut alice, &base, "alice", PASSWORD, &[]).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "five guesses from another address locked alice out: {}",
        signed_in.body
    );
    cluster.assert_no_panics();
}

/// M2: behind a trusted proxy each client is its own source (by
/// `X-Forwarded-For`), so fifty failures of clients do not lock everyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m2_behind_a_trusted_proxy_clients_are_throttled_apart() {
    let mut opts = ClusterOptions::default();
    opts.sso.insert(
        "trusted_proxies".into(),
        toml::Value::Array(vec!["127.0.0.1/32".into()]),
    );
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let base = cluster.public_url(2);
    let mut proxy = Agent::new(&cluster);
    for i in 0..55 {
        let client = format!("198.51.100.{}", i + 1);
        let a = sign_in_from(
            &mut proxy,
            &base,
            &format!("nobody{i}"),
            "guess",
            &[("x-forwarded-for", client.as_str())],
        )
        .await;
        assert_eq!(
            a.status,
            StatusCode::UNAUTHORIZED,
            "client {client}: {}",
            a.body
        );
    }
    let a = sign_in_from(
        &mut proxy,
        &base,
        "alice",
        PASSWORD,
        &[("x-forwarded-for", "203.0.113.7")],
    )
    .await;
    assert_eq!(a.status, StatusCode::SEE_OTHER, "{}", a.body);
    cluster.assert_no_panics();
}

/// L4: `/metrics` and the admin API are off the public listener (on the
/// management listener, loopback by default), even with the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l4_metrics_and_the_admin_api_are_off_the_public_listener() {
    let cluster = Cluster::start(3).await;
    let public = cluster.public_url(1);
    for path in ["/metrics", "/admin/v1/users", "/admin/v1/cluster/status"] {
        let resp = cluster
            .http()
            .get(format!("{public}{path}"))
            .bearer_auth(cluster.admin_token())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::NOT_FOUND,
            "{path} answers on the public listener"
        );
    }
    let manage = cluster.manage_url(1);
    for path in ["/metrics", "/admin/v1/users", "/healthz"] {
        let resp = cluster
            .http()
            .get(format!("{manage}{path}"))
            .bearer_auth(cluster.admin_token())
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{path} on the management listener"
        );
    }
    // The public listener still answers health probes and the agency's pages.
    let health = cluster
        .http()
        .get(format!("{public}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    cluster.assert_no_panics();
}
