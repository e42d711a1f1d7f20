//! The SSO benchmark's reference peer: Node's oidc-provider (the certified
//! OpenID provider, in memory, one process, plain HTTP as it ships), from
//! `ops/oidc-provider/`, installed by `ops/bench-sso` into a temporary
//! folder. Two confidential clients, `bench-rs256` and `bench-es256`; one
//! account, signed in by a chain of redirects (its interaction route
//! finishes at once).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The redirect URI both clients registered.
pub const REDIRECT_URI: &str = "https://bench.invalid/cb";

/// A running oidc-provider; killed when dropped.
pub struct OidcProvider {
    child: Child,
    /// `http://127.0.0.1:<port>`, also its issuer.
    pub url: String,
}

impl OidcProvider {
    /// Starts `node server.mjs --port 0` in `dir` (where `npm ci` ran) and
    /// waits for its `READY` line.
    pub async fn start(node: &Path, dir: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(node)
            .arg(dir.join("server.mjs"))
            .args(["--port", "0"])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} {}/server.mjs", node.display(), dir.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("oidc-provider did not print READY within 60 s")??
            .ok_or_else(|| anyhow!("oidc-provider exited before READY"))?;
        let url = line
            .strip_prefix("READY ")
            .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?
            .to_string();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Self { child, url })
    }

    /// The Node process, for CPU accounting.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// A client of the peer like the ones used for baa: keep-alive, one
    /// connection, redirects not followed.
    pub fn client() -> anyhow::Result<reqwest::Client> {
        Ok(super::one_connection().build()?)
    }

    /// Signs the account in through `client_id`'s authorization request,
    /// following the redirects by hand; the session's cookies as one
    /// `Cookie` header value.
    pub async fn sign_in(&self, http: &reqwest::Client, client_id: &str) -> anyhow::Result<String> {
        let mut jar: BTreeMap<String, String> = BTreeMap::new();
        let mut url = reqwest::Url::parse_with_params(
            &format!("{}/auth", self.url),
            &[
                ("response_type", "code"),
                ("client_id", client_id),
                ("redirect_uri", REDIRECT_URI),
                ("scope", "openid"),
                ("response_mode", "form_post"),
                (
                    "code_challenge",
                    "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                ),
                ("code_challenge_method", "S256"),
                ("nonce", "sign-in"),
                ("state", "sign-in"),
            ],
        )?;
        for _ in 0..10 {
            let cookies: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let resp = http
                .get(url.clone())
                .header(COOKIE, cookies.join("; "))
                .send()
                .await?;
            for v in resp.headers().get_all(SET_COOKIE) {
                let v = v.to_str().unwrap_or_default();
                let (pair, attrs) = v.split_once(';').unwrap_or((v, ""));
                let Some((name, value)) = pair.split_once('=') else {
                    continue;
                };
                let gone = value.is_empty()
                    || attrs
                        .to_ascii_lowercase()
                        .contains("expires=thu, 01 jan 1970");
                match gone {
                    true => jar.remove(name.trim()),
                    false => jar.insert(name.trim().to_string(), value.to_string()),
                };
            }
            if resp.status().is_redirection() {
                let loc = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| anyhow!("a redirect without Location"))?;
                url = url.join(loc)?;
                continue;
            }
            if resp.status() != reqwest::StatusCode::OK {
                bail!(super::unexpected("signing in at oidc-provider", resp).await);
            }
            let page = resp.text().await?;
            if super::oidc::form_field(&page, "code").is_none() {
                bail!("oidc-provider's sign-in ended on a page without a code");
            }
            let cookies: Vec<String> = jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            return Ok(cookies.join("; "));
        }
        bail!("oidc-provider's sign-in took more than 10 redirects")
    }
}
