//! The attack cases of the review (ATTACKS.md), one named test each (the
//! case id leads the name), tried against a real cluster as an attacker
//! would. C1 lives with the other cluster-port checks in `cluster_port.rs`.

use baa_cluster_tests::sso::{create_user, Agent, CSRF_COOKIE, SSO_COOKIE};
use baa_cluster_tests::Cluster;
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
            !agent.cookies.contains_key(SSO_COOKIE),
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
