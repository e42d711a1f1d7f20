//! The agency's own secrets: token-signing key rotation (a new current key;
//! the previous one published until what it signed has expired), the
//! federation key peers pin, and the salt of pairwise identifiers, each made
//! once cluster-wide; the start of a new agency, which makes them; and
//! their keeping at rest: each is wrapped under the cluster's key-encryption
//! key where it is made, opened here when read, and rewrapped by the leader
//! when stored in the clear (by an earlier release) or under a previous KEK.

use baa_proto::command::{Consistency, Op};
use baa_proto::federation::{ed25519_thumbprint, FederationKey};
use baa_proto::sso::{PairwiseSalt, Rewrap, SecretKind};

use crate::agency::Agency;
use crate::error::{NodeError, Result};
use crate::kek::{KekRing, Standing};
use crate::raft::state_machine::StateReader;

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
    if let Some(salt) = stored_pairwise_salt(agency)? {
        return Ok(salt);
    }
    let salt = agency
        .kek
        .wrap_salt(&crate::secrets::random_bytes::<32>())?;
    agency
        .write(Op::SetWrappedPairwiseSalt { salt }, None)
        .await?;
    agency.read_barrier(Consistency::Linearizable).await?;
    stored_pairwise_salt(agency)?
        .ok_or_else(|| NodeError::Internal("the pairwise salt was not stored".into()))
}

/// The salt of pairwise identifiers as this node has applied it, opened.
pub fn stored_pairwise_salt(agency: &Agency) -> Result<Option<PairwiseSalt>> {
    match agency.state.pairwise_salt()? {
        Some(stored) => Ok(Some(agency.kek.open_salt(&stored)?)),
        None => Ok(None),
    }
}

