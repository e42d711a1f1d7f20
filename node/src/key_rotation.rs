//! The agency's own secrets: token-signing key rotation (a new current key;
//! the previous one published until what it signed has expired), the
//! federation key peers pin, and the salt of pairwise identifiers, each made
//! once cluster-wide; and the start of a new agency, which makes them.

use baa_proto::command::{Consistency, Op};
use baa_proto::federation::{ed25519_thumbprint, FederationKey};
use baa_proto::sso::PairwiseSalt;

use crate::agency::Agency;
use crate::error::{NodeError, Result};

/// Initialises a new cluster of this node and its configured peers, with
/// its first signing key and its pairwise salt.
pub async fn initialize(agency: &Agency) -> Result<()> {
    agency.initialize().await?;
    ensure_signing_key(agency).await?;
    ensure_federation_key(agency).await?;
    ensure_ticket_key(agency).await?;
    pairwise_salt(agency).await.map(drop)
}

/// The salt of pairwise identifiers, made (once, cluster-wide: the first
/// proposal wins) when the agency has none yet.
pub async fn pairwise_salt(agency: &Agency) -> Result<PairwiseSalt> {
    if let Some(salt) = agency.state.pairwise_salt()? {
        return Ok(salt);
    }
    let salt = crate::secrets::random_bytes::<32>();
    agency.write(Op::SetPairwiseSalt { salt }, None).await?;
    agency.read_barrier(Consistency::Linearizable).await?;
    agency
        .state
        .pairwise_salt()?
        .ok_or_else(|| NodeError::Internal("the pairwise salt was not stored".into()))
}

/// Makes a signing key when the agency has none (first start of a cluster).
pub async fn ensure_signing_key(agency: &Agency) -> Result<()> {
    if agency.keys.has_current()? {
        return Ok(());
    }
    rotate_signing_key(agency, None).await
}

/// Makes the federation key when the agency has none (a new cluster, or
/// one that predates federation). Peers pin it, so it is long-lived.
pub async fn ensure_federation_key(agency: &Agency) -> Result<()> {
    if agency.state.federation_keys()?.1.is_some() {
        return Ok(());
    }
    // Only the node that initialises the cluster and the leader's reaper
    // call this. Should two ever race, the later key replaces the first at
    // once — harmless, as no peer can have pinned a key of an agency that
    // had none a moment ago.
    add_federation_key(agency, 0).await
}

/// How long a ticket key seals before the leader's reaper replaces it.
pub const TICKET_KEY_LIFETIME_MS: u64 = 24 * 3600 * 1000;

/// How long a replaced ticket key still opens what it sealed: past the
/// longest a ticket can live, with room for clocks (and past the access
/// tokens' lifetime, see [`ticket_key_keep_ms`]).
const TICKET_KEY_KEEP_MS: u64 = 15 * 60 * 1000;

/// How long a replaced ticket key is kept: until every ticket and sealed
/// access token it sealed has expired, with room for clocks.
fn ticket_key_keep_ms(agency: &Agency) -> u64 {
    let access = agency.config.sso.access_token_ttl_s.saturating_mul(1000);
    TICKET_KEY_KEEP_MS.max(access.saturating_add(5 * 60 * 1000))
}

/// Makes a ticket key when the agency has none, and a new one when the
/// current one is older than [`TICKET_KEY_LIFETIME_MS`] (the leader's
/// reaper calls it; tickets sealed by the old key still open meanwhile).
pub async fn ensure_ticket_key(agency: &Agency) -> Result<()> {
    let (keys, current) = agency.state.ticket_keys()?;
    let now = crate::clock::now_ms();
    let fresh = current
        .and_then(|kid| keys.iter().find(|k| k.kid == kid).cloned())
        .is_some_and(|k| now.saturating_sub(k.created_ms) < TICKET_KEY_LIFETIME_MS);
    if fresh {
        return Ok(());
    }
    let key = baa_proto::sso::TicketKey {
        kid: hex::encode(crate::secrets::random_bytes::<8>()),
        key: crate::secrets::random_bytes::<32>(),
        created_ms: 0,
        retired_ms: None,
        publish_until_ms: None,
    };
    let op = Op::AddTicketKey {
        key: Box::new(key),
        keep_old_for_ms: ticket_key_keep_ms(agency),
    };
    agency.write(op, None).await?;
    agency.tickets.invalidate();
    Ok(())
}

