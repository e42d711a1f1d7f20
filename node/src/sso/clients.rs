//! Partner sites as clients of the agency's OAuth endpoints: a site proves
//! itself with its secret (HTTP Basic or form fields, RFC 6749 §2.3); a
//! public client only names itself and proves possession through PKCE; a
//! peer agency (registered by the peering) signs a client assertion with
//! its federation key (RFC 7523 `private_key_jwt`). A site registered a
//! moment ago through another node is found after one read barrier.

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
    /// A client assertion (RFC 7523), for peer agencies.
    pub assertion: Option<String>,
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
    if let Some(peer) = agency.state.peer_of_client(&site.client_id)? {
        // A peer has no secret: only its federation key proves it.
        let view = agency.peers.get(&peer.issuer).ok_or_else(invalid_client)?;
        let i = &agency.config.issuer;
        let audiences = [
            i.clone(),
            format!("{i}/sso/token"),
            format!("{i}/sso/session_status"),
        ];
        let audiences: Vec<&str> = audiences.iter().map(String::as_str).collect();
        return match (&c.secret, &c.assertion) {
            (None, Some(a)) if view.verify_assertion(a, &audiences).is_ok() => Ok(site),
            _ => Err(invalid_client()),
        };
    }
    if c.assertion.is_some() {
        return Err(invalid_client());
    }
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
