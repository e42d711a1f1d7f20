//! A real Prometheus (Debian's `prometheus` package) as a test fixture: it
//! scrapes the management listeners of one or more clusters every second
//! under job `baa`, loads `ops/prometheus/alerts.yml`, and answers instant
//! queries through its HTTP API. Dropping it kills the process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{append_file, free_port, tail, Cluster};
use crate::poll::poll_until;

/// Deadline for Prometheus to answer `/-/ready`.
pub const PROMETHEUS_START_DEADLINE: Duration = Duration::from_secs(60);

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    url: String,
    http: reqwest::Client,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// One sample of an instant query: its labels and its value.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The series' labels.
    pub labels: serde_json::Map<String, serde_json::Value>,
    /// Its value (NaN when Prometheus says so).
    pub value: f64,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The repository's `ops/` directory.
pub fn ops_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ops")
}

impl Prometheus {
    /// Starts Prometheus scraping every node of `clusters` (job `baa`, the
    /// label `agency` set to each cluster's host) over HTTPS, trusting the
    /// CAs in `ca_file`, with the shipped alert rules, and waits until it is
    /// ready.
    pub async fn start(clusters: &[&Cluster], ca_file: &Path) -> Prometheus {
        let dir = tempfile::Builder::new()
            .prefix("baa-prometheus-")
            .tempdir()
            .expect("tempdir");
        std::fs::copy(
            ops_dir().join("prometheus/alerts.yml"),
            dir.path().join("alerts.yml"),
        )
        .expect("copying alerts.yml");
        let mut groups = String::new();
        for c in clusters {
            groups.push_str("      - targets:\n");
            for id in c.ids() {
                groups.push_str(&format!("          - {}\n", c.node(id).manage_addr()));
            }
            groups.push_str(&format!(
                "        labels:\n          agency: {}\n",
                c.host()
            ));
        }
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - alerts.yml\n\
             scrape_configs:\n  - job_name: baa\n    scheme: https\n    tls_config:\n      ca_file: {}\n    static_configs:\n{groups}",
            ca_file.display()
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("prometheus.yml");
        let port = free_port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .current_dir(dir.path())
            .arg("--config.file=prometheus.yml")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(append_file(&log))
            .stderr(append_file(&log))
            .spawn()
            .expect("starting prometheus (Debian's prometheus package; ops/test installs it)");
        let p = Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
            log,
            _dir: dir,
        };
        poll_until(PROMETHEUS_START_DEADLINE, "Prometheus is ready", || async {
            let r = p.http.get(format!("{}/-/ready", p.url)).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        p
    }

    /// The last lines of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 30)
    }

    /// The instant query `expr` evaluated now: its samples, or an error
    /// (Prometheus' own message for a bad expression).
    pub async fn query(&self, expr: &str) -> Result<Vec<Sample>, String> {
        let resp = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| format!("query {expr}: {e}"))?;
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| format!("query {expr}: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("query {expr}: {body}"));
        }
        let result = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(result
            .into_iter()
            .map(|s| Sample {
                labels: s["metric"].as_object().cloned().unwrap_or_default(),
                value: s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN),
            })
            .collect())
    }

    /// The JSON answer of `GET /api/v1/{what}`.
    async fn api(&self, what: &str) -> Result<serde_json::Value, String> {
        let resp = self.http.get(format!("{}/api/v1/{what}", self.url)).send();
        let resp = resp.await.map_err(|e| format!("{what}: {e}"))?;
        resp.json().await.map_err(|e| format!("{what}: {e}"))
    }

    /// The scrape targets and whether each is up (`health == "up"`).
    pub async fn targets(&self) -> Result<Vec<(String, bool)>, String> {
        let body = self.api("targets").await?;
        Ok(body["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["labels"]["instance"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    t["health"] == "up",
                )
            })
            .collect())
    }

    /// The alert rules as Prometheus loaded them: each rule's name, its
    /// expression and its evaluation health.
    pub async fn alert_rules(&self) -> Result<Vec<(String, String, String)>, String> {
        let body = self.api("rules").await?;
        let mut out = Vec::new();
        for g in body["data"]["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                if r["type"] == "alerting" {
                    out.push((
                        r["name"].as_str().unwrap_or_default().to_string(),
                        r["query"].as_str().unwrap_or_default().to_string(),
                        r["health"].as_str().unwrap_or_default().to_string(),
                    ));
                }
            }
        }
        Ok(out)
    }
}
