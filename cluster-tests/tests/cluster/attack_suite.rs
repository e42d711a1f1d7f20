//! The attack suite (issue 15): attacks written from the specifications
//! (RFC 9700, RFC 8252, RFC 7636, RFC 8628, OpenID Connect, OWASP ASVS 5.0)
//! and from real CVEs of peers, one named test each, tried against a real
//! 3-node cluster as an attacker would. Each test's doc names the clause it
//! comes from. The cases of ATTACKS.md live in `attacks.rs`; cases already
//! covered elsewhere (refresh reuse: `attacks::l1_…`; the web site's basic
//! redirect tricks: `sso_protocol::redirect_uri_must_match_exactly`;
//! forward-auth `rd`: `forward_auth.rs`; anonymous floods: `flood.rs`) are
//! not repeated. RELIABILITY.md ("Attack suite") has the table.

use std::time::{Duration, Instant};

use baa_cluster_tests::harness::cli_gateway_app;
use baa_cluster_tests::raw::{self, Ended};
use baa_cluster_tests::sso::{
    add_cli_client, add_confidential_site, add_site, create_user, pkce, query_params, redeem,
    verified_user, Agent, Answer, AuthRequest, SsoCookies, TestSite, CSRF_COOKIE, SESSION_COOKIE,
};
use baa_cluster_tests::upstream::Upstream;
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use baa_node::http::deadline::{BODY_TIMEOUT, HANDSHAKE_TIMEOUT, HEAD_TIMEOUT};
use reqwest::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::json;

const PASSWORD: &str = "correct horse battery";
/// The port a native app's loopback listener happens to have.
const APP_PORT: u16 = 53682;

fn loopback(path: &str) -> String {
    format!("http://127.0.0.1:{APP_PORT}{path}")
}

/// The command-line client's request for `openid offline_access`, answered
/// in the loopback redirect's query.
fn cli_request(cli: &TestSite) -> AuthRequest {
    AuthRequest::new(cli)
        .set("scope", "openid offline_access")
        .set("response_mode", "query")
        .set("redirect_uri", &loopback("/callback"))
}

/// `cli` as it redeems at its loopback port.
fn cli_at_port(cli: &TestSite) -> TestSite {
    TestSite {
        redirect_uri: loopback("/callback"),
        ..cli.clone()
    }
}

/// The code a public native client gets for `req` in `agent`'s session: its
/// page is shown every time (RFC 8252 §8.6) and approved.
async fn cli_code(agent: &mut Agent, base: &str, req: &AuthRequest) -> String {
    let page = agent.get(&req.url(base)).await;
    assert!(
        page.body.contains("id=\"trust\""),
        "{} {}",
        page.status,
        page.body
    );
    let done = agent.approve(base, &page, "username", false, false).await;
    let to = done
        .location()
        .unwrap_or_else(|| panic!("no redirect: {} {}", done.status, done.body));
    query_params(&to)
        .get("code")
        .cloned()
        .unwrap_or_else(|| panic!("no code in {to}"))
}

/// The error a site hears in its redirect's query, if `answer` redirects.
fn site_error(answer: &Answer) -> Option<String> {
    query_params(&answer.location()?).get("error").cloned()
}

/// Asserts the answer to an authorization request with a bad redirect URI:
/// an error page of the agency (400 `invalid_redirect_uri`), sending the
/// browser nowhere.
fn assert_refused_page(answer: &Answer, what: &str) {
    assert_eq!(
        answer.status,
        StatusCode::BAD_REQUEST,
        "{what}: {}",
        answer.body
    );
    assert!(answer.location().is_none(), "{what}: redirected");
    assert!(
        answer.body.contains("invalid_redirect_uri"),
        "{what}: {}",
        answer.body
    );
    assert_eq!(
        answer.form_action(),
        None,
        "{what}: a form on the error page"
    );
    assert!(!answer.body.contains("name=\"code\""), "{what}");
}

/// `grant_type=refresh_token` as `site` at node `id`.
async fn refresh(
    cluster: &Cluster,
    id: u64,
    site: &TestSite,
    token: &str,
) -> (StatusCode, serde_json::Value) {
    let mut form = vec![("grant_type", "refresh_token"), ("refresh_token", token)];
    let mut req = cluster
        .http()
        .post(format!("{}/sso/token", cluster.public_url(id)));
    match &site.secret {
        Some(s) => req = req.basic_auth(&site.client_id, Some(s)),
        None => form.push(("client_id", site.client_id.as_str())),
    }
    let resp = req.form(&form).send().await.expect("refresh");
    let status = resp.status();
    (status, resp.json().await.unwrap_or_default())
}

/// `GET /sso/userinfo` with `token` at node `id`: the status.
async fn userinfo(cluster: &Cluster, id: u64, token: &str) -> StatusCode {
    cluster
        .http()
        .get(format!("{}/sso/userinfo", cluster.public_url(id)))
        .bearer_auth(token)
        .send()
        .await
        .expect("userinfo")
        .status()
}

/// Who `cookies` sign in as at node `id` (`/auth/verify`), if anyone.
async fn signed_in_as(cluster: &Cluster, id: u64, cookies: &SsoCookies) -> Option<String> {
    verified_user(cluster, id, &cookies.header()).await
}

/// The CSRF token of the agency page at `url`, as `agent` (which keeps its cookie).
async fn csrf_of(agent: &mut Agent, url: &str) -> String {
    let page = agent.get(url).await;
    page.inputs()
        .get("csrf")
        .cloned()
        .unwrap_or_else(|| panic!("no csrf on {url}: {} {}", page.status, page.body))
}

/// RFC 8252 §7.3 and §8.3, RFC 9700 §4.1.3 (exact matching, loopback port
/// only), CVE-2023-6291 (Keycloak: redirect URI checks bypassed with
/// userinfo and look-alike hosts), OWASP ASVS 5.0 V10.4.1. A native
/// client registered `http://127.0.0.1/callback` may use any port, and
/// nothing else: no look-alike host (`127.0.0.1.evil.test`), no
/// `localhost`, no other loopback spelling or IPv6 address, no userinfo
/// `@`, fragment, case change, percent-encoding, trailing slash, dot
/// segment, query or scheme change. Each gets the agency's error page and
/// goes nowhere; the real one on any port gets the page asking the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_tricks_against_a_loopback_client_are_refused() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let cli = add_cli_client(&cluster).await;
    let mut agent = Agent::new(&cluster);
    agent
        .sign_in_ok(&cluster.public_url(1), "alice", PASSWORD)
        .await;
    let p = APP_PORT;
    let tricks = [
        format!("http://127.0.0.1.evil.test:{p}/callback"),
        "http://127.0.0.1.evil.test/callback".to_string(),
        format!("http://127.0.0.1.nip.io:{p}/callback"),
        format!("http://localhost:{p}/callback"),
        "http://localhost/callback".to_string(),
        format!("http://[::1]:{p}/callback"),
        format!("http://[::ffff:127.0.0.1]:{p}/callback"),
        format!("http://[0:0:0:0:0:0:0:1]:{p}/callback"),
        format!("http://127.0.0.2:{p}/callback"),
        format!("http://127.1:{p}/callback"),
        format!("http://2130706433:{p}/callback"),
        format!("http://0x7f.0.0.1:{p}/callback"),
        format!("http://0177.0.0.1:{p}/callback"),
        format!("http://127.0.0.1:{p}@evil.test/callback"),
        format!("http://evil.test@127.0.0.1:{p}/callback"),
        format!("http://127.0.0.1@evil.test:{p}/callback"),
        format!("http://127.0.0.1:{p}\\@evil.test/callback"),
        format!("http://127.0.0.1:{p}/callback#frag"),
        format!("http://127.0.0.1:{p}/callback#"),
        format!("http://127.0.0.1:{p}/Callback"),
        format!("HTTP://127.0.0.1:{p}/callback"),
        format!("http://127.0.0.1:{p}/%63allback"),
        format!("http://127.0.0.1:{p}/callback%2F..%2Fevil"),
        format!("http://127.0.0.1:{p}/callback/"),
        format!("http://127.0.0.1:{p}/callback/../evil"),
        format!("http://127.0.0.1:{p}/./callback"),
        format!("http://127.0.0.1:{p}//callback"),
        format!("http://127.0.0.1:{p}/callback?x=1"),
        format!("http://127.0.0.1:{p}/callback?"),
        format!("https://127.0.0.1:{p}/callback"),
        "http://127.0.0.1:/callback".to_string(),
        format!("http://127.0.0.1:{p}:{p}/callback"),
        format!("http://127.0.0.1:{p}x/callback"),
        format!("http://127.0.0.1:{p}/callback%00"),
        format!("http://127.0.0.1:{p}/callback "),
        format!(" http://127.0.0.1:{p}/callback"),
        format!("//127.0.0.1:{p}/callback"),
        format!("http://127.0.0.1:{p}"),
        format!("http:/127.0.0.1:{p}/callback"),
    ];
    for (i, uri) in tricks.iter().enumerate() {
        let node = cluster.public_url(1 + (i as u64 % 3));
        let req = cli_request(&cli).set("redirect_uri", uri);
        let answer = agent.get(&req.url(&node)).await;
        assert_refused_page(&answer, uri);
    }
    // Any port of the registered loopback URI: the page asking the user.
    for port in [APP_PORT, 1024, 65535] {
        let uri = format!("http://127.0.0.1:{port}/callback");
        let req = cli_request(&cli).set("redirect_uri", &uri);
        let page = agent.get(&req.url(&cluster.public_url(2))).await;
        assert!(page.body.contains("id=\"trust\""), "{uri}: {}", page.body);
    }
    cluster.assert_no_panics();
}

