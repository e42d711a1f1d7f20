//! The demo partner site (`baa-partner-site`) as a test fixture: its own
//! certificate from the cluster's CA, registered at the agency through the
//! admin API, running as a child process that talks to every node in turn.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::harness::{append_file, free_port, run_baa, tail, Cluster};
use crate::poll::POLL_INTERVAL;
use crate::sso::{self, TestSite};

/// Deadline for a freshly spawned partner site to answer `/healthz`.
pub const PARTNER_START_DEADLINE: Duration = Duration::from_secs(60);

/// Sites started so far in this process: each one begins its rotation over
/// the agency's nodes at a different node.
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// A running `baa-partner-site`. Dropping it kills the process.
pub struct PartnerSite {
    child: Option<Child>,
    status_token: String,
    host: String,
    port: u16,
    site: TestSite,
    agencies: Vec<String>,
    http: reqwest::Client,
    log: PathBuf,
}

/// `shop` → `Shop`.
fn display_name(client_id: &str) -> String {
    let mut chars = client_id.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

impl PartnerSite {
    /// Issues a certificate for `host`, registers site `client_id` (redirect URI
    /// `https://<host>:<port>/callback`, post-logout URI `https://<host>:<port>/`,
    /// back-channel logout on 127.0.0.1) through node 1's admin API, starts
    /// `baa-partner-site` on a free port of 127.0.0.1 with every node as an
    /// agency, and waits until `/status.json` answers 200. Its ID tokens are
    /// RS256.
    pub async fn start(cluster: &Cluster, client_id: &str, host: &str) -> PartnerSite {
        Self::start_with_alg(cluster, client_id, host, "RS256").await
    }

    /// [`Self::start`] for a site registered (and verifying) ID tokens
    /// signed with `alg`: RS256, ES256 or EdDSA.
    pub async fn start_with_alg(
        cluster: &Cluster,
        client_id: &str,
        host: &str,
        alg: &str,
    ) -> PartnerSite {
        let port = free_port();
        let pki = cluster.pki_dir();
        run_baa(
            cluster.bin(),
            &[
                "pki",
                "issue",
                "--dir",
                path_str(&pki),
                "--name",
                client_id,
                "--san",
                host,
            ],
        )
        .await
        .assert_success("baa pki issue (partner site)");
        let (cert, key) = (
            pki.join(format!("{client_id}.pem")),
            pki.join(format!("{client_id}.key")),
        );

        let url = format!("https://{host}:{port}");
        let name = display_name(client_id);
        let site = sso::add_site(
            cluster,
            serde_json::json!({
                "client_id": client_id,
                "name": name,
                "redirect_uris": [format!("{url}/callback")],
                "post_logout_redirect_uris": [format!("{url}/")],
                "backchannel_logout_uri": format!("https://127.0.0.1:{port}/backchannel-logout"),
                "default_response_mode": "form_post",
                "id_token_signed_response_alg": alg,
            }),
        )
        .await;
        let secret = site
            .secret
            .clone()
            .unwrap_or_else(|| panic!("site {client_id} was registered without a secret"));
        let secret_file = cluster.root().join(format!("partner-{client_id}.secret"));
        std::fs::write(&secret_file, format!("{secret}\n"))
            .unwrap_or_else(|e| panic!("{}: {e}", secret_file.display()));
        let status_token = crate::harness::random_token(32);
        let status_file = cluster
            .root()
            .join(format!("partner-{client_id}.status-token"));
        std::fs::write(&status_file, &status_token)
            .unwrap_or_else(|e| panic!("{}: {e}", status_file.display()));

        let mut agencies: Vec<String> = cluster
            .ids()
            .into_iter()
            .map(|id| cluster.agency_url(id))
            .collect();
        let offset = STARTED.fetch_add(1, Ordering::Relaxed) % agencies.len().max(1);
        agencies.rotate_left(offset);

        let log = cluster.root().join(format!("partner-{client_id}.log"));
        let out = append_file(&log);
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let bin = crate::harness::partner_site_bin();
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--cert-file", path_str(&cert)])
            .args(["--key-file", path_str(&key)])
            .args(["--ca-file", path_str(&cluster.ca_pem())])
            .args(["--public-url", &url])
            .args(["--name", &name])
            .args(["--client-id", client_id])
            .args(["--client-secret-file", path_str(&secret_file)])
            .args(["--status-token-file", path_str(&status_file)])
            .args(["--issuer", &cluster.issuer()])
            .args(["--id-token-alg", alg])
            .args(["--resolve", &format!("{}=127.0.0.1", cluster.host())]);
        for a in &agencies {
            cmd.args(["--agency", a]);
        }
        let child = cmd
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));

        let mut partner = PartnerSite {
            child: Some(child),
            status_token,
            host: host.to_string(),
            port,
            site,
            agencies,
            http: cluster.http().clone(),
            log,
        };
        partner.wait_ready().await;
        partner
    }

    /// Polls `/healthz` until it answers 200; panics with the log tail if
    /// the process exits first or the deadline passes.
    async fn wait_ready(&mut self) {
        let end = Instant::now() + PARTNER_START_DEADLINE;
        let url = format!("https://127.0.0.1:{}/healthz", self.port);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                panic!(
                    "partner site {} exited during start-up ({status}); log:\n{}",
                    self.site.client_id,
                    tail(&self.log, 40)
                );
            }
            if let Ok(resp) = self.http.get(&url).send().await {
                if resp.status() == StatusCode::OK {
                    return;
                }
            }
            assert!(
                Instant::now() < end,
                "partner site {} did not answer {url} within {PARTNER_START_DEADLINE:?}; log:\n{}",
                self.site.client_id,
                tail(&self.log, 40)
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// `https://<host>:<port>`: the site as the browser reaches it.
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }

    /// The site's host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The site's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The site as registered at the agency (client id, secret, redirect URI).
    pub fn site(&self) -> TestSite {
        self.site.clone()
    }

    /// The `--agency` URLs in the order the site uses them.
    pub fn agencies(&self) -> &[String] {
        &self.agencies
    }

    /// The URL of its `/status.json`.
    pub fn status_url(&self) -> String {
        format!("https://127.0.0.1:{}/status.json", self.port)
    }

    /// The site's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The site's log so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// `GET /status.json` with the status token (panics unless it answers
    /// 200 with JSON).
    pub async fn status(&self) -> serde_json::Value {
        let url = self.status_url();
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.status_token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status(), StatusCode::OK, "GET {url}");
        resp.json()
            .await
            .unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}"))
    }
}

impl Drop for PartnerSite {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- partner site {} log tail ({}) -----\n{}",
                self.site.client_id,
                self.log.display(),
                tail(&self.log, 30)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::display_name;

    #[test]
    fn display_names() {
        assert_eq!(display_name("shop"), "Shop");
        assert_eq!(display_name(""), "");
    }
}
