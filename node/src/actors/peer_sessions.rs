//! Cross-agency validation: a reference cookie naming a peer agency is
//! checked with the keys that peer publishes (from the federation
//! directory), then the peer is asked, server to server and authenticated
//! by this agency's federation key, whether the session it names is alive.
//! The peer's answers — yes and no alike — are kept `[federation] cache_s`
//! seconds, which bounds how long a session the peer ended is still
//! honoured here. One validator runs on each HTTP worker, like the cookie
//! validator.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, Context, Handler, Message, ResponseActFuture, WrapFuture};
use baa_proto::federation::{peer_client_id, CLIENT_ASSERTION_TYPE};
use baa_proto::sso::{secret_hash, SecretHash};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::agency::Agency;
use crate::clock::now_ms;
use crate::metrics::PeerCheck;
use crate::peers::{PeerKeyError, PeerView};

/// A peer's session a reference proved, alive by the peer's word.
#[derive(Clone)]
pub struct PeerSession {
    /// The peer agency.
    pub peer: Arc<PeerView>,
    /// Its public session id.
    pub sid: String,
}

/// Why a reference naming a peer does not stand for a live session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerRefusal {
    /// The reference names no peer of this agency (or is not a reference).
    NotAPeer,
    /// The peer does not publish the key it claims to be signed with, or the
    /// signature does not check out.
    UnknownKey {
        /// The peer.
        peer: String,
    },
    /// The peer says the session has ended.
    Ended {
        /// The peer.
        peer: String,
    },
    /// The peer could not be asked (or this node has no configuration of it).
    Unreachable {
        /// The peer.
        peer: String,
    },
}

impl PeerRefusal {
    /// The peer the reference names, when it names one.
    pub fn peer(&self) -> Option<&str> {
        match self {
            PeerRefusal::NotAPeer => None,
            PeerRefusal::UnknownKey { peer }
            | PeerRefusal::Ended { peer }
            | PeerRefusal::Unreachable { peer } => Some(peer),
        }
    }
}

/// Check a reference cookie's value that names a peer agency.
#[derive(Message)]
#[rtype(result = "Result<PeerSession, PeerRefusal>")]
pub struct CheckPeerReference(pub String);

/// The issuer a reference claims, read without checking anything (to pick
/// the keys that check it).
pub fn claimed_issuer(reference: &str) -> Option<String> {
    let payload = reference.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["iss"].as_str().map(String::from)
}

/// Most references or answers one validator remembers; when full it starts
/// again empty.
const MAX_REMEMBERED: usize = 10_000;

struct Proved {
    peer: String,
    sid: String,
    kid: String,
    exp_s: u64,
}

/// Validates references of peer agencies.
pub struct PeerSessions {
    agency: Arc<Agency>,
    verified: HashMap<SecretHash, Proved>,
    answers: HashMap<(String, String), (bool, Instant)>,
}

impl PeerSessions {
    /// A validator for `agency`.
    pub fn new(agency: Arc<Agency>) -> Self {
        Self {
            agency,
            verified: HashMap::new(),
            answers: HashMap::new(),
        }
    }

    /// The peer and session `reference` names, if signed by a key the peer
    /// publishes and unexpired: from memory when verified before. A refusal
    /// comes with whether fetching the peer's configuration anew could help
    /// (a key, or a peer, this node has not seen yet).
    fn verify(&mut self, reference: &str) -> Result<(Arc<PeerView>, String), (PeerRefusal, bool)> {
        let h = secret_hash(reference.as_bytes());
        let now_s = now_ms() / 1000;
        if let Some(p) = self.verified.get(&h) {
            if let Some(view) = self.agency.peers.get(&p.peer) {
                if now_s < p.exp_s && view.has_reference_key(&p.kid) {
                    return Ok((view, p.sid.clone()));
                }
            }
            self.verified.remove(&h);
        }
        let issuer = claimed_issuer(reference).ok_or((PeerRefusal::NotAPeer, false))?;
        let Some(view) = self.agency.peers.get(&issuer) else {
            // A peer this node holds no configuration of cannot be checked.
            return match self.agency.state.peer_agency(&issuer) {
                Ok(Some(_)) => Err((PeerRefusal::Unreachable { peer: issuer }, true)),
                _ => Err((PeerRefusal::NotAPeer, false)),
            };
        };
        let (claims, kid) = view.verify_reference(reference).map_err(|e| {
            let peer = issuer.clone();
            match e {
                PeerKeyError::UnknownKey => (PeerRefusal::UnknownKey { peer }, true),
                PeerKeyError::BadSignature => (PeerRefusal::UnknownKey { peer }, false),
                PeerKeyError::Malformed => (PeerRefusal::NotAPeer, false),
            }
        })?;
        if self.verified.len() >= MAX_REMEMBERED {
            self.verified.clear();
        }
        self.verified.insert(
            h,
            Proved {
                peer: issuer,
                sid: claims.sid.clone(),
                kid,
                exp_s: claims.exp,
            },
        );
        Ok((view, claims.sid))
    }

