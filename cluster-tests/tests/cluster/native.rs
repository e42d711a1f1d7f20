//! Sessions for non-browser apps at the protocol level on a 3-node cluster:
//! loopback redirects on any port (RFC 8252), refresh-token rotation with
//! reuse detection, the device grant (RFC 8628) with slow_down and a leader
//! killed mid-flow, token → session translation at `/auth/verify`, sliding
//! idle expiry while an app uses its token, and sign-out reaching every token.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baa_cluster_tests::harness::{cli_gateway_app, TOOLS_APP};
use baa_cluster_tests::sso::{
    add_cli_client, create_user, query_params, Agent, AuthRequest, TestSite,
};
use baa_cluster_tests::upstream::Upstream;
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery";
const CLI: &str = "baa-cli";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// A loopback authorization request of the native client on `port`.
fn loopback_request(site: &TestSite, port: u16) -> AuthRequest {
    AuthRequest::new(site)
        .set("redirect_uri", &format!("http://127.0.0.1:{port}/callback"))
        .set("scope", "openid profile offline_access")
        .set("response_mode", "query")
}

async fn token_call(
    cluster: &Cluster,
    node: u64,
    form: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let resp = cluster
        .http()
        .post(format!("{}/sso/token", cluster.public_url(node)))
        .form(form)
        .send()
        .await
        .expect("token call");
    let status = resp.status();
    (status, resp.json().await.unwrap_or_default())
}

/// Signs alice in, approves the native client, and returns the agent and the
/// code delivered to the loopback listener on `port`.
async fn loopback_code(
    cluster: &Cluster,
    site: &TestSite,
    port: u16,
) -> (Agent, AuthRequest, String) {
    let mut agent = Agent::new(cluster);
    let base = cluster.public_url(1);
    agent.sign_in(&base, "alice", PASSWORD).await;
    let req = loopback_request(site, port);
    let trust = agent.get(&req.url(&base)).await;
    assert!(trust.body.contains("id=\"trust\""), "{}", trust.body);
    let done = agent.approve(&base, &trust, "username", true, false).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let location = done.location().unwrap();
    assert!(
        location.starts_with(&format!("http://127.0.0.1:{port}/callback?")),
        "{location}"
    );
    let q = query_params(&location);
    assert_eq!(q["state"], "st-123");
    (agent, req, q["code"].clone())
}

async fn redeem_public(
    cluster: &Cluster,
    node: u64,
    code: &str,
    port: u16,
    verifier: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect.as_str()),
        ("client_id", CLI),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v));
    }
    token_call(cluster, node, &form).await
}