/// RFC 9700 §4.1.3 and §2.1 (exact string matching), OWASP ASVS 5.0
/// V10.4.1, CVE-2023-6134 (Keycloak: a lax redirect URI check). The web
/// site's tricks beyond `sso_protocol::redirect_uri_must_match_exactly`:
/// percent-encoding of path or host, an empty query or fragment, a
/// trailing dot on the host, an IP literal for the host (v4 and v6), a
/// leading zero on the port, a doubled slash, a path parameter, and an
/// encoded CR LF that would split the `Location` header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_tricks_against_a_web_site_are_refused() {
    let cluster = Cluster::start(3).await;
    let registered = "https://shop.baa.localtest:9443/cb";
    let shop = add_confidential_site(&cluster, "shop", registered).await;
    let mut agent = Agent::new(&cluster);
    let tricks = [
        "https://shop.baa.localtest:9443/%63b",
        "https://shop.baa.localtest:9443/c%62",
        "https://shop.baa.localtest:9443/%2563b",
        "https://shop%2Ebaa.localtest:9443/cb",
        "https://shop.baa.localtest.:9443/cb",
        "https://shop.baa.localtest:9443/cb?",
        "https://shop.baa.localtest:9443/cb#",
        "https://shop.baa.localtest:9443/cb%23.evil.test",
        "https://shop.baa.localtest:9443/cb%3F.evil.test",
        "https://127.0.0.1:9443/cb",
        "https://[::1]:9443/cb",
        "https://shop.baa.localtest:09443/cb",
        "https://shop.baa.localtest:9443//cb",
        "https://shop.baa.localtest:9443/./cb",
        "https://shop.baa.localtest:9443/cb;x=1",
        "https://shop.baa.localtest:9443/cb\\",
        "https://shop.baa.localtest:9443/cb%0d%0aLocation:%20https://evil.test/",
        "https://shop.baa.localtest:9443/cb\r\nLocation: https://evil.test/",
        "https:/shop.baa.localtest:9443/cb",
        "https:shop.baa.localtest:9443/cb",
        "https://shop.baa.localtest:9443/cb ",
        "https://shop.baa.localtest:9443",
        "https://shop.baa.localtest:9443/",
    ];
    for (i, uri) in tricks.iter().enumerate() {
        let node = cluster.public_url(1 + (i as u64 % 3));
        let req = AuthRequest::new(&shop).set("redirect_uri", uri);
        let answer = agent.get(&req.url(&node)).await;
        assert_refused_page(&answer, uri);
    }
    // The registered one: the sign-in page (no session yet).
    let page = agent
        .get(&AuthRequest::new(&shop).url(&cluster.public_url(3)))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert!(page.inputs().contains_key("password"), "{}", page.body);
    cluster.assert_no_panics();
}

/// OWASP ASVS 5.0 V10.4.2, RFC 6749 §4.1.2 ("SHOULD revoke … all tokens
/// previously issued based on that authorization code"), RFC 9700 §4.5.
/// A native client's code redeemed a second time, through another node, is
/// refused, and every token the first redemption gave — the access token
/// and the refresh token — stops working on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_reuse_revokes_the_access_and_refresh_tokens_it_gave() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let cli = add_cli_client(&cluster).await;
    let at_port = cli_at_port(&cli);
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;
    let req = cli_request(&cli);
    let code = cli_code(&mut agent, &base, &req).await;
    let v = req.verifier.as_deref();
    let (status, tokens) = redeem(cluster.http(), &cluster.public_url(2), &at_port, &code, v).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().expect("access token");
    let refresh_token = tokens["refresh_token"].as_str().expect("refresh token");
    assert_eq!(userinfo(&cluster, 3, access).await, StatusCode::OK);

    let (status, again) = redeem(cluster.http(), &cluster.public_url(3), &at_port, &code, v).await;
    assert_eq!(
        (status, again["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{again}"
    );
    let since = Instant::now();
    for id in cluster.ids() {
        poll_until(
            Duration::from_secs(5),
            &format!("node {id} refuses the replayed code's access token"),
            || async {
                (userinfo(&cluster, id, access).await == StatusCode::UNAUTHORIZED).then_some(())
            },
        )
        .await;
    }
    println!(
        "access token dead everywhere {:?} after the replay",
        since.elapsed()
    );
    for id in cluster.ids() {
        let (status, body) = refresh(&cluster, id, &at_port, refresh_token).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant")),
            "node {id}: the replayed code's refresh token still works: {body}"
        );
    }
    cluster.assert_no_panics();
}

