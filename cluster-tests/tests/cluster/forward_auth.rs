//! Forward-auth apps on a 3-node cluster, as their reverse proxy would use
//! the agency: the browser's round trip start → grant → callback gives it a
//! host-only session on the app's host, `/auth/verify?app=` honours that
//! cookie only for its app and only while the agency session lives, and no
//! redirect leaves the app's origin. The proxy is played by the test: it
//! sends the app's `/.baa/…` to the agency's `/auth/app/<name>/…` and keeps
//! the app host's cookies apart from the agency's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use baa_cluster_tests::harness::{app_table, TOOLS_APP, TOOLS_ORIGIN};
use baa_cluster_tests::sso::{create_user, Agent, REFERENCE_COOKIE};
use baa_cluster_tests::{poll_until, Cluster, ClusterOptions};
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery";
const WIKI_ORIGIN: &str = "https://wiki.baa.localtest:8443";

/// What the agency answered, seen from the app's host.
struct Hop {
    status: StatusCode,
    location: Option<String>,
    /// `Set-Cookie` lines by cookie name.
    set: BTreeMap<String, String>,
    body: String,
}

/// GET `url` with exactly the cookies `cookies` (the app host's jar),
/// redirects not followed.
async fn hop(cluster: &Cluster, url: &str, cookies: &[(&str, &str)]) -> Hop {
    let mut req = Agent::new(cluster).http().get(url);
    if !cookies.is_empty() {
        let header: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        req = req.header(COOKIE, header.join("; "));
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = resp.status();
    let location = resp
        .headers()
        .get(LOCATION)
        .map(|l| l.to_str().unwrap().to_string());
    let set = resp
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| {
            let v = v.to_str().unwrap().to_string();
            (v.split('=').next().unwrap().to_string(), v)
        })
        .collect();
    Hop {
        status,
        location,
        set,
        body: resp.text().await.unwrap_or_default(),
    }
}

/// The value of a `Set-Cookie` line.
fn value(line: &str) -> String {
    line.split(';')
        .next()
        .and_then(|p| p.split_once('='))
        .map(|(_, v)| v.to_string())
        .unwrap()
}

/// Asserts a `Set-Cookie` line makes a host-only, secure, script-proof cookie.
fn assert_host_only(line: &str) {
    let lower = line.to_ascii_lowercase();
    assert!(lower.contains("; secure"), "{line}");
    assert!(lower.contains("; httponly"), "{line}");
    assert!(lower.contains("; path=/"), "{line}");
    assert!(!lower.contains("domain="), "{line}");
}

/// Node `id`'s URL for the path and query of `url`.
fn on_node(cluster: &Cluster, id: u64, url: &str) -> String {
    let u = url::Url::parse(url).unwrap();
    format!(
        "{}{}?{}",
        cluster.public_url(id),
        u.path(),
        u.query().unwrap_or_default()
    )
}

/// What the app's proxy does with its `/.baa/callback?…` URL: the agency's
/// callback of `app` on node `id`.
fn proxied_callback(cluster: &Cluster, id: u64, app: &str, callback: &str) -> String {
    let u = url::Url::parse(callback).unwrap();
    assert_eq!(u.path(), "/.baa/callback", "{callback}");
    format!(
        "{}/auth/app/{app}/callback?{}",
        cluster.public_url(id),
        u.query().unwrap_or_default()
    )
}

/// `/auth/verify?app=` on node `id` with exactly `cookies`: status and user.
async fn verify(
    cluster: &Cluster,
    id: u64,
    app: &str,
    cookies: &[(&str, &str)],
) -> (StatusCode, Option<String>) {
    let mut req = cluster
        .http()
        .get(format!("{}/auth/verify?app={app}", cluster.public_url(id)));
    if !cookies.is_empty() {
        let header: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        req = req.header(COOKIE, header.join("; "));
    }
    let resp = req.send().await.expect("verify");
    let user = resp
        .headers()
        .get("x-baa-user")
        .map(|v| v.to_str().unwrap().to_string());
    (resp.status(), user)
}

