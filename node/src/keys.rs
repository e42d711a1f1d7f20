//! The agency's signing keys: RSA keys replicated through Raft, used to sign
//! ID tokens and logout tokens (RS256), and published as JWKS. Each RSA key
//! also yields, deterministically on every node, an Ed25519 key that signs
//! the agency reference cookie (EdDSA: compact, and never valid as an ID
//! token); it is published, retired and rotated with its RSA key. Keys are
//! generated here (RustCrypto `rsa`, only for generation); signing and
//! verification go through `jsonwebtoken` (ring).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use baa_proto::cookie::{Reference, MAX_COOKIE_LEN, REFERENCE_TYP};
use baa_proto::sso::SigningKey;
use baa_proto::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::raft::state_machine::StateReader;

/// `typ` of the agency's ID tokens.
pub const ID_TOKEN_TYP: &str = "JWT";
/// `typ` of back-channel logout tokens (OIDC Back-Channel Logout §2.4).
pub const LOGOUT_TOKEN_TYP: &str = "logout+jwt";

/// Size of generated RSA keys.
pub const RSA_BITS: usize = 2048;

/// How long a loaded key set is reused before the state is read again.
const CACHE_FOR: Duration = Duration::from_millis(500);

/// Generates a new RSA signing key.
pub fn generate() -> anyhow::Result<SigningKey> {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, RSA_BITS)?;
    let der = private.to_pkcs1_der()?;
    let n = private.n().to_bytes_be();
    let e = private.e().to_bytes_be();
    let fp = Sha256::digest([n.as_slice(), &e].concat());
    Ok(SigningKey {
        kid: URL_SAFE_NO_PAD.encode(&fp[..12]),
        private_der: der.as_bytes().to_vec(),
        n,
        e,
        created_ms: now_ms(),
        retired_ms: None,
        publish_until_ms: None,
    })
}

/// PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The reference-cookie key that RSA key `k` yields: an Ed25519 key whose
/// seed is a hash of the RSA private key under a label of its own.
struct ReferenceKey {
    kid: String,
    x: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The signing key of an Ed25519 `seed`, for jsonwebtoken.
pub fn ed25519_encoding_key(seed: &[u8; 32]) -> EncodingKey {
    EncodingKey::from_ed_der(&[ED25519_PKCS8_PREFIX.as_slice(), seed].concat())
}

/// The public key of an Ed25519 `seed`.
pub fn ed25519_public(seed: &[u8; 32]) -> Option<[u8; 32]> {
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
    ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .try_into()
        .ok()
}

fn reference_key(k: &SigningKey) -> Option<ReferenceKey> {
    let seed: [u8; 32] =
        Sha256::digest([b"baa reference key v1\0".as_slice(), &k.private_der].concat()).into();
    let public = ed25519_public(&seed)?;
    let x = URL_SAFE_NO_PAD.encode(public);
    Some(ReferenceKey {
        kid: format!(
            "ref-{}",
            URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12])
        ),
        encoding: ed25519_encoding_key(&seed),
        decoding: DecodingKey::from_ed_components(&x).ok()?,
        x,
    })
}

struct Loaded {
    at: Instant,
    current: Option<(String, Arc<EncodingKey>)>,
    verify: HashMap<String, Arc<DecodingKey>>,
    reference_current: Option<(String, Arc<EncodingKey>)>,
    reference_verify: HashMap<String, Arc<DecodingKey>>,
    jwks: serde_json::Value,
}

/// Signs and verifies with the replicated keys; cheap to clone.
#[derive(Clone)]
pub struct KeyRing {
    state: StateReader,
    loaded: Arc<RwLock<Option<Arc<Loaded>>>>,
}

fn no_key() -> NodeError {
    NodeError::BadRequest {
        code: ErrorCode::NoSigningKey,
        message: "the agency has no signing key yet; run `baa cluster init` or wait a moment"
            .into(),
    }
}

impl KeyRing {
    /// A key ring reading keys from `state`.
    pub fn new(state: StateReader) -> Self {
        Self {
            state,
            loaded: Arc::new(RwLock::new(None)),
        }
    }

    /// The keys for a verification, whose answer is only yes or no: a
    /// failure to read them is a no, logged as the error it is.
    fn load_logged(&self) -> Option<Arc<Loaded>> {
        self.load()
            .map_err(|e| tracing::error!(error = %e, "reading the signing keys failed"))
            .ok()
    }

