//! The monitoring material that ships in `ops/`, checked with the real
//! tools: Prometheus' configurations and alert rules pass `promtool` (Debian's
//! `prometheus` package, installed by `ops/test`), the alert rules' unit
//! tests pass, and the Grafana dashboard is well formed. (That every metric
//! they query is registered by a node is a unit test of `baa-node`.) And a
//! real Prometheus scraping two federated agencies under load finds data
//! for every panel and fires every alert on its fault.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baa_cluster_tests::bench::{client_for, csrf_pair, password_sign_in};
use baa_cluster_tests::federation::{first_login, Federation};
use baa_cluster_tests::harness::{cli_gateway_app, free_port, TOOLS_APP};
use baa_cluster_tests::poll_until;
use baa_cluster_tests::prometheus::{ops_dir as ops, Prometheus, Sample};
use baa_cluster_tests::sso::{
    add_cli_client, add_site, create_user, other_node, query_mode_request, query_params, redeem,
    Agent, AuthRequest,
};
use baa_cluster_tests::upstream::Upstream;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::json;

/// Runs `promtool args` in `dir` and fails the test with its output unless it succeeds.
fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running promtool (Debian's prometheus package; ops/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Both Prometheus configurations load with their rule files and CA paths
/// in place (laid out as an operator would: the cluster's next to a
/// `ca.pem`, the demo's from the repository's root), the rules check, and
/// every alert fires on its fault and stays silent when healthy in
/// `alerts_test.yml`.
#[test]
fn prometheus_configurations_and_alert_rules_pass_promtool() {
    let root = tempfile::tempdir().unwrap();
    let prom = root.path().join("ops/prometheus");
    std::fs::create_dir_all(&prom).unwrap();
    for f in [
        "prometheus.yml",
        "prometheus-demo.yml",
        "alerts.yml",
        "alerts_test.yml",
    ] {
        std::fs::copy(ops().join("prometheus").join(f), prom.join(f)).unwrap();
    }
    let ca = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";
    std::fs::write(prom.join("ca.pem"), ca).unwrap();
    std::fs::create_dir_all(root.path().join("baa-demo/pki")).unwrap();
    std::fs::write(root.path().join("baa-demo/pki/ca.pem"), ca).unwrap();

    let checked = promtool(&prom, &["check", "config", "prometheus.yml"]);
    assert!(checked.contains("SUCCESS: 7 rules found"), "{checked}");
    promtool(
        root.path(),
        &["check", "config", "ops/prometheus/prometheus-demo.yml"],
    );
    promtool(&prom, &["check", "rules", "alerts.yml"]);
    let tested = promtool(&prom, &["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert of the rules has a unit test.
    let rules = std::fs::read_to_string(prom.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(prom.join("alerts_test.yml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "alert {line} has no unit test in alerts_test.yml"
        );
    }
}

/// Every panel of a JSON dashboard, rows' own panels included.
fn panels(dash: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(p["panels"].as_array().into_iter().flatten());
    }
    out
}

/// The dashboard is Grafana JSON as Grafana provisions it: a title and a
/// uid, a data source variable every query uses, unique panel ids, and a
/// query on every panel that is not a row.
#[test]
fn the_grafana_dashboard_is_well_formed() {
    let text = std::fs::read_to_string(ops().join("grafana/baa.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("baa.json is JSON");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = dash["templating"]["list"].as_array().expect("templating");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a Prometheus data source variable");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().unwrap());

    let all = panels(&dash);
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for p in &all {
        let id = p["id"].as_u64().expect("every panel has a numeric id");
        assert!(ids.insert(id), "panel id {id} is used twice");
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "panel {id} has no title");
        assert_eq!(p["datasource"]["uid"], ds_ref.as_str(), "panel {title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.trim().is_empty(), "panel {title} has an empty query");
            assert_eq!(t["datasource"]["uid"], ds_ref.as_str(), "panel {title}");
            queries += 1;
        }
        for key in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][key].is_u64(), "panel {title}: gridPos.{key}");
        }
    }
    let rows: Vec<&str> = all
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for section in [
        "Cluster health",
        "SSO traffic",
        "Latency",
        "Errors",
        "Federation",
    ] {
        assert!(rows.contains(&section), "no {section} row in {rows:?}");
    }
    println!("{} panels, {queries} queries, rows {rows:?}", all.len());
}

