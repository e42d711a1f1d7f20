//! A cluster of real `baa serve` processes on loopback, each behind a TCP proxy
//! the harness controls (see [`crate::proxy`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use baa_proto::api::ClusterStatus;
use baa_proto::model::NodeId;
use rand::distributions::{Alphanumeric, DistString};
use reqwest::StatusCode;
use serde::Serialize;

use crate::client::{self, AdminClient, DEFAULT_REQUEST_TIMEOUT};
use crate::poll::poll_until;
use crate::proxy::{self, Proxy};

/// Deadline for a node process to answer `/healthz` after it was spawned.
pub const START_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline for an election, a catch-up or a membership change to be observed.
pub const CONVERGE_DEADLINE: Duration = Duration::from_secs(60);
/// Deadline for a node to exit after SIGTERM.
pub const STOP_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline for one CLI invocation.
pub const CLI_DEADLINE: Duration = Duration::from_secs(120);

/// Knobs of a test cluster. `None` leaves the node's default.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of initial nodes (ids 1..=nodes).
    pub nodes: u64,
    /// Run `baa cluster init` against node 1 and wait for a leader.
    pub init: bool,
    /// `log_level` of every node.
    pub log_level: String,
    /// `[raft] heartbeat_interval_ms`.
    pub heartbeat_interval_ms: Option<u64>,
    /// `[raft] election_timeout_min_ms`.
    pub election_timeout_min_ms: Option<u64>,
    /// `[raft] election_timeout_max_ms`.
    pub election_timeout_max_ms: Option<u64>,
    /// `[raft] snapshot_after_logs`.
    pub snapshot_after_logs: Option<u64>,
    /// `[raft] logs_to_keep`.
    pub logs_to_keep: Option<u64>,
    /// `[raft] write_timeout_ms`.
    pub write_timeout_ms: Option<u64>,
    /// Extra `[sso]` settings (agency, issuer and cookie domain are set by the harness).
    pub sso: toml::Table,
    /// `[limits]` settings.
    pub limits: toml::Table,
    /// `[[gateway]]` apps, one table each (`name`, `upstream`, ...).
    pub gateway: Vec<toml::Table>,
    /// `[[forward_auth]]` apps; by default [`TOOLS_APP`] at [`TOOLS_ORIGIN`],
    /// taking tokens of the `baa-cli` client.
    pub forward_auth: Vec<toml::Table>,
}

/// The forward-auth app every test cluster has unless told otherwise.
pub const TOOLS_APP: &str = "tools";
/// Its origin.
pub const TOOLS_ORIGIN: &str = "https://tools.baa.localtest";

/// A `[[gateway]]` or `[[forward_auth]]` table: `name`, then `key` (the
/// upstream or origin), taking tokens of the clients `accept`.
pub fn app_table(name: &str, key: &str, url: &str, accept: &[&str]) -> toml::Table {
    let mut t = toml::Table::new();
    t.insert("name".into(), name.into());
    t.insert(key.into(), url.into());
    t.insert(
        "accept_clients".into(),
        toml::Value::Array(accept.iter().map(|&c| c.into()).collect()),
    );
    t
}

/// The agency's host name in tests (mapped to loopback in the browser).
pub const AGENCY_HOST: &str = "login.baa.localtest";
/// The shared cookie domain in tests.
pub const COOKIE_DOMAIN: &str = "baa.localtest";
/// The agency name in tests.
pub const AGENCY_NAME: &str = "baa-test";

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            init: true,
            log_level: "info".into(),
            heartbeat_interval_ms: None,
            election_timeout_min_ms: None,
            election_timeout_max_ms: None,
            snapshot_after_logs: None,
            logs_to_keep: None,
            write_timeout_ms: None,
            sso: toml::Table::new(),
            limits: toml::Table::new(),
            gateway: Vec::new(),
            forward_auth: vec![app_table(TOOLS_APP, "origin", TOOLS_ORIGIN, &["baa-cli"])],
        }
    }
}

impl ClusterOptions {
    /// Default options with `n` nodes.
    pub fn nodes(n: u64) -> Self {
        ClusterOptions {
            nodes: n,
            ..Default::default()
        }
    }
}

