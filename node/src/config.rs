//! Node configuration: the TOML file an operator writes (every field
//! documented, unknown fields rejected) and the internal form the node runs on.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use baa_proto::model::{BaaNode, NodeId};
use serde::{Deserialize, Serialize};

/// The configuration file of one node (`baa serve --config FILE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// This node's Raft id: a positive integer, unique in the cluster, never reused.
    pub node_id: NodeId,
    /// Directory for the sled database and snapshot files. Created if missing.
    pub data_dir: PathBuf,
    /// Address of the public HTTPS listener (health, metrics, admin API, user pages).
    pub public_listen: SocketAddr,
    /// Address of the cluster listener (Raft RPC, forwarded writes; mutual TLS).
    pub cluster_listen: SocketAddr,
    /// Address of the management listener: the admin API and `/metrics`
    /// (HTTPS with the public certificate), off the public listener. Default
    /// `127.0.0.1:9443`: reachable from the node's own host only.
    #[serde(default = "default_manage_listen")]
    pub manage_listen: SocketAddr,
    /// `host:port` under which others reach the public listener. Default: `public_listen`.
    #[serde(default)]
    pub public_advertise: Option<String>,
    /// `host:port` under which peers reach the cluster listener. Default: `cluster_listen`.
    #[serde(default)]
    pub cluster_advertise: Option<String>,
    /// Local address that outgoing cluster connections bind to (multi-homed hosts). Default: any.
    #[serde(default)]
    pub cluster_source_ip: Option<IpAddr>,
    /// Bearer credential of the admin API. Prefer `admin_token_file` in production.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// File holding the admin credential (surrounding whitespace ignored).
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// `json` (default) or `text`. Logs go to standard error.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `tracing` filter, e.g. `info` or `baa_node=debug,info`. Default `info`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// TLS files.
    pub tls: TlsFiles,
    /// Raft tuning.
    #[serde(default)]
    pub raft: RaftTuning,
    /// Request limits.
    #[serde(default)]
    pub limits: Limits,
    /// The other initial members; `baa cluster init` makes them voters together with this node.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Single sign-on: agency name, issuer, cookie, lifetimes, throttling.
    #[serde(default)]
    pub sso: SsoConfig,
    /// Upstream apps served under `/gw/<name>/` to apps holding a token (`[[gateway]]`).
    #[serde(default)]
    pub gateway: Vec<GatewayApp>,
    /// Apps behind a reverse proxy that asks `/auth/verify?app=<name>`
    /// (`[[forward_auth]]`).
    #[serde(default)]
    pub forward_auth: Vec<ForwardAuthApp>,
    /// How this agency reaches the other agencies of its federation.
    #[serde(default)]
    pub federation: FederationConfig,
    /// Where the key-encryption key is, which wraps the agency's keys at rest.
    #[serde(default)]
    pub secrets: SecretsConfig,
}

/// `[secrets]`: the key-encryption key (KEK) under which the agency's keys
/// are kept at rest (see `kek`). Every node of a cluster has the same one;
/// each agency of a federation its own. The environment variables
/// `BAA_KEK` and `BAA_PREVIOUS_KEKS` take precedence over the files.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// File holding the current KEK: 32 random bytes as 64 hex digits or
    /// base64 (`baa kek new --out FILE`), readable by the node's user only;
    /// outside the data directory. Required unless `BAA_KEK` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kek_file: Option<PathBuf>,
    /// Files of previous KEKs, which still open what they wrapped until
    /// the leader has wrapped it again under the current one (rotation).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previous_kek_files: Vec<PathBuf>,
}

/// `[federation]`: how this agency reaches peer agencies.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationConfig {
    /// PEM roots trusted for peer agencies' HTTPS (their web CAs). Without
    /// it no peer can be reached: a node never trusts the system roots for
    /// a peer, nor its own cluster CA.
    pub ca_file: Option<PathBuf>,
    /// `HOST=IP` pairs: peers whose issuer names HOST are reached at IP (for
    /// test and demo host names that no DNS knows).
    pub resolve: Vec<String>,
    /// How often each node fetches its peers' configurations again, seconds.
    pub refresh_s: u64,
    /// How long a peer's word on one of its sessions (alive or not) is
    /// trusted before the peer is asked again, seconds (0 asks every time).
    pub cache_s: u64,
    /// How a peer's user gets an account here: `create` (made on first use)
    /// or `existing` (only accounts an administrator linked).
    pub link: LinkPolicy,
    /// `DOMAIN=ISSUER` pairs: a sign-in whose `login_hint` is `user@DOMAIN`
    /// goes to the peer agency ISSUER (a peer's own host name needs no pair).
    pub home_domains: Vec<String>,
}

