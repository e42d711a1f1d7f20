//! One schedule from start to verdict: a fresh cluster with small snapshot
//! and purge thresholds, users and a partner site, the load started, the
//! plan's faults injected and undone one after another, the load stopped,
//! the cluster healed and converged (same applied index and state digest
//! on every node), then the history checked and its expectations probed on
//! every node.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use baa_proto::command::Consistency;
use baa_proto::model::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;

use super::checker::{expectations, history_violations, Expectations, Violation};
use super::history::{counts, Action, Counts, Entities, History, Op, Outcome};
use super::peer_load::{PeerLoad, PeerTarget};
use super::plan::{
    Fault, Plan, Target as PlanTarget, ELECTION_TIMEOUT_MAX_MS, ELECTION_TIMEOUT_MIN_MS,
    HEARTBEAT_MS,
};
use super::workload::{by_status, transport, Target, Workload, CLIENT_TIMEOUT, PASSWORD, SCOPES};
use crate::bench::client_with_timeout;
use crate::federation::Federation;
use crate::harness::{find_leader, CliOutput, Cluster, ClusterOptions, CONVERGE_DEADLINE};
use crate::poll::try_poll_until;
use crate::sso::{self, Agent, AuthRequest, TestSite};

/// A new snapshot after this many log entries: several per schedule.
pub const SNAPSHOT_AFTER_LOGS: u64 = 40;
/// Entries kept behind a snapshot: a node down for a second falls behind them.
pub const LOGS_TO_KEEP: u64 = 10;
/// The nodes' write deadline, below the clients' timeout.
pub const WRITE_TIMEOUT_MS: u64 = 3_000;
/// How long a healed cluster may take to show what the history implies
/// (a sign-out reaching every node's cookie cache included).
pub const SETTLE: Duration = Duration::from_secs(10);
/// Session workers of the load.
pub const SESSION_WORKERS: usize = 3;
/// Users of the load.
const USERS: usize = 4;

/// What a schedule did and found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The plan.
    pub plan: Plan,
    /// The faults as injected (targets resolved).
    pub faults: Vec<String>,
    /// Outcome counts over all operations.
    pub counts: Counts,
    /// Outcome counts by action.
    pub by_action: BTreeMap<&'static str, Counts>,
    /// Snapshots installed, over all nodes and restarts.
    pub snapshots_installed: u64,
    /// The leader's purged log index at the end.
    pub purged_index: Option<u64>,
    /// The applied index at the end.
    pub applied_index: Option<u64>,
    /// What was probed on the healed cluster.
    pub probed: Probed,
    /// Broken promises.
    pub violations: Vec<Violation>,
    /// Wall time of the whole schedule, cluster start to verdict.
    pub took: Duration,
}