    fn load(&self) -> Result<Arc<Loaded>, NodeError> {
        if let Ok(g) = self.loaded.read() {
            if let Some(l) = g.as_ref() {
                if l.at.elapsed() < CACHE_FOR {
                    return Ok(l.clone());
                }
            }
        }
        let (keys, current_kid) = self.state.signing_keys()?;
        let now = now_ms();
        let mut verify = HashMap::new();
        let mut current = None;
        let mut reference_verify = HashMap::new();
        let mut reference_current = None;
        let mut jwks = Vec::new();
        for k in keys.iter().filter(|k| k.published_at(now)) {
            let dk = DecodingKey::from_rsa_raw_components(&k.n, &k.e);
            verify.insert(k.kid.clone(), Arc::new(dk));
            jwks.push(serde_json::json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": k.kid,
                "n": URL_SAFE_NO_PAD.encode(&k.n),
                "e": URL_SAFE_NO_PAD.encode(&k.e),
            }));
            let is_current = current_kid.as_deref() == Some(k.kid.as_str());
            if is_current {
                current = Some((
                    k.kid.clone(),
                    Arc::new(EncodingKey::from_rsa_der(&k.private_der)),
                ));
            }
            if let Some(r) = reference_key(k) {
                jwks.push(serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "use": "sig",
                    "alg": "EdDSA",
                    "kid": r.kid,
                    "x": r.x,
                }));
                if is_current {
                    reference_current = Some((r.kid.clone(), Arc::new(r.encoding)));
                }
                reference_verify.insert(r.kid, Arc::new(r.decoding));
            }
        }
        let loaded = Arc::new(Loaded {
            at: Instant::now(),
            current,
            verify,
            reference_current,
            reference_verify,
            jwks: serde_json::json!({ "keys": jwks }),
        });
        if let Ok(mut g) = self.loaded.write() {
            *g = Some(loaded.clone());
        }
        Ok(loaded)
    }

    /// Forgets the cached key set (after a rotation on this node).
    pub fn invalidate(&self) {
        if let Ok(mut g) = self.loaded.write() {
            *g = None;
        }
    }

    /// Whether a current signing key exists.
    pub fn has_current(&self) -> Result<bool, NodeError> {
        Ok(self.load()?.current.is_some())
    }

    /// The published keys as a JWKS document.
    pub fn jwks(&self) -> Result<serde_json::Value, NodeError> {
        Ok(self.load()?.jwks.clone())
    }

    /// The published reference-cookie keys (Ed25519 JWKs), for the
    /// agency's entity configuration: peers check references with them.
    pub fn reference_jwks(&self) -> Result<Vec<serde_json::Value>, NodeError> {
        let l = self.load()?;
        let keys = l.jwks["keys"].as_array().cloned().unwrap_or_default();
        Ok(keys.into_iter().filter(|k| k["kty"] == "OKP").collect())
    }

    /// Signs `claims` as an RS256 JWT with the current key.
    pub fn sign_jwt<T: Serialize>(&self, claims: &T, typ: &str) -> Result<String, NodeError> {
        let l = self.load()?;
        let (kid, key) = l.current.as_ref().ok_or_else(no_key)?;
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.clone());
        header.typ = Some(typ.into());
        jsonwebtoken::encode(&header, claims, key)
            .map_err(|e| NodeError::Internal(format!("signing a token: {e}")))
    }

    /// Verifies an RS256 JWT signed by one of our published keys for the
    /// purpose `typ` names (an ID token never passes for a logout token or a
    /// session assertion, nor the other way round). Audience and expiry
    /// checks are the caller's, through `validation`.
    pub fn verify_jwt<T: DeserializeOwned>(
        &self,
        token: &str,
        validation: &Validation,
        typ: &str,
    ) -> Option<T> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::RS256 || header.typ.as_deref() != Some(typ) {
            return None;
        }
        let l = self.load_logged()?;
        let key = l.verify.get(header.kid.as_deref()?)?;
        jsonwebtoken::decode::<T>(token, key, validation)
            .ok()
            .map(|d| d.claims)
    }

    /// An agency reference (the shared-domain cookie's value) for `claims`,
    /// signed with the current reference key.
    pub fn sign_reference(&self, claims: &Reference) -> Result<String, NodeError> {
        let l = self.load()?;
        let (kid, key) = l.reference_current.as_ref().ok_or_else(no_key)?;
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        header.typ = Some(REFERENCE_TYP.into());
        jsonwebtoken::encode(&header, claims, key)
            .map_err(|e| NodeError::Internal(format!("signing a reference: {e}")))
    }

    /// The claims of a reference this agency (`issuer`) signed with a
    /// published key and that has not expired.
    pub fn verify_reference(&self, value: &str, issuer: &str) -> Option<Reference> {
        self.verify_reference_kid(value, issuer).map(|(r, _)| r)
    }

    /// [`Self::verify_reference`], with the id of the key that signed it.
    pub fn verify_reference_kid(&self, value: &str, issuer: &str) -> Option<(Reference, String)> {
        if value.len() > MAX_COOKIE_LEN {
            return None;
        }
        let header = jsonwebtoken::decode_header(value).ok()?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(REFERENCE_TYP) {
            return None;
        }
        let kid = header.kid?;
        let l = self.load_logged()?;
        let key = l.reference_verify.get(&kid)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[issuer]);
        v.set_required_spec_claims(&["exp", "iss"]);
        v.validate_aud = false;
        v.leeway = 0;
        jsonwebtoken::decode::<Reference>(value, key, &v)
            .ok()
            .map(|d| (d.claims, kid))
    }

    /// Whether references signed with `kid` are still honoured.
    pub fn has_reference_key(&self, kid: &str) -> bool {
        self.load()
            .is_ok_and(|l| l.reference_verify.contains_key(kid))
    }
}