/// Adds a new federation key; the current one keeps signing for
/// `overlap_s` (see [`baa_proto::federation::signing_key`]).
pub async fn rotate_federation_key(agency: &Agency, overlap_s: u64) -> Result<()> {
    add_federation_key(agency, overlap_s.saturating_mul(1000)).await
}

async fn add_federation_key(agency: &Agency, publish_old_for_ms: u64) -> Result<()> {
    let seed = crate::secrets::random_bytes::<32>();
    let public = crate::keys::ed25519_public(&seed)
        .ok_or_else(|| NodeError::Internal("making an Ed25519 key failed".into()))?;
    let key = FederationKey {
        kid: ed25519_thumbprint(&public),
        seed,
        public,
        created_ms: 0,
        retired_ms: None,
        publish_until_ms: None,
    };
    let op = Op::AddFederationKey {
        key: Box::new(key),
        publish_old_for_ms,
    };
    agency.write(op, None).await.map(drop)
}

/// Adds a new current signing key. The previous one stays published until
/// every token and cookie it signed has expired, or for `retire_old_after_s`
/// (0 after a key compromise: everything it signed stops verifying at once).
pub async fn rotate_signing_key(agency: &Agency, retire_old_after_s: Option<u64>) -> Result<()> {
    let key = tokio::task::spawn_blocking(crate::keys::generate)
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
        .map_err(|e| NodeError::Internal(format!("generating a key: {e}")))?;
    let sso = &agency.config.sso;
    let publish_old_for_ms =
        retire_old_after_s.unwrap_or(sso.access_token_ttl_s + sso.session_lifetime_s) * 1000;
    let op = Op::AddSigningKey {
        key: Box::new(key),
        publish_old_for_ms,
    };
    agency.write(op, None).await?;
    agency.keys.invalidate();
    Ok(())
}

/// Rotates the signing key at an administrator's request and answers the
/// key set this node publishes afterwards.
pub async fn rotate_and_publish(
    agency: &Agency,
    retire_old_after_s: Option<u64>,
) -> Result<serde_json::Value> {
    rotate_signing_key(agency, retire_old_after_s).await?;
    // Applied on the leader; here too before the keys are listed.
    agency.read_barrier(Consistency::Linearizable).await?;
    agency.keys.invalidate();
    agency.keys.jwks()
}

/// A client assertion (RFC 7523) for `audience`, signed with the agency's
/// current federation key: how this agency proves itself to a peer, which
/// registered it as client [`baa_proto::federation::peer_client_id`] of
/// its issuer. Valid one minute, with a fresh `jti`.
pub fn federation_assertion(agency: &Agency, audience: &str) -> Result<String> {
    let (keys, current) = agency.state.federation_keys()?;
    let now = crate::clock::now_ms();
    let key = baa_proto::federation::signing_key(&keys, current.as_deref(), now)
        .ok_or_else(|| NodeError::Internal("the agency has no federation key yet".into()))?;
    let now_s = now / 1000;
    let issuer = &agency.config.issuer;
    let claims = serde_json::json!({
        "iss": issuer,
        "sub": issuer,
        "aud": audience,
        "iat": now_s,
        "exp": now_s + 60,
        "jti": hex::encode(crate::secrets::random_bytes::<16>()),
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &header,
        &claims,
        &crate::keys::ed25519_encoding_key(&key.seed),
    )
    .map_err(|e| NodeError::Internal(format!("signing a client assertion: {e}")))
}
