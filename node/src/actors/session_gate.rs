//! The session gate: checks a browser's two cookies — the host-only session
//! cookie (the bearer) and the agency reference cookie (signed by this
//! agency, naming the session) — and answers with the live session they both
//! name, or nothing. One gate runs on each HTTP worker, so a check never
//! crosses threads.

use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, ResponseFuture};
use baa_proto::command::Consistency;
use baa_proto::cookie;
use baa_proto::sso::{public_sid, secret_hash, SecretHash, Session};

use crate::agency::{now_ms, Agency};

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
pub struct SessionGate {
    agency: Arc<Agency>,
}

impl SessionGate {
    /// A gate for `agency`.
    pub fn new(agency: Arc<Agency>) -> Self {
        Self { agency }
    }
}

impl Actor for SessionGate {
    type Context = Context<Self>;
}

/// The session key the cookies name, if they agree: the session cookie's
/// secret hashes to the key whose public handle the reference (signed by
/// this agency, unexpired) names.
fn precheck(agency: &Agency, cookies: &BrowserCookies) -> Result<SecretHash, &'static str> {
    let secret = cookie::parse_session(&cookies.session).ok_or("malformed")?;
    let reference = cookies.reference.as_deref().ok_or("no_reference")?;
    let reference = agency
        .keys
        .verify_reference(reference, &agency.config.issuer)
        .ok_or("reference")?;
    let key = secret_hash(&secret);
    if reference.sid != public_sid(&key) {
        return Err("mismatch");
    }
    Ok(key)
}

/// Validates a browser's cookies (for callers that are not actors, e.g. on
/// the same worker).
pub async fn validate(agency: &Agency, cookies: &BrowserCookies) -> Option<ValidSession> {
    let m = &agency.metrics.cookie_validations;
    let key = match precheck(agency, cookies) {
        Ok(k) => k,
        Err(why) => {
            m.with_label_values(&[why]).inc();
            return None;
        }
    };
    let lookup = |a: &Agency| a.state.session(&key).ok().flatten();
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
            m.with_label_values(&["valid"]).inc();
            Some(ValidSession { session, key })
        }
        _ => {
            m.with_label_values(&["no_session"]).inc();
            None
        }
    }
}

impl Handler<ValidateCookies> for SessionGate {
    type Result = ResponseFuture<Option<ValidSession>>;

    fn handle(&mut self, msg: ValidateCookies, _: &mut Self::Context) -> Self::Result {
        let agency = self.agency.clone();
        Box::pin(async move { validate(&agency, &msg.0).await })
    }
}
