//! Federation of agencies, so far: the agency's entity configuration
//! (OpenID Federation 1.0 §3), a statement about itself signed with its
//! federation key — the keys peers pin, its endpoints, its cookie domain —
//! that peers fetch from `/.well-known/openid-federation`; and its peer
//! agencies, each added only once its own statement was fetched and found
//! signed by the key an administrator pinned.

use baa_proto::command::{Op, RequestId};
use baa_proto::cookie::REFERENCE_COOKIE;
use baa_proto::federation::{FederationKey, PeerAgency, ENTITY_STATEMENT_TYP};
use baa_proto::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, Header};

use crate::actors::federation_directory::{
    self as directory, FederationDirectory, ListPeers, PeerState,
};
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;

/// How long an entity configuration is valid (`exp - iat`): peers fetch
/// it again well before, and keep the last good copy until then.
pub const ENTITY_VALIDITY_S: u64 = 24 * 3600;

/// What the agency says about itself, besides its keys.
pub struct AgencyFacts<'a> {
    /// The agency's issuer URL: its name in the federation.
    pub issuer: &'a str,
    /// The agency's display name.
    pub name: &'a str,
    /// The shared cookie domain of its reference cookie, if any.
    pub cookie_domain: Option<&'a str>,
    /// The keys that verify its reference cookies (Ed25519 JWKs).
    pub reference_keys: &'a [serde_json::Value],
    /// The keys that verify its ID tokens (RSA JWKs).
    pub token_keys: &'a [serde_json::Value],
}

/// The agency's entity configuration, signed with its current federation key.
pub fn entity_configuration(agency: &Agency) -> Result<String, NodeError> {
    let (keys, current) = crate::key_rotation::federation_keys(agency)?;
    let reference_keys = agency.keys.reference_jwks()?;
    let token_keys: Vec<serde_json::Value> = agency.keys.jwks()?["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["kty"] == "RSA")
        .cloned()
        .collect();
    let facts = AgencyFacts {
        token_keys: &token_keys,
        issuer: &agency.config.issuer,
        name: &agency.config.sso.agency,
        cookie_domain: agency.config.sso.cookie_domain.as_deref(),
        reference_keys: &reference_keys,
    };
    statement(&facts, &keys, current.as_deref(), now_ms())
}

/// The federation key the agency signs with now, as a JWK, with its pin
/// (the RFC 7638 thumbprint peers give `baa federation add --pin`), and the
/// key a rotation has published to sign with next, if any.
pub fn own_key(agency: &Agency) -> Result<serde_json::Value, NodeError> {
    let (keys, current) = crate::key_rotation::federation_keys(agency)?;
    let key = baa_proto::federation::signing_key(&keys, current.as_deref(), now_ms()).ok_or_else(
        || NodeError::BadRequest {
            code: ErrorCode::NoSigningKey,
            message: "the agency has no federation key yet; run `baa cluster init` or wait".into(),
        },
    )?;
    let next = current.filter(|c| *c != key.kid);
    Ok(serde_json::json!({ "pin": key.kid, "jwk": jwk(key), "next": next }))
}

/// How long the replaced federation key keeps signing after a rotation,
/// unless told otherwise: long enough for peers that fetch hourly.
pub const DEFAULT_ROTATION_OVERLAP_S: u64 = 24 * 3600;

/// Rotates the federation key: a new key is published at once and signs
/// once the current one stops being published, `overlap_s` later — by then
/// every peer has fetched a statement listing it, signed by a key it
/// trusts, and follows the rotation (and re-pins to it).
pub async fn rotate_key(agency: &Agency, overlap_s: u64) -> Result<serde_json::Value, NodeError> {
    let min = 2 * agency.config.federation.refresh_s;
    if overlap_s < min.min(ENTITY_VALIDITY_S) {
        return Err(NodeError::invalid(format!(
            "overlap_s must be at least {} s (twice [federation] refresh_s), so that every peer sees the new key before it signs",
            min.min(ENTITY_VALIDITY_S)
        )));
    }
    crate::key_rotation::rotate_federation_key(agency, overlap_s).await?;
    agency
        .read_barrier(baa_proto::command::Consistency::Linearizable)
        .await?;
    own_key(agency)
}

/// A federation key's public half as a JWK (RFC 8037).
fn jwk(k: &FederationKey) -> serde_json::Value {
    serde_json::json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": URL_SAFE_NO_PAD.encode(k.public),
        "kid": k.kid,
        "use": "sig",
        "alg": "EdDSA",
    })
}

