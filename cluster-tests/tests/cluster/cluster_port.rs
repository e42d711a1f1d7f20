//! Acceptance 6: the cluster port refuses everything but well-formed mTLS traffic
//! from the agency's own certificates, and bad input changes nothing; C1: of
//! those, only the certificates of current members (a partner site's
//! certificate, a node that is not or no longer a member: refused).

use std::time::Duration;

use baa_cluster_tests::client::{https_client, identity_pem};
use baa_cluster_tests::harness::run_baa;
use baa_cluster_tests::Cluster;
use baa_proto::api::ForwardedWrite;
use baa_proto::codec;
use baa_proto::command::{Command, Op, UserPatch};
use baa_proto::ErrorCode;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::support::{assert_error, assert_node_serves, create_user};

const NODE: u64 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_port_rejects_bad_clients_and_frames() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, NODE, "probe").await;
    let base = format!("https://{}", cluster.node(NODE).cluster_listen());
    let timeout = Duration::from_secs(30);

    // 1. TLS without a client certificate.
    let anonymous = https_client(&cluster.cluster_ca_pem(), None, timeout);
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
        &cluster.cluster_ca_pem(),
        Some(&identity_pem(
            &other.join("node1-cluster.pem"),
            &other.join("node1-cluster.key"),
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

    // A valid mTLS client: node 2's cluster certificate.
    let peer = https_client(
        &cluster.cluster_ca_pem(),
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
    assert_error(
        "truncated append",
        resp,
        StatusCode::BAD_REQUEST,
        ErrorCode::MalformedFrame,
    )
    .await;
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
    assert_error(
        "truncated forwarded write",
        resp,
        StatusCode::BAD_REQUEST,
        ErrorCode::MalformedFrame,
    )
    .await;
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

    // 7. A well-formed write of a newer wire version: 400 unsupported_version,
    //    saying which versions the node speaks; nothing applied.
    let mut newer = write.clone();
    newer.commands[0].request_id = Some("newer-wire-1".into());
    newer.commands[0].op = Op::UpdateUser {
        username: "probe".into(),
        patch: UserPatch {
            attributes: [("newer".to_string(), Some("x".to_string()))].into(),
            ..Default::default()
        },
    };
    let newer_version = (baa_node::versions::WIRE_VERSION + 1).to_string();
    let resp = peer
        .post(format!("{base}/cluster/v1/write"))
        .header("content-type", "application/octet-stream")
        .header(baa_node::versions::WIRE_VERSION_HEADER, &newer_version)
        .body(codec::encode(&newer).unwrap())
        .send()
        .await
        .expect("newer wire version: an answer");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: baa_proto::api::ErrorBody = resp.json().await.expect("an error body");
    assert_eq!(body.error, ErrorCode::UnsupportedVersion, "{body:?}");
    assert!(
        body.error_description.contains(&format!(
            "versions 1 to {}",
            baa_node::versions::WIRE_VERSION
        )),
        "{body:?}"
    );
    assert_node_serves(&cluster, NODE, "probe", "after-newer-version").await;

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
    assert!(
        !view.attributes.contains_key("newer"),
        "a write of a newer wire version was applied: {view:?}"
    );
    cluster.assert_no_panics();
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

/// A forwarded write setting attribute `key` of `user`, as bincode.
fn forwarded_write(user: &str, key: &str) -> Vec<u8> {
    codec::encode(&ForwardedWrite {
        commands: vec![Command {
            request_id: Some(format!("intruder-{key}")),
            time_ms: 1,
            op: Op::UpdateUser {
                username: user.into(),
                patch: UserPatch {
                    attributes: [(key.to_string(), Some("x".to_string()))].into(),
                    ..Default::default()
                },
            },
        }],
    })
    .unwrap()
}

/// POSTs a forwarded write to node `id`'s cluster port presenting
/// `identity`; it must be refused (no TLS session, or 403 `not_a_member`)
/// and leave the user without attribute `key`.
async fn assert_cannot_write(cluster: &Cluster, id: u64, identity: &[u8], key: &str, who: &str) {
    let client = https_client(
        &cluster.cluster_ca_pem(),
        Some(identity),
        Duration::from_secs(30),
    );
    let url = format!(
        "https://{}/cluster/v1/write",
        cluster.node(id).cluster_listen()
    );
    let sent = client
        .post(url)
        .header("content-type", "application/octet-stream")
        .body(forwarded_write("probe", key))
        .send()
        .await;
    match sent {
        Err(e) => println!("{who}: refused at the TLS layer ({e})"),
        Ok(resp) => assert_error(who, resp, StatusCode::FORBIDDEN, ErrorCode::NotAMember).await,
    }
    let view = cluster
        .admin(id)
        .get_user("probe", baa_proto::command::Consistency::Linearizable)
        .await
        .unwrap();
    assert!(
        !view.attributes.contains_key(key),
        "{who} wrote through the cluster port: {view:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_a_partner_site_certificate_cannot_write_through_the_cluster_port() {
    let cluster = Cluster::start(3).await;
    create_user(&cluster, 1, "probe").await;
    let leader = cluster.leader().await;
    // The shop's certificate, as the demo and the partner-site harness issue it.
    let shop = cluster
        .issue_site_identity("shop", "shop.baa.localtest")
        .await;
    assert_cannot_write(&cluster, leader, &shop, "by-shop", "the shop").await;
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c1_only_current_members_speak_on_the_cluster_port() {
    let mut cluster = Cluster::start(3).await;
    create_user(&cluster, 1, "probe").await;
    // A node certificate of this agency naming a node that is not a member.
    let stranger = cluster.issue_node_identity(9).await;
    let leader = cluster.leader().await;
    assert_cannot_write(&cluster, leader, &stranger, "by-node9", "node 9").await;

    // A member may; after it has left, it may not.
    let leaving = if leader == 3 { 2 } else { 3 };
    let identity = cluster.node_identity_pem(leaving);
    cluster
        .leave(leader, leaving)
        .await
        .assert_success("baa cluster leave");
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leaving).collect();
    cluster.wait_for_membership(&rest, &rest).await;
    cluster.stop(leaving).await;
    let leader = cluster.leader_among(&rest).await;
    assert_cannot_write(
        &cluster,
        leader,
        &identity,
        "by-left-node",
        "a node that left",
    )
    .await;
    cluster.assert_no_panics();
}