/// How a peer agency's user is linked to a local account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LinkPolicy {
    /// A local account is made the first time the user comes.
    #[default]
    Create,
    /// Only accounts an administrator linked beforehand.
    Existing,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            ca_file: None,
            resolve: Vec::new(),
            refresh_s: 60,
            cache_s: 5,
            link: LinkPolicy::Create,
            home_domains: Vec::new(),
        }
    }
}

impl FederationConfig {
    /// The `home_domains` pairs, parsed: (domain in lower case, issuer).
    pub fn home_domains(&self) -> anyhow::Result<Vec<(String, String)>> {
        self.home_domains
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((d, i)) if !d.is_empty() && i.starts_with("https://") => {
                    Ok((d.to_ascii_lowercase(), i.to_string()))
                }
                _ => anyhow::bail!(
                    "federation.home_domains: expected DOMAIN=https://ISSUER, got {pair:?}"
                ),
            })
            .collect()
    }

    /// The `resolve` pairs, parsed.
    pub fn resolved(&self) -> anyhow::Result<Vec<(String, IpAddr)>> {
        self.resolve
            .iter()
            .map(|pair| match pair.split_once('=') {
                Some((host, ip)) if !host.is_empty() => {
                    ip.parse().map(|ip| (host.to_string(), ip)).map_err(|_| {
                        anyhow::anyhow!("federation.resolve: {ip:?} is not an IP address")
                    })
                }
                _ => anyhow::bail!("federation.resolve: expected HOST=IP, got {pair:?}"),
            })
            .collect()
    }
}

/// An app behind a reverse proxy (nginx `auth_request`, Traefik
/// ForwardAuth, Caddy `forward_auth`) that asks `/auth/verify?app=<name>`
/// whether a request may pass. Browsers get a session of their own on the
/// app's host, set through the agency (`/auth/start` → the app's
/// `/.baa/callback`, which the proxy sends to the agency's `/auth/callback`);
/// apps without a browser present a token of one of `accept_clients`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthApp {
    /// The app's name in `?app=`: 1-64 characters of `a-z 0-9 -`, unique.
    pub name: String,
    /// The app's origin as browsers reach it: `https://host[:port]`. Only
    /// URLs under it are redirect targets.
    pub origin: String,
    /// Clients whose access tokens the app takes (its audience): tokens of
    /// any other client, e.g. a web site's, are refused. Empty: browsers only.
    #[serde(default)]
    pub accept_clients: Vec<String>,
}

impl ForwardAuthApp {
    /// Checks one app's fields (names are checked for uniqueness by the caller).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            valid_app_name(&self.name),
            "forward_auth name {:?} must be 1-64 characters of a-z 0-9 -",
            self.name
        );
        let url = url::Url::parse(&self.origin)
            .map_err(|e| anyhow::anyhow!("forward_auth {}: origin is not a URL: {e}", self.name))?;
        anyhow::ensure!(
            url.scheme() == "https"
                && url.has_host()
                && url.origin().ascii_serialization() == self.origin,
            "forward_auth {}: origin must be https://host[:port] with nothing after it",
            self.name
        );
        Ok(())
    }
}

fn valid_app_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// An upstream app behind the gateway: requests to `/gw/<name>/<path>` that
/// carry an app's token are forwarded to `<upstream>/<path>` with a session
/// cookie signed by the agency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayApp {
    /// The app's name in the path: 1-64 characters of `a-z 0-9 -`, unique.
    pub name: String,
    /// Base URL requests are forwarded to: `http://` or `https://`, no query or fragment.
    pub upstream: String,
    /// Name of the session cookie the upstream expects.
    #[serde(default = "default_gateway_cookie_name")]
    pub cookie_name: String,
    /// Lifetime of the signed session assertion in that cookie, in seconds.
    #[serde(default = "default_gateway_cookie_ttl_s")]
    pub cookie_ttl_s: u64,
    /// Clients whose access tokens the gateway takes for this app (its
    /// audience; at least one): a token issued to anyone else, e.g. to a web
    /// site for its sign-in, is refused.
    pub accept_clients: Vec<String>,
}

fn default_gateway_cookie_name() -> String {
    "baa_session".into()
}

fn default_gateway_cookie_ttl_s() -> u64 {
    300
}