/// A key ring over a fresh state machine in `dir` holding one signing key.
#[cfg(test)]
pub(crate) async fn test_ring(dir: &std::path::Path) -> KeyRing {
    tests::ring(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key ring over a fresh state machine holding one signing key.
    pub(super) async fn ring(dir: &std::path::Path) -> KeyRing {
        use baa_proto::command::{Command, Op, Proposal};
        use openraft::storage::RaftStateMachine;
        use openraft::{CommittedLeaderId, EntryPayload, LogId};
        let db = sled::Config::new().path(dir.join("db")).open().unwrap();
        let mut sm = crate::raft::state_machine::StateMachineStore::open(
            &db,
            &dir.join("snap"),
            crate::metrics::Metrics::new(),
        )
        .unwrap();
        let entry = crate::raft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Proposal {
                commands: vec![Command {
                    request_id: None,
                    time_ms: now_ms(),
                    op: Op::AddSigningKey {
                        key: Box::new(generate().unwrap()),
                        publish_old_for_ms: 0,
                    },
                }],
            }),
        };
        sm.apply(vec![entry]).await.unwrap();
        KeyRing::new(sm.reader())
    }

    /// L3: a JWT signed for one purpose (a gateway session assertion, a
    /// logout token) does not pass where another is expected (an ID token
    /// as `id_token_hint`): each carries its `typ` and is checked for it.
    #[tokio::test]
    async fn l3_jwts_of_one_purpose_do_not_pass_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ring(dir.path()).await;
        let claims = serde_json::json!({ "iss": "https://login.example", "sub": "1", "aud": "x" });
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        let id_token = keys.sign_jwt(&claims, ID_TOKEN_TYP).unwrap();
        assert!(keys
            .verify_jwt::<serde_json::Value>(&id_token, &v, ID_TOKEN_TYP)
            .is_some());
        for other in ["baa-session+jwt", "logout+jwt"] {
            let token = keys.sign_jwt(&claims, other).unwrap();
            assert!(
                keys.verify_jwt::<serde_json::Value>(&token, &v, ID_TOKEN_TYP)
                    .is_none(),
                "a {other} passed for an ID token"
            );
        }
    }

    #[test]
    fn reference_keys_are_derived_alike_everywhere_and_verify() {
        let rsa = generate().unwrap();
        let (a, b) = (reference_key(&rsa).unwrap(), reference_key(&rsa).unwrap());
        assert_eq!((&a.kid, &a.x), (&b.kid, &b.x), "the same key on every node");
        let other = reference_key(&generate().unwrap()).unwrap();
        assert_ne!(a.kid, other.kid);

        let claims = Reference {
            iss: "https://login.example".into(),
            sid: "s".into(),
            iat: 1,
            exp: u64::MAX / 2,
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(REFERENCE_TYP.into());
        let token = jsonwebtoken::encode(&header, &claims, &a.encoding).unwrap();
        let v = Validation::new(Algorithm::EdDSA);
        let got = jsonwebtoken::decode::<Reference>(&token, &b.decoding, &v).unwrap();
        assert_eq!(got.claims, claims);
        assert!(jsonwebtoken::decode::<Reference>(&token, &other.decoding, &v).is_err());
    }
}
