//! The attack cases of the review (ATTACKS.md), one named test each (the
//! case id leads the name), tried against a real cluster as an attacker
//! would. C1 lives with the other cluster-port checks in `cluster_port.rs`.

use baa_cluster_tests::sso::{
    add_confidential_site, create_user, query_params, Agent, AuthRequest, CSRF_COOKIE,
};
use baa_cluster_tests::Cluster;
use reqwest::header::SET_COOKIE;
use reqwest::StatusCode;

const PASSWORD: &str = "correct horse battery";

/// H5: a cookie whose name only decodes or trims to the CSRF cookie's name
/// (which a sibling host under the shared domain can set) is not the CSRF
/// cookie: a form carrying its value is refused and nothing happens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h5_csrf_cookie_names_are_matched_exactly() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let base = cluster.public_url(1);
    let forged = "A".repeat(43);
    for name in [
        CSRF_COOKIE.replace("__", "%5F%5F"),
        format!("\u{2000}{CSRF_COOKIE}"),
        format!("{CSRF_COOKIE}\u{2000}"),
        CSRF_COOKIE.replace('-', "%2D"),
    ] {
        let mut agent = Agent::new(&cluster);
        agent.cookies.insert(name.clone(), forged.clone());
        let answer = agent
            .post_form(
                &format!("{base}/sso/signin"),
                &[
                    ("csrf".into(), forged.clone()),
                    ("username".into(), "alice".into()),
                    ("password".into(), PASSWORD.into()),
                ],
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "a cookie named {name:?} was taken for the CSRF cookie: {}",
            answer.body
        );
        assert!(answer.body.contains("csrf_mismatch"), "{}", answer.body);
        assert!(
            !agent.has_session_cookie(),
            "a forged sign-in made a session"
        );
    }
    // The real cookie still works.
    let mut agent = Agent::new(&cluster);
    let signed_in = agent.sign_in(&base, "alice", PASSWORD).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    cluster.assert_no_panics();
}

/// H4: everything a sibling host under the shared cookie domain receives
/// (every cookie the agency sets with `Domain=`) opens nothing: replayed
/// alone it passes no forward-auth check and signs no one in at a site.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h4_shared_domain_cookies_open_nothing() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let site = add_confidential_site(&cluster, "shop", "https://shop.baa.localtest/cb").await;
    let base = cluster.public_url(1);
    let mut user = Agent::new(&cluster);
    let signed_in = user.sign_in(&base, "alice", PASSWORD).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    // The victim's session works: the site gets as far as the trust question.
    let own = user
        .get(
            &AuthRequest::new(&site)
                .set("response_mode", "query")
                .set("prompt", "none")
                .url(&base),
        )
        .await;
    let own = query_params(&own.location().unwrap_or_default());
    assert_eq!(
        own.get("error").map(String::as_str),
        Some("consent_required")
    );

    let mut thief = Agent::new(&cluster);
    for v in signed_in.headers.get_all(SET_COOKIE) {
        let v = v.to_str().unwrap();
        if v.to_ascii_lowercase().contains("domain=") {
            let (name, value) = v.split(';').next().unwrap().split_once('=').unwrap();
            thief.cookies.insert(name.to_string(), value.to_string());
        }
    }
    assert!(!thief.cookies.is_empty(), "no shared-domain cookie was set");
    for node in 1..=3 {
        let base = cluster.public_url(node);
        let verify = thief.get(&format!("{base}/auth/verify")).await;
        assert_eq!(
            verify.status,
            StatusCode::UNAUTHORIZED,
            "node {node}: shared-domain cookies {:?} passed /auth/verify",
            thief.cookies.keys()
        );
        let silent = thief
            .get(
                &AuthRequest::new(&site)
                    .set("response_mode", "query")
                    .set("prompt", "none")
                    .url(&base),
            )
            .await;
        let silent = query_params(&silent.location().unwrap_or_default());
        assert_eq!(
            silent.get("error").map(String::as_str),
            Some("login_required"),
            "node {node}: shared-domain cookies were taken for a session: {silent:?}"
        );
    }
    cluster.assert_no_panics();
}

/// M1: guessing user codes at `/device/decide` is throttled like at
/// `/device`: past the per-source limit (50 by default) the answer is 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn m1_device_decisions_are_throttled() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, "alice", PASSWORD).await;
    let base = cluster.public_url(1);
    let mut agent = Agent::new(&cluster);
    let signed_in = agent.sign_in(&base, "alice", PASSWORD).await;
    assert_eq!(
        signed_in.status,
        StatusCode::SEE_OTHER,
        "{}",
        signed_in.body
    );
    let page = agent.get(&format!("{base}/device")).await;
    let csrf = page
        .inputs()
        .get("csrf")
        .cloned()
        .expect("csrf on the device page");
    let letters = b"BCDFGHJKLMNPQRSTVWXZ";
    let mut throttled_at = None;
    for i in 0..60usize {
        let code: String = (0..8)
            .map(|j| letters[(i * 7 + j * 13 + i / 3) % letters.len()] as char)
            .collect();
        let answer = agent
            .post_form(
                &format!("{base}/device/decide"),
                &[
                    ("csrf".into(), csrf.clone()),
                    ("user_code".into(), code),
                    ("decision".into(), "approve".into()),
                ],
            )
            .await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            throttled_at = Some(i);
            break;
        }
        assert_ne!(answer.status, StatusCode::OK, "wrong code {i} accepted");
    }
    let at = throttled_at.expect("60 wrong codes at /device/decide and never a 429");
    println!("/device/decide throttled after {at} wrong codes");
    cluster.assert_no_panics();
}