impl GatewayApp {
    /// Checks one app's fields (names are checked for uniqueness by the caller).
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            valid_app_name(&self.name),
            "gateway name {:?} must be 1-64 characters of a-z 0-9 -",
            self.name
        );
        anyhow::ensure!(
            !self.accept_clients.is_empty(),
            "gateway {}: accept_clients must name the clients whose tokens it takes",
            self.name
        );
        let url = url::Url::parse(&self.upstream)
            .map_err(|e| anyhow::anyhow!("gateway {}: upstream is not a URL: {e}", self.name))?;
        anyhow::ensure!(
            matches!(url.scheme(), "http" | "https")
                && url.has_host()
                && self.upstream.contains("://"),
            "gateway {}: upstream must be an absolute http:// or https:// URL",
            self.name
        );
        anyhow::ensure!(
            url.query().is_none()
                && url.fragment().is_none()
                && !self.upstream.contains(['?', '#']),
            "gateway {}: upstream must have no query or fragment",
            self.name
        );
        anyhow::ensure!(
            url.username().is_empty() && url.password().is_none(),
            "gateway {}: upstream must not carry credentials",
            self.name
        );
        // A cookie name is an RFC 7230 token.
        anyhow::ensure!(
            !self.cookie_name.is_empty()
                && self
                    .cookie_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)),
            "gateway {}: cookie_name must be a non-empty token (letters, digits, !#$%&'*+-.^_`|~)",
            self.name
        );
        anyhow::ensure!(
            self.cookie_ttl_s > 0,
            "gateway {}: cookie_ttl_s must be positive",
            self.name
        );
        Ok(())
    }
}

/// Checks every gateway app and that their names are unique.
pub fn validate_gateway(apps: &[GatewayApp], forward: &[ForwardAuthApp]) -> anyhow::Result<()> {
    let mut seen = std::collections::HashSet::new();
    for app in apps {
        app.validate()?;
        anyhow::ensure!(
            seen.insert(app.name.as_str()),
            "gateway name {:?} is used twice",
            app.name
        );
    }
    let mut seen = std::collections::HashSet::new();
    for app in forward {
        app.validate()?;
        anyhow::ensure!(
            seen.insert(app.name.as_str()),
            "forward_auth name {:?} is used twice",
            app.name
        );
    }
    Ok(())
}

/// Single-sign-on settings. Every node of an agency must use the same values
/// for `agency`, `issuer` and `cookie_domain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsoConfig {
    /// The agency's name, carried in its SSO cookies (1-64 of `A-Z a-z 0-9 - _`).
    pub agency: String,
    /// The OpenID Connect issuer URL (`https://host[:port]`, no trailing slash).
    /// Default: `https://<public_advertise>`.
    pub issuer: Option<String>,
    /// `Domain` of the SSO cookie (e.g. `baa.example`), shared with partner
    /// sites under it. Default: none (host-only cookie).
    pub cookie_domain: Option<String>,
    /// A session ends after this many seconds without use.
    pub session_idle_timeout_s: u64,
    /// A session ends this many seconds after sign-in whatever its use.
    pub session_lifetime_s: u64,
    /// Lifetime of a login ticket (authorization code), at most 60 s.
    pub ticket_ttl_s: u64,
    /// Lifetime of access and ID tokens.
    pub access_token_ttl_s: u64,
    /// Failed sign-ins are counted within windows of this many seconds.
    pub throttle_window_s: u64,
    /// Failures of one account name from one source address within a window
    /// that lock that pair (others can still sign in to the account): first
    /// for a sixteenth of `lockout_s`, twice as long at each further failure.
    pub max_account_failures: u32,
    /// Failures of one account name from all sources within a window that
    /// lock it for everyone: high, so that no outsider locks a user out.
    pub max_account_failures_all_sources: u32,
    /// Failures from one source address within a window that lock it.
    pub max_source_failures: u32,
    /// How long a lock lasts at most, in seconds.
    pub lockout_s: u64,
    /// Proxies (addresses or networks, e.g. `10.0.0.0/8`) whose
    /// `X-Forwarded-For` names the client: the source address of a request
    /// that came through them is the last address in it that is not one of
    /// them. Others' `X-Forwarded-For` is ignored.
    pub trusted_proxies: Vec<String>,
    /// PEM roots trusted for calls to partner sites (back-channel logout) and
    /// gateway upstreams over HTTPS. Without it such calls fail: the cluster
    /// CA is never trusted for them.
    pub partner_ca_file: Option<PathBuf>,
    /// A session used by an app through its token has its use recorded (its
    /// idle expiry slid) at most once per this many seconds.
    pub session_touch_interval_s: u64,
    /// Lifetime of a device code (RFC 8628).
    pub device_code_ttl_s: u64,
    /// Minimum seconds between device-code polls.
    pub device_poll_interval_s: u64,
}

