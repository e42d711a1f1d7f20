//! `baa demo`: a local cluster of child processes with generated PKI, sled data
//! under one directory (reused on the next run), the cluster initialised and a
//! leader elected; single sign-on configured for `*.baa.localtest`, two demo
//! partner sites registered and running, and a demo user. Ctrl-C stops every
//! child.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use baa_proto::api::{
    ClusterStatus, CreateSiteRequest, CreateUserRequest, CreatedSite, SiteView, UpdateUserRequest,
    UserView,
};
use baa_proto::sso::ResponseMode;
use baa_proto::ErrorCode;
use clap::Args;

use super::client::{error_code, AdminClient, ApiError};
use crate::config::{FileConfig, LogFormat, Peer, RaftTuning, SsoConfig, TlsFiles};
use crate::pki;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for PKI, configs, logs and sled data.
    #[arg(long, default_value = "./baa-demo")]
    dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: u16,
    /// First public port; node i listens on base+i-1, its cluster port on
    /// base+100+i-1 and its management port (admin API, metrics) on
    /// base+300+i-1; the partner sites listen on base+200 and base+201.
    #[arg(long, default_value_t = 8441)]
    base_port: u16,
}

/// The agency's name in its SSO cookies.
const AGENCY: &str = "baa-demo";
/// The agency's host name, as browsers and partner sites see it.
const AGENCY_HOST: &str = "login.baa.localtest";
/// The shared cookie domain of the agency and its partner sites.
const COOKIE_DOMAIN: &str = "baa.localtest";

/// The demo user.
const DEMO_USER: &str = "alice";
const DEMO_USER_NAME: &str = "Alice Example";
const DEMO_USER_EMAIL: &str = "alice@example.test";

/// A demo partner site.
struct DemoSite {
    /// Client id, certificate and file name stem.
    id: &'static str,
    /// Name shown to users.
    name: &'static str,
    /// Host name under the cookie domain.
    host: &'static str,
    /// Port offset from `--base-port`.
    offset: u16,
}

const SITES: [DemoSite; 2] = [
    DemoSite {
        id: "shop",
        name: "Demo Shop",
        host: "shop.baa.localtest",
        offset: 200,
    },
    DemoSite {
        id: "news",
        name: "Demo News",
        host: "news.baa.localtest",
        offset: 201,
    },
];

impl DemoSite {
    fn port(&self, base: u16) -> u16 {
        base + self.offset
    }

    /// The site's URL as the browser sees it.
    fn public_url(&self, base: u16) -> String {
        format!("https://{}:{}", self.host, self.port(base))
    }

    fn secret_file(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}-client-secret", self.id))
    }

    /// The registration the demo wants for this site.
    fn registration(&self, base: u16, secret: &str) -> CreateSiteRequest {
        let url = self.public_url(base);
        CreateSiteRequest {
            client_id: self.id.into(),
            name: Some(self.name.into()),
            redirect_uris: vec![format!("{url}/callback")],
            post_logout_redirect_uris: vec![format!("{url}/")],
            // The agency calls the site directly; the site's certificate names 127.0.0.1.
            backchannel_logout_uri: Some(format!(
                "https://127.0.0.1:{}/backchannel-logout",
                self.port(base)
            )),
            allowed_scopes: Some(["openid", "profile", "email"].map(String::from).to_vec()),
            public: false,
            client_secret: Some(secret.into()),
            // Seed-style sites: the ticket comes by the auto-submitting form.
            default_response_mode: Some(ResponseMode::FormPost),
        }
    }
}