/// Sizes of what the final probes covered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Probed {
    /// Sessions that had to be valid on every node.
    pub live_sessions: usize,
    /// Sessions that had to be refused on every node.
    pub ended_sessions: usize,
    /// Refresh tokens that had to rotate.
    pub live_heirs: usize,
    /// Refresh tokens that had to be refused.
    pub dead_heirs: usize,
    /// Tickets that had to stay spent.
    pub spent_codes: usize,
    /// Users that had to exist (or not).
    pub users: usize,
    /// Counter attributes acknowledged.
    pub acked_writes: usize,
    /// Sessions derived at A that had to be valid on every node of A.
    pub live_derived: usize,
    /// Sessions derived at A that had to be refused there (B signed out).
    pub ended_derived: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.counts;
        writeln!(
            f,
            "seed {}: {} ops (ok {}, fail {}, unknown {}), {} faults, {} snapshots installed, log purged to {:?} of {:?}, {} violations, {:.1} s",
            self.plan.seed,
            c.ops,
            c.ok,
            c.fail,
            c.unknown,
            self.faults.len(),
            self.snapshots_installed,
            self.purged_index,
            self.applied_index,
            self.violations.len(),
            self.took.as_secs_f64()
        )?;
        writeln!(f, "  faults: {}", self.faults.join("; "))?;
        let by: Vec<String> = self
            .by_action
            .iter()
            .map(|(a, c)| format!("{a} {}/{}/{}", c.ok, c.fail, c.unknown))
            .collect();
        writeln!(f, "  ok/fail/unknown by operation: {}", by.join(", "))?;
        let p = &self.probed;
        write!(
            f,
            "  probed after healing: {} live and {} signed-out sessions, {} live and {} dead refresh tokens, {} spent tickets, {} users, {} acknowledged writes",
            p.live_sessions, p.ended_sessions, p.live_heirs, p.dead_heirs, p.spent_codes, p.users, p.acked_writes
        )?;
        if p.live_derived + p.ended_derived > 0 {
            write!(
                f,
                "; {} live and {} ended sessions derived from B's",
                p.live_derived, p.ended_derived
            )?;
        }
        for v in &self.violations {
            write!(f, "\n  VIOLATION {v}")?;
        }
        Ok(())
    }
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::SignIn { .. } => "sign-in",
        Action::Issue { .. } => "issue",
        Action::Redeem { .. } => "redeem",
        Action::Refresh { .. } => "refresh",
        Action::Logout { .. } => "logout",
        Action::CreateUser { .. } => "create-user",
        Action::Write { .. } => "write",
        Action::Read => "read",
        Action::PeerSignIn { .. } => "sign-in at B",
        Action::CrossSignIn { .. } => "sign-in at A through B",
        Action::PeerLogout { .. } => "logout at B",
    }
}

/// The cluster options of every schedule.
pub fn options(nodes: u64) -> ClusterOptions {
    ClusterOptions {
        heartbeat_interval_ms: Some(HEARTBEAT_MS),
        election_timeout_min_ms: Some(ELECTION_TIMEOUT_MIN_MS),
        election_timeout_max_ms: Some(ELECTION_TIMEOUT_MAX_MS),
        snapshot_after_logs: Some(SNAPSHOT_AFTER_LOGS),
        logs_to_keep: Some(LOGS_TO_KEEP),
        write_timeout_ms: Some(WRITE_TIMEOUT_MS),
        ..ClusterOptions::nodes(nodes)
    }
}

/// Runs the schedule of `seed` on a fresh cluster of `nodes` nodes.
/// Panics (the cluster directory and log tails kept) if the cluster does
/// not come back: a node that cannot restart, no leader, no convergence.
pub async fn run(seed: u64, nodes: u64, budget: Duration) -> Report {
    let started = Instant::now();
    let plan = Plan::generate(seed, nodes, budget);
    println!("{plan}");
    let mut cluster = Cluster::start_with(options(nodes)).await;
    run_on(plan, &mut cluster, None, started).await
}

/// Runs the schedule of `seed` over two federated agencies of 3 nodes
/// each, A and B: each step's fault hits A or B (drawn from the seed too),
/// A's load runs as in [`run`], and cross-agency workers sign in at B and
/// then at A through B, and sign out at B. Panics as [`run`] does.
pub async fn run_federated(seed: u64, budget: Duration) -> Report {
    let started = Instant::now();
    let plan = Plan::generate(seed, 3, budget);
    println!("{plan} (federated)");
    let schedule = options(3);
    let mut fed = Federation::start(|o| {
        o.heartbeat_interval_ms = schedule.heartbeat_interval_ms;
        o.election_timeout_min_ms = schedule.election_timeout_min_ms;
        o.election_timeout_max_ms = schedule.election_timeout_max_ms;
        o.snapshot_after_logs = schedule.snapshot_after_logs;
        o.logs_to_keep = schedule.logs_to_keep;
        o.write_timeout_ms = schedule.write_timeout_ms;
    })
    .await;
    let bundle = fed.ca_bundle();
    let Federation { a, b, .. } = &mut fed;
    run_on(plan, a, Some((b, bundle)), started).await
}

