//! The `baa` command line: `serve`, `pki`, `kek`, `cluster`, `user`, `site`,
//! `keys`, `federation`, `backup`, `restore`,
//! `login`, `demo`. (The demo's partner sites are their own binary,
//! `baa-partner-site`.)

mod admin;
mod backup;
mod client;
mod demo;
mod login;

/// The request-line parser of `baa login`'s loopback listener. Public for
/// fuzzing.
#[doc(hidden)]
pub use login::{parse_loopback_request, LoopbackTarget};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides};

/// baa — baseline authentication agency.
#[derive(Debug, Parser)]
#[command(name = "baa", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    conn: client::Connection,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one node.
    Serve(ServeArgs),
    /// Create an agency CA and node certificates (for demos, tests and small deployments).
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Make or identify the key-encryption key that wraps the agency's
    /// keys at rest (local files; nothing is sent).
    Kek {
        #[command(subcommand)]
        command: KekCommand,
    },
    /// Cluster membership and status.
    Cluster {
        #[command(subcommand)]
        command: admin::ClusterCommand,
    },
    /// Manage users.
    User {
        #[command(subcommand)]
        command: admin::UserCommand,
    },
    /// Manage partner sites (OpenID Connect clients).
    Site {
        #[command(subcommand)]
        command: admin::SiteCommand,
    },
    /// List and end users' sessions.
    Session {
        #[command(subcommand)]
        command: admin::SessionCommand,
    },
    /// Manage the agency's token-signing keys.
    Keys {
        #[command(subcommand)]
        command: admin::KeysCommand,
    },
    /// Manage the peer agencies of this agency's federation.
    Federation {
        #[command(subcommand)]
        command: admin::FederationCommand,
    },
    /// Write a backup of the agency's state to FILE: a node (--url) builds
    /// a snapshot while the cluster serves and streams it. The backup holds
    /// keys only sealed under the KEK: keep it apart from the KEK.
    Backup(backup::BackupArgs),
    /// Seed a new node's empty data directory from a backup FILE (offline:
    /// run it for each node of the new cluster with its configuration,
    /// then start them all with `serve`, without `cluster init`).
    Restore(backup::RestoreArgs),
    /// Run a local demo cluster.
    Demo(demo::DemoArgs),
    /// Sign this app in at an agency through the system browser (loopback
    /// redirect), or with --device by entering a code on any device.
    Login(login::LoginArgs),
    /// Show who this app is signed in as.
    Whoami(login::WhoamiArgs),
    /// Revoke this app's tokens at the agency and delete the token file.
    ///
    /// Only the app is signed out: the browser stays signed in at the agency;
    /// sign out there to end that session too.
    Logout(login::LogoutArgs),
    /// GET a URL (e.g. an app behind the agency's gateway) with this app's token and print the body.
    Fetch(login::FetchArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// The node's TOML configuration file.
    #[arg(long, short)]
    config: PathBuf,
    /// Override `node_id`.
    #[arg(long)]
    node_id: Option<u64>,
    /// Override `data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override `public_listen`.
    #[arg(long)]
    public_listen: Option<SocketAddr>,
    /// Override `cluster_listen`.
    #[arg(long)]
    cluster_listen: Option<SocketAddr>,
    /// Override `log_level`.
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create the web CA (public listeners, partner sites) and the cluster CA
    /// (node certificates only) in DIR, and certificates for node1..nodeN.
    Init {
        /// Output directory.
        #[arg(long)]
        dir: PathBuf,
        /// How many nodes to issue certificates for.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Agency name written into the CAs' subjects.
        #[arg(long, default_value = "baa")]
        agency: String,
        /// Extra DNS names or IP addresses for every node's public certificate.
        #[arg(long)]
        san: Vec<String>,
        /// Extra DNS names or IP addresses for every node's cluster certificate
        /// (the hosts of `cluster_advertise`).
        #[arg(long)]
        cluster_san: Vec<String>,
    },
    /// Issue one more certificate from the CAs in DIR: a node's two
    /// certificates (--node), or a server certificate for a partner site or
    /// an upstream app (--name; server authentication only).
    Issue {
        /// Directory holding the CAs.
        #[arg(long)]
        dir: PathBuf,
        /// File name stem of a server certificate, e.g. `shop`.
        #[arg(long, required_unless_present = "node", conflicts_with = "node")]
        name: Option<String>,
        /// A node id: issues `node<id>.pem` (public) and `node<id>-cluster.pem`.
        #[arg(long)]
        node: Option<u64>,
        /// Extra DNS names or IP addresses (the public certificate's).
        #[arg(long)]
        san: Vec<String>,
        /// Extra DNS names or IP addresses of a node's cluster certificate.
        #[arg(long, requires = "node")]
        cluster_san: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KekCommand {
    /// Write a new random key-encryption key to FILE (hex, mode 0600; an
    /// existing file is never replaced) and print its id. One per agency:
    /// copy it to every node, outside the data directories.
    New {
        /// The file to create.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the id of the KEK in FILE (or in BAA_KEK without --file): the
    /// id that envelopes and error messages name.
    Id {
        /// A KEK file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

fn kek(command: KekCommand) -> anyhow::Result<()> {
    let id = match command {
        KekCommand::New { out } => crate::kek::write_new_kek_file(&out)?,
        KekCommand::Id { file: Some(file) } => {
            hex::encode(crate::kek::kek_id(&crate::kek::read_kek_file(&file)?))
        }
        KekCommand::Id { file: None } => {
            let v = std::env::var(crate::kek::ENV_KEK)
                .map_err(|_| anyhow::anyhow!("give --file, or set {}", crate::kek::ENV_KEK))?;
            hex::encode(crate::kek::kek_id(&crate::kek::parse_kek(&v)?))
        }
    };
    println!("{id}");
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let overrides = Overrides {
        node_id: args.node_id,
        data_dir: args.data_dir,
        public_listen: args.public_listen,
        cluster_listen: args.cluster_listen,
        log_level: args.log_level,
    };
    let config = Config::load(&args.config, overrides)?;
    crate::init_logging(config.log_format, &config.log_level);
    // openraft's tasks share actix's current-thread runtime: on small machines
    // cross-thread wake-ups cost more than a second runtime thread buys.
    actix_rt::System::new().block_on(crate::run(config))
}

fn pki(command: PkiCommand) -> anyhow::Result<()> {
    match command {
        PkiCommand::Init {
            dir,
            nodes,
            agency,
            san,
            cluster_san,
        } => {
            crate::pki::init_ca(&dir, &agency)?;
            for i in 1..=u64::from(nodes) {
                crate::pki::issue_node(&dir, i, &san, &cluster_san)?;
            }
            println!(
                "web CA, cluster CA and certificates of {nodes} nodes written to {}",
                dir.display()
            );
        }
        PkiCommand::Issue {
            dir,
            name,
            node,
            san,
            cluster_san,
        } => match (node, name) {
            (Some(id), _) => {
                crate::pki::issue_node(&dir, id, &san, &cluster_san)?;
                println!("certificates of node {id} written to {}", dir.display());
            }
            (None, Some(name)) => {
                crate::pki::issue_server(&dir, &name, &san)?;
                println!("certificate {name} written to {}", dir.display());
            }
            (None, None) => anyhow::bail!("give --node or --name"),
        },
    }
    Ok(())
}

/// Entry point of the `baa` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::tls::install_crypto_provider();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Pki { command } => pki(command),
        Command::Kek { command } => kek(command),
        Command::Cluster { command } => {
            runtime().and_then(|rt| rt.block_on(admin::cluster(&cli.conn, command)))
        }
        Command::User { command } => {
            runtime().and_then(|rt| rt.block_on(admin::user(&cli.conn, command)))
        }
        Command::Site { command } => {
            runtime().and_then(|rt| rt.block_on(admin::site(&cli.conn, command)))
        }
        Command::Session { command } => {
            runtime().and_then(|rt| rt.block_on(admin::session(&cli.conn, command)))
        }
        Command::Keys { command } => {
            runtime().and_then(|rt| rt.block_on(admin::keys(&cli.conn, command)))
        }
        Command::Federation { command } => {
            runtime().and_then(|rt| rt.block_on(admin::federation(&cli.conn, command)))
        }
        Command::Backup(args) => {
            runtime().and_then(|rt| rt.block_on(backup::backup(&cli.conn, args)))
        }
        Command::Restore(args) => backup::restore(args),
        Command::Demo(args) => runtime().and_then(|rt| rt.block_on(demo::run(args))),
        Command::Login(args) => {
            runtime().and_then(|rt| rt.block_on(login::login(cli.conn.ca.clone(), args)))
        }
        Command::Whoami(args) => {
            runtime().and_then(|rt| rt.block_on(login::whoami(cli.conn.ca.clone(), args)))
        }
        Command::Logout(args) => {
            runtime().and_then(|rt| rt.block_on(login::logout(cli.conn.ca.clone(), args)))
        }
        Command::Fetch(args) => {
            runtime().and_then(|rt| rt.block_on(login::fetch(cli.conn.ca.clone(), args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baa: {e:#}");
            ExitCode::FAILURE
        }
    }
}
