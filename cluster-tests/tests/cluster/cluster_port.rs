//! Acceptance 6: the cluster port refuses everything but well-formed mTLS traffic
//! from the agency's own certificates, and bad input changes nothing.

use std::time::Duration;

use baa_cluster_tests::client::{https_client, identity_pem};
use baa_cluster_tests::harness::run_baa;
use baa_cluster_tests::Cluster;
use baa_proto::api::{ErrorBody, ForwardedWrite};
use baa_proto::codec;
use baa_proto::command::{Command, Op, UserPatch};
use baa_proto::ErrorCode;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::{assert_node_serves, create_user};

const NODE: u64 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_port_rejects_bad_clients_and_frames() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, NODE, "probe").await;
    let base = format!("https://{}", cluster.node(NODE).cluster_listen());
    let timeout = Duration::from_secs(30);

    // 1. TLS without a client certificate.
    let anonymous = https_client(&cluster.ca_pem(), None, timeout);
    assert_refused(&anonymous, &base, "without a client certificate").await;
    assert_node_serves(&cluster, NODE, "probe", "after-no-cert").await;

    // 2. A client certificate from another CA.
    let other = cluster.root().join("other-pki");
    run_baa(
        cluster.bin(),
        &[
            "pki",
            "init",
            "--dir",
            other.to_str().unwrap(),
            "--nodes",
            "1",
        ],
    )
    .await
    .assert_success("second CA");
    let foreign = https_client(
        &cluster.ca_pem(),
        Some(&identity_pem(
            &other.join("node1.pem"),
            &other.join("node1.key"),
        )),
        timeout,
    );
    assert_refused(&foreign, &base, "with a foreign client certificate").await;
    assert_node_serves(&cluster, NODE, "probe", "after-foreign-cert").await;

    // 3. Garbage bytes over raw TCP: the connection is closed, never an HTTP answer.
    let mut tcp = TcpStream::connect(cluster.node(NODE).cluster_listen())
        .await
        .unwrap();
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = tcp
        .write_all(b"POST /raft/append HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let _ = tcp.write_all(&garbage).await;
    let mut answer = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), tcp.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "the node kept a garbage connection open for 15 s"
    );
    assert!(
        !answer.starts_with(b"HTTP/"),
        "the node answered garbage with HTTP: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_node_serves(&cluster, NODE, "probe", "after-garbage").await;

    // A valid mTLS client: node 2's certificate is also a client certificate.
    let peer = https_client(
        &cluster.ca_pem(),
        Some(&cluster.node_identity_pem(2)),
        timeout,
    );
    let post = |path: &str, body: Vec<u8>| {
        peer.post(format!("{base}{path}"))
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
    };

    // 4. Truncated bincode bodies: 400 malformed_frame.
    let resp = post("/raft/append", vec![0x05, 0x01])
        .await
        .expect("truncated append: an answer");
    assert_error(resp, StatusCode::BAD_REQUEST, ErrorCode::MalformedFrame).await;
    let write = ForwardedWrite {
        commands: vec![Command {
            request_id: Some("truncated-frame-1".into()),
            time_ms: 1,
            op: Op::UpdateUser {
                username: "probe".into(),
                patch: UserPatch {
                    attributes: [("truncated".to_string(), Some("x".to_string()))].into(),
                    ..Default::default()
                },
            },
        }],
    };
    let mut frame = codec::encode(&write).unwrap();
    frame.truncate(frame.len() / 2);
    let resp = post("/cluster/v1/write", frame)
        .await
        .expect("truncated forwarded write: an answer");
    assert_error(resp, StatusCode::BAD_REQUEST, ErrorCode::MalformedFrame).await;
    assert_node_serves(&cluster, NODE, "probe", "after-truncated").await;

    // 5. A body over 16 MiB: 413, or the connection is closed with an error.
    let big = vec![0u8; (codec::MAX_FRAME_BYTES + 1024) as usize];
    match post("/raft/append", big).await {
        Ok(resp) => {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            assert_eq!(
                status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "oversized frame: {text}"
            );
        }
        Err(e) => println!("oversized frame: connection closed ({e})"),
    }
    assert_node_serves(&cluster, NODE, "probe", "after-oversized").await;

    // 6. Unknown path: 404.
    let resp = post("/raft/nope", vec![1, 2, 3])
        .await
        .expect("unknown path: an answer");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_node_serves(&cluster, NODE, "probe", "after-unknown-path").await;

    // Nothing above changed the user but the checks' own writes.
    let view = cluster
        .admin(NODE)
        .get_user("probe", baa_proto::command::Consistency::Linearizable)
        .await
        .unwrap();
    assert!(
        !view.attributes.contains_key("truncated"),
        "a truncated frame was applied: {view:?}"
    );
    cluster.assert_no_panics();
}

async fn assert_error(resp: reqwest::Response, status: StatusCode, code: ErrorCode) {
    let got = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(got, status, "body: {text}");
    let body: ErrorBody = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not an ErrorBody ({e}): {text}"));
    assert_eq!(body.error, code, "body: {text}");
}

/// A request through `client` must fail at the TLS layer: no HTTP answer at all.
async fn assert_refused(client: &reqwest::Client, base: &str, what: &str) {
    let r = client
        .post(format!("{base}/raft/vote"))
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 4])
        .send()
        .await;
    assert!(
        r.is_err(),
        "request {what} got an answer: {:?}",
        r.map(|r| r.status())
    );
}