/// RFC 9700 §4.8 (PKCE downgrade) and §2.1.1, RFC 7636 §4.3 and §4.4.1,
/// OWASP ASVS 5.0 V10.4.6. A public client must send an S256 challenge
/// (none, `plain`, or a challenge without its method — which means `plain`
/// — are refused at authorization); a code issued with a challenge is not
/// redeemed without its verifier; and a code issued *without* a challenge
/// is not redeemed *with* a verifier (the attacker's downgrade: strip the
/// challenge from the request, then present any verifier).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_downgrades_are_refused() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let cli = add_cli_client(&cluster).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;

    let (verifier, challenge) = pkce();
    for (what, req) in [
        (
            "no challenge",
            cli_request(&cli)
                .without("code_challenge")
                .without("code_challenge_method"),
        ),
        (
            "plain",
            cli_request(&cli)
                .set("code_challenge", &verifier)
                .set("code_challenge_method", "plain"),
        ),
        (
            "a challenge without a method (plain)",
            cli_request(&cli)
                .set("code_challenge", &verifier)
                .without("code_challenge_method"),
        ),
        (
            "S256 in lower case",
            cli_request(&cli)
                .set("code_challenge", &challenge)
                .set("code_challenge_method", "s256"),
        ),
        (
            "a method without a challenge",
            cli_request(&cli).without("code_challenge"),
        ),
    ] {
        let answer = agent.get(&req.url(&cluster.public_url(2))).await;
        assert_eq!(
            answer.status,
            StatusCode::SEE_OTHER,
            "{what}: {}",
            answer.body
        );
        assert_eq!(
            site_error(&answer).as_deref(),
            Some("invalid_request"),
            "{what}: {:?}",
            answer.location()
        );
    }

    // Issued with a challenge, presented without the verifier: refused, and
    // the code is still good for its rightful holder.
    let at_port = cli_at_port(&cli);
    let req = cli_request(&cli);
    let code = cli_code(&mut agent, &base, &req).await;
    let (status, body) = redeem(
        cluster.http(),
        &cluster.public_url(2),
        &at_port,
        &code,
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    let (status, body) = redeem(
        cluster.http(),
        &cluster.public_url(3),
        &at_port,
        &code,
        req.verifier.as_deref(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Issued without a challenge (a confidential site may omit PKCE),
    // presented with a verifier: refused; without one it is redeemed.
    let req = AuthRequest::new(&shop)
        .without("code_challenge")
        .without("code_challenge_method");
    let code = agent.code_for(&base, &req, false).await;
    let (status, body) = redeem(
        cluster.http(),
        &cluster.public_url(2),
        &shop,
        &code,
        Some(&verifier),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "{body}"
    );
    let (status, body) = redeem(cluster.http(), &cluster.public_url(3), &shop, &code, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    cluster.assert_no_panics();
}

/// RFC 7636 §4.1 (`code_verifier` = 43 to 128 characters of `[A-Z] / [a-z]
/// / [0-9] / "-" / "." / "_" / "~"`) and §4.2 (the S256 challenge is
/// base64url, 43 characters). A challenge of the wrong length or alphabet
/// is refused at authorization; a verifier of 42 or 129 characters, or with
/// a character outside the set, is refused at the token endpoint even when
/// its S256 matches the challenge; 43 and 128 characters of the full set
/// are redeemed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkce_verifier_and_challenge_syntax_is_enforced() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let cli = add_cli_client(&cluster).await;
    let at_port = cli_at_port(&cli);
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;

    let (_, good) = pkce();
    for challenge in [
        good[..42].to_string(),
        format!("{good}{}", "A".repeat(86)),
        format!("{}+", &good[..42]),
        format!("{}/", &good[..42]),
        format!("{good}="),
        format!("{}%", &good[..42]),
    ] {
        let req = cli_request(&cli).set("code_challenge", &challenge);
        let answer = agent.get(&req.url(&base)).await;
        assert_eq!(
            site_error(&answer).as_deref(),
            Some("invalid_request"),
            "challenge {challenge:?}: {} {:?}",
            answer.status,
            answer.location()
        );
    }

    let unreserved = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    let of_len = |n: usize| -> String { unreserved.chars().cycle().take(n).collect() };
    let cases = [
        (of_len(42), false),
        (of_len(129), false),
        (format!("{}+", of_len(42)), false),
        (format!("{}/", of_len(42)), false),
        (format!("{}=", of_len(42)), false),
        (format!("{} ", of_len(42)), false),
        (format!("{}é", of_len(41)), false),
        (of_len(43), true),
        (of_len(128), true),
    ];
    for (i, (verifier, valid)) in cases.iter().enumerate() {
        let challenge = baa_proto::pkce::s256(verifier);
        let req = cli_request(&cli).set("code_challenge", &challenge);
        let code = cli_code(&mut agent, &base, &req).await;
        let node = cluster.public_url(1 + (i as u64 % 3));
        let (status, body) = redeem(cluster.http(), &node, &at_port, &code, Some(verifier)).await;
        if *valid {
            assert_eq!(status, StatusCode::OK, "{verifier:?}: {body}");
        } else {
            assert_eq!(
                (status, body["error"].as_str()),
                (StatusCode::BAD_REQUEST, Some("invalid_grant")),
                "{verifier:?} ({} characters): {body}",
                verifier.chars().count()
            );
        }
    }
    cluster.assert_no_panics();
}

/// One way a form may be forged: what the forger's request carries.
#[derive(Debug, Clone, Copy)]
enum Forgery {
    /// No `csrf` field.
    NoField,
    /// A `csrf` field, but the victim's browser has no CSRF cookie.
    NoCookie,
    /// A well-formed token that is not the cookie's.
    Guessed,
    /// The forger's own valid token (from their own visit).
    ForgersOwn,
    /// An empty field and an empty cookie.
    Empty,
}

/// RFC 9700 §4.7 (CSRF), OWASP ASVS 5.0 V3.5.1, CWE-352. Every form of the
/// agency — sign-in, trust (consent), sign-out, device code entry, device
/// decision — refuses a submission without the browser's own CSRF token
/// (none, a guessed one, the forger's own, an empty one): 400
/// `csrf_mismatch`, and nothing happens (no session, no trust, no
/// sign-out, no device approval).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_form_refuses_a_forged_submission() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    create_user(&cluster, "mallory", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let cli = add_cli_client(&cluster).await;
    let base = cluster.public_url(1);

    // The victim: signed in, with a pending device grant of their own.
    let mut victim = Agent::new(&cluster);
    victim.sign_in_ok(&base, "alice", PASSWORD).await;
    let victim_cookies = victim.sso_cookies().expect("victim cookies");
    let started: serde_json::Value = cluster
        .http()
        .post(format!("{base}/sso/device_authorization"))
        .form(&[("client_id", cli.client_id.as_str()), ("scope", "openid")])
        .send()
        .await
        .expect("device authorization")
        .json()
        .await
        .expect("device JSON");
    let user_code = started["user_code"]
        .as_str()
        .expect("user code")
        .to_string();
    let device_code = started["device_code"]
        .as_str()
        .expect("device code")
        .to_string();
    // The forger's own valid token, from their own visit.
    let mut forger = Agent::new(&cluster);
    let forgers_token = csrf_of(&mut forger, &format!("{base}/sso/signin")).await;

    let trust_fields: Vec<(String, String)> = AuthRequest::new(&shop)
        .params
        .into_iter()
        .chain([
            ("decision".to_string(), "approve".to_string()),
            ("account_name".to_string(), "username".to_string()),
        ])
        .collect();
    let forms: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "/sso/signin",
            vec![
                ("username".into(), "mallory".into()),
                ("password".into(), PASSWORD.into()),
            ],
        ),
        ("/sso/consent", trust_fields),
        ("/sso/logout", vec![]),
        ("/device", vec![("user_code".into(), user_code.clone())]),
        (
            "/device/decide",
            vec![
                ("user_code".into(), user_code.clone()),
                ("decision".into(), "approve".into()),
            ],
        ),
    ];
    let mut refused = 0;
    for (path, fields) in &forms {
        for forgery in [
            Forgery::NoField,
            Forgery::NoCookie,
            Forgery::Guessed,
            Forgery::ForgersOwn,
            Forgery::Empty,
        ] {
            // The victim's browser as the forged request reaches the agency.
            let mut browser = Agent::new(&cluster);
            browser.set_sso_cookies(&victim_cookies);
            let own = victim.cookies.get(CSRF_COOKIE).cloned();
            let mut fields = fields.clone();
            match forgery {
                Forgery::NoField => {
                    if let Some(c) = own {
                        browser.cookies.insert(CSRF_COOKIE.into(), c);
                    }
                }
                Forgery::NoCookie => fields.push(("csrf".into(), forgers_token.clone())),
                Forgery::Guessed => {
                    if let Some(c) = own {
                        browser.cookies.insert(CSRF_COOKIE.into(), c);
                    }
                    fields.push(("csrf".into(), "A".repeat(43)));
                }
                Forgery::ForgersOwn => {
                    if let Some(c) = own {
                        browser.cookies.insert(CSRF_COOKIE.into(), c);
                    }
                    fields.push(("csrf".into(), forgers_token.clone()));
                }
                Forgery::Empty => {
                    browser.cookies.insert(CSRF_COOKIE.into(), String::new());
                    fields.push(("csrf".into(), String::new()));
                }
            }
            let node = cluster.public_url(1 + (refused % 3));
            let answer = browser.post_form(&format!("{node}{path}"), &fields).await;
            assert_eq!(
                answer.status,
                StatusCode::BAD_REQUEST,
                "{path} {forgery:?}: {}",
                answer.body
            );
            assert!(
                answer.body.contains("csrf_mismatch"),
                "{path} {forgery:?}: {}",
                answer.body
            );
            assert!(
                answer.headers.get_all(SET_COOKIE).iter().all(|c| {
                    let c = c.to_str().unwrap_or_default();
                    !c.starts_with(SESSION_COOKIE)
                }),
                "{path} {forgery:?} touched the session cookie"
            );
            refused += 1;
        }
    }
    // Nothing happened: alice is still signed in everywhere, shop got no
    // trust, the device grant is still pending.
    for id in cluster.ids() {
        assert_eq!(
            signed_in_as(&cluster, id, &victim_cookies).await.as_deref(),
            Some("alice"),
            "node {id}"
        );
    }
    let silent = victim
        .get(
            &AuthRequest::new(&shop)
                .set("prompt", "none")
                .set("response_mode", "query")
                .url(&base),
        )
        .await;
    assert_eq!(site_error(&silent).as_deref(), Some("consent_required"));
    let polled: serde_json::Value = cluster
        .http()
        .post(format!("{}/sso/token", cluster.public_url(2)))
        .form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("client_id", cli.client_id.as_str()),
            ("device_code", device_code.as_str()),
        ])
        .send()
        .await
        .expect("device poll")
        .json()
        .await
        .expect("device poll JSON");
    assert_eq!(polled["error"], "authorization_pending", "{polled}");
    println!("{refused} forged submissions refused");
    cluster.assert_no_panics();
}

