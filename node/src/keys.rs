//! The agency's signing keys: RSA keys replicated through Raft, used to sign
//! ID tokens, logout tokens and SSO cookies (RS256), and published as JWKS.
//! Keys are generated here (RustCrypto `rsa`, only for generation); signing
//! and verification go through `jsonwebtoken` (ring).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use baa_proto::cookie::{self, SsoCookie};
use baa_proto::sso::SigningKey;
use baa_proto::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

use crate::agency::now_ms;
use crate::error::NodeError;
use crate::raft::state_machine::StateReader;

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

struct Loaded {
    at: Instant,
    current: Option<(String, Arc<EncodingKey>)>,
    verify: HashMap<String, Arc<DecodingKey>>,
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
            if current_kid.as_deref() == Some(k.kid.as_str()) {
                current = Some((
                    k.kid.clone(),
                    Arc::new(EncodingKey::from_rsa_der(&k.private_der)),
                ));
            }
        }
        let loaded = Arc::new(Loaded {
            at: Instant::now(),
            current,
            verify,
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

    /// Verifies an RS256 JWT signed by one of our published keys. Audience and
    /// expiry checks are the caller's, through `validation`.
    pub fn verify_jwt<T: DeserializeOwned>(
        &self,
        token: &str,
        validation: &Validation,
    ) -> Option<T> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != Algorithm::RS256 {
            return None;
        }
        let l = self.load().ok()?;
        let key = l.verify.get(header.kid.as_deref()?)?;
        jsonwebtoken::decode::<T>(token, key, validation)
            .ok()
            .map(|d| d.claims)
    }

    /// A new SSO cookie value for `secret`, signed with the current key.
    pub fn sign_cookie(&self, agency: &str, secret: &[u8]) -> Result<String, NodeError> {
        let l = self.load()?;
        let (kid, key) = l.current.as_ref().ok_or_else(no_key)?;
        let input = cookie::signing_input(agency, secret, now_ms() / 1000, kid);
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, Algorithm::RS256)
            .map_err(|e| NodeError::Internal(format!("signing a cookie: {e}")))?;
        Ok(format!("{input}.{sig}"))
    }

    /// Whether a parsed cookie carries a valid signature by a published key.
    pub fn cookie_signature_valid(&self, c: &SsoCookie) -> bool {
        let Ok(l) = self.load() else {
            return false;
        };
        let Some(key) = l.verify.get(&c.kid) else {
            return false;
        };
        let sig = URL_SAFE_NO_PAD.encode(&c.signature);
        jsonwebtoken::crypto::verify(&sig, c.signed.as_bytes(), key, Algorithm::RS256)
            .unwrap_or(false)
    }
}
