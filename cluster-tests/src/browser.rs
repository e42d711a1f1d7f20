//! A real headless Chromium driven over WebDriver: Debian's `chromedriver`
//! spawned on a free loopback port, a fantoccini session on it, and host names
//! mapped to loopback with `--host-resolver-rules` so cookies and sites behave
//! as across real domains (`login.baa.localtest`, `shop.baa.localtest`,
//! `partner.localtest`, … each on its own port).
//!
//! Every waiting helper polls with a deadline; when it gives up, its error names
//! the current URL and the start of the page source.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::harness::{free_port, signal, tail};
use crate::poll::{try_poll_until, POLL_INTERVAL};

pub use fantoccini::cookies::Cookie;
/// A browser tab (a WebDriver window handle).
pub use fantoccini::wd::WindowHandle as Tab;

/// Default deadline of the waiting helpers (the CI machine is small and busy).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for a freshly spawned `chromedriver` to answer `GET /status`.
pub const DRIVER_START_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for Chromium to start and a WebDriver session to be created.
pub const SESSION_DEADLINE: Duration = Duration::from_secs(60);
/// Page-load timeout of the WebDriver session (a navigation that takes longer fails).
pub const PAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an error message waits for the URL and page source it quotes.
const CONTEXT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much page source an error message carries.
const SOURCE_EXCERPT_BYTES: usize = 2048;
/// How many times a `chromedriver` that exits at once (port taken) is respawned.
const DRIVER_SPAWN_ATTEMPTS: usize = 3;
const INSTALL_HINT: &str =
    "install the Debian packages `chromium chromium-driver` (ops/test installs them)";

/// The `chromedriver` binary: `$CHROMEDRIVER`, else `/usr/bin/chromedriver`.
pub fn chromedriver_path() -> PathBuf {
    std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromedriver"))
}

/// The Chromium binary: `$CHROMIUM`, else `/usr/bin/chromium`.
pub fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Whether both binaries exist. For diagnostics only: browser tests never skip,
/// [`Browser::start`] fails with an installation hint instead.
pub fn chromium_available() -> bool {
    chromedriver_path().is_file() && chromium_path().is_file()
}

