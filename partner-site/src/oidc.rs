//! The relying party's protocol logic that needs no network: PKCE, random
//! values, round-robin over agency nodes, JWKS parsing and the checks on ID
//! tokens and back-channel logout tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use subtle::ConstantTimeEq;

/// The `events` member that marks a back-channel logout token.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Clock skew accepted on `exp`, in seconds.
pub const LEEWAY_SECS: u64 = 60;

/// The claims of a token, as signed.
pub type Claims = Map<String, Value>;

/// The agency's published signature keys, by `kid`, each with the one
/// algorithm its JWK names.
pub type Keys = HashMap<String, (Algorithm, DecodingKey)>;

/// The ID-token algorithms a site can register for.
pub const ID_TOKEN_ALGS: [(&str, Algorithm); 3] = [
    ("RS256", Algorithm::RS256),
    ("ES256", Algorithm::ES256),
    ("EdDSA", Algorithm::EdDSA),
];

/// A fresh random value: 32 bytes, base64url without padding (43 characters).
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// The S256 PKCE challenge of `verifier` (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    baa_proto::pkce::s256(verifier)
}

/// Compares two secrets in constant time.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Agency node base URLs, handed out in turn so that consecutive steps of a
/// login go to different nodes.
#[derive(Debug)]
pub struct RoundRobin {
    urls: Vec<String>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// A rotation over `urls`; `None` when the list is empty.
    pub fn new(urls: Vec<String>) -> Option<Self> {
        if urls.is_empty() {
            return None;
        }
        Some(Self {
            urls,
            next: AtomicUsize::new(0),
        })
    }

    /// The next base URL.
    pub fn next(&self) -> &str {
        self.at(self.next_index())
    }

    /// Takes the next position in the rotation.
    pub fn next_index(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len()
    }

    /// The URL `i` positions into the rotation (wrapping).
    pub fn at(&self, i: usize) -> &str {
        &self.urls[i % self.urls.len()]
    }
}

/// Why a token was refused. Messages never contain the token itself.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT at all.
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// Signed with another algorithm than the one expected.
    #[error("the token is signed with {got:?}; only {want:?} is accepted")]
    Algorithm {
        /// The header's algorithm.
        got: Algorithm,
        /// The one registered.
        want: Algorithm,
    },
    /// The header has no `kid`.
    #[error("the token header names no signing key (kid)")]
    NoKid,
    /// No published key has this `kid`.
    #[error("the agency publishes no signing key with kid {0:?}")]
    UnknownKey(String),
    /// The signature does not verify.
    #[error("the token signature is invalid")]
    Signature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `iss` is not the expected issuer.
    #[error("the token issuer is not {0}")]
    Issuer(String),
    /// `aud` does not name this client.
    #[error("the token audience is not {0}")]
    Audience(String),
    /// A claim is missing or wrong.
    #[error("{0}")]
    Claim(String),
}

/// Who the tokens must come from and be meant for.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// Required `iss`.
    pub issuer: &'a str,
    /// Required `aud` (and `azp`, when present).
    pub client_id: &'a str,
    /// The one algorithm accepted: the site's registered ID-token
    /// algorithm, or RS256 for logout tokens.
    pub alg: Algorithm,
}

/// The `kid` of a token signed with `alg`, read from its header (not yet
/// verified).
pub fn signing_kid(token: &str, alg: Algorithm) -> Result<String, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if header.alg != alg {
        return Err(TokenError::Algorithm {
            got: header.alg,
            want: alg,
        });
    }
    header.kid.ok_or(TokenError::NoKid)
}

/// Checks the signature (of the expected algorithm, by a key published
/// for it) with the key named by the token's `kid`, and `iss`, `aud`, `exp`
/// (with leeway) and `iat`; returns every claim.
pub fn verify_signed(
    token: &str,
    keys: &Keys,
    expected: Expected<'_>,
    required: &[&str],
) -> Result<Claims, TokenError> {
    let kid = signing_kid(token, expected.alg)?;
    let (key_alg, key) = keys.get(&kid).ok_or(TokenError::UnknownKey(kid))?;
    if *key_alg != expected.alg {
        return Err(TokenError::Algorithm {
            got: *key_alg,
            want: expected.alg,
        });
    }
    let mut validation = Validation::new(expected.alg);
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.set_issuer(&[expected.issuer]);
    validation.set_audience(&[expected.client_id]);
    validation.set_required_spec_claims(required);
    let data =
        jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => TokenError::Signature,
            ErrorKind::ExpiredSignature => TokenError::Expired,
            ErrorKind::InvalidIssuer => TokenError::Issuer(expected.issuer.to_string()),
            ErrorKind::InvalidAudience => TokenError::Audience(expected.client_id.to_string()),
            ErrorKind::MissingRequiredClaim(c) => {
                TokenError::Claim(format!("claim {c} is missing"))
            }
            ErrorKind::InvalidAlgorithm => TokenError::Algorithm {
                got: *key_alg,
                want: expected.alg,
            },
            _ => TokenError::Malformed,
        })?;
    let claims = data.claims;
    // jsonwebtoken accepts an array `iss`; OpenID Connect requires one string.
    if claims.get("iss").and_then(Value::as_str) != Some(expected.issuer) {
        return Err(TokenError::Issuer(expected.issuer.to_string()));
    }
    if !claims.get("iat").is_some_and(Value::is_number) {
        return Err(TokenError::Claim("claim iat is missing".into()));
    }
    if let Some(azp) = claims.get("azp") {
        if azp.as_str() != Some(expected.client_id) {
            return Err(TokenError::Claim(format!(
                "claim azp is not {}",
                expected.client_id
            )));
        }
    }
    Ok(claims)
}

