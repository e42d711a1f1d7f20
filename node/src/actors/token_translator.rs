//! Token translation: turns a secure token held by a non-browser app
//! back into the browser session it was made from (the token → session
//! mapping is replicated), and keeps that session alive while the app uses
//! it — recorded at most once per configured interval, not per request.
//! One translator runs on each HTTP worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, ActorFutureExt, Context, Handler, Message, ResponseActFuture, WrapFuture};
use baa_proto::command::Consistency;
use baa_proto::command::Op;
use baa_proto::model::User;
use baa_proto::sso::{secret_hash, AccessToken, SecretHash, Session};

use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;

/// Who a token or cookie speaks for.
#[derive(Debug, Clone)]
pub struct Translated {
    /// The browser session.
    pub session: Session,
    /// Its user.
    pub user: User,
}

/// Translate an access token for an app that takes tokens of the clients
/// `accept` only (its audience): another client's token, e.g. one a web
/// site got for signing the user in, translates to nothing. Deliberately not
/// `Debug`: it holds a secret.
#[derive(Message)]
#[rtype(result = "Result<Option<Translated>, NodeError>")]
pub struct TranslateToken {
    /// The access token.
    pub token: String,
    /// Client ids whose tokens the app takes.
    pub accept: Vec<String>,
}

/// Record that a session was used (by a forward-auth app's cookie), at most
/// once per interval.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordUse(pub Session);

/// Translates tokens on one worker and remembers when it last recorded use
/// of each session.
pub struct TokenTranslator {
    agency: Arc<Agency>,
    touched: HashMap<SecretHash, Instant>,
}

impl TokenTranslator {
    /// A translator for `agency`.
    pub fn new(agency: Arc<Agency>) -> Self {
        Self {
            agency,
            touched: HashMap::new(),
        }
    }
}

impl super::Metered for TokenTranslator {
    const NAME: &'static str = "token_translator";
}

impl Actor for TokenTranslator {
    type Context = Context<Self>;
}

/// Looks a token up and checks it, its audience and its session, without
/// recording use.
pub async fn lookup(
    agency: &Agency,
    token: &str,
    accept: &[String],
) -> Result<Option<Translated>, NodeError> {
    let Some((t, session)) = live_token(agency, token).await? else {
        return Ok(None);
    };
    if !accept.contains(&t.client_id) {
        return Ok(None);
    }
    // Usernames never change, so the session's name finds the user in one read.
    let Some(user) = agency.state.user(&session.username)? else {
        return Ok(None);
    };
    Ok((user.id == session.user_id && !user.disabled).then_some(Translated { session, user }))
}

impl Handler<TranslateToken> for TokenTranslator {
    type Result = ResponseActFuture<Self, Result<Option<Translated>, NodeError>>;

    fn handle(&mut self, msg: TranslateToken, _: &mut Self::Context) -> Self::Result {
        let agency = self.agency.clone();
        Box::pin(
            async move { lookup(&agency, &msg.token, &msg.accept).await }
                .into_actor(self)
                .map(|found, act, _| {
                    let result = match &found {
                        Ok(Some(t)) => {
                            act.record_use(&t.session);
                            "found"
                        }
                        Ok(None) => "refused",
                        Err(_) => "error",
                    };
                    act.agency
                        .metrics
                        .translations
                        .with_label_values(&[result])
                        .inc();
                    found
                }),
        )
    }
}

impl Handler<RecordUse> for TokenTranslator {
    type Result = ();

    fn handle(&mut self, msg: RecordUse, _: &mut Self::Context) {
        self.record_use(&msg.0);
    }
}