/// OpenID Connect RP-Initiated Logout 1.0 §2 ("the OP SHOULD ask the
/// End-User whether to log out"), RFC 9700 §4.7. Forced logout: a link or
/// a third-party page cannot sign a user out — `GET /sso/logout` without a
/// hint, or with the ID token of *another* session, only shows the
/// confirmation page; a forged hint is refused; the user's session lives
/// on every node until they confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_cannot_be_forced_on_a_user() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    create_user(&cluster, "mallory", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let base = cluster.public_url(1);
    let mut victim = Agent::new(&cluster);
    victim.sign_in_ok(&base, "alice", PASSWORD).await;
    let cookies = victim.sso_cookies().expect("cookies");
    // The attacker's own, valid ID token (their own session at shop).
    let mut mallory = Agent::new(&cluster);
    mallory.sign_in_ok(&base, "mallory", PASSWORD).await;
    let req = AuthRequest::new(&shop);
    let code = mallory.code_for(&base, &req, false).await;
    let (status, tokens) =
        redeem(cluster.http(), &base, &shop, &code, req.verifier.as_deref()).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let malloys_hint = tokens["id_token"].as_str().expect("id token").to_string();

    for (i, query) in [
        String::new(),
        "?client_id=shop".to_string(),
        format!("?id_token_hint={malloys_hint}"),
    ]
    .iter()
    .enumerate()
    {
        let node = cluster.public_url(1 + i as u64);
        let page = victim.get(&format!("{node}/sso/logout{query}")).await;
        assert_eq!(page.status, StatusCode::OK, "{query}: {}", page.body);
        assert!(page.location().is_none(), "{query}: redirected");
        assert!(
            page.inputs().contains_key("csrf"),
            "{query}: no confirmation form"
        );
    }
    let forged = format!("{}.x", &malloys_hint[..malloys_hint.len() - 2]);
    let page = victim
        .get(&format!("{base}/sso/logout?id_token_hint={forged}"))
        .await;
    assert_eq!(page.status, StatusCode::BAD_REQUEST, "{}", page.body);
    for id in cluster.ids() {
        assert_eq!(
            signed_in_as(&cluster, id, &cookies).await.as_deref(),
            Some("alice"),
            "node {id}: the session ended without the user's word"
        );
    }
    // Confirming signs out.
    let page = victim.get(&format!("{base}/sso/logout")).await;
    let fields: Vec<(String, String)> = page.inputs().into_iter().collect();
    let done = victim
        .post_form(&format!("{base}/sso/logout"), &fields)
        .await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.body);
    for id in cluster.ids() {
        poll_until(
            Duration::from_secs(5),
            &format!("node {id} ends alice's session"),
            || async {
                signed_in_as(&cluster, id, &cookies)
                    .await
                    .is_none()
                    .then_some(())
            },
        )
        .await;
    }
    cluster.assert_no_panics();
}

/// The session cookie's value in `answer`'s `Set-Cookie`, if it sets one.
fn session_set(answer: &Answer) -> Option<String> {
    answer.headers.get_all(SET_COOKIE).iter().find_map(|v| {
        let v = v.to_str().ok()?;
        let first = v.split(';').next()?;
        let (name, value) = first.split_once('=')?;
        (name == SESSION_COOKIE && !value.is_empty()).then(|| value.to_string())
    })
}

/// OWASP ASVS 5.0 V7.2.4 (a new session token on authentication), CWE-384
/// (session fixation). A session cookie planted in the victim's browser
/// before sign-in — made up, or the attacker's own valid session — is never
/// what the victim's sign-in makes: the sign-in sets a fresh value, which
/// names the victim, and the attacker's planted session is ended, never
/// upgraded. Signing in again with a session also gets a fresh value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_never_adopts_a_planted_session_cookie() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    create_user(&cluster, "mallory", PASSWORD).await;
    let base = cluster.public_url(1);
    let mut mallory = Agent::new(&cluster);
    mallory.sign_in_ok(&base, "mallory", PASSWORD).await;
    let mallorys = mallory.sso_cookies().expect("mallory's cookies");

    let made_up = SsoCookies {
        session: "A".repeat(43),
        reference: mallorys.reference.clone(),
    };
    for (what, planted) in [
        ("a made-up value", &made_up),
        ("the attacker's session", &mallorys),
    ] {
        let mut victim = Agent::new(&cluster);
        victim.set_sso_cookies(planted);
        let signed_in = victim
            .sign_in_ok(&cluster.public_url(2), "alice", PASSWORD)
            .await;
        let fresh =
            session_set(&signed_in).unwrap_or_else(|| panic!("{what}: no new session cookie"));
        assert_ne!(fresh, planted.session, "{what}: the planted value was kept");
        let now = victim.sso_cookies().expect("victim cookies");
        assert_eq!(
            signed_in_as(&cluster, 3, &now).await.as_deref(),
            Some("alice"),
            "{what}"
        );
    }
    assert_eq!(
        signed_in_as(&cluster, 3, &mallorys).await.as_deref(),
        None,
        "the attacker's planted session lives on (or became someone else's)"
    );
    assert_eq!(signed_in_as(&cluster, 3, &made_up).await, None);

    // Signing in again (re-authentication) gets a new value too.
    let mut alice = Agent::new(&cluster);
    alice.sign_in_ok(&base, "alice", PASSWORD).await;
    let first = alice.sso_cookies().expect("first session");
    let again = alice.sign_in_ok(&base, "alice", PASSWORD).await;
    let second = session_set(&again).expect("a session cookie on re-authentication");
    assert_ne!(
        second, first.session,
        "re-authentication kept the session value"
    );
    cluster.assert_no_panics();
}

/// OWASP ASVS 5.0 V7.2.4 ("… and terminates the current session token").
/// Signing in again in a browser that holds a session replaces it: the old
/// cookie is refused on every node, the new one names the user. (The
/// previous session's app tokens move to the new one when the user is the
/// same — state machine test `a_sign_in_over_a_session_replaces_it_…`;
/// another user's sign-in ends them, see the fixation test above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_authentication_ends_the_previous_session() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let base = cluster.public_url(1);
    let mut alice = Agent::new(&cluster);
    alice.sign_in_ok(&base, "alice", PASSWORD).await;
    let first = alice.sso_cookies().expect("first session");
    alice.sign_in_ok(&base, "alice", PASSWORD).await;
    let second = alice.sso_cookies().expect("second session");
    assert_ne!(second.session, first.session);
    for id in cluster.ids() {
        poll_until(
            Duration::from_secs(20),
            &format!("node {id} ends the session re-authentication replaced"),
            || async {
                signed_in_as(&cluster, id, &first)
                    .await
                    .is_none()
                    .then_some(())
            },
        )
        .await;
        assert_eq!(
            signed_in_as(&cluster, id, &second).await.as_deref(),
            Some("alice"),
            "node {id}"
        );
    }
    cluster.assert_no_panics();
}

/// Checks one `Set-Cookie` line against the cookie rules; the problems.
fn cookie_problems(line: &str) -> Vec<&'static str> {
    let lower = line.to_ascii_lowercase();
    let attrs: Vec<&str> = lower.split(';').skip(1).map(str::trim).collect();
    let has = |a: &str| attrs.contains(&a);
    let starts = |a: &str| attrs.iter().any(|x| x.starts_with(a));
    let mut out = Vec::new();
    let host = line.starts_with("__Host-");
    if !host && !line.starts_with("__Secure-") {
        out.push("no __Host- or __Secure- prefix");
    }
    if !has("secure") {
        out.push("not Secure");
    }
    if !has("httponly") {
        out.push("not HttpOnly");
    }
    if !(has("samesite=lax") || has("samesite=strict")) {
        out.push("SameSite is not Lax or Strict");
    }
    if host && (starts("domain=") || !has("path=/")) {
        out.push("__Host- with a Domain or without Path=/");
    }
    out
}

/// RFC 6265bis §4.1.3 (cookie prefixes), OWASP ASVS 5.0 V3.3.1–V3.3.4.
/// Every cookie the agency sets — on the sign-in page, at sign-in, on the
/// trust, form_post, device and sign-out pages, at sign-out, at a
/// forward-auth app's start — is `Secure`, `HttpOnly`, `SameSite=Lax` (or
/// `Strict`) and prefixed: `__Host-` (host-only, `Path=/`) unless it is
/// the shared-domain reference, which is `__Secure-`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cookie_is_secure_http_only_same_site_and_prefixed() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let base = cluster.public_url(1);
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut keep = |what: &str, answer: &Answer| {
        for v in answer.headers.get_all(SET_COOKIE) {
            lines.push((what.to_string(), v.to_str().unwrap_or_default().to_string()));
        }
    };
    let mut agent = Agent::new(&cluster);
    let page = agent.get(&format!("{base}/sso/signin")).await;
    keep("sign-in page", &page);
    let failed = agent.sign_in(&base, "alice", "wrong").await;
    keep("failed sign-in", &failed);
    let signed_in = agent.sign_in_ok(&base, "alice", PASSWORD).await;
    keep("sign-in", &signed_in);
    let mut fresh = Agent::new(&cluster);
    fresh.set_sso_cookies(&agent.sso_cookies().expect("cookies"));
    let trust = fresh.get(&AuthRequest::new(&shop).url(&base)).await;
    keep("trust page", &trust);
    let posted = fresh.approve(&base, &trust, "username", false, false).await;
    keep("form_post page", &posted);
    let device = fresh.get(&format!("{base}/device")).await;
    keep("device page", &device);
    let confirm = fresh.get(&format!("{base}/sso/logout")).await;
    keep("sign-out page", &confirm);
    let fields: Vec<(String, String)> = confirm.inputs().into_iter().collect();
    let out = fresh
        .post_form(&format!("{base}/sso/logout"), &fields)
        .await;
    keep("sign-out", &out);
    let start = Agent::new(&cluster)
        .get(&format!("{base}/auth/app/tools/start?rd=/"))
        .await;
    keep("forward-auth start", &start);

    let names: std::collections::BTreeSet<String> = lines
        .iter()
        .filter_map(|(_, l)| l.split('=').next().map(String::from))
        .collect();
    println!("cookies seen: {names:?}");
    assert!(names.len() >= 4, "too few cookies seen: {names:?}");
    for (what, line) in &lines {
        let problems = cookie_problems(line);
        assert!(problems.is_empty(), "{what}: {line}: {problems:?}");
    }
    cluster.assert_no_panics();
}