/// B's users in a federated schedule.
const PEER_USERS: usize = 3;
/// Cross-agency workers in a federated schedule.
const PEER_WORKERS: usize = 2;

async fn run_on(
    plan: Plan,
    a: &mut Cluster,
    mut b: Option<(&mut Cluster, std::path::PathBuf)>,
    started: Instant,
) -> Report {
    let seed = plan.seed;
    let target = setup(a, seed).await;
    let history = History::new();
    let load = Workload::start(target.clone(), history.clone(), SESSION_WORKERS);
    let peer_load = match &b {
        Some((b, ca_bundle)) => {
            let t = peer_setup(a, b, ca_bundle, &target, seed).await;
            Some(PeerLoad::start(t, history.clone(), PEER_WORKERS))
        }
        None => None,
    };

    let mut installs = Installs::default();
    let mut faults = Vec::new();
    // Nodes that join get fresh ids: a node that left never comes back.
    let mut next_id = plan.nodes + 1;
    // Which agency each step hits, in a federated schedule.
    let mut sides = StdRng::seed_from_u64(seed ^ 0x00b0_b0b0);
    tokio::time::sleep(plan.warmup).await;
    for step in &plan.steps {
        let at = history.now().as_millis();
        let (cluster, label) = match &mut b {
            Some((b, _)) if sides.gen_bool(0.5) => (&mut **b, "B: "),
            Some(_) => (&mut *a, "A: "),
            None => (&mut *a, ""),
        };
        let what = inject(cluster, &step.fault, &mut installs, &mut next_id).await;
        faults.push(format!(
            "{label}{what} at {at} ms for {} ms",
            step.hold.as_millis()
        ));
        tokio::time::sleep(step.hold).await;
        undo(cluster, &what, &mut installs).await;
        tokio::time::sleep(step.gap).await;
    }
    let agencies: Vec<(&str, &Cluster)> = match &b {
        Some((b, _)) => vec![("A ", &*a), ("B ", &**b)],
        None => vec![("", &*a)],
    };
    for (_, cluster) in &agencies {
        cluster.heal().await;
    }
    load.finish().await;
    if let Some(l) = peer_load {
        l.finish().await;
    }

    // Every agency elects, converges and is counted; A's statuses report.
    let mut statuses = Vec::new();
    for (i, (_, cluster)) in agencies.iter().enumerate() {
        let ids = cluster.ids();
        cluster.leader().await;
        let st = cluster.wait_converged(&ids).await;
        for &id in &ids {
            installs.scrape(cluster, id).await;
        }
        if i == 0 {
            statuses = st;
        }
    }
    let (ops, entities) = history.snapshot();
    if let Some(dir) = std::env::var_os("BAA_FAULT_HISTORY_DIR") {
        write_history(std::path::Path::new(&dir), seed, &faults, &ops);
    }
    let mut violations = history_violations(&ops, &entities);
    let x = expectations(&ops, &entities);
    violations.extend(probe(a, &target, &x, &entities).await);
    if let Some((b, _)) = &b {
        violations.extend(probe_federation(a, b, &x, &entities).await);
    }
    for (name, cluster) in &agencies {
        for id in cluster.ids() {
            if let Some(line) = cluster.log(id).lines().find(|l| l.contains("panicked")) {
                violations.push(Violation {
                    rule: "node panicked",
                    detail: format!("{name}node {id}: {line}"),
                });
            }
        }
    }
    let leader = find_leader(&statuses);
    let ls = statuses.iter().find(|s| Some(s.node_id) == leader);
    Report {
        faults,
        counts: counts(&ops),
        by_action: by_action(&ops),
        snapshots_installed: installs.total,
        purged_index: ls.and_then(|s| s.purged_index),
        applied_index: ls.and_then(|s| s.applied_index),
        probed: Probed {
            live_sessions: x.live_sessions.len(),
            ended_sessions: x.ended_sessions.len(),
            live_heirs: x.live_heirs.len(),
            dead_heirs: x.dead_heirs.len(),
            spent_codes: x.spent_codes.len(),
            users: x.present_users.len() + x.absent_users.len(),
            acked_writes: x.acked_keys.len(),
            live_derived: x.live_derived.len(),
            ended_derived: x.ended_derived.len(),
        },
        violations,
        took: started.elapsed(),
        plan,
    }
}

