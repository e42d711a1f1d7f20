//! The agency's signing keys: RSA keys replicated through Raft, used to sign
//! ID tokens and logout tokens (RS256), and published as JWKS. Each RSA key
//! also yields, deterministically on every node, three more keys published,
//! retired and rotated with it: an Ed25519 key that signs the agency
//! reference cookie (EdDSA: compact, and never valid as an ID token), and a
//! P-256 and an Ed25519 key that sign the ID tokens of sites registered for
//! ES256 or EdDSA. Keys are generated or derived here (RustCrypto `rsa` and
//! `p256`, only for that), opened with the cluster's key-encryption key and
//! parsed into ring's key pairs once per key, and sign through ring;
//! verification goes through `jsonwebtoken` (ring). The derived keys come
//! from the RSA key in the clear, so they are the same whatever envelope
//! holds it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use baa_proto::cookie::{Reference, MAX_COOKIE_LEN, REFERENCE_TYP};
use baa_proto::sso::{IdTokenAlg, SigningKey};
use baa_proto::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde::{de::DeserializeOwned, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::error::NodeError;
use crate::kek::KekRing;
use crate::raft::state_machine::StateReader;

/// `typ` of the agency's ID tokens.
pub const ID_TOKEN_TYP: &str = "JWT";
/// `typ` of back-channel logout tokens (OIDC Back-Channel Logout §2.4).
pub const LOGOUT_TOKEN_TYP: &str = "logout+jwt";

/// Size of generated RSA keys.
pub const RSA_BITS: usize = 2048;

/// How long a loaded key set is reused before the state is read again.
const CACHE_FOR: Duration = Duration::from_millis(500);

/// Generates a new RSA signing key, its private key in the clear (see
/// [`KekRing::wrap_signing_key`]).
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

/// The signing key of an Ed25519 `seed`, for jsonwebtoken.
pub fn ed25519_encoding_key(seed: &[u8; 32]) -> EncodingKey {
    EncodingKey::from_ed_der(&[ED25519_PKCS8_PREFIX.as_slice(), seed].concat())
}

/// The public key of an Ed25519 `seed`.
pub fn ed25519_public(seed: &[u8; 32]) -> Option<[u8; 32]> {
    let pair = Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
    pair.public_key().as_ref().try_into().ok()
}

/// A seed derived from an RSA key (its PKCS#1 DER) under a label of its
/// own: the derived keys are independent of each other and alike on every
/// node.
fn derived_seed(label: &[u8], der: &[u8]) -> [u8; 32] {
    Sha256::digest([label, der].concat()).into()
}

const ED25519_ID_TOKEN_LABEL: &[u8] = b"baa id-token ed25519 v1\0";
const REFERENCE_LABEL: &[u8] = b"baa reference key v1\0";

/// The P-256 key derived from an RSA key: the first hash under the label
/// that is a valid scalar (all but about 2^-32 of them are).
fn p256_secret(der: &[u8]) -> Option<p256::SecretKey> {
    (0u8..=255).find_map(|i| {
        let seed = derived_seed(&[b"baa id-token p-256 v1\0".as_slice(), &[i]].concat(), der);
        p256::SecretKey::from_bytes(&seed.into()).ok()
    })
}

/// The private keys derived from the RSA key whose PKCS#1 DER is `der`:
/// the P-256 scalar and the two Ed25519 seeds. For checks that none of
/// them is ever stored.
pub fn derived_private_keys(der: &[u8]) -> Vec<[u8; 32]> {
    let mut out: Vec<[u8; 32]> = p256_secret(der)
        .map(|s| s.to_bytes().into())
        .into_iter()
        .collect();
    out.push(derived_seed(ED25519_ID_TOKEN_LABEL, der));
    out.push(derived_seed(REFERENCE_LABEL, der));
    out
}

fn kid_of(prefix: &str, public: &[u8]) -> String {
    format!(
        "{prefix}{}",
        URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..12])
    )
}

