//! The reference non-browser app: `baa login` (loopback redirect, RFC 8252,
//! or the device grant, RFC 8628), `baa whoami`, `baa logout` and
//! `baa fetch`. It is a public OAuth client that keeps its tokens in a file
//! and refreshes them on its own; token values are never printed.

mod browser;
mod loopback;
mod oauth;
mod store;

pub use loopback::{parse_request as parse_loopback_request, Target as LoopbackTarget};

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use url::Url;

use crate::clock::now_ms;
use oauth::{AgencyClient, TokenOutcome, TokenResponse};
use store::{TokenFile, TokenStore};

/// The client id of this app unless told otherwise.
const DEFAULT_CLIENT_ID: &str = "baa-cli";
/// How long `baa login` waits for the browser.
const LOGIN_WAIT: Duration = Duration::from_secs(600);

/// Options shared by the app's commands.
#[derive(Debug, Args)]
pub struct AppArgs {
    /// Base URL of the agency, e.g. https://login.example.org. `baa login`
    /// stores it in the token file; later commands use the stored one unless given.
    #[arg(long, env = "BAA_AGENCY")]
    agency: Option<String>,
    /// OAuth client id of this app at the agency [default: baa-cli, or the stored one].
    #[arg(long)]
    client_id: Option<String>,
    /// HOST=IP: calls resolve HOST to IP (the port comes from the URL). Repeatable;
    /// `baa login` stores them for later commands.
    #[arg(long = "resolve", value_parser = parse_resolve)]
    resolve: Vec<(String, IpAddr)>,
    /// The token file [default: $XDG_CONFIG_HOME/baa/tokens.json, else ~/.config/baa/tokens.json].
    #[arg(long, env = "BAA_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

/// Options of `baa login`. The agency's CA comes from the global `--ca`
/// (`BAA_CA`); this build trusts no system CAs.
#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    app: AppArgs,
    /// Use the device grant: print a code to enter at the agency from any
    /// browser, instead of receiving the browser's redirect on this machine.
    #[arg(long)]
    device: bool,
    /// Do not start a browser; only print the URL to open.
    #[arg(long)]
    no_browser: bool,
    /// Device grant: poll every this many milliseconds instead of the
    /// interval the agency announced.
    #[arg(long, hide = true)]
    poll_interval_ms: Option<u64>,
}

/// Options of `baa whoami`.
#[derive(Debug, Args)]
pub struct WhoamiArgs {
    #[command(flatten)]
    app: AppArgs,
    /// Print the agency's userinfo answer as JSON.
    #[arg(long)]
    json: bool,
}

/// Options of `baa logout`.
#[derive(Debug, Args)]
pub struct LogoutArgs {
    #[command(flatten)]
    app: AppArgs,
}

/// Options of `baa fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    #[command(flatten)]
    app: AppArgs,
    /// The URL to GET, e.g. https://login.example.org/gw/app/path; a path
    /// starting with `/` is taken relative to the agency.
    url: String,
}

pub(super) fn parse_resolve(s: &str) -> Result<(String, IpAddr), String> {
    let (host, ip) = s
        .split_once('=')
        .ok_or_else(|| format!("expected HOST=IP, got {s:?}"))?;
    let ip = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IP address"))?;
    if host.is_empty() {
        return Err(format!("expected HOST=IP, got {s:?}"));
    }
    Ok((host.to_string(), ip))
}

fn resolve_strings(resolve: &[(String, IpAddr)]) -> Vec<String> {
    resolve.iter().map(|(h, ip)| format!("{h}={ip}")).collect()
}

/// The stored `HOST=IP` entries; ones that no longer parse are skipped.
fn stored_resolve(tokens: &TokenFile) -> Vec<(String, IpAddr)> {
    tokens
        .resolve
        .iter()
        .filter_map(|s| parse_resolve(s).ok())
        .collect()
}