/// B's users, and what the cross-agency workers need (`ca_bundle`: both
/// agencies' CAs).
async fn peer_setup(
    a: &Cluster,
    b: &Cluster,
    ca_bundle: &std::path::Path,
    target: &Target,
    seed: u64,
) -> PeerTarget {
    let users: Vec<String> = (0..PEER_USERS).map(|i| format!("peer{i}")).collect();
    for u in &users {
        sso::create_user(b, u, PASSWORD).await;
    }
    b.wait_converged(&b.ids()).await;
    let public = |c: &Cluster| -> Vec<(NodeId, String)> {
        c.ids()
            .into_iter()
            .map(|id| (id, c.public_url(id)))
            .collect()
    };
    PeerTarget {
        a: public(a),
        b: public(b),
        agent: Agent::with_timeout(b, CLIENT_TIMEOUT),
        http: client_with_timeout(ca_bundle, CLIENT_TIMEOUT).expect("a client for both agencies"),
        users,
        query: sso::query_mode_request(&target.site.client_id, &target.site.redirect_uri).0,
        seed,
    }
}

/// Writes the faults and the operations, in invocation order, to
/// `dir/seed-<seed>.history` (for reading a violation in context).
fn write_history(dir: &std::path::Path, seed: u64, faults: &[String], ops: &[Op]) {
    let mut sorted: Vec<&Op> = ops.iter().collect();
    sorted.sort_by_key(|op| (op.invoked, op.completed));
    let mut text = String::new();
    for f in faults {
        text.push_str(&format!("fault {f}\n"));
    }
    for op in sorted {
        text.push_str(&format!(
            "{:>6} {:>6} w{} n{} {:?} {:?}\n",
            op.invoked.as_millis(),
            op.completed.as_millis(),
            op.worker,
            op.node,
            op.action,
            op.outcome
        ));
    }
    let path = dir.join(format!("seed-{seed}.history"));
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text)) {
        println!("writing {}: {e}", path.display());
    }
}

fn by_action(ops: &[Op]) -> BTreeMap<&'static str, Counts> {
    let mut groups: BTreeMap<&'static str, Vec<Op>> = BTreeMap::new();
    for op in ops {
        groups
            .entry(action_name(&op.action))
            .or_default()
            .push(op.clone());
    }
    groups.into_iter().map(|(k, v)| (k, counts(&v))).collect()
}

/// The site, the users (each having approved the site once), the counter user.
async fn setup(cluster: &Cluster, seed: u64) -> Target {
    let site = sso::add_site(
        cluster,
        serde_json::json!({
            "client_id": "shop",
            "name": "Shop",
            "redirect_uris": ["https://shop.baa.localtest/cb"],
            "allowed_scopes": ["openid", "profile", "offline_access"],
            "default_response_mode": "form_post",
        }),
    )
    .await;
    let users: Vec<String> = (0..USERS).map(|i| format!("user{i}")).collect();
    for u in &users {
        sso::create_user(cluster, u, PASSWORD).await;
    }
    let counter = "counter".to_string();
    sso::create_user(cluster, &counter, PASSWORD).await;
    let agent = Agent::with_timeout(cluster, CLIENT_TIMEOUT);
    let base = cluster.public_url(1);
    for u in &users {
        approve(&agent, &base, &site, u).await;
    }
    let ids = cluster.ids();
    cluster.wait_converged(&ids).await;
    Target {
        public: ids.iter().map(|&id| (id, cluster.public_url(id))).collect(),
        admin: ids
            .iter()
            .map(|&id| cluster.admin_with_timeout(id, CLIENT_TIMEOUT))
            .collect(),
        agent,
        site,
        users,
        counter,
        seed,
    }
}

