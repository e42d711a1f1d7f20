//! Pieces shared by the benchmark programs: run results with CPU accounting
//! from `/proc`, medians, failure tallies, an HTTPS client trusting the
//! cluster CA, and the machine description printed with every report; the
//! interleaving driver (`driver`), the report table (`report`), the OIDC
//! flow client (`oidc`) and the reference OIDC provider (`peer`).

pub mod driver;
pub mod oidc;
pub mod peer;
pub mod report;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::header::SET_COOKIE;

use crate::Cluster;

/// What one measured run produced.
#[derive(Default)]
pub struct RunResult {
    /// Successful operations.
    pub ops: usize,
    /// Failed operations.
    pub errors: usize,
    /// Measured time.
    pub elapsed: Duration,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// CPU seconds the nodes spent during the measured window.
    pub node_cpu_s: f64,
    /// CPU seconds this program (the load generator) spent during it.
    pub self_cpu_s: f64,
    /// CPU seconds of the nodes' threads by group (see [`thread_cpu`]),
    /// of the threads alive at both ends of the window.
    pub node_threads: BTreeMap<String, f64>,
}

impl RunResult {
    /// A copy (the first error's text included).
    pub fn copy(&self) -> Self {
        Self {
            first_error: self.first_error.clone(),
            node_threads: self.node_threads.clone(),
            ..*self
        }
    }
    /// Successful operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
    /// CPU milliseconds (nodes and load generator) per successful request.
    pub fn cpu_ms_per_op(&self) -> f64 {
        (self.node_cpu_s + self.self_cpu_s) * 1000.0 / self.ops.max(1) as f64
    }
}

/// Raw figures of one or more measured slices of a load; summed slice by
/// slice, then turned into a [`RunResult`].
#[derive(Default)]
pub struct Samples {
    /// Latency of every successful operation, in microseconds.
    pub latencies_us: Vec<u64>,
    /// Failed operations.
    pub errors: usize,
    /// Measured time.
    pub elapsed: Duration,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// CPU seconds the nodes spent while measuring.
    pub node_cpu_s: f64,
    /// CPU seconds this program spent while measuring.
    pub self_cpu_s: f64,
    /// CPU seconds of the nodes' threads by group while measuring.
    pub node_threads: BTreeMap<String, f64>,
}

impl Samples {
    /// Adds another slice of the same load.
    pub fn absorb(&mut self, other: Samples) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        self.elapsed += other.elapsed;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.node_cpu_s += other.node_cpu_s;
        self.self_cpu_s += other.self_cpu_s;
        for (group, cpu) in other.node_threads {
            *self.node_threads.entry(group).or_default() += cpu;
        }
    }

    /// Rate, percentiles and CPU of everything absorbed.
    pub fn finish(mut self) -> RunResult {
        self.latencies_us.sort_unstable();
        let all = &self.latencies_us;
        let pct = |p: f64| {
            if all.is_empty() {
                f64::NAN
            } else {
                all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0
            }
        };
        RunResult {
            ops: all.len(),
            errors: self.errors,
            elapsed: self.elapsed,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            first_error: self.first_error,
            node_cpu_s: self.node_cpu_s,
            self_cpu_s: self.self_cpu_s,
            node_threads: self.node_threads,
        }
    }
}

/// How a round that gives each load `seconds` in slices of `slice_ms` (each
/// after `settle_ms` unmeasured) is cut: slices per load, slice, settling.
pub fn slicing(seconds: u64, slice_ms: u64, settle_ms: u64) -> (usize, Duration, Duration) {
    (
        (seconds * 1000).div_ceil(slice_ms.max(1)).max(1) as usize,
        Duration::from_millis(slice_ms),
        Duration::from_millis(settle_ms),
    )
}