fn string_claim<'c>(claims: &'c Claims, name: &str) -> Result<&'c str, TokenError> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(TokenError::Claim(format!("claim {name} is not a string"))),
        None => Err(TokenError::Claim(format!("claim {name} is missing"))),
    }
}

/// A verified ID token.
#[derive(Debug, Clone)]
pub struct IdToken {
    /// Every claim.
    pub claims: Claims,
    /// `sub`.
    pub sub: String,
    /// `sid`, when the agency sent one.
    pub sid: Option<String>,
}

/// Verifies an ID token (OpenID Connect Core §3.1.3.7) issued for the login
/// flow that sent `nonce`.
pub fn verify_id_token(
    token: &str,
    keys: &Keys,
    expected: Expected<'_>,
    nonce: &str,
) -> Result<IdToken, TokenError> {
    let claims = verify_signed(token, keys, expected, &["iss", "aud", "exp", "sub"])?;
    let sub = string_claim(&claims, "sub")?.to_string();
    let token_nonce = string_claim(&claims, "nonce")?;
    if !same_secret(token_nonce, nonce) {
        return Err(TokenError::Claim(
            "claim nonce does not match this login flow".into(),
        ));
    }
    let sid = match claims.get("sid") {
        None => None,
        Some(_) => Some(string_claim(&claims, "sid")?.to_string()),
    };
    Ok(IdToken { claims, sub, sid })
}

/// A verified back-channel logout token.
#[derive(Debug, Clone)]
pub struct LogoutToken {
    /// The agency session that ended.
    pub sid: String,
    /// The user, when named.
    pub sub: Option<String>,
    /// The token's unique id.
    pub jti: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
}

/// The logout-specific checks (OpenID Connect Back-Channel Logout 1.0 §2.6)
/// on claims whose signature and standard claims are already verified.
pub fn check_logout_claims(claims: &Claims) -> Result<LogoutToken, TokenError> {
    if claims.contains_key("nonce") {
        return Err(TokenError::Claim(
            "a logout token must not contain a nonce".into(),
        ));
    }
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_EVENT));
    if !event.is_some_and(Value::is_object) {
        return Err(TokenError::Claim(format!(
            "claim events has no {BACKCHANNEL_EVENT} member"
        )));
    }
    let sid = string_claim(claims, "sid")?.to_string();
    let jti = string_claim(claims, "jti")?.to_string();
    let sub = match claims.get("sub") {
        None => None,
        Some(_) => Some(string_claim(claims, "sub")?.to_string()),
    };
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| TokenError::Claim("claim exp is not a number".into()))?;
    Ok(LogoutToken { sid, sub, jti, exp })
}

/// Verifies a back-channel logout token.
pub fn verify_logout_token(
    token: &str,
    keys: &Keys,
    expected: Expected<'_>,
) -> Result<LogoutToken, TokenError> {
    let claims = verify_signed(token, keys, expected, &["iss", "aud", "exp"])?;
    check_logout_claims(&claims)
}

/// The signature keys of a JWKS document, by `kid`: RSA (RS256), P-256
/// (ES256) and Ed25519 (EdDSA) keys whose `alg`, when given, is theirs.
/// Keys of other types or uses, and keys without a `kid`, are skipped.
pub fn parse_jwks(doc: &Value) -> Keys {
    let mut keys = Keys::new();
    let Some(list) = doc.get("keys").and_then(Value::as_array) else {
        return keys;
    };
    for jwk in list {
        let field = |name: &str| jwk.get(name).and_then(Value::as_str);
        let parsed = match (field("kty"), field("crv")) {
            (Some("RSA"), _) => field("n")
                .zip(field("e"))
                .and_then(|(n, e)| DecodingKey::from_rsa_components(n, e).ok())
                .map(|k| (Algorithm::RS256, k)),
            (Some("EC"), Some("P-256")) => field("x")
                .zip(field("y"))
                .and_then(|(x, y)| DecodingKey::from_ec_components(x, y).ok())
                .map(|k| (Algorithm::ES256, k)),
            (Some("OKP"), Some("Ed25519")) => field("x")
                .and_then(|x| DecodingKey::from_ed_components(x).ok())
                .map(|k| (Algorithm::EdDSA, k)),
            _ => None,
        };
        let Some((alg, key)) = parsed else { continue };
        let named = ID_TOKEN_ALGS
            .iter()
            .find(|(_, a)| *a == alg)
            .map(|(n, _)| *n);
        if !matches!(field("use"), None | Some("sig"))
            || !(field("alg").is_none() || field("alg") == named)
        {
            continue;
        }
        if let Some(kid) = field("kid") {
            keys.insert(kid.to_string(), (alg, key));
        }
    }
    keys
}
