//! `baa cluster …`, `baa user …`, `baa site …` and `baa keys …`: thin
//! clients of the admin API.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use baa_proto::api::{
    ClusterStatus, CreateSiteRequest, CreateUserRequest, CreatedSite, JoinRequest, LeaveRequest,
    ListPage, ListQuery, SessionList, SiteList, SiteView, TrustList, UpdateUserRequest, UserList,
    UserView, MAX_PAGE_LIMIT,
};
use baa_proto::model::NodeId;
use baa_proto::sso::AccountName;
use baa_proto::sso::{IdTokenAlg, ResponseMode};
use clap::Subcommand;
use serde::de::DeserializeOwned;

use super::client::{AdminClient, Connection};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Initialise a new cluster: the node at --url and its configured peers become voters.
    Init,
    /// Add a node: as learner until caught up, then as voter (unless --learner).
    Join {
        /// The new node's id.
        #[arg(long)]
        id: NodeId,
        /// Its public host:port.
        #[arg(long)]
        public_addr: String,
        /// Its cluster host:port.
        #[arg(long)]
        cluster_addr: String,
        /// Leave it a learner (no vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    Leave {
        /// The node to remove.
        #[arg(long)]
        id: NodeId,
    },
    /// Show every member's view: leader, term, log and applied index, state
    /// digest. Exits non-zero when a member does not answer or no member
    /// knows a leader.
    Status {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user.
    Create {
        /// Login name.
        username: String,
        /// Name shown to people.
        #[arg(long)]
        display_name: Option<String>,
        /// Contact address.
        #[arg(long)]
        email: Option<String>,
        /// Group membership (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Attribute key=value (repeatable).
        #[arg(long = "attr", value_parser = parse_kv)]
        attrs: Vec<(String, String)>,
        /// Read the initial password from standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Show one user.
    Get {
        /// Login name.
        username: String,
        /// Confirm with the leader that the answer is current.
        #[arg(long)]
        linearizable: bool,
    },
    /// List users in username order (every page of them) as JSON.
    List {
        /// Only users whose names start with this.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many users.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Change a user's attributes or profile.
    Set {
        /// Login name.
        username: String,
        /// New display name.
        #[arg(long)]
        display_name: Option<String>,
        /// New email ("" clears it).
        #[arg(long)]
        email: Option<String>,
        /// Set attribute key=value (repeatable).
        #[arg(long = "attr", value_parser = parse_kv)]
        attrs: Vec<(String, String)>,
        /// Remove attribute (repeatable).
        #[arg(long = "unset-attr")]
        unset: Vec<String>,
    },
    /// Set a user's password, read from standard input.
    Passwd {
        /// Login name.
        username: String,
    },
    /// Disable a user.
    Disable {
        /// Login name.
        username: String,
    },
    /// Re-enable a user.
    Enable {
        /// Login name.
        username: String,
    },
    /// A user's trust relationships with partner sites.
    Trust {
        #[command(subcommand)]
        command: TrustCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// List the sites a user has approved, with the login parameters chosen.
    List {
        /// Login name.
        username: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Withdraw a user's approval of a site; the next sign-in there asks again.
    Revoke {
        /// Login name.
        username: String,
        /// The site's client id.
        client_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List a user's live sessions, oldest first (public handles only,
    /// never a secret).
    List {
        /// Login name.
        #[arg(long)]
        user: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End sessions, with every token bound to them; their sites hear of it
    /// over the back channel.
    Revoke {
        /// End every session of this user.
        #[arg(long, required_unless_present = "sid", conflicts_with = "sid")]
        user: Option<String>,
        /// End the session with this public handle.
        #[arg(long)]
        sid: Option<String>,
    },
}

/// Runs a `baa session` subcommand.
pub async fn session(conn: &Connection, command: SessionCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(conn)?;
    match command {
        SessionCommand::List { user, json } => {
            let path = format!("/admin/v1/users/{user}/sessions");
            let mut sessions = list_all::<SessionList>(&client, &path, None, None).await?;
            sessions.sort_by_key(|s| s.created_ms);
            if json {
                return print_json(&sessions);
            }
            if sessions.is_empty() {
                println!("{user} has no live session");
                return Ok(());
            }
            println!(
                "{:<32}  {:<24}  {:<24}  sites",
                "sid", "signed in", "last used"
            );
            for s in &sessions {
                println!(
                    "{:<32}  {:<24}  {:<24}  {}",
                    s.sid,
                    time_ms(s.created_ms),
                    time_ms(s.last_seen_ms),
                    s.sites.join(" ")
                );
            }
            Ok(())
        }
        SessionCommand::Revoke { user, sid } => {
            let path = match (&user, &sid) {
                (_, Some(sid)) => format!("/admin/v1/sessions/{sid}"),
                (Some(user), None) => format!("/admin/v1/users/{user}/sessions"),
                (None, None) => anyhow::bail!("give --user or --sid"),
            };
            let ended: baa_proto::api::SessionsEnded = client.delete_json(&path).await?;
            println!("{} session(s) ended", ended.revoked);
            Ok(())
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Register a partner site (an OpenID Connect client).
    Add {
        /// The site's client id: 1-64 of a-z 0-9 . _ -
        #[arg(long)]
        client_id: String,
        /// Name shown to users.
        #[arg(long)]
        name: String,
        /// Login handler: an exact redirect URI (repeatable, at least one).
        #[arg(long = "redirect-uri", required = true)]
        redirect_uris: Vec<String>,
        /// Where logout may return to (repeatable).
        #[arg(long = "post-logout-redirect-uri")]
        post_logout_redirect_uris: Vec<String>,
        /// URI the agency calls to log a session out at the site.
        #[arg(long)]
        backchannel_logout_uri: Option<String>,
        /// A scope the site may ask for (repeatable); default openid, profile, email.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// A public client: no secret, PKCE required.
        #[arg(long, conflicts_with = "client_secret_file")]
        public: bool,
        /// Read the client secret (32-256 characters, first line) from this
        /// file instead of generating one.
        #[arg(long)]
        client_secret_file: Option<PathBuf>,
        /// How tickets reach the site when it names no response_mode:
        /// `query` (the default, as OpenID Connect says) or `form_post`
        /// (an auto-submitting form, for seed-style sites).
        #[arg(long, value_parser = parse_response_mode)]
        default_response_mode: Option<ResponseMode>,
        /// The algorithm of the site's ID tokens: RS256 (the default), ES256
        /// or EdDSA.
        #[arg(long, value_parser = parse_id_token_alg)]
        id_token_alg: Option<IdTokenAlg>,
        /// Print the registered site and its secret as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List partner sites in client id order (every page of them).
    List {
        /// Only sites whose client ids start with this.
        #[arg(long)]
        prefix: Option<String>,
        /// At most this many sites.
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one partner site.
    Get {
        /// The site's client id.
        client_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a partner site; users' approvals of it go with it.
    Remove {
        /// The site's client id.
        client_id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum FederationCommand {
    /// Add a peer agency: its entity configuration is fetched and must be
    /// signed by the federation key whose thumbprint is --pin.
    Add {
        /// The peer's issuer URL, e.g. https://login-b.example.
        #[arg(long)]
        issuer: String,
        /// RFC 7638 thumbprint of the peer's federation key, learnt from its
        /// administrators (the `kid` of its entity configuration). A
        /// thumbprint may begin with `-`, and is taken as the value.
        #[arg(long, allow_hyphen_values = true)]
        pin: String,
    },
    /// List the peer agencies.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a peer agency.
    Remove {
        /// The peer's issuer URL.
        #[arg(long)]
        issuer: String,
    },
    /// Print this agency's pin: the thumbprint of its federation key, which
    /// the administrators of a peer give `baa federation add --pin`.
    Pin,
    /// Rotate the federation key: the new key is published at once and
    /// signs after the overlap, by when every peer has seen it and pinned it.
    RotateKey {
        /// Seconds the current key keeps signing (at least twice the peers'
        /// refresh_s; default one day).
        #[arg(long)]
        overlap_s: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new signing key current; the old one stays published until the
    /// tokens it signed have expired. Prints the published keys (JWKS).
    Rotate,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
}

/// Every item of the admin list at `path` (at most `max`), page after page
/// until a page names no next one.
async fn list_all<P: ListPage + DeserializeOwned>(
    client: &AdminClient,
    path: &str,
    prefix: Option<String>,
    max: Option<usize>,
) -> anyhow::Result<Vec<P::Item>> {
    let max = max.unwrap_or(usize::MAX);
    let mut items = Vec::new();
    let mut query = Some(ListQuery {
        prefix,
        ..Default::default()
    });
    while let Some(mut q) = query.take().filter(|_| items.len() < max) {
        let left = u32::try_from(max - items.len()).unwrap_or(u32::MAX);
        q.limit = Some(left.min(MAX_PAGE_LIMIT));
        let page: P = client
            .get(&format!("{path}?{}", serde_urlencoded::to_string(&q)?))
            .await?;
        let (found, next) = page.into_parts();
        items.extend(found);
        query = q.after(next);
    }
    Ok(items)
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn read_password() -> anyhow::Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("reading the password from standard input")?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

/// The leader's client, found through the node at --url.
/// Runs a `baa cluster` subcommand.
pub async fn cluster(conn: &Connection, command: ClusterCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(conn)?;
    match command {
        ClusterCommand::Init => {
            let v: serde_json::Value = client
                .post("/admin/v1/cluster/init", &serde_json::json!({}))
                .await?;
            print_json(&v)
        }
        ClusterCommand::Join {
            id,
            public_addr,
            cluster_addr,
            learner,
        } => {
            // Any node takes it: it forwards the change to the leader.
            let req = JoinRequest {
                id,
                public_addr,
                cluster_addr,
                voter: !learner,
            };
            let status: ClusterStatus = client.post("/admin/v1/cluster/join", &req).await?;
            print_json(&status)
        }
        ClusterCommand::Leave { id } => {
            let status: ClusterStatus = client
                .post("/admin/v1/cluster/leave", &LeaveRequest { id })
                .await?;
            print_json(&status)
        }
        ClusterCommand::Status { json } => {
            // The node asked gathers every member's view over the cluster port.
            let views: BTreeMap<NodeId, Result<ClusterStatus, String>> =
                client.get("/admin/v1/cluster/members").await?;
            if json {
                let ok: Vec<&ClusterStatus> =
                    views.values().filter_map(|v| v.as_ref().ok()).collect();
                print_json(&ok)?;
                return cluster_health(&views);
            }
            println!(
                "{:>4}  {:<9}  {:>6}  {:>4}  {:>8}  {:>8}  {:<16}",
                "node", "state", "leader", "term", "log", "applied", "digest"
            );
            let idx = |i: Option<u64>| i.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
            for (id, v) in &views {
                match v {
                    Ok(s) => println!(
                        "{:>4}  {:<9}  {:>6}  {:>4}  {:>8}  {:>8}  {:<16}",
                        id,
                        s.state,
                        idx(s.leader),
                        s.term,
                        idx(s.last_log_index),
                        idx(s.applied_index),
                        if s.digest.is_empty() {
                            "(applying)"
                        } else {
                            &s.digest[..16.min(s.digest.len())]
                        }
                    ),
                    Err(e) => println!("{id:>4}  unreachable: {e}"),
                }
            }
            cluster_health(&views)
        }
    }
}

/// An error (so a non-zero exit) when a member did not answer or none of
/// those that did knows a leader: what a monitoring script checks.
fn cluster_health(views: &BTreeMap<NodeId, Result<ClusterStatus, String>>) -> anyhow::Result<()> {
    let unreachable: Vec<NodeId> = views
        .iter()
        .filter(|(_, v)| v.is_err())
        .map(|(id, _)| *id)
        .collect();
    anyhow::ensure!(
        unreachable.is_empty(),
        "unhealthy: node(s) {unreachable:?} did not answer"
    );
    anyhow::ensure!(
        views.values().flatten().any(|s| s.leader.is_some()),
        "unhealthy: the cluster has no leader"
    );
    Ok(())
}

/// Runs a `baa user` subcommand.
pub async fn user(conn: &Connection, command: UserCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(conn)?;
    match command {
        UserCommand::Create {
            username,
            display_name,
            email,
            groups,
            attrs,
            password_stdin,
        } => {
            let password = if password_stdin {
                Some(read_password()?)
            } else {
                None
            };
            let req = CreateUserRequest {
                username,
                display_name,
                email,
                groups,
                attributes: attrs.into_iter().collect(),
                password,
            };
            let user: UserView = client.post("/admin/v1/users", &req).await?;
            print_json(&user)
        }
        UserCommand::Get {
            username,
            linearizable,
        } => {
            let consistency = if linearizable {
                "linearizable"
            } else {
                "local"
            };
            let user: UserView = client
                .get(&format!(
                    "/admin/v1/users/{username}?consistency={consistency}"
                ))
                .await?;
            print_json(&user)
        }
        UserCommand::List { prefix, limit } => {
            let users = list_all::<UserList>(&client, "/admin/v1/users", prefix, limit).await?;
            print_json(&users)
        }
        UserCommand::Set {
            username,
            display_name,
            email,
            attrs,
            unset,
        } => {
            let mut attributes: BTreeMap<String, Option<String>> =
                attrs.into_iter().map(|(k, v)| (k, Some(v))).collect();
            attributes.extend(unset.into_iter().map(|k| (k, None)));
            let req = UpdateUserRequest {
                display_name,
                email,
                attributes,
                ..Default::default()
            };
            let user: UserView = client
                .patch(&format!("/admin/v1/users/{username}"), &req)
                .await?;
            print_json(&user)
        }
        UserCommand::Passwd { username } => {
            let req = UpdateUserRequest {
                password: Some(read_password()?),
                ..Default::default()
            };
            let user: UserView = client
                .patch(&format!("/admin/v1/users/{username}"), &req)
                .await?;
            print_json(&user)
        }
        UserCommand::Disable { username } => {
            let user: UserView = client
                .post(
                    &format!("/admin/v1/users/{username}/disable"),
                    &serde_json::json!({}),
                )
                .await?;
            print_json(&user)
        }
        UserCommand::Enable { username } => {
            let user: UserView = client
                .post(
                    &format!("/admin/v1/users/{username}/enable"),
                    &serde_json::json!({}),
                )
                .await?;
            print_json(&user)
        }
        UserCommand::Trust { command } => trust(&client, command).await,
    }
}

async fn trust(client: &AdminClient, command: TrustCommand) -> anyhow::Result<()> {
    match command {
        TrustCommand::List { username, json } => {
            let list: TrustList = client
                .get(&format!("/admin/v1/users/{username}/trust"))
                .await?;
            if json {
                return print_json(&list.trust);
            }
            if list.trust.is_empty() {
                println!("{username} has approved no site");
                return Ok(());
            }
            println!(
                "{:<24}  {:<9}  {:<5}  {:<5}  {:<24}  scopes",
                "site", "account", "name", "email", "approved"
            );
            for t in &list.trust {
                let account = match t.params.account_name {
                    AccountName::Username => "username",
                    AccountName::Pseudonym => "pseudonym",
                };
                println!(
                    "{:<24}  {:<9}  {:<5}  {:<5}  {:<24}  {}",
                    t.client_id,
                    account,
                    yes_no(t.params.share_name),
                    yes_no(t.params.share_email),
                    time_ms(t.created_ms),
                    t.scopes.join(" ")
                );
            }
            Ok(())
        }
        TrustCommand::Revoke {
            username,
            client_id,
        } => {
            client
                .delete(&format!("/admin/v1/users/{username}/trust/{client_id}"))
                .await?;
            println!("{username} no longer trusts {client_id}");
            Ok(())
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Milliseconds since the epoch as an RFC 3339 UTC time.
fn time_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn print_site(site: &SiteView) {
    println!("site {}", site.client_id);
    println!("  name: {}", site.name);
    println!(
        "  client type: {}",
        if site.public {
            "public (PKCE, no secret)"
        } else {
            "confidential"
        }
    );
    for u in &site.redirect_uris {
        println!("  redirect URI: {u}");
    }
    for u in &site.post_logout_redirect_uris {
        println!("  post-logout redirect URI: {u}");
    }
    if let Some(u) = &site.backchannel_logout_uri {
        println!("  back-channel logout URI: {u}");
    }
    println!("  scopes: {}", site.allowed_scopes.join(" "));
    let mode = match site.default_response_mode {
        ResponseMode::Query => "query",
        ResponseMode::FormPost => "form_post",
    };
    println!("  default response_mode: {mode}");
    println!(
        "  ID tokens signed with: {}",
        site.id_token_signed_response_alg.name()
    );
    println!("  registered: {}", time_ms(site.created_ms));
}

fn parse_response_mode(s: &str) -> Result<ResponseMode, String> {
    match s {
        "query" => Ok(ResponseMode::Query),
        "form_post" => Ok(ResponseMode::FormPost),
        other => Err(format!("{other:?}: expected query or form_post")),
    }
}

fn parse_id_token_alg(s: &str) -> Result<IdTokenAlg, String> {
    IdTokenAlg::ALL
        .into_iter()
        .find(|a| a.name() == s)
        .ok_or_else(|| format!("{s:?}: expected RS256, ES256 or EdDSA"))
}

fn read_secret_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the client secret file {}", path.display()))?;
    let secret = text.lines().next().unwrap_or_default().trim().to_string();
    anyhow::ensure!(!secret.is_empty(), "{} is empty", path.display());
    Ok(secret)
}

/// Runs a `baa site` subcommand.
pub async fn site(conn: &Connection, command: SiteCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(conn)?;
    match command {
        SiteCommand::Add {
            client_id,
            name,
            redirect_uris,
            post_logout_redirect_uris,
            backchannel_logout_uri,
            scopes,
            public,
            client_secret_file,
            default_response_mode,
            id_token_alg,
            json,
        } => {
            let client_secret = client_secret_file
                .as_deref()
                .map(read_secret_file)
                .transpose()?;
            let generated = !public && client_secret.is_none();
            let req = CreateSiteRequest {
                client_id,
                name: Some(name),
                redirect_uris,
                post_logout_redirect_uris,
                backchannel_logout_uri,
                allowed_scopes: (!scopes.is_empty()).then_some(scopes),
                public,
                client_secret,
                default_response_mode,
                id_token_signed_response_alg: id_token_alg,
            };
            let created: CreatedSite = client.post("/admin/v1/sites", &req).await?;
            if json {
                return print_json(&created);
            }
            print_site(&created.site);
            match (&created.client_secret, generated) {
                (Some(secret), true) => {
                    println!();
                    println!("client secret: {secret}");
                    println!(
                        "This secret is shown only once and cannot be read back; store it now."
                    );
                }
                (Some(_), false) => println!("  client secret: as given in the file"),
                (None, _) => {}
            }
            Ok(())
        }
        SiteCommand::List {
            prefix,
            limit,
            json,
        } => {
            let sites = list_all::<SiteList>(&client, "/admin/v1/sites", prefix, limit).await?;
            if json {
                return print_json(&sites);
            }
            if sites.is_empty() {
                println!("no partner sites");
                return Ok(());
            }
            println!(
                "{:<24}  {:<24}  {:<12}  redirect URIs",
                "client id", "name", "type"
            );
            for s in &sites {
                println!(
                    "{:<24}  {:<24}  {:<12}  {}",
                    s.client_id,
                    s.name,
                    if s.public { "public" } else { "confidential" },
                    s.redirect_uris.join(" ")
                );
            }
            Ok(())
        }
        SiteCommand::Get { client_id, json } => {
            let site: SiteView = client.get(&format!("/admin/v1/sites/{client_id}")).await?;
            if json {
                return print_json(&site);
            }
            print_site(&site);
            Ok(())
        }
        SiteCommand::Remove { client_id } => {
            client
                .delete(&format!("/admin/v1/sites/{client_id}"))
                .await?;
            println!("site {client_id} removed");
            Ok(())
        }
    }
}

/// Runs a `baa federation` subcommand.
pub async fn federation(conn: &Connection, command: FederationCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(conn)?;
    match command {
        FederationCommand::Add { issuer, pin } => {
            let req = baa_proto::api::AddPeerRequest { issuer, pin };
            let peer: baa_proto::federation::PeerAgency =
                client.post("/admin/v1/federation/peers", &req).await?;
            println!("peer {} added, pinned to {}", peer.issuer, peer.pin);
            Ok(())
        }
        FederationCommand::List { json } => {
            let list: baa_proto::api::PeerList = client.get("/admin/v1/federation/peers").await?;
            if json {
                return print_json(&list);
            }
            for p in &list.peers {
                println!("{}  pin {}  added {}", p.issuer, p.pin, time_ms(p.added_ms));
            }
            Ok(())
        }
        FederationCommand::Remove { issuer } => {
            let query = serde_urlencoded::to_string([("issuer", issuer.as_str())])?;
            client
                .delete(&format!("/admin/v1/federation/peers?{query}"))
                .await?;
            println!("peer {issuer} removed");
            Ok(())
        }
        FederationCommand::Pin => {
            let key: serde_json::Value = client.get("/admin/v1/federation/key").await?;
            println!("{}", key["pin"].as_str().unwrap_or_default());
            Ok(())
        }
        FederationCommand::RotateKey { overlap_s } => {
            let path = match overlap_s {
                Some(s) => format!("/admin/v1/federation/key/rotate?overlap_s={s}"),
                None => "/admin/v1/federation/key/rotate".into(),
            };
            let key: serde_json::Value = client.post(&path, &serde_json::json!({})).await?;
            println!(
                "new federation key {} published; {} keeps signing until the overlap ends",
                key["next"].as_str().unwrap_or("?"),
                key["pin"].as_str().unwrap_or("?")
            );
            Ok(())
        }
    }
}

/// Runs a `baa keys` subcommand.
pub async fn keys(conn: &Connection, command: KeysCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(conn)?;
    match command {
        KeysCommand::Rotate => {
            // The node answers once it has applied the rotation, so the keys
            // it lists include the new one.
            let jwks: serde_json::Value = client
                .post("/admin/v1/keys/rotate", &serde_json::json!({}))
                .await?;
            print_json(&jwks)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::time_ms;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time_ms(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_ms(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(time_ms(1_709_251_199_999), "2024-02-29T23:59:59Z");
    }
}