/// Runs `op` closed-loop, one task per client: `warmup` unmeasured, then
/// `secs` measured; `pids` are the node processes whose CPU time is recorded.
/// `op` gets the client and a per-client sequence number.
pub async fn closed_loop<C, F, Fut>(
    clients: &[Arc<C>],
    op: F,
    pids: &[u32],
    warmup: Duration,
    secs: Duration,
) -> Samples
where
    C: Send + Sync + 'static,
    F: Fn(Arc<C>, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in clients {
        let (c, op) = (c.clone(), op.clone());
        let (measuring, stop) = (measuring.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0usize;
            let mut first_error = None;
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let t = Instant::now();
                let res = op(c.clone(), seq).await;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    match res {
                        Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
            (lat, errors, first_error)
        }));
    }
    tokio::time::sleep(warmup).await;
    let threads_before = thread_cpu(pids);
    let cpu_before = cpu_snapshot(pids);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(secs).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu_after = cpu_snapshot(pids);
    let mut out = Samples {
        elapsed,
        node_cpu_s: cpu_after.0 - cpu_before.0,
        self_cpu_s: cpu_after.1 - cpu_before.1,
        node_threads: thread_cpu_between(&threads_before, &thread_cpu(pids)),
        ..Samples::default()
    };
    for t in tasks {
        match t.await {
            Ok((lat, e, fe)) => out.absorb(Samples {
                latencies_us: lat,
                errors: e,
                first_error: fe,
                ..Samples::default()
            }),
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert(format!("client task: {e}"));
            }
        }
    }
    out
}

/// User + system CPU seconds of process `pid` (`None`: this process).
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = pid.map_or_else(
        || "/proc/self/stat".to_string(),
        |p| format!("/proc/{p}/stat"),
    );
    std::fs::read_to_string(path)
        .ok()
        .and_then(|stat| stat_cpu(&stat).map(|(_, cpu)| cpu))
        .unwrap_or(0.0)
}

/// The command name and user + system CPU seconds in a `/proc` `stat` line.
fn stat_cpu(stat: &str) -> Option<(&str, f64)> {
    let open = stat.find('(')?;
    let (comm, rest) = stat[open + 1..].rsplit_once(") ")?;
    // Fields after the command name: state is the first, utime the 12th, stime the 13th.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some((comm, (ticks(11) + ticks(12)) / hz))
}

/// The CPU seconds of every thread of the processes `pids`, by process and
/// thread id, with the thread's group: its name without what numbers it
/// (`sled-io-3` → `sled-io`, `actix-rt|system:0|arbiter:1` → `actix-rt`).
pub fn thread_cpu(pids: &[u32]) -> BTreeMap<(u32, u32), (String, f64)> {
    let mut out = BTreeMap::new();
    for &pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            if let Some((comm, cpu)) = stat_cpu(&stat) {
                let name = comm.split('|').next().unwrap_or(comm);
                let group = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
                out.insert((pid, tid), (group.to_string(), cpu));
            }
        }
    }
    out
}

/// CPU seconds by thread group spent between two [`thread_cpu`] readings,
/// by the threads alive at both.
pub fn thread_cpu_between(
    before: &BTreeMap<(u32, u32), (String, f64)>,
    after: &BTreeMap<(u32, u32), (String, f64)>,
) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (id, (group, cpu)) in after {
        if let Some((_, was)) = before.get(id) {
            *out.entry(group.clone()).or_default() += cpu - was;
        }
    }
    out
}

/// CPU seconds of the nodes and of this process, now.
pub fn cpu_snapshot(pids: &[u32]) -> (f64, f64) {
    (
        pids.iter().map(|p| cpu_seconds(Some(*p))).sum(),
        cpu_seconds(None),
    )
}

/// The run with the median rate.
pub fn median(mut runs: Vec<RunResult>) -> RunResult {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    let mid = runs.len() / 2;
    runs.swap_remove(mid)
}

/// The median of `values` (the upper middle one for an even count; NaN for none).
pub fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Successes and failures over every run of a load at a level.
#[derive(Default, Clone, Copy)]
pub struct Tally {
    /// Successful operations.
    pub ops: usize,
    /// Failed operations.
    pub errors: usize,
}

impl Tally {
    /// Counts one run.
    pub fn add(&mut self, r: &RunResult) {
        self.ops += r.ops;
        self.errors += r.errors;
    }
    /// Failed share of all attempts (1 when nothing ran).
    pub fn error_share(&self) -> f64 {
        let total = self.ops + self.errors;
        if total == 0 {
            1.0
        } else {
            self.errors as f64 / total as f64
        }
    }
}