/// The entity configuration of `facts` at `now_ms`, listing the published
/// `keys` and signed with the one that signs now (see
/// [`baa_proto::federation::signing_key`]; `current` names the current one).
pub fn statement(
    facts: &AgencyFacts<'_>,
    keys: &[FederationKey],
    current: Option<&str>,
    now_ms: u64,
) -> Result<String, NodeError> {
    let signer = baa_proto::federation::signing_key(keys, current, now_ms).ok_or_else(|| {
        NodeError::BadRequest {
            code: ErrorCode::NoSigningKey,
            message: "the agency has no federation key yet; run `baa cluster init` or wait".into(),
        }
    })?;
    let jwks: Vec<_> = keys
        .iter()
        .filter(|k| k.published_at(now_ms))
        .map(jwk)
        .collect();
    let i = facts.issuer;
    let iat = now_ms / 1000;
    let claims = serde_json::json!({
        "iss": i,
        "sub": i,
        "iat": iat,
        "exp": iat + ENTITY_VALIDITY_S,
        "jwks": { "keys": jwks },
        "metadata": {
            "openid_provider": {
                "issuer": i,
                "organization_name": facts.name,
                "authorization_endpoint": format!("{i}/sso/authorize"),
                "token_endpoint": format!("{i}/sso/token"),
                "userinfo_endpoint": format!("{i}/sso/userinfo"),
                "end_session_endpoint": format!("{i}/sso/logout"),
                "jwks_uri": format!("{i}/.well-known/jwks.json"),
                "jwks": { "keys": facts.token_keys },
                "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
            },
            "baa_agency": {
                "cookie_domain": facts.cookie_domain,
                "reference_keys": facts.reference_keys,
                "reference_cookie": REFERENCE_COOKIE,
                "session_status_endpoint": format!("{i}/sso/session_status"),
            },
        },
    });
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some(ENTITY_STATEMENT_TYP.into());
    header.kid = Some(signer.kid.clone());
    let key = crate::keys::ed25519_encoding_key(&signer.seed);
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| NodeError::Internal(format!("signing the entity configuration: {e}")))
}

/// Adds the agency at `issuer` as a peer, pinned to `pin`, once its entity
/// configuration is fetched and found signed by that key.
pub async fn add_peer(
    agency: &Agency,
    issuer: &str,
    pin: &str,
    request_id: Option<RequestId>,
) -> Result<PeerAgency, NodeError> {
    let url_ok = url::Url::parse(issuer).is_ok_and(|u| {
        u.scheme() == "https" && u.host().is_some() && u.query().is_none() && u.fragment().is_none()
    });
    if !url_ok || issuer.ends_with('/') {
        return Err(NodeError::invalid(
            "issuer must be an https URL without query, fragment or trailing slash",
        ));
    }
    if issuer == agency.config.issuer {
        return Err(NodeError::invalid("an agency cannot be its own peer"));
    }
    let pin_ok = pin.len() == 43
        && pin
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !pin_ok {
        return Err(NodeError::invalid(
            "pin must be an RFC 7638 SHA-256 thumbprint (43 base64url characters)",
        ));
    }
    let client = agency.peers.client(&agency.config.federation)?;
    let jwt = directory::fetch_statement(&client, issuer).await?;
    let claims = directory::check_statement(&jwt, issuer, &[pin], now_ms() / 1000)?;
    let peer = PeerAgency {
        issuer: issuer.to_string(),
        pin: pin.to_string(),
        added_ms: now_ms(),
    };
    agency
        .write(Op::AddPeerAgency(Box::new(peer.clone())), request_id)
        .await?;
    // This node uses the peer at once; the others at their next refresh.
    let view = crate::peers::PeerView::from_claims(issuer, &claims);
    agency.peers.set(issuer, Some(view));
    tracing::info!(peer = %issuer, pin = %pin, "peer agency added");
    Ok(peer)
}

