//! What this node knows of its peer agencies right now: each peer's last
//! good entity configuration, parsed once into the keys and endpoints the
//! cross-agency paths use (references, ID tokens and client assertions are
//! checked against these), and the one HTTP client that reaches peers. The
//! federation directory writes it; request handlers only read it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use baa_proto::cookie::{Reference, MAX_COOKIE_LEN, REFERENCE_TYP};
use baa_proto::ErrorCode;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::clock::now_ms;
use crate::config::FederationConfig;
use crate::error::NodeError;

/// A peer agency as its last good entity configuration describes it.
pub struct PeerView {
    /// Its issuer URL.
    pub issuer: String,
    /// Its display name.
    pub name: String,
    /// When the configuration expires (ms since the epoch).
    pub expires_ms: u64,
    /// Its OIDC authorization endpoint.
    pub authorization_endpoint: String,
    /// Its token endpoint.
    pub token_endpoint: String,
    /// Where it answers whether one of its sessions is alive.
    pub session_status_endpoint: String,
    federation_keys: HashMap<String, DecodingKey>,
    reference_keys: HashMap<String, DecodingKey>,
    token_keys: HashMap<String, DecodingKey>,
}

/// The Ed25519 keys of a JWK list, by kid.
fn ed25519_keys(keys: &Value) -> HashMap<String, DecodingKey> {
    keys.as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["kty"] == "OKP" && k["crv"] == "Ed25519")
        .filter_map(|k| {
            let key = DecodingKey::from_ed_components(k["x"].as_str()?).ok()?;
            Some((k["kid"].as_str()?.to_string(), key))
        })
        .collect()
}

/// The RSA keys of a JWK list, by kid.
fn rsa_keys(keys: &Value) -> HashMap<String, DecodingKey> {
    keys.as_array()
        .into_iter()
        .flatten()
        .filter(|k| k["kty"] == "RSA")
        .filter_map(|k| {
            let key = DecodingKey::from_rsa_components(k["n"].as_str()?, k["e"].as_str()?).ok()?;
            Some((k["kid"].as_str()?.to_string(), key))
        })
        .collect()
}

impl PeerView {
    /// The view of a verified entity configuration's claims.
    pub fn from_claims(issuer: &str, claims: &Value) -> PeerView {
        let op = &claims["metadata"]["openid_provider"];
        let agency = &claims["metadata"]["baa_agency"];
        let text = |v: &Value, default: String| v.as_str().map(String::from).unwrap_or(default);
        PeerView {
            issuer: issuer.to_string(),
            name: text(&op["organization_name"], issuer.to_string()),
            expires_ms: claims["exp"].as_u64().unwrap_or(0).saturating_mul(1000),
            authorization_endpoint: text(
                &op["authorization_endpoint"],
                format!("{issuer}/sso/authorize"),
            ),
            token_endpoint: text(&op["token_endpoint"], format!("{issuer}/sso/token")),
            session_status_endpoint: text(
                &agency["session_status_endpoint"],
                format!("{issuer}/sso/session_status"),
            ),
            federation_keys: ed25519_keys(&claims["jwks"]["keys"]),
            reference_keys: ed25519_keys(&agency["reference_keys"]),
            token_keys: rsa_keys(&op["jwks"]["keys"]),
        }
    }