impl Default for SsoConfig {
    fn default() -> Self {
        Self {
            agency: "baa".into(),
            issuer: None,
            cookie_domain: None,
            session_idle_timeout_s: 8 * 3600,
            session_lifetime_s: 24 * 3600,
            ticket_ttl_s: 60,
            access_token_ttl_s: 3600,
            throttle_window_s: 900,
            max_account_failures: 5,
            max_account_failures_all_sources: 100,
            max_source_failures: 50,
            lockout_s: 300,
            trusted_proxies: Vec::new(),
            partner_ca_file: None,
            session_touch_interval_s: 60,
            device_code_ttl_s: 600,
            device_poll_interval_s: 5,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

fn default_manage_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9443))
}

fn default_log_level() -> String {
    "info".into()
}

/// Paths of the PEM files this node uses. The public listener and the
/// cluster port have separate certificates from separate CAs: the cluster CA
/// must issue node certificates and nothing else (README, "Security model").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate (chain) of the public listener, naming the agency's host.
    pub cert: PathBuf,
    /// Private key of the public listener.
    pub key: PathBuf,
    /// The cluster CA: peers' certificates on the cluster port must chain to
    /// it. It must sign nothing but node certificates.
    pub cluster_ca: PathBuf,
    /// This node's cluster certificate (`CN=node<id>`, server and client
    /// authentication), from the cluster CA.
    pub cluster_cert: PathBuf,
    /// This node's cluster key.
    pub cluster_key: PathBuf,
    /// Replaced by `cluster_ca` (one CA for everything let any certificate it
    /// signed into the cluster); only read to say so.
    #[serde(default, skip_serializing)]
    pub ca_cert: Option<PathBuf>,
}

/// Raft timing and log compaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Leader heartbeat interval.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomised election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_logs: u64,
    /// Log entries kept behind the last snapshot before they are purged.
    pub logs_to_keep: u64,
    /// Build a snapshot when entries came since the last one and none was
    /// built for this many seconds, so that the disk follows the live state
    /// once a load stops.
    pub snapshot_idle_s: u64,
    /// After a snapshot, rebuild the state into a fresh database when its
    /// files take this many MiB more than twice the live records (the
    /// snapshot's size): sled keeps the space its peak took.
    pub state_rebuild_waste_mib: u64,
    /// Deadline of one client write, including forwarding and retries across a leader change.
    pub write_timeout_ms: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 150,
            election_timeout_min_ms: 800,
            election_timeout_max_ms: 1600,
            snapshot_after_logs: 10_000,
            logs_to_keep: 1_000,
            snapshot_idle_s: 120,
            state_rebuild_waste_mib: 16,
            write_timeout_ms: 10_000,
        }
    }
}

/// Request limits of the public listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted JSON body, in bytes.
    pub max_json_bytes: usize,
    /// Threads hashing and verifying passwords (argon2id, ~19 MiB each).
    /// 0 = one per CPU. Lower it when several nodes share a machine.
    pub password_hash_threads: usize,
    /// Password checks waiting for a hashing thread, at most; past it a
    /// sign-in gets 503 `temporarily_unavailable` with `Retry-After` instead
    /// of queueing without end. 0: 32 per thread.
    pub max_pending_hashes: usize,
    /// sled's page cache, in MiB: the bound on the memory the stored state
    /// may take beyond what is in use (the working set of a busy agency fits
    /// in a few MiB; more only saves disk reads).
    pub storage_cache_mib: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_json_bytes: 1024 * 1024,
            password_hash_threads: 0,
            max_pending_hashes: 0,
            storage_cache_mib: 32,
        }
    }
}

impl Limits {
    /// The size of the password-hashing pool.
    /// The bound on password checks waiting for a hashing thread.
    pub fn pending_hashes(&self) -> usize {
        match self.max_pending_hashes {
            0 => 32 * self.hash_threads(),
            n => n,
        }
    }

    /// The number of hashing threads.
    pub fn hash_threads(&self) -> usize {
        match self.password_hash_threads {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        }
    }
}

/// Another initial member of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Its node id.
    pub id: NodeId,
    /// Its public `host:port`.
    pub public_addr: String,
    /// Its cluster `host:port`.
    pub cluster_addr: String,
}