/// The page's body with what differs per response blanked: the CSP nonce,
/// the CSRF token, and what the user typed.
fn normalised(body: &str, typed: &str, csrf: &str) -> String {
    let mut out = String::new();
    for (i, part) in body.split("nonce=\"").enumerate() {
        if i == 0 {
            out.push_str(part);
        } else {
            out.push_str("nonce=\"N");
            out.push_str(&part[part.find('"').unwrap_or(0)..]);
        }
    }
    out.replace(csrf, "CSRF").replace(typed, "TYPED")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// OWASP ASVS 5.0 V6.3.8, CWE-204 (observable response discrepancy) and
/// CWE-208 (timing). At a partner site's sign-in (the page that names the
/// site and carries its request), an unknown account and a wrong password
/// get the same status, the same page apart from the per-response nonce,
/// token and the name typed, the same headers, and comparable time (the
/// median of eight of each: an unknown name is not answered faster, which
/// would tell that no password hash was checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_accounts_and_wrong_passwords_look_the_same() {
    let cluster = Cluster::start(3).await;
    const N: usize = 8;
    for i in 0..N {
        create_user(&cluster, &format!("user{i}"), PASSWORD).await;
    }
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    let page = agent.get(&AuthRequest::new(&shop).url(&base)).await;
    let hidden: Vec<(String, String)> = page
        .inputs()
        .into_iter()
        .filter(|(k, _)| k != "username" && k != "password")
        .collect();
    let csrf = page.inputs().get("csrf").cloned().expect("csrf");
    let attempt = |agent: &mut Agent, name: String| {
        let mut fields = hidden.clone();
        fields.push(("username".into(), name));
        fields.push(("password".into(), "not the password".into()));
        let url = format!("{base}/sso/signin");
        let mut agent = agent.clone();
        async move {
            let t = Instant::now();
            let answer = agent.post_form(&url, &fields).await;
            (answer, t.elapsed())
        }
    };
    let (mut known_times, mut unknown_times) = (Vec::new(), Vec::new());
    let mut reference: Option<(StatusCode, String, Vec<String>)> = None;
    for i in 0..N {
        for (known, name) in [(true, format!("user{i}")), (false, format!("nouser{i}"))] {
            let (answer, took) = attempt(&mut agent, name.clone()).await;
            let mut header_names: Vec<String> = answer
                .headers
                .keys()
                .map(|k| k.as_str().to_string())
                .filter(|k| k != "date" && k != "x-request-id")
                .collect();
            header_names.sort();
            let seen = (
                answer.status,
                normalised(&answer.body, &name, &csrf),
                header_names,
            );
            match &reference {
                None => reference = Some(seen),
                Some(r) => assert_eq!(r, &seen, "{name} was answered differently"),
            }
            if known {
                known_times.push(took);
            } else {
                unknown_times.push(took);
            }
        }
    }
    let (status, _, _) = reference.expect("answers");
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (known, unknown) = (median(known_times), median(unknown_times));
    println!("median answer: wrong password {known:?}, unknown account {unknown:?}");
    assert!(
        unknown * 2 >= known && known * 2 >= unknown,
        "wrong password {known:?} vs unknown account {unknown:?}: the difference tells"
    );
    cluster.assert_no_panics();
}

/// Asserts an HTML answer cannot be framed and carries its CSP.
fn assert_unframeable(what: &str, answer: &Answer) {
    let h = |n: &str| {
        answer
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let csp = h("content-security-policy");
    assert!(
        csp.contains("frame-ancestors 'none'"),
        "{what}: CSP {csp:?}"
    );
    assert!(csp.contains("default-src 'none'"), "{what}: CSP {csp:?}");
    assert!(csp.contains("base-uri 'none'"), "{what}: CSP {csp:?}");
    assert_eq!(h("x-frame-options"), "DENY", "{what}");
    assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(h("cache-control"), "no-store", "{what}");
}

/// RFC 9700 §4.16 (clickjacking), OWASP ASVS 5.0 V3.4.3 and V3.4.6. Every
/// HTML page the agency serves — sign-in (fresh, failed, locked out of a
/// forward-auth app), error pages, trust, form_post, device entry and
/// confirmation, sign-out confirmation and signed-out — forbids framing
/// (`frame-ancestors 'none'` and `X-Frame-Options: DENY`) and has a strict
/// CSP (`default-src 'none'`, `base-uri 'none'`); none is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_html_page_forbids_framing() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest:9443/cb").await;
    let cli = add_cli_client(&cluster).await;
    let base = cluster.public_url(1);
    let mut pages: Vec<(String, Answer)> = Vec::new();
    let mut anon = Agent::new(&cluster);
    for path in [
        "/".to_string(),
        "/sso/signin".to_string(),
        AuthRequest::new(&shop).url(""),
        AuthRequest::new(&shop)
            .set("redirect_uri", "https://evil.test/")
            .url(""),
        "/sso/authorize?client_id=nobody".to_string(),
        "/sso/authorize".to_string(),
        "/device".to_string(),
        "/sso/logout".to_string(),
        "/sso/logout?post_logout_redirect_uri=https://evil.test/".to_string(),
        "/auth/app/tools/grant?state=x".to_string(),
    ] {
        let answer = anon.get(&format!("{base}{path}")).await;
        pages.push((format!("GET {path} (anonymous)"), answer));
    }
    let failed = anon.sign_in(&base, "alice", "wrong").await;
    pages.push(("failed sign-in".into(), failed));
    let forged = Agent::new(&cluster)
        .post_form(&format!("{base}/sso/signin"), &[])
        .await;
    pages.push(("sign-in without CSRF".into(), forged));

    let mut agent = Agent::new(&cluster);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;
    let trust = agent.get(&AuthRequest::new(&shop).url(&base)).await;
    let posted = agent.approve(&base, &trust, "username", false, false).await;
    pages.push(("trust page".into(), trust));
    pages.push(("form_post page".into(), posted));
    let device = agent.get(&format!("{base}/device")).await;
    let csrf = device.inputs().get("csrf").cloned().expect("csrf");
    pages.push(("device entry page".into(), device));
    let wrong = agent
        .post_form(
            &format!("{base}/device"),
            &[
                ("csrf".into(), csrf.clone()),
                ("user_code".into(), "BCDFGHJK".into()),
            ],
        )
        .await;
    pages.push(("device page, wrong code".into(), wrong));
    let started: serde_json::Value = cluster
        .http()
        .post(format!("{base}/sso/device_authorization"))
        .form(&[("client_id", cli.client_id.as_str()), ("scope", "openid")])
        .send()
        .await
        .expect("device authorization")
        .json()
        .await
        .expect("JSON");
    let code = started["user_code"].as_str().expect("user code");
    let confirm = agent.get(&format!("{base}/device?user_code={code}")).await;
    pages.push(("device confirmation".into(), confirm));
    let decided = agent
        .post_form(
            &format!("{base}/device/decide"),
            &[
                ("csrf".into(), csrf),
                ("user_code".into(), code.into()),
                ("decision".into(), "deny".into()),
            ],
        )
        .await;
    pages.push(("device decided".into(), decided));
    let confirm = agent.get(&format!("{base}/sso/logout")).await;
    let fields: Vec<(String, String)> = confirm.inputs().into_iter().collect();
    pages.push(("sign-out confirmation".into(), confirm));
    let out = agent
        .post_form(&format!("{base}/sso/logout"), &fields)
        .await;
    pages.push(("signed out".into(), out));

    let mut html = 0;
    for (what, answer) in &pages {
        let ct = answer
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if ct.starts_with("text/html") {
            assert_unframeable(what, answer);
            html += 1;
        } else {
            // Not a page: nothing a browser would render as one.
            assert!(
                !answer.body.trim_start().starts_with('<'),
                "{what}: {ct:?} looks like HTML: {}",
                answer.body
            );
        }
    }
    println!("{html} HTML pages of {} answers checked", pages.len());
    assert!(html >= 14, "only {html} HTML pages seen");
    cluster.assert_no_panics();
}

