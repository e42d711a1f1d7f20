//! Acceptance 5: a node joins and an original node leaves under steady writes.

use std::collections::BTreeSet;
use std::time::Duration;

use baa_cluster_tests::harness::{random_token, CONVERGE_DEADLINE};
use baa_cluster_tests::{poll_until, Cluster};
use baa_proto::model::NodeId;

use super::support::{
    assert_writers_resolved, create_user, start_writers, verify_reports_on, wait_acks,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_under_writes() {
    let mut cluster = Cluster::start(3).await;
    let users: Vec<String> = (0..2).map(|c| format!("member-{c}")).collect();
    for u in &users {
        create_user(&cluster, 2, u).await;
    }
    // Writers use nodes 2 and 3 only: node 1 is the one that leaves.
    let load = start_writers(&cluster, &users, &[2, 3], Duration::from_secs(240));
    wait_acks(&load, 20, "writes flowing before the join").await;

    cluster.add_node(4).await;
    cluster
        .join(2, 4, false)
        .await
        .assert_success("baa cluster join --id 4");
    cluster
        .wait_for_membership(&[1, 2, 3, 4], &[1, 2, 3, 4])
        .await;
    wait_acks(&load, 20, "writes flowing after the join").await;

    cluster
        .leave(2, 1)
        .await
        .assert_success("baa cluster leave --id 1");
    let leader = cluster.wait_for_membership(&[2, 3, 4], &[2, 3, 4]).await;
    assert_ne!(leader, 1);
    wait_acks(&load, 20, "writes flowing after the leave").await;
    let reports = load.finish().await;
    assert_writers_resolved(&reports);

    let ls = cluster.status(leader).await;
    let voters: BTreeSet<NodeId> = ls.voters.iter().copied().collect();
    assert_eq!(voters, BTreeSet::from([2, 3, 4]), "leader's voters: {ls:?}");
    assert!(!ls.learners.contains(&1), "node 1 still a learner: {ls:?}");
    assert!(
        !ls.nodes.contains_key(&1),
        "node 1 still in the membership: {ls:?}"
    );

    cluster.wait_converged(&[2, 3, 4]).await;
    verify_reports_on(&cluster, &[2, 3, 4], &reports).await;

    // Node 1 no longer counts: with node 1 and one more node down, two of {2,3,4}
    // are a majority, whereas two of {1,2,3,4} would not be.
    cluster.kill(1);
    let follower = [2, 3, 4]
        .into_iter()
        .find(|&i| i != leader)
        .expect("a follower");
    cluster.kill(follower);
    let rest: Vec<NodeId> = [2, 3, 4].into_iter().filter(|&i| i != follower).collect();
    let admin = cluster.admin(rest[0]);
    let rid = format!("after-leave-{}", random_token(8));
    poll_until(
        CONVERGE_DEADLINE,
        "a write committed by two of {2,3,4} with node 1 down",
        || async {
            admin
                .set_attribute(&users[0], "quorum", "2of3", Some(&rid))
                .await
                .ok()
        },
    )
    .await;
    cluster.restart(follower).await;
    cluster.wait_converged(&[2, 3, 4]).await;
    cluster.assert_no_panics();
}