/// Command-line overrides of file settings.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Replaces `node_id`.
    pub node_id: Option<NodeId>,
    /// Replaces `data_dir`.
    pub data_dir: Option<PathBuf>,
    /// Replaces `public_listen`.
    pub public_listen: Option<SocketAddr>,
    /// Replaces `cluster_listen`.
    pub cluster_listen: Option<SocketAddr>,
    /// Replaces `log_level`.
    pub log_level: Option<String>,
}

/// The validated configuration a node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub node_id: NodeId,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Public listener.
    pub public_listen: SocketAddr,
    /// Address of the management listener (admin API, metrics).
    pub manage_listen: SocketAddr,
    /// Cluster listener.
    pub cluster_listen: SocketAddr,
    /// How others reach this node.
    pub advertise: BaaNode,
    /// Bind address for outgoing cluster connections.
    pub cluster_source_ip: Option<IpAddr>,
    /// The admin credential.
    pub admin_token: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// TLS files.
    pub tls: TlsFiles,
    /// Raft tuning.
    pub raft: RaftTuning,
    /// Request limits.
    pub limits: Limits,
    /// Initial peers.
    pub peers: Vec<Peer>,
    /// Single-sign-on settings, issuer resolved.
    pub sso: SsoConfig,
    /// `[sso] trusted_proxies`, parsed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// The OpenID Connect issuer URL.
    pub issuer: String,
    /// Upstream apps behind the gateway.
    pub gateway: Vec<GatewayApp>,
    /// Apps behind forward-auth proxies.
    pub forward_auth: Vec<ForwardAuthApp>,
    /// How peer agencies are reached.
    pub federation: FederationConfig,
    /// Where the key-encryption keys are (paths absolute).
    pub secrets: SecretsConfig,
}

