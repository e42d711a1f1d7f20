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
use baa_proto::sso::{IdTokenAlg, ResponseMode};
use baa_proto::ErrorCode;
use clap::Args;

use super::client::{error_code, AdminClient, ApiError};
use crate::config::{FileConfig, LogFormat, Peer, RaftTuning, SecretsConfig, SsoConfig, TlsFiles};
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
    /// Number of agencies: 1, or 2 federated agencies on one cookie domain
    /// (`login-a.baa.localtest` with the site `shop`, `login-b.baa.localtest`
    /// with the site `news`, each with its own demo user, data in `a/` and
    /// `b/`; the second agency's ports are the first's plus 1000).
    #[arg(long, default_value_t = 1)]
    agencies: u16,
}

/// The shared cookie domain of the agencies and their partner sites.
const COOKIE_DOMAIN: &str = "baa.localtest";

/// A demo user: username, display name, email.
type DemoUser = (&'static str, &'static str, &'static str);
const ALICE: DemoUser = ("alice", "Alice Example", "alice@example.test");
const BOB: DemoUser = ("bob", "Bob Example", "bob@example.test");

/// Port offset of the second agency of `--agencies 2`.
const SECOND_AGENCY_PORTS: u16 = 1000;

/// One agency of the demo: its name, host, files, ports, sites and user.
struct Plan {
    name: &'static str,
    host: &'static str,
    dir: PathBuf,
    base: u16,
    nodes: u16,
    sites: Vec<&'static DemoSite>,
    user: DemoUser,
    federation: crate::config::FederationConfig,
}

impl Plan {
    fn agency_url(&self, i: u16) -> String {
        format!("https://{}:{}", self.host, self.base + i - 1)
    }
    fn issuer(&self) -> String {
        self.agency_url(1)
    }
    fn public(&self, i: u16) -> String {
        addr(self.base + i - 1)
    }
    fn cluster(&self, i: u16) -> String {
        addr(self.base + 100 + i - 1)
    }
    fn manage(&self, i: u16) -> String {
        addr(self.base + 300 + i - 1)
    }
}

/// An agency of the demo, up and configured.
struct Started {
    clients: Vec<AdminClient>,
    token: String,
    password: String,
    ca: PathBuf,
}

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
    /// The algorithm of its ID tokens (the demo shows the two besides RS256).
    id_token_alg: IdTokenAlg,
}

