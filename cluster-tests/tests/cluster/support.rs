//! Small helpers shared by the tests.

use std::time::{Duration, Instant};

use baa_cluster_tests::harness::{random_token, CONVERGE_DEADLINE};
use baa_cluster_tests::load::{Load, Writer, WriterReport};
use baa_cluster_tests::{poll_until, AdminClient, Cluster};
use baa_proto::api::CreateUserRequest;
use baa_proto::api::ErrorBody;
use baa_proto::command::Consistency;
use baa_proto::model::NodeId;
use baa_proto::ErrorCode;
use reqwest::{RequestBuilder, Response, StatusCode};

/// Creates user `name` through node `via` (retrying while there is no leader).
pub async fn create_user(cluster: &Cluster, via: NodeId, name: &str) {
    create_user_through(&cluster.admin(via), name).await
}

/// Creates user `name` (no password) through `admin`, retrying while there
/// is no leader.
pub async fn create_user_through(admin: &AdminClient, name: &str) {
    let req = CreateUserRequest {
        username: name.into(),
        ..Default::default()
    };
    let rid = format!("create-{name}-{}", random_token(8));
    poll_until(
        CONVERGE_DEADLINE,
        &format!("creating user {name} via node {}", admin.node()),
        || async {
            match admin.create_user(&req, Some(&rid)).await {
                Ok(v) => Some(v),
                Err(e) if e.is_retryable() => None,
                Err(e) => panic!("creating {name}: {e}"),
            }
        },
    )
    .await;
}

/// Starts one writer per user, each rotating over `targets` from a different start.
pub fn start_writers(
    cluster: &Cluster,
    users: &[String],
    targets: &[NodeId],
    run_for: Duration,
) -> Load {
    let run_id = random_token(8);
    let deadline = Instant::now() + run_for;
    let writers = users
        .iter()
        .enumerate()
        .map(|(c, user)| {
            let mut order: Vec<NodeId> = targets.to_vec();
            order.rotate_left(c % targets.len());
            Writer {
                user: user.clone(),
                targets: order.iter().map(|&id| cluster.admin(id)).collect(),
                run_id: run_id.clone(),
                deadline,
                retry_pause: Duration::from_millis(100),
            }
        })
        .collect();
    Load::start(writers)
}

/// Waits until the writers have `n` more acknowledgements than now.
pub async fn wait_acks(load: &Load, n: u64, what: &str) {
    let start = load.acks();
    poll_until(CONVERGE_DEADLINE, what, || async {
        (load.acks() >= start + n).then_some(())
    })
    .await;
}

/// Asserts no writer hit a fatal error and each got at least one acknowledgement.
pub fn assert_writers_ok(reports: &[WriterReport]) {
    for r in reports {
        assert!(r.fatal.is_none(), "writer {} failed: {:?}", r.user, r.fatal);
        assert!(
            !r.acked.is_empty(),
            "writer {} never got an acknowledgement",
            r.user
        );
    }
}

/// [`assert_writers_ok`], and no writer stopped with a write neither
/// acknowledged nor cleanly given up.
pub fn assert_writers_resolved(reports: &[WriterReport]) {
    assert_writers_ok(reports);
    for r in reports {
        assert!(
            r.unresolved.is_none(),
            "writer {} left write {:?} unresolved",
            r.user,
            r.unresolved
        );
    }
}

/// On every node of `nodes` (local reads), every writer's user satisfies `WriterReport::verify`.
pub async fn verify_reports_on(cluster: &Cluster, nodes: &[NodeId], reports: &[WriterReport]) {
    for &id in nodes {
        let admin = cluster.admin(id);
        for r in reports {
            let view = admin
                .get_user(&r.user, Consistency::Local)
                .await
                .unwrap_or_else(|e| panic!("reading {} on node {id}: {e}", r.user));
            if let Err(msg) = r.verify(&view) {
                panic!(
                    "node {id}: {msg}\nacked: {:?}\nview: {view:?}",
                    r.acked.iter().map(|a| a.seq).collect::<Vec<_>>()
                );
            }
        }
    }
}

/// `/healthz` answers 200 and a write through node `id` is acknowledged.
pub async fn assert_node_serves(cluster: &Cluster, id: NodeId, user: &str, key: &str) {
    let admin = cluster.admin(id);
    assert_eq!(
        admin.healthz().await.expect("healthz"),
        StatusCode::OK,
        "node {id} /healthz"
    );
    let view = admin
        .set_attribute(
            user,
            key,
            "ok",
            Some(&format!("check-{}", random_token(12))),
        )
        .await
        .unwrap_or_else(|e| panic!("write through node {id} after {key}: {e}"));
    assert_eq!(view.attributes.get(key).map(String::as_str), Some("ok"));
}

/// Sends `rb` and asserts the answer is `status` with an `ErrorBody` of `code`
/// and a message.
pub async fn expect_error(what: &str, rb: RequestBuilder, status: StatusCode, code: ErrorCode) {
    let resp = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    assert_error(what, resp, status, code).await
}

/// Asserts `resp` is `status` with an `ErrorBody` of `code` and a message.
pub async fn assert_error(what: &str, resp: Response, status: StatusCode, code: ErrorCode) {
    let got = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "{what}: body {text}");
    let body: ErrorBody = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: not an ErrorBody ({e}): {text}"));
    assert_eq!(body.error, code, "{what}: {text}");
    assert!(
        !body.error_description.is_empty(),
        "{what}: empty error_description"
    );
}
