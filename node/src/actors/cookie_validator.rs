//! Cookie validation: checks a browser's two cookies — the host-only session
//! cookie (the bearer) and the agency reference cookie (signed by this
//! agency, naming the session) — and answers with the live session they both
//! name, or nothing. A session derived from a peer agency's session goes
//! with the peer's reference (the user's home agency stays the peer): it
//! holds while the peer vouches for the session the reference names and
//! the local session was derived from that very one. One validator runs on each HTTP worker, so a check never
//! crosses threads; each remembers the references it has verified, since a
//! browser sends the same one with every request and checking its signature
//! costs more than everything else a validation does.

use std::collections::HashMap;
use std::sync::Arc;

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use baa_proto::command::Consistency;
use baa_proto::cookie;
use baa_proto::sso::{public_sid, secret_hash, SecretHash, Session};

use super::peer_sessions::{claimed_issuer, CheckPeerReference, PeerSessions};
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::keys::KeyRing;
use crate::metrics::CookieCheck;

/// A session the cookies proved.
#[derive(Debug, Clone)]
pub struct ValidSession {
    /// The session record.
    pub session: Session,
    /// Its key (SHA-256 of the session cookie's secret).
    pub key: SecretHash,
}

/// A browser's cookie values. Deliberately not `Debug`: the session cookie is a secret.
pub struct BrowserCookies {
    /// The session cookie (bearer).
    pub session: String,
    /// The agency reference cookie, if the browser sent one.
    pub reference: Option<String>,
}

/// Validate a browser's cookies.
#[derive(Message)]
#[rtype(result = "Option<ValidSession>")]
pub struct ValidateCookies(pub BrowserCookies);

/// Validates SSO cookies against the local state.
pub struct CookieValidator {
    agency: Arc<Agency>,
    verified: Verified,
    peers: Addr<PeerSessions>,
}

impl CookieValidator {
    /// A validator for `agency`, asking `peers` about peer references.
    pub fn new(agency: Arc<Agency>, peers: Addr<PeerSessions>) -> Self {
        Self {
            agency,
            verified: Verified::default(),
            peers,
        }
    }
}

/// Most references one validator remembers; when full it starts again empty.
const MAX_VERIFIED: usize = 10_000;

/// What a verified reference proved, by SHA-256 of its value.
#[derive(Default)]
struct Verified(HashMap<SecretHash, Proved>);

struct Proved {
    sid: String,
    kid: String,
    exp_s: u64,
}

impl Verified {
    /// The session handle `value` names, if it is this agency's reference,
    /// unexpired and signed with a key still published: from memory when
    /// this worker verified it before, else by checking its signature.
    fn sid(&mut self, keys: &KeyRing, issuer: &str, value: &str) -> Option<String> {
        let h = secret_hash(value.as_bytes());
        let now_s = now_ms() / 1000;
        if let Some(p) = self.0.get(&h) {
            if now_s < p.exp_s && keys.has_reference_key(&p.kid) {
                return Some(p.sid.clone());
            }
            self.0.remove(&h);
        }
        let (claims, kid) = keys.verify_reference_kid(value, issuer)?;
        if self.0.len() >= MAX_VERIFIED {
            self.0.clear();
        }
        self.0.insert(
            h,
            Proved {
                sid: claims.sid.clone(),
                kid,
                exp_s: claims.exp,
            },
        );
        Some(claims.sid)
    }
}

impl super::Metered for CookieValidator {
    const NAME: &'static str = "cookie_validator";
}

impl Actor for CookieValidator {
    type Context = Context<Self>;
}

/// What the cookies name before the state is read.
enum Named {
    /// A session of this agency.
    Own(SecretHash),
    /// A session derived from a peer's, with the peer's reference.
    Peer(SecretHash, String),
}

/// The session key the cookies name, if they agree: the session cookie's
/// secret hashes to the key whose public handle the reference (signed by
/// this agency, unexpired) names; or the reference is a peer's, to be
/// checked against the session's link.
fn precheck(
    agency: &Agency,
    cookies: &BrowserCookies,
    verified: &mut Verified,
) -> Result<Named, CookieCheck> {
    let secret = cookie::parse_session(&cookies.session).ok_or(CookieCheck::Malformed)?;
    let reference = cookies
        .reference
        .as_deref()
        .ok_or(CookieCheck::NoReference)?;
    // This agency's own references are the common case (and remembered):
    // only one that is not ours is read for the peer it names.
    let Some(sid) = verified.sid(&agency.keys, &agency.config.issuer, reference) else {
        if claimed_issuer(reference).is_some_and(|i| i != agency.config.issuer) {
            return Ok(Named::Peer(secret_hash(&secret), reference.to_string()));
        }
        return Err(CookieCheck::BadReference);
    };
    let key = secret_hash(&secret);
    if sid != public_sid(&key) {
        return Err(CookieCheck::Mismatch);
    }
    Ok(Named::Own(key))
}