/// A key pair parsed once, signing compact JWS values.
enum Signer {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// One signing key as ring holds it, with its kid, its JWS algorithm and
/// its public JWK.
struct Jws {
    kid: String,
    alg: Algorithm,
    signer: Signer,
    jwk: serde_json::Value,
    decoding: DecodingKey,
}

impl Jws {
    /// The RSA key `k`, whose private key's PKCS#1 DER is `der`.
    fn rsa(k: &SigningKey, der: &[u8]) -> Option<Self> {
        Some(Self {
            kid: k.kid.clone(),
            alg: Algorithm::RS256,
            signer: Signer::Rsa(RsaKeyPair::from_der(der).ok()?),
            jwk: serde_json::json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": k.kid,
                "n": URL_SAFE_NO_PAD.encode(&k.n),
                "e": URL_SAFE_NO_PAD.encode(&k.e),
            }),
            decoding: DecodingKey::from_rsa_raw_components(&k.n, &k.e),
        })
    }

    /// An Ed25519 key of `seed`, its kid prefixed `prefix`.
    fn ed25519(seed: &[u8; 32], prefix: &str) -> Option<Self> {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).ok()?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        let kid = kid_of(prefix, pair.public_key().as_ref());
        Some(Self {
            jwk: serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
                "kid": kid, "x": x,
            }),
            decoding: DecodingKey::from_ed_components(&x).ok()?,
            kid,
            alg: Algorithm::EdDSA,
            signer: Signer::Ed(pair),
        })
    }

    /// The P-256 key derived from the RSA key whose DER is `der`.
    fn p256(der: &[u8]) -> Option<Self> {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;
        let secret = p256_secret(der)?;
        let der = secret.to_pkcs8_der().ok()?;
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der.as_bytes(),
            &rng,
        )
        .ok()?;
        let point = secret.public_key().to_encoded_point(false);
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(point.x()?),
            URL_SAFE_NO_PAD.encode(point.y()?),
        );
        let kid = kid_of("es-", point.as_bytes());
        Some(Self {
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256",
                "kid": kid, "x": x, "y": y,
            }),
            decoding: DecodingKey::from_ec_components(&x, &y).ok()?,
            kid,
            alg: Algorithm::ES256,
            signer: Signer::Ecdsa(pair),
        })
    }

    /// `claims` as a compact JWS of type `typ`.
    fn sign<T: Serialize>(&self, claims: &T, typ: &str) -> Result<String, NodeError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some(typ.into());
        let failed = |e: &dyn std::fmt::Display| NodeError::Internal(format!("signing: {e}"));
        let mut out = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).map_err(|e| failed(&e))?);
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(
            serde_json::to_vec(claims).map_err(|e| failed(&e))?,
            &mut out,
        );
        let rng = ring::rand::SystemRandom::new();
        let signature = match &self.signer {
            Signer::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &rng,
                    out.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| failed(&e))?;
                sig
            }
            Signer::Ecdsa(pair) => pair
                .sign(&rng, out.as_bytes())
                .map_err(|e| failed(&e))?
                .as_ref()
                .to_vec(),
            Signer::Ed(pair) => pair.sign(out.as_bytes()).as_ref().to_vec(),
        };
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut out);
        Ok(out)
    }
}

/// Everything one RSA key yields, parsed once.
struct KeySet {
    rs256: Jws,
    es256: Jws,
    eddsa: Jws,
    reference: Jws,
}

impl KeySet {
    /// The keys of `k`, whose private key's PKCS#1 DER is `der`.
    fn of(k: &SigningKey, der: &[u8]) -> Option<Self> {
        Some(Self {
            rs256: Jws::rsa(k, der)?,
            es256: Jws::p256(der)?,
            eddsa: Jws::ed25519(&derived_seed(ED25519_ID_TOKEN_LABEL, der), "ed-")?,
            reference: Jws::ed25519(&derived_seed(REFERENCE_LABEL, der), "ref-")?,
        })
    }

    fn id_token_key(&self, alg: IdTokenAlg) -> &Jws {
        match alg {
            IdTokenAlg::Rs256 => &self.rs256,
            IdTokenAlg::Es256 => &self.es256,
            IdTokenAlg::EdDsa => &self.eddsa,
        }
    }
}

