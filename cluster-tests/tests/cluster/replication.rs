//! Acceptance 1: three nodes form a cluster through the CLI; a write sent to a
//! follower is readable from every node.

use baa_cluster_tests::harness::{find_leader, run_baa, CONVERGE_DEADLINE};
use baa_cluster_tests::{poll_until, Cluster};
use baa_proto::api::{ClusterStatus, CreateUserRequest, UpdateUserRequest};
use baa_proto::command::Consistency;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_and_replicate_a_follower_write() {
    // Cluster::start runs `baa pki init`, starts three `baa serve` and runs `baa cluster init` on node 1.
    let mut cluster = Cluster::start(3).await;

    // `baa cluster status --json`: three statuses, voters {1,2,3} everywhere,
    // exactly one leader (it exits non-zero until there is one).
    let statuses: Vec<ClusterStatus> = poll_until(
        CONVERGE_DEADLINE,
        "cluster status --json shows a settled cluster",
        || async {
            let out = cluster.cli(2, &["cluster", "status", "--json"]).await;
            if !out.status.success() {
                return None;
            }
            let st: Vec<ClusterStatus> = serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "cluster status --json is not a JSON array of ClusterStatus: {e}\n{}",
                    out.stdout
                )
            });
            let leaders = st.iter().filter(|s| s.state == "Leader").count();
            let agreed = st
                .iter()
                .all(|s| s.leader.is_some() && s.leader == st[0].leader);
            (leaders == 1 && agreed).then_some(st)
        },
    )
    .await;
    assert_eq!(statuses.len(), 3, "status of three nodes: {statuses:?}");
    let mut ids: Vec<u64> = statuses.iter().map(|s| s.node_id).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2, 3]);
    for s in &statuses {
        let mut voters = s.voters.clone();
        voters.sort();
        assert_eq!(voters, vec![1, 2, 3], "voters seen by node {}", s.node_id);
        assert!(s.learners.is_empty(), "no learners expected: {s:?}");
        assert!(s.initialized, "node {} not initialised", s.node_id);
    }
    let leader = find_leader(&statuses).expect("one leader agreed by a majority");
    assert_eq!(statuses.iter().filter(|s| s.state == "Leader").count(), 1);

    // A write through a follower: create, then PATCH attributes.
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&i| i != leader).collect();
    let (writer, reader) = (followers[0], followers[1]);
    let admin = cluster.admin(writer);
    let created = admin
        .create_user(
            &CreateUserRequest {
                username: "alice".into(),
                display_name: Some("Alice".into()),
                ..Default::default()
            },
            None,
        )
        .await
        .expect("create through a follower");
    assert_eq!(created.revision, 1);
    let patch = UpdateUserRequest {
        attributes: [
            ("dept".to_string(), Some("ops".to_string())),
            ("floor".to_string(), Some("3".to_string())),
        ]
        .into(),
        ..Default::default()
    };
    let updated = admin
        .update_user("alice", &patch, Some("replication-patch-1"))
        .await
        .expect("patch through a follower");
    assert_eq!(updated.revision, 2);
    assert_eq!(
        updated.attributes.get("dept").map(String::as_str),
        Some("ops")
    );

    // A linearizable read from the other follower sees it at once.
    let lin = cluster
        .admin(reader)
        .get_user("alice", Consistency::Linearizable)
        .await
        .expect("linearizable read");
    assert_eq!(
        lin.revision, 2,
        "linearizable read on node {reader} must reflect the acknowledged write"
    );
    assert_eq!(lin.attributes, updated.attributes);

    // Local reads on every node converge to the same record.
    for id in [1, 2, 3] {
        let a = cluster.admin(id);
        let view = poll_until(
            CONVERGE_DEADLINE,
            &format!("alice at revision 2 on node {id}"),
            || async {
                a.get_user("alice", Consistency::Local)
                    .await
                    .ok()
                    .filter(|v| v.revision == 2)
            },
        )
        .await;
        assert_eq!(view, updated, "node {id} local read");
    }
    cluster.wait_converged(&[1, 2, 3]).await;

    // A healthy cluster's status exits 0, the token read from a file (kept
    // off the command line); with a member down it exits non-zero and says
    // which.
    let token_file = cluster.root().join("admin-token");
    std::fs::write(&token_file, format!("{}\n", cluster.admin_token())).unwrap();
    let status = |cluster: &Cluster| {
        let (url, ca) = (cluster.manage_url(reader), cluster.ca_pem());
        let token_file = token_file.clone();
        let bin = cluster.bin().to_path_buf();
        async move {
            let args = [
                "--url",
                url.as_str(),
                "--ca",
                ca.to_str().unwrap(),
                "--token-file",
                token_file.to_str().unwrap(),
                "cluster",
                "status",
            ];
            run_baa(&bin, &args).await
        }
    };
    let healthy = status(&cluster).await;
    healthy.assert_success("baa cluster status --token-file on a healthy cluster");
    let down = writer;
    cluster.stop(down).await;
    let out = status(&cluster).await;
    assert!(
        !out.status.success() && out.stderr.contains(&format!("[{down}] did not answer")),
        "cluster status with node {down} stopped: {:?}\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    cluster.assert_no_panics();
}