/// Starts a sign-in to the tools app on node 1: the state cookie's value
/// and the agency grant URL.
async fn start(cluster: &Cluster, rd: &str) -> (String, String) {
    let started = hop(
        cluster,
        &format!(
            "{}/auth/app/{TOOLS_APP}/start?rd={}",
            cluster.public_url(1),
            urlencode(rd)
        ),
        &[],
    )
    .await;
    assert_eq!(started.status, StatusCode::SEE_OTHER, "{}", started.body);
    let state = &started.set["__Host-baa_app_state"];
    assert_host_only(state);
    let grant = started.location.unwrap();
    assert!(
        grant.starts_with(&format!("{}/auth/app/{TOOLS_APP}/grant?", cluster.issuer())),
        "{grant}"
    );
    (value(state), grant)
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_reach_a_forward_auth_app_through_a_session_of_its_own() {
    let mut opts = ClusterOptions::default();
    opts.forward_auth
        .push(app_table("wiki", "origin", WIKI_ORIGIN, &[]));
    let cluster = Cluster::start_with(opts).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let base = cluster.public_url(1);

    // 1. The app's proxy found no session: /.baa/start on the app's host.
    let (nonce, grant) = start(&cluster, "/docs/page?x=1").await;

    // 2. At the agency, not yet signed in: the sign-in page, which continues
    // at the grant afterwards.
    let mut browser = Agent::new(&cluster);
    let page = browser.get(&on_node(&cluster, 2, &grant)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let mut fields: Vec<(String, String)> = page.inputs().into_iter().collect();
    fields.retain(|(k, _)| k != "username" && k != "password");
    fields.push(("username".into(), "alice".into()));
    fields.push(("password".into(), PASSWORD.into()));
    let signed_in = browser
        .post_form(&format!("{}/sso/signin", cluster.public_url(2)), &fields)
        .await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    let next = signed_in.location().unwrap();
    assert!(
        next.starts_with(&format!("/auth/app/{TOOLS_APP}/grant?")),
        "{next}"
    );
    // The browser may follow the sign-in form's redirects to the app.
    let page_csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(page_csp.contains(TOOLS_ORIGIN), "{page_csp}");

    // 3. Signed in: back to the app's callback with a code.
    let granted = browser
        .get(&format!("{}{next}", cluster.public_url(3)))
        .await;
    assert_eq!(granted.status, StatusCode::SEE_OTHER, "{}", granted.body);
    let callback = granted.location().unwrap();
    assert!(
        callback.starts_with(&format!("{TOOLS_ORIGIN}/.baa/callback?code=")),
        "{callback}"
    );

    // The code alone, another browser's state, or another app: refused.
    let state = ("__Host-baa_app_state", nonce.as_str());
    for (url, cookies, what) in [
        (
            proxied_callback(&cluster, 1, TOOLS_APP, &callback),
            vec![],
            "no state cookie",
        ),
        (
            proxied_callback(&cluster, 1, TOOLS_APP, &callback),
            vec![("__Host-baa_app_state", "A".repeat(43))],
            "another browser's state",
        ),
        (
            proxied_callback(&cluster, 1, "wiki", &callback),
            vec![("__Host-baa_app_state", nonce.clone())],
            "the code of another app",
        ),
    ] {
        let cookies: Vec<(&str, &str)> = cookies.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let refused = hop(&cluster, &url, &cookies).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            refused.body
        );
        assert!(
            refused.body.contains("invalid_grant"),
            "{what}: {}",
            refused.body
        );
        assert!(
            refused.set.is_empty(),
            "{what} set cookies: {:?}",
            refused.set
        );
    }

    // 4. The callback on the app's host (any node) sets the app's cookie.
    let landed = hop(
        &cluster,
        &proxied_callback(&cluster, 3, TOOLS_APP, &callback),
        &[state],
    )
    .await;
    assert_eq!(landed.status, StatusCode::SEE_OTHER, "{}", landed.body);
    assert_eq!(
        landed.location.as_deref(),
        Some(format!("{TOOLS_ORIGIN}/docs/page?x=1").as_str())
    );
    let app_line = &landed.set[&format!("__Host-baa_app_{TOOLS_APP}")];
    assert_host_only(app_line);
    assert!(
        landed.set["__Host-baa_app_state"].contains("Max-Age=0"),
        "{:?}",
        landed.set
    );
    let app_cookie = value(app_line);
    let app_jar = [(format!("__Host-baa_app_{TOOLS_APP}"), app_cookie.clone())];
    let app_jar: Vec<(&str, &str)> = app_jar
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    // 5. The proxy's check passes on every node, for this app only.
    for id in 1..=3 {
        assert_eq!(
            verify(&cluster, id, TOOLS_APP, &app_jar).await,
            (StatusCode::OK, Some("alice".into())),
            "node {id}"
        );
        let as_wiki = [("__Host-baa_app_wiki", app_cookie.as_str())];
        assert_eq!(
            verify(&cluster, id, "wiki", &as_wiki).await.0,
            StatusCode::UNAUTHORIZED,
            "node {id}: the tools cookie opened the wiki"
        );
    }
    // What the shared domain carries opens nothing on the app.
    let sso = browser.sso_cookies().unwrap();
    let reference = [(REFERENCE_COOKIE, sso.reference.as_str())];
    assert_eq!(
        verify(&cluster, 1, TOOLS_APP, &reference).await.0,
        StatusCode::UNAUTHORIZED
    );
    let unknown = verify(&cluster, 1, "nope", &app_jar).await;
    assert_eq!(unknown.0, StatusCode::NOT_FOUND);

    // No redirect leaves the app's origin.
    for rd in [
        "https://evil.baa.localtest/",
        "//evil.baa.localtest/x",
        "https://tools.baa.localtest.evil.test/",
        &format!("{WIKI_ORIGIN}/"),
    ] {
        let url = format!("{base}/auth/app/{TOOLS_APP}/start?rd={}", urlencode(rd));
        let refused = hop(&cluster, &url, &[]).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "rd {rd}: {:?}",
            refused.location
        );
        assert!(refused.body.contains("invalid_request"), "{}", refused.body);
        let forged = grant.replace(
            &urlencode("https://tools.baa.localtest/docs/page?x=1"),
            &urlencode(rd),
        );
        let refused = browser.get(&on_node(&cluster, 1, &forged)).await;
        assert_eq!(
            refused.status,
            StatusCode::BAD_REQUEST,
            "grant rd {rd}: {:?}",
            refused.location()
        );
    }

    // 6. Signing out at the agency ends the app's session on every node.
    let logout = browser.get(&format!("{base}/sso/logout")).await;
    let fields: Vec<(String, String)> = logout.inputs().into_iter().collect();
    let out = browser
        .post_form(&format!("{base}/sso/logout"), &fields)
        .await;
    assert_eq!(out.status, StatusCode::OK, "{}", out.body);
    let since = Instant::now();
    poll_until(
        Duration::from_secs(10),
        "app cookie refused everywhere",
        || {
            let cluster = &cluster;
            let app_jar = &app_jar;
            async move {
                for id in 1..=3 {
                    if verify(cluster, id, TOOLS_APP, app_jar).await.0 != StatusCode::UNAUTHORIZED {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let took = since.elapsed();
    println!("app cookie refused on every node {took:?} after sign-out");
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    // And a code minted before sign-out is no good either.
    let late = hop(
        &cluster,
        &proxied_callback(&cluster, 2, TOOLS_APP, &callback),
        &[state],
    )
    .await;
    assert_eq!(late.status, StatusCode::BAD_REQUEST, "{}", late.body);
    cluster.assert_no_panics();
}
