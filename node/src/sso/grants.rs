//! What every grant of the token endpoint shares: the request as sent, the
//! fresh token values a grant mints, and the look-up that refuses a
//! one-time value no one issued before anything is proposed to Raft.

use baa_proto::command::Consistency;
use baa_proto::sso::{AccessToken, RefreshToken};
use baa_proto::ErrorCode;

use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;
use crate::secrets::random_secret;

/// A token request's grant, as sent (RFC 6749 §4.1.3, §6; RFC 8628 §3.4).
/// Deliberately not `Debug`: it holds one-time secrets.
#[derive(Default, serde::Deserialize)]
pub struct TokenRequest {
    /// `authorization_code`, `refresh_token` or the device grant type.
    pub grant_type: Option<String>,
    /// The ticket.
    pub code: Option<String>,
    /// The refresh token.
    pub refresh_token: Option<String>,
    /// The device code.
    pub device_code: Option<String>,
    /// The redirect URI the ticket was issued for.
    pub redirect_uri: Option<String>,
    /// The PKCE verifier.
    pub code_verifier: Option<String>,
}

/// A required one-time value of a token request.
pub fn required(v: &Option<String>, name: &str) -> Result<String, NodeError> {
    required_within(v, name, 128)
}

/// [`required`] for a value up to `max` bytes long (a sealed ticket is
/// longer than the random secrets the agency hands out).
pub fn required_within(v: &Option<String>, name: &str, max: usize) -> Result<String, NodeError> {
    v.as_deref()
        .filter(|c| !c.is_empty() && c.len() <= max)
        .map(str::to_string)
        .ok_or_else(|| NodeError::invalid(format!("{name} is required")))
}

/// Fresh token values for one grant, with the records the state machine
/// completes (it keeps the refresh token only when `offline_access` was
/// granted). Deliberately not `Debug`: it holds the secrets.
pub struct Minted {
    /// The access token's value.
    pub access: String,
    /// Its record.
    pub access_record: AccessToken,
    /// The refresh token's value.
    pub refresh: String,
    /// Its record.
    pub refresh_record: RefreshToken,
}

/// A fresh access token and refresh token candidate for a grant. The state
/// machine keeps the refresh token only when `offline_access` was granted.
pub fn new_tokens(agency: &Agency, client_id: &str) -> Minted {
    let (access, access_hash) = random_secret();
    let (refresh, refresh_hash) = random_secret();
    let now = now_ms();
    let sso = &agency.config.sso;
    let at = AccessToken {
        hash: access_hash,
        session_key: [0; 32],
        sid: String::new(),
        user_id: 0,
        client_id: client_id.to_string(),
        scopes: Vec::new(),
        issued_ms: now,
        expires_ms: now + sso.access_token_ttl_s * 1000,
    };
    let rt = RefreshToken {
        hash: refresh_hash,
        family: refresh_hash,
        session_key: [0; 32],
        client_id: client_id.to_string(),
        scopes: Vec::new(),
        issued_ms: now,
        expires_ms: now + sso.session_lifetime_s * 1000,
        used: false,
    };
    Minted {
        access,
        access_record: at,
        refresh,
        refresh_record: rt,
    }
}

/// The record a presented one-time secret names, reading through to the
/// leader once when this node has not applied it yet; a secret no one
/// issued is refused here with `invalid_grant`, never proposed to Raft.
pub async fn known<T>(
    agency: &Agency,
    unknown: &str,
    find: impl Fn(
        &crate::raft::state_machine::StateReader,
    ) -> Result<Option<T>, crate::raft::StorageError>,
) -> Result<T, NodeError> {
    if let Some(found) = find(&agency.state)? {
        return Ok(found);
    }
    agency.read_barrier(Consistency::Linearizable).await?;
    find(&agency.state)?.ok_or_else(|| NodeError::BadRequest {
        code: ErrorCode::InvalidGrant,
        message: unknown.into(),
    })
}