/// One supervised child process and the file its output goes to.
struct Supervised {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The children; dropping it stops them.
struct Children(Vec<Supervised>);

/// Lines of a child's log shown when it exits, so the cause is on the screen.
const EXIT_LOG_LINES: usize = 20;

impl Children {
    fn stop(&mut self) {
        for s in &self.0 {
            // SIGTERM lets each child stop its listeners and flush.
            unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        for s in &mut self.0 {
            loop {
                match s.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = s.child.kill();
                        let _ = s.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.0.clear();
    }

    /// Starts `cmd` with its output appended to `log`; the kernel stops it
    /// should the demo die without cleaning up.
    fn spawn(
        &mut self,
        name: String,
        mut cmd: std::process::Command,
        log: &Path,
    ) -> anyhow::Result<()> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        self.0.push(Supervised {
            name,
            child,
            log: log.to_path_buf(),
        });
        Ok(())
    }

    /// An error naming the first child that has exited, with the last lines
    /// of its log.
    fn check(&mut self) -> anyhow::Result<()> {
        for s in &mut self.0 {
            if let Some(status) = s.child.try_wait()? {
                anyhow::bail!(
                    "{} exited ({status}); the last lines of {}:\n{}",
                    s.name,
                    s.log.display(),
                    last_lines(&s.log, EXIT_LOG_LINES)
                );
            }
        }
        Ok(())
    }
}

/// The last `n` lines of the file at `path`, indented (or why there are none).
fn last_lines(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..]
                .iter()
                .map(|l| format!("    {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        }
        Err(e) => format!("    (cannot read it: {e})"),
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The web CA with the nodes' public certificates (naming the agency host)
/// and the sites' certificates, and the cluster CA with the nodes' cluster
/// certificates. A certificate from an older demo that lacks a name, or that
/// could authenticate a client where it should not, is issued again.
fn ensure_pki(dir: &Path, nodes: u16) -> anyhow::Result<()> {
    pki::ensure_cas(dir, "baa demo")?;
    let agency_host = [AGENCY_HOST.to_string()];
    for i in 1..=u64::from(nodes) {
        let public = pki::server_paths(dir, &pki::node_name(i)).0;
        let cluster = pki::cluster_paths(dir, i).0;
        if !pki::cert_fits(&public, &agency_host, false)? || !pki::cert_fits(&cluster, &[], true)? {
            pki::issue_node(dir, i, &agency_host, &[])?;
        }
    }
    for site in &SITES {
        let sans = [site.host.to_string()];
        if !pki::cert_fits(&pki::server_paths(dir, site.id).0, &sans, false)? {
            pki::issue_server(dir, site.id, &sans)?;
        }
    }
    Ok(())
}

/// The secret kept in `path` (mode 0600), made by `make` when the file does
/// not exist yet; and whether it was made now.
/// Writes `bytes` to `path`, readable by the owner only (it holds the admin
/// token and the demo password), replacing it whole.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

fn ensure_secret_file(
    path: &Path,
    make: impl FnOnce() -> String,
) -> anyhow::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(t) => {
            let t = t.trim().to_string();
            anyhow::ensure!(
                !t.is_empty(),
                "{} is empty; delete it to make a new one",
                path.display()
            );
            return Ok((t, false));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let secret = make();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(secret.as_bytes())?;
    Ok((secret, true))
}

/// A password that is easy to type: four groups of four hex digits.
fn new_password() -> String {
    rand::random::<[u8; 8]>()
        .chunks(2)
        .map(hex::encode)
        .collect::<Vec<_>>()
        .join("-")
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Whether a failed admin call may succeed when tried again: no answer, a
/// server-side error, or a node that is not (or no longer) the leader.
fn retryable(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<ApiError>() {
        None => true,
        Some(a) => a.status >= 500 || a.body.error == ErrorCode::NotLeader,
    }
}

/// Runs `f` until it succeeds, fails for good, or `deadline` passes.
async fn retry<T, F, Fut>(what: &str, deadline: Instant, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if retryable(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.context(what.to_string())),
        }
    }
}

fn same_registration(have: &SiteView, want: &CreateSiteRequest) -> bool {
    !have.public
        && Some(&have.name) == want.name.as_ref()
        && have.redirect_uris == want.redirect_uris
        && have.post_logout_redirect_uris == want.post_logout_redirect_uris
        && have.backchannel_logout_uri == want.backchannel_logout_uri
        && Some(&have.allowed_scopes) == want.allowed_scopes.as_ref()
        && Some(have.default_response_mode) == want.default_response_mode
}

/// Registers the site as `want` says. An existing registration is kept when
/// it matches and its secret is the one on file (`fresh_secret` false);
/// otherwise it is removed and registered again.
async fn ensure_site(
    client: &AdminClient,
    want: &CreateSiteRequest,
    fresh_secret: bool,
) -> anyhow::Result<()> {
    match client.post::<_, CreatedSite>("/admin/v1/sites", want).await {
        Ok(_) => return Ok(()),
        Err(e) if error_code(&e) == Some(ErrorCode::SiteExists) => {}
        Err(e) => return Err(e),
    }
    let path = format!("/admin/v1/sites/{}", want.client_id);
    let have: SiteView = client
        .get(&format!("{path}?consistency=linearizable"))
        .await?;
    if !fresh_secret && same_registration(&have, want) {
        return Ok(());
    }
    match client.delete(&path).await {
        Ok(()) => {}
        Err(e) if error_code(&e) == Some(ErrorCode::SiteNotFound) => {}
        Err(e) => return Err(e),
    }
    client
        .post::<_, CreatedSite>("/admin/v1/sites", want)
        .await
        .map(drop)
}

/// Creates the demo user with `password`; an existing one gets the password
/// only when it was made now (`fresh_password`).
async fn ensure_user(
    client: &AdminClient,
    password: &str,
    fresh_password: bool,
) -> anyhow::Result<()> {
    let req = CreateUserRequest {
        username: DEMO_USER.into(),
        display_name: Some(DEMO_USER_NAME.into()),
        email: Some(DEMO_USER_EMAIL.into()),
        password: Some(password.into()),
        ..Default::default()
    };
    match client.post::<_, UserView>("/admin/v1/users", &req).await {
        Ok(_) => Ok(()),
        Err(e) if error_code(&e) == Some(ErrorCode::UserExists) => {
            if fresh_password {
                let update = UpdateUserRequest {
                    password: Some(password.into()),
                    ..Default::default()
                };
                client
                    .patch::<_, UserView>(&format!("/admin/v1/users/{DEMO_USER}"), &update)
                    .await?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=9).contains(&args.nodes),
        "--nodes must be between 1 and 9"
    );
    let last_offset = SITES
        .iter()
        .map(|s| s.offset)
        .max()
        .unwrap_or(0)
        .max(300 + args.nodes);
    anyhow::ensure!(
        args.base_port.checked_add(last_offset).is_some(),
        "--base-port too high"
    );
    let base = args.base_port;
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let pki_dir = dir.join("pki");
    ensure_pki(&pki_dir, args.nodes)?;
    let token_file = dir.join("admin-token");
    let (token, _) = ensure_secret_file(&token_file, || hex::encode(rand::random::<[u8; 24]>()))?;
    let public = |i: u16| addr(base + i - 1);
    let cluster = |i: u16| addr(base + 100 + i - 1);
    let manage = |i: u16| addr(base + 300 + i - 1);
    let agency_url = |i: u16| format!("https://{AGENCY_HOST}:{}", base + i - 1);
    let issuer = agency_url(1);
    let ca = pki::ca_cert_path(&pki_dir);

    let exe = std::env::current_exe().context("locating the baa binary")?;
    let partner_bin = partner_site_bin(&exe)?;
    let mut children = Children(Vec::new());
    for i in 1..=args.nodes {
        let (cert, key) = pki::server_paths(&pki_dir, &pki::node_name(u64::from(i)));
        let (cluster_cert, cluster_key) = pki::cluster_paths(&pki_dir, u64::from(i));
        let file = FileConfig {
            node_id: u64::from(i),
            data_dir: dir.join(format!("node{i}")),
            public_listen: public(i).parse()?,
            cluster_listen: cluster(i).parse()?,
            manage_listen: manage(i).parse()?,
            public_advertise: None,
            cluster_advertise: None,
            cluster_source_ip: None,
            admin_token: None,
            admin_token_file: Some(token_file.clone()),
            log_format: LogFormat::Json,
            log_level: "info".into(),
            tls: TlsFiles {
                cert,
                key,
                cluster_ca: pki::cluster_ca_cert_path(&pki_dir),
                cluster_cert,
                cluster_key,
                ca_cert: None,
            },
            raft: RaftTuning::default(),
            limits: Default::default(),
            sso: SsoConfig {
                agency: AGENCY.into(),
                issuer: Some(issuer.clone()),
                cookie_domain: Some(COOKIE_DOMAIN.into()),
                // The sites' certificates come from the demo's web CA.
                partner_ca_file: Some(ca.clone()),
                ..Default::default()
            },
            peers: (1..=args.nodes)
                .filter(|j| *j != i)
                .map(|j| Peer {
                    id: u64::from(j),
                    public_addr: public(j),
                    cluster_addr: cluster(j),
                })
                .collect(),
            gateway: Vec::new(),
            forward_auth: Vec::new(),
            federation: Default::default(),
        };
        let config_path = dir.join(format!("node{i}.toml"));
        std::fs::write(&config_path, toml::to_string_pretty(&file)?)?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("serve").arg("--config").arg(&config_path);
        children.spawn(format!("node {i}"), cmd, &dir.join(format!("node{i}.log")))?;
    }

    let clients: Vec<AdminClient> = (1..=args.nodes)
        .map(|i| AdminClient::with(&format!("https://{}", manage(i)), &ca, &token))
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
            children.check()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    match clients[0]
        .post::<_, serde_json::Value>("/admin/v1/cluster/init", &serde_json::json!({}))
        .await
    {
        Ok(_) => {}
        Err(e) if error_code(&e) == Some(ErrorCode::AlreadyInitialized) => {}
        Err(e) => return Err(e.context("initialising the cluster")),
    }
    for (i, c) in clients.iter().enumerate() {
        while !c.is_ok("/readyz").await {
            anyhow::ensure!(
                Instant::now() < deadline,
                "node {} did not become ready",
                i + 1
            );
            children.check()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Partner sites and the demo user, registered through the admin API.
    let admin = &clients[0];
    let deadline = Instant::now() + Duration::from_secs(60);
    for site in &SITES {
        let (secret, fresh) = ensure_secret_file(&site.secret_file(&dir), || {
            hex::encode(rand::random::<[u8; 32]>())
        })?;
        let want = site.registration(base, &secret);
        retry(
            &format!("registering the site {}", site.id),
            deadline,
            || ensure_site(admin, &want, fresh),
        )
        .await?;
    }
    // The public native client `baa login` uses (loopback, any port).
    let cli = CreateSiteRequest {
        client_id: "baa-cli".into(),
        name: Some("baa command line".into()),
        redirect_uris: vec!["http://127.0.0.1/callback".into()],
        allowed_scopes: Some(
            ["openid", "profile", "offline_access"]
                .map(String::from)
                .to_vec(),
        ),
        public: true,
        ..Default::default()
    };
    retry("registering the baa-cli client", deadline, || async {
        match admin.post::<_, CreatedSite>("/admin/v1/sites", &cli).await {
            Err(e) if error_code(&e) != Some(ErrorCode::SiteExists) => Err(e),
            _ => Ok(()),
        }
    })
    .await?;
    let (password, fresh) = ensure_secret_file(&dir.join(format!("{DEMO_USER}-password")), || {
        new_password()
    })?;
    retry("creating the demo user", deadline, || {
        ensure_user(admin, &password, fresh)
    })
    .await?;

    for site in &SITES {
        let (cert, key) = pki::server_paths(&pki_dir, site.id);
        let mut cmd = std::process::Command::new(&partner_bin);
        cmd.arg("--listen")
            .arg(addr(site.port(base)))
            .arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key)
            .arg("--ca-file")
            .arg(&ca)
            .arg("--public-url")
            .arg(site.public_url(base))
            .arg("--name")
            .arg(site.name)
            .arg("--client-id")
            .arg(site.id)
            .arg("--client-secret-file")
            .arg(site.secret_file(&dir))
            .arg("--issuer")
            .arg(&issuer)
            .arg("--resolve")
            .arg(format!("{AGENCY_HOST}=127.0.0.1"))
            .arg("--scope")
            .arg("openid profile email");
        for i in 1..=args.nodes {
            cmd.arg("--agency").arg(agency_url(i));
        }
        children.spawn(
            format!("site {}", site.id),
            cmd,
            &dir.join(format!("{}.log", site.id)),
        )?;
    }
    for site in &SITES {
        let probe = AdminClient::with(&format!("https://{}", addr(site.port(base))), &ca, "")?;
        while !probe.is_ok("/healthz").await {
            anyhow::ensure!(
                Instant::now() < deadline,
                "site {} did not start; see {}/{}.log",
                site.id,
                dir.display(),
                site.id
            );
            children.check()?;
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
        println!(
            "  node {i}: https://{}  admin: https://{}{role}",
            public(i),
            manage(i)
        );
    }
    println!("  CA certificate: {}", ca.display());
    println!("  admin token: {token}");
    println!(
        "Try:  baa --url https://{} --ca {} --token {token} user list",
        manage(1),
        ca.display()
    );
    println!();
    println!("Single sign-on (agency {AGENCY}, cookie domain {COOKIE_DOMAIN}):");
    println!("  agency: {issuer}/");
    for site in &SITES {
        println!("  {} site: {}/", site.id, site.public_url(base));
    }
    println!(
        "  native app: baa login --agency {issuer} --ca {} --resolve login.baa.localtest=127.0.0.1",
        ca.display()
    );
    println!("  demo user: {DEMO_USER}");
    println!("  password: {password}");
    println!(
        "Browsers must resolve *.{COOKIE_DOMAIN} to 127.0.0.1, e.g. with this /etc/hosts line:"
    );
    let hosts: Vec<&str> = std::iter::once(AGENCY_HOST)
        .chain(SITES.iter().map(|s| s.host))
        .collect();
    println!("    127.0.0.1 {}", hosts.join(" "));
    println!("  or by starting Chromium with --host-resolver-rules=\"MAP *.localtest 127.0.0.1\";");
    println!("  and must trust the demo CA at {}.", ca.display());
    let nodes: Vec<serde_json::Value> = (1..=args.nodes)
        .map(|i| {
            serde_json::json!({
                "id": i,
                "public_url": format!("https://{}", public(i)),
                "admin_url": format!("https://{}", manage(i)),
            })
        })
        .collect();
    let sites: Vec<serde_json::Value> = SITES
        .iter()
        .map(|s| serde_json::json!({ "client_id": s.id, "url": s.public_url(base) }))
        .collect();
    let summary = serde_json::json!({
        "agencies": [{
            "name": AGENCY,
            "issuer": issuer,
            "host": AGENCY_HOST,
            "cookie_domain": COOKIE_DOMAIN,
            "ca": ca,
            "admin_token": token,
            "nodes": nodes,
            "sites": sites,
            "users": [{ "username": DEMO_USER, "password": password }],
        }],
    });
    let json_path = dir.join("demo.json");
    write_private(&json_path, &serde_json::to_vec_pretty(&summary)?)?;
    println!("  all of the above for scripts: {}", json_path.display());
    println!("baa demo is ready. Press Ctrl-C to stop.");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut watch = tokio::time::interval(Duration::from_millis(500));
    let outcome = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = term.recv() => break Ok(()),
            _ = watch.tick() => {
                if let Err(e) = children.check() {
                    break Err(e);
                }
            }
        }
    };
    println!("baa demo: stopping nodes and sites");
    children.stop();
    println!("baa demo: stopped");
    outcome
}

/// The demo partner site's binary, `baa-partner-site`, beside `baa` (both
/// come from one build or one release archive).
fn partner_site_bin(baa: &Path) -> anyhow::Result<PathBuf> {
    let bin = baa.with_file_name("baa-partner-site");
    anyhow::ensure!(
        bin.exists(),
        "the demo's partner sites need {}: build it with `cargo build --release --workspace --bins` \
         (or install the baa-partner-site crate next to baa)",
        bin.display()
    );
    Ok(bin)
}