struct Loaded {
    at: Instant,
    current: Option<Arc<KeySet>>,
    /// Token keys (all but the reference keys) by kid.
    verify: HashMap<String, (Arc<KeySet>, IdTokenAlg)>,
    reference_verify: HashMap<String, Arc<KeySet>>,
    jwks: serde_json::Value,
    reference_jwks: Vec<serde_json::Value>,
}

/// Signs and verifies with the replicated keys; cheap to clone.
#[derive(Clone)]
pub struct KeyRing {
    state: StateReader,
    kek: Arc<KekRing>,
    loaded: Arc<RwLock<Option<Arc<Loaded>>>>,
    /// Key sets already parsed, by RSA kid: a reload reuses them.
    parsed: Arc<Mutex<HashMap<String, Arc<KeySet>>>>,
}

fn no_key() -> NodeError {
    NodeError::BadRequest {
        code: ErrorCode::NoSigningKey,
        message: "the agency has no signing key yet; run `baa cluster init` or wait a moment"
            .into(),
    }
}

impl KeyRing {
    /// A key ring reading keys from `state`, opened with `kek`.
    pub fn new(state: StateReader, kek: Arc<KekRing>) -> Self {
        Self {
            state,
            kek,
            loaded: Arc::new(RwLock::new(None)),
            parsed: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The keys for a verification, whose answer is only yes or no: a
    /// failure to read them is a no, logged as the error it is.
    fn load_logged(&self) -> Option<Arc<Loaded>> {
        self.load()
            .map_err(|e| tracing::error!(error = %e, "reading the signing keys failed"))
            .ok()
    }

    /// The key set of `k`, opened and parsed at its first use on this
    /// node (`None` if it does not parse); an error if it does not open.
    fn key_set(&self, k: &SigningKey) -> Result<Option<Arc<KeySet>>, NodeError> {
        let Ok(mut parsed) = self.parsed.lock() else {
            return Ok(None);
        };
        if let Some(s) = parsed.get(&k.kid) {
            return Ok(Some(s.clone()));
        }
        let der = self.kek.open_signing_key(k)?;
        let Some(set) = KeySet::of(k, &der).map(Arc::new) else {
            tracing::error!(kid = %k.kid, "a signing key does not parse");
            return Ok(None);
        };
        parsed.insert(k.kid.clone(), set.clone());
        Ok(Some(set))
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
        let (mut jwks, mut reference_jwks) = (Vec::new(), Vec::new());
        let published: Vec<&SigningKey> = keys.iter().filter(|k| k.published_at(now)).collect();
        for k in &published {
            let Some(set) = self.key_set(k)? else {
                continue;
            };
            for alg in [IdTokenAlg::Rs256, IdTokenAlg::Es256, IdTokenAlg::EdDsa] {
                let jws = set.id_token_key(alg);
                jwks.push(jws.jwk.clone());
                verify.insert(jws.kid.clone(), (set.clone(), alg));
            }
            jwks.push(set.reference.jwk.clone());
            reference_jwks.push(set.reference.jwk.clone());
            reference_verify.insert(set.reference.kid.clone(), set.clone());
            if current_kid.as_deref() == Some(k.kid.as_str()) {
                current = Some(set);
            }
        }
        if let Ok(mut parsed) = self.parsed.lock() {
            parsed.retain(|kid, _| published.iter().any(|k| &k.kid == kid));
        }
        let loaded = Arc::new(Loaded {
            at: Instant::now(),
            current,
            verify,
            reference_verify,
            jwks: serde_json::json!({ "keys": jwks }),
            reference_jwks,
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
        Ok(self.load()?.reference_jwks.clone())
    }

    /// Signs `claims` as an RS256 JWT with the current key.
    pub fn sign_jwt<T: Serialize>(&self, claims: &T, typ: &str) -> Result<String, NodeError> {
        self.sign_with(claims, typ, IdTokenAlg::Rs256)
    }

    /// Signs an ID token's `claims` with the current key of `alg`.
    pub fn sign_id_token<T: Serialize>(
        &self,
        claims: &T,
        alg: IdTokenAlg,
    ) -> Result<String, NodeError> {
        self.sign_with(claims, ID_TOKEN_TYP, alg)
    }

    fn sign_with<T: Serialize>(
        &self,
        claims: &T,
        typ: &str,
        alg: IdTokenAlg,
    ) -> Result<String, NodeError> {
        let l = self.load()?;
        let set = l.current.as_ref().ok_or_else(no_key)?;
        set.id_token_key(alg).sign(claims, typ)
    }

    /// Verifies a JWT signed by one of our published token keys (of any of
    /// the three algorithms) for the purpose `typ` names (an ID token never
    /// passes for a logout token or a session assertion, nor the other way
    /// round). Audience and expiry checks are the caller's, through
    /// `validation`, whose algorithm list is set here.
    pub fn verify_jwt<T: DeserializeOwned>(
        &self,
        token: &str,
        validation: &Validation,
        typ: &str,
    ) -> Option<T> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.typ.as_deref() != Some(typ) {
            return None;
        }
        let l = self.load_logged()?;
        let (set, alg) = l.verify.get(header.kid.as_deref()?)?;
        let key = set.id_token_key(*alg);
        if header.alg != key.alg {
            return None;
        }
        let mut v = validation.clone();
        v.algorithms = vec![key.alg];
        jsonwebtoken::decode::<T>(token, &key.decoding, &v)
            .ok()
            .map(|d| d.claims)
    }

    /// An agency reference (the shared-domain cookie's value) for `claims`,
    /// signed with the current reference key.
    pub fn sign_reference(&self, claims: &Reference) -> Result<String, NodeError> {
        let l = self.load()?;
        let set = l.current.as_ref().ok_or_else(no_key)?;
        set.reference.sign(claims, REFERENCE_TYP)
    }

    /// The claims of a reference this agency (`issuer`) signed with a
    /// published key and that has not expired.
    pub fn verify_reference(&self, value: &str, issuer: &str) -> Option<Reference> {
        self.verify_reference_kid(value, issuer).map(|(r, _)| r)
    }

    /// [`Self::verify_reference`], with the id of the key that signed it.
    pub fn verify_reference_kid(&self, value: &str, issuer: &str) -> Option<(Reference, String)> {
        let kid = reference_kid(value)?;
        let l = self.load_logged()?;
        let set = l.reference_verify.get(&kid)?;
        decode_reference(value, issuer, &set.reference.decoding).map(|r| (r, kid))
    }

    /// Whether references signed with `kid` are still honoured.
    pub fn has_reference_key(&self, kid: &str) -> bool {
        self.load()
            .is_ok_and(|l| l.reference_verify.contains_key(kid))
    }
}

/// The key id of `value` if its header is a reference's (EdDSA, the
/// reference `typ`, a kid) and it is no longer than a cookie may be;
/// nothing is verified. Public for fuzzing.
#[doc(hidden)]
pub fn reference_kid(value: &str) -> Option<String> {
    if value.len() > MAX_COOKIE_LEN {
        return None;
    }
    let header = jsonwebtoken::decode_header(value).ok()?;
    if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(REFERENCE_TYP) {
        return None;
    }
    header.kid
}

/// The claims of the reference `value` if `key` signed it for `issuer` and
/// it has not expired. Public for fuzzing.
#[doc(hidden)]
pub fn decode_reference(value: &str, issuer: &str, key: &DecodingKey) -> Option<Reference> {
    let mut v = Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "iss"]);
    v.validate_aud = false;
    v.leeway = 0;
    jsonwebtoken::decode::<Reference>(value, key, &v)
        .ok()
        .map(|d| d.claims)
}

/// A key ring over a fresh state machine in `dir` holding one signing key.
#[cfg(test)]
pub(crate) async fn test_ring(dir: &std::path::Path) -> KeyRing {
    tests::ring(dir).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key ring over a fresh state machine holding one signing key,
    /// wrapped under the test KEK.
    pub(super) async fn ring(dir: &std::path::Path) -> KeyRing {
        let kek = crate::kek::test_kek();
        let add = baa_proto::command::Op::AddSigningKey {
            key: Box::new(kek.wrap_signing_key(generate().unwrap()).unwrap()),
            publish_old_for_ms: 0,
        };
        let sm = crate::raft::state_machine::applied(dir, vec![(now_ms(), add)]).await;
        KeyRing::new(sm.reader(), kek)
    }

    /// A key stored in the clear (by an earlier release) signs; one wrapped
    /// under another KEK makes the ring fail, naming that KEK, rather than
    /// sign or verify with nothing; its derived keys are those of the key
    /// in the clear, whatever holds it.
    #[tokio::test]
    async fn keys_in_the_clear_sign_and_keys_under_another_kek_fail_loudly() {
        let key = generate().unwrap();
        let (claims, v) = claims_and_validation();
        let dir = tempfile::tempdir().unwrap();
        let add = |k: SigningKey| baa_proto::command::Op::AddSigningKey {
            key: Box::new(k),
            publish_old_for_ms: 0,
        };
        let sm =
            crate::raft::state_machine::applied(dir.path(), vec![(now_ms(), add(key.clone()))])
                .await;
        let clear = KeyRing::new(sm.reader(), crate::kek::test_kek());
        let token = clear.sign_jwt(&claims, ID_TOKEN_TYP).unwrap();
        let jwks = clear.jwks().unwrap();
        drop(sm);

        let other = std::sync::Arc::new(crate::kek::KekRing::new(&[0x5a; 32], &[]).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let wrapped = other.wrap_signing_key(key).unwrap();
        let sm =
            crate::raft::state_machine::applied(dir.path(), vec![(now_ms(), add(wrapped))]).await;
        let same = KeyRing::new(sm.reader(), other);
        assert_eq!(same.jwks().unwrap(), jwks, "the same keys, wrapped or not");
        assert!(same
            .verify_jwt::<serde_json::Value>(&token, &v, ID_TOKEN_TYP)
            .is_some());
        let wrong = KeyRing::new(sm.reader(), crate::kek::test_kek());
        let e = wrong
            .sign_jwt(&claims, ID_TOKEN_TYP)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&hex::encode(crate::kek::kek_id(&[0x5a; 32]))),
            "names the KEK it needs: {e}"
        );
        assert!(wrong.has_current().is_err());
        assert!(wrong
            .verify_jwt::<serde_json::Value>(&token, &v, ID_TOKEN_TYP)
            .is_none());
    }

