//! Acceptance 8 (issue 14): the admin lists come a page at a time. Paging
//! while users are added sees every earlier user exactly once, in order; a
//! prefix filters; a bad limit or cursor is refused with a stable code; and
//! a page of 100 costs the same with 10,000 users as with 100.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use baa_cluster_tests::harness::CONVERGE_DEADLINE;
use baa_cluster_tests::{poll_until, AdminClient, Cluster, ClusterOptions};
use baa_proto::api::{ListQuery, SessionList, SiteList, UserList};
use baa_proto::command::Consistency;
use baa_proto::ErrorCode;
use futures::StreamExt;
use reqwest::{Method, StatusCode};

use super::support::{create_user_through, expect_error};

/// Users created at once: no password, so no hashing, one write each.
const CREATE_CONCURRENCY: usize = 32;

/// Creates `names` through `admin`, [`CREATE_CONCURRENCY`] at a time.
async fn create_users(admin: &AdminClient, names: &[String]) {
    futures::stream::iter(names)
        .map(|name| create_user_through(admin, name))
        .buffer_unordered(CREATE_CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
}

async fn users_page(admin: &AdminClient, query: &ListQuery) -> UserList {
    admin
        .list_page("/admin/v1/users", query)
        .await
        .unwrap_or_else(|e| panic!("users page {query:?}: {e}"))
}

fn usernames(page: &UserList) -> Vec<&str> {
    page.users.iter().map(|u| u.username.as_str()).collect()
}

fn limit(n: u32) -> ListQuery {
    ListQuery {
        limit: Some(n),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_while_users_are_added_sees_every_earlier_user_once_in_order() {
    let started = Instant::now();
    let cluster = Cluster::start(3).await;
    let earlier: Vec<String> = (0..1000).map(|i| format!("user-{i:04}")).collect();
    let creating = Instant::now();
    create_users(&cluster.admin(1), &earlier).await;
    let created_in = creating.elapsed();

    // A writer adds users all over the key range (before and after where
    // the paging is) until the paging is done; each page is asked for only
    // once a user has been added since the page before.
    let added = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let writer = async {
        let admin = cluster.admin(1);
        while !done.load(Ordering::SeqCst) {
            let n = added.load(Ordering::SeqCst);
            create_user_through(&admin, &format!("user-{:04}-new{n}", n * 389 % 1000)).await;
            added.fetch_add(1, Ordering::SeqCst);
        }
    };
    let reader = cluster.admin(2);
    let pager = async {
        let mut query = Some(ListQuery {
            limit: Some(100),
            consistency: Consistency::Linearizable,
            ..Default::default()
        });
        let mut pages = Vec::new();
        while let Some(q) = query {
            let seen = added.load(Ordering::SeqCst);
            poll_until(
                CONVERGE_DEADLINE,
                "a user added between two pages",
                || async { (added.load(Ordering::SeqCst) > seen).then_some(()) },
            )
            .await;
            let page = users_page(&reader, &q).await;
            query = q.after(page.next_cursor.clone());
            pages.push(page);
        }
        done.store(true, Ordering::SeqCst);
        pages
    };
    let (pages, ()) = tokio::join!(pager, writer);

    let (last, full) = pages.split_last().expect("at least one page");
    for (i, p) in full.iter().enumerate() {
        assert_eq!(
            p.users.len(),
            100,
            "page {i} is not full but names a next page"
        );
    }
    assert!(last.users.len() <= 100 && last.next_cursor.is_none());
    let names: Vec<&str> = pages.iter().flat_map(usernames).collect();
    for pair in names.windows(2) {
        assert!(pair[0] < pair[1], "out of order or twice: {pair:?}");
    }
    let missing: Vec<&String> = earlier
        .iter()
        .filter(|n| names.binary_search(&n.as_str()).is_err())
        .collect();
    assert!(missing.is_empty(), "earlier users not seen: {missing:?}");
    let added = added.load(Ordering::SeqCst);
    let new_seen = names.len() - earlier.len();
    assert!(
        added >= pages.len(),
        "{added} users added over {} pages",
        pages.len()
    );

    // The CLI and the test client follow the cursors to the end.
    let all = reader
        .list_users(Consistency::Linearizable)
        .await
        .expect("every user");
    assert_eq!(
        all.users.len(),
        earlier.len() + added,
        "{}",
        all.users.len()
    );
    let out = cluster.cli(2, &["user", "list"]).await;
    out.assert_success("baa user list");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("JSON array");
    assert_eq!(listed.len(), all.users.len());
    let out = cluster
        .cli(
            2,
            &["user", "list", "--prefix", "user-0999", "--limit", "1"],
        )
        .await;
    out.assert_success("baa user list --prefix --limit");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).expect("JSON array");
    assert_eq!(listed.len(), 1, "{}", out.stdout);
    assert_eq!(listed[0]["username"], "user-0999");

    println!(
        "paging while adding: {} earlier users (created in {:.1} s), {} pages of 100, \
         {} users seen ({new_seen} of the {added} added while paging), test took {:.1} s",
        earlier.len(),
        created_in.as_secs_f64(),
        pages.len(),
        names.len(),
        started.elapsed().as_secs_f64()
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_filters_and_bad_pages_are_refused_with_a_code() {
    let cluster = Cluster::start(1).await;
    let admin = cluster.admin(1);
    let names = ["albert", "alfred", "alice", "alma", "bob", "carol"].map(String::from);
    create_users(&admin, &names).await;
    for id in ["news", "shop-a", "shop-b"] {
        let body = serde_json::json!({
            "client_id": id,
            "redirect_uris": [format!("https://{id}.example/cb")],
        });
        admin.create_site(&body).await.expect("site");
    }

    let al = ListQuery {
        prefix: Some("al".into()),
        ..limit(3)
    };
    let first = users_page(&admin, &al).await;
    assert_eq!(usernames(&first), ["albert", "alfred", "alice"]);
    let second = users_page(&admin, &al.after(first.next_cursor).expect("a next page")).await;
    assert_eq!(usernames(&second), ["alma"]);
    assert_eq!(second.next_cursor, None);
    let none = ListQuery {
        prefix: Some("x".into()),
        ..Default::default()
    };
    let page = users_page(&admin, &none).await;
    assert!(
        page.users.is_empty() && page.next_cursor.is_none(),
        "{page:?}"
    );
    let shop = ListQuery {
        prefix: Some("shop".into()),
        ..limit(1)
    };
    let sites: SiteList = admin.list_page("/admin/v1/sites", &shop).await.unwrap();
    assert_eq!(sites.sites[0].client_id, "shop-a");
    let q = shop.after(sites.next_cursor).expect("a second site");
    let sites: SiteList = admin.list_page("/admin/v1/sites", &q).await.unwrap();
    assert_eq!(sites.sites[0].client_id, "shop-b");
    assert_eq!(sites.next_cursor, None);
    let sessions: SessionList = admin
        .list_page("/admin/v1/users/alice/sessions", &limit(1))
        .await
        .unwrap();
    assert!(sessions.sessions.is_empty() && sessions.next_cursor.is_none());

    let before = admin.list_users(Consistency::Local).await.unwrap();
    let long = "a".repeat(65);
    for (path, query) in [
        ("/admin/v1/users", "limit=0"),
        ("/admin/v1/users", "limit=100000"),
        ("/admin/v1/users", "limit=1001"),
        ("/admin/v1/users", "limit=-1"),
        ("/admin/v1/users", "limit=ten"),
        ("/admin/v1/users", "cursor=not%20base64!"),
        ("/admin/v1/users", "cursor=YWxpY2U%3D"),
        ("/admin/v1/users", "cursor="),
        ("/admin/v1/users", &format!("prefix={long}")),
        ("/admin/v1/users", "page=2"),
        ("/admin/v1/sites", "limit=0"),
        ("/admin/v1/sites", "cursor=%%%"),
        ("/admin/v1/users/alice/sessions", "limit=100000"),
        ("/admin/v1/users/alice/sessions", "cursor=*"),
        ("/admin/v1/users/alice/sessions", "prefix=a"),
    ] {
        expect_error(
            &format!("{path}?{query}"),
            admin.request(Method::GET, &format!("{path}?{query}")),
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
        )
        .await;
    }
    expect_error(
        "sessions of nobody",
        admin.request(Method::GET, "/admin/v1/users/nobody/sessions?limit=5"),
        StatusCode::NOT_FOUND,
        ErrorCode::UserNotFound,
    )
    .await;
    let after = admin.list_users(Consistency::Local).await.unwrap();
    let listed = |l: &UserList| {
        l.users
            .iter()
            .map(|u| u.username.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed(&before),
        listed(&after),
        "a refused list changed the users"
    );
    assert_eq!(listed(&after), names.to_vec());
    cluster.assert_no_panics();
}

/// The median time of `n` requests of the page `query` (each checked to
/// hold `len` users).
async fn median_page_time(
    admin: &AdminClient,
    query: &ListQuery,
    n: usize,
    len: usize,
) -> Duration {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let page = users_page(admin, query).await;
        times.push(t.elapsed());
        assert_eq!(page.users.len(), len, "{query:?}");
    }
    times.sort();
    times[n / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_100_costs_the_same_with_10000_users_as_with_100() {
    const SAMPLES: usize = 30;
    let started = Instant::now();
    let cluster = Cluster::start_with(ClusterOptions {
        log_level: "warn".into(),
        ..ClusterOptions::nodes(1)
    })
    .await;
    let admin = cluster.admin(1);
    // The first 100 spread over the names the 10,000 will have.
    let name = |i: usize| format!("t-{i:05}");
    let first: Vec<String> = (0..10_000).step_by(100).map(name).collect();
    create_users(&admin, &first).await;
    let page = limit(100);
    users_page(&admin, &page).await; // the connection, warm
    let with_100 = median_page_time(&admin, &page, SAMPLES, 100).await;

    let creating = Instant::now();
    let rest: Vec<String> = (0..10_000).filter(|i| i % 100 != 0).map(name).collect();
    create_users(&admin, &rest).await;
    let created_in = creating.elapsed();
    // A cursor halfway: the end of five pages of 1,000.
    let mut middle = limit(1000);
    for _ in 0..5 {
        let p = users_page(&admin, &middle).await;
        middle = middle.after(p.next_cursor).expect("more pages");
    }
    let middle = ListQuery {
        limit: Some(100),
        ..middle
    };
    let first_of_10k = median_page_time(&admin, &page, SAMPLES, 100).await;
    let middle_of_10k = median_page_time(&admin, &middle, SAMPLES, 100).await;

    println!(
        "page of 100, median of {SAMPLES}: {:.2} ms with 100 users; with 10,000 users \
         {:.2} ms (first page), {:.2} ms (from the middle); 9,900 users created in {:.1} s; \
         test took {:.1} s",
        ms(with_100),
        ms(first_of_10k),
        ms(middle_of_10k),
        created_in.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    // A scaling check, not a timing one: a page that read every user would
    // be ~100 times the work.
    let bound = with_100 * 3 + Duration::from_millis(5);
    for (what, t) in [("first", first_of_10k), ("middle", middle_of_10k)] {
        assert!(
            t < bound,
            "{what} page with 10,000 users: {:.2} ms, bound {:.2} ms",
            ms(t),
            ms(bound)
        );
    }
    cluster.assert_no_panics();
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