impl TokenTranslator {
    /// Slides the session's idle expiry when the last recorded use is older
    /// than the interval (checked against the replicated `last_seen` and this
    /// worker's own memory, so a busy app causes one write per interval).
    fn record_use(&mut self, s: &Session) {
        let every = Duration::from_secs(self.agency.config.sso.session_touch_interval_s);
        let now = Instant::now();
        if self
            .touched
            .get(&s.key)
            .is_some_and(|t| now.duration_since(*t) < every)
        {
            return;
        }
        if now_ms().saturating_sub(s.last_seen_ms) < every.as_millis() as u64 {
            return;
        }
        self.touched.insert(s.key, now);
        if self.touched.len() > 100_000 {
            self.touched.retain(|_, t| now.duration_since(*t) < every);
        }
        let agency = self.agency.clone();
        let key = s.key;
        actix::spawn(async move {
            if let Err(e) = agency.write(Op::TouchSession { key }, None).await {
                tracing::debug!(error = %e, "recording session use failed");
            }
        });
    }
}

/// Finds a live access token and its session, reading through to the
/// leader once when this node has not yet applied it.
pub async fn live_token(
    agency: &Agency,
    value: &str,
) -> Result<Option<(AccessToken, Session)>, NodeError> {
    if crate::sealing::is_sealed_access(value) {
        return live_sealed(agency, value).await;
    }
    let hash = secret_hash(value.as_bytes());
    let find = |a: &Agency| -> Result<Option<(AccessToken, Session)>, NodeError> {
        let Some(t) = a.state.access_token(&hash)? else {
            return Ok(None);
        };
        let Some(s) = a.state.session(&t.session_key)? else {
            return Ok(None);
        };
        // A removed site's tokens die with it, whatever index missed them.
        if a.state.site(&t.client_id)?.is_none() {
            return Ok(None);
        }
        let now = now_ms();
        Ok((now < t.expires_ms && s.alive_at(now)).then_some((t, s)))
    };
    if let Some(found) = find(agency)? {
        return Ok(Some(found));
    }
    agency.read_barrier(Consistency::Linearizable).await?;
    find(agency)
}

/// A sealed access token that holds: it opens, has not expired, its
/// session is alive, its site and the user's trust in it (a peer agency's
/// client has none) are those it was issued under, and none of its ids
/// (its own, its ticket's, its refresh family's) is listed as revoked. As
/// the stored kind, it reads through to the leader once before saying no.
async fn live_sealed(
    agency: &Agency,
    value: &str,
) -> Result<Option<(AccessToken, Session)>, NodeError> {
    let a = match agency.tickets.open_access(value) {
        Some(a) => a,
        None => {
            // Sealed a moment ago with a key this node has not applied yet?
            agency.read_barrier(Consistency::Linearizable).await?;
            agency.tickets.invalidate();
            match agency.tickets.open_access(value) {
                Some(a) => a,
                None => return Ok(None),
            }
        }
    };
    let find = |ag: &Agency| -> Result<Option<(AccessToken, Session)>, NodeError> {
        let now = now_ms();
        let Some(s) = ag.state.session(&a.session_key)? else {
            return Ok(None);
        };
        if now >= a.expires_ms || !s.alive_at(now) || s.user_id != a.user_id {
            return Ok(None);
        }
        let site_then = ag.state.site(&a.client_id)?;
        if site_then.is_none_or(|site| site.created_ms > a.issued_ms) {
            return Ok(None);
        }
        let trusted = match ag.state.trust(a.user_id, &a.client_id)? {
            Some(t) => t.created_ms <= a.issued_ms,
            None => ag.state.peer_of_client(&a.client_id)?.is_some(),
        };
        let revoked = ag.state.access_revoked(&a.id)?
            || ag.state.access_revoked(&a.grant)?
            || match &a.family {
                Some(f) => ag.state.access_revoked(f)?,
                None => false,
            };
        if !trusted || revoked {
            return Ok(None);
        }
        let token = AccessToken {
            hash: secret_hash(value.as_bytes()),
            session_key: a.session_key,
            sid: s.sid.clone(),
            user_id: a.user_id,
            client_id: a.client_id.clone(),
            scopes: a.scopes.clone(),
            issued_ms: a.issued_ms,
            expires_ms: a.expires_ms,
        };
        Ok(Some((token, s)))
    };
    if let Some(found) = find(agency)? {
        return Ok(Some(found));
    }
    agency.read_barrier(Consistency::Linearizable).await?;
    find(agency)
}