#[derive(Serialize)]
struct NodeConfig {
    node_id: NodeId,
    data_dir: PathBuf,
    public_listen: String,
    cluster_listen: String,
    manage_listen: String,
    cluster_advertise: String,
    cluster_source_ip: String,
    admin_token: String,
    log_format: String,
    log_level: String,
    tls: TlsConfig,
    raft: RaftConfig,
    limits: toml::Table,
    sso: toml::Table,
    peers: Vec<PeerConfig>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    gateway: Vec<toml::Table>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    forward_auth: Vec<toml::Table>,
}

#[derive(Serialize)]
struct TlsConfig {
    cert: PathBuf,
    key: PathBuf,
    cluster_ca: PathBuf,
    cluster_cert: PathBuf,
    cluster_key: PathBuf,
}

#[derive(Serialize)]
struct RaftConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    heartbeat_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    election_timeout_min_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    election_timeout_max_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot_after_logs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    logs_to_keep: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct PeerConfig {
    id: NodeId,
    public_addr: String,
    cluster_addr: String,
}

/// One node: its files, addresses, proxy and (when running) process.
pub struct Node {
    id: NodeId,
    dir: PathBuf,
    config_path: PathBuf,
    public_addr: SocketAddr,
    manage_addr: SocketAddr,
    cluster_listen: SocketAddr,
    proxy: Proxy,
    child: Option<Child>,
}

impl Node {
    /// The node id.
    pub fn id(&self) -> NodeId {
        self.id
    }
    /// The node's directory (config, log, data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The node's TOML config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }
    /// The public HTTPS listener.
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }
    /// The management listener (admin API, metrics).
    pub fn manage_addr(&self) -> SocketAddr {
        self.manage_addr
    }
    /// The node's real cluster listener (bypasses the proxy).
    pub fn cluster_listen(&self) -> SocketAddr {
        self.cluster_listen
    }
    /// The address peers dial: the proxy in front of the cluster listener.
    pub fn cluster_advertise(&self) -> SocketAddr {
        self.proxy.addr()
    }
    /// The node's log file (stdout + stderr of every run, appended).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }
    /// The PID of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Output of one `baa` CLI invocation.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// Panics with both streams unless the command succeeded.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.status.success(),
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A running test cluster. Dropping it kills every node process; the temporary
/// directory is kept (and its path and log tails printed) if the thread is
/// panicking or `BAA_KEEP_TEST_DIRS` is set.
pub struct Cluster {
    tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    bin: PathBuf,
    opts: ClusterOptions,
    token: String,
    http: reqwest::Client,
    nodes: BTreeMap<NodeId, Node>,
    used_ports: Mutex<HashSet<u16>>,
}