/// What this node's federation directory holds of each peer.
pub async fn directory(
    agency: &Agency,
    addr: &actix::Addr<FederationDirectory>,
) -> Result<Vec<PeerState>, NodeError> {
    crate::actors::ask(&agency.metrics, addr, ListPeers)
        .await
        .map_err(|_| NodeError::Internal("the federation directory is not running".into()))
}

/// Every peer agency.
pub fn peers(agency: &Agency) -> Result<Vec<PeerAgency>, NodeError> {
    Ok(agency.state.peer_agencies()?)
}

/// Removes the peer agency at `issuer`.
pub async fn remove_peer(
    agency: &Agency,
    issuer: &str,
    request_id: Option<RequestId>,
) -> Result<(), NodeError> {
    let op = Op::RemovePeerAgency {
        issuer: issuer.to_string(),
    };
    agency.write(op, request_id).await?;
    tracing::info!(peer = %issuer, "peer agency removed");
    Ok(())
}

/// A federation key from a fixed seed, retired at `retired` (for tests).
#[cfg(test)]
pub(crate) fn test_key(seed: u8, retired: Option<u64>) -> FederationKey {
    let seed = [seed; 32];
    let public = crate::keys::ed25519_public(&seed).unwrap_or([0; 32]);
    FederationKey {
        kid: baa_proto::federation::ed25519_thumbprint(&public),
        seed,
        public,
        created_ms: 0,
        retired_ms: retired,
        publish_until_ms: retired.map(|t| t + 1000),
    }
}

#[cfg(test)]
mod tests {
    use super::test_key as key;
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation};

    /// The statement verifies with the key it publishes under the `kid` of
    /// its header, names the agency as issuer and subject, and lists only
    /// the keys still published.
    #[test]
    fn the_entity_configuration_is_self_signed_and_lists_published_keys() {
        let (old, gone, new) = (key(1, Some(5_000)), key(2, Some(1)), key(3, None));
        let facts = AgencyFacts {
            issuer: "https://login-a.baa.localtest",
            name: "a",
            cookie_domain: Some("baa.localtest"),
            reference_keys: &[],
            token_keys: &[],
        };
        let keys = [old.clone(), gone.clone(), new.clone()];
        // While the key the last rotation replaced is published, it signs
        // (the new one is only published); then the new one signs.
        let signer = |now| {
            let jwt = statement(&facts, &keys, Some(&new.kid), now).unwrap();
            jsonwebtoken::decode_header(&jwt).unwrap().kid.unwrap()
        };
        assert_eq!(signer(5_500), old.kid);
        assert_eq!(signer(6_000), new.kid);
        let jwt = statement(&facts, &keys, Some(&new.kid), 5_500).unwrap();
        let header = jsonwebtoken::decode_header(&jwt).unwrap();
        assert_eq!(header.typ.as_deref(), Some("entity-statement+jwt"));
        let x = URL_SAFE_NO_PAD.encode(old.public);
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_required_spec_claims(&["exp", "iss", "sub"]);
        v.validate_exp = false;
        let claims = jsonwebtoken::decode::<serde_json::Value>(
            &jwt,
            &DecodingKey::from_ed_components(&x).unwrap(),
            &v,
        )
        .unwrap()
        .claims;
        assert_eq!(claims["iss"], facts.issuer);
        assert_eq!(claims["sub"], facts.issuer);
        let kids: Vec<&str> = claims["jwks"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [old.kid.as_str(), new.kid.as_str()]);
        assert_eq!(
            claims["metadata"]["baa_agency"]["cookie_domain"],
            "baa.localtest"
        );
        // Signed by another key than the header names: refused.
        let other = URL_SAFE_NO_PAD.encode(new.public);
        let wrong = DecodingKey::from_ed_components(&other).unwrap();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&jwt, &wrong, &v).is_err());
        // No key to sign with: a clear error, not a statement.
        assert!(statement(&facts, &keys, None, 6_500).is_err());
    }
}