async fn verify(
    cluster: &Cluster,
    node: u64,
    token: &str,
) -> (StatusCode, BTreeMap<String, String>) {
    let resp = cluster
        .http()
        .get(format!(
            "{}/auth/verify?app={TOOLS_APP}",
            cluster.public_url(node)
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("verify");
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("x-baa-"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect();
    (resp.status(), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_pkce_refresh_rotation_and_verify() {
    let upstream = Upstream::start().await;
    let mut opts = ClusterOptions::default();
    opts.gateway.push(cli_gateway_app(upstream.port));
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let site = add_cli_client(&cluster).await;

    // Acceptance 6: any port is accepted.
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    let (mut agent, req, code) = loopback_code(&cluster, &site, port).await;
    // Other host, path or query → error page, no redirect.
    let base = cluster.public_url(2);
    for uri in [
        format!("http://127.0.0.1.evil.localtest:{port}/callback"),
        "http://127.0.0.1.evil.localtest/callback".to_string(),
        format!("http://localhost:{port}/callback"),
        format!("http://127.0.0.1:{port}/other"),
        format!("http://127.0.0.1:{port}/callback?x=1"),
        format!("http://127.0.0.2:{port}/callback"),
        format!("https://127.0.0.1:{port}/callback"),
    ] {
        let page = agent
            .get(
                &loopback_request(&site, port)
                    .set("redirect_uri", &uri)
                    .url(&base),
            )
            .await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{uri}");
        assert!(page.location().is_none(), "{uri} redirected");
    }
    // Another port, same path: accepted — after the user approves again (a
    // public native client asks every time, RFC 8252 §8.6).
    let trust = agent
        .get(&loopback_request(&site, port + 1).url(&base))
        .await;
    assert!(trust.body.contains("id=\"trust\""), "{}", trust.body);
    let other = agent.approve(&base, &trust, "username", true, false).await;
    assert!(other
        .location()
        .unwrap()
        .starts_with(&format!("http://127.0.0.1:{}/callback?", port + 1)));
    // PKCE is mandatory for the public client.
    let no_pkce = agent
        .get(
            &loopback_request(&site, port)
                .without("code_challenge")
                .without("code_challenge_method")
                .url(&base),
        )
        .await;
    assert!(
        no_pkce
            .location()
            .unwrap()
            .contains("error=invalid_request"),
        "{:?}",
        no_pkce.location()
    );

    // A stolen code is useless without the verifier; the right one works.
    let (s, e) = redeem_public(&cluster, 2, &code, port, None).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (other_verifier, _) = baa_cluster_tests::sso::pkce();
    let (s, _) = redeem_public(&cluster, 3, &code, port, Some(&other_verifier)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, tok) = redeem_public(&cluster, 3, &code, port, req.verifier.as_deref()).await;
    assert_eq!(s, StatusCode::OK, "{tok}");
    let access = tok["access_token"].as_str().unwrap().to_string();
    let refresh1 = tok["refresh_token"]
        .as_str()
        .expect("refresh token")
        .to_string();

    // Token → session: the same session as the browser's cookie.
    let sid = {
        let resp = cluster
            .http()
            .get(format!("{}/auth/verify", cluster.public_url(1)))
            .header("cookie", agent.sso_cookies().unwrap().header())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        resp.headers()["x-baa-session"]
            .to_str()
            .unwrap()
            .to_string()
    };
    for node in 1..=3 {
        let (s, h) = verify(&cluster, node, &access).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h["x-baa-user"], "alice");
        assert_eq!(h["x-baa-session"], sid);
        assert_eq!(h["x-baa-agency"], "baa-test");
    }
    let (s, _) = verify(&cluster, 2, "not-a-token").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // The gateway forwards with that session's cookie and without the token;
    // with no valid token nothing is forwarded.
    let resp = gateway(&cluster, 3, Some(&access)).await;
    assert_eq!(resp, StatusCode::OK);
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].starts_with("GET /hello?x=1 "), "{}", seen[0]);
    assert!(!seen[0].contains(&access) && !seen[0].to_lowercase().contains("authorization:"));
    assert!(
        seen[0]
            .to_lowercase()
            .contains(&format!("x-baa-session: {sid}")),
        "{}",
        seen[0]
    );
    assert!(seen[0].contains("baa_session="), "{}", seen[0]);
    for token in [None, Some("not-a-token")] {
        assert_eq!(gateway(&cluster, 1, token).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        upstream.requests().len(),
        1,
        "forwarded without a valid token"
    );

    // Acceptance 5: rotation, and a reused refresh token revokes its family.
    let (s, t2) = token_call(
        &cluster,
        2,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh1),
            ("client_id", CLI),
        ],
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{t2}");
    let refresh2 = t2["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh1, refresh2);
    let (s, e) = token_call(
        &cluster,
        3,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh1),
            ("client_id", CLI),
        ],
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    let (s, e) = token_call(
        &cluster,
        1,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh2),
            ("client_id", CLI),
        ],
    )
    .await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "family not revoked"
    );

    // Acceptance 4: sign-out in the browser kills the token on every node within 1 s.
    let logout = agent
        .get(&format!("{}/sso/logout", cluster.public_url(1)))
        .await;
    let fields: Vec<(String, String)> = logout.inputs().into_iter().collect();
    let out = agent
        .post_form(&format!("{}/sso/logout", cluster.public_url(1)), &fields)
        .await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    let signed_out = Instant::now();
    poll_until(
        Duration::from_secs(5),
        "token refused on every node",
        || async {
            for node in 1..=3 {
                if verify(&cluster, node, &access).await.0 != StatusCode::UNAUTHORIZED {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    let took = signed_out.elapsed();
    println!("token refused on every node {took:?} after sign-out");
    assert!(took <= Duration::from_secs(1), "{took:?}");
    let introspected: serde_json::Value = cluster
        .http()
        .post(format!("{}/sso/introspect", cluster.public_url(3)))
        .form(&[("token", access.as_str()), ("client_id", CLI)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(introspected["active"], false);
    assert_eq!(upstream.requests().len(), 1);
    cluster.assert_no_panics();
}

async fn gateway(cluster: &Cluster, node: u64, token: Option<&str>) -> StatusCode {
    let mut req = cluster
        .http()
        .get(format!("{}/gw/app/hello?x=1", cluster.public_url(node)));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("gateway").status()
}

async fn device_start(cluster: &Cluster, node: u64) -> serde_json::Value {
    let resp = cluster
        .http()
        .post(format!(
            "{}/sso/device_authorization",
            cluster.public_url(node)
        ))
        .form(&[
            ("client_id", CLI),
            ("scope", "openid profile offline_access"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json().await.unwrap()
}

async fn device_poll(
    cluster: &Cluster,
    node: u64,
    device_code: &str,
) -> (StatusCode, serde_json::Value) {
    token_call(
        cluster,
        node,
        &[
            ("grant_type", DEVICE_GRANT),
            ("device_code", device_code),
            ("client_id", CLI),
        ],
    )
    .await
}

/// Approves `user_code` in the agent's browser session at `node`.
async fn device_approve(cluster: &Cluster, agent: &mut Agent, node: u64, user_code: &str) {
    let base = cluster.public_url(node);
    let entry = agent.get(&format!("{base}/device")).await;
    let csrf = entry.inputs()["csrf"].clone();
    let confirm = agent
        .post_form(
            &format!("{base}/device"),
            &[
                ("csrf".into(), csrf),
                ("user_code".into(), user_code.to_lowercase()),
            ],
        )
        .await;
    assert!(
        confirm.body.contains("baa command line"),
        "{}",
        confirm.body
    );
    let mut fields: Vec<(String, String)> = confirm.inputs().into_iter().collect();
    fields.push(("decision".into(), "approve".into()));
    let done = agent
        .post_form(&format!("{base}/device/decide"), &fields)
        .await;
    assert!(done.body.contains("Connected."), "{}", done.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_grant_with_slow_down_survives_a_leader_kill() {
    let mut opts = ClusterOptions::default();
    opts.sso.insert("device_poll_interval_s".into(), 1.into());
    let mut cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    add_cli_client(&cluster).await;
    let start = device_start(&cluster, 2).await;
    let device_code = start["device_code"].as_str().unwrap().to_string();
    let user_code = start["user_code"].as_str().unwrap().to_string();
    assert_eq!(start["interval"], 1);
    assert!(start["verification_uri"]
        .as_str()
        .unwrap()
        .ends_with("/device"));

    // Polling: pending, then too fast → slow_down (the interval grows by 5 s).
    let (s, e) = device_poll(&cluster, 1, &device_code).await;
    assert_eq!(
        (s, e["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("authorization_pending")),
        "{e}"
    );
    let (_, e) = device_poll(&cluster, 3, &device_code).await;
    assert_eq!(e["error"], "slow_down", "{e}");

    // A wrong code is refused; the user signs in and approves; the leader dies.
    let mut agent = Agent::new(&cluster);
    let leader = cluster.leader().await;
    let others: Vec<u64> = (1..=3).filter(|n| *n != leader).collect();
    agent
        .sign_in(&cluster.public_url(others[0]), "alice", PASSWORD)
        .await;
    let entry = agent
        .get(&format!("{}/device", cluster.public_url(others[0])))
        .await;
    let csrf = entry.inputs()["csrf"].clone();
    let wrong = agent
        .post_form(
            &format!("{}/device", cluster.public_url(others[0])),
            &[
                ("csrf".into(), csrf),
                ("user_code".into(), "BBBB-BBBB".into()),
            ],
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    cluster.kill(leader);
    device_approve(&cluster, &mut agent, others[0], &user_code).await;

    // Polling through another survivor, backing off as RFC 8628 asks
    // (+5 s per slow_down), gets the tokens.
    let mut interval = Duration::from_secs(6);
    let deadline = Instant::now() + Duration::from_secs(90);
    let tokens = loop {
        assert!(Instant::now() < deadline, "no device tokens in time");
        tokio::time::sleep(interval).await;
        let (s, v) = device_poll(&cluster, others[1], &device_code).await;
        match (s, v["error"].as_str()) {
            (StatusCode::OK, _) => break v,
            (_, Some("slow_down")) => interval += Duration::from_secs(5),
            (_, Some("authorization_pending" | "no_leader" | "timeout")) => {}
            other => panic!("device poll: {other:?} {v}"),
        }
    };
    let access = tokens["access_token"].as_str().unwrap();
    assert!(tokens["refresh_token"].as_str().is_some());
    let (s, h) = verify(&cluster, others[1], access).await;
    assert_eq!((s, h["x-baa-user"].as_str()), (StatusCode::OK, "alice"));
    // The code is spent.
    let (_, e) = device_poll(&cluster, others[0], &device_code).await;
    assert!(
        matches!(e["error"].as_str(), Some("invalid_grant" | "slow_down")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_use_keeps_the_session_alive_and_idle_sessions_expire() {
    let mut opts = ClusterOptions::default();
    opts.sso.insert("session_idle_timeout_s".into(), 4.into());
    opts.sso.insert("session_touch_interval_s".into(), 1.into());
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let site = add_cli_client(&cluster).await;
    let port = 41_000 + (std::process::id() % 20_000) as u16;
    let (_agent, req, code) = loopback_code(&cluster, &site, port).await;
    let (_, tok) = redeem_public(&cluster, 2, &code, port, req.verifier.as_deref()).await;
    let access = tok["access_token"].as_str().unwrap().to_string();

    // The browser is gone; the app keeps using its token past the idle timeout.
    let used_until = Instant::now() + Duration::from_secs(9);
    let mut n = 0u64;
    while Instant::now() < used_until {
        let (s, _) = verify(&cluster, 1 + n % 3, &access).await;
        assert_eq!(s, StatusCode::OK, "refused after {n} uses while in use");
        n += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Unused, it expires on time: introspection (which is not use) reports
    // it inactive once the idle timeout has passed since the last recorded
    // use, and not long after.
    let stopped = Instant::now();
    poll_until(Duration::from_secs(15), "idle session expiry", || async {
        let v: serde_json::Value = cluster
            .http()
            .post(format!("{}/sso/introspect", cluster.public_url(2)))
            .form(&[("token", access.as_str()), ("client_id", CLI)])
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["active"] == false).then_some(())
    })
    .await;
    assert_eq!(
        verify(&cluster, 3, &access).await.0,
        StatusCode::UNAUTHORIZED
    );
    let idle = stopped.elapsed();
    println!("unused token refused {idle:?} after its last use (idle timeout 4 s)");
    assert!(
        idle >= Duration::from_secs(2) && idle <= Duration::from_secs(7),
        "{idle:?}"
    );
}

/// Translation reads through to the leader when a node does not know a token
/// (one made a moment ago through another node must not be refused), and
/// made-up tokens take that path too. Concurrent misses share read-index
/// rounds, so a flood of them cannot make the leader confirm its leadership
/// once per request, and a real token is still honoured in the middle of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_tokens_share_read_index_rounds() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use futures::StreamExt as _;

    const FLOOD: usize = 400;
    const CONCURRENCY: usize = 50;
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let site = add_cli_client(&cluster).await;
    let leader = cluster.leader().await;
    let node = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let port = 40_000 + (std::process::id() % 20_000) as u16;
    let (_agent, req, code) = loopback_code(&cluster, &site, port).await;

    let counters = || async {
        let text = cluster.metrics(node).await;
        let v = |name| baa_cluster_tests::client::metric_value(&text, name).unwrap_or(0.0);
        (
            v("baa_read_index_rounds_total"),
            v("baa_read_index_readers_total"),
        )
    };
    let (rounds_before, readers_before) = counters().await;
    let url = format!("{}/auth/verify?app={TOOLS_APP}", cluster.public_url(node));
    let flood = futures::stream::iter(0..FLOOD)
        .map(|_| {
            let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
            cluster.http().get(&url).bearer_auth(token).send()
        })
        .buffer_unordered(CONCURRENCY)
        .map(|r| r.expect("verify with a made-up token").status())
        .collect::<Vec<_>>();
    let real = async {
        let (s, tok) = redeem_public(&cluster, leader, &code, port, req.verifier.as_deref()).await;
        assert_eq!(s, StatusCode::OK, "{tok}");
        let access = tok["access_token"]
            .as_str()
            .expect("access token")
            .to_string();
        verify(&cluster, node, &access).await
    };
    let (statuses, (status, headers)) = tokio::join!(flood, real);

    assert!(
        statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED),
        "made-up tokens: {statuses:?}"
    );
    assert_eq!(status, StatusCode::OK, "a real token during the flood");
    assert_eq!(headers["x-baa-user"], "alice");
    let (rounds_after, readers_after) = counters().await;
    let (rounds, readers) = (rounds_after - rounds_before, readers_after - readers_before);
    println!("{readers} linearizable reads on node {node} answered by {rounds} read-index rounds");
    assert!(
        readers >= FLOOD as f64,
        "every miss reads through: {readers} reads for {FLOOD} made-up tokens"
    );
    assert!(
        rounds * 4.0 <= readers,
        "{rounds} read-index rounds for {readers} reads: misses do not share rounds"
    );
}