/// Every federation key, opened, and the current key id.
pub fn federation_keys(agency: &Agency) -> Result<(Vec<FederationKey>, Option<String>)> {
    let (keys, current) = agency.state.federation_keys()?;
    let keys = keys
        .iter()
        .map(|k| agency.kek.open_federation_key(k))
        .collect::<std::result::Result<_, _>>()?;
    Ok((keys, current))
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
    let op = Op::AddWrappedTicketKey {
        key: Box::new(agency.kek.wrap_ticket_key(&key)?),
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
    let op = Op::AddWrappedFederationKey {
        key: Box::new(agency.kek.wrap_federation_key(&key)?),
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
        key: Box::new(agency.kek.wrap_signing_key(key)?),
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
    let (keys, current) = federation_keys(agency)?;
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

/// One secret as the state holds it.
struct Stored {
    kind: SecretKind,
    kid: String,
    bytes: Vec<u8>,
}

/// Every secret the applied state holds, as stored.
fn stored_secrets(state: &StateReader) -> Result<Vec<Stored>> {
    let mut out = Vec::new();
    let (signing, _) = state.signing_keys()?;
    for k in signing {
        out.push(Stored {
            kind: SecretKind::SigningKey,
            kid: k.kid,
            bytes: k.private_der,
        });
    }
    for k in state.ticket_keys()?.0 {
        out.push(Stored {
            kind: SecretKind::TicketKey,
            kid: k.kid,
            bytes: k.key,
        });
    }
    for k in state.federation_keys()?.0 {
        out.push(Stored {
            kind: SecretKind::FederationKey,
            kid: k.kid,
            bytes: k.seed,
        });
    }
    if let Some(salt) = state.pairwise_salt()? {
        out.push(Stored {
            kind: SecretKind::PairwiseSalt,
            kid: String::new(),
            bytes: salt,
        });
    }
    Ok(out)
}

/// Checks that `kek` opens every secret of the applied state, and answers
/// how many are not under its current KEK yet (in the clear, or under a
/// previous KEK): 0 once the leader has rewrapped them. An error names the
/// first secret that does not open and why (the KEK it is wrapped under).
pub fn check_secrets(state: &StateReader, kek: &KekRing) -> anyhow::Result<u64> {
    let mut stale = 0;
    for s in stored_secrets(state)? {
        if kek.standing(s.kind, &s.kid, &s.bytes)? == Standing::Stale {
            stale += 1;
        }
        kek.open(s.kind, &s.kid, &s.bytes)?;
    }
    Ok(stale)
}

/// How often a node checks that it opens every secret of its state.
const SECRETS_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Checks the secrets of the applied state every
/// [`SECRETS_CHECK_INTERVAL`] and reports how many are not under the
/// current KEK (`baa_secrets_not_under_current_kek`); returns only when one
/// does not open here, with the error that says why.
pub async fn watch_secrets(agency: std::sync::Arc<Agency>) -> anyhow::Error {
    let mut tick = tokio::time::interval(SECRETS_CHECK_INTERVAL);
    loop {
        tick.tick().await;
        match check_secrets(&agency.state, &agency.kek) {
            Ok(stale) => agency
                .metrics
                .secrets_not_under_current_kek
                .set(stale as i64),
            Err(e) => return e,
        }
    }
}

/// The rewraps that put every secret of the applied state under the
/// current KEK; secrets it cannot open are left alone (the node stops
/// over them, see [`check_secrets`]).
fn rewraps(state: &StateReader, kek: &KekRing) -> Result<Vec<Rewrap>> {
    let mut out = Vec::new();
    for s in stored_secrets(state)? {
        if kek.standing(s.kind, &s.kid, &s.bytes) != Ok(Standing::Stale) {
            continue;
        }
        let Ok(clear) = kek.open(s.kind, &s.kid, &s.bytes) else {
            continue;
        };
        out.push(Rewrap {
            kind: s.kind,
            replaces: crate::kek::fingerprint(&s.bytes),
            wrapped: kek.wrap(s.kind, &s.kid, &clear)?,
            kid: s.kid,
        });
    }
    Ok(out)
}

/// The leader's care of the secrets, each step logged if it fails: every
/// stored secret under the current KEK, a signing key, a federation key and
/// a fresh ticket key. Nothing is made while a stored secret does not open
/// here: a key this node made then could be one the others cannot open.
pub async fn maintain(agency: &Agency) {
    if let Err(e) = check_secrets(&agency.state, &agency.kek) {
        tracing::error!(error = %e, "the agency's secrets do not open here; no key is made");
        return;
    }
    if let Err(e) = rewrap_secrets(agency).await {
        tracing::warn!(error = %e, "could not rewrap secrets");
    }
    if let Err(e) = ensure_signing_key(agency).await {
        tracing::warn!(error = %e, "could not make a signing key");
    }
    if let Err(e) = ensure_federation_key(agency).await {
        tracing::warn!(error = %e, "could not make a federation key");
    }
    if let Err(e) = ensure_ticket_key(agency).await {
        tracing::warn!(error = %e, "could not make a ticket key");
    }
}

/// Wraps under the current KEK every secret stored in the clear (by an
/// earlier release) or under a previous KEK, in one command; the leader's
/// reaper calls it. Answers how many it rewrapped.
pub async fn rewrap_secrets(agency: &Agency) -> Result<usize> {
    let secrets = rewraps(&agency.state, &agency.kek)?;
    if secrets.is_empty() {
        return Ok(0);
    }
    let n = secrets.len();
    agency.write(Op::RewrapSecrets { secrets }, None).await?;
    agency.keys.invalidate();
    agency.tickets.invalidate();
    tracing::info!(
        secrets = n,
        kek = %agency.kek.current_id(),
        "wrapped secrets under the current key-encryption key"
    );
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state_machine::applied;
    use baa_proto::sso::TicketKey;

    fn clear_state() -> Vec<(u64, Op)> {
        let ticket = |kid: &str, byte: u8| TicketKey {
            kid: kid.into(),
            key: [byte; 32],
            created_ms: 0,
            retired_ms: None,
            publish_until_ms: None,
        };
        let old = KekRing::new(&[0xa; 32], &[]).unwrap();
        vec![
            // As an earlier release stored them: in the clear.
            (
                1,
                Op::AddSigningKey {
                    key: Box::new(crate::keys::generate().unwrap()),
                    publish_old_for_ms: 0,
                },
            ),
            (
                1,
                Op::AddTicketKey {
                    key: Box::new(ticket("t1", 1)),
                    keep_old_for_ms: u64::MAX / 4,
                },
            ),
            (
                1,
                Op::AddFederationKey {
                    key: Box::new(crate::sso::federation::test_key(2, None)),
                    publish_old_for_ms: 0,
                },
            ),
            (1, Op::SetPairwiseSalt { salt: [4; 32] }),
            // Under a previous KEK.
            (
                2,
                Op::AddWrappedTicketKey {
                    key: Box::new(old.wrap_ticket_key(&ticket("t2", 5)).unwrap()),
                    keep_old_for_ms: u64::MAX / 4,
                },
            ),
        ]
    }

    /// Every secret in the clear or under a previous KEK is rewrapped under
    /// the current one, in one command that keeps each secret as it was;
    /// a node with only the old KEK then stops, naming the new one.
    #[tokio::test]
    async fn the_leader_rewraps_clear_and_previous_secrets_under_the_current_kek() {
        let kek = KekRing::new(&[0xb; 32], &[[0xa; 32]]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ops = clear_state();
        let before = applied(dir.path(), ops.clone()).await;
        let r = before.reader();
        assert_eq!(check_secrets(&r, &kek).unwrap(), 5);
        let opened = |r: &StateReader, kek: &KekRing| -> Vec<Vec<u8>> {
            stored_secrets(r)
                .unwrap()
                .iter()
                .map(|s| kek.open(s.kind, &s.kid, &s.bytes).unwrap())
                .collect()
        };
        let clear = opened(&r, &kek);
        let secrets = rewraps(&r, &kek).unwrap();
        assert_eq!(secrets.len(), 5);
        drop(r);
        drop(before);

        let dir = tempfile::tempdir().unwrap();
        let mut ops = ops;
        ops.push((3, Op::RewrapSecrets { secrets }));
        let after = applied(dir.path(), ops).await;
        let r = after.reader();
        assert_eq!(
            check_secrets(&r, &kek).unwrap(),
            0,
            "all under the current KEK"
        );
        let mut now = opened(&r, &kek);
        let mut was = clear;
        now.sort();
        was.sort();
        assert_eq!(now, was, "the same secrets");
        for s in stored_secrets(&r).unwrap() {
            for c in &was {
                assert!(
                    !s.bytes.windows(16).any(|w| c.windows(16).any(|x| x == w)),
                    "{} {} holds part of a secret in the clear",
                    s.kind.name(),
                    s.kid
                );
            }
        }
        assert!(rewraps(&r, &kek).unwrap().is_empty(), "nothing left to do");
        let old_only = KekRing::new(&[0xa; 32], &[]).unwrap();
        let e = check_secrets(&r, &old_only).unwrap_err().to_string();
        assert!(e.contains(&kek.current_id()), "{e}");
    }
}
