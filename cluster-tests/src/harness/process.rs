//! Processes: the `baa` and `baa-partner-site` binaries, spawning nodes and
//! waiting for them, CLI runs, free ports and node logs.

use super::*;

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

/// The demo partner site's binary: `$BAA_PARTNER_SITE_BIN`, else
/// `baa-partner-site` beside the `baa` binary.
pub fn partner_site_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAA_PARTNER_SITE_BIN") {
        return PathBuf::from(p);
    }
    let bin = baa_bin().with_file_name("baa-partner-site");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --workspace --bins` or set BAA_PARTNER_SITE_BIN",
        bin.display()
    );
    bin
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

pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Opens a file for appending (used for child logs).
pub fn append_file(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Cluster {
    pub(super) async fn create_node(&mut self, id: NodeId) {
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

    pub(super) fn fresh_port(&self) -> u16 {
        let mut used = self.used_ports.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let p = free_port();
            if used.insert(p) {
                return p;
            }
        }
    }

    pub(super) fn spawn(&mut self, id: NodeId) {
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
            .env("BAA_TEST_CLOCK_OFFSET_FILE", node.clock_offset_path())
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

    /// Runs `baa --url <node id's admin API> --ca <ca> --token <token> <args>`.
    pub async fn cli(&self, id: NodeId, args: &[&str]) -> CliOutput {
        let url = self.manage_url(id);
        let ca = self.ca_pem();
        let mut all: Vec<&str> = vec!["--url", &url, "--ca", path_str(&ca), "--token", &self.token];
        all.extend_from_slice(args);
        run_baa(&self.bin, &all).await
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
}
