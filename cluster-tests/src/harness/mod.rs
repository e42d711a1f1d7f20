//! A cluster of real `baa serve` processes on loopback, each behind a TCP proxy
//! the harness controls (see [`crate::proxy`]): the `Cluster` and its nodes,
//! their addresses and clients, and waiting for leaders and convergence.
//! Configuration, processes, faults and certificates have files of their own.

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

mod config;
mod faults;
mod pki;
mod process;

pub use config::*;
pub use faults::*;
pub use process::*;

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
    /// The file the node's test clock offset is read from (see
    /// [`Cluster::set_clock_offset`]).
    pub fn clock_offset_path(&self) -> PathBuf {
        self.dir.join("clock-offset")
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
                &opts.host,
            ],
        )
        .await
        .assert_success("baa pki init");
        // One key-encryption key for the cluster, beside its PKI.
        match &opts.kek_from {
            Some(from) => {
                std::fs::copy(from, root.join("kek")).expect("copying the KEK");
            }
            None => {
                run_baa(&bin, &["kek", "new", "--out", path_str(&root.join("kek"))])
                    .await
                    .assert_success("baa kek new");
            }
        }
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
        }
        if let Some(backup) = &opts.restore_from {
            for &id in &ids {
                let config = cluster.node(id).config_path().to_path_buf();
                let out = run_baa(
                    &cluster.bin,
                    &["restore", path_str(backup), "--config", path_str(&config)],
                )
                .await;
                out.assert_success("baa restore");
                eprintln!("node {id}: {}", out.stdout.trim());
            }
        }
        for &id in &ids {
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
    /// The cluster's key-encryption key file (`[secrets] kek_file` of
    /// every node), outside every node's directory.
    pub fn kek_file(&self) -> PathBuf {
        self.root.join("kek")
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
        format!(
            "https://{}:{}",
            self.opts.host,
            self.node(id).public_addr.port()
        )
    }
    /// The agency's host name, as browsers reach it.
    pub fn host(&self) -> &str {
        &self.opts.host
    }
    /// The OIDC issuer every node is configured with (node 1's agency URL).
    pub fn issuer(&self) -> String {
        self.agency_url(1)
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

    /// Creates a new node `id` (certificate via `baa pki issue`, config, proxy), starts
    /// it and waits for `/healthz`. It is not a member until joined.
    pub async fn add_node(&mut self, id: NodeId) {
        assert!(!self.nodes.contains_key(&id), "node {id} exists");
        let host = self.opts.host.clone();
        self.pki_issue(&["--node", &id.to_string(), "--san", &host])
            .await;
        self.create_node(id).await;
        let peers = self.ids();
        self.write_config(id, &peers);
        self.spawn(id);
        self.wait_healthy(id).await;
    }

    // ----- CLI -------------------------------------------------------------------

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

    /// The leader's last log index (0 before any entry): what a test
    /// compares to show a request wrote nothing.
    pub async fn last_log_index(&self) -> u64 {
        let leader = self.leader().await;
        self.status(leader).await.last_log_index.unwrap_or(0)
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
                    && !first.digest.is_empty()
                    && st.iter().all(|s| {
                        s.applied_index == first.applied_index && s.digest == first.digest
                    });
                same.then_some(st)
            },
        )
        .await
    }

    // ----- faults ----------------------------------------------------------------
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
