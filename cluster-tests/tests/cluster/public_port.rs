//! Acceptance 7: the admin API (on the management listener) answers bad
//! requests with the documented JSON errors.

use baa_cluster_tests::Cluster;
use baa_proto::ErrorCode;
use reqwest::{Method, StatusCode};

use super::support::expect_error;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_port_errors_are_json_with_stable_codes() {
    let cluster = Cluster::start(3).await;
    for id in [1, 2, 3] {
        let admin = cluster.admin(id);
        let users = "/admin/v1/users";

        expect_error(
            "unknown route",
            admin.request(Method::GET, "/no/such/route"),
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
        )
        .await;
        expect_error(
            "malformed JSON",
            admin
                .request(Method::POST, users)
                .header("content-type", "application/json")
                .body("{\"username\": \"x\""),
            StatusCode::BAD_REQUEST,
            ErrorCode::MalformedJson,
        )
        .await;
        expect_error(
            "wrong content type",
            admin
                .request(Method::POST, users)
                .header("content-type", "text/plain")
                .body("{\"username\":\"textplain\"}"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::UnsupportedMediaType,
        )
        .await;
        let big = format!(
            "{{\"username\":\"big\",\"display_name\":\"{}\"}}",
            "a".repeat(1024 * 1024 + 16)
        );
        expect_error(
            "body over 1 MiB",
            admin
                .request(Method::POST, users)
                .header("content-type", "application/json")
                .body(big),
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
        )
        .await;
        let anonymous = cluster
            .http()
            .get(format!("{}{users}", cluster.manage_url(id)));
        expect_error(
            "no token",
            anonymous,
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
        )
        .await;
        let wrong = admin.with_token("not-the-admin-token-0123456789");
        expect_error(
            "wrong token",
            wrong.request(Method::GET, users),
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
        )
        .await;
        expect_error(
            "wrong token on a write",
            wrong
                .request(Method::POST, users)
                .json(&serde_json::json!({"username": "intruder"})),
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
        )
        .await;
    }
    // None of the refused requests created anything.
    let list = cluster
        .admin(1)
        .list_users(baa_proto::command::Consistency::Linearizable)
        .await
        .expect("list users");
    for name in ["x", "textplain", "big", "intruder"] {
        assert!(
            list.users.iter().all(|u| u.username != name),
            "a refused request created {name}: {list:?}"
        );
    }
    cluster.assert_no_panics();
}