/// RFC 8628 §5.1 (user code brute forcing). Guessing user codes at the
/// device page's entry form is throttled per source: past the limit the
/// answer is 429, even for the right code (the guesser learns nothing more);
/// a person at another address is not locked out by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_user_code_guessing_is_throttled_at_the_entry_form() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let cli = add_cli_client(&cluster).await;
    let base = cluster.public_url(1);
    let started: serde_json::Value = cluster
        .http()
        .post(format!("{base}/sso/device_authorization"))
        .form(&[("client_id", cli.client_id.as_str()), ("scope", "openid")])
        .send()
        .await
        .expect("device authorization")
        .json()
        .await
        .expect("JSON");
    let real = started["user_code"]
        .as_str()
        .expect("user code")
        .to_string();
    let guesser_ip = "127.0.0.41".parse().ok();
    let mut guesser = Agent::from_address(&cluster, guesser_ip);
    guesser.sign_in_ok(&base, "alice", PASSWORD).await;
    let csrf = csrf_of(&mut guesser, &format!("{base}/device")).await;
    let letters = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut throttled_at = None;
    for i in 0..80usize {
        let code: String = (0..8)
            .map(|j| letters[(i * 11 + j * 7 + i / 5) % letters.len()] as char)
            .collect();
        if code == real.replace('-', "") {
            continue;
        }
        let node = cluster.public_url(1 + (i as u64 % 3));
        let answer = guesser
            .post_form(
                &format!("{node}/device"),
                &[("csrf".into(), csrf.clone()), ("user_code".into(), code)],
            )
            .await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            throttled_at = Some(i);
            break;
        }
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "guess {i}: {}",
            answer.body
        );
    }
    let at = throttled_at.expect("80 wrong user codes at /device and never a 429");
    println!("/device throttled after {at} wrong codes");
    let answer = guesser
        .post_form(
            &format!("{base}/device"),
            &[("csrf".into(), csrf), ("user_code".into(), real.clone())],
        )
        .await;
    assert_eq!(
        answer.status,
        StatusCode::TOO_MANY_REQUESTS,
        "the right code got through while locked: {}",
        answer.body
    );
    // The user, elsewhere, confirms their code.
    let mut user = Agent::from_address(&cluster, "127.0.0.42".parse().ok());
    user.sign_in_ok(&base, "alice", PASSWORD).await;
    let csrf = csrf_of(&mut user, &format!("{base}/device")).await;
    let answer = user
        .post_form(
            &format!("{base}/device"),
            &[("csrf".into(), csrf), ("user_code".into(), real)],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(answer.body.contains("decision"), "{}", answer.body);
    cluster.assert_no_panics();
}

/// Asserts `answer` sends the browser nowhere outside the agency.
fn assert_stays(what: &str, answer: &Answer) {
    if let Some(to) = answer.location() {
        assert!(
            to.starts_with('/') && !to.starts_with("//") && !to.contains('\\'),
            "{what}: redirected to {to}"
        );
    }
    assert!(
        !answer.body.contains("evil.test"),
        "{what}: the page names the attacker's host: {}",
        answer.body
    );
}

/// RFC 9700 §4.11.2 (authorization server as open redirector), OpenID
/// Connect RP-Initiated Logout 1.0 §3 (`post_logout_redirect_uri` must be
/// registered), CWE-601. No endpoint that redirects sends a browser to a
/// host the attacker names: authorization errors with an unregistered (or
/// no) redirect URI or an unknown site, the trust form with an unregistered
/// one, sign-out with an unregistered post-logout URI (with and without a
/// site, by GET and by confirmed POST), sign-in's `continue`, federation's
/// `discover` with a host that is not a peer. An authorization error for a
/// registered URI goes exactly there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_redirecting_endpoint_is_an_open_redirect() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let shop = add_site(
        &cluster,
        json!({
            "client_id": "shop",
            "name": "Shop",
            "redirect_uris": ["https://shop.baa.localtest:9443/cb"],
            "post_logout_redirect_uris": ["https://shop.baa.localtest:9443/bye"],
        }),
    )
    .await;
    let base = cluster.public_url(1);
    let evil = "https://evil.test/";
    let mut anon = Agent::new(&cluster);
    for (what, url) in [
        (
            "authorize, unregistered URI, bad response_type",
            AuthRequest::new(&shop)
                .set("redirect_uri", evil)
                .set("response_type", "token")
                .url(&base),
        ),
        (
            "authorize, unregistered URI, prompt=none",
            AuthRequest::new(&shop)
                .set("redirect_uri", evil)
                .set("prompt", "none")
                .set("response_mode", "query")
                .url(&base),
        ),
        (
            "authorize, no redirect URI",
            AuthRequest::new(&shop).without("redirect_uri").url(&base),
        ),
        (
            "authorize, unknown site",
            AuthRequest::new(&shop)
                .set("client_id", "evil")
                .set("redirect_uri", evil)
                .url(&base),
        ),
        (
            "logout, unregistered URI of a site",
            format!("{base}/sso/logout?client_id=shop&post_logout_redirect_uri={evil}"),
        ),
        (
            "logout, a URI and no site",
            format!("{base}/sso/logout?post_logout_redirect_uri={evil}"),
        ),
        (
            "logout, a registered URI's look-alike",
            format!(
                "{base}/sso/logout?client_id=shop&post_logout_redirect_uri=https://shop.baa.localtest:9443/bye.evil.test"
            ),
        ),
        (
            "federation discover, not a peer",
            format!("{base}/federation/discover?peer=https://evil.test"),
        ),
    ] {
        let answer = anon.get(&url).await;
        assert_stays(what, &answer);
        assert!(answer.status.is_client_error(), "{what}: {}", answer.status);
    }
    // An authorization error for the registered URI goes there, exactly.
    let answer = anon
        .get(
            &AuthRequest::new(&shop)
                .set("response_type", "token")
                .set("response_mode", "query")
                .url(&base),
        )
        .await;
    let to = answer.location().expect("the error goes to the site");
    assert!(
        to.starts_with("https://shop.baa.localtest:9443/cb?"),
        "{to}"
    );
    assert_eq!(
        site_error(&answer).as_deref(),
        Some("unsupported_response_type")
    );

    // Signed in: the trust form, sign-out and sign-in's continuation.
    let mut agent = Agent::new(&cluster);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;
    let trust = agent.get(&AuthRequest::new(&shop).url(&base)).await;
    let mut fields: Vec<(String, String)> = trust
        .inputs()
        .into_iter()
        .filter(|(k, _)| k != "redirect_uri" && k != "decision")
        .collect();
    fields.push(("redirect_uri".into(), evil.into()));
    fields.push(("decision".into(), "approve".into()));
    let answer = agent
        .post_form(&format!("{base}/sso/consent"), &fields)
        .await;
    assert_stays("trust form, unregistered URI", &answer);
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    let confirm = agent.get(&format!("{base}/sso/logout")).await;
    let csrf = confirm.inputs().get("csrf").cloned().expect("csrf");
    let answer = agent
        .post_form(
            &format!("{base}/sso/logout"),
            &[
                ("csrf".into(), csrf.clone()),
                ("client_id".into(), "shop".into()),
                ("post_logout_redirect_uri".into(), evil.into()),
            ],
        )
        .await;
    assert_stays("confirmed sign-out, unregistered URI", &answer);
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    for target in [
        "//evil.test/",
        "https://evil.test/",
        "/\\evil.test/",
        "/device//evil.test",
        "/device/../\\evil.test",
        "\\\\evil.test",
        "javascript:alert(1)",
        "/device@evil.test",
    ] {
        let mut agent = Agent::new(&cluster);
        let csrf = csrf_of(&mut agent, &format!("{base}/sso/signin")).await;
        let answer = agent
            .post_form(
                &format!("{base}/sso/signin"),
                &[
                    ("csrf".into(), csrf),
                    ("username".into(), "alice".into()),
                    ("password".into(), PASSWORD.into()),
                    ("continue".into(), target.into()),
                ],
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::SEE_OTHER,
            "{target}: {}",
            answer.body
        );
        assert_stays(&format!("sign-in continue={target}"), &answer);
    }
    cluster.assert_no_panics();
}

