//! The monitoring material that ships in `ops/`, checked with the real
//! tools: Prometheus' configurations and alert rules pass `promtool` (Debian's
//! `prometheus` package, installed by `ops/test`), the alert rules' unit
//! tests pass, and the Grafana dashboard is well formed. (That every metric
//! they query is registered by a node is a unit test of `baa-node`.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn ops() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

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