    /// The claims of a reference cookie this peer signed with a key it
    /// publishes, unexpired, with the id of that key.
    pub fn verify_reference(&self, value: &str) -> Result<(Reference, String), PeerKeyError> {
        if value.len() > MAX_COOKIE_LEN {
            return Err(PeerKeyError::Malformed);
        }
        let header = jsonwebtoken::decode_header(value).map_err(|_| PeerKeyError::Malformed)?;
        if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(REFERENCE_TYP) {
            return Err(PeerKeyError::Malformed);
        }
        let kid = header.kid.ok_or(PeerKeyError::Malformed)?;
        let key = self
            .reference_keys
            .get(&kid)
            .ok_or(PeerKeyError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.issuer]);
        v.set_required_spec_claims(&["exp", "iss"]);
        v.validate_aud = false;
        v.leeway = 0;
        let claims = jsonwebtoken::decode::<Reference>(value, key, &v)
            .map_err(|_| PeerKeyError::BadSignature)?
            .claims;
        Ok((claims, kid))
    }

    /// The ids of its federation keys (those it may sign its next
    /// configuration with).
    pub fn federation_kids(&self) -> Vec<String> {
        self.federation_keys.keys().cloned().collect()
    }

    /// Whether references signed with `kid` are still honoured.
    pub fn has_reference_key(&self, kid: &str) -> bool {
        self.reference_keys.contains_key(kid)
    }

    /// The claims of an ID token this peer issued to `audience` (RS256, a
    /// token key it publishes, unexpired).
    pub fn verify_id_token(&self, jwt: &str, audience: &str) -> Result<Value, PeerKeyError> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| PeerKeyError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(PeerKeyError::Malformed);
        }
        let key = header
            .kid
            .and_then(|kid| self.token_keys.get(&kid))
            .ok_or(PeerKeyError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::RS256);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        decode(jwt, key, &v)
    }

    /// The claims of a back-channel logout token this peer sent to
    /// `audience` (OIDC Back-Channel Logout 1.0 §2.6): RS256 with a token
    /// key it publishes, `typ` `logout+jwt`, the logout event, a `sid`, no
    /// nonce.
    pub fn verify_logout_token(&self, jwt: &str, audience: &str) -> Result<Value, PeerKeyError> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| PeerKeyError::Malformed)?;
        if header.typ.as_deref() != Some(LOGOUT_TOKEN_TYP) {
            return Err(PeerKeyError::Malformed);
        }
        let claims = self.verify_id_token(jwt, audience)?;
        let event = &claims["events"]["http://schemas.openid.net/event/backchannel-logout"];
        if !event.is_object() || claims["sid"].as_str().is_none() || claims.get("nonce").is_some() {
            return Err(PeerKeyError::Malformed);
        }
        Ok(claims)
    }

    /// The claims of a JWT this peer signed with one of its federation keys
    /// for `audience` (a client assertion, RFC 7523): issuer and subject
    /// are the peer, it expires within five minutes.
    pub fn verify_assertion(&self, jwt: &str, audience: &[&str]) -> Result<Value, PeerKeyError> {
        let header = jsonwebtoken::decode_header(jwt).map_err(|_| PeerKeyError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(PeerKeyError::Malformed);
        }
        let key = header
            .kid
            .and_then(|kid| self.federation_keys.get(&kid))
            .ok_or(PeerKeyError::UnknownKey)?;
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[&self.issuer]);
        v.set_audience(audience);
        v.sub = Some(self.issuer.clone());
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims: Value = decode(jwt, key, &v)?;
        let exp = claims["exp"].as_u64().unwrap_or(0);
        if exp > now_ms() / 1000 + ASSERTION_MAX_LIFETIME_S {
            return Err(PeerKeyError::BadSignature);
        }
        Ok(claims)
    }
}

/// The `typ` of a back-channel logout token.
pub const LOGOUT_TOKEN_TYP: &str = "logout+jwt";

/// The longest lifetime a peer's client assertion may claim.
pub const ASSERTION_MAX_LIFETIME_S: u64 = 300;

fn decode<T: DeserializeOwned>(
    jwt: &str,
    key: &DecodingKey,
    v: &Validation,
) -> Result<T, PeerKeyError> {
    jsonwebtoken::decode::<T>(jwt, key, v)
        .map(|d| d.claims)
        .map_err(|_| PeerKeyError::BadSignature)
}

/// Why a peer's signed value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKeyError {
    /// Not a JWT of the expected kind.
    Malformed,
    /// Signed with a key the peer does not publish.
    UnknownKey,
    /// The signature, issuer, audience or expiry does not check out.
    BadSignature,
}