    /// Claims of no particular purpose, and a validation that checks only
    /// the signature (and the algorithm, which the ring sets).
    fn claims_and_validation() -> (serde_json::Value, Validation) {
        let claims = serde_json::json!({ "iss": "https://login.example", "sub": "1", "aud": "x" });
        let mut v = Validation::new(Algorithm::RS256);
        v.validate_exp = false;
        v.validate_aud = false;
        v.required_spec_claims.clear();
        (claims, v)
    }

    /// L3: a JWT signed for one purpose (a gateway session assertion, a
    /// logout token) does not pass where another is expected (an ID token
    /// as `id_token_hint`): each carries its `typ` and is checked for it.
    #[tokio::test]
    async fn l3_jwts_of_one_purpose_do_not_pass_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ring(dir.path()).await;
        let (claims, v) = claims_and_validation();
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
    fn derived_keys_are_alike_everywhere_and_each_verifies_only_its_own() {
        let rsa = generate().unwrap();
        let of = |k: &SigningKey| KeySet::of(k, &k.private_der).unwrap();
        let (a, b) = (of(&rsa), of(&rsa));
        let other = of(&generate().unwrap());
        let claims = Reference {
            iss: "https://login.example".into(),
            sid: "s".into(),
            iat: 1,
            exp: u64::MAX / 2,
        };
        let pairs = [
            (&a.rs256, &b.rs256, &other.rs256),
            (&a.es256, &b.es256, &other.es256),
            (&a.eddsa, &b.eddsa, &other.eddsa),
            (&a.reference, &b.reference, &other.reference),
        ];
        let mut kids = std::collections::HashSet::new();
        for (mine, same, theirs) in pairs {
            assert_eq!(mine.jwk, same.jwk, "the same key on every node");
            assert_ne!(mine.kid, theirs.kid);
            assert!(
                kids.insert(mine.kid.clone()),
                "each derived key has its own kid"
            );
            let token = mine.sign(&claims, REFERENCE_TYP).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(
                (header.alg, header.kid.as_deref()),
                (mine.alg, Some(&*mine.kid))
            );
            let v = Validation::new(mine.alg);
            let got = jsonwebtoken::decode::<Reference>(&token, &same.decoding, &v).unwrap();
            assert_eq!(got.claims, claims);
            assert!(jsonwebtoken::decode::<Reference>(&token, &theirs.decoding, &v).is_err());
        }
        // The published JWK is what third parties verify with.
        let es = &a.es256.jwk;
        let key =
            DecodingKey::from_ec_components(es["x"].as_str().unwrap(), es["y"].as_str().unwrap())
                .unwrap();
        let token = a.es256.sign(&claims, ID_TOKEN_TYP).unwrap();
        assert!(jsonwebtoken::decode::<Reference>(
            &token,
            &key,
            &Validation::new(Algorithm::ES256)
        )
        .is_ok());
        // The derived private keys named for checks are the ones in use.
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let [p256, ed, reference] = derived_private_keys(&rsa.private_der)[..] else {
            panic!("three derived keys")
        };
        let point = p256::SecretKey::from_bytes(&p256.into())
            .unwrap()
            .public_key()
            .to_encoded_point(false);
        let x = |k: &Jws| k.jwk["x"].as_str().unwrap().to_string();
        assert_eq!(URL_SAFE_NO_PAD.encode(point.x().unwrap()), x(&a.es256));
        assert_eq!(
            URL_SAFE_NO_PAD.encode(ed25519_public(&ed).unwrap()),
            x(&a.eddsa)
        );
        assert_eq!(
            URL_SAFE_NO_PAD.encode(ed25519_public(&reference).unwrap()),
            x(&a.reference)
        );
    }