const SITES: [DemoSite; 2] = [
    DemoSite {
        id: "shop",
        name: "Demo Shop",
        host: "shop.baa.localtest",
        offset: 200,
        id_token_alg: IdTokenAlg::Es256,
    },
    DemoSite {
        id: "news",
        name: "Demo News",
        host: "news.baa.localtest",
        offset: 201,
        id_token_alg: IdTokenAlg::EdDsa,
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
            id_token_signed_response_alg: Some(self.id_token_alg),
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
fn ensure_pki(dir: &Path, plan: &Plan) -> anyhow::Result<()> {
    pki::ensure_cas(dir, "baa demo")?;
    let (nodes, agency_host) = (plan.nodes, [plan.host.to_string()]);
    for i in 1..=u64::from(nodes) {
        let public = pki::server_paths(dir, &pki::node_name(i)).0;
        let cluster = pki::cluster_paths(dir, i).0;
        if !pki::cert_fits(&public, &agency_host, false)? || !pki::cert_fits(&cluster, &[], true)? {
            pki::issue_node(dir, i, &agency_host, &[])?;
        }
    }
    for site in &plan.sites {
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
    crate::secrets::create_private_file(path, secret.as_bytes())?;
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
        && Some(have.id_token_signed_response_alg) == want.id_token_signed_response_alg
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
    user: DemoUser,
    password: &str,
    fresh_password: bool,
) -> anyhow::Result<()> {
    let req = CreateUserRequest {
        username: user.0.into(),
        display_name: Some(user.1.into()),
        email: Some(user.2.into()),
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
                    .patch::<_, UserView>(&format!("/admin/v1/users/{}", user.0), &update)
                    .await?;
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// The agencies `args` asks for.
fn plans(args: &DemoArgs, dir: &Path) -> anyhow::Result<Vec<Plan>> {
    anyhow::ensure!(
        (1..=9).contains(&args.nodes),
        "--nodes must be between 1 and 9"
    );
    anyhow::ensure!(
        (1..=2).contains(&args.agencies),
        "--agencies must be 1 or 2"
    );
    let last_port = |base: u16| {
        let last = SITES.iter().map(|s| s.offset).max().unwrap_or(0);
        base.checked_add(last.max(300 + args.nodes))
    };
    let single = || Plan {
        name: "baa-demo",
        host: "login.baa.localtest",
        dir: dir.to_path_buf(),
        base: args.base_port,
        nodes: args.nodes,
        sites: SITES.iter().collect(),
        user: ALICE,
        federation: Default::default(),
    };
    if args.agencies == 1 {
        anyhow::ensure!(last_port(args.base_port).is_some(), "--base-port too high");
        return Ok(vec![single()]);
    }
    let second = args.base_port.checked_add(SECOND_AGENCY_PORTS);
    anyhow::ensure!(second.and_then(last_port).is_some(), "--base-port too high");
    // Each agency trusts both web CAs for its peer, and finds both hosts
    // on loopback.
    let federation = crate::config::FederationConfig {
        ca_file: Some(dir.join("peer-cas.pem")),
        resolve: vec![
            "login-a.baa.localtest=127.0.0.1".into(),
            "login-b.baa.localtest=127.0.0.1".into(),
        ],
        ..Default::default()
    };
    Ok(vec![
        Plan {
            name: "baa-demo-a",
            host: "login-a.baa.localtest",
            dir: dir.join("a"),
            sites: vec![&SITES[0]],
            federation: federation.clone(),
            ..single()
        },
        Plan {
            name: "baa-demo-b",
            host: "login-b.baa.localtest",
            dir: dir.join("b"),
            base: args.base_port + SECOND_AGENCY_PORTS,
            sites: vec![&SITES[1]],
            user: BOB,
            federation,
            ..single()
        },
    ])
}

/// Writes each node's configuration and starts it.
fn spawn_nodes(
    plan: &Plan,
    token_file: &Path,
    kek_file: &Path,
    children: &mut Children,
) -> anyhow::Result<()> {
    let pki_dir = plan.dir.join("pki");
    let exe = std::env::current_exe().context("locating the baa binary")?;
    for i in 1..=plan.nodes {
        let (cert, key) = pki::server_paths(&pki_dir, &pki::node_name(u64::from(i)));
        let (cluster_cert, cluster_key) = pki::cluster_paths(&pki_dir, u64::from(i));
        let file = FileConfig {
            node_id: u64::from(i),
            data_dir: plan.dir.join(format!("node{i}")),
            public_listen: plan.public(i).parse()?,
            cluster_listen: plan.cluster(i).parse()?,
            manage_listen: plan.manage(i).parse()?,
            public_advertise: None,
            cluster_advertise: None,
            cluster_source_ip: None,
            admin_token: None,
            admin_token_file: Some(token_file.to_path_buf()),
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
                agency: plan.name.into(),
                issuer: Some(plan.issuer()),
                cookie_domain: Some(COOKIE_DOMAIN.into()),
                // The sites' certificates come from the demo's web CA.
                partner_ca_file: Some(pki::ca_cert_path(&pki_dir)),
                ..Default::default()
            },
            peers: (1..=plan.nodes)
                .filter(|j| *j != i)
                .map(|j| Peer {
                    id: u64::from(j),
                    public_addr: plan.public(j),
                    cluster_addr: plan.cluster(j),
                })
                .collect(),
            gateway: Vec::new(),
            forward_auth: Vec::new(),
            federation: plan.federation.clone(),
            secrets: SecretsConfig {
                kek_file: Some(kek_file.to_path_buf()),
                previous_kek_files: Vec::new(),
            },
        };
        let config_path = plan.dir.join(format!("node{i}.toml"));
        std::fs::write(&config_path, toml::to_string_pretty(&file)?)?;
        let mut cmd = std::process::Command::new(&exe);
        cmd.arg("serve").arg("--config").arg(&config_path);
        let log = plan.dir.join(format!("node{i}.log"));
        children.spawn(format!("{} node {i}", plan.name), cmd, &log)?;
    }
    Ok(())
}

/// Waits until `ok` holds for every client, or fails at `deadline`.
async fn wait_all(
    clients: &[AdminClient],
    path: &str,
    what: &str,
    deadline: Instant,
    children: &mut Children,
) -> anyhow::Result<()> {
    for (i, c) in clients.iter().enumerate() {
        while !c.is_ok(path).await {
            anyhow::ensure!(Instant::now() < deadline, "node {} {what}", i + 1);
            children.check()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Starts one agency: its nodes (the cluster initialised), its sites and
/// its demo user.
/// One line of start-up progress on stderr (stdout keeps the summary).
fn progress(plan: &Plan, began: Instant, what: &str) {
    eprintln!(
        "baa demo: agency {}: {what} ({:.1} s)",
        plan.name,
        began.elapsed().as_secs_f64()
    );
}

async fn start_agency(plan: &Plan, children: &mut Children) -> anyhow::Result<Started> {
    let began = Instant::now();
    std::fs::create_dir_all(&plan.dir)?;
    let pki_dir = plan.dir.join("pki");
    ensure_pki(&pki_dir, plan)?;
    let token_file = plan.dir.join("admin-token");
    let (token, _) = ensure_secret_file(&token_file, || hex::encode(rand::random::<[u8; 24]>()))?;
    let ca = pki::ca_cert_path(&pki_dir);
    // The agency's key-encryption key, beside its PKI (never in a node's
    // data directory), kept for the next run like the data.
    let kek_file = plan.dir.join("kek");
    if !kek_file.exists() {
        crate::kek::write_new_kek_file(&kek_file)?;
    }
    spawn_nodes(plan, &token_file, &kek_file, children)?;
    progress(plan, began, &format!("started {} nodes", plan.nodes));
    let clients: Vec<AdminClient> = (1..=plan.nodes)
        .map(|i| AdminClient::with(&format!("https://{}", plan.manage(i)), &ca, &token))
        .collect::<Result<_, _>>()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let logs = format!("did not start; see the logs in {}", plan.dir.display());
    wait_all(&clients, "/healthz", &logs, deadline, children).await?;
    progress(plan, began, "every node answers");
    match clients[0]
        .post::<_, serde_json::Value>("/admin/v1/cluster/init", &serde_json::json!({}))
        .await
    {
        Ok(_) => {}
        Err(e) if error_code(&e) == Some(ErrorCode::AlreadyInitialized) => {}
        Err(e) => return Err(e.context("initialising the cluster")),
    }
    wait_all(
        &clients,
        "/readyz",
        "did not become ready",
        deadline,
        children,
    )
    .await?;
    progress(plan, began, "a leader is elected, every node is ready");
    let password = configure(plan, &clients[0]).await?;
    progress(
        plan,
        began,
        "sites, the baa-cli client and the demo user registered",
    );
    start_sites(plan, &ca, children).await?;
    progress(plan, began, "partner sites answer");
    Ok(Started {
        clients,
        token,
        password,
        ca,
    })
}

/// Registers the agency's sites, the `baa login` client and the demo user
/// through the admin API; answers the user's password.
async fn configure(plan: &Plan, admin: &AdminClient) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    for site in &plan.sites {
        let (secret, fresh) = ensure_secret_file(&site.secret_file(&plan.dir), || {
            hex::encode(rand::random::<[u8; 32]>())
        })?;
        let want = site.registration(plan.base, &secret);
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
    let user = plan.user;
    let password_file = plan.dir.join(format!("{}-password", user.0));
    let (password, fresh) = ensure_secret_file(&password_file, new_password)?;
    retry("creating the demo user", deadline, || {
        ensure_user(admin, user, &password, fresh)
    })
    .await?;
    Ok(password)
}

/// Starts the agency's partner sites and waits until they answer.
async fn start_sites(plan: &Plan, ca: &Path, children: &mut Children) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the baa binary")?;
    let partner_bin = partner_site_bin(&exe)?;
    let pki_dir = plan.dir.join("pki");
    for site in &plan.sites {
        let (cert, key) = pki::server_paths(&pki_dir, site.id);
        let mut cmd = std::process::Command::new(&partner_bin);
        cmd.arg("--listen")
            .arg(addr(site.port(plan.base)))
            .arg("--cert-file")
            .arg(&cert)
            .arg("--key-file")
            .arg(&key)
            .arg("--ca-file")
            .arg(ca)
            .arg("--public-url")
            .arg(site.public_url(plan.base))
            .arg("--name")
            .arg(site.name)
            .arg("--client-id")
            .arg(site.id)
            .arg("--client-secret-file")
            .arg(site.secret_file(&plan.dir))
            .arg("--issuer")
            .arg(plan.issuer())
            .arg("--resolve")
            .arg(format!("{}=127.0.0.1", plan.host))
            .arg("--scope")
            .arg("openid profile email")
            .arg("--id-token-alg")
            .arg(site.id_token_alg.name());
        for i in 1..=plan.nodes {
            cmd.arg("--agency").arg(plan.agency_url(i));
        }
        let log = plan.dir.join(format!("{}.log", site.id));
        children.spawn(format!("site {}", site.id), cmd, &log)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for site in &plan.sites {
        let url = format!("https://{}", addr(site.port(plan.base)));
        let probe = AdminClient::with(&url, ca, "")?;
        while !probe.is_ok("/healthz").await {
            anyhow::ensure!(
                Instant::now() < deadline,
                "site {} did not start; see {}/{}.log",
                site.id,
                plan.dir.display(),
                site.id
            );
            children.check()?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The pin of an agency's federation key, from its own admin API.
async fn federation_pin(admin: &AdminClient) -> anyhow::Result<String> {
    let key: serde_json::Value = admin.get("/admin/v1/federation/key").await?;
    key["pin"]
        .as_str()
        .map(String::from)
        .context("the agency answered no federation key")
}

/// Peers every agency with every other, against the pins their own admin
/// APIs give (the demo holds both; real peers exchange pins out of band).
async fn peer_all(plans: &[Plan], started: &[Started]) -> anyhow::Result<()> {
    let mut pem = Vec::new();
    for s in started {
        pem.extend(std::fs::read(&s.ca)?);
    }
    if let Some(bundle) = plans.first().and_then(|p| p.federation.ca_file.as_ref()) {
        std::fs::write(bundle, pem)?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, (plan, s)) in plans.iter().zip(started).enumerate() {
        for (j, (peer, ps)) in plans.iter().zip(started).enumerate() {
            if i == j {
                continue;
            }
            let pin = retry("reading a federation key", deadline, || {
                federation_pin(&ps.clients[0])
            })
            .await?;
            let body = serde_json::json!({ "issuer": peer.issuer(), "pin": pin });
            retry(
                &format!("peering {} with {}", plan.name, peer.name),
                deadline,
                || async {
                    match s.clients[0]
                        .post::<_, serde_json::Value>("/admin/v1/federation/peers", &body)
                        .await
                    {
                        Err(e) if error_code(&e) != Some(ErrorCode::PeerExists) => Err(e),
                        _ => Ok(()),
                    }
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// Prints what one agency offers, and answers its part of `demo.json`.
async fn describe(plan: &Plan, s: &Started) -> anyhow::Result<serde_json::Value> {
    let status: ClusterStatus = s.clients[0].get("/admin/v1/cluster/status").await?;
    println!(
        "Agency {} ({}-node cluster, data in {}):",
        plan.name,
        plan.nodes,
        plan.dir.display()
    );
    for i in 1..=plan.nodes {
        let role = match status.leader == Some(u64::from(i)) {
            true => "  (leader)",
            false => "",
        };
        let (public, manage) = (plan.public(i), plan.manage(i));
        println!("  node {i}: https://{public}  admin: https://{manage}{role}");
    }
    let (ca, token, issuer) = (s.ca.display(), &s.token, plan.issuer());
    println!("  CA certificate: {ca}");
    println!("  admin token: {token}");
    println!(
        "  try:  baa --url https://{} --ca {ca} --token {token} user list",
        plan.manage(1)
    );
    println!("  agency: {issuer}/  (cookie domain {COOKIE_DOMAIN})");
    for site in &plan.sites {
        println!("  {} site: {}/", site.id, site.public_url(plan.base));
    }
    println!(
        "  native app: baa login --agency {issuer} --ca {ca} --resolve {}=127.0.0.1",
        plan.host
    );
    println!("  demo user: {}", plan.user.0);
    println!("  password: {}", s.password);
    let nodes: Vec<serde_json::Value> = (1..=plan.nodes)
        .map(|i| {
            serde_json::json!({
                "id": i,
                "public_url": format!("https://{}", plan.public(i)),
                "admin_url": format!("https://{}", plan.manage(i)),
            })
        })
        .collect();
    let sites: Vec<serde_json::Value> = plan
        .sites
        .iter()
        .map(|site| serde_json::json!({ "client_id": site.id, "url": site.public_url(plan.base) }))
        .collect();
    Ok(serde_json::json!({
        "name": plan.name,
        "issuer": issuer,
        "host": plan.host,
        "cookie_domain": COOKIE_DOMAIN,
        "ca": s.ca,
        "admin_token": s.token,
        "nodes": nodes,
        "sites": sites,
        "users": [{ "username": plan.user.0, "password": s.password }],
    }))
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let plans = plans(&args, &dir)?;
    let mut children = Children(Vec::new());
    let mut started = Vec::new();
    for plan in &plans {
        started.push(start_agency(plan, &mut children).await?);
    }
    if plans.len() > 1 {
        peer_all(&plans, &started).await?;
    }

    println!("baa demo: {} agency cluster(s)", plans.len());
    let mut agencies = Vec::new();
    for (plan, s) in plans.iter().zip(&started) {
        agencies.push(describe(plan, s).await?);
    }
    if plans.len() > 1 {
        println!(
            "The agencies are peers: a user signed in at one is signed in at the other's site."
        );
    }
    println!(
        "Browsers must resolve *.{COOKIE_DOMAIN} to 127.0.0.1, e.g. with this /etc/hosts line:"
    );
    let hosts: Vec<&str> = plans
        .iter()
        .flat_map(|p| std::iter::once(p.host).chain(p.sites.iter().map(|s| s.host)))
        .collect();
    println!("    127.0.0.1 {}", hosts.join(" "));
    println!("  or by starting Chromium with --host-resolver-rules=\"MAP *.localtest 127.0.0.1\";");
    println!("  and must trust the demo's CA certificates above.");
    let summary = serde_json::json!({ "agencies": agencies });
    let json_path = dir.join("demo.json");
    write_private(&json_path, &serde_json::to_vec_pretty(&summary)?)?;
    println!("All of the above for scripts: {}", json_path.display());
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