impl Config {
    /// Reads, overrides and validates the configuration in `path`.
    pub fn load(path: &Path, overrides: Overrides) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let file: FileConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_file(file, overrides, base)
    }

    /// Validates a parsed file; relative paths are taken relative to `base`.
    pub fn from_file(mut f: FileConfig, o: Overrides, base: &Path) -> anyhow::Result<Self> {
        if let Some(v) = o.node_id {
            f.node_id = v;
        }
        if let Some(v) = o.data_dir {
            f.data_dir = v;
        }
        if let Some(v) = o.public_listen {
            f.public_listen = v;
        }
        if let Some(v) = o.cluster_listen {
            f.cluster_listen = v;
        }
        if let Some(v) = o.log_level {
            f.log_level = v;
        }
        anyhow::ensure!(f.node_id > 0, "node_id must be a positive integer");
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        let admin_token = match (&f.admin_token, &f.admin_token_file) {
            (Some(t), None) => t.clone(),
            (None, Some(p)) => std::fs::read_to_string(abs(p))
                .with_context(|| format!("reading admin_token_file {}", p.display()))?
                .trim()
                .to_string(),
            (Some(_), Some(_)) => anyhow::bail!("set admin_token or admin_token_file, not both"),
            (None, None) => anyhow::bail!("admin_token or admin_token_file is required"),
        };
        anyhow::ensure!(
            admin_token.len() >= 16,
            "the admin credential must be at least 16 characters"
        );
        let r = &f.raft;
        anyhow::ensure!(
            r.heartbeat_interval_ms > 0,
            "raft.heartbeat_interval_ms must be positive"
        );
        anyhow::ensure!(
            r.heartbeat_interval_ms < r.election_timeout_min_ms
                && r.election_timeout_min_ms < r.election_timeout_max_ms,
            "need raft.heartbeat_interval_ms < election_timeout_min_ms < election_timeout_max_ms"
        );
        anyhow::ensure!(
            r.snapshot_after_logs > 0,
            "raft.snapshot_after_logs must be positive"
        );
        anyhow::ensure!(
            r.snapshot_idle_s >= 10,
            "raft.snapshot_idle_s must be at least 10"
        );
        anyhow::ensure!(
            r.write_timeout_ms >= 100,
            "raft.write_timeout_ms must be at least 100"
        );
        for p in &f.peers {
            anyhow::ensure!(p.id != f.node_id, "peer {} has this node's own id", p.id);
        }
        let sso = &f.sso;
        anyhow::ensure!(
            baa_proto::cookie::valid_label(&sso.agency),
            "sso.agency must be 1-64 characters of A-Z a-z 0-9 - _"
        );
        anyhow::ensure!(
            (1..=60).contains(&sso.ticket_ttl_s),
            "sso.ticket_ttl_s must be 1-60"
        );
        anyhow::ensure!(
            sso.session_idle_timeout_s > 0 && sso.session_lifetime_s > 0,
            "sso session timeouts must be positive"
        );
        anyhow::ensure!(
            sso.access_token_ttl_s > 0 && sso.throttle_window_s > 0,
            "sso.access_token_ttl_s and sso.throttle_window_s must be positive"
        );
        anyhow::ensure!(
            sso.max_account_failures > 0 && sso.max_source_failures > 0,
            "sso failure limits must be positive"
        );
        if let Some(d) = &sso.cookie_domain {
            anyhow::ensure!(
                d.contains('.')
                    && !d.starts_with('.')
                    && d.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'),
                "sso.cookie_domain must be a host name with at least two labels"
            );
        }
        let public_addr = f
            .public_advertise
            .clone()
            .unwrap_or_else(|| f.public_listen.to_string());
        let issuer = match &sso.issuer {
            Some(i) => i.trim_end_matches('/').to_string(),
            None => format!("https://{public_addr}"),
        };
        anyhow::ensure!(
            issuer.starts_with("https://") && !issuer.contains(['?', '#']),
            "sso.issuer must be an https URL without query or fragment"
        );
        anyhow::ensure!(
            f.tls.ca_cert.is_none(),
            "tls.ca_cert is no longer read: the cluster port takes its own CA, which must issue \
             node certificates only (tls.cluster_ca, tls.cluster_cert, tls.cluster_key; \
             `baa pki init` makes both CAs). See README, \"Security model\""
        );
        validate_gateway(&f.gateway, &f.forward_auth)?;
        let trusted_proxies = sso
            .trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| {
                        anyhow::anyhow!("sso.trusted_proxies: {p:?} is not an address or network")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut sso = f.sso.clone();
        sso.partner_ca_file = sso.partner_ca_file.as_deref().map(abs);
        let mut federation = f.federation.clone();
        federation.ca_file = federation.ca_file.as_deref().map(abs);
        federation.resolved()?;
        anyhow::ensure!(
            (1..=86_400).contains(&federation.refresh_s),
            "federation.refresh_s must be 1 to 86400 seconds"
        );
        federation.home_domains()?;
        anyhow::ensure!(
            federation.cache_s <= 60,
            "federation.cache_s must be 0 to 60 seconds: it bounds how long a peer's \
             ended session is still honoured here"
        );
        Ok(Config {
            node_id: f.node_id,
            data_dir: abs(&f.data_dir),
            public_listen: f.public_listen,
            manage_listen: f.manage_listen,
            cluster_listen: f.cluster_listen,
            advertise: BaaNode {
                public_addr: f
                    .public_advertise
                    .unwrap_or_else(|| f.public_listen.to_string()),
                cluster_addr: f
                    .cluster_advertise
                    .unwrap_or_else(|| f.cluster_listen.to_string()),
            },
            cluster_source_ip: f.cluster_source_ip,
            admin_token,
            log_format: f.log_format,
            log_level: f.log_level,
            tls: TlsFiles {
                cert: abs(&f.tls.cert),
                key: abs(&f.tls.key),
                cluster_ca: abs(&f.tls.cluster_ca),
                cluster_cert: abs(&f.tls.cluster_cert),
                cluster_key: abs(&f.tls.cluster_key),
                ca_cert: None,
            },
            raft: f.raft,
            limits: f.limits,
            peers: f.peers,
            sso,
            trusted_proxies,
            issuer,
            gateway: f.gateway,
            forward_auth: f.forward_auth,
            federation,
            secrets: SecretsConfig {
                kek_file: f.secrets.kek_file.as_deref().map(abs),
                previous_kek_files: f
                    .secrets
                    .previous_kek_files
                    .iter()
                    .map(|p| abs(p))
                    .collect(),
            },
        })
    }

    /// The write deadline.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.raft.write_timeout_ms)
    }

    /// The bound on one forwarding of writes to the leader: about one
    /// election timeout, so a write sent to a follower moves on to a new
    /// leader when the old one stops answering, long before `write_timeout`.
    pub fn forward_attempt_timeout(&self) -> Duration {
        Duration::from_millis(
            self.raft
                .election_timeout_max_ms
                .min(self.raft.write_timeout_ms),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        node_id = 1
        data_dir = "data"
        public_listen = "127.0.0.1:8441"
        cluster_listen = "127.0.0.1:9441"
        admin_token = "0123456789abcdef0123"
        [tls]
        cert = "pki/node1.pem"
        key = "pki/node1.key"
        cluster_ca = "pki/cluster-ca.pem"
        cluster_cert = "pki/node1-cluster.pem"
        cluster_key = "pki/node1-cluster.key"
    "#;

    #[test]
    fn minimal_file_gets_defaults_and_absolute_paths() {
        let f: FileConfig = toml::from_str(MINIMAL).unwrap();
        let c = Config::from_file(f, Overrides::default(), Path::new("/etc/baa")).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/etc/baa/data"));
        assert_eq!(c.advertise.cluster_addr, "127.0.0.1:9441");
        assert_eq!(c.raft.write_timeout_ms, 10_000);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let text = format!("{MINIMAL}\nbogus = 1\n");
        assert!(toml::from_str::<FileConfig>(&text).is_err());
    }

    #[test]
    fn overrides_win() {
        let f: FileConfig = toml::from_str(MINIMAL).unwrap();
        let o = Overrides {
            node_id: Some(7),
            ..Default::default()
        };
        assert_eq!(Config::from_file(f, o, Path::new("/")).unwrap().node_id, 7);
    }

    #[test]
    fn one_ca_for_everything_is_refused_with_a_pointer() {
        let text = MINIMAL.replace("[tls]", "[tls]\nca_cert = \"pki/ca.pem\"");
        let f: FileConfig = toml::from_str(&text).unwrap();
        let e = Config::from_file(f, Overrides::default(), Path::new("/")).unwrap_err();
        assert!(e.to_string().contains("tls.cluster_ca"), "{e}");
    }

    #[test]
    fn short_admin_token_is_refused() {
        let f: FileConfig =
            toml::from_str(&MINIMAL.replace("0123456789abcdef0123", "short")).unwrap();
        assert!(Config::from_file(f, Overrides::default(), Path::new("/")).is_err());
    }

    fn with_gateway(extra: &str) -> anyhow::Result<Config> {
        let f: FileConfig = toml::from_str(&format!("{MINIMAL}\n{extra}"))?;
        Config::from_file(f, Overrides::default(), Path::new("/"))
    }

    #[test]
    fn gateway_apps_get_defaults() {
        let c = with_gateway(
            "[[gateway]]\nname = \"wiki\"\nupstream = \"http://127.0.0.1:9000/base/\"\naccept_clients = [\"baa-cli\"]\n",
        )
        .unwrap();
        assert_eq!(c.gateway.len(), 1);
        assert_eq!(c.gateway[0].cookie_name, "baa_session");
        assert_eq!(c.gateway[0].cookie_ttl_s, 300);
        assert!(with_gateway("").unwrap().gateway.is_empty());
    }

    #[test]
    fn gateway_apps_are_validated() {
        let app = |name: &str, upstream: &str| {
            format!(
                "[[gateway]]\nname = \"{name}\"\nupstream = \"{upstream}\"\naccept_clients = [\"baa-cli\"]\n"
            )
        };
        let ok = "http://app.internal:8080";
        assert!(with_gateway(&app("a-1", "https://app.internal/x")).is_ok());
        for bad in [
            app("", ok),
            app("Wiki", ok),
            app("wi_ki", ok),
            app("wiki/x", ok),
            app(&"a".repeat(65), ok),
            app("wiki", "ftp://app.internal/"),
            app("wiki", "/relative"),
            app("wiki", "app.internal:8080"),
            app("wiki", "http://app.internal/?q=1"),
            app("wiki", "http://app.internal/#top"),
            app("wiki", "http://user:pw@app.internal/"),
            format!("{}{}", app("wiki", ok), app("wiki", ok)),
            format!("{}cookie_name = \"a b\"\n", app("wiki", ok)),
            format!("{}cookie_ttl_s = 0\n", app("wiki", ok)),
            app("wiki", ok).replace("accept_clients = [\"baa-cli\"]\n", ""),
            app("wiki", ok).replace("[\"baa-cli\"]", "[]"),
        ] {
            assert!(with_gateway(&bad).is_err(), "accepted {bad}");
        }
        let unknown = format!("{}bogus = 1\n", app("wiki", ok));
        assert!(toml::from_str::<FileConfig>(&format!("{MINIMAL}\n{unknown}")).is_err());
    }

    #[test]
    fn forward_auth_apps_are_validated() {
        let app = |name: &str, origin: &str| {
            format!("[[forward_auth]]\nname = \"{name}\"\norigin = \"{origin}\"\n")
        };
        let c = with_gateway(&app("wiki", "https://wiki.example.org")).unwrap();
        assert_eq!(c.forward_auth[0].origin, "https://wiki.example.org");
        assert!(c.forward_auth[0].accept_clients.is_empty());
        assert!(with_gateway(&app("wiki", "https://wiki.example.org:8443")).is_ok());
        let ok = "https://wiki.example.org";
        for bad in [
            app("", ok),
            app("Wiki", ok),
            app("wiki", "http://wiki.example.org"),
            app("wiki", "https://wiki.example.org/"),
            app("wiki", "https://wiki.example.org/x"),
            app("wiki", "wiki.example.org"),
            format!(
                "{}{}",
                app("wiki", ok),
                app("wiki", "https://other.example.org")
            ),
            format!("{}bogus = 1\n", app("wiki", ok)),
        ] {
            assert!(with_gateway(&bad).is_err(), "accepted {bad}");
        }
    }

    /// The three shipped example nodes parse, each names the other two as
    /// peers at the addresses they advertise, and they agree on everything
    /// an agency's nodes must share.
    #[test]
    fn shipped_examples_make_one_agency() {
        let texts = [
            include_str!("../../ops/examples/node1.toml"),
            include_str!("../../ops/examples/node2.toml"),
            include_str!("../../ops/examples/node3.toml"),
        ];
        let files: Vec<FileConfig> = texts.iter().map(|t| toml::from_str(t).unwrap()).collect();
        let tables: Vec<toml::Table> = texts.iter().map(|t| toml::from_str(t).unwrap()).collect();
        for (i, f) in files.iter().enumerate() {
            let id = i as u64 + 1;
            assert_eq!(tables[i]["node_id"].as_integer(), Some(id as i64));
            assert!(f.secrets.kek_file.is_some(), "node {id} names its KEK");
            let peers: Vec<u64> = f.peers.iter().map(|p| p.id).collect();
            let others: Vec<u64> = (1..=3).filter(|o| *o != id).collect();
            assert_eq!(peers, others, "node {id}'s peers");
            for p in &f.peers {
                let other = &tables[p.id as usize - 1];
                assert_eq!(
                    Some(p.cluster_addr.as_str()),
                    other["cluster_advertise"].as_str(),
                    "node {id}'s peer {}",
                    p.id
                );
            }
            for shared in ["raft", "limits", "sso", "secrets", "admin_token_file"] {
                assert_eq!(
                    tables[i].get(shared),
                    tables[0].get(shared),
                    "node {id}: {shared}"
                );
            }
        }
    }

    #[test]
    fn kek_files_are_taken_relative_to_the_file() {
        let f: FileConfig = toml::from_str(&format!(
            "{MINIMAL}\n[secrets]\nkek_file = \"kek\"\nprevious_kek_files = [\"/k/old\"]\n"
        ))
        .unwrap();
        let c = Config::from_file(f, Overrides::default(), Path::new("/etc/baa")).unwrap();
        assert_eq!(c.secrets.kek_file, Some(PathBuf::from("/etc/baa/kek")));
        assert_eq!(c.secrets.previous_kek_files, vec![PathBuf::from("/k/old")]);
        let bad = format!("{MINIMAL}\n[secrets]\nkek = \"00\"\n");
        assert!(toml::from_str::<FileConfig>(&bad).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// TOML-ish text either fails to parse or parses to a file that
        /// validates or is refused, never a panic; a parsed file writes
        /// out to a fixed point.
        #[test]
        fn config_text_never_panics(
            extra in "(([a-z_]{1,12}|\\[[a-z_.]{1,10}\\]) ?= ?(\"[ -~]{0,10}\"|[0-9-]{1,6}|true|\\[\\]|\\{\\})\n){0,6}",
            drop in 0usize..40,
        ) {
            let mut lines: Vec<&str> = MINIMAL.lines().collect();
            if drop < lines.len() {
                lines.remove(drop);
            }
            let text = format!("{}\n{extra}", lines.join("\n"));
            if let Ok(f) = toml::from_str::<FileConfig>(&text) {
                let once = toml::to_string(&f).unwrap();
                let back: FileConfig = toml::from_str(&once).unwrap();
                proptest::prop_assert_eq!(toml::to_string(&back).unwrap(), once);
                if f.admin_token_file.is_none() {
                    let _ = Config::from_file(f, Overrides::default(), Path::new("/nonexistent"));
                }
            }
        }
    }
}