/// One HTTPS client per simulated app: its own keep-alive connection,
/// redirects never followed.
pub fn client_for(ca: &Path) -> anyhow::Result<reqwest::Client> {
    client_with_timeout(ca, Duration::from_secs(10))
}

/// The same, giving up on a request after `timeout`.
pub fn client_with_timeout(ca: &Path, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    let ca = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    Ok(one_connection()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .timeout(timeout)
        .build()?)
}

/// What every benchmark client is: HTTP/1.1 on one keep-alive connection,
/// no Nagle, redirects not followed, 10 s per request.
pub fn one_connection() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(1)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
}

/// The value of cookie `name` among a response's `Set-Cookie` headers.
pub fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (pair, _) = v.split_once(';').unwrap_or((v, ""));
            let (n, value) = pair.split_once('=')?;
            (n.trim() == name && !value.is_empty()).then(|| value.to_string())
        })
}

/// The agency cookies a sign-in answer sets, as one `Cookie` header value.
pub fn sso_cookies(resp: &reqwest::Response) -> Option<String> {
    use crate::sso::{SsoCookies, REFERENCE_COOKIE, SESSION_COOKIE};
    let c = SsoCookies {
        session: set_cookie(resp, SESSION_COOKIE)?,
        reference: set_cookie(resp, REFERENCE_COOKIE)?,
    };
    Some(c.header())
}

/// A CSRF pair (cookie value = form value) from `GET /sso/signin`.
pub async fn csrf_pair(http: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    use crate::sso::CSRF_COOKIE;
    let resp = http.get(format!("{base}/sso/signin")).send().await?;
    if resp.status() != reqwest::StatusCode::OK {
        anyhow::bail!(unexpected("GET /sso/signin", resp).await);
    }
    let csrf =
        set_cookie(&resp, CSRF_COOKIE).ok_or_else(|| anyhow::anyhow!("no {CSRF_COOKIE} cookie"))?;
    let page = resp.text().await?;
    if !page.contains(&format!("value=\"{csrf}\"")) {
        anyhow::bail!("the sign-in page does not carry the CSRF cookie's value");
    }
    Ok(csrf)
}

/// One password sign-in with the CSRF pair `csrf`; the new agency cookies
/// as one `Cookie` header value.
pub async fn password_sign_in(
    http: &reqwest::Client,
    base: &str,
    csrf: &str,
    (user, password): (&str, &str),
) -> Result<String, String> {
    use crate::sso::CSRF_COOKIE;
    let resp = http
        .post(format!("{base}/sso/signin"))
        .header(reqwest::header::COOKIE, format!("{CSRF_COOKIE}={csrf}"))
        .form(&[("csrf", csrf), ("username", user), ("password", password)])
        .send()
        .await
        .map_err(|e| format!("POST /sso/signin: {e}"))?;
    if resp.status() != reqwest::StatusCode::SEE_OTHER {
        return Err(unexpected("POST /sso/signin", resp).await);
    }
    let sso = sso_cookies(&resp).ok_or_else(|| "no agency cookies".to_string())?;
    let _ = resp.bytes().await;
    Ok(sso)
}

/// A status error with the start of the body, for diagnostics.
pub async fn unexpected(what: &str, resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let body: String = body.chars().take(200).collect();
    format!("{what}: HTTP {status}: {body}")
}

/// The machine: CPU count and model, memory.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or_else(String::new, |kb| {
            format!(", {:.0} GiB RAM", kb / 1024.0 / 1024.0)
        });
    format!("{cpus} CPUs (nproc), {model}{mem_gib}")
}