/// The `baa` binary: `$BAA_BIN`, else `baa` next to the running executable
/// (`target/debug/deps/cluster-…` and `target/debug/examples/…` map to `target/debug/baa`).
pub fn baa_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAA_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") || dir.ends_with("examples") {
        dir.pop();
    }
    let bin = dir.join("baa");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p baa-node --bin baa` or set BAA_BIN",
        bin.display()
    );
    bin
}

/// A port that was free a moment ago on 127.0.0.1.
///
/// Chosen at random below the kernel's ephemeral range (Linux: from 32768):
/// a port the kernel hands out for port 0 is also what it hands to outgoing
/// connections, so a listener started a moment later could find it taken.
pub fn free_port() -> u16 {
    for _ in 0..1_000 {
        let port = 10_000 + rand::random::<u16>() % 22_000;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 10000 and 32000 on 127.0.0.1")
}

/// A random alphanumeric string.
pub fn random_token(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), len)
}

/// Runs `baa <args>` and collects its output.
pub async fn run_baa(bin: &Path, args: &[&str]) -> CliOutput {
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(CLI_DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "`baa {}` did not finish within {CLI_DEADLINE:?}",
                args.join(" ")
            )
        })
        .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
    CliOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The last `n` lines of a file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Cluster {
    /// Starts `n` nodes with default options, initialises the cluster through the
    /// CLI and waits until every node knows the same leader.
    pub async fn start(n: u64) -> Cluster {
        Cluster::start_with(ClusterOptions::nodes(n)).await
    }

    /// Starts a cluster with the given options.
    pub async fn start_with(opts: ClusterOptions) -> Cluster {
        let tmp = tempfile::Builder::new()
            .prefix("baa-cluster-")
            .tempdir()
            .expect("tempdir");
        let root = tmp.path().to_path_buf();
        let bin = baa_bin();
        let pki = root.join("pki");
        let n = opts.nodes.to_string();
        run_baa(
            &bin,
            &[
                "pki",
                "init",
                "--dir",
                path_str(&pki),
                "--nodes",
                &n,
                "--san",
                AGENCY_HOST,
            ],
        )
        .await
        .assert_success("baa pki init");
        let http = client::https_client(&pki.join("ca.pem"), None, DEFAULT_REQUEST_TIMEOUT);
        let mut cluster = Cluster {
            tmp: Some(tmp),
            root,
            bin,
            opts: opts.clone(),
            token: random_token(40),
            http,
            nodes: BTreeMap::new(),
            used_ports: Mutex::new(HashSet::new()),
        };
        for id in 1..=opts.nodes {
            cluster.create_node(id).await;
        }
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        for &id in &ids {
            cluster.write_config(id, &ids);
            cluster.spawn(id);
        }
        for &id in &ids {
            cluster.wait_healthy(id).await;
        }
        if opts.init {
            cluster
                .cli(1, &["cluster", "init"])
                .await
                .assert_success("baa cluster init");
            cluster.wait_for_membership(&ids, &ids).await;
        }
        cluster
    }

    // ----- accessors -------------------------------------------------------------

    /// The cluster's temporary directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The PKI directory (`ca.pem`, `nodeN.pem`, `nodeN.key`).
    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }
    /// The cluster CA certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.pki_dir().join("ca.pem")
    }
    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.token
    }
    /// The `baa` binary in use.
    pub fn bin(&self) -> &Path {
        &self.bin
    }
    /// The options the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }
    /// An HTTPS client trusting the cluster CA (no client certificate).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
    /// Every node the harness created, running or not.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }
    /// Nodes whose process is running.
    pub fn running_ids(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }
    /// One node.
    pub fn node(&self, id: NodeId) -> &Node {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }
    fn node_mut(&mut self, id: NodeId) -> &mut Node {
        self.nodes
            .get_mut(&id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }
    /// `https://127.0.0.1:PORT` of a node's public listener.
    pub fn public_url(&self, id: NodeId) -> String {
        format!("https://{}", self.node(id).public_addr)
    }
    /// `https://127.0.0.1:PORT`: node `id`'s management listener (admin API, metrics).
    pub fn manage_url(&self, id: NodeId) -> String {
        format!("https://{}", self.node(id).manage_addr)
    }
    /// `https://login.baa.localtest:PORT`: node `id` as a browser reaches it.
    pub fn agency_url(&self, id: NodeId) -> String {
        format!("https://{AGENCY_HOST}:{}", self.node(id).public_addr.port())
    }
    /// The OIDC issuer every node is configured with (node 1's agency URL).
    pub fn issuer(&self) -> String {
        self.agency_url(1)
    }
    /// The node's cluster certificate and key as one PEM (its identity on the cluster port).
    pub fn node_identity_pem(&self, id: NodeId) -> Vec<u8> {
        let pki = self.pki_dir();
        client::identity_pem(
            &pki.join(format!("node{id}-cluster.pem")),
            &pki.join(format!("node{id}-cluster.key")),
        )
    }
    /// The CA that signs the certificates of the cluster port (nodes only).
    pub fn cluster_ca_pem(&self) -> PathBuf {
        self.pki_dir().join("cluster-ca.pem")
    }
    /// Issues a certificate for partner site `name` at `host`, as the demo does;
    /// returns it with its key as one PEM.
    pub async fn issue_site_identity(&self, name: &str, host: &str) -> Vec<u8> {
        let pki = self.pki_dir();
        run_baa(
            &self.bin,
            &[
                "pki",
                "issue",
                "--dir",
                path_str(&pki),
                "--name",
                name,
                "--san",
                host,
            ],
        )
        .await
        .assert_success("baa pki issue (site)");
        client::identity_pem(
            &pki.join(format!("{name}.pem")),
            &pki.join(format!("{name}.key")),
        )
    }
    /// Issues a node certificate for node `id` (which need not be a member);
    /// returns its cluster identity as one PEM.
    pub async fn issue_node_identity(&self, id: NodeId) -> Vec<u8> {
        let pki = self.pki_dir();
        run_baa(
            &self.bin,
            &[
                "pki",
                "issue",
                "--dir",
                path_str(&pki),
                "--node",
                &id.to_string(),
            ],
        )
        .await
        .assert_success("baa pki issue (node)");
        self.node_identity_pem(id)
    }
    /// An admin client of node `id`.
    pub fn admin(&self, id: NodeId) -> AdminClient {
        AdminClient::new(
            id,
            self.manage_url(id),
            self.token.clone(),
            self.http.clone(),
        )
    }
    /// An admin client of node `id` with its own request timeout.
    pub fn admin_with_timeout(&self, id: NodeId, timeout: Duration) -> AdminClient {
        let http = client::https_client(&self.ca_pem(), None, timeout);
        AdminClient::new(id, self.manage_url(id), self.token.clone(), http)
    }
    /// The node's log so far.
    pub fn log(&self, id: NodeId) -> String {
        std::fs::read(self.node(id).log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
    /// Panics if any node's log mentions a panic.
    pub fn assert_no_panics(&self) {
        for id in self.ids() {
            let log = self.log(id);
            if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
                panic!("node {id} panicked: {line}");
            }
        }
    }

    // ----- process control -------------------------------------------------------

    async fn create_node(&mut self, id: NodeId) {
        let dir = self.root.join(format!("node{id}"));
        std::fs::create_dir_all(dir.join("data")).expect("node dir");
        let public_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.fresh_port()));
        let manage_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.fresh_port()));
        let cluster_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, self.fresh_port()));
        let proxy = Proxy::start(cluster_listen).await.expect("starting proxy");
        let config_path = dir.join("baa.toml");
        self.nodes.insert(
            id,
            Node {
                id,
                dir,
                config_path,
                public_addr,
                manage_addr,
                cluster_listen,
                proxy,
                child: None,
            },
        );
    }

    fn fresh_port(&self) -> u16 {
        let mut used = self.used_ports.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let p = free_port();
            if used.insert(p) {
                return p;
            }
        }
    }

    fn write_config(&self, id: NodeId, peers: &[NodeId]) {
        let node = self.node(id);
        let pki = self.pki_dir();
        let o = &self.opts;
        let cfg = NodeConfig {
            node_id: id,
            data_dir: node.dir.join("data"),
            public_listen: node.public_addr.to_string(),
            cluster_listen: node.cluster_listen.to_string(),
            manage_listen: node.manage_addr.to_string(),
            cluster_advertise: node.cluster_advertise().to_string(),
            cluster_source_ip: proxy::source_ip(id).to_string(),
            admin_token: self.token.clone(),
            log_format: "text".into(),
            log_level: o.log_level.clone(),
            tls: TlsConfig {
                cert: pki.join(format!("node{id}.pem")),
                key: pki.join(format!("node{id}.key")),
                cluster_ca: pki.join("cluster-ca.pem"),
                cluster_cert: pki.join(format!("node{id}-cluster.pem")),
                cluster_key: pki.join(format!("node{id}-cluster.key")),
            },
            raft: RaftConfig {
                heartbeat_interval_ms: o.heartbeat_interval_ms,
                election_timeout_min_ms: o.election_timeout_min_ms,
                election_timeout_max_ms: o.election_timeout_max_ms,
                snapshot_after_logs: o.snapshot_after_logs,
                logs_to_keep: o.logs_to_keep,
                write_timeout_ms: o.write_timeout_ms,
            },
            limits: o.limits.clone(),
            sso: {
                let mut t = toml::Table::new();
                t.insert("agency".into(), AGENCY_NAME.into());
                t.insert("issuer".into(), self.issuer().into());
                t.insert("cookie_domain".into(), COOKIE_DOMAIN.into());
                // Partner sites and upstreams get certificates of the web CA.
                t.insert(
                    "partner_ca_file".into(),
                    path_str(&pki.join("ca.pem")).into(),
                );
                for (k, v) in &o.sso {
                    t.insert(k.clone(), v.clone());
                }
                t
            },
            peers: peers
                .iter()
                .filter(|&&p| p != id)
                .map(|&p| PeerConfig {
                    id: p,
                    public_addr: self.node(p).public_addr.to_string(),
                    cluster_addr: self.node(p).cluster_advertise().to_string(),
                })
                .collect(),
            gateway: o.gateway.clone(),
            forward_auth: o.forward_auth.clone(),
        };
        let text = toml::to_string(&cfg).expect("serialising node config");
        std::fs::write(&node.config_path, text).expect("writing node config");
    }

    fn spawn(&mut self, id: NodeId) {
        let bin = self.bin.clone();
        let node = self.node_mut(id);
        assert!(node.child.is_none(), "node {id} is already running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.log_path())
            .expect("node log");
        let log2 = log.try_clone().expect("node log");
        let child = std::process::Command::new(&bin)
            .arg("serve")
            .arg("--config")
            .arg(&node.config_path)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        node.child = Some(child);
    }

    /// Waits until `/healthz` of node `id` answers 200; panics (with the log tail) if
    /// the process exits first.
    pub async fn wait_healthy(&mut self, id: NodeId) {
        let admin = self.admin(id);
        let end = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self
                .node_mut(id)
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.node_mut(id).child = None;
                panic!(
                    "node {id} exited during start-up ({status}); log:\n{}",
                    tail(&self.node(id).log_path(), 40)
                );
            }
            if matches!(admin.healthz().await, Ok(StatusCode::OK)) {
                return;
            }
            assert!(
                Instant::now() < end,
                "node {id} not healthy after {START_DEADLINE:?}; log:\n{}",
                tail(&self.node(id).log_path(), 40)
            );
            tokio::time::sleep(crate::poll::POLL_INTERVAL).await;
        }
    }

    /// Waits until `/readyz` of node `id` answers 200.
    pub async fn wait_ready(&self, id: NodeId) {
        let admin = self.admin(id);
        poll_until(
            CONVERGE_DEADLINE,
            &format!("node {id} /readyz 200"),
            || async { matches!(admin.readyz().await, Ok(StatusCode::OK)).then_some(()) },
        )
        .await
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then wait for the exit (panics if the node does not stop in time).
    pub async fn stop(&mut self, id: NodeId) -> ExitStatus {
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        signal(child.id(), libc::SIGTERM);
        let end = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for node") {
                return status;
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not exit within {STOP_DEADLINE:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a stopped node again with the same config and data, and waits for `/healthz`.
    pub async fn restart(&mut self, id: NodeId) {
        self.spawn(id);
        self.wait_healthy(id).await;
    }

    /// Creates a new node `id` (certificate via `baa pki issue`, config, proxy), starts
    /// it and waits for `/healthz`. It is not a member until joined.
    pub async fn add_node(&mut self, id: NodeId) {
        assert!(!self.nodes.contains_key(&id), "node {id} exists");
        let pki = self.pki_dir();
        run_baa(
            &self.bin,
            &[
                "pki",
                "issue",
                "--dir",
                path_str(&pki),
                "--node",
                &id.to_string(),
                "--san",
                AGENCY_HOST,
            ],
        )
        .await
        .assert_success("baa pki issue");
        self.create_node(id).await;
        let peers = self.ids();
        self.write_config(id, &peers);
        self.spawn(id);
        self.wait_healthy(id).await;
    }

    // ----- CLI -------------------------------------------------------------------

    /// Runs `baa --url <node id's admin API> --ca <ca> --token <token> <args>`.
    pub async fn cli(&self, id: NodeId, args: &[&str]) -> CliOutput {
        let url = self.manage_url(id);
        let ca = self.ca_pem();
        let mut all: Vec<&str> = vec!["--url", &url, "--ca", path_str(&ca), "--token", &self.token];
        all.extend_from_slice(args);
        run_baa(&self.bin, &all).await
    }

    /// `baa cluster join` of node `id`, sent to node `via`.
    pub async fn join(&self, via: NodeId, id: NodeId, learner: bool) -> CliOutput {
        let (id_s, public, cluster) = (
            id.to_string(),
            self.node(id).public_addr.to_string(),
            self.node(id).cluster_advertise().to_string(),
        );
        let mut args = vec![
            "cluster",
            "join",
            "--id",
            &id_s,
            "--public-addr",
            &public,
            "--cluster-addr",
            &cluster,
        ];
        if learner {
            args.push("--learner");
        }
        self.cli(via, &args).await
    }

    /// `baa cluster leave --id id`, sent to node `via`.
    pub async fn leave(&self, via: NodeId, id: NodeId) -> CliOutput {
        self.cli(via, &["cluster", "leave", "--id", &id.to_string()])
            .await
    }

    // ----- observation -----------------------------------------------------------

    /// Node `id`'s status (panics if it does not answer).
    pub async fn status(&self, id: NodeId) -> ClusterStatus {
        self.admin(id)
            .status()
            .await
            .unwrap_or_else(|e| panic!("status of node {id}: {e}"))
    }

    /// The statuses of `ids` that answered.
    pub async fn statuses(&self, ids: &[NodeId]) -> Vec<ClusterStatus> {
        let futs = ids.iter().map(|&id| {
            let admin = self.admin(id);
            async move { admin.status().await.ok() }
        });
        futures::future::join_all(futs)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// The `/metrics` text of node `id`.
    pub async fn metrics(&self, id: NodeId) -> String {
        self.admin(id)
            .metrics()
            .await
            .unwrap_or_else(|e| panic!("metrics of node {id}: {e}"))
    }

    /// One metric of node `id` (see [`client::metric_value`]).
    pub async fn metric(&self, id: NodeId, name: &str) -> Option<f64> {
        client::metric_value(&self.metrics(id).await, name)
    }

    /// Polls the running nodes until one of them is leader and a majority of its
    /// voters report it as leader in the same term.
    pub async fn leader(&self) -> NodeId {
        self.leader_among(&self.running_ids()).await
    }

    /// Like [`Cluster::leader`], asking only `ids`.
    pub async fn leader_among(&self, ids: &[NodeId]) -> NodeId {
        poll_until(
            CONVERGE_DEADLINE,
            &format!("a leader agreed by a majority of {ids:?}"),
            || async { find_leader(&self.statuses(ids).await) },
        )
        .await
    }

    /// Polls until every node in `ids` reports the same leader and
    /// the leader's membership has exactly `voters` as voters. Returns the leader.
    pub async fn wait_for_membership(&self, ids: &[NodeId], voters: &[NodeId]) -> NodeId {
        let want: BTreeSet<NodeId> = voters.iter().copied().collect();
        poll_until(
            CONVERGE_DEADLINE,
            &format!("nodes {ids:?} agree on a leader with voters {want:?}"),
            || async {
                let st = self.statuses(ids).await;
                if st.len() != ids.len() {
                    return None;
                }
                let leader = find_leader(&st)?;
                let ls = st.iter().find(|s| s.node_id == leader)?;
                let agree = st.iter().all(|s| s.leader == Some(leader));
                (agree && ls.voters.iter().copied().collect::<BTreeSet<_>>() == want)
                    .then_some(leader)
            },
        )
        .await
    }

    /// Polls until every node in `ids` answers with the same applied index and
    /// digest; returns their statuses.
    pub async fn wait_converged(&self, ids: &[NodeId]) -> Vec<ClusterStatus> {
        poll_until(
            CONVERGE_DEADLINE,
            &format!("nodes {ids:?} at the same applied index and digest"),
            || async {
                let st = self.statuses(ids).await;
                let first = st.first()?;
                let same = st.len() == ids.len()
                    && first.applied_index.is_some()
                    && st.iter().all(|s| {
                        s.applied_index == first.applied_index && s.digest == first.digest
                    });
                same.then_some(st)
            },
        )
        .await
    }

    // ----- faults ----------------------------------------------------------------

    /// Cuts every cluster connection between `side_a` and `side_b` (both directions).
    /// Returns once existing connections across the cut are reset.
    pub async fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        let a: BTreeSet<NodeId> = side_a.iter().copied().collect();
        let b: BTreeSet<NodeId> = side_b.iter().copied().collect();
        assert!(a.is_disjoint(&b), "partition sides overlap: {a:?} {b:?}");
        for id in &a {
            self.node(*id).proxy.set_blocked(b.clone()).await;
        }
        for id in &b {
            self.node(*id).proxy.set_blocked(a.clone()).await;
        }
    }

    /// Cuts `id` off from every other node.
    pub async fn isolate(&self, id: NodeId) {
        let others: Vec<NodeId> = self.ids().into_iter().filter(|&o| o != id).collect();
        self.partition(&[id], &others).await;
    }

    /// Removes every partition.
    pub async fn heal(&self) {
        for node in self.nodes.values() {
            node.proxy.set_blocked(BTreeSet::new()).await;
        }
    }
}

/// The node that says it is leader and is named leader, in its term, by a
/// majority of its voters among `statuses`.
pub fn find_leader(statuses: &[ClusterStatus]) -> Option<NodeId> {
    statuses
        .iter()
        .filter(|s| s.state == "Leader" && s.voters.contains(&s.node_id))
        .find_map(|s| {
            let votes = statuses
                .iter()
                .filter(|t| {
                    t.leader == Some(s.node_id) && t.term == s.term && s.voters.contains(&t.node_id)
                })
                .count();
            (votes > s.voters.len() / 2).then_some(s.node_id)
        })
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let keep = std::thread::panicking() || std::env::var_os("BAA_KEEP_TEST_DIRS").is_some();
        if keep {
            if let Some(tmp) = self.tmp.take() {
                let path = tmp.keep();
                eprintln!("cluster directory kept: {}", path.display());
                for node in self.nodes.values() {
                    eprintln!(
                        "----- node {} log tail ({}) -----",
                        node.id,
                        node.log_path().display()
                    );
                    eprintln!("{}", tail(&node.log_path(), 30));
                }
            }
        }
    }
}

/// Opens a file for appending (used for child logs).
pub fn append_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_toml_shape() {
        let cfg = NodeConfig {
            node_id: 1,
            data_dir: "/tmp/x/node1/data".into(),
            public_listen: "127.0.0.1:1000".into(),
            cluster_listen: "127.0.0.1:1001".into(),
            manage_listen: "127.0.0.1:1003".into(),
            cluster_advertise: "127.0.0.1:1002".into(),
            cluster_source_ip: "127.0.0.11".into(),
            admin_token: "t".into(),
            log_format: "text".into(),
            log_level: "info".into(),
            tls: TlsConfig {
                cert: "/p/node1.pem".into(),
                key: "/p/node1.key".into(),
                cluster_ca: "/p/cluster-ca.pem".into(),
                cluster_cert: "/p/node1-cluster.pem".into(),
                cluster_key: "/p/node1-cluster.key".into(),
            },
            raft: RaftConfig {
                heartbeat_interval_ms: None,
                election_timeout_min_ms: None,
                election_timeout_max_ms: None,
                snapshot_after_logs: Some(200),
                logs_to_keep: None,
                write_timeout_ms: None,
            },
            limits: toml::Table::new(),
            sso: toml::Table::new(),
            peers: vec![PeerConfig {
                id: 2,
                public_addr: "127.0.0.1:2000".into(),
                cluster_addr: "127.0.0.1:2002".into(),
            }],
            gateway: Vec::new(),
            forward_auth: Vec::new(),
        };
        let text = toml::to_string(&cfg).unwrap();
        println!("{text}");
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["raft"]["snapshot_after_logs"].as_integer(), Some(200));
        assert!(v["raft"].get("logs_to_keep").is_none());
        assert_eq!(v["peers"][0]["id"].as_integer(), Some(2));
        assert_eq!(v["tls"]["cluster_ca"].as_str(), Some("/p/cluster-ca.pem"));
    }
}