/// Signs `user` in and approves `site` for the load's scopes.
async fn approve(agent: &Agent, base: &str, site: &TestSite, user: &str) {
    let mut a = agent.clone();
    a.cookies.clear();
    a.sign_in_ok(base, user, PASSWORD).await;
    let req = AuthRequest::new(site).set("scope", SCOPES);
    let trust = a.get(&req.url(base)).await;
    assert!(trust.body.contains("id=\"trust\""), "{}", trust.body);
    let done = a.approve(base, &trust, "username", true, false).await;
    assert!(
        done.inputs().contains_key("code"),
        "approving for {user}: {}",
        done.body
    );
}

/// Snapshots installed, counted before each kill (a restart resets a node's counters).
#[derive(Default)]
struct Installs {
    total: u64,
}

impl Installs {
    async fn scrape(&mut self, cluster: &Cluster, id: NodeId) {
        let admin = cluster.admin_with_timeout(id, Duration::from_secs(2));
        if let Ok(text) = admin.metrics().await {
            let n = crate::client::metric_value(&text, "baa_raft_snapshots_installed_total");
            self.total += n.unwrap_or(0.0) as u64;
        }
    }
}

/// The running nodes' leader, if one is agreed within a few seconds.
async fn current_leader(cluster: &Cluster) -> Option<NodeId> {
    let ids = cluster.running_ids();
    try_poll_until(Duration::from_secs(10), || async {
        find_leader(&cluster.statuses(&ids).await)
    })
    .await
}

async fn resolve(cluster: &Cluster, t: PlanTarget) -> NodeId {
    match t {
        PlanTarget::Node(id) => id,
        PlanTarget::Leader => current_leader(cluster).await.unwrap_or(1),
        PlanTarget::Follower(pick) => {
            let leader = current_leader(cluster).await;
            let others: Vec<NodeId> = cluster
                .running_ids()
                .into_iter()
                .filter(|&id| Some(id) != leader)
                .collect();
            others
                .get(pick as usize % others.len().max(1))
                .copied()
                .unwrap_or(1)
        }
    }
}

/// What a step did, for undoing it and for the report.
#[derive(Debug, Clone)]
enum Done {
    Killed(NodeId),
    Paused(NodeId),
    Cut(String),
    KilledAll,
    Skewed(NodeId, i64),
    Joined(NodeId),
    Nothing,
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Done::Killed(id) => write!(f, "kill -9 node {id}"),
            Done::Paused(id) => write!(f, "SIGSTOP node {id}"),
            Done::Cut(what) => write!(f, "{what}"),
            Done::KilledAll => write!(f, "kill -9 every node"),
            Done::Skewed(id, ms) => write!(f, "clock of node {id} {ms:+} ms"),
            Done::Joined(id) => write!(f, "node {id} joined as a voter"),
            Done::Nothing => write!(f, "quiet"),
        }
    }
}

