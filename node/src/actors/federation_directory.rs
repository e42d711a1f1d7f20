//! The federation directory: each node's view of its peer agencies. It
//! fetches every peer's entity configuration again every `[federation]
//! refresh_s`, takes it only when signed by the pinned key or by a key of
//! the last configuration that checked out (so a peer's key rotation
//! propagates), and keeps the last good copy until it expires while a peer
//! is unreachable. The cross-agency validation reads peers' keys here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, WrapFuture};
use baa_proto::federation::{ed25519_thumbprint, ENTITY_CONFIGURATION_PATH, ENTITY_STATEMENT_TYP};
use baa_proto::ErrorCode;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::Serialize;

use baa_proto::command::Op;

use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;

/// The most an entity configuration may weigh.
const MAX_STATEMENT_BYTES: usize = 64 * 1024;

use crate::peers::{unreachable, PeerView};

fn mismatch(message: impl Into<String>) -> NodeError {
    NodeError::BadRequest {
        code: ErrorCode::PinMismatch,
        message: message.into(),
    }
}

/// Fetches the entity configuration of the agency at `issuer`.
pub async fn fetch_statement(client: &reqwest::Client, issuer: &str) -> Result<String, NodeError> {
    let url = format!("{issuer}{ENTITY_CONFIGURATION_PATH}");
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| unreachable(format!("{url}: {}", e.without_url())))?;
    if !resp.status().is_success() {
        return Err(unreachable(format!("{url}: HTTP {}", resp.status())));
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| unreachable(format!("{url}: {}", e.without_url())))?;
    if body.len() > MAX_STATEMENT_BYTES {
        return Err(unreachable(format!("{url}: the answer is too large")));
    }
    String::from_utf8(body.to_vec()).map_err(|_| unreachable(format!("{url}: not text")))
}

/// Fetches peer `issuer`'s configuration now, out of turn, when a value it
/// signed names a key this node has not seen: a peer's key rotation is then
/// taken at its first use rather than at the next refresh (at most once per
/// [`crate::peers::FORCED_REFRESH_EVERY`] per peer). The configuration must
/// be signed by the pin or a federation key of the copy this node holds.
/// Whether a new view was taken.
pub async fn refresh_now(agency: &Agency, issuer: &str) -> bool {
    if !agency.peers.may_force(issuer) {
        return false;
    }
    let Ok(Some(peer)) = agency.state.peer_agency(issuer) else {
        return false;
    };
    let mut trusted = vec![peer.pin];
    if let Some(v) = agency.peers.get(issuer) {
        trusted.extend(v.federation_kids());
    }
    let Ok(client) = agency.peers.client(&agency.config.federation) else {
        return false;
    };
    let fetched = match fetch_statement(&client, issuer).await {
        Ok(jwt) => {
            let trusted: Vec<&str> = trusted.iter().map(String::as_str).collect();
            check_statement(&jwt, issuer, &trusted, now_ms() / 1000)
        }
        Err(e) => Err(e),
    };
    match fetched {
        Ok(claims) => {
            agency
                .peers
                .set(issuer, Some(PeerView::from_claims(issuer, &claims)));
            true
        }
        Err(e) => {
            tracing::warn!(peer = %issuer, error = %e, "fetching a peer out of turn failed");
            false
        }
    }
}

/// Checks that `jwt` is `issuer`'s entity configuration, valid at `now_s`
/// and signed by one of the `trusted` keys (by thumbprint: the pin, and
/// while a peer rotates, the keys of its last statement that checked out);
/// answers its claims.
pub fn check_statement(
    jwt: &str,
    issuer: &str,
    trusted: &[&str],
    now_s: u64,
) -> Result<serde_json::Value, NodeError> {
    let not_a_statement = || unreachable(format!("{issuer} answered no entity configuration"));
    let header = jsonwebtoken::decode_header(jwt).map_err(|_| not_a_statement())?;
    if header.alg != Algorithm::EdDSA || header.typ.as_deref() != Some(ENTITY_STATEMENT_TYP) {
        return Err(not_a_statement());
    }
    let kid = header.kid.unwrap_or_default();
    if !trusted.contains(&kid.as_str()) {
        return Err(mismatch(format!(
            "{issuer} signs with the key {kid}, not a pinned one ({})",
            trusted.join(", ")
        )));
    }
    // The key is taken from the statement itself, and trusted only because
    // its thumbprint is the pin.
    let payload = jwt.split('.').nth(1).ok_or_else(not_a_statement)?;
    let unverified: serde_json::Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(not_a_statement)?;
    let x = unverified["jwks"]["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["kid"] == kid.as_str() && k["kty"] == "OKP" && k["crv"] == "Ed25519")
        .and_then(|k| k["x"].as_str())
        .ok_or_else(|| mismatch(format!("{issuer} publishes no key {kid}")))?;
    let public = URL_SAFE_NO_PAD.decode(x).map_err(|_| not_a_statement())?;
    if ed25519_thumbprint(&public) != kid {
        return Err(mismatch(format!(
            "the key {issuer} calls {kid} has another thumbprint"
        )));
    }
    let key = jsonwebtoken::DecodingKey::from_ed_components(x).map_err(|_| not_a_statement())?;
    let mut v = jsonwebtoken::Validation::new(Algorithm::EdDSA);
    v.set_issuer(&[issuer]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "sub"]);
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &v)
        .map_err(|e| {
            mismatch(format!(
                "{issuer}'s entity configuration does not verify: {e}"
            ))
        })?
        .claims;
    if claims["sub"] != issuer {
        return Err(not_a_statement());
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now_s) {
        return Err(unreachable(format!(
            "{issuer}'s entity configuration has expired"
        )));
    }
    Ok(claims)
}