    /// Each ID-token algorithm signs with its own key, verified by the ring's
    /// published keys; a token whose header names another algorithm than
    /// its key's is refused.
    #[tokio::test]
    async fn id_tokens_of_each_algorithm_verify_and_alg_confusion_fails() {
        let dir = tempfile::tempdir().unwrap();
        let keys = ring(dir.path()).await;
        let (claims, v) = claims_and_validation();
        let jwks = keys.jwks().unwrap();
        for (alg, name) in [
            (IdTokenAlg::Rs256, "RS256"),
            (IdTokenAlg::Es256, "ES256"),
            (IdTokenAlg::EdDsa, "EdDSA"),
        ] {
            let token = keys.sign_id_token(&claims, alg).unwrap();
            let header = jsonwebtoken::decode_header(&token).unwrap();
            let kid = header.kid.clone().unwrap();
            let jwk = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|k| k["kid"] == *kid)
                .unwrap();
            assert_eq!(jwk["alg"], name);
            assert!(keys
                .verify_jwt::<serde_json::Value>(&token, &v, ID_TOKEN_TYP)
                .is_some());
            // The same signature under a header naming another algorithm.
            let mut parts: Vec<String> = token.split('.').map(String::from).collect();
            let mut h: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[0]).unwrap()).unwrap();
            h["alg"] = if name == "RS256" { "ES256" } else { "RS256" }.into();
            parts[0] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&h).unwrap());
            let forged = parts.join(".");
            assert!(keys
                .verify_jwt::<serde_json::Value>(&forged, &v, ID_TOKEN_TYP)
                .is_none());
        }
        assert_eq!(
            keys.reference_jwks().unwrap().len(),
            1,
            "reference keys apart"
        );
    }
}
