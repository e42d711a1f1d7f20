//! Acceptance 8: `baa demo` starts a working cluster and its two partner
//! sites, names a demo user and password, stops every child on SIGINT, and
//! keeps its data across runs, also after every node has purged its log; a
//! node that exits takes the demo down with the end of its log on screen.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use baa_cluster_tests::client::{https_client, DEFAULT_REQUEST_TIMEOUT};
use baa_cluster_tests::harness::{append_file, baa_bin, signal, tail, CONVERGE_DEADLINE};
use baa_cluster_tests::{poll_until, AdminClient};
use baa_proto::api::CreateUserRequest;
use baa_proto::command::Consistency;
use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const NODES: u16 = 3;

/// The demo's partner sites: client id and port offset from the base port.
const SITES: [(&str, u16); 2] = [("shop", 200), ("news", 201)];

/// A base port such that base.., base+100.. and base+300.. (NODES each) and
/// the sites' ports are free right now.
fn free_base_port() -> u16 {
    for _ in 0..200 {
        // Below the ephemeral range (from 32768), as the harness's ports.
        let base = 10_000 + (rand::random::<u16>() % 22_000);
        let ports = (0..NODES)
            .flat_map(|i| [base + i, base + 100 + i, base + 300 + i])
            .chain(SITES.iter().map(|(_, offset)| base + offset));
        let held: Vec<_> = ports
            .map(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)))
            .collect();
        if held.iter().all(Result::is_ok) {
            return base;
        }
    }
    panic!("no free port range found");
}

struct Demo {
    child: Child,
    /// `baa serve` and `baa-partner-site` children seen while the demo ran;
    /// killed if the test fails.
    children: Vec<u32>,
    urls: Vec<String>,
    ca: PathBuf,
    token: String,
    user: String,
    password: String,
}

async fn start_demo(dir: &Path, base: u16, log: &Path) -> Demo {
    let mut child = Command::new(baa_bin())
        .args([
            "demo",
            "--dir",
            dir.to_str().unwrap(),
            "--nodes",
            &NODES.to_string(),
            "--base-port",
            &base.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(append_file(log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawning baa demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut urls, mut ca, mut token) = (Vec::new(), None, None);
    let (mut user, mut password) = (None, None);
    let ready = tokio::time::timeout(Duration::from_secs(180), async {
        while let Some(line) = lines.next_line().await.expect("reading demo stdout") {
            let t = line.trim();
            if t.contains("baa demo is ready") {
                return true;
            }
            if let Some((head, rest)) = t.split_once(": https://") {
                if head.starts_with("node ") {
                    // "node I: https://PUBLIC  admin: https://ADMIN  (leader)":
                    // the admin API is on its own listener.
                    let admin = rest
                        .split_once("admin: https://")
                        .and_then(|(_, a)| a.split_whitespace().next())
                        .unwrap_or_else(|| panic!("no admin URL in {t:?}"));
                    urls.push(format!("https://{admin}"));
                }
            } else if let Some(p) = t.strip_prefix("CA certificate: ") {
                ca = Some(PathBuf::from(p));
            } else if let Some(tok) = t.strip_prefix("admin token: ") {
                token = Some(tok.to_string());
            } else if let Some(u) = t.strip_prefix("demo user: ") {
                user = Some(u.to_string());
            } else if let Some(p) = t.strip_prefix("password: ") {
                password = Some(p.to_string());
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "baa demo never printed the ready line; stderr:\n{}",
        tail(log, 40)
    );
    // Keep draining stdout so the demo never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert_eq!(
        urls.len(),
        NODES as usize,
        "node URLs printed by the demo: {urls:?}"
    );
    let demo = Demo {
        child,
        children: Vec::new(),
        urls,
        ca: ca.expect("CA certificate line"),
        token: token.expect("admin token line"),
        user: user.expect("demo user line"),
        password: password.expect("password line"),
    };
    demo.json_says_the_same(dir);
    demo
}

impl Demo {
    /// `demo.json` in the demo's directory names what the demo printed, and
    /// only its owner may read it (it holds the admin token and a password).
    fn json_says_the_same(&self, dir: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("demo.json");
        let mode = std::fs::metadata(&path)
            .expect("demo.json")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).expect("demo.json is JSON");
        let agency = &v["agencies"][0];
        let admin_urls: Vec<&str> = agency["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["admin_url"].as_str().unwrap())
            .collect();
        assert_eq!(admin_urls, self.urls, "{v}");
        assert_eq!(agency["ca"].as_str(), self.ca.to_str(), "{v}");
        assert_eq!(agency["admin_token"], self.token.as_str());
        assert_eq!(agency["users"][0]["username"], self.user.as_str());
        assert_eq!(agency["users"][0]["password"], self.password.as_str());
        assert_eq!(agency["sites"].as_array().unwrap().len(), SITES.len());
    }
}

/// PIDs of live (non-zombie) `baa serve` processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    live_processes()
        .into_iter()
        .filter(|(_, _, cmd)| cmd.contains(needle) && cmd.contains("serve"))
        .map(|p| p.0)
        .collect()
}

/// PIDs of live `baa-partner-site` processes whose command line mentions `needle`.
fn sites_mentioning(needle: &str) -> Vec<u32> {
    live_processes()
        .into_iter()
        .filter(|(_, _, cmd)| cmd.contains(needle) && cmd.contains("partner-site"))
        .map(|p| p.0)
        .collect()
}

/// Live (non-zombie) children of `parent` whose command line contains `word`.
fn children_of(parent: u32, word: &str) -> Vec<u32> {
    live_processes()
        .into_iter()
        .filter(|(_, ppid, cmd)| *ppid == parent && cmd.contains(word))
        .map(|p| p.0)
        .collect()
}

/// (pid, ppid, command line) of every live process.
fn live_processes() -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("X");
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if state != "Z" && state != "X" {
            out.push((
                pid,
                ppid,
                String::from_utf8_lossy(&cmdline).replace('\0', " "),
            ));
        }
    }
    out
}

fn is_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X"),
        Err(_) => false,
    }
}