/// What a node holds of one peer agency.
#[derive(Debug, Clone, Serialize)]
pub struct PeerState {
    /// The peer's issuer URL.
    pub issuer: String,
    /// The pinned federation key.
    pub pin: String,
    /// Whether the last fetch worked.
    pub reachable: bool,
    /// When the configuration held was fetched (none yet: never).
    pub fetched_ms: Option<u64>,
    /// When it expires (its `exp`); after that it is dropped.
    pub expires_ms: Option<u64>,
    /// Thumbprints of the federation keys it lists.
    pub federation_keys: Vec<String>,
    /// The keys that verify the peer's reference cookies.
    pub reference_keys: Vec<serde_json::Value>,
    /// When the last fetch started (ms since the epoch).
    #[serde(skip)]
    attempted_ms: u64,
    /// A fetch is under way.
    #[serde(skip)]
    in_flight: bool,
    /// Why the last fetch failed, if it did.
    pub last_error: Option<String>,
}

/// The peers as this node holds them, by issuer.
#[derive(Message)]
#[rtype(result = "Vec<PeerState>")]
pub struct ListPeers;

/// Keeps peer agencies' configurations fresh; one per node.
pub struct FederationDirectory {
    agency: Arc<Agency>,
    peers: HashMap<String, PeerState>,
}

impl FederationDirectory {
    /// A directory for `agency`.
    pub fn new(agency: Arc<Agency>) -> Self {
        Self {
            agency,
            peers: HashMap::new(),
        }
    }

    /// The client for peers, made once (the configuration does not change
    /// while the node runs).
    fn client(&self) -> Result<reqwest::Client, NodeError> {
        self.agency.peers.client(&self.agency.config.federation)
    }

    /// Starts a fetch of every peer the state names; forgets removed ones.
    fn refresh(&mut self, ctx: &mut Context<Self>) {
        let stored = match self.agency.state.peer_agencies() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "federation directory: reading the peers failed");
                return;
            }
        };
        self.peers
            .retain(|issuer, _| stored.iter().any(|p| &p.issuer == issuer));
        self.agency
            .peers
            .retain(|issuer| stored.iter().any(|p| p.issuer == issuer));
        if stored.is_empty() {
            return;
        }
        let client = match self.client() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "federation directory: no client for peers");
                return;
            }
        };
        for peer in stored {
            let state = self
                .peers
                .entry(peer.issuer.clone())
                .or_insert_with(|| PeerState {
                    issuer: peer.issuer.clone(),
                    pin: peer.pin.clone(),
                    reachable: false,
                    fetched_ms: None,
                    expires_ms: None,
                    federation_keys: Vec::new(),
                    reference_keys: Vec::new(),
                    last_error: None,
                    attempted_ms: 0,
                    in_flight: false,
                });
            state.pin = peer.pin.clone();
            // A new peer is fetched at once; the others every refresh_s.
            let every_ms = self.agency.config.federation.refresh_s * 1000;
            let now = now_ms();
            if state.in_flight || now.saturating_sub(state.attempted_ms) < every_ms {
                continue;
            }
            (state.attempted_ms, state.in_flight) = (now, true);
            let mut trusted = vec![peer.pin.clone()];
            trusted.extend(state.federation_keys.iter().cloned());
            let (client, issuer) = (client.clone(), peer.issuer.clone());
            let fetch = async move {
                let jwt = fetch_statement(&client, &issuer).await?;
                let trusted: Vec<&str> = trusted.iter().map(String::as_str).collect();
                let claims = check_statement(&jwt, &issuer, &trusted, now_ms() / 1000)?;
                let header = jsonwebtoken::decode_header(&jwt).ok();
                Ok((claims, header.and_then(|h| h.kid).unwrap_or_default()))
            };
            let issuer = peer.issuer;
            ctx.spawn(
                fetch
                    .into_actor(self)
                    .map(move |result, act, _| act.record(&issuer, result)),
            );
        }
    }

    /// Takes a fetch's result for `issuer`.
    fn record(&mut self, issuer: &str, result: Result<(serde_json::Value, String), NodeError>) {
        let m = &self.agency.metrics;
        let Some(state) = self.peers.get_mut(issuer) else {
            return;
        };
        state.in_flight = false;
        let now = now_ms();
        match result {
            Ok((claims, signer)) => {
                // The peer signs with a key it rotated to (trusted through
                // the last good copy): the leader pins it, so the rotation
                // is followed across restarts too.
                let leads = self.agency.leader().map(|(id, _)| id) == Some(self.agency.id);
                if signer != state.pin && leads {
                    let (agency, issuer) = (self.agency.clone(), issuer.to_string());
                    tracing::info!(peer = %issuer, pin = %signer, "a peer rotated its federation key; pinning the new one");
                    actix::spawn(async move {
                        let op = Op::RepinPeer {
                            issuer,
                            pin: signer,
                        };
                        if let Err(e) = agency.write(op, None).await {
                            tracing::warn!(error = %e, "re-pinning a peer failed");
                        }
                    });
                }
                state.reachable = true;
                state.fetched_ms = Some(now);
                state.expires_ms = claims["exp"].as_u64().map(|s| s.saturating_mul(1000));
                state.federation_keys = claims["jwks"]["keys"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|k| k["kid"].as_str().map(String::from))
                    .collect();
                state.reference_keys = claims["metadata"]["baa_agency"]["reference_keys"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                state.last_error = None;
                self.agency
                    .peers
                    .set(issuer, Some(PeerView::from_claims(issuer, &claims)));
                m.federation_refreshes
                    .with_label_values(&[issuer, "ok"])
                    .inc();
            }
            Err(e) => {
                tracing::warn!(peer = %issuer, error = %e, "federation directory: fetching a peer failed");
                state.reachable = false;
                state.last_error = Some(e.to_string());
                // The last good copy stays until it expires.
                if state.expires_ms.is_some_and(|exp| exp <= now) {
                    (state.fetched_ms, state.expires_ms) = (None, None);
                    state.federation_keys.clear();
                    state.reference_keys.clear();
                    self.agency.peers.set(issuer, None);
                }
                let result = match e.code() {
                    ErrorCode::PinMismatch => "pin_mismatch",
                    _ => "unreachable",
                };
                m.federation_refreshes
                    .with_label_values(&[issuer, result])
                    .inc();
            }
        }
        m.federation_peer_reachable
            .with_label_values(&[issuer])
            .set(i64::from(state.reachable));
        let age = state.fetched_ms.map_or(0, |f| now.saturating_sub(f) / 1000);
        m.federation_configuration_age
            .with_label_values(&[issuer])
            .set(age as i64);
    }
}