/// The peers' current views, and the client that reaches them.
#[derive(Default)]
pub struct PeerBook {
    views: RwLock<HashMap<String, Arc<PeerView>>>,
    client: OnceLock<reqwest::Client>,
    forced: Mutex<HashMap<String, Instant>>,
}

/// How often a peer's configuration may be fetched out of turn (a value it
/// signed names a key this node has not seen yet).
pub const FORCED_REFRESH_EVERY: Duration = Duration::from_secs(2);

impl PeerBook {
    /// The peer `issuer`'s view, if it has an unexpired one.
    pub fn get(&self, issuer: &str) -> Option<Arc<PeerView>> {
        let views = self.views.read().ok()?;
        let v = views.get(issuer)?;
        (now_ms() < v.expires_ms).then(|| v.clone())
    }

    /// Every peer with an unexpired view, by name.
    pub fn all(&self) -> Vec<Arc<PeerView>> {
        let now = now_ms();
        let mut out: Vec<Arc<PeerView>> = match self.views.read() {
            Ok(v) => v.values().filter(|v| now < v.expires_ms).cloned().collect(),
            Err(_) => Vec::new(),
        };
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Sets peer `issuer`'s view (`None` forgets it).
    pub fn set(&self, issuer: &str, view: Option<PeerView>) {
        if let Ok(mut views) = self.views.write() {
            match view {
                Some(v) => views.insert(issuer.to_string(), Arc::new(v)),
                None => views.remove(issuer),
            };
        }
    }

    /// Whether peer `issuer`'s configuration may be fetched out of turn now
    /// (at most once per [`FORCED_REFRESH_EVERY`]); if so, that fetch counts.
    pub fn may_force(&self, issuer: &str) -> bool {
        let Ok(mut forced) = self.forced.lock() else {
            return false;
        };
        let now = Instant::now();
        match forced.get(issuer) {
            Some(at) if now.duration_since(*at) < FORCED_REFRESH_EVERY => false,
            _ => {
                forced.insert(issuer.to_string(), now);
                true
            }
        }
    }

    /// Forgets every peer `keep` says no to.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut views) = self.views.write() {
            views.retain(|issuer, _| keep(issuer));
        }
    }

    /// The HTTP client for peers, made on first use from `[federation]`.
    pub fn client(&self, f: &FederationConfig) -> Result<reqwest::Client, NodeError> {
        if let Some(c) = self.client.get() {
            return Ok(c.clone());
        }
        let c = peer_client(f)?;
        Ok(self.client.get_or_init(|| c).clone())
    }
}

/// An HTTP client for peer agencies: trusts `[federation] ca_file` only,
/// resolves `[federation] resolve` hosts as told, follows no redirects.
pub fn peer_client(f: &FederationConfig) -> Result<reqwest::Client, NodeError> {
    let Some(ca) = &f.ca_file else {
        return Err(unreachable(
            "no peer can be reached: [federation] ca_file names no CA to trust",
        ));
    };
    let pem = std::fs::read(ca)
        .map_err(|e| NodeError::Internal(format!("reading {}: {e}", ca.display())))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| NodeError::Internal(format!("parsing {}: {e}", ca.display())))?;
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5));
    for root in roots {
        b = b.add_root_certificate(root);
    }
    let resolve = f
        .resolved()
        .map_err(|e| NodeError::Internal(e.to_string()))?;
    for (host, ip) in resolve {
        // The port comes from the issuer URL; reqwest ignores this one.
        b = b.resolve(&host, SocketAddr::new(ip, 0));
    }
    b.build()
        .map_err(|e| NodeError::Internal(format!("building the peer client: {e}")))
}

/// The error of a peer that cannot be reached.
pub fn unreachable(message: impl Into<String>) -> NodeError {
    NodeError::BadRequest {
        code: ErrorCode::PeerUnreachable,
        message: message.into(),
    }
}
