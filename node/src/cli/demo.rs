//! `baa demo`: a local cluster of child processes with generated PKI, sled data
//! under one directory (reused on the next run), the cluster initialised and a
//! leader elected. Ctrl-C stops every child.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use baa_proto::api::ClusterStatus;
use clap::Args;

use super::client::{AdminClient, ApiError};
use crate::config::{FileConfig, LogFormat, Peer, RaftTuning, TlsFiles};
use crate::pki;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for PKI, configs, logs and sled data.
    #[arg(long, default_value = "./baa-demo")]
    dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// First public port; node i listens on base+i-1 and its cluster port on base+100+i-1.
    #[arg(long, default_value_t = 8441)]
    base_port: u16,
}

/// The children; dropping it stops them.
struct Children(Vec<Child>);

impl Children {
    fn stop(&mut self) {
        for c in &self.0 {
            // SIGTERM lets each node stop its listeners and flush.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for c in &mut self.0 {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.0.clear();
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

fn ensure_pki(dir: &Path, nodes: u16) -> anyhow::Result<()> {
    if !pki::ca_cert_path(dir).exists() {
        pki::init_ca(dir, "baa demo")?;
    }
    for i in 1..=nodes {
        let name = format!("node{i}");
        if !pki::node_paths(dir, &name).0.exists() {
            pki::issue_node(dir, &name, &[])?;
        }
    }
    Ok(())
}

fn ensure_token(path: &Path) -> anyhow::Result<String> {
    if let Ok(t) = std::fs::read_to_string(path) {
        return Ok(t.trim().to_string());
    }
    let token = hex::encode(rand::random::<[u8; 24]>());
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(token.as_bytes())?;
    Ok(token)
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=9).contains(&args.nodes),
        "--nodes must be between 1 and 9"
    );
    anyhow::ensure!(
        args.base_port.checked_add(100 + args.nodes).is_some(),
        "--base-port too high"
    );
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let pki_dir = dir.join("pki");
    ensure_pki(&pki_dir, args.nodes)?;
    let token_file = dir.join("admin-token");
    let token = ensure_token(&token_file)?;
    let public = |i: u16| addr(args.base_port + i - 1);
    let cluster = |i: u16| addr(args.base_port + 100 + i - 1);

    let exe = std::env::current_exe().context("locating the baa binary")?;
    let mut children = Children(Vec::new());
    for i in 1..=args.nodes {
        let (cert, key) = pki::node_paths(&pki_dir, &format!("node{i}"));
        let file = FileConfig {
            node_id: u64::from(i),
            data_dir: dir.join(format!("node{i}")),
            public_listen: public(i).parse()?,
            cluster_listen: cluster(i).parse()?,
            public_advertise: None,
            cluster_advertise: None,
            cluster_source_ip: None,
            admin_token: None,
            admin_token_file: Some(token_file.clone()),
            log_format: LogFormat::Json,
            log_level: "info".into(),
            tls: TlsFiles {
                ca_cert: pki::ca_cert_path(&pki_dir),
                cert,
                key,
            },
            raft: RaftTuning::default(),
            limits: Default::default(),
            sso: Default::default(),
            peers: (1..=args.nodes)
                .filter(|j| *j != i)
                .map(|j| Peer {
                    id: u64::from(j),
                    public_addr: public(j),
                    cluster_addr: cluster(j),
                })
                .collect(),
        };
        let config_path = dir.join(format!("node{i}.toml"));
        std::fs::write(&config_path, toml::to_string_pretty(&file)?)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("node{i}.log")))?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // If the demo dies without cleaning up, the kernel stops the nodes too.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        children
            .0
            .push(cmd.spawn().with_context(|| format!("starting node {i}"))?);
    }

    let ca = pki::ca_cert_path(&pki_dir);
    let clients: Vec<AdminClient> = (1..=args.nodes)
        .map(|i| AdminClient::with(&format!("https://{}", public(i)), &ca, &token))
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, c) in clients.iter().enumerate() {
        while !c.is_ok("/healthz").await {
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} did not start; see {}/node{}.log",
                i + 1,
                dir.display(),
                i + 1
            );
            check_children(&mut children)?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    match clients[0]
        .post::<_, serde_json::Value>("/admin/v1/cluster/init", &serde_json::json!({}))
        .await
    {
        Ok(_) => {}
        Err(e)
            if e.downcast_ref::<ApiError>()
                .is_some_and(|a| a.body.error == baa_proto::ErrorCode::AlreadyInitialized) => {}
        Err(e) => return Err(e.context("initialising the cluster")),
    }
    for (i, c) in clients.iter().enumerate() {
        while !c.is_ok("/readyz").await {
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} did not become ready",
                i + 1
            );
            check_children(&mut children)?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let status: ClusterStatus = clients[0].get("/admin/v1/cluster/status").await?;

    println!(
        "baa demo: {}-node agency cluster (data in {})",
        args.nodes,
        dir.display()
    );
    for i in 1..=args.nodes {
        let role = if status.leader == Some(u64::from(i)) {
            "  (leader)"
        } else {
            ""
        };
        println!("  node {i}: https://{}{role}", public(i));
    }
    println!("  CA certificate: {}", ca.display());
    println!("  admin token: {token}");
    println!(
        "Try:  baa --url https://{} --ca {} --token {token} user list",
        public(1),
        ca.display()
    );
    println!("baa demo is ready. Press Ctrl-C to stop.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut watch = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = watch.tick() => {
                if let Err(e) = check_children(&mut children) {
                    eprintln!("baa demo: {e:#}; stopping");
                    break;
                }
            }
        }
    }
    println!("baa demo: stopping nodes");
    children.stop();
    println!("baa demo: stopped");
    Ok(())
}

fn check_children(children: &mut Children) -> anyhow::Result<()> {
    for (i, c) in children.0.iter_mut().enumerate() {
        if let Some(status) = c.try_wait()? {
            anyhow::bail!("node {} exited ({status})", i + 1);
        }
    }
    Ok(())
}
