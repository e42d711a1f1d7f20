//! Partner sites as clients of the agency's OAuth endpoints: a site proves
//! itself with its secret (HTTP Basic or form fields, RFC 6749 §2.3); a
//! public client only names itself and proves possession through PKCE. A
//! site registered a moment ago through another node is found after one
//! read barrier.

use baa_proto::command::Consistency;
use baa_proto::sso::{secret_hash, Site};
use baa_proto::ErrorCode;
use subtle::ConstantTimeEq;

use crate::agency::Agency;
use crate::error::NodeError;

/// The credentials a caller presented, however it sent them. Deliberately
/// not `Debug`: it holds the secret.
pub struct ClientCredentials {
    /// The client id.
    pub client_id: String,
    /// The secret (none for a public client).
    pub secret: Option<String>,
}

/// The error of every failed client authentication: one answer for all.
pub fn invalid_client() -> NodeError {
    NodeError::BadRequest {
        code: ErrorCode::InvalidClient,
        message: "client authentication failed".into(),
    }
}

/// The site the credentials prove.
pub async fn authenticate(agency: &Agency, c: &ClientCredentials) -> Result<Site, NodeError> {
    let site = registered_site(agency, &c.client_id)
        .await?
        .ok_or_else(invalid_client)?;
    match (&site.secret_hash, &c.secret) {
        (Some(h), Some(s)) if bool::from(h.ct_eq(&secret_hash(s.as_bytes()))) => Ok(site),
        (None, None) => Ok(site),
        _ => Err(invalid_client()),
    }
}

/// A registered site, reading through to the leader once when this node
/// does not know it yet (registered a moment ago through another node).
pub async fn registered_site(agency: &Agency, client_id: &str) -> Result<Option<Site>, NodeError> {
    if let Some(site) = agency.state.site(client_id)? {
        return Ok(Some(site));
    }
    agency.read_barrier(Consistency::Linearizable).await?;
    Ok(agency.state.site(client_id)?)
}
