//! The reference non-browser app, `baa login` / `whoami` / `fetch` /
//! `logout`, against a 3-node cluster with a real headless Chromium as the
//! system browser (started through `$BROWSER` by
//! `cluster-tests/scripts/headless-browser`): a session made through the
//! browser goes on after the browser is killed, a gateway upstream receives
//! that session's cookie, the device grant completes in the browser, and no
//! secret shows in any log or output.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use baa_cluster_tests::browser::DEFAULT_DEADLINE;
use baa_cluster_tests::harness::{cli_gateway_app, free_port, AGENCY_HOST, TOOLS_APP};
use baa_cluster_tests::sso::{
    add_cli_client, create_user, SsoCookies, REFERENCE_COOKIE, SESSION_COOKIE,
};
use baa_cluster_tests::upstream::Upstream;
use baa_cluster_tests::{poll_until, Browser, Cluster, ClusterOptions};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const PASSWORD: &str = "correct horse battery";
const HOST_RULES: &str = "MAP *.localtest 127.0.0.1";

/// Runs `baa <args>` with the test's environment; returns (success, stdout, stderr).
async fn baa(cluster: &Cluster, env: &[(&str, String)], args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(cluster.bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("running baa");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn browser_env(dir: &Path, profile: &Path, debug_port: u16) -> Vec<(&'static str, String)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/headless-browser");
    vec![
        ("BAA_TEST_DEBUG_PORT", debug_port.to_string()),
        ("BROWSER", script.to_string()),
        ("BAA_TEST_PROFILE", profile.display().to_string()),
        ("BAA_TEST_HOST_RULES", HOST_RULES.to_string()),
        (
            "BAA_TEST_BROWSER_PID",
            dir.join("browser.pid").display().to_string(),
        ),
        (
            "BAA_TEST_BROWSER_LOG",
            dir.join("browser.log").display().to_string(),
        ),
    ]
}

/// Kills the Chromium the script started (its whole process group of helpers
/// dies with it) and waits until it is gone.
async fn kill_script_browser(dir: &Path, profile: &Path) {
    let pid: i32 = std::fs::read_to_string(dir.join("browser.pid"))
        .expect("browser pid file")
        .trim()
        .parse()
        .unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let needle = format!("--user-data-dir={}", profile.display());
    poll_until(Duration::from_secs(20), "Chromium gone", || {
        // Renderer and GPU helpers may outlive the browser process briefly.
        let left = pids_with_arg(&needle);
        for p in &left {
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        async move { left.is_empty().then_some(()) }
    })
    .await;
}

/// Processes whose command line contains `needle`.
fn pids_with_arg(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// Signs alice in with the WebDriver-driven browser and approves the CLI
/// client once (its loopback redirect then fails to connect, which is fine:
/// the trust relationship is what this step is for). Returns the agency cookies.
async fn sign_in_and_trust_cli(cluster: &Cluster, browser: &Browser) -> SsoCookies {
    let base = cluster.agency_url(1);
    browser.goto(&format!("{base}/sso/signin")).await.unwrap();
    browser.fill("#username", "alice").await.unwrap();
    browser.fill("#password", PASSWORD).await.unwrap();
    browser.click("#submit").await.unwrap();
    browser
        .wait_for_url(
            |u| !u.contains("/sso/signin"),
            "signed in",
            DEFAULT_DEADLINE,
        )
        .await
        .unwrap();
    let authorize = format!(
        "{base}/sso/authorize?response_type=code&client_id=baa-cli&redirect_uri=http://127.0.0.1:9/callback\
         &scope=openid%20profile%20offline_access&state=s&code_challenge={}&code_challenge_method=S256&response_mode=query",
        "A".repeat(43)
    );
    browser.goto(&authorize).await.unwrap();
    browser
        .wait_for_element("#approve", DEFAULT_DEADLINE)
        .await
        .unwrap();
    browser.click("#approve").await.unwrap();
    browser
        .wait_for_url(
            |u| u.starts_with("http://127.0.0.1:9/"),
            "redirected to the loopback",
            DEFAULT_DEADLINE,
        )
        .await
        .ok();
    // The agency's own page: its host-only session cookie is visible there.
    browser.goto(&format!("{base}/")).await.unwrap();
    let cookies = browser.cookies().await.unwrap();
    let value = |name: &str| {
        cookies
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in the browser: {cookies:?}"))
    };
    SsoCookies {
        session: value(SESSION_COOKIE),
        reference: value(REFERENCE_COOKIE),
    }
}

fn jwt_claims(jwt: &str) -> serde_json::Value {
    let payload = jwt.split('.').nth(1).expect("JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn node_logs(cluster: &Cluster) -> String {
    cluster
        .ids()
        .iter()
        .map(|id| std::fs::read_to_string(cluster.node(*id).log_path()).unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baa_login_goes_on_after_the_browser_is_killed() {
    let upstream = Upstream::start().await;
    let mut opts = ClusterOptions::default();
    opts.gateway.push(cli_gateway_app(upstream.port));
    // Access tokens live 2 s here, so the CLI must refresh on its own.
    opts.sso.insert("access_token_ttl_s".into(), 2.into());
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    add_cli_client(&cluster).await;

    // A browser session exists: signed in once, the CLI approved once.
    let browser = Browser::start(HOST_RULES).await.unwrap();
    let cookie = sign_in_and_trust_cli(&cluster, &browser).await;
    let profile = browser.profile_dir().to_path_buf();
    // Close it properly so the cookie is on disk for the next Chromium.
    browser.client().clone().close().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tokens.json");
    let ca = cluster.ca_pem().display().to_string();
    let agency = cluster.agency_url(2);
    let resolve = format!("{AGENCY_HOST}=127.0.0.1");
    let common = |cmd: &'static str| {
        vec![
            cmd.to_string(),
            "--ca".into(),
            ca.clone(),
            "--resolve".into(),
            resolve.clone(),
            "--token-file".into(),
            token_file.display().to_string(),
        ]
    };
    let debug_port = free_port();
    let env = browser_env(dir.path(), &profile, debug_port);

    // Acceptance 1: `baa login` through the system browser, no password
    // prompt; the user approves the app there (a public native client asks
    // every time, RFC 8252 §8.6).
    let mut args = common("login");
    args.extend(["--agency".to_string(), agency.clone()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let login = baa(&cluster, &env, &argv);
    let approve = async {
        let debugger = format!("127.0.0.1:{debug_port}");
        // The browser `baa login` started answers on its debugging port.
        poll_until(
            DEFAULT_DEADLINE,
            "the system browser's debugger",
            || async {
                let version = reqwest::get(format!("http://{debugger}/json/version")).await;
                version.ok().filter(|r| r.status().is_success()).map(drop)
            },
        )
        .await;
        let user = Browser::attach(&debugger)
            .await
            .expect("attaching to the system browser");
        user.wait_for_element("#approve", DEFAULT_DEADLINE)
            .await
            .expect("the trust page in the system browser");
        assert!(
            user.source().await.unwrap().contains("baa command line"),
            "the page names the app"
        );
        user.click("#approve").await.expect("approving");
    };
    let ((ok, out, err), ()) = tokio::time::timeout(
        Duration::from_secs(90),
        futures::future::join(login, approve),
    )
    .await
    .expect("baa login finished");
    assert!(ok, "baa login failed:\n{out}\n{err}");
    kill_script_browser(dir.path(), &profile).await;

    // Acceptance 8: the token file is 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&token_file).unwrap()).unwrap();
    let access = stored["access_token"].as_str().unwrap().to_string();
    let refresh = stored["refresh_token"].as_str().unwrap().to_string();

    // No browser left, and the access token has expired (2 s; polled until
    // the agency refuses it): whoami refreshes without asking anything and
    // works as the same user.
    let verify = format!("{}/auth/verify?app={TOOLS_APP}", cluster.public_url(1));
    poll_until(Duration::from_secs(30), "the access token expires", || {
        let req = cluster.http().get(&verify).bearer_auth(&access);
        async move { (req.send().await.ok()?.status() == 401).then_some(()) }
    })
    .await;
    let argv_owned = common("whoami");
    let argv: Vec<&str> = argv_owned.iter().map(String::as_str).collect();
    let (ok, who, err) = baa(&cluster, &env, &argv).await;
    assert!(ok && who.contains("alice"), "{who}\n{err}");
    let refreshed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&token_file).unwrap()).unwrap();
    assert_ne!(
        refreshed["access_token"], stored["access_token"],
        "no refresh happened"
    );
    assert_ne!(
        refreshed["refresh_token"], stored["refresh_token"],
        "refresh token not rotated"
    );
    let resp = cluster
        .http()
        .get(format!(
            "{}/auth/verify?app={TOOLS_APP}",
            cluster.public_url(1)
        ))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the expired access token still works");
    let mut fetch = common("fetch");
    fetch.push(format!("{agency}/gw/app/hello?x=1"));
    let argv: Vec<&str> = fetch.iter().map(String::as_str).collect();
    let (ok, body, err) = baa(&cluster, &env, &argv).await;
    assert!(ok && body.contains("hello from upstream"), "{body}\n{err}");
    // The upstream got the session cookie of that same browser session, no token.
    let reqs = upstream.requests();
    let last = reqs.last().expect("upstream request");
    assert!(last.starts_with("GET /hello?x=1 "), "{last}");
    assert!(!last.contains(&access), "the token was forwarded");
    assert!(!last.to_lowercase().contains("authorization:"), "{last}");
    let session_cookie = last
        .lines()
        .find(|l| l.to_lowercase().starts_with("cookie:"))
        .and_then(|l| l.split("baa_session=").nth(1))
        .map(|v| v.split(';').next().unwrap().trim().to_string())
        .expect("session cookie at the upstream");
    let browser_sid = {
        let resp = cluster
            .http()
            .get(format!("{}/auth/verify", cluster.public_url(3)))
            .header("cookie", cookie.header())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.headers()["x-baa-session"]
            .to_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(jwt_claims(&session_cookie)["sid"], browser_sid.as_str());
    assert!(
        last.contains(&format!("x-baa-session: {browser_sid}"))
            || last.contains(&format!("X-Baa-Session: {browser_sid}")),
        "{last}"
    );

    // Acceptance 8: no token, code or cookie value in any node's log or the CLI's output.
    let outputs = format!("{out}{err}{who}{body}");
    let logs = node_logs(&cluster);
    for (what, secret) in [
        ("access token", &access),
        ("refresh token", &refresh),
        ("session cookie", &cookie.session),
    ] {
        assert!(
            !outputs.contains(secret.as_str()),
            "{what} in the CLI output"
        );
        assert!(!logs.contains(secret.as_str()), "{what} in a node log");
    }

    // Acceptance 4 (CLI side): `baa logout` revokes; the tokens are dead after.
    let last: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&token_file).unwrap()).unwrap();
    let last_access = last["access_token"].as_str().unwrap().to_string();
    let last_refresh = last["refresh_token"].as_str().unwrap().to_string();
    let argv_owned = common("logout");
    let argv: Vec<&str> = argv_owned.iter().map(String::as_str).collect();
    let (ok, _, err) = baa(&cluster, &env, &argv).await;
    assert!(ok, "{err}");
    assert!(!token_file.exists(), "the token file outlived logout");
    let resp = cluster
        .http()
        .get(format!(
            "{}/auth/verify?app={TOOLS_APP}",
            cluster.public_url(1)
        ))
        .bearer_auth(&last_access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = cluster
        .http()
        .post(format!("{}/sso/token", cluster.public_url(2)))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", last_refresh.as_str()),
            ("client_id", "baa-cli"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400, "the refresh token survived logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baa_login_device_completes_in_the_browser_and_backs_off() {
    let mut opts = ClusterOptions::default();
    opts.sso.insert("device_poll_interval_s".into(), 1.into());
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    add_cli_client(&cluster).await;
    let browser = Browser::start(HOST_RULES).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("tokens.json");
    // No system browser on this "machine": the CLI prints the code instead.
    let mut child = tokio::process::Command::new(cluster.bin())
        .args([
            "login",
            "--device",
            "--poll-interval-ms",
            "200",
            "--agency",
            &cluster.agency_url(3),
            "--ca",
            &cluster.ca_pem().display().to_string(),
            "--resolve",
            &format!("{AGENCY_HOST}=127.0.0.1"),
            "--token-file",
            &token_file.display().to_string(),
        ])
        .env("BROWSER", "/bin/true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let code = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("enter the code ").nth(1) {
                return rest.trim().to_string();
            }
        }
        panic!("no user code printed");
    })
    .await
    .expect("user code line");

    // The user signs in on another node and enters the code.
    let base = cluster.agency_url(1);
    browser.goto(&format!("{base}/device")).await.unwrap();
    browser
        .wait_for_element("#username", DEFAULT_DEADLINE)
        .await
        .unwrap();
    browser.fill("#username", "alice").await.unwrap();
    browser.fill("#password", PASSWORD).await.unwrap();
    browser.click("#submit").await.unwrap();
    browser
        .wait_for_element("#user_code", DEFAULT_DEADLINE)
        .await
        .unwrap();
    browser.fill("#user_code", &code).await.unwrap();
    browser.click("#submit").await.unwrap();
    browser
        .wait_for_element("#approve", DEFAULT_DEADLINE)
        .await
        .unwrap();
    assert_eq!(
        browser.text("#app-name").await.unwrap().as_deref(),
        Some("baa command line")
    );
    browser.click("#approve").await.unwrap();
    browser
        .wait_for_element("#done", DEFAULT_DEADLINE)
        .await
        .unwrap();

    let status = tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("baa login --device finished")
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(status.success(), "{err}");
    assert!(
        err.contains("slow down"),
        "the CLI never backed off:\n{err}"
    );
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&token_file).unwrap()).unwrap();
    let resp = cluster
        .http()
        .get(format!(
            "{}/auth/verify?app={TOOLS_APP}",
            cluster.public_url(2)
        ))
        .bearer_auth(stored["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-baa-user"], "alice");
}
