//! Benchmark: replicated writes per second and latency through the public API
//! of a 3-node baa cluster, next to the same load against a 3-node etcd
//! (Debian `etcd-server`, JSON gateway `/v3/kv/put`) in the same invocation.
//!
//! Both systems run on loopback with TLS on every hop (client and peer), each
//! client keeps its own HTTP/1.1 keep-alive connection, and clients are spread
//! over the three nodes of each system (followers forward to the leader in
//! both). Levels alternate baa / etcd so drift on the machine hits both.
//!
//! Build in release and run: `ops/bench-writes` (see BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baa_cluster_tests::client::https_client;
use baa_cluster_tests::harness::free_port;
use baa_cluster_tests::{Cluster, ClusterOptions};
use clap::Parser;
use futures::StreamExt;

#[derive(Parser, Debug)]
#[command(about = "baa vs etcd: replicated writes per second and latency")]
struct Args {
    /// Concurrent clients per level.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Measured seconds per level and system.
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Warm-up seconds before each measurement.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// The etcd binary.
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd: PathBuf,
    /// Measured rounds per level and system; the median round is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Skip the etcd reference (for profiling baa alone).
    #[arg(long)]
    baa_only: bool,
    /// Send every baa client to the leader instead of spreading them over the nodes.
    #[arg(long)]
    leader_only: bool,
    /// Instead of the etcd comparison: fill the state with this many users,
    /// then measure baa's writes with snapshots built back to back on every
    /// node (forced through the admin API) next to writes without, in
    /// interleaved rounds.
    #[arg(long)]
    snapshot_users: Option<usize>,
    /// With `--snapshot-users`: force snapshots on every node at once, not
    /// only on the leader.
    #[arg(long)]
    snapshot_all: bool,
    /// The nodes' `[raft] state_rebuild_waste_mib` (default: the node's own).
    #[arg(long)]
    state_rebuild_waste_mib: Option<u64>,
}

/// What one measured run produced.
struct RunResult {
    ops: usize,
    errors: usize,
    elapsed: Duration,
    p50_ms: f64,
    p99_ms: f64,
}

