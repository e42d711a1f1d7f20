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
/// thumbprint, the value a peer pins. In the clear: how a node holds it in
/// memory, and how releases before keys were wrapped stored it
/// (`Op::AddFederationKey`); the state holds a [`WrappedFederationKey`] now.
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

rotating_key!(FederationKey);

/// A [`FederationKey`] as the replicated state holds it: the seed wrapped
/// under the cluster's key-encryption key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedFederationKey {
    /// Key id: the JWK thumbprint of the public key.
    pub kid: String,
    /// The envelope of the private key's 32-byte seed (see the node's
    /// `kek`). Read from a record of a release before keys were wrapped,
    /// the 32 clear bytes.
    pub seed: Vec<u8>,
    /// The public key, 32 bytes.
    pub public: [u8; 32],
    /// When it was added.
    pub created_ms: u64,
    /// When a newer key replaced it as the current one.
    pub retired_ms: Option<u64>,
    /// It stays published until this time after retiring.
    pub publish_until_ms: Option<u64>,
}

rotating_key!(WrappedFederationKey);

impl FederationKey {
    /// The key as the state holds it, its seed stored as `stored` (an
    /// envelope; the clear bytes for a record of an earlier release).
    pub fn stored_as(self, stored: Vec<u8>) -> WrappedFederationKey {
        WrappedFederationKey {
            kid: self.kid,
            seed: stored,
            public: self.public,
            created_ms: self.created_ms,
            retired_ms: self.retired_ms,
            publish_until_ms: self.publish_until_ms,
        }
    }
}

impl WrappedFederationKey {
    /// The key in the clear, its seed opened as `seed`.
    pub fn opened_as(&self, seed: [u8; 32]) -> FederationKey {
        FederationKey {
            kid: self.kid.clone(),
            seed,
            public: self.public,
            created_ms: self.created_ms,
            retired_ms: self.retired_ms,
            publish_until_ms: self.publish_until_ms,
        }
    }
}

/// The federation key that signs now (the entity configuration and the
/// client assertions): after a rotation, the key it replaced, for as long
/// as that stays published — the new key is only *published* meanwhile, so
/// that every peer has seen it, in a statement signed by a key it trusts,
/// before anything is signed with it; then the current key.
pub fn signing_key<'a>(
    keys: &'a [FederationKey],
    current: Option<&str>,
    now_ms: u64,
) -> Option<&'a FederationKey> {
    let previous = keys
        .iter()
        .filter(|k| k.retired_ms.is_some() && k.published_at(now_ms))
        .max_by_key(|k| k.retired_ms);
    previous.or_else(|| current.and_then(|kid| keys.iter().find(|k| k.kid == kid)))
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

/// Where a peer's answer to a silent round trip comes back (form post).
pub const CALLBACK_PATH: &str = "/federation/callback";

/// Where a peer's back-channel logout tokens arrive.
pub const BACKCHANNEL_LOGOUT_PATH: &str = "/federation/backchannel-logout";

/// RFC 7523 client assertions (`private_key_jwt`), how an agency
/// authenticates to a peer's endpoints with its federation key.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The `typ` of the state an agency keeps in the browser during a silent
/// round trip to a peer.
pub const ROUND_TRIP_TYP: &str = "baa-fed-state+jwt";

/// The host-only cookie holding that state.
pub const ROUND_TRIP_COOKIE: &str = "__Host-baa_fed";

/// The peer session a local session was derived from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSessionLink {
    /// The peer's issuer URL.
    pub peer: String,
    /// The peer's public session id (`sid` of its ID token).
    pub peer_sid: String,
}

/// A sign-in at this agency proved by a peer agency's ID token: the peer's
/// subject is linked to a local account (made on first use when `create`),
/// and a session of that account is started, linked to the peer's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederatedSignIn {
    /// The peer's issuer URL.
    pub peer: String,
    /// The subject at the peer (pairwise for this agency).
    pub sub: String,
    /// The name the peer gave (`preferred_username`), a hint for a new account.
    pub username_hint: String,
    /// The display name the peer gave.
    pub display_name: String,
    /// The email address the peer gave.
    pub email: Option<String>,
    /// Make a local account on first use (else the subject must be linked).
    pub create: bool,
    /// The new session (its user id and name are the linked account's).
    pub session: crate::sso::Session,
    /// The peer's public session id.
    pub peer_sid: String,
}

/// The client id under which a peer agency is registered at this one (a
/// site id cannot hold a URL): `fed.` and 16 hex digits of the SHA-256 of
/// its issuer URL. Both sides compute it.
pub fn peer_client_id(issuer: &str) -> String {
    let h = Sha256::digest(issuer.as_bytes());
    format!("fed.{}", crate::sso::hex_lower(&h[..8]))
}

/// The local username of a peer's subject: the peer's name for the user,
/// then the first label of the peer's host (`alice.login-b`); `attempt` > 0
/// adds a tag of the subject, for when that name is taken.
pub fn federated_username(hint: &str, peer: &str, sub: &str, attempt: u32) -> String {
    let clean = |s: &str, max: usize| -> String {
        let mut out: String = s
            .to_ascii_lowercase()
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
                _ => '-',
            })
            .take(max)
            .collect();
        while out.starts_with(['.', '_', '-']) {
            out.remove(0);
        }
        out
    };
    let host = peer
        .split("://")
        .nth(1)
        .unwrap_or(peer)
        .split(['.', ':', '/'])
        .next()
        .unwrap_or("peer");
    let mut name = clean(hint, 32);
    if name.is_empty() {
        name = "user".into();
    }
    let tag = clean(host, 20);
    let mut out = format!("{name}.{}", if tag.is_empty() { "peer" } else { &tag });
    if attempt > 0 {
        let h = Sha256::digest(format!("{peer}\0{sub}\0{attempt}").as_bytes());
        out.push('-');
        out.push_str(&crate::sso::hex_lower(&h[..4]));
    }
    out
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

    #[test]
    fn federated_usernames_are_valid_usernames() {
        let peer = "https://login-b.baa.localtest:8443";
        assert_eq!(federated_username("alice", peer, "s", 0), "alice.login-b");
        assert_eq!(federated_username("", peer, "s", 0), "user.login-b");
        assert_eq!(
            federated_username("-Bob Smith@x", peer, "s", 0),
            "bob-smith-x.login-b"
        );
        let again = federated_username("alice", peer, "s", 1);
        assert!(
            again.starts_with("alice.login-b-") && again.len() == 22,
            "{again}"
        );
        assert_ne!(again, federated_username("alice", peer, "s", 2));
        for n in [
            federated_username(&"\u{e9}".repeat(300), peer, "s", 3),
            federated_username("x", "weird", "s", 0),
        ] {
            assert!(crate::model::validate_username(&n).is_ok(), "{n}");
        }
    }
}
