//! The session gate: validates an SSO cookie — format, issuing agency,
//! signature by a published key, session record, expiry — and answers with
//! the live session or nothing. One gate runs on each HTTP worker, so a check
//! never crosses threads.

use std::sync::Arc;

use actix::{Actor, Context, Handler, Message, ResponseFuture};
use baa_proto::command::Consistency;
use baa_proto::cookie;
use baa_proto::sso::{secret_hash, SecretHash, Session};

use crate::agency::{now_ms, Agency};

/// A session the cookie proved.
#[derive(Debug, Clone)]
pub struct ValidSession {
    /// The session record.
    pub session: Session,
    /// Its key (SHA-256 of the cookie's secret).
    pub key: SecretHash,
}

/// Validate an SSO cookie value. Deliberately not `Debug`: it holds a secret.
#[derive(Message)]
#[rtype(result = "Option<ValidSession>")]
pub struct ValidateCookie(pub String);

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

/// Outcome of the checks that need no state lookup.
enum Precheck {
    Valid(SecretHash),
    Refused(&'static str),
}

fn precheck(agency: &Agency, value: &str) -> Precheck {
    let Ok(c) = cookie::parse(value) else {
        return Precheck::Refused("malformed");
    };
    if c.agency != agency.config.sso.agency {
        // A peer agency's cookie: cross-agency validation belongs to federation.
        return Precheck::Refused("foreign");
    }
    let now_s = now_ms() / 1000;
    if c.issued_s > now_s + 300 || now_s >= c.issued_s + agency.config.sso.session_lifetime_s {
        return Precheck::Refused("expired");
    }
    if !agency.keys.cookie_signature_valid(&c) {
        return Precheck::Refused("signature");
    }
    Precheck::Valid(secret_hash(&c.secret))
}

/// Validates `value` (for callers that are not actors, e.g. on the same worker).
pub async fn validate(agency: &Agency, value: &str) -> Option<ValidSession> {
    let m = &agency.metrics.cookie_validations;
    let key = match precheck(agency, value) {
        Precheck::Valid(k) => k,
        Precheck::Refused(why) => {
            m.with_label_values(&[why]).inc();
            return None;
        }
    };
    let lookup = |a: &Agency| a.state.session(&key).ok().flatten();
    let mut found = lookup(agency);
    if found.is_none() {
        // The signature proves we issued it, so the session may just not have
        // reached this node yet (sign-in answered by another node a moment ago).
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

impl Handler<ValidateCookie> for SessionGate {
    type Result = ResponseFuture<Option<ValidSession>>;

    fn handle(&mut self, msg: ValidateCookie, _: &mut Self::Context) -> Self::Result {
        let agency = self.agency.clone();
        Box::pin(async move { validate(&agency, &msg.0).await })
    }
}