/// A name to greet the user by: from the ID token, when there is one.
fn display_name(claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    ["preferred_username", "name", "sub"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(|v| v.as_str()))
        .map(oauth::printable)
}

/// `baa login`.
pub async fn login(ca: Option<PathBuf>, args: LoginArgs) -> anyhow::Result<()> {
    let store = TokenStore::new(args.app.token_file.clone())?;
    // A previous session supplies what was not given again.
    let previous = store.load().ok().flatten();
    let agency = args
        .app
        .agency
        .clone()
        .or_else(|| previous.as_ref().map(|p| p.agency.clone()))
        .context("--agency URL (or BAA_AGENCY) is required")?;
    let agency = oauth::normalise_agency(&agency)?;
    let client_id = args
        .app
        .client_id
        .clone()
        .unwrap_or_else(|| DEFAULT_CLIENT_ID.to_string());
    let ca = match ca {
        Some(c) => Some(
            std::path::absolute(&c).with_context(|| format!("locating the CA {}", c.display()))?,
        ),
        None => previous.as_ref().and_then(|p| p.ca.clone()),
    };
    let resolve = if args.app.resolve.is_empty() {
        previous.as_ref().map(stored_resolve).unwrap_or_default()
    } else {
        args.app.resolve.clone()
    };
    let client = AgencyClient::new(&agency, &client_id, ca.as_deref(), &resolve)?;
    let discovery = client.discover().await?;
    let issued = if args.device {
        device_flow(&client, args.poll_interval_ms, !args.no_browser).await?
    } else {
        loopback_flow(&client, &client_id, &discovery, !args.no_browser).await?
    };
    let who = match &issued.id_token {
        Some(t) => display_name(&oauth::id_token_claims(t, &discovery.issuer, &client_id)?),
        None => None,
    };
    if issued.refresh_token.is_none() {
        eprintln!(
            "the agency issued no refresh token; sign in again when the access token expires"
        );
    }
    let tokens = TokenFile {
        agency: agency.clone(),
        client_id,
        issuer: discovery.issuer,
        expires_at_ms: oauth::expiry_ms(now_ms(), issued.expires_in),
        access_token: issued.access_token,
        refresh_token: issued.refresh_token,
        ca,
        resolve: resolve_strings(&resolve),
    };
    store.save(&tokens)?;
    match who {
        Some(w) => println!("Signed in to {agency} as {w}."),
        None => println!("Signed in to {agency}."),
    }
    eprintln!("tokens stored in {}", store.path().display());
    Ok(())
}

/// The authorization code flow through the system browser and a loopback listener.
async fn loopback_flow(
    client: &AgencyClient,
    client_id: &str,
    discovery: &oauth::Discovery,
    launch: bool,
) -> anyhow::Result<TokenResponse> {
    let listener = loopback::Loopback::bind().await?;
    let redirect_uri = oauth::loopback_redirect_uri(listener.port());
    let pkce = oauth::Pkce::new();
    let state = oauth::random_string(24);
    let url = oauth::authorize_url(
        client.base(),
        client_id,
        &redirect_uri,
        &state,
        &pkce.challenge,
    )?;
    browser::open(url.as_str(), launch);
    let callback = listener.wait(LOGIN_WAIT).await?;
    let code = match loopback::check_callback(
        &callback.params,
        &state,
        &discovery.issuer,
        discovery.authorization_response_iss_parameter_supported,
    ) {
        Ok(code) => code,
        Err(why) => {
            callback
                .respond(false, &format!("Sign-in failed: {why}."))
                .await;
            bail!("sign-in failed: {why}");
        }
    };
    let outcome = client
        .exchange_code(&code, &redirect_uri, &pkce.verifier)
        .await;
    match outcome {
        Ok(TokenOutcome::Issued(t)) => {
            callback.respond(true, loopback::SIGNED_IN).await;
            Ok(t)
        }
        Ok(TokenOutcome::Refused { error, .. }) => {
            let why = format!("the agency did not accept the sign-in ({error})");
            callback
                .respond(false, &format!("Sign-in failed: {why}."))
                .await;
            bail!("sign-in failed: {why}")
        }
        Err(e) => {
            callback
                .respond(false, "Sign-in failed: the agency could not be reached.")
                .await;
            Err(e.context("redeeming the authorization code"))
        }
    }
}

