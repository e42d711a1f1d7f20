//! `baa partner-site`: runs the demo partner site (an OpenID Connect relying
//! party) in its own actix System.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::config::LogFormat;
use crate::partner::SiteConfig;

/// Options of `baa partner-site`.
#[derive(Debug, Args)]
pub struct PartnerArgs {
    /// Address of the site's HTTPS listener, e.g. 127.0.0.1:9443.
    #[arg(long)]
    listen: SocketAddr,
    /// PEM certificate (chain) of the site.
    #[arg(long)]
    cert_file: PathBuf,
    /// PEM private key of the site.
    #[arg(long)]
    key_file: PathBuf,
    /// PEM CA certificate trusted for the agency's TLS.
    #[arg(long)]
    ca_file: PathBuf,
    /// The site's URL as the browser sees it, e.g. https://shop.baa.localtest:9443;
    /// its redirect URI is <public-url>/callback.
    #[arg(long)]
    public_url: String,
    /// Display name of the site.
    #[arg(long)]
    name: String,
    /// OAuth client id registered at the agency.
    #[arg(long)]
    client_id: String,
    /// File holding the client secret (one line).
    #[arg(long)]
    client_secret_file: PathBuf,
    /// Expected `iss` of the agency's tokens, e.g. https://login.baa.localtest:8441.
    #[arg(long)]
    issuer: String,
    /// Base URL of an agency node; repeat for every node. Requests rotate over them.
    #[arg(long = "agency", required = true)]
    agencies: Vec<String>,
    /// HOST=IP: calls to the agency resolve HOST to IP (the port comes from the URL).
    #[arg(long = "resolve", value_parser = super::login::parse_resolve)]
    resolve: Vec<(String, IpAddr)>,
    /// Scopes requested at sign-in.
    #[arg(long, default_value = "openid profile email")]
    scope: String,
    /// File holding a bearer token that opens `/status.json` (its users'
    /// sessions and claims, for tests); without it that page is not served.
    #[arg(long)]
    status_token_file: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// `tracing` filter, e.g. `info`.
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// Runs the partner site until SIGINT/SIGTERM.
pub fn run(args: PartnerArgs) -> anyhow::Result<()> {
    let format = if args.log_format == "json" {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    crate::init_logging(format, &args.log_level);
    let secret = std::fs::read_to_string(&args.client_secret_file).with_context(|| {
        format!(
            "reading the client secret file {}",
            args.client_secret_file.display()
        )
    })?;
    let status_token = args
        .status_token_file
        .as_ref()
        .map(|f| {
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the status token file {}", f.display()))
                .map(|t| t.trim().to_string())
        })
        .transpose()?;
    let config = SiteConfig {
        listen: args.listen,
        cert_file: args.cert_file,
        key_file: args.key_file,
        ca_file: args.ca_file,
        public_url: args.public_url,
        name: args.name,
        client_id: args.client_id,
        client_secret: secret.lines().next().unwrap_or_default().trim().to_string(),
        issuer: args.issuer,
        agencies: args.agencies,
        resolve: args.resolve,
        scope: args.scope,
        status_token,
    };
    actix_rt::System::new().block_on(crate::partner::run(config))
}
