//! The agency's own secrets: token-signing key rotation (a new current key;
//! the previous one published until what it signed has expired) and the
//! salt of pairwise identifiers, each made once cluster-wide; and the start
//! of a new agency, which makes both.

use baa_proto::command::{Consistency, Op};
use baa_proto::sso::PairwiseSalt;

use crate::agency::Agency;
use crate::error::{NodeError, Result};

/// Initialises a new cluster of this node and its configured peers, with
/// its first signing key and its pairwise salt.
pub async fn initialize(agency: &Agency) -> Result<()> {
    agency.initialize().await?;
    ensure_signing_key(agency).await?;
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