async fn inject(
    cluster: &mut Cluster,
    fault: &Fault,
    installs: &mut Installs,
    next_id: &mut NodeId,
) -> Done {
    match fault {
        Fault::Kill(t) => {
            let id = resolve(cluster, *t).await;
            installs.scrape(cluster, id).await;
            cluster.kill(id);
            Done::Killed(id)
        }
        Fault::Pause(t) => {
            let id = resolve(cluster, *t).await;
            cluster.pause(id);
            Done::Paused(id)
        }
        Fault::Partition { minority } => {
            let rest: Vec<NodeId> = cluster
                .ids()
                .into_iter()
                .filter(|id| !minority.contains(id))
                .collect();
            cluster.partition(minority, &rest).await;
            Done::Cut(format!("partition {minority:?} | {rest:?}"))
        }
        Fault::IsolateLeader => {
            let id = resolve(cluster, PlanTarget::Leader).await;
            cluster.isolate(id).await;
            Done::Cut(format!("isolate leader {id}"))
        }
        Fault::OneWay { from, to } => {
            let from = resolve(cluster, *from).await;
            let mut to = resolve(cluster, *to).await;
            if to == from {
                to = cluster
                    .ids()
                    .into_iter()
                    .find(|&id| id != from)
                    .unwrap_or(from);
            }
            cluster.cut_one_way(from, to).await;
            Done::Cut(format!("cut {from} -> {to} one way"))
        }
        Fault::KillAll => {
            for id in cluster.running_ids() {
                installs.scrape(cluster, id).await;
                cluster.kill(id);
            }
            Done::KilledAll
        }
        Fault::Clock { target, offset_ms } => {
            let id = resolve(cluster, *target).await;
            cluster.set_clock_offset(id, *offset_ms).await;
            Done::Skewed(id, *offset_ms)
        }
        Fault::Join => {
            let id = *next_id;
            *next_id += 1;
            cluster.add_node(id).await;
            change_membership(cluster, &format!("node {id} joins as a voter"), |c, via| {
                Box::pin(c.join(via, id, false))
            })
            .await;
            Done::Joined(id)
        }
        Fault::Quiet => Done::Nothing,
    }
}

/// Sends a membership change (`baa cluster join` or `leave`) to the
/// leader until it succeeds: with no other fault in force, it must.
async fn change_membership<F>(cluster: &Cluster, what: &str, send: F)
where
    F: for<'a> Fn(
        &'a Cluster,
        NodeId,
    )
        -> std::pin::Pin<Box<dyn std::future::Future<Output = CliOutput> + Send + 'a>>,
{
    let done = try_poll_until(CONVERGE_DEADLINE, || async {
        let via = current_leader(cluster).await?;
        let out = send(cluster, via).await;
        if out.status.success() {
            Some(())
        } else {
            println!("{what} via node {via}: {}", out.stderr.trim());
            None
        }
    })
    .await;
    assert!(
        done.is_some(),
        "{what}: not done within {CONVERGE_DEADLINE:?}"
    );
}

async fn undo(cluster: &mut Cluster, done: &Done, installs: &mut Installs) {
    match done {
        Done::Killed(id) => cluster.restart(*id).await,
        Done::Paused(id) => cluster.resume(*id),
        Done::Cut(_) => cluster.heal().await,
        Done::KilledAll => {
            for id in cluster.ids() {
                cluster.restart(id).await;
            }
        }
        Done::Skewed(id, _) => cluster.set_clock_offset(*id, 0).await,
        Done::Joined(id) => {
            let id = *id;
            change_membership(cluster, &format!("node {id} leaves"), |c, via| {
                Box::pin(c.leave(via, id))
            })
            .await;
            let rest: Vec<NodeId> = cluster.ids().into_iter().filter(|&i| i != id).collect();
            cluster.wait_for_membership(&rest, &rest).await;
            installs.scrape(cluster, id).await;
            cluster.remove_node(id);
        }
        Done::Nothing => {}
    }
}

/// The outcome of a session check on one node: valid, refused, or neither.
async fn session_state(cluster: &Cluster, node: NodeId, cookies: &str) -> Option<bool> {
    let resp = cluster
        .http()
        .get(format!("{}/auth/verify", cluster.public_url(node)))
        .header("cookie", cookies)
        .send()
        .await
        .ok()?;
    match resp.status() {
        StatusCode::OK => Some(true),
        StatusCode::UNAUTHORIZED => Some(false),
        _ => None,
    }
}