/// `chromedriver` running in its own process group; dropping it kills the group.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Spawns `chromedriver` on a free port and waits until it is ready.
    async fn start(bin: &Path, log: &Path) -> Result<Driver> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .context("building the HTTP client for chromedriver /status")?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let out = File::options()
                .create(true)
                .append(true)
                .open(log)
                .with_context(|| format!("opening {}", log.display()))?;
            let err = out.try_clone()?;
            let child = Command::new(bin)
                .arg(format!("--port={port}"))
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .with_context(|| format!("spawning {}: {INSTALL_HINT}", bin.display()))?;
            let mut driver = Driver { child, port };
            match driver.wait_ready(&http, log).await? {
                true => return Ok(driver),
                false if attempt < DRIVER_SPAWN_ATTEMPTS => continue,
                false => bail!(
                    "chromedriver exited at start {attempt} times; log tail:\n{}",
                    tail(log, 20)
                ),
            }
        }
    }

    /// Polls `GET /status` until it reports ready (`true`) or the process exits
    /// (`false`); fails when [`DRIVER_START_DEADLINE`] passes.
    async fn wait_ready(&mut self, http: &reqwest::Client, log: &Path) -> Result<bool> {
        let url = format!("http://127.0.0.1:{}/status", self.port);
        let end = Instant::now() + DRIVER_START_DEADLINE;
        loop {
            if self.child.try_wait()?.is_some() {
                return Ok(false);
            }
            if let Ok(resp) = http.get(&url).send().await {
                if let Ok(body) = resp.json::<Value>().await {
                    if body["value"]["ready"].as_bool() == Some(true) {
                        return Ok(true);
                    }
                }
            }
            if Instant::now() >= end {
                bail!(
                    "chromedriver did not answer {url} within {DRIVER_START_DEADLINE:?}; log tail:\n{}",
                    tail(log, 20)
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The child is its own process group leader (`process_group(0)`).
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// A headless Chromium session. Dropping it kills `chromedriver` and the browser.
pub struct Browser {
    client: Client,
    host_rules: String,
    profile: PathBuf,
    log: PathBuf,
    driver: Driver,
    // Last: removed once the processes using it are gone.
    _tmp: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` and a headless Chromium with a fresh profile, mapping
    /// host names with `host_rules` (Chromium's `--host-resolver-rules`, e.g.
    /// `MAP *.localtest 127.0.0.1`). TLS errors are ignored: the agency's
    /// certificates come from a test CA. Fails with an installation hint when
    /// `chromedriver` or Chromium is missing.
    pub async fn start(host_rules: &str) -> Result<Browser> {
        let driver_bin = chromedriver_path();
        let chromium = chromium_path();
        for (what, path, var) in [
            ("chromedriver", &driver_bin, "CHROMEDRIVER"),
            ("Chromium", &chromium, "CHROMIUM"),
        ] {
            if !path.is_file() {
                bail!(
                    "{what} not found at {}: {INSTALL_HINT}, or set ${var}",
                    path.display()
                );
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("baa-browser-")
            .tempdir()
            .context("creating the browser's temporary directory")?;
        let profile = tmp.path().join("profile");
        std::fs::create_dir(&profile).with_context(|| format!("creating {}", profile.display()))?;
        let log = tmp.path().join("chromedriver.log");
        let driver = Driver::start(&driver_bin, &log).await?;
        let client = new_session(&driver, &chromium, host_rules, &profile, &log).await?;
        Ok(Browser {
            client,
            host_rules: host_rules.to_string(),
            profile,
            log,
            driver,
            _tmp: tmp,
        })
    }

    /// Takes control of a Chromium that is already running with
    /// `--remote-debugging-port` at `debugger` (`127.0.0.1:PORT`): what a
    /// user would click in their own browser, a test clicks through this.
    pub async fn attach(debugger: &str) -> Result<Browser> {
        let driver_bin = chromedriver_path();
        let tmp = tempfile::Builder::new()
            .prefix("baa-browser-")
            .tempdir()
            .context("creating the browser's temporary directory")?;
        let log = tmp.path().join("chromedriver.log");
        let driver = Driver::start(&driver_bin, &log).await?;
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert("acceptInsecureCerts".into(), json!(true));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "debuggerAddress": debugger }),
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = ClientBuilder::rustls().context("building the WebDriver HTTP client")?;
        builder.capabilities(caps);
        let client = tokio::time::timeout(SESSION_DEADLINE, builder.connect(&driver.url()))
            .await
            .map_err(|_| anyhow::anyhow!("no WebDriver session attached to {debugger}"))?
            .with_context(|| {
                format!(
                    "attaching to Chromium at {debugger}; chromedriver log tail:\n{}",
                    tail(&log, 20)
                )
            })?;
        Ok(Browser {
            client,
            host_rules: String::new(),
            profile: tmp.path().to_path_buf(),
            log,
            driver,
            _tmp: tmp,
        })
    }

    /// The fantoccini client, for anything the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The browser's profile directory (`--user-data-dir`).
    pub fn profile_dir(&self) -> &Path {
        &self.profile
    }

    /// The `chromedriver` log file.
    pub fn driver_log(&self) -> &Path {
        &self.log
    }

    /// Navigates the current tab to `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("navigating to {url}"))
    }

    /// The current tab's URL.
    pub async fn current_url(&self) -> Result<String> {
        Ok(self
            .client
            .current_url()
            .await
            .context("reading the current URL")?
            .to_string())
    }

    /// The current page's serialized DOM.
    pub async fn source(&self) -> Result<String> {
        self.client
            .source()
            .await
            .context("reading the page source")
    }

    /// The rendered text of the first element matching `css`, `None` if there is none.
    pub async fn text(&self, css: &str) -> Result<Option<String>> {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => Ok(Some(
                e.text().await.with_context(|| format!("text of {css}"))?,
            )),
            Err(e) if e.is_no_such_element() => Ok(None),
            Err(e) => Err(self.error(format!("finding {css}: {e}")).await),
        }
    }

    /// Waits until an element matches `css` and returns the first one.
    pub async fn wait_for_element(&self, css: &str, deadline: Duration) -> Result<Element> {
        let found = try_poll_until(deadline, || async {
            self.client.find(Locator::Css(css)).await.ok()
        })
        .await;
        match found {
            Some(e) => Ok(e),
            None => Err(self
                .error(format!("no element matched {css} within {deadline:?}"))
                .await),
        }
    }

    /// Waits until the current URL satisfies `pred` and returns it; `what`
    /// describes the expectation in the error.
    pub async fn wait_for_url(
        &self,
        pred: impl Fn(&str) -> bool,
        what: &str,
        deadline: Duration,
    ) -> Result<String> {
        let pred = &pred;
        let found = try_poll_until(deadline, || async move {
            let url = self.client.current_url().await.ok()?;
            pred(url.as_str()).then(|| url.to_string())
        })
        .await;
        match found {
            Some(url) => Ok(url),
            None => Err(self
                .error(format!("URL never became {what} within {deadline:?}"))
                .await),
        }
    }

    /// Replaces the value of the input matching `css` (waiting for it to appear).
    pub async fn fill(&self, css: &str, value: &str) -> Result<()> {
        let e = self.wait_for_element(css, DEFAULT_DEADLINE).await?;
        e.clear().await.with_context(|| format!("clearing {css}"))?;
        e.send_keys(value)
            .await
            .with_context(|| format!("typing into {css}"))
    }

    /// Clicks the element matching `css` (waiting for it to appear).
    pub async fn click(&self, css: &str) -> Result<()> {
        let e = self.wait_for_element(css, DEFAULT_DEADLINE).await?;
        match e.click().await {
            Ok(()) => Ok(()),
            Err(err) => Err(self.error(format!("clicking {css}: {err}")).await),
        }
    }

    /// Checks or unchecks the checkbox matching `css` (waiting for it to appear).
    pub async fn set_checked(&self, css: &str, checked: bool) -> Result<()> {
        let e = self.wait_for_element(css, DEFAULT_DEADLINE).await?;
        if e.is_selected()
            .await
            .with_context(|| format!("state of {css}"))?
            != checked
        {
            e.click().await.with_context(|| format!("clicking {css}"))?;
        }
        Ok(())
    }

    /// Runs `script` as the body of a function in the page and returns its result.
    pub async fn execute(&self, script: &str) -> Result<Value> {
        self.client
            .execute(script, Vec::new())
            .await
            .context("executing a script in the page")
    }

    /// The cookies visible to the current document as `(name, value, domain)`,
    /// the domain as Chromium reports it: the host for a host-only cookie,
    /// `.parent` for a cookie set with `Domain=parent`. (WebDriver only exposes
    /// the current document's cookies.)
    pub async fn cookies(&self) -> Result<Vec<(String, String, String)>> {
        let all = self
            .client
            .issue_cmd(GetCookies)
            .await
            .context("reading cookies")?;
        let field = |c: &Value, k: &str| c[k].as_str().unwrap_or_default().to_string();
        all.as_array()
            .ok_or_else(|| anyhow!("cookie list is not an array: {all}"))
            .map(|list| {
                list.iter()
                    .map(|c| (field(c, "name"), field(c, "value"), field(c, "domain")))
                    .collect()
            })
    }

    /// Sets a host-only cookie `name=value` with `Path=/` and `SameSite=Lax` for
    /// the current document's host (WebDriver can only set cookies on the current
    /// document's domain, so navigate there first); `Secure` on https pages.
    pub async fn add_cookie(&self, name: &str, value: &str) -> Result<()> {
        let secure = self.current_url().await?.starts_with("https:");
        let mut text = format!("{name}={value}; Path=/; SameSite=Lax");
        if secure {
            text.push_str("; Secure");
        }
        let c = Cookie::parse(text).with_context(|| format!("cookie {name}"))?;
        self.add_raw_cookie(c).await
    }

    /// Sets `cookie` as given. A cookie without a domain is host-only; with one,
    /// the domain must match the current document's (a WebDriver rule). Chromium
    /// refuses `SameSite=None` without `Secure`.
    pub async fn add_raw_cookie(&self, cookie: Cookie<'static>) -> Result<()> {
        let name = cookie.name().to_string();
        match self.client.issue_cmd(AddCookie::from(&cookie)).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(format!("setting cookie {name}: {e}")).await),
        }
    }

    /// Deletes cookie `name` as seen by the current document (no error if absent).
    pub async fn delete_cookie(&self, name: &str) -> Result<()> {
        self.client
            .delete_cookie(name)
            .await
            .with_context(|| format!("deleting cookie {name}"))
    }

    /// The current tab.
    pub async fn current_tab(&self) -> Result<Tab> {
        self.client
            .window()
            .await
            .context("reading the current tab")
    }

    /// All open tabs.
    pub async fn tabs(&self) -> Result<Vec<Tab>> {
        self.client.windows().await.context("listing tabs")
    }

    /// Opens a blank tab, switches to it and returns it.
    pub async fn new_tab(&self) -> Result<Tab> {
        let tab = self
            .client
            .new_window(true)
            .await
            .context("opening a tab")?
            .handle;
        self.switch_to(&tab).await?;
        Ok(tab)
    }

    /// Makes `tab` the target of the following commands.
    pub async fn switch_to(&self, tab: &Tab) -> Result<()> {
        self.client
            .switch_to_window(tab.clone())
            .await
            .context("switching tabs")
    }

    /// Closes the current tab and switches to the first remaining one, if any.
    pub async fn close_tab(&self) -> Result<()> {
        self.client
            .close_window()
            .await
            .context("closing the tab")?;
        if let Some(first) = self.tabs().await?.into_iter().next() {
            self.switch_to(&first).await?;
        }
        Ok(())
    }

    /// Kills every Chromium process using this browser's profile, as if the user
    /// closed the browser (session cookies are not kept; `chromedriver` stays up),
    /// and waits until they are gone. The WebDriver session is dead afterwards:
    /// call [`Browser::reopen`] to continue with the same profile.
    pub async fn kill_browser(&self) -> Result<()> {
        for pid in browser_pids(&self.profile) {
            signal(pid, libc::SIGKILL);
        }
        let gone = try_poll_until(DEFAULT_DEADLINE, || async {
            browser_pids(&self.profile).is_empty().then_some(())
        })
        .await;
        gone.ok_or_else(|| {
            anyhow!(
                "Chromium processes of {} still alive after SIGKILL",
                self.profile.display()
            )
        })
    }

    /// Kills the browser (see [`Browser::kill_browser`]) and starts a new one on
    /// the same profile and `chromedriver`.
    pub async fn reopen(&mut self) -> Result<()> {
        self.kill_browser().await?;
        self.client = new_session(
            &self.driver,
            &chromium_path(),
            &self.host_rules,
            &self.profile,
            &self.log,
        )
        .await?;
        Ok(())
    }

    /// An error `msg` followed by the current URL and the start of the page source.
    async fn error(&self, msg: String) -> anyhow::Error {
        let url = match tokio::time::timeout(CONTEXT_TIMEOUT, self.client.current_url()).await {
            Ok(Ok(u)) => u.to_string(),
            Ok(Err(e)) => format!("(unavailable: {e})"),
            Err(_) => format!("(no answer within {CONTEXT_TIMEOUT:?})"),
        };
        let source = match tokio::time::timeout(CONTEXT_TIMEOUT, self.client.source()).await {
            Ok(Ok(s)) => excerpt(&s, SOURCE_EXCERPT_BYTES).to_string(),
            Ok(Err(e)) => format!("(unavailable: {e})"),
            Err(_) => format!("(no answer within {CONTEXT_TIMEOUT:?})"),
        };
        anyhow!("{msg}\ncurrent URL: {url}\npage source (first {SOURCE_EXCERPT_BYTES} bytes):\n{source}")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- chromedriver log tail ({}) -----\n{}",
                self.log.display(),
                tail(&self.log, 20)
            );
        }
        // Chromium normally dies with chromedriver's process group (dropped
        // after this); anything that left the group is found by its profile.
        for pid in browser_pids(&self.profile) {
            signal(pid, libc::SIGKILL);
        }
    }
}