/// The device authorization grant.
async fn device_flow(
    client: &AgencyClient,
    poll_interval_ms: Option<u64>,
    launch: bool,
) -> anyhow::Result<TokenResponse> {
    let start = client.start_device().await?;
    println!(
        "To sign in, open {} and enter the code {}",
        oauth::printable(&start.verification_uri),
        oauth::printable(&start.user_code)
    );
    let _ = std::io::stdout().flush();
    let complete = start
        .verification_uri_complete
        .as_deref()
        .unwrap_or(&start.verification_uri);
    browser::open(&oauth::printable(complete), launch);
    // RFC 8628 §3.2: 5 seconds when the agency does not say.
    let announced_ms = start.interval.unwrap_or(5).max(1).saturating_mul(1000);
    let mut interval_ms = poll_interval_ms.unwrap_or(announced_ms).max(1);
    let deadline = Instant::now() + Duration::from_secs(start.expires_in);
    loop {
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        if Instant::now() >= deadline {
            bail!(
                "the sign-in code expired before it was approved; run `baa login --device` again"
            );
        }
        let (status, error) = match client.poll_device(&start.device_code).await {
            Ok(TokenOutcome::Issued(t)) => return Ok(t),
            Ok(TokenOutcome::Refused { status, error }) => (status, error),
            Err(e) => {
                eprintln!("could not poll the agency ({e:#}); still waiting");
                continue;
            }
        };
        match error.error.as_str() {
            "authorization_pending" => {}
            "slow_down" => {
                interval_ms = oauth::slowed_down(interval_ms, announced_ms);
                eprintln!(
                    "agency asked to slow down; polling every {} s",
                    interval_ms / 1000
                );
            }
            "expired_token" => bail!(
                "the sign-in code expired before it was approved; run `baa login --device` again"
            ),
            "access_denied" => bail!("the sign-in was declined at the agency"),
            _ if status >= 500 => {
                eprintln!("the agency answered {status} ({error}); still waiting")
            }
            _ => bail!("the agency refused the device sign-in: {error}"),
        }
    }
}

/// A stored session, refreshed when needed.
struct Session {
    client: AgencyClient,
    store: TokenStore,
    tokens: TokenFile,
    refreshed: bool,
}

impl Session {
    /// The stored session; options given override the stored ones.
    fn open(ca: Option<PathBuf>, app: &AppArgs) -> anyhow::Result<Self> {
        let store = TokenStore::new(app.token_file.clone())?;
        let tokens = store.load()?.with_context(|| {
            format!(
                "not signed in (no {}): run `baa login --agency URL` first",
                store.path().display()
            )
        })?;
        let agency = oauth::normalise_agency(app.agency.as_deref().unwrap_or(&tokens.agency))?;
        let client_id = app.client_id.as_deref().unwrap_or(&tokens.client_id);
        let ca = ca.or_else(|| tokens.ca.clone());
        let resolve = if app.resolve.is_empty() {
            stored_resolve(&tokens)
        } else {
            app.resolve.clone()
        };
        let client = AgencyClient::new(&agency, client_id, ca.as_deref(), &resolve)?;
        Ok(Self {
            client,
            store,
            tokens,
            refreshed: false,
        })
    }