pub fn report_errors(what: &str, r: &RunResult) {
    if r.errors > 0 {
        eprintln!(
            "    {what}: {} failed; first: {}",
            r.errors,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
}

/// A server-side series summed over the nodes: (name shown, histogram
/// metric, label filter).
pub type Series = (&'static str, &'static str, &'static str);

/// (sum, count) of each of `series` over every node of `cluster`, now.
pub async fn server_times(cluster: &Cluster, series: &[Series]) -> Vec<(f64, f64)> {
    let mut out = vec![(0.0, 0.0); series.len()];
    for id in cluster.ids() {
        let Ok(text) = cluster.admin(id).metrics().await else {
            continue;
        };
        for (k, (_, name, label)) in series.iter().enumerate() {
            let value = |suffix: &str| -> f64 {
                let prefix = format!("{name}_{suffix}");
                text.lines()
                    .filter(|l| {
                        l.split(['{', ' ']).next() == Some(prefix.as_str()) && l.contains(label)
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            };
            out[k].0 += value("sum");
            out[k].1 += value("count");
        }
    }
    out
}

/// Mean server-side milliseconds per series between two [`server_times`].
pub fn server_means(series: &[Series], before: &[(f64, f64)], after: &[(f64, f64)]) -> String {
    series
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (b, a))| a.1 > b.1)
        .map(|((what, _, _), (b, a))| {
            format!(
                "{what} {:.3} ms over {:.0}",
                (a.0 - b.0) / (a.1 - b.1) * 1000.0,
                a.1 - b.1
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// CPU milliseconds per completed operation, nodes and load generator apart.
pub fn cpu_split(r: &RunResult) -> String {
    let per = |s: f64| s * 1000.0 / r.ops.max(1) as f64;
    format!(
        "CPU ms each: nodes {:.3} + generator {:.3}",
        per(r.node_cpu_s),
        per(r.self_cpu_s)
    )
}

/// The running nodes' process ids.
pub fn node_pids(cluster: &Cluster) -> Vec<u32> {
    cluster
        .ids()
        .iter()
        .filter_map(|id| cluster.node(*id).pid())
        .collect()
}

/// Resident memory of process `pid`, in bytes (0 when it is gone).
pub fn rss_bytes(pid: Option<u32>) -> u64 {
    let status = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Prints each node's resident memory after a load, as every benchmark
/// does after each of its loads.
pub fn print_resident(cluster: &Cluster, after: &str) {
    let nodes: Vec<String> = cluster
        .ids()
        .into_iter()
        .map(|id| {
            let mib = rss_bytes(cluster.node(id).pid()) as f64 / 1_048_576.0;
            format!("node {id} {mib:.0} MiB")
        })
        .collect();
    eprintln!("  [resident after {after}: {}]", nodes.join(", "));
}

#[cfg(test)]
mod tests {
    use super::Samples;
    use std::time::Duration;

    #[test]
    fn slices_add_up_to_one_result() {
        let slice = |lat: Vec<u64>, errors, cpu: f64| Samples {
            latencies_us: lat,
            errors,
            elapsed: Duration::from_millis(500),
            first_error: (errors > 0).then(|| "boom".to_string()),
            node_cpu_s: cpu,
            self_cpu_s: cpu / 2.0,
            node_threads: [("baa".to_string(), cpu / 4.0)].into(),
        };
        let mut all = Samples::default();
        all.absorb(slice((1..=60).map(|i| i * 1000).collect(), 0, 0.2));
        all.absorb(slice((61..=100).map(|i| i * 1000).collect(), 2, 0.3));
        let r = all.finish();
        assert_eq!(r.ops, 100);
        assert_eq!(r.errors, 2);
        assert_eq!(r.elapsed, Duration::from_secs(1));
        assert_eq!(r.rate(), 100.0);
        assert_eq!(r.p50_ms, 51.0);
        assert_eq!(r.p99_ms, 100.0);
        assert_eq!(r.first_error.as_deref(), Some("boom"));
        assert!((r.node_cpu_s - 0.5).abs() < 1e-9);
        assert!((r.node_threads["baa"] - 0.125).abs() < 1e-9);
        assert!((r.cpu_ms_per_op() - 7.5).abs() < 1e-9);
    }

    #[test]
    fn nothing_measured_has_no_percentiles() {
        let r = Samples::default().finish();
        assert_eq!(r.ops, 0);
        assert!(r.p50_ms.is_nan());
    }
}