impl super::Metered for FederationDirectory {
    const NAME: &'static str = "federation_directory";
}

impl Actor for FederationDirectory {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Each peer is fetched every refresh_s; a look each second finds
        // the peers added since, so they are known on every node at once.
        self.refresh(ctx);
        ctx.run_interval(Duration::from_secs(1), |act, ctx| act.refresh(ctx));
    }
}

impl Handler<ListPeers> for FederationDirectory {
    type Result = Vec<PeerState>;

    fn handle(&mut self, _: ListPeers, _: &mut Self::Context) -> Self::Result {
        let mut peers: Vec<PeerState> = self.peers.values().cloned().collect();
        peers.sort_by(|a, b| a.issuer.cmp(&b.issuer));
        peers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sso::federation::{statement, test_key as key, AgencyFacts, ENTITY_VALIDITY_S};

    /// A peer's statement is taken only when signed by the pinned key,
    /// whose thumbprint is the pin, for the issuer asked, and unexpired.
    #[test]
    fn a_peer_statement_must_be_signed_by_the_pinned_key() {
        let (a, b) = (key(7, None), key(8, None));
        let issuer = "https://login-b.baa.localtest";
        let facts = AgencyFacts {
            issuer,
            name: "b",
            cookie_domain: None,
            reference_keys: &[],
            token_keys: &[],
        };
        let keys = [a.clone(), b.clone()];
        let jwt = statement(&facts, &keys, Some(&a.kid), 10_000_000).unwrap();
        let now_s = 10_000;
        assert!(check_statement(&jwt, issuer, &[&a.kid], now_s).is_ok());
        let code = |r: Result<serde_json::Value, NodeError>| r.unwrap_err().code();
        // Pinned to the other published key: the statement is not signed by it.
        assert_eq!(
            code(check_statement(&jwt, issuer, &[&b.kid], now_s)),
            ErrorCode::PinMismatch
        );
        // Another issuer's statement.
        let other = "https://login-c.baa.localtest";
        assert!(check_statement(&jwt, other, &[&a.kid], now_s).is_err());
        // Expired.
        let late = now_s + ENTITY_VALIDITY_S + 1;
        assert_eq!(
            code(check_statement(&jwt, issuer, &[&a.kid], late)),
            ErrorCode::PeerUnreachable
        );
        // A key that calls itself by the pin but is another key.
        let mut liar = b.clone();
        liar.kid = a.kid.clone();
        let forged = statement(&facts, &[liar], Some(&a.kid), 10_000_000).unwrap();
        assert_eq!(
            code(check_statement(&forged, issuer, &[&a.kid], now_s)),
            ErrorCode::PinMismatch
        );
        // While a peer rotates, a statement signed by a key of its last
        // good one is taken too.
        assert!(check_statement(&jwt, issuer, &[&b.kid, &a.kid], now_s).is_ok());
        // Not a statement at all.
        assert!(check_statement("x.y.z", issuer, &[&a.kid], now_s).is_err());
    }
}