/// Polls every node until session `s` is `valid` (or not) there.
async fn session_everywhere(
    cluster: &Cluster,
    e: &Entities,
    s: usize,
    valid: bool,
) -> Result<(), String> {
    let Some(rec) = e.sessions.get(s) else {
        return Ok(());
    };
    let what = format!("session #{s} of {}", rec.user);
    cookies_everywhere(cluster, &what, &rec.cookies.header(), valid).await
}

/// Polls every node until the session of `cookies` is `valid` (or not) there.
async fn cookies_everywhere(
    cluster: &Cluster,
    what: &str,
    cookies: &str,
    valid: bool,
) -> Result<(), String> {
    for id in cluster.ids() {
        let seen = try_poll_until(SETTLE, || async {
            (session_state(cluster, id, cookies).await == Some(valid)).then_some(())
        })
        .await;
        if seen.is_none() {
            let now = session_state(cluster, id, cookies).await;
            return Err(format!("{what} on node {id}: {now:?} (true = valid)"));
        }
    }
    Ok(())
}

/// Probes both agencies of a federated schedule for what the history
/// implies of B's sessions and the sessions A derived from them.
async fn probe_federation(
    a: &Cluster,
    b: &Cluster,
    x: &Expectations,
    e: &Entities,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let checks = [
        (
            b,
            &x.live_peer_sessions,
            true,
            "acknowledged session at B lost",
        ),
        (
            b,
            &x.ended_peer_sessions,
            false,
            "signed-out session at B still valid",
        ),
    ];
    for (cluster, set, valid, rule) in checks {
        for &s in set {
            let Some(rec) = e.peer_sessions.get(s) else {
                continue;
            };
            let what = format!("B's session #{s} of {}", rec.user);
            if let Err(detail) =
                cookies_everywhere(cluster, &what, &rec.cookies.header(), valid).await
            {
                out.push(Violation {
                    rule,
                    detail: format!("at B: {detail}"),
                });
            }
        }
    }
    let checks = [
        (
            &x.live_derived,
            true,
            "acknowledged cross-agency session lost",
        ),
        (
            &x.ended_derived,
            false,
            "session derived from a signed-out one still valid",
        ),
    ];
    for (set, valid, rule) in checks {
        for &d in set {
            let Some(rec) = e.derived.get(d) else {
                continue;
            };
            let what = format!("session #{d} derived from B's #{}", rec.peer_session);
            if let Err(detail) = cookies_everywhere(a, &what, &rec.cookies, valid).await {
                out.push(Violation {
                    rule,
                    detail: format!("at A: {detail}"),
                });
            }
        }
    }
    out
}

/// The token endpoint as the site, on `node`: `Ok(true)` for a 200.
async fn token(
    cluster: &Cluster,
    target: &Target,
    node: NodeId,
    form: &[(&str, &str)],
) -> Result<bool, Outcome> {
    let mut req = cluster
        .http()
        .post(format!("{}/sso/token", cluster.public_url(node)));
    if let Some(secret) = &target.site.secret {
        req = req.basic_auth(&target.site.client_id, Some(secret));
    }
    let resp = req.form(form).send().await.map_err(|e| transport(&e))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    match status {
        StatusCode::OK => Ok(true),
        s if s.is_client_error() => Ok(false),
        s => Err(by_status(s, &body)),
    }
}

/// Whether refresh token `r` rotates (asked until the agency answers).
async fn rotates(cluster: &Cluster, target: &Target, node: NodeId, r: &str) -> Option<bool> {
    let form = [("grant_type", "refresh_token"), ("refresh_token", r)];
    try_poll_until(SETTLE, || async {
        token(cluster, target, node, &form).await.ok()
    })
    .await
}