    /// Trades the refresh token for new tokens and stores them, unless
    /// another `baa` process did so meanwhile.
    async fn refresh(&mut self) -> anyhow::Result<()> {
        self.refreshed = true;
        let _lock = self.store.lock().await?;
        if let Some(on_disk) = self.store.load()? {
            if on_disk.access_token != self.tokens.access_token {
                let fresh = !on_disk.expiring(now_ms());
                self.tokens = on_disk;
                if fresh {
                    return Ok(());
                }
            }
        }
        let Some(refresh_token) = self.tokens.refresh_token.clone() else {
            bail!("the access token expired and no refresh token is stored; run `baa login` again");
        };
        match self.client.refresh(&refresh_token).await? {
            TokenOutcome::Issued(t) => {
                self.tokens.access_token = t.access_token;
                // Rotation: the old refresh token is dead now, and presenting
                // it again would look like theft, so it is never kept.
                self.tokens.refresh_token = t.refresh_token;
                self.tokens.expires_at_ms = oauth::expiry_ms(now_ms(), t.expires_in);
                self.store.save(&self.tokens)
            }
            TokenOutcome::Refused { error, .. } if error.error == "invalid_grant" => bail!(
                "the agency no longer accepts the stored refresh token (the session ended \
                 or was revoked); run `baa login` again"
            ),
            TokenOutcome::Refused { status, error } => {
                bail!("refreshing the token failed: {status} {error}")
            }
        }
    }

    /// The access token, refreshed first when it is about to expire.
    async fn access_token(&mut self) -> anyhow::Result<String> {
        if !self.refreshed && self.tokens.expiring(now_ms()) {
            self.refresh().await?;
        }
        Ok(self.tokens.access_token.clone())
    }

    /// GETs `url` with the access token; on 401, refreshes once and retries.
    async fn get(&mut self, url: &str) -> anyhow::Result<reqwest::Response> {
        loop {
            let token = self.access_token().await?;
            let resp = self
                .client
                .http
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .map_err(|e| self.client.transport_error(e, url))?;
            if resp.status() == reqwest::StatusCode::UNAUTHORIZED && !self.refreshed {
                self.refresh().await?;
                continue;
            }
            return Ok(resp);
        }
    }
}

