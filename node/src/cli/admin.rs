//! `baa cluster …` and `baa user …`: thin clients of the admin API.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::Context;
use baa_proto::api::{
    ClusterStatus, CreateUserRequest, JoinRequest, LeaveRequest, UpdateUserRequest, UserList,
    UserView,
};
use baa_proto::model::NodeId;
use clap::Subcommand;

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
    /// Show every member's view: leader, term, log and applied index, state digest.
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
    /// List users.
    List,
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
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected key=value, got {s:?}"))
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
async fn leader_client(client: &AdminClient) -> anyhow::Result<AdminClient> {
    let status: ClusterStatus = client.get("/admin/v1/cluster/status").await?;
    let leader = status
        .leader
        .context("the cluster has no leader right now")?;
    let node = status
        .nodes
        .get(&leader)
        .context("the leader's address is unknown")?;
    Ok(client.for_addr(&node.public_addr))
}

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
            let leader = leader_client(&client).await?;
            let req = JoinRequest {
                id,
                public_addr,
                cluster_addr,
                voter: !learner,
            };
            let status: ClusterStatus = leader.post("/admin/v1/cluster/join", &req).await?;
            print_json(&status)
        }
        ClusterCommand::Leave { id } => {
            let leader = leader_client(&client).await?;
            let status: ClusterStatus = leader
                .post("/admin/v1/cluster/leave", &LeaveRequest { id })
                .await?;
            print_json(&status)
        }
        ClusterCommand::Status { json } => {
            let first: ClusterStatus = client.get("/admin/v1/cluster/status").await?;
            let mut views: BTreeMap<NodeId, Result<ClusterStatus, String>> = BTreeMap::new();
            for (id, node) in &first.nodes {
                let r = client
                    .for_addr(&node.public_addr)
                    .get("/admin/v1/cluster/status")
                    .await;
                views.insert(*id, r.map_err(|e| format!("{e:#}")));
            }
            if first.nodes.is_empty() {
                views.insert(first.node_id, Ok(first.clone()));
            }
            if json {
                let ok: Vec<&ClusterStatus> =
                    views.values().filter_map(|v| v.as_ref().ok()).collect();
                return print_json(&ok);
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
                        &s.digest[..16.min(s.digest.len())]
                    ),
                    Err(e) => println!("{id:>4}  unreachable: {e}"),
                }
            }
            Ok(())
        }
    }
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
        UserCommand::List => {
            let list: UserList = client.get("/admin/v1/users").await?;
            print_json(&list.users)
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
    }
}
