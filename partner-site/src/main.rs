//! `baa-partner-site`: runs the demo partner site (an OpenID Connect relying
//! party) in its own actix System.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use baa_partner_site::SiteConfig;
use clap::Parser;

/// Runs a demo partner site (an OpenID Connect relying party) that signs
/// users in through a baa agency.
#[derive(Debug, Parser)]
#[command(name = "baa-partner-site", version)]
struct PartnerArgs {
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
    #[arg(long = "resolve", value_parser = parse_resolve)]
    resolve: Vec<(String, IpAddr)>,
    /// Scopes requested at sign-in.
    #[arg(long, default_value = "openid profile email")]
    scope: String,
    /// The algorithm of the site's ID tokens, as registered at the agency:
    /// RS256, ES256 or EdDSA. Tokens signed otherwise are refused.
    #[arg(long, default_value = "RS256", value_parser = parse_alg)]
    id_token_alg: jsonwebtoken::Algorithm,
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

fn parse_alg(s: &str) -> Result<jsonwebtoken::Algorithm, String> {
    baa_partner_site::ID_TOKEN_ALGS
        .iter()
        .find(|(name, _)| *name == s)
        .map(|(_, a)| *a)
        .ok_or_else(|| format!("{s:?}: expected RS256, ES256 or EdDSA"))
}

/// `HOST=IP`.
fn parse_resolve(s: &str) -> Result<(String, IpAddr), String> {
    match s.split_once('=') {
        Some((host, ip)) if !host.is_empty() => ip
            .parse()
            .map(|ip| (host.to_string(), ip))
            .map_err(|_| format!("{ip:?} is not an IP address")),
        _ => Err(format!("expected HOST=IP, got {s:?}")),
    }
}

/// Logs to standard error; secrets are never passed to the logger.
fn init_logging(json: bool, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match json {
        true => builder.json().try_init(),
        false => builder.try_init(),
    };
}

/// Runs the partner site until SIGINT/SIGTERM.
fn main() -> anyhow::Result<()> {
    let args = PartnerArgs::parse();
    init_logging(args.log_format == "json", &args.log_level);
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
        id_token_alg: args.id_token_alg,
        status_token,
    };
    actix_rt::System::new().block_on(baa_partner_site::run(config))
}
