//! The harness's configuration: deadlines, cluster options, the names the
//! tests use (agency host, cookie domain, the default forward-auth app), and
//! each node's `baa serve` configuration file.

use super::*;

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
    /// `[raft] snapshot_idle_s`.
    pub snapshot_idle_s: Option<u64>,
    /// `[raft] state_rebuild_waste_mib`.
    pub state_rebuild_waste_mib: Option<u64>,
    /// `log_format` (`text` unless set).
    pub log_format: Option<String>,
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
    /// `[federation]` settings (`ca_file`, `resolve`).
    pub federation: toml::Table,
    /// The agency's host name (its certificates, issuer and browser URLs).
    pub host: String,
    /// Use a copy of this key-encryption key file (another cluster's)
    /// instead of a new one.
    pub kek_from: Option<PathBuf>,
    /// Seed every node's data directory from this backup (`baa restore`)
    /// before it starts; goes with `init: false`.
    pub restore_from: Option<PathBuf>,
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

/// The `[[gateway]]` app `app` in front of a local upstream on `port`,
/// taking tokens of the `baa-cli` client (the app tests' usual setup).
pub fn cli_gateway_app(port: u16) -> toml::Table {
    app_table(
        "app",
        "upstream",
        &format!("http://127.0.0.1:{port}"),
        &["baa-cli"],
    )
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
            snapshot_idle_s: None,
            state_rebuild_waste_mib: None,
            log_format: None,
            write_timeout_ms: None,
            sso: toml::Table::new(),
            limits: toml::Table::new(),
            gateway: Vec::new(),
            forward_auth: vec![app_table(TOOLS_APP, "origin", TOOLS_ORIGIN, &["baa-cli"])],
            federation: toml::Table::new(),
            host: AGENCY_HOST.into(),
            kek_from: None,
            restore_from: None,
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
    #[serde(skip_serializing_if = "toml::Table::is_empty")]
    federation: toml::Table,
    secrets: SecretsConfig,
}

#[derive(Serialize)]
struct SecretsConfig {
    kek_file: PathBuf,
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
    snapshot_idle_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_rebuild_waste_mib: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    write_timeout_ms: Option<u64>,
}

#[derive(Serialize)]
struct PeerConfig {
    id: NodeId,
    public_addr: String,
    cluster_addr: String,
}

impl Cluster {
    pub(super) fn write_config(&self, id: NodeId, peers: &[NodeId]) {
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
            log_format: o.log_format.clone().unwrap_or_else(|| "text".into()),
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
                snapshot_idle_s: o.snapshot_idle_s,
                state_rebuild_waste_mib: o.state_rebuild_waste_mib,
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
            federation: o.federation.clone(),
            secrets: SecretsConfig {
                kek_file: self.kek_file(),
            },
        };
        let text = toml::to_string(&cfg).expect("serialising node config");
        std::fs::write(&node.config_path, text).expect("writing node config");
    }
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
                snapshot_idle_s: None,
                state_rebuild_waste_mib: None,
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
            federation: toml::Table::new(),
            secrets: SecretsConfig {
                kek_file: "/tmp/x/kek".into(),
            },
        };
        let text = toml::to_string(&cfg).unwrap();
        println!("{text}");
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["raft"]["snapshot_after_logs"].as_integer(), Some(200));
        assert!(v["raft"].get("logs_to_keep").is_none());
        assert_eq!(v["peers"][0]["id"].as_integer(), Some(2));
        assert_eq!(v["tls"]["cluster_ca"].as_str(), Some("/p/cluster-ca.pem"));
        assert_eq!(v["secrets"]["kek_file"].as_str(), Some("/tmp/x/kek"));
    }
}