    /// The peer's remembered word on session `sid`, if still fresh.
    fn remembered(&self, peer: &str, sid: &str) -> Option<bool> {
        let bound = Duration::from_secs(self.agency.config.federation.cache_s);
        let (alive, at) = self.answers.get(&(peer.to_string(), sid.to_string()))?;
        (at.elapsed() < bound).then_some(*alive)
    }
}

impl super::Metered for PeerSessions {
    const NAME: &'static str = "peer_sessions";
}

impl Actor for PeerSessions {
    type Context = Context<Self>;
}

/// Asks `peer` whether the session `reference` names is alive.
async fn ask(agency: &Agency, peer: &PeerView, reference: &str) -> Result<bool, String> {
    let client = agency
        .peers
        .client(&agency.config.federation)
        .map_err(|e| e.to_string())?;
    let assertion = crate::key_rotation::federation_assertion(agency, &peer.issuer)
        .map_err(|e| e.to_string())?;
    let form = [
        ("client_id", peer_client_id(&agency.config.issuer)),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE.to_string()),
        ("client_assertion", assertion),
        ("reference", reference.to_string()),
    ];
    let resp = client
        .post(&peer.session_status_endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let body: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
    body["active"]
        .as_bool()
        .ok_or_else(|| "the answer says nothing of the session".into())
}

impl Handler<CheckPeerReference> for PeerSessions {
    type Result = ResponseActFuture<Self, Result<PeerSession, PeerRefusal>>;

    fn handle(&mut self, msg: CheckPeerReference, _: &mut Self::Context) -> Self::Result {
        self.check(msg.0, true)
    }
}

impl PeerSessions {
    /// Checks `reference`; when it names a key (or a peer) this node has not
    /// seen and `may_refresh`, fetches the peer's configuration out of turn
    /// and checks again.
    fn check(
        &mut self,
        reference: String,
        may_refresh: bool,
    ) -> ResponseActFuture<Self, Result<PeerSession, PeerRefusal>> {
        let metrics = self.agency.metrics.clone();
        let verified = self.verify(&reference);
        let (view, sid) = match verified {
            Ok(v) => v,
            Err((refusal, true)) if may_refresh => {
                let (agency, peer) = (
                    self.agency.clone(),
                    refusal.peer().unwrap_or("").to_string(),
                );
                let fetched =
                    async move { super::federation_directory::refresh_now(&agency, &peer).await };
                // Checked again either way, without another fetch: the
                // refusal is then counted as any other.
                return Box::pin(
                    fetched
                        .into_actor(self)
                        .then(move |_, act, _| act.check(reference, false)),
                );
            }
            Err((refusal, _)) => {
                if let Some(peer) = refusal.peer() {
                    let result = match refusal {
                        PeerRefusal::UnknownKey { .. } => PeerCheck::UnknownKey,
                        _ => PeerCheck::Unreachable,
                    };
                    metrics.peer_check(peer, result);
                }
                return Box::pin(actix::fut::ready(Err(refusal)));
            }
        };
        let answer = |alive: bool, view: Arc<PeerView>, sid: String| {
            let peer = view.issuer.clone();
            match alive {
                true => Ok(PeerSession { peer: view, sid }),
                false => Err(PeerRefusal::Ended { peer }),
            }
        };
        if let Some(alive) = self.remembered(&view.issuer, &sid) {
            metrics.federation_cache.with_label_values(&["hit"]).inc();
            let result = if alive {
                PeerCheck::Alive
            } else {
                PeerCheck::Ended
            };
            metrics.peer_check(&view.issuer, result);
            return Box::pin(actix::fut::ready(answer(alive, view, sid)));
        }
        metrics.federation_cache.with_label_values(&["miss"]).inc();
        let agency = self.agency.clone();
        let v = view.clone();
        let asked = async move { ask(&agency, &v, &reference).await };
        Box::pin(asked.into_actor(self).map(move |r, act, _| {
            let peer = view.issuer.clone();
            match r {
                Ok(alive) => {
                    if act.answers.len() >= MAX_REMEMBERED {
                        act.answers.clear();
                    }
                    act.answers
                        .insert((peer.clone(), sid.clone()), (alive, Instant::now()));
                    let result = if alive { PeerCheck::Alive } else { PeerCheck::Ended };
                    metrics.peer_check(&peer, result);
                    answer(alive, view, sid)
                }
                Err(e) => {
                    tracing::warn!(peer = %peer, error = %e, "asking a peer about a session failed");
                    metrics.peer_check(&peer, PeerCheck::Unreachable);
                    Err(PeerRefusal::Unreachable { peer })
                }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::claimed_issuer;

    #[test]
    fn the_claimed_issuer_is_read_from_the_payload_only() {
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"iss":"https://login-b.example","sid":"s"}"#,
        );
        let value = format!("e30.{payload}.sig");
        assert_eq!(
            claimed_issuer(&value).as_deref(),
            Some("https://login-b.example")
        );
        assert_eq!(claimed_issuer("garbage"), None);
        assert_eq!(claimed_issuer("a.!!!.c"), None);
    }
}