/// Starts Chromium through `driver` with the project's flags.
async fn new_session(
    driver: &Driver,
    chromium: &Path,
    host_rules: &str,
    profile: &Path,
    log: &Path,
) -> Result<Client> {
    let args = [
        "--headless=new".to_string(),
        "--no-sandbox".into(),
        "--disable-gpu".into(),
        "--disable-dev-shm-usage".into(),
        "--disable-quic".into(),
        "--no-first-run".into(),
        "--no-proxy-server".into(),
        "--disable-background-networking".into(),
        "--disable-component-update".into(),
        "--disable-sync".into(),
        "--ignore-certificate-errors".into(),
        format!("--host-resolver-rules={host_rules}"),
        format!("--user-data-dir={}", profile.display()),
        "--window-size=1200,900".into(),
    ];
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("acceptInsecureCerts".into(), json!(true));
    caps.insert(
        "timeouts".into(),
        json!({ "pageLoad": PAGE_LOAD_TIMEOUT.as_millis() as u64 }),
    );
    caps.insert(
        "goog:chromeOptions".into(),
        json!({ "binary": chromium, "args": args }),
    );
    // fantoccini's rustls connector needs a process-wide crypto provider when
    // several are compiled in; the nodes use ring too.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = ClientBuilder::rustls().context("building the WebDriver HTTP client")?;
    builder.capabilities(caps);
    let url = driver.url();
    match tokio::time::timeout(SESSION_DEADLINE, builder.connect(&url)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => bail!(
            "creating a WebDriver session on {url} ({}): {e}; chromedriver log tail:\n{}",
            chromium.display(),
            tail(log, 20)
        ),
        Err(_) => bail!(
            "no WebDriver session on {url} within {SESSION_DEADLINE:?}; chromedriver log tail:\n{}",
            tail(log, 20)
        ),
    }
}