const PASSWORD: &str = "correct horse battery";

/// Every query of the dashboard with its panel's title, `$instance`
/// matching every target.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(ops().join("grafana/baa.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for p in panels(&dash) {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            out.push((
                p["title"].as_str().unwrap_or_default().to_string(),
                expr.replace("$instance", ".*"),
            ));
        }
    }
    out
}

/// A mixed load on agency A, through each of its nodes: password sign-ins
/// (and refused ones), logins to a site redeemed once (and replayed),
/// requests refused with 4xx, a native app's token translated at
/// `/auth/verify`, sign-outs told to the site by back-channel, and a B user's
/// cross-agency login and validations.
async fn mixed_load(fed: &Federation) {
    let a = &fed.a;
    create_user(a, "alice", PASSWORD).await;
    create_user(&fed.b, "bob", PASSWORD).await;
    // The site's back-channel endpoint does not answer: every delivery is
    // counted as failed, which is what the panel has to show too.
    let dead = free_port();
    let shop = add_site(
        a,
        json!({
            "client_id": "shop",
            "name": "Shop",
            "redirect_uris": ["https://shop.baa.localtest:9443/cb"],
            "backchannel_logout_uri": format!("https://127.0.0.1:{dead}/bc"),
            "default_response_mode": "form_post",
        }),
    )
    .await;
    let cli = add_cli_client(a).await;
    let http = a.http().clone();
    for node in a.ids() {
        let base = a.public_url(node);
        let next = a.public_url(other_node(a, node));
        let mut stranger = Agent::new(a);
        let refused = stranger.sign_in(&base, "alice", "wrong password").await;
        assert_ne!(refused.status, StatusCode::SEE_OTHER, "{}", refused.body);
        let unknown = stranger
            .get(&format!("{base}/sso/authorize?client_id=nobody"))
            .await;
        assert!(unknown.status.is_client_error(), "{}", unknown.status);

        let mut agent = Agent::new(a);
        agent.sign_in_ok(&base, "alice", PASSWORD).await;
        let req = AuthRequest::new(&shop);
        let mut page = agent.get(&req.url(&base)).await;
        if page.body.contains("id=\"trust\"") {
            page = agent.approve(&base, &page, "username", true, true).await;
        }
        let code = page.inputs().get("code").cloned().expect("a ticket");
        let v = req.verifier.as_deref();
        let (ok, body) = redeem(&http, &next, &shop, &code, v).await;
        assert_eq!(ok, StatusCode::OK, "{body}");
        let (replayed, _) = redeem(&http, &base, &shop, &code, v).await;
        assert_eq!(replayed, StatusCode::BAD_REQUEST);

        // A native app's loopback login, its token translated into the session.
        let mut app = cli.clone();
        app.redirect_uri = format!("http://127.0.0.1:{}/callback", free_port());
        let req = AuthRequest::new(&app)
            .set("scope", "openid profile offline_access")
            .set("response_mode", "query");
        let mut page = agent.get(&req.url(&base)).await;
        if page.body.contains("id=\"trust\"") {
            page = agent.approve(&base, &page, "username", false, false).await;
        }
        let code = query_params(&page.location().expect("to the loopback"))["code"].clone();
        let (ok, tokens) = redeem(&http, &next, &app, &code, req.verifier.as_deref()).await;
        assert_eq!(ok, StatusCode::OK, "{tokens}");
        let token = tokens["access_token"].as_str().unwrap();
        let verified = http
            .get(format!("{next}/auth/verify?app={TOOLS_APP}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(verified.status(), StatusCode::OK);

        let confirm = agent.get(&format!("{base}/sso/logout")).await;
        let fields: Vec<(String, String)> = confirm.inputs().into_iter().collect();
        let out = agent
            .post_form(&format!("{base}/sso/logout"), &fields)
            .await;
        assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    }

    // Bob of agency B signs in at A with no password, and A validates the
    // session it derived from B's.
    let http = client_for(&fed.ca_bundle()).unwrap();
    let (base, b_base) = (a.public_url(1), fed.b.public_url(1));
    let csrf = csrf_pair(&http, &base).await.unwrap();
    let b_csrf = csrf_pair(&http, &b_base).await.unwrap();
    let b_cookies = password_sign_in(&http, &b_base, &b_csrf, ("bob", PASSWORD))
        .await
        .unwrap();
    let (query, _) = query_mode_request("shop", "https://shop.baa.localtest:9443/cb");
    let (derived, _) = first_login(&http, &base, &b_base, &b_cookies, &csrf, &query)
        .await
        .unwrap();
    for node in a.ids() {
        let resp = http
            .get(format!("{}/auth/verify", a.public_url(node)))
            .header(reqwest::header::COOKIE, &derived)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
}

/// Polls until `expr` returns at least one sample, or fails naming `fault`.
async fn fires(prom: &Prometheus, alert: &str, expr: &str, fault: &str) -> Vec<Sample> {
    poll_until(
        Duration::from_secs(90),
        &format!("{alert} to fire after {fault}"),
        || async move { prom.query(expr).await.ok().filter(|s| !s.is_empty()) },
    )
    .await
}

/// Polls until the alert expression `expr` fires for exactly the
/// instances `expected`.
async fn fires_for(prom: &Prometheus, expr: &str, what: &str, expected: &BTreeSet<String>) {
    poll_until(Duration::from_secs(90), what, || async {
        let firing: BTreeSet<String> = prom
            .query(expr)
            .await
            .ok()?
            .iter()
            .filter_map(|s| s.labels["instance"].as_str().map(String::from))
            .collect();
        (&firing == expected).then_some(())
    })
    .await
}

/// Acceptance 1 of the operations issue: a real Prometheus scrapes two
/// federated agencies under a mixed load; every target is up, every query
/// of the dashboard returns data, every alert rule is silent while all is
/// well, and the alerts fire on their faults: a follower cut off while more
/// than 1,000 writes go on (replication lag), the leader killed four times
/// (election churn), two nodes of B stopped (node down, no leader on the
/// third) and then the third (B unreachable from A). The server error
/// ratio and the disk's free space stay silent here; `promtool test rules`
/// fires them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_federation_and_the_alerts_fire_on_their_faults() {
    let upstream = Upstream::start().await;
    let port = upstream.port;
    let mut fed = Federation::start(move |o| o.gateway.push(cli_gateway_app(port))).await;
    let prom = Prometheus::start(&[&fed.a, &fed.b], &fed.ca_bundle()).await;
    poll_until(Duration::from_secs(60), "every target up", || async {
        let t = prom.targets().await.ok()?;
        (t.len() == 6 && t.iter().all(|(_, up)| *up)).then_some(())
    })
    .await;

    mixed_load(&fed).await;

    // Every query of the dashboard has data: a sample that is a number.
    let queries = dashboard_queries();
    let empty = baa_cluster_tests::try_poll_until(Duration::from_secs(90), || async {
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            let samples = prom.query(expr).await.ok()?;
            if !samples.iter().any(|s| !s.value.is_nan()) {
                empty.push(format!("{title}: {expr}"));
            }
        }
        empty.is_empty().then_some(())
    })
    .await;
    if empty.is_none() {
        let mut missing = Vec::new();
        for (title, expr) in &queries {
            match prom.query(expr).await {
                Ok(s) if s.iter().any(|s| !s.value.is_nan()) => {}
                other => missing.push(format!("{title}: {expr} → {other:?}")),
            }
        }
        panic!(
            "dashboard queries without data:\n{}\n{}",
            missing.join("\n"),
            prom.log_tail()
        );
    }
    println!("{} dashboard queries returned data", queries.len());

    // The shipped rules loaded and evaluate; none fires while all is well.
    let rules: BTreeMap<String, String> = poll_until(
        Duration::from_secs(30),
        "the alert rules evaluated",
        || async {
            let r = prom.alert_rules().await.ok()?;
            (r.len() == 7 && r.iter().all(|(_, _, health)| health == "ok"))
                .then(|| r.into_iter().map(|(n, q, _)| (n, q)).collect())
        },
    )
    .await;
    for (name, expr) in &rules {
        let now = prom.query(expr).await.unwrap();
        assert!(now.is_empty(), "{name} fires while all is well: {now:?}");
    }

    // A follower cut off while more than 1,000 writes go on → lag.
    let leader = fed.a.leader().await;
    let follower = other_node(&fed.a, leader);
    fed.a.isolate(follower).await;
    // Writes go on (a few at a time: concurrent writes share entries) until
    // the leader sees the follower more than 1,000 entries behind.
    let admin = fed.a.admin(leader);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        futures::stream::iter(0..20_000u32)
            .take_while(move |_| futures::future::ready(!stop.load(Ordering::Relaxed)))
            .map(move |i| {
                let admin = admin.clone();
                async move {
                    let r = admin
                        .set_attribute("alice", "n", &i.to_string(), None)
                        .await;
                    r.is_ok()
                }
            })
            .buffer_unordered(4)
            .filter(|ok| futures::future::ready(*ok))
            .count()
    });
    let lag = fires(
        &prom,
        "BaaReplicationLag",
        &rules["BaaReplicationLag"],
        "a partition",
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let writes = writer.await.unwrap();
    println!("replication lag alert after {writes} acknowledged writes: {lag:?}");
    assert!(writes > 1_000, "{writes} writes acknowledged");
    assert!(
        lag.iter()
            .any(|s| s.labels["follower"].as_str() == Some(follower.to_string().as_str())),
        "{lag:?}"
    );
    fed.a.heal().await;
    poll_until(
        Duration::from_secs(90),
        "the follower caught up",
        || async {
            let l = prom.query(&rules["BaaReplicationLag"]).await.ok()?;
            l.is_empty().then_some(())
        },
    )
    .await;

    // The leader killed four times → election churn.
    for _ in 0..4 {
        let leader = fed.a.leader().await;
        fed.a.kill(leader);
        let others: Vec<u64> = fed.a.ids().into_iter().filter(|i| *i != leader).collect();
        fed.a.leader_among(&others).await;
        fed.a.restart(leader).await;
    }
    fires(
        &prom,
        "BaaElectionChurn",
        &rules["BaaElectionChurn"],
        "four leader kills",
    )
    .await;

    // B's leader and a follower stopped → node down; the third knows no leader.
    let b_leader = fed.b.leader().await;
    let survivor = other_node(&fed.b, b_leader);
    let stopped: Vec<u64> = fed.b.ids().into_iter().filter(|i| *i != survivor).collect();
    for id in &stopped {
        fed.b.stop(*id).await;
    }
    let expected: BTreeSet<String> = stopped
        .iter()
        .map(|id| fed.b.node(*id).manage_addr().to_string())
        .collect();
    fires_for(
        &prom,
        &rules["BaaNodeDown"],
        "BaaNodeDown to fire for both stopped nodes",
        &expected,
    )
    .await;
    // Exactly B's survivor: a node of A restarted by the churn above may
    // know no leader for a moment too, which is not this fault.
    fires_for(
        &prom,
        &rules["BaaNoLeader"],
        "BaaNoLeader to fire for B's survivor alone",
        &BTreeSet::from([fed.b.node(survivor).manage_addr().to_string()]),
    )
    .await;

    // All of B stopped → A finds its peer unreachable.
    fed.b.stop(survivor).await;
    let peer = fires(
        &prom,
        "BaaFederationPeerUnreachable",
        &rules["BaaFederationPeerUnreachable"],
        "B stopped",
    )
    .await;
    assert!(
        peer.iter().all(|s| s.labels["agency"] == fed.a.host()),
        "{peer:?}"
    );
}
