//! Logs as an operator reads them with `log_format = "json"`: every line a
//! node writes is one JSON object; a line logged while serving a request
//! names the request (the id its response returns in `X-Request-Id`, the
//! client's own when it sent a usable one); and no line holds a secret the
//! test used — password, session and reference cookies, code, tokens,
//! client secret, admin token, the key-encryption key — searched for by
//! value.

use baa_cluster_tests::sso::{
    add_confidential_site, create_user, query_params, redeem, Agent, AuthRequest,
};
use baa_cluster_tests::{Cluster, ClusterOptions};
use reqwest::StatusCode;

const PASSWORD: &str = "logs are no place for 7e1";
const WRONG_PASSWORD: &str = "nor for this one 9c2";

/// The code a page hands to the site, by form or by redirect.
fn code_of(page: &baa_cluster_tests::sso::Answer) -> String {
    let fields = match page.location() {
        Some(location) => query_params(&location),
        None => page.inputs(),
    };
    fields
        .get("code")
        .cloned()
        .unwrap_or_else(|| panic!("no code: {}", page.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_request_and_hold_no_secret() {
    let cluster = Cluster::start_with(ClusterOptions {
        log_format: Some("json".into()),
        ..ClusterOptions::nodes(3)
    })
    .await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let (n1, n2) = (cluster.public_url(1), cluster.public_url(2));

    // A refused and an accepted sign-in, a trust, a code and its tokens.
    let mut agent = Agent::new(&cluster);
    let refused = agent.sign_in(&n1, "alice", WRONG_PASSWORD).await;
    assert_ne!(refused.status, StatusCode::SEE_OTHER, "{}", refused.body);
    agent.sign_in_ok(&n1, "alice", PASSWORD).await;
    let cookies = agent.sso_cookies().expect("signed in");
    let trust = agent.get(&AuthRequest::new(&shop).url(&n1)).await;
    agent.approve(&n1, &trust, "username", true, true).await;
    let req = AuthRequest::new(&shop);
    let code = code_of(&agent.get(&req.url(&n1)).await);
    let (status, tokens) = redeem(cluster.http(), &n2, &shop, &code, req.verifier.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");

    // The request id comes back: the client's when usable, else a fresh one.
    let health = format!("{n1}/healthz");
    for (sent, kept) in [("probe-42.a_b", true), ("two words", false)] {
        let resp = cluster
            .http()
            .get(&health)
            .header("X-Request-Id", sent)
            .send()
            .await
            .unwrap();
        let back = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(back == sent, kept, "sent {sent:?}, got {back:?}");
        assert!(!back.is_empty() && back.len() <= 64);
    }

    let mut secrets: Vec<(&str, String)> = vec![
        ("password", PASSWORD.into()),
        ("wrong password", WRONG_PASSWORD.into()),
        ("session cookie", cookies.session.clone()),
        ("reference cookie", cookies.reference.clone()),
        ("code", code.clone()),
        ("client secret", shop.secret.clone().unwrap()),
        ("admin token", cluster.admin_token().to_string()),
        (
            "key-encryption key",
            std::fs::read_to_string(cluster.kek_file())
                .unwrap()
                .trim()
                .to_string(),
        ),
    ];
    for t in ["access_token", "id_token", "refresh_token"] {
        if let Some(v) = tokens[t].as_str() {
            secrets.push((t, v.to_string()));
        }
    }

    let (mut lines, mut in_requests, mut signed_in) = (0, 0, false);
    for id in cluster.ids() {
        let log = cluster.log(id);
        for line in log.lines().filter(|l| !l.trim().is_empty()) {
            lines += 1;
            let v: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("node {id}: a log line is not JSON ({e}): {line}"));
            assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
            for (what, value) in &secrets {
                assert!(
                    !line.contains(value.as_str()),
                    "node {id} logged the {what}: {line}"
                );
            }
            let Some(spans) = v["spans"].as_array() else {
                continue;
            };
            if let Some(request) = spans.iter().find(|s| s["name"] == "request") {
                in_requests += 1;
                let rid = request["id"].as_str().unwrap_or_default();
                assert!(!rid.is_empty(), "a request's line without its id: {line}");
                assert!(request["route"].is_string(), "{line}");
                if v["fields"]["message"] == "signed in" {
                    signed_in = true;
                }
            }
        }
    }
    println!("{lines} log lines, {in_requests} of them logged while serving a request");
    assert!(signed_in, "the sign-in's line names its request");
    cluster.assert_no_panics();
}