/// WebDriver "Add Cookie" with absent attributes left out (fantoccini's own
/// command sends `"domain": null`, which chromedriver rejects).
#[derive(Debug)]
struct AddCookie(Value);

impl From<&Cookie<'static>> for AddCookie {
    fn from(c: &Cookie<'static>) -> Self {
        let mut v = serde_json::Map::new();
        v.insert("name".into(), json!(c.name()));
        v.insert("value".into(), json!(c.value()));
        v.insert("path".into(), json!(c.path().unwrap_or("/")));
        if let Some(domain) = c.domain() {
            v.insert("domain".into(), json!(domain));
        }
        v.insert("secure".into(), json!(c.secure().unwrap_or(false)));
        v.insert("httpOnly".into(), json!(c.http_only().unwrap_or(false)));
        if let Some(same_site) = c.same_site() {
            v.insert("sameSite".into(), json!(same_site.to_string()));
        }
        if let Some(at) = c.expires().and_then(|e| e.datetime()) {
            v.insert("expiry".into(), json!(at.unix_timestamp()));
        }
        AddCookie(json!({ "cookie": v }))
    }
}

impl WebDriverCompatibleCommand for AddCookie {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/cookie", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &url::Url) -> (reqwest::Method, Option<String>) {
        (reqwest::Method::POST, Some(self.0.to_string()))
    }
}

/// WebDriver "Get All Cookies", answered as raw JSON (fantoccini's parsed
/// cookies drop the leading dot that tells domain cookies from host-only ones).
#[derive(Debug)]
struct GetCookies;

impl WebDriverCompatibleCommand for GetCookies {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/cookie", session.unwrap_or_default()))
    }

    fn method_and_body(&self, _url: &url::Url) -> (reqwest::Method, Option<String>) {
        (reqwest::Method::GET, None)
    }
}

/// Processes whose command line carries `--user-data-dir=<profile>`
/// (the browser, its zygotes and renderers).
fn browser_pids(profile: &Path) -> Vec<u32> {
    let needle = format!("--user-data-dir={}", profile.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|&b| b == 0).any(|a| a == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn excerpt(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_cuts_on_char_boundary() {
        assert_eq!(excerpt("abc", 10), "abc");
        assert_eq!(excerpt("abcdef", 3), "abc");
        assert_eq!(excerpt("aé", 2), "a");
    }

    #[test]
    fn no_browser_uses_a_fresh_profile() {
        assert!(browser_pids(Path::new("/nonexistent/baa-profile")).is_empty());
    }
}
