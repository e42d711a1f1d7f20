//! Federation of agencies: the agency's federation key (Ed25519, separate
//! from the keys that sign tokens and cookies, long-lived because peers pin
//! it) and the RFC 7638 thumbprint by which peers pin it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `typ` of an OpenID Federation entity statement.
pub const ENTITY_STATEMENT_TYP: &str = "entity-statement+jwt";

/// Where an agency publishes its entity configuration.
pub const ENTITY_CONFIGURATION_PATH: &str = "/.well-known/openid-federation";

/// A federation key: Ed25519, replicated; its `kid` is its RFC 7638
/// thumbprint, the value a peer pins.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationKey {
    /// Key id: the JWK thumbprint of the public key.
    pub kid: String,
    /// The private key's 32-byte seed.
    pub seed: [u8; 32],
    /// The public key, 32 bytes.
    pub public: [u8; 32],
    /// When it was added.
    pub created_ms: u64,
    /// When a newer key replaced it as the current one.
    pub retired_ms: Option<u64>,
    /// It stays published until this time after retiring.
    pub publish_until_ms: Option<u64>,
}

impl std::fmt::Debug for FederationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationKey")
            .field("kid", &self.kid)
            .field("created_ms", &self.created_ms)
            .field("retired_ms", &self.retired_ms)
            .field("publish_until_ms", &self.publish_until_ms)
            .finish_non_exhaustive()
    }
}

impl FederationKey {
    /// Whether the key is still published at `now_ms`.
    pub fn published_at(&self, now_ms: u64) -> bool {
        self.publish_until_ms.is_none_or(|t| now_ms < t)
    }
}

/// A peer agency: another agency of the federation, named by its issuer
/// URL and pinned by the thumbprint of its federation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAgency {
    /// The peer's issuer URL.
    pub issuer: String,
    /// RFC 7638 thumbprint of the federation key it must sign with.
    pub pin: String,
    /// When it was added.
    pub added_ms: u64,
}

/// The RFC 7638 thumbprint (SHA-256, base64url) of an Ed25519 public key:
/// the hash of its JWK's required members in lexicographic order.
pub fn ed25519_thumbprint(public: &[u8]) -> String {
    let x = URL_SAFE_NO_PAD.encode(public);
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8037 Appendix A.3.
    #[test]
    fn thumbprint_matches_rfc_8037_example() {
        let public = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            ed25519_thumbprint(&public),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