impl Demo {
    fn admin(&self, i: usize) -> AdminClient {
        AdminClient::new(
            i as u64 + 1,
            self.urls[i].clone(),
            self.token.clone(),
            https_client(&self.ca, None, DEFAULT_REQUEST_TIMEOUT),
        )
    }

    async fn all_ready(&self) {
        for i in 0..self.urls.len() {
            let admin = self.admin(i);
            poll_until(
                CONVERGE_DEADLINE,
                &format!("demo node {} /readyz 200", i + 1),
                || async { matches!(admin.readyz().await, Ok(StatusCode::OK)).then_some(()) },
            )
            .await;
        }
    }

    /// Writes through every node until every node has purged its Raft log
    /// (more writes than one snapshot threshold of the demo's default
    /// configuration); returns the number of acknowledged writes. Each
    /// writer overwrites one attribute of its own user, so every write costs
    /// the same.
    async fn write_until_purged(&self, users: &[String]) -> u64 {
        let purged = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writers: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(c, user)| {
                let admin = self.admin(c % self.urls.len());
                let (user, purged) = (user.clone(), purged.clone());
                tokio::spawn(async move {
                    let mut acked = 0u64;
                    while !purged.load(std::sync::atomic::Ordering::Relaxed) {
                        let value = acked.to_string();
                        let rid = format!("{user}-{value}");
                        match admin.set_attribute(&user, "n", &value, Some(&rid)).await {
                            Ok(_) => acked += 1,
                            Err(e) if e.is_retryable() => {}
                            Err(e) => panic!("write {rid}: {e}"),
                        }
                    }
                    acked
                })
            })
            .collect();
        for i in 0..self.urls.len() {
            let admin = self.admin(i);
            poll_until(
                Duration::from_secs(600),
                &format!("demo node {} purged its log", i + 1),
                || async {
                    let s = admin.status().await.ok()?;
                    s.purged_index.is_some().then_some(())
                },
            )
            .await;
        }
        purged.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = 0;
        for w in writers {
            total += w.await.expect("writer task");
        }
        total
    }

    /// Records the demo's children; returns the `baa serve` ones and the
    /// `baa-partner-site` ones.
    fn record_children(&mut self) -> (Vec<u32>, Vec<u32>) {
        let pid = self.child.id().expect("demo pid");
        let mut nodes = children_of(pid, " serve ");
        nodes.sort();
        let mut sites = children_of(pid, "baa-partner-site ");
        sites.sort();
        self.children = nodes.iter().chain(&sites).copied().collect();
        (nodes, sites)
    }

    /// Every demo partner site serves its page (and keeps its sessions to
    /// itself: no public `/status.json`).
    async fn sites_up(&self, base: u16) {
        let http = https_client(&self.ca, None, DEFAULT_REQUEST_TIMEOUT);
        for (client_id, offset) in SITES {
            let site = format!("https://127.0.0.1:{}", base + offset);
            let get = |path: &str| http.get(format!("{site}{path}")).send();
            let health = get("/healthz")
                .await
                .unwrap_or_else(|e| panic!("{site}: {e}"));
            assert_eq!(health.status(), StatusCode::OK, "{client_id} /healthz");
            let status = get("/status.json")
                .await
                .unwrap_or_else(|e| panic!("{site}: {e}"));
            assert_ne!(
                status.status(),
                StatusCode::OK,
                "{client_id} /status.json is public"
            );
        }
    }

    /// SIGINT; the demo exits 0 and no `baa serve` child of it survives.
    async fn interrupt(mut self, dir: &str) {
        signal(self.child.id().expect("demo pid"), libc::SIGINT);
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("baa demo did not exit within 60 s of SIGINT")
            .unwrap();
        assert!(
            status.success(),
            "baa demo exit status after SIGINT: {status}"
        );
        let survivors: Vec<u32> = self
            .children
            .iter()
            .copied()
            .filter(|&p| is_alive(p))
            .collect();
        assert!(
            survivors.is_empty(),
            "children survived the demo: {survivors:?}"
        );
        let strays = processes_mentioning(dir);
        assert!(
            strays.is_empty(),
            "baa serve processes still running on the demo dir: {strays:?}"
        );
        let strays = sites_mentioning(dir);
        assert!(
            strays.is_empty(),
            "baa-partner-site processes still running on the demo dir: {strays:?}"
        );
        self.children.clear();
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Only on failure: do not leave node or site processes behind.
        for &pid in &self.children {
            if is_alive(pid) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_stops_cleanly_and_keeps_data() {
    let tmp = tempfile::Builder::new()
        .prefix("baa-demo-test-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("demo");
    let dir_s = dir.to_str().unwrap().to_string();
    let log = tmp.path().join("demo.log");
    // The same ports both times: the generated configs and the membership record them.
    let base = free_base_port();

    // First run: both sites answer, a demo user is named; create a user.
    let mut demo = start_demo(&dir, base, &log).await;
    demo.all_ready().await;
    let (nodes, sites) = demo.record_children();
    assert_eq!(
        nodes.len(),
        NODES as usize,
        "baa serve children of the demo: {nodes:?}"
    );
    assert_eq!(
        sites.len(),
        SITES.len(),
        "baa-partner-site children of the demo: {sites:?}"
    );
    demo.sites_up(base).await;
    assert_eq!(demo.user, "alice");
    assert!(
        demo.password.len() >= 8,
        "demo password {:?}",
        demo.password
    );
    demo.admin(0)
        .get_user(&demo.user, Consistency::Linearizable)
        .await
        .expect("the demo user exists");
    let password = demo.password.clone();
    let created = demo
        .admin(1)
        .create_user(
            &CreateUserRequest {
                username: "demo-persist".into(),
                ..Default::default()
            },
            Some("demo-create-1"),
        )
        .await
        .expect("create a user through the demo");
    let writers: Vec<String> = (0..3).map(|c| format!("demo-load-{c}")).collect();
    for (i, user) in writers.iter().enumerate() {
        demo.admin(i)
            .create_user(
                &CreateUserRequest {
                    username: user.clone(),
                    ..Default::default()
                },
                Some(&format!("demo-create-{user}")),
            )
            .await
            .expect("create a writer's user");
    }
    let started = std::time::Instant::now();
    let writes = demo.write_until_purged(&writers).await;
    println!(
        "{writes} writes in {} s until every demo node had purged its log",
        started.elapsed().as_secs()
    );
    demo.interrupt(&dir_s).await;

    // Second run on the same directory: the user is still there, the sites
    // (registered before) come up again, the demo password is the same.
    let mut demo = start_demo(&dir, base, &log).await;
    demo.all_ready().await;
    let (nodes, sites) = demo.record_children();
    assert_eq!(
        nodes.len(),
        NODES as usize,
        "baa serve children of the second demo: {nodes:?}"
    );
    assert_eq!(
        sites.len(),
        SITES.len(),
        "baa-partner-site children of the second demo: {sites:?}"
    );
    demo.sites_up(base).await;
    assert_eq!(demo.password, password, "the demo password is kept");
    let again = demo
        .admin(0)
        .get_user("demo-persist", Consistency::Linearizable)
        .await
        .expect("user survives a restart");
    assert_eq!(again.id, created.id);
    assert_eq!(again.created_ms, created.created_ms);
    demo.interrupt(&dir_s).await;

    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !log_text.contains("panicked"),
        "the demo log mentions a panic:\n{}",
        tail(&log, 40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_the_end_of_the_log_of_a_node_that_exits() {
    let tmp = tempfile::Builder::new()
        .prefix("baa-demo-test-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("demo");
    let log = tmp.path().join("demo.log");
    let mut demo = start_demo(&dir, free_base_port(), &log).await;
    demo.all_ready().await;
    let (nodes, _) = demo.record_children();
    assert_eq!(nodes.len(), NODES as usize, "baa serve children: {nodes:?}");

    // Which child is node 2: the one whose command line names its config.
    let node2 = nodes
        .iter()
        .copied()
        .find(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("node2.toml"))
        })
        .expect("the process of node 2");
    signal(node2, libc::SIGKILL);
    let status = tokio::time::timeout(Duration::from_secs(60), demo.child.wait())
        .await
        .expect("baa demo did not exit within 60 s of a node's death")
        .unwrap();
    assert!(!status.success(), "baa demo exit status: {status}");
    let stderr = std::fs::read_to_string(&log).unwrap();
    let node_log = std::fs::read_to_string(dir.join("node2.log")).unwrap();
    let last = node_log.lines().last().expect("node 2 logged something");
    assert!(
        stderr.contains("node 2 exited") && stderr.contains(last),
        "the demo's error does not show the end of node 2's log:\n{stderr}"
    );
    let survivors: Vec<u32> = demo
        .children
        .iter()
        .copied()
        .filter(|&p| is_alive(p))
        .collect();
    assert!(survivors.is_empty(), "children survived: {survivors:?}");
    demo.children.clear();
}

/// `baa demo --agencies 2`: two federated agencies of 3 nodes each on one
/// cookie domain, each with its site and user, peered both ways, all in
/// `demo.json`; Ctrl-C stops both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_two_agencies_peers_them() {
    let tmp = tempfile::Builder::new()
        .prefix("baa-demo-test-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("demo");
    let log = tmp.path().join("demo.log");
    let base = loop {
        let b = free_base_port();
        let second_free = (0..NODES)
            .flat_map(|i| [b + 1000 + i, b + 1100 + i, b + 1300 + i])
            .chain(SITES.iter().map(|(_, offset)| b + 1000 + offset))
            .all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
        if second_free && b < 60_000 {
            break b;
        }
    };
    let mut child = Command::new(baa_bin())
        .args(["demo", "--agencies", "2", "--dir", dir.to_str().unwrap()])
        .args(["--base-port", &base.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(append_file(&log))
        .kill_on_drop(true)
        .spawn()
        .expect("spawning baa demo");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(240), async {
        while let Some(line) = lines.next_line().await.expect("reading demo stdout") {
            if line.contains("baa demo is ready") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(ready, Ok(true)),
        "baa demo --agencies 2 never got ready; stderr:\n{}",
        tail(&log, 40)
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("demo.json")).unwrap()).unwrap();
    let agencies = v["agencies"].as_array().expect("agencies");
    assert_eq!(agencies.len(), 2, "{v}");
    let issuers: Vec<&str> = agencies
        .iter()
        .map(|a| a["issuer"].as_str().unwrap())
        .collect();
    assert!(
        issuers[0].starts_with("https://login-a.baa.localtest:"),
        "{issuers:?}"
    );
    assert!(
        issuers[1].starts_with("https://login-b.baa.localtest:"),
        "{issuers:?}"
    );
    for (i, a) in agencies.iter().enumerate() {
        assert_eq!(a["cookie_domain"], "baa.localtest");
        assert_eq!(a["nodes"].as_array().unwrap().len(), NODES as usize);
        assert_eq!(a["sites"].as_array().unwrap().len(), 1);
        assert_eq!(a["users"].as_array().unwrap().len(), 1);
        // Every node of each agency holds the other as a reachable peer.
        let ca = PathBuf::from(a["ca"].as_str().unwrap());
        let http = https_client(&ca, None, DEFAULT_REQUEST_TIMEOUT);
        let other = issuers[1 - i];
        for n in a["nodes"].as_array().unwrap() {
            let url = format!(
                "{}/admin/v1/federation/directory",
                n["admin_url"].as_str().unwrap()
            );
            let token = a["admin_token"].as_str().unwrap().to_string();
            poll_until(
                CONVERGE_DEADLINE,
                "the other agency in the directory",
                || {
                    let req = http.get(&url).bearer_auth(&token);
                    async move {
                        let d: serde_json::Value = req.send().await.ok()?.json().await.ok()?;
                        d["peers"]
                            .as_array()?
                            .iter()
                            .any(|p| p["issuer"] == other && p["reachable"] == true)
                            .then_some(())
                    }
                },
            )
            .await;
        }
    }
    let pid = child.id().expect("the demo's pid");
    signal(pid, libc::SIGINT);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the demo stops on Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status}");
}