/// The public port's POST endpoints and a form each would take.
fn post_endpoints() -> Vec<(&'static str, Vec<(&'static str, &'static str)>)> {
    vec![
        (
            "/sso/signin",
            vec![("username", "alice"), ("password", "x")],
        ),
        (
            "/sso/consent",
            vec![("client_id", "shop"), ("decision", "approve")],
        ),
        ("/sso/logout", vec![("client_id", "shop")]),
        ("/sso/authorize", vec![("client_id", "shop")]),
        (
            "/sso/token",
            vec![("grant_type", "authorization_code"), ("code", "x")],
        ),
        ("/sso/revoke", vec![("token", "x")]),
        ("/sso/introspect", vec![("token", "x")]),
        ("/sso/session_status", vec![("reference", "x")]),
        ("/sso/device_authorization", vec![("client_id", "baa-cli")]),
        ("/device", vec![("user_code", "BCDFGHJK")]),
        ("/device/decide", vec![("user_code", "BCDFGHJK")]),
        ("/federation/callback", vec![("code", "x"), ("state", "x")]),
        (
            "/federation/backchannel-logout",
            vec![("logout_token", "x")],
        ),
    ]
}

/// The error code of a JSON error answer.
async fn error_code(resp: reqwest::Response) -> (StatusCode, Option<String>) {
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    (status, body["error"].as_str().map(String::from))
}

/// RFC 9110 §15.5.14 (413 Content Too Large), RFC 6585 §5 (431), CWE-400,
/// CWE-770. Every POST endpoint of the public port answers a form over the
/// limit (64 KiB) — with its length declared, or sent chunked without
/// one — with 413 and a machine-readable code, without reading it all, and
/// nothing is written; an oversized request head (a 256 KiB cookie) is
/// refused with 431 (actix-web's own answer, no code) and the node goes on
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_input_is_413_with_a_code_and_changes_nothing() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    add_cli_client(&cluster).await;
    let base = cluster.public_url(2);
    let addr = cluster.node(2).public_addr();
    let tls = raw::tls_config(&cluster.ca_pem());
    let http = cluster.http().clone();
    let before = cluster.last_log_index().await;
    let big = "a".repeat(100 * 1024);
    for (path, fields) in post_endpoints() {
        let mut form: Vec<(&str, &str)> = fields.clone();
        form.push(("padding", big.as_str()));
        let resp = http
            .post(format!("{base}{path}"))
            .form(&form)
            .send()
            .await
            .expect("oversized form");
        let (status, code) = error_code(resp).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {code:?}");
        assert!(
            matches!(
                code.as_deref(),
                Some("payload_too_large" | "invalid_request")
            ),
            "{path}: {code:?}"
        );
        // Chunked, no length: refused once the limit is passed.
        let body = serde_urlencoded::to_string(&form).expect("form");
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: login.baa.localtest\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        for chunk in body.as_bytes().chunks(16 * 1024) {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let answer = raw::exchange(&tls, addr, &request, Duration::from_secs(10)).await;
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(raw::status_of(&answer), Some(413), "{path} chunked: {text}");
        assert!(
            text.contains("payload_too_large") || text.contains("invalid_request"),
            "{path} chunked: {text}"
        );
    }
    // A request head far over any sane size: refused, over HTTP/1.1 and
    // over whatever the client negotiates.
    let head = format!(
        "GET /sso/signin HTTP/1.1\r\nHost: login.baa.localtest\r\nCookie: x={}\r\n\r\n",
        "b".repeat(256 * 1024)
    );
    let answer = raw::exchange(&tls, addr, head.as_bytes(), Duration::from_secs(10)).await;
    let status = raw::status_of(&answer);
    println!("a 256 KiB head over HTTP/1.1: {status:?}");
    assert!(
        status.is_none_or(|s| (400..500).contains(&s)),
        "a 256 KiB head over HTTP/1.1: {status:?}"
    );
    let resp = http
        .get(format!("{base}/sso/signin"))
        .header(COOKIE, format!("x={}", "b".repeat(256 * 1024)))
        .send()
        .await;
    match resp {
        Ok(r) => {
            println!("a 256 KiB cookie ({:?}): {}", r.version(), r.status());
            assert!(
                r.status().is_client_error(),
                "a 256 KiB cookie: {}",
                r.status()
            );
        }
        Err(e) => println!("a 256 KiB cookie: connection refused ({e})"),
    }
    let ok = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(ok.status(), StatusCode::OK);
    let grew = cluster.last_log_index().await - before;
    assert_eq!(grew, 0, "oversized requests added {grew} log entries");
    cluster.assert_no_panics();
}

/// RFC 9110 §15.5.1 and §15.5.16, OWASP ASVS 5.0 V2.2.1 (positive input
/// validation). Malformed input to every POST endpoint — a body that is not
/// a form (JSON, or no content type), a field given twice — and malformed
/// queries get 400 (or 415) with a machine-readable code, never a 5xx, and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_refused_with_a_code_and_changes_nothing() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    add_cli_client(&cluster).await;
    let base = cluster.public_url(3);
    let http = cluster.http().clone();
    let before = cluster.last_log_index().await;
    let mut seen = Vec::new();
    for (path, fields) in post_endpoints() {
        let form = serde_urlencoded::to_string(&fields).expect("form");
        let twice = format!("{form}&{}", form.split('&').next().unwrap_or_default());
        for (what, content_type, body) in [
            (
                "JSON",
                Some("application/json"),
                json!({"a": 1}).to_string(),
            ),
            ("no content type", None, form.clone()),
            ("text/plain", Some("text/plain"), form.clone()),
            (
                "a field twice",
                Some("application/x-www-form-urlencoded"),
                twice,
            ),
        ] {
            let mut req = http.post(format!("{base}{path}")).body(body);
            if let Some(ct) = content_type {
                req = req.header(CONTENT_TYPE, ct);
            }
            let resp = req.send().await.expect("malformed request");
            let (status, code) = error_code(resp).await;
            seen.push(format!("{path} {what}: {status} {code:?}"));
            assert!(
                status == StatusCode::BAD_REQUEST
                    || status == StatusCode::UNSUPPORTED_MEDIA_TYPE
                    || (status == StatusCode::UNAUTHORIZED
                        && code.as_deref() == Some("invalid_client")),
                "{path} {what}: {status} {code:?}"
            );
            assert!(code.is_some(), "{path} {what}: {status} without a code");
        }
    }
    for query in [
        "/sso/authorize?client_id=a&client_id=b",
        "/sso/authorize?max_age=%FF",
        "/sso/logout?state=a&state=b",
        "/device?user_code=a&user_code=b",
        "/auth/verify?app=a&app=b",
        "/auth/app/tools/start?rd=a&rd=b",
        "/federation/discover",
    ] {
        let resp = http
            .get(format!("{base}{query}"))
            .send()
            .await
            .expect("malformed query");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        seen.push(format!("GET {query}: {status}"));
        assert!(status.is_client_error(), "{query}: {status}: {text}");
        assert!(
            text.contains("invalid_request") || text.contains("unknown_site"),
            "{query}: {status} without a code: {text}"
        );
    }
    println!("{}", seen.join("\n"));
    let grew = cluster.last_log_index().await - before;
    assert_eq!(grew, 0, "malformed requests added {grew} log entries");
    cluster.assert_no_panics();
}

/// Scheduling slack on a busy 2-core machine.
const SLACK: Duration = Duration::from_secs(4);