/// The live local session of `key`, if it was derived from the peer session
/// `reference` names and the peer still vouches for that one.
async fn validate_linked(
    agency: &Agency,
    peers: &Addr<PeerSessions>,
    key: SecretHash,
    reference: String,
) -> Option<ValidSession> {
    let valid = validate(agency, Ok(key)).await?;
    let link = match agency.state.session_peer(&key) {
        Ok(Some(l)) => l,
        _ => {
            agency.metrics.cookie_check(CookieCheck::Mismatch);
            return None;
        }
    };
    match super::ask(&agency.metrics, peers, CheckPeerReference(reference)).await {
        Ok(Ok(p)) if p.peer.issuer == link.peer && p.sid == link.peer_sid => Some(valid),
        Ok(Ok(_)) => {
            agency.metrics.cookie_check(CookieCheck::Mismatch);
            None
        }
        _ => {
            agency.metrics.cookie_check(CookieCheck::PeerRefused);
            None
        }
    }
}

/// The live session of a precheck's key.
async fn validate(
    agency: &Agency,
    prechecked: Result<SecretHash, CookieCheck>,
) -> Option<ValidSession> {
    let key = match prechecked {
        Ok(k) => k,
        Err(why) => {
            agency.metrics.cookie_check(why);
            return None;
        }
    };
    // A storage error is no session for the browser (it signs in again),
    // but never silently: it is logged and counted apart.
    let lookup = |a: &Agency| match a.state.session(&key) {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(error = %e, "reading a session failed");
            a.metrics.cookie_check(CookieCheck::StorageError);
            None
        }
    };
    let mut found = lookup(agency);
    if found.is_none() {
        // The signed reference proves we issued this session, so it may just
        // not have reached this node yet (sign-in answered by another node a
        // moment ago).
        if agency.read_barrier(Consistency::Linearizable).await.is_ok() {
            found = lookup(agency);
        }
    }
    match found {
        Some(session) if session.alive_at(now_ms()) => {
            agency.metrics.cookie_check(CookieCheck::Valid);
            Some(ValidSession { session, key })
        }
        _ => {
            agency.metrics.cookie_check(CookieCheck::NoSession);
            None
        }
    }
}

impl Handler<ValidateCookies> for CookieValidator {
    type Result = ResponseFuture<Option<ValidSession>>;

    fn handle(&mut self, msg: ValidateCookies, _: &mut Self::Context) -> Self::Result {
        let agency = self.agency.clone();
        let peers = self.peers.clone();
        let prechecked = precheck(&agency, &msg.0, &mut self.verified);
        Box::pin(async move {
            match prechecked {
                Ok(Named::Own(key)) => validate(&agency, Ok(key)).await,
                Ok(Named::Peer(key, reference)) => {
                    validate_linked(&agency, &peers, key, reference).await
                }
                Err(why) => validate(&agency, Err(why)).await,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baa_proto::cookie::Reference;

    const ISSUER: &str = "https://login.example";

    #[tokio::test]
    async fn verified_references_are_remembered_until_expiry_or_key_retirement() {
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::keys::test_ring(dir.path()).await;
        let now_s = now_ms() / 1000;
        let value = keys
            .sign_reference(&Reference {
                iss: ISSUER.into(),
                sid: "s1".into(),
                iat: now_s,
                exp: now_s + 3600,
            })
            .unwrap();
        let mut v = Verified::default();
        assert_eq!(v.sid(&keys, ISSUER, &value).as_deref(), Some("s1"));
        assert_eq!(v.0.len(), 1);
        assert_eq!(v.sid(&keys, "https://other.example", "x.y.z"), None);
        let kid = v.0.values().next().unwrap().kid.clone();

        // A remembered value is not checked again (a forged value planted in
        // memory passes)…
        let forged = "forged.reference.value";
        let remember = |v: &mut Verified, kid: &str, exp_s: u64| {
            v.0.insert(
                secret_hash(forged.as_bytes()),
                Proved {
                    sid: "s2".into(),
                    kid: kid.into(),
                    exp_s,
                },
            );
        };
        remember(&mut v, &kid, now_s + 60);
        assert_eq!(v.sid(&keys, ISSUER, forged).as_deref(), Some("s2"));
        // …but only until it expires or its key is no longer published.
        remember(&mut v, &kid, now_s.saturating_sub(1));
        assert_eq!(v.sid(&keys, ISSUER, forged), None);
        remember(&mut v, "retired", now_s + 60);
        assert_eq!(v.sid(&keys, ISSUER, forged), None);
        assert!(!v.0.contains_key(&secret_hash(forged.as_bytes())));
    }
}