/// `baa whoami`.
pub async fn whoami(ca: Option<PathBuf>, args: WhoamiArgs) -> anyhow::Result<()> {
    let mut session = Session::open(ca, &args.app)?;
    let url = session.client.endpoint(oauth::USERINFO_PATH);
    let resp = session.get(&url).await?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED {
        bail!("the agency refused the token (the session ended or was revoked); run `baa login` again");
    }
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    let info: serde_json::Map<String, serde_json::Value> = resp
        .json()
        .await
        .with_context(|| format!("{url} did not answer a userinfo object"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    for key in ["sub", "preferred_username", "name", "email"] {
        if let Some(v) = info.get(key) {
            let v = v.as_str().map_or_else(|| v.to_string(), String::from);
            println!("{key}: {}", oauth::printable(&v));
        }
    }
    Ok(())
}

/// `baa logout`.
pub async fn logout(ca: Option<PathBuf>, args: LogoutArgs) -> anyhow::Result<()> {
    let store = TokenStore::new(args.app.token_file.clone())?;
    let _lock = store.lock().await?;
    if store.load()?.is_none() {
        eprintln!("not signed in");
        return Ok(());
    }
    let session = Session::open(ca, &args.app)?;
    let tokens = &session.tokens;
    let mut revoked = Ok(());
    if let Some(rt) = &tokens.refresh_token {
        revoked = session.client.revoke(rt, "refresh_token").await;
    }
    if revoked.is_ok() {
        revoked = session
            .client
            .revoke(&tokens.access_token, "access_token")
            .await;
    }
    if let Err(e) = revoked {
        return Err(e.context(format!(
            "the agency did not revoke the tokens; {} is kept so `baa logout` can be retried \
             (delete it to forget the session anyway)",
            store.path().display()
        )));
    }
    store.delete()?;
    println!(
        "Signed out of {}. The browser stays signed in at the agency; sign out there to end that session.",
        tokens.agency
    );
    Ok(())
}

/// The URL `baa fetch` gets: absolute, or a path at the agency.
/// The URL `baa fetch` may send the app's token to: under the agency's own
/// gateway (`<agency>/gw/…`) and nowhere else, so a mistyped or planted URL
/// never receives the token.
fn fetch_url(agency: &str, given: &str) -> anyhow::Result<Url> {
    let url = if given.starts_with('/') {
        Url::parse(&oauth::endpoint(agency, given))
    } else {
        Url::parse(given)
    }
    .with_context(|| format!("{given:?} is not a URL"))?;
    oauth::check_transport(&url)?;
    let base = Url::parse(agency).with_context(|| format!("{agency:?} is not a URL"))?;
    anyhow::ensure!(
        url.origin() == base.origin() && url.path().starts_with("/gw/"),
        "{url} is not under the agency's gateway ({}/gw/…); baa fetch sends the app's token there only",
        agency.trim_end_matches('/')
    );
    Ok(url)
}

/// `baa fetch`.
pub async fn fetch(ca: Option<PathBuf>, args: FetchArgs) -> anyhow::Result<()> {
    let mut session = Session::open(ca, &args.app)?;
    let url = fetch_url(session.client.base(), &args.url)?;
    let mut resp = session.get(url.as_str()).await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("GET {url} answered {status}");
    }
    let mut out = std::io::stdout().lock();
    while let Some(chunk) = resp
        .chunk()
        .await
        .with_context(|| format!("reading the answer of {url}"))?
    {
        out.write_all(&chunk).context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L7: the token goes to the agency's gateway only.
    #[test]
    fn l7_fetch_sends_the_token_only_to_the_agency_s_gateway() {
        let agency = "https://login.baa.localtest:8441";
        for ok in [
            "/gw/wiki/page",
            "https://login.baa.localtest:8441/gw/wiki/",
            "https://LOGIN.baa.localtest:8441/gw/wiki",
        ] {
            assert!(fetch_url(agency, ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://evil.localtest/gw/wiki",
            "https://login.baa.localtest:8442/gw/wiki",
            "https://login.baa.localtest:8441/sso/userinfo",
            "https://login.baa.localtest:8441/gw",
            "https://login.baa.localtest:8441/gw/../sso/userinfo",
            "/sso/userinfo",
            "https://login.baa.localtest:8441@evil.localtest/gw/wiki",
        ] {
            assert!(fetch_url(agency, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resolve_flag() {
        assert_eq!(
            parse_resolve("login.baa.localtest=127.0.0.1").unwrap(),
            (
                "login.baa.localtest".to_string(),
                "127.0.0.1".parse().unwrap()
            )
        );
        assert!(parse_resolve("login.baa.localtest").is_err());
        assert!(parse_resolve("=127.0.0.1").is_err());
        assert!(parse_resolve("h=nope").is_err());
        let r = vec![("a.example".to_string(), "::1".parse().unwrap())];
        assert_eq!(resolve_strings(&r), vec!["a.example=::1".to_string()]);
    }

    #[test]
    fn fetch_urls() {
        let a = "https://127.0.0.1:8441";
        assert_eq!(
            fetch_url(a, "/gw/app/x?y=1").unwrap().as_str(),
            "https://127.0.0.1:8441/gw/app/x?y=1"
        );
        assert!(fetch_url(a, "https://app.example/p").is_err());
        assert!(fetch_url(a, "http://app.example/p").is_err());
        assert!(fetch_url(a, "nope").is_err());
    }

    #[test]
    fn greeting_name() {
        let claims = serde_json::json!({"sub": "7", "preferred_username": "alice"});
        assert_eq!(
            display_name(claims.as_object().unwrap()).as_deref(),
            Some("alice")
        );
        let claims = serde_json::json!({"sub": "7"});
        assert_eq!(
            display_name(claims.as_object().unwrap()).as_deref(),
            Some("7")
        );
    }
}
