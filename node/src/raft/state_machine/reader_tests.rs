//! Unit tests of the reader's pages: where a page starts, what bounds it,
//! and when it names a next one.

use baa_proto::command::Op;
use baa_proto::model::User;

use super::tests::create;
use super::tests::sso::session;
use super::{applied, StateReader};

/// A state with users `names`, created in that order (ids 1, 2, …), then `ops`.
async fn state(dir: &std::path::Path, names: &[&str], ops: Vec<Op>) -> StateReader {
    let ops = names.iter().map(|n| create(n)).chain(ops);
    applied(dir, ops.map(|op| (1_000, op)).collect())
        .await
        .reader()
}

/// The names on a page of users and the name it says the next page starts after.
fn names(
    r: &StateReader,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> (Vec<String>, Option<String>) {
    let page = r
        .named_page::<User>(prefix.as_bytes(), after.map(str::as_bytes), limit)
        .unwrap();
    let next = page.next_after.map(|k| String::from_utf8(k).unwrap());
    (page.items.into_iter().map(|u| u.username).collect(), next)
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_page_starts_after_its_cursor_and_holds_at_most_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Created out of order: pages follow the names, not the creation.
    let r = state(
        dir.path(),
        &["carol", "alice", "erin", "bob", "dave"],
        vec![],
    )
    .await;
    assert_eq!(
        names(&r, "", None, 2),
        (strs(&["alice", "bob"]), Some("bob".into()))
    );
    assert_eq!(
        names(&r, "", Some("bob"), 2),
        (strs(&["carol", "dave"]), Some("dave".into()))
    );
    // The last page names no next one, also when it is exactly full.
    assert_eq!(names(&r, "", Some("dave"), 2), (strs(&["erin"]), None));
    assert_eq!(
        names(&r, "", Some("carol"), 2),
        (strs(&["dave", "erin"]), None)
    );
    assert_eq!(names(&r, "", None, 5).1, None);
    assert_eq!(names(&r, "", None, 4).1, Some("dave".into()));
    // A cursor whose user is gone (or never was) still places the page.
    assert_eq!(
        names(&r, "", Some("bz"), 1),
        (strs(&["carol"]), Some("carol".into()))
    );
    assert_eq!(names(&r, "", Some("zed"), 3), (vec![], None));
}

#[tokio::test]
async fn a_prefix_bounds_a_page_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let all = ["al", "ala", "alb", "alc", "alice", "am", "ak", "b"];
    let r = state(dir.path(), &all, vec![]).await;
    assert_eq!(
        names(&r, "al", None, 10),
        (strs(&["al", "ala", "alb", "alc", "alice"]), None)
    );
    assert_eq!(
        names(&r, "al", None, 2),
        (strs(&["al", "ala"]), Some("ala".into()))
    );
    assert_eq!(
        names(&r, "al", Some("alb"), 2),
        (strs(&["alc", "alice"]), None)
    );
    // A cursor before the prefix starts at the prefix; one past it ends the list.
    assert_eq!(
        names(&r, "al", Some("ak"), 1),
        (strs(&["al"]), Some("al".into()))
    );
    assert_eq!(names(&r, "al", Some("am"), 10), (vec![], None));
    assert_eq!(names(&r, "zz", None, 10), (vec![], None));
}

#[tokio::test]
async fn a_session_page_keeps_to_its_user_and_passes_over_what_keep_refuses() {
    let dir = tempfile::tempdir().unwrap();
    // Sessions 1..=5 of alice (id 1), and 0 and 9 of bob (id 2): bob's
    // index entries sort around alice's by key but after them by user.
    let mut ops: Vec<Op> = (1..=5).map(|k| session([k; 32])).collect();
    for k in [0u8, 9] {
        let mut op = session([k; 32]);
        if let Op::CreateSession { session, .. } = &mut op {
            session.user_id = 2;
        }
        ops.push(op);
    }
    let r = state(dir.path(), &["alice", "bob"], ops).await;
    let page = |user: u64, after: Option<u8>, limit: usize| {
        let after = after.map(|k| [k; 32]);
        let p = r
            .sessions_page(user, after.as_ref().map(|a| &a[..]), limit, |s| {
                s.key[0] != 3 && s.key[0] != 5
            })
            .unwrap();
        let keys: Vec<u8> = p.items.iter().map(|s| s.key[0]).collect();
        (keys, p.next_after.map(|k| k[0]))
    };
    assert_eq!(page(1, None, 2), (vec![1, 2], Some(2)));
    // 3 and 5 are passed over; as nothing alice has follows 4, no next page.
    assert_eq!(page(1, Some(2), 2), (vec![4], None));
    assert_eq!(page(1, Some(4), 2), (vec![], None));
    assert_eq!(page(1, None, 10), (vec![1, 2, 4], None));
    assert_eq!(page(2, None, 1), (vec![0], Some(0)));
    assert_eq!(page(2, Some(0), 1), (vec![9], None));
}