/// CVE-2007-6750 (Slowloris, Apache httpd), CWE-400. Forty connections
/// trickling a request head one byte a second, one that never starts TLS
/// and one that sends nothing after TLS, are each closed within the head
/// (or handshake) timeout of `http::deadline`; meanwhile other clients are
/// answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_and_others_are_served() {
    let cluster = Cluster::start(3).await;
    let addr = cluster.node(1).public_addr();
    let tls = raw::tls_config(&cluster.ca_pem());
    let head = b"GET /sso/signin HTTP/1.1\r\nHost: login.baa.localtest\r\n";
    let mut slow = Vec::new();
    for _ in 0..40 {
        let tls = tls.clone();
        slow.push(tokio::spawn(async move {
            raw::trickle(
                &tls,
                addr,
                head,
                b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
                Duration::from_secs(1),
                Duration::from_secs(30),
            )
            .await
        }));
    }
    let silent_tls = {
        let tls = tls.clone();
        tokio::spawn(async move {
            raw::trickle(
                &tls,
                addr,
                b"",
                b"",
                Duration::from_secs(60),
                Duration::from_secs(30),
            )
            .await
        })
    };
    let no_handshake = tokio::spawn(raw::silent_tcp(addr, Duration::from_secs(30)));
    // Others are served while the slow ones hang on.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let resp = cluster
            .http()
            .get(format!(
                "{}/.well-known/openid-configuration",
                cluster.public_url(1)
            ))
            .send()
            .await
            .expect("discovery while slow clients hang on");
        assert_eq!(resp.status(), StatusCode::OK);
        slowest = slowest.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("slowest answer to others meanwhile: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "others waited {slowest:?}"
    );
    let mut lived = Vec::new();
    for s in slow {
        let (ended, took) = s.await.expect("slow client");
        assert!(
            matches!(ended, Ended::Closed(_)),
            "a trickling head was still open after {took:?}"
        );
        if let Ended::Closed(answer) = &ended {
            if let Some(status) = raw::status_of(answer) {
                assert_eq!(status, 408, "{}", String::from_utf8_lossy(answer));
            }
        }
        lived.push(took);
    }
    let longest = lived.iter().max().copied().unwrap_or_default();
    println!("trickling heads closed after at most {longest:?}");
    assert!(
        longest <= HEAD_TIMEOUT + SLACK,
        "a trickling head lived {longest:?}"
    );
    let (ended, silent) = silent_tls.await.expect("silent client");
    assert!(
        matches!(ended, Ended::Closed(_)),
        "a silent TLS connection lived {silent:?}"
    );
    assert!(
        silent <= HEAD_TIMEOUT + SLACK,
        "a silent TLS connection lived {silent:?}"
    );
    let bare = no_handshake
        .await
        .expect("no-handshake client")
        .expect("a connection that never started TLS was never closed");
    println!("silent after TLS closed after {silent:?}; no handshake closed after {bare:?}");
    assert!(
        bare <= HANDSHAKE_TIMEOUT + SLACK,
        "no handshake, lived {bare:?}"
    );
    cluster.assert_no_panics();
}

/// CVE-2007-6750 (Slowloris; its slow-body variant, "R.U.D.Y."), CWE-400.
/// A form body declared long and sent one byte a second is cut off at the
/// body deadline of `http::deadline` with 408 and a code, and the
/// connection is closed. (Before that deadline existed, such a connection
/// stayed open as long as the client kept sending.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_bodies_are_cut() {
    let cluster = Cluster::start(3).await;
    let addr = cluster.node(1).public_addr();
    let tls = raw::tls_config(&cluster.ca_pem());
    let head = b"POST /sso/signin HTTP/1.1\r\nHost: login.baa.localtest\r\n\
        Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 10000\r\n\r\nusername=";
    let mut slow = Vec::new();
    for _ in 0..10 {
        let tls = tls.clone();
        slow.push(tokio::spawn(async move {
            raw::trickle(
                &tls,
                addr,
                head,
                b"a",
                Duration::from_secs(1),
                BODY_TIMEOUT + Duration::from_secs(20),
            )
            .await
        }));
    }
    for s in slow {
        let (ended, took) = s.await.expect("slow body");
        let Ended::Closed(answer) = ended else {
            panic!("a trickling body was still open after {took:?}");
        };
        println!(
            "trickling body closed after {took:?}: {:?}",
            raw::status_of(&answer)
        );
        assert!(
            took <= BODY_TIMEOUT + SLACK,
            "a trickling body lived {took:?}"
        );
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(raw::status_of(&answer), Some(408), "{text}");
        assert!(text.contains("\"error\""), "no code: {text}");
    }
    cluster.assert_no_panics();
}

/// Lines of a recorded request head named `name` (case-insensitive).
fn header_lines<'a>(head: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    head.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .collect()
}

/// RFC 9112 §5.2 (obs-fold) and §2.2 (bare CR), RFC 9110 §5.5 (CR, LF and
/// NUL in field values), OWASP ASVS 5.0 V4.2.4, CWE-113. Through the
/// gateway, a client cannot make the upstream see an identity header it
/// wrote: a header folded onto a second line, a bare CR or a NUL inside a
/// value are refused with 400; a header after a bare LF is a header of its
/// own and dropped like any client-sent `X-Baa-*`; duplicated
/// `X-Forwarded-*` and `X-Baa-*` headers reach the upstream as exactly one
/// line each, the gateway's; an encoded CR LF in the path stays encoded.
/// `/auth/verify` answers with the session's user, never a client's header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_injection_through_the_gateway_is_refused() {
    let upstream = Upstream::start().await;
    let mut opts = ClusterOptions::default();
    opts.gateway.push(cli_gateway_app(upstream.port));
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let cli = add_cli_client(&cluster).await;
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    agent.sign_in_ok(&base, "alice", PASSWORD).await;
    let req = cli_request(&cli).set("scope", "openid");
    let code = cli_code(&mut agent, &base, &req).await;
    let (status, tokens) = redeem(
        cluster.http(),
        &base,
        &cli_at_port(&cli),
        &code,
        req.verifier.as_deref(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let token = tokens["access_token"].as_str().expect("token").to_string();

    let addr = cluster.node(1).public_addr();
    let tls = raw::tls_config(&cluster.ca_pem());
    let request = |extra: &str| {
        format!(
            "GET /gw/app/hello HTTP/1.1\r\nHost: login.baa.localtest\r\n\
             Authorization: Bearer {token}\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    for (what, extra) in [
        ("obs-fold", "X-Note: a\r\n X-Baa-User: root\r\n"),
        (
            "obs-fold with a tab",
            "X-Forwarded-For: 10.0.0.1\r\n\tX-Baa-User: root\r\n",
        ),
        ("bare CR", "X-Note: a\rX-Baa-User: root\r\n"),
        ("NUL", "X-Note: a\0X-Baa-User: root\r\n"),
    ] {
        let answer = raw::exchange(
            &tls,
            addr,
            request(extra).as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(
            raw::status_of(&answer),
            Some(400),
            "{what}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let before = upstream.requests().len();
    assert_eq!(before, 0, "a refused request reached the upstream");
    let answer = raw::exchange(
        &tls,
        addr,
        request("X-Note: a\nX-Baa-User: root\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    let bare_lf = raw::status_of(&answer);
    assert!(
        matches!(bare_lf, Some(200) | Some(400)),
        "bare LF: {}",
        String::from_utf8_lossy(&answer)
    );

    // Duplicates of everything the gateway asserts, through a normal client.
    let resp = cluster
        .http()
        .get(format!("{base}/gw/app/hello%0D%0AX-Baa-User:%20root"))
        .bearer_auth(&token)
        .header("X-Baa-User", "root")
        .header("X-Baa-User", "admin")
        .header("X-Baa-Session", "forged")
        .header("X-Forwarded-For", "203.0.113.1")
        .header("X-Forwarded-For", "203.0.113.2")
        .header("X-Forwarded-Host", "evil.test")
        .header("X-Forwarded-Host", "evil2.test")
        .header("X-Forwarded-Proto", "http")
        .header("X-Forwarded-Prefix", "/evil")
        .header("Forwarded", "for=203.0.113.3;host=evil.test")
        .send()
        .await
        .expect("gateway");
    assert_eq!(resp.status(), StatusCode::OK);
    let heads = upstream.requests();
    assert!(!heads.is_empty(), "nothing reached the upstream");
    for head in &heads {
        let request_line = head.lines().next().unwrap_or_default();
        assert!(
            !request_line.contains('\r') && !head.contains("\nX-Baa-User: root"),
            "{head}"
        );
        for name in [
            "x-baa-user",
            "x-baa-session",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-forwarded-prefix",
        ] {
            let lines = header_lines(head, name);
            assert!(lines.len() <= 1, "{name} {} times: {head}", lines.len());
        }
        assert_eq!(
            header_lines(head, "x-baa-user"),
            vec!["x-baa-user: alice"],
            "{head}"
        );
        assert_eq!(
            header_lines(head, "forwarded"),
            Vec::<&str>::new(),
            "{head}"
        );
        let proto = header_lines(head, "x-forwarded-proto");
        assert_eq!(proto, vec!["x-forwarded-proto: https"], "{head}");
        for l in header_lines(head, "x-forwarded-host") {
            assert!(!l.contains("evil"), "{head}");
        }
    }
    println!(
        "upstream saw {} requests; the last:\n{}",
        heads.len(),
        heads[heads.len() - 1]
    );

    // Forward-auth: the user is the session's, whatever the client wrote.
    let resp = cluster
        .http()
        .get(format!("{base}/auth/verify?app=tools"))
        .bearer_auth(&token)
        .header("X-Baa-User", "root")
        .send()
        .await
        .expect("verify");
    assert_eq!(resp.status(), StatusCode::OK);
    let users: Vec<&str> = resp
        .headers()
        .get_all("x-baa-user")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(users, vec!["alice"]);
    let resp = cluster
        .http()
        .get(format!("{base}/auth/verify?app=tools"))
        .bearer_auth("made-up-token")
        .header("X-Baa-User", "root")
        .send()
        .await
        .expect("verify");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().get("x-baa-user").is_none());
    cluster.assert_no_panics();
}