/// Probes the healed cluster for what the history implies.
async fn probe(
    cluster: &Cluster,
    target: &Target,
    x: &Expectations,
    e: &Entities,
) -> Vec<Violation> {
    let mut out = Vec::new();
    let ids = cluster.ids();
    let node_for = |i: usize| ids[i % ids.len()];
    for &s in &x.live_sessions {
        if let Err(d) = session_everywhere(cluster, e, s, true).await {
            out.push(Violation {
                rule: "acknowledged session lost",
                detail: d,
            });
        }
    }
    for &s in &x.ended_sessions {
        if let Err(d) = session_everywhere(cluster, e, s, false).await {
            out.push(Violation {
                rule: "signed-out session still valid",
                detail: d,
            });
        }
    }
    for &r in &x.live_heirs {
        let Some(rec) = e.refresh.get(r) else {
            continue;
        };
        let node = node_for(r);
        if rotates(cluster, target, node, &rec.token).await != Some(true) {
            out.push(Violation {
                rule: "acknowledged refresh token lost",
                detail: format!(
                    "refresh token #{r} (session #{}) refused on node {node} after healing",
                    rec.session
                ),
            });
        }
    }
    for &r in &x.dead_heirs {
        let Some(rec) = e.refresh.get(r) else {
            continue;
        };
        let node = node_for(r);
        if rotates(cluster, target, node, &rec.token).await != Some(false) {
            out.push(Violation {
                rule: "token of a signed-out session still valid",
                detail: format!(
                    "refresh token #{r} of signed-out session #{} rotated on node {node}",
                    rec.session
                ),
            });
        }
    }
    for name in &x.present_users {
        for admin in &target.admin {
            if admin.get_user(name, Consistency::Local).await.is_err() {
                out.push(Violation {
                    rule: "acknowledged user lost",
                    detail: format!("user {name} missing on node {}", admin.node()),
                });
            }
        }
    }
    for name in &x.absent_users {
        for admin in &target.admin {
            if admin.get_user(name, Consistency::Local).await.is_ok() {
                out.push(Violation {
                    rule: "refused write applied",
                    detail: format!("user {name} exists on node {}", admin.node()),
                });
            }
        }
    }
    for admin in &target.admin {
        match admin.get_user(&target.counter, Consistency::Local).await {
            Ok(view) => {
                let keys: std::collections::BTreeSet<String> =
                    view.attributes.keys().cloned().collect();
                let lost: Vec<&String> = x.acked_keys.difference(&keys).collect();
                let phantom: Vec<&String> = keys.difference(&x.sent_keys).collect();
                if !lost.is_empty() || !phantom.is_empty() {
                    out.push(Violation {
                        rule: "acknowledged write lost",
                        detail: format!(
                            "counter on node {}: lost {lost:?}, never sent {phantom:?}",
                            admin.node()
                        ),
                    });
                }
                if view.revision != 1 + keys.len() as u64 {
                    out.push(Violation {
                        rule: "write applied twice",
                        detail: format!(
                            "counter on node {}: revision {} with {} attributes",
                            admin.node(),
                            view.revision,
                            keys.len()
                        ),
                    });
                }
            }
            Err(err) => out.push(Violation {
                rule: "acknowledged write lost",
                detail: format!("counter unreadable on node {}: {err}", admin.node()),
            }),
        }
    }
    // Last: presenting a spent ticket again revokes what it granted.
    for &c in &x.spent_codes {
        let Some(rec) = e.codes.get(c) else { continue };
        let form = [
            ("grant_type", "authorization_code"),
            ("code", rec.code.as_str()),
            ("redirect_uri", target.site.redirect_uri.as_str()),
            ("code_verifier", rec.verifier.as_str()),
        ];
        let node = node_for(c);
        if matches!(token(cluster, target, node, &form).await, Ok(true)) {
            out.push(Violation {
                rule: "ticket redeemed twice",
                detail: format!("ticket #{c}, redeemed during the schedule, redeemed again on node {node} after healing"),
            });
        }
    }
    out
}
