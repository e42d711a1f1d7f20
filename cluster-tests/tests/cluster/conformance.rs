//! Where an OpenID-certified client library found baa answering against the
//! specifications (ATTACKS.md, "Conformance"): the code by query when no
//! `response_mode` is asked for, `invalid_client` by Basic as 401 with
//! `WWW-Authenticate`, introspection of refresh tokens, and discovery.

use baa_cluster_tests::sso::{self, create_user, query_params, Agent, AuthRequest};
use baa_cluster_tests::{Cluster, ClusterOptions};
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_the_code_comes_by_query_unless_form_post_is_asked_or_registered() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let plain = sso::add_site(
        &cluster,
        serde_json::json!({"client_id": "plain", "redirect_uris": ["https://plain.example/cb"]}),
    )
    .await;
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    agent.sign_in(&base, "alice", PASSWORD).await;

    // OIDC Core §3.1.2.5: no response_mode → the code in the redirect's query.
    let trust = agent.get(&AuthRequest::new(&plain).url(&base)).await;
    let done = agent.approve(&base, &trust, "username", false, false).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let q = query_params(&done.location().unwrap());
    assert!(q.contains_key("code") && q["state"] == "st-123", "{q:?}");
    // Asked for: the form.
    let page = agent
        .get(
            &AuthRequest::new(&plain)
                .set("response_mode", "form_post")
                .url(&base),
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(
        page.form_action().as_deref(),
        Some(plain.redirect_uri.as_str())
    );
    // A seed-style site registered form_post as its default: the form.
    let seed = sso::add_site(
        &cluster,
        serde_json::json!({
            "client_id": "seed",
            "redirect_uris": ["https://seed.example/cb"],
            "default_response_mode": "form_post",
        }),
    )
    .await;

    let trust = agent.get(&AuthRequest::new(&seed).url(&base)).await;
    let page = agent.approve(&base, &trust, "username", false, false).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.inputs().contains_key("code"), "{}", page.body);
    let registered: serde_json::Value = cluster
        .http()
        .get(format!("{}/admin/v1/sites/seed", cluster.manage_url(1)))
        .bearer_auth(cluster.admin_token())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        registered["default_response_mode"], "form_post",
        "{registered}"
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_invalid_client_by_basic_is_401_with_www_authenticate() {
    let cluster = Cluster::start(3).await;
    let site = sso::add_confidential_site(&cluster, "shop", "https://shop.example/cb").await;
    let base = cluster.public_url(2);
    for endpoint in ["/sso/token", "/sso/introspect", "/sso/revoke"] {
        let resp = cluster
            .http()
            .post(format!("{base}{endpoint}"))
            .basic_auth(&site.client_id, Some("not the secret"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", "x"),
                ("token", "x"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{endpoint}");
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("{endpoint}: no WWW-Authenticate"));
        assert!(challenge.starts_with("Basic"), "{endpoint}: {challenge}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_client", "{endpoint}: {body}");
    }
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_introspection_of_a_live_refresh_token_is_active() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let site = sso::add_site(
        &cluster,
        serde_json::json!({
            "client_id": "app",
            "redirect_uris": ["https://app.example/cb"],
            "allowed_scopes": ["openid", "offline_access"],
        }),
    )
    .await;
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    agent.sign_in(&base, "alice", PASSWORD).await;
    let req = AuthRequest::new(&site).set("scope", "openid offline_access");
    let trust = agent.get(&req.url(&base)).await;
    let done = agent.approve(&base, &trust, "username", false, false).await;
    let code = query_params(&done.location().unwrap())["code"].clone();
    let (status, tokens) =
        sso::redeem(cluster.http(), &base, &site, &code, req.verifier.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let other = sso::add_confidential_site(&cluster, "other", "https://other.example/cb").await;
    for (who, expected) in [(&site, true), (&other, false)] {
        let v: serde_json::Value = cluster
            .http()
            .post(format!("{}/sso/introspect", cluster.public_url(3)))
            .basic_auth(&who.client_id, who.secret.as_deref())
            .form(&[("token", refresh), ("token_type_hint", "refresh_token")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["active"], expected, "{}: {v}", who.client_id);
        if expected {
            assert_eq!(v["client_id"], "app", "{v}");
            assert!(v["exp"].as_u64().is_some(), "{v}");
        }
    }
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_discovery_says_request_uri_is_unsupported() {
    let cluster = Cluster::start(3).await;
    let meta: serde_json::Value = cluster
        .http()
        .get(format!(
            "{}/.well-known/openid-configuration",
            cluster.public_url(3)
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Its default is true (OIDC Discovery §3): silence claims support.
    assert_eq!(meta["request_uri_parameter_supported"], false, "{meta}");
    cluster.assert_no_panics();
}

/// Every error an OAuth endpoint answers names a code of RFC 6749 §5.2 (or
/// RFC 8628's); internal conditions are `temporarily_unavailable` with 503
/// and `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_oauth_endpoints_answer_rfc_6749_codes() {
    let mut cluster = Cluster::start_with(ClusterOptions {
        write_timeout_ms: Some(2_000),
        ..ClusterOptions::nodes(3)
    })
    .await;
    let shop = sso::add_confidential_site(&cluster, "shop", "https://shop.example/cb").await;
    sso::add_cli_client(&cluster).await;
    let base = cluster.public_url(1);
    let http = cluster.http().clone();
    let expect = |what: &'static str, status: StatusCode, error: &'static str| {
        move |resp: reqwest::Response| async move {
            assert_eq!(resp.status(), status, "{what}");
            let retry = resp.headers().get("retry-after").cloned();
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["error"], error, "{what}: {body}");
            retry
        }
    };
    let token = |form: Vec<(&'static str, String)>| {
        http.post(format!("{base}/sso/token"))
            .basic_auth(&shop.client_id, shop.secret.as_deref())
            .form(&form)
            .send()
    };
    let r = token(vec![("grant_type", "password".into())])
        .await
        .unwrap();
    expect(
        "an unknown grant",
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    )(r)
    .await;
    let r = token(vec![("grant_type", "authorization_code".into())])
        .await
        .unwrap();
    expect("no code", StatusCode::BAD_REQUEST, "invalid_request")(r).await;
    let r = token(vec![
        ("grant_type", "authorization_code".into()),
        ("code", "x".repeat(100_000)),
    ])
    .await
    .unwrap();
    expect(
        "a form too large",
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    )(r)
    .await;
    let r = http
        .post(format!("{base}/sso/device_authorization"))
        .form(&[("client_id", "baa-cli"), ("scope", "openid admin")])
        .send()
        .await
        .unwrap();
    expect(
        "a scope not allowed",
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    )(r)
    .await;

    // No leader: a code the node does not know cannot be checked.
    cluster.kill(2);
    cluster.kill(3);
    let r = token(vec![
        ("grant_type", "authorization_code".into()),
        ("code", "not-known-here".into()),
        ("redirect_uri", shop.redirect_uri.clone()),
    ])
    .await
    .unwrap();
    let retry = expect(
        "no leader",
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
    )(r)
    .await;
    assert!(retry.is_some(), "no Retry-After");
    cluster.assert_no_panics();
}