impl RunResult {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// One write of the workload against one system.
#[derive(Clone)]
enum Target {
    Baa { base: String, token: String },
    Etcd { base: String },
}

fn b64(input: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

impl Target {
    async fn write(&self, http: &reqwest::Client, client: usize, seq: u64) -> bool {
        let req = match self {
            Target::Baa { base, token } => http
                .patch(format!("{base}/admin/v1/users/bench-{client}"))
                .bearer_auth(token)
                .json(&serde_json::json!({ "attributes": { "n": seq.to_string() } })),
            Target::Etcd { base } => {
                http.post(format!("{base}/v3/kv/put"))
                    .json(&serde_json::json!({
                        "key": b64(format!("bench-{client}").as_bytes()),
                        "value": b64(seq.to_string().as_bytes()),
                    }))
            }
        };
        match req.send().await {
            Ok(r) => {
                let ok = r.status().is_success();
                let _ = r.bytes().await;
                ok
            }
            Err(_) => false,
        }
    }
}

fn client_for(ca: &Path) -> reqwest::Client {
    let ca = std::fs::read(ca).expect("CA");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"))
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// The run with the median `key` (rate, or p99).
fn median_by(mut runs: Vec<RunResult>, key: impl Fn(&RunResult) -> f64) -> RunResult {
    runs.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

/// Runs `clients` closed-loop writers spread over `targets`.
async fn measure(
    targets: &[Target],
    ca: &Path,
    clients: usize,
    warmup: Duration,
    secs: Duration,
) -> RunResult {
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let target = targets[c % targets.len()].clone();
        let http = client_for(ca);
        let measuring = measuring.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let t = Instant::now();
                let ok = target.write(&http, c, seq).await;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    if ok {
                        lat.push(t.elapsed().as_micros() as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (lat, errors)
        }));
    }
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(secs).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (lat, e) = t.await.expect("writer task");
        all.extend(lat);
        errors += e;
    }
    all.sort_unstable();
    let pct = |p: f64| {
        if all.is_empty() {
            f64::NAN
        } else {
            all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0
        }
    };
    RunResult {
        ops: all.len(),
        errors,
        elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

/// A 3-member etcd cluster with TLS on client and peer ports, using the baa
/// cluster's CA and node certificates.
struct Etcd {
    children: Vec<Child>,
    client_urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Etcd {
    async fn start(bin: &Path, pki: &Path) -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("baa-bench-etcd-")
            .tempdir()
            .expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("e{}=https://127.0.0.1:{p}", i + 1))
            .collect();
        let mut children = Vec::new();
        let mut client_urls = Vec::new();
        for (i, (cp, pp)) in ports.iter().enumerate() {
            let name = format!("e{}", i + 1);
            // Clients get the nodes' public certificates, peers their cluster
            // certificates and CA: the same TLS set-up as baa's.
            let cert = pki.join(format!("node{}.pem", i + 1));
            let key = pki.join(format!("node{}.key", i + 1));
            let peer_cert = pki.join(format!("node{}-cluster.pem", i + 1));
            let peer_key = pki.join(format!("node{}-cluster.key", i + 1));
            let client_url = format!("https://127.0.0.1:{cp}");
            let peer_url = format!("https://127.0.0.1:{pp}");
            let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).expect("log");
            let child = Command::new(bin)
                .args(["--name", &name])
                .arg("--data-dir")
                .arg(dir.path().join(&name))
                .args([
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                ])
                .args([
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-state",
                    "new",
                ])
                .args(["--initial-cluster-token", "baa-bench"])
                .arg("--cert-file")
                .arg(&cert)
                .arg("--key-file")
                .arg(&key)
                .arg("--peer-cert-file")
                .arg(&peer_cert)
                .arg("--peer-key-file")
                .arg(&peer_key)
                .arg("--peer-trusted-ca-file")
                .arg(pki.join("cluster-ca.pem"))
                .args([
                    "--peer-client-cert-auth",
                    "--logger",
                    "zap",
                    "--log-level",
                    "warn",
                ])
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "starting {}: {e} (apt-get install etcd-server)",
                        bin.display()
                    )
                });
            children.push(child);
            client_urls.push(client_url);
        }
        let etcd = Etcd {
            children,
            client_urls,
            _dir: dir,
        };
        let http = https_client(&pki.join("ca.pem"), None, Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(60);
        for url in &etcd.client_urls {
            loop {
                let ok = matches!(http.get(format!("{url}/health")).send().await,
                    Ok(r) if r.status().is_success());
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd at {url} did not become healthy"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        etcd
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One labelled series of a metric, by a label value it contains.
async fn labelled(cluster: &Cluster, id: u64, name: &str, label: &str) -> f64 {
    let text = cluster.metrics(id).await;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Counters read from a node around each level, to explain where time goes.
async fn node_stats(cluster: &Cluster, id: u64) -> [f64; 8] {
    let m = |name: &'static str| async move { cluster.metric(id, name).await.unwrap_or(0.0) };
    [
        m("baa_raft_proposal_duration_seconds_sum").await,
        m("baa_raft_proposal_duration_seconds_count").await,
        m("baa_raft_log_flush_duration_seconds_sum").await,
        m("baa_raft_log_flush_duration_seconds_count").await,
        m("baa_raft_log_flushed_appends_total").await,
        m("baa_http_request_duration_seconds_sum").await,
        labelled(
            cluster,
            id,
            "baa_cluster_rpc_duration_seconds_sum",
            "/raft/append",
        )
        .await,
        labelled(
            cluster,
            id,
            "baa_cluster_rpc_duration_seconds_count",
            "/raft/append",
        )
        .await,
    ]
}

/// Has node `id` build a snapshot now (`POST /admin/v1/cluster/snapshot`);
/// panics if it cannot.
async fn snapshot_now(cluster: &Cluster, id: u64) {
    let r = cluster
        .admin_with_timeout(id, Duration::from_secs(60))
        .request(reqwest::Method::POST, "/admin/v1/cluster/snapshot")
        .send()
        .await
        .expect("forcing a snapshot");
    assert!(
        r.status().is_success(),
        "forcing a snapshot: {}",
        r.status()
    );
}

/// While `on`, nodes `ids` build a snapshot, again as soon as they have one;
/// answers how many were built and their mean time in ms.
async fn force_snapshots(cluster: &Cluster, ids: &[u64], on: Arc<AtomicBool>) -> (usize, f64) {
    let each = ids.iter().map(|&id| {
        let on = on.clone();
        async move {
            let mut times = Vec::new();
            while on.load(Ordering::Relaxed) {
                let t = Instant::now();
                snapshot_now(cluster, id).await;
                times.push(t.elapsed().as_secs_f64());
            }
            times
        }
    });
    let times: Vec<f64> = futures::future::join_all(each)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64 * 1000.0;
    (times.len(), mean)
}

/// Writes with snapshots built meanwhile next to writes without (see
/// `--snapshot-users`).
async fn snapshot_bench(args: &Args, cluster: &Cluster, baa: &[Target], users: usize) {
    let admin = cluster.admin(1);
    let started = Instant::now();
    let made = futures::stream::iter(0..users)
        .map(|i| {
            let admin = admin.clone();
            async move {
                let req = baa_proto::api::CreateUserRequest {
                    username: format!("fill-{i:07}"),
                    display_name: Some(format!("Fill user {i}")),
                    email: Some(format!("fill-{i}@example.test")),
                    ..Default::default()
                };
                admin.create_user(&req, None).await.is_ok()
            }
        })
        .buffer_unordered(32)
        .filter(|ok| futures::future::ready(*ok))
        .count()
        .await;
    // One build on each node first, to know the snapshot's size.
    for id in cluster.ids() {
        snapshot_now(cluster, id).await;
    }
    let size = snapshot_bytes(cluster);
    println!(
        "state: {made} users made in {:.0?}; a snapshot of it is {:.1} MiB",
        started.elapsed(),
        size as f64 / 1048576.0
    );
    let ca = cluster.ca_pem();
    let (warmup, secs) = (
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.seconds),
    );
    println!(
        "{:>7} | {:>10} {:>8} {:>8} | {:>10} {:>8} {:>8} {:>9} {:>9} | {:>9}",
        "clients",
        "quiet/s",
        "p50 ms",
        "p99 ms",
        "snap/s",
        "p50 ms",
        "p99 ms",
        "snapshots",
        "build ms",
        "p99 ratio"
    );
    let mut rows = Vec::new();
    for &c in &args.clients {
        let mut quiet = Vec::new();
        let mut busy = Vec::new();
        let mut builds = (0usize, 0.0f64);
        let builders = if args.snapshot_all {
            cluster.ids()
        } else {
            vec![cluster.leader().await]
        };
        for round in 0..args.rounds {
            quiet.push(measure(baa, &ca, c, warmup, secs).await);
            let before = rebuilds(cluster).await;
            let on = Arc::new(AtomicBool::new(true));
            let (r, (n, ms)) = tokio::join!(
                async {
                    let r = measure(baa, &ca, c, warmup, secs).await;
                    on.store(false, Ordering::Relaxed);
                    r
                },
                force_snapshots(cluster, &builders, on.clone())
            );
            builds = (builds.0 + n, builds.1 + ms * n as f64);
            eprintln!(
                "  {c} clients, round {}: quiet p99 {:.2} ms, with {n} snapshots ({:.0} ms each, {} state rebuilds) p99 {:.2} ms",
                round + 1,
                quiet[round].p99_ms,
                ms,
                rebuilds(cluster).await - before,
                r.p99_ms
            );
            busy.push(r);
        }
        let (q, b) = (
            median_by(quiet, |r| r.p99_ms),
            median_by(busy, |r| r.p99_ms),
        );
        baa_cluster_tests::bench::print_resident(cluster, &format!("{c} clients and snapshots"));
        let mean_build = builds.1 / builds.0.max(1) as f64;
        let ratio = b.p99_ms / q.p99_ms;
        println!(
            "{:>7} | {:>10.0} {:>8.2} {:>8.2} | {:>10.0} {:>8.2} {:>8.2} {:>9} {:>9.0} | {:>9.2}",
            c,
            q.rate(),
            q.p50_ms,
            q.p99_ms,
            b.rate(),
            b.p50_ms,
            b.p99_ms,
            builds.0,
            mean_build,
            ratio
        );
        rows.push((c, q, b, builds.0, mean_build, ratio));
    }
    println!();
    println!("Markdown:");
    println!("| clients | writes/s | p50 ms | p99 ms | writes/s during snapshots | p50 ms | p99 ms | snapshots built | mean build ms | p99 ratio |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (c, q, b, n, ms, ratio) in &rows {
        println!(
            "| {c} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {n} | {ms:.0} | {ratio:.2} |",
            q.rate(),
            q.p50_ms,
            q.p99_ms,
            b.rate(),
            b.p50_ms,
            b.p99_ms
        );
    }
}

/// State rebuilds so far, summed over the nodes.
async fn rebuilds(cluster: &Cluster) -> f64 {
    let mut n = 0.0;
    for id in cluster.ids() {
        n += cluster
            .metric(id, "baa_state_rebuilds_total")
            .await
            .unwrap_or(0.0);
    }
    n
}

/// The size of node 1's current snapshot data.
fn snapshot_bytes(cluster: &Cluster) -> u64 {
    std::fs::metadata(cluster.node(1).dir().join("data/snapshots/current.data"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let opts = ClusterOptions {
        log_level: "warn".into(),
        state_rebuild_waste_mib: args.state_rebuild_waste_mib,
        ..ClusterOptions::nodes(3)
    };
    let cluster = Cluster::start_with(opts).await;
    let ca = cluster.ca_pem();
    let admin = cluster.admin(1);
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    for c in 0..max_clients {
        let req = baa_proto::api::CreateUserRequest {
            username: format!("bench-{c}"),
            ..Default::default()
        };
        admin
            .create_user(&req, None)
            .await
            .expect("creating bench users");
    }
    let baa_nodes = if args.leader_only {
        vec![cluster.leader().await]
    } else {
        cluster.ids()
    };
    let baa: Vec<Target> = baa_nodes
        .iter()
        .map(|id| Target::Baa {
            base: cluster.manage_url(*id),
            token: cluster.admin_token().to_string(),
        })
        .collect();
    if let Some(users) = args.snapshot_users {
        snapshot_bench(&args, &cluster, &baa, users).await;
        return;
    }
    let etcd = if args.baa_only {
        None
    } else {
        Some(Etcd::start(&args.etcd, &cluster.pki_dir()).await)
    };
    let etcd_targets: Vec<Target> = etcd
        .iter()
        .flat_map(|e| e.client_urls.iter())
        .map(|u| Target::Etcd { base: u.clone() })
        .collect();

    let warmup = Duration::from_secs(args.warmup);
    let secs = Duration::from_secs(args.seconds);
    println!(
        "replicated writes, 3 nodes each, TLS on every hop; median of {} rounds of {}s (after {}s warm-up) per level",
        args.rounds, args.seconds, args.warmup
    );
    println!(
        "{:>7} | {:>10} {:>8} {:>8} {:>6} | {:>10} {:>8} {:>8} {:>6} | {:>6}",
        "clients",
        "baa/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "etcd/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "ratio"
    );
    let mut rows = Vec::new();
    for &c in &args.clients {
        let leader = cluster.leader().await;
        let follower = cluster
            .ids()
            .into_iter()
            .find(|id| *id != leader)
            .unwrap_or(leader);
        let before = (
            node_stats(&cluster, leader).await,
            node_stats(&cluster, follower).await,
        );
        let mut baa_runs = Vec::new();
        let mut etcd_runs = Vec::new();
        // Rounds alternate the two systems so that drift on a shared machine
        // hits both; the median round of each is reported.
        for round in 0..args.rounds {
            let b = measure(&baa, &ca, c, warmup, secs).await;
            let e = if etcd_targets.is_empty() {
                RunResult {
                    ops: 0,
                    errors: 0,
                    elapsed: secs,
                    p50_ms: f64::NAN,
                    p99_ms: f64::NAN,
                }
            } else {
                measure(&etcd_targets, &ca, c, warmup, secs).await
            };
            eprintln!(
                "  {c} clients, round {}: baa {:.0}/s, etcd {:.0}/s",
                round + 1,
                b.rate(),
                e.rate()
            );
            baa_runs.push(b);
            etcd_runs.push(e);
        }
        let after = (
            node_stats(&cluster, leader).await,
            node_stats(&cluster, follower).await,
        );
        let d = |a: &[f64; 8], b: &[f64; 8], i: usize| a[i] - b[i];
        let (l, f) = ((&after.0, &before.0), (&after.1, &before.1));
        eprintln!(
            "  [leader {leader}: proposal {:.2} ms avg over {:.0}; flush {:.3} ms avg, {:.1} appends/flush; append RPC {:.3} ms avg over {:.0} | follower {follower}: flush {:.3} ms avg]",
            d(l.0, l.1, 0) / d(l.0, l.1, 1).max(1.0) * 1000.0,
            d(l.0, l.1, 1),
            d(l.0, l.1, 2) / d(l.0, l.1, 3).max(1.0) * 1000.0,
            d(l.0, l.1, 4) / d(l.0, l.1, 3).max(1.0),
            d(l.0, l.1, 6) / d(l.0, l.1, 7).max(1.0) * 1000.0,
            d(l.0, l.1, 7),
            d(f.0, f.1, 2) / d(f.0, f.1, 3).max(1.0) * 1000.0,
        );
        baa_cluster_tests::bench::print_resident(&cluster, &format!("{c} clients"));
        let b = median_by(baa_runs, RunResult::rate);
        let e = median_by(etcd_runs, RunResult::rate);
        let ratio = b.rate() / e.rate();
        println!(
            "{:>7} | {:>10.0} {:>8.2} {:>8.2} {:>6} | {:>10.0} {:>8.2} {:>8.2} {:>6} | {:>6.2}",
            c,
            b.rate(),
            b.p50_ms,
            b.p99_ms,
            b.errors,
            e.rate(),
            e.p50_ms,
            e.p99_ms,
            e.errors,
            ratio
        );
        rows.push((c, b, e, ratio));
    }
    println!();
    println!("Markdown:");
    println!("| clients | baa writes/s | baa p50 ms | baa p99 ms | etcd writes/s | etcd p50 ms | etcd p99 ms | baa/etcd |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (c, b, e, ratio) in &rows {
        println!(
            "| {c} | {:.0} | {:.2} | {:.2} | {:.0} | {:.2} | {:.2} | {ratio:.2} |",
            b.rate(),
            b.p50_ms,
            b.p99_ms,
            e.rate(),
            e.p50_ms,
            e.p99_ms
        );
    }
    drop(etcd);
    drop(cluster);
}

#[cfg(test)]
mod tests {
    use super::b64;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(b64(input.as_bytes()), want);
        }
    }
}
