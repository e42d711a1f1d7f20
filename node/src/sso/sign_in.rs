//! Sign-in with a username and password: throttled per account, per source
//! and per pair (a lock known here refuses at once; one this node has not
//! applied yet is enforced by the state machine in log order), the password
//! checked on the hashing pool (unknown accounts verify a dummy hash, so they
//! take the same path and time), and a new session made through Raft. The
//! account is read after a read barrier, so a user acknowledged anywhere in
//! the cluster can sign in at once on any node.

use std::sync::OnceLock;

use baa_proto::command::{Consistency, Op, Outcome};
use baa_proto::cookie::SESSION_SECRET_LEN;
use baa_proto::sso::{
    public_sid, secret_hash, SecretHash, Session, ThrottlePolicy, ThrottleSubject,
};
use baa_proto::ErrorCode;

use crate::actors::cookie_validator::ValidSession;
use crate::actors::hasher::Hashers;
use crate::agency::Agency;
use crate::clock::now_ms;
use crate::error::NodeError;
use crate::metrics::SignInResult;

/// What the user typed, and where from. Deliberately not `Debug`: it holds
/// a password.
pub struct Credentials {
    /// The username as typed.
    pub username: String,
    /// The password.
    pub password: String,
    /// The client's address (see `http::browser::client_source`).
    pub source: String,
}

impl Credentials {
    /// The username as accounts are named: trimmed, lower case.
    pub fn account_name(&self) -> String {
        self.username.trim().to_lowercase()
    }
}

/// A new session, with the secret its session cookie carries. Deliberately
/// not `Debug`: it holds the secret.
pub struct SignedIn {
    /// The session, as the cookies will prove it.
    pub session: ValidSession,
    /// The session cookie's secret.
    pub secret: [u8; SESSION_SECRET_LEN],
}

/// Why a sign-in did not make a session.
#[derive(Debug)]
pub enum SignInError {
    /// Unknown account, wrong password, disabled account: one answer for all.
    BadCredentials,
    /// Too many failures; try again after this many seconds.
    Locked {
        /// Seconds until the lock ends (at least 1).
        retry_after_s: u64,
    },
    /// The hashing pool is full: try again in a moment.
    Busy,
    /// The agency could not complete the sign-in.
    Failed(NodeError),
}

impl<E: Into<NodeError>> From<E> for SignInError {
    fn from(e: E) -> Self {
        SignInError::Failed(e.into())
    }
}

/// A hash that no password matches, verified for unknown accounts so that
/// they take the same path and time as wrong passwords.
pub fn dummy_hash() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        let (value, _) = crate::secrets::random_secret();
        crate::actors::hasher::hash_password(&value).unwrap_or_default()
    })
}

/// The sign-in throttling rule of this node's configuration.
pub fn throttle_policy(agency: &Agency) -> ThrottlePolicy {
    let s = &agency.config.sso;
    ThrottlePolicy {
        window_ms: s.throttle_window_s * 1000,
        max_pair_failures: s.max_account_failures,
        max_account_failures: s.max_account_failures_all_sources,
        max_source_failures: s.max_source_failures,
        lockout_ms: s.lockout_s * 1000,
    }
}

/// Records a failed attempt of `account` from `source` (sign-in or a wrong
/// device code), so the replicated throttle counts it.
pub async fn record_failure(agency: &Agency, account: [u8; 32], source: String) {
    let op = Op::RecordFailedSignIn {
        account,
        source,
        policy: throttle_policy(agency),
    };
    if let Err(e) = agency.write(op, None).await {
        tracing::warn!(error = %e, "could not record a failed attempt");
    }
}

/// Signs in: checks the throttle and the password, then makes a session;
/// in a browser that holds session `previous`, the new session replaces
/// it (see `Op::ReplaceSession`).
pub async fn sign_in(
    agency: &Agency,
    hasher: &Hashers,
    creds: &Credentials,
    previous: Option<SecretHash>,
) -> Result<SignedIn, SignInError> {
    let typed = creds.account_name();
    if typed.len() > 256 || creds.password.len() > 1024 {
        return Err(SignInError::BadCredentials);
    }
    let account = secret_hash(typed.as_bytes());
    // Accounts and locks are read locally: first catch up with every write
    // acknowledged before this request, so a user created (or locked) a
    // moment ago on another node is known here. Every name waits the same
    // round, known or not (no timing difference between them).
    agency.read_barrier(Consistency::Linearizable).await?;
    let now = now_ms();
    let mut locked_until = 0;
    for subject in ThrottleSubject::of_sign_in(&account, &creds.source) {
        locked_until = locked_until.max(agency.state.failures(&subject)?.locked_until_ms);
    }
    if locked_until > now {
        return Err(locked(
            agency,
            locked_until.saturating_sub(now).div_ceil(1000),
        ));
    }
    let user = agency.state.user(&typed)?;
    let hash = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_string());
    let verified = hasher
        .verify(creds.password.clone(), hash)
        .await
        .map_err(|_| SignInError::Busy)?;
    let user = match user {
        Some(u) if verified && !u.disabled && u.password_hash.is_some() => u,
        _ => {
            agency.metrics.sign_in(SignInResult::Failed);
            record_failure(agency, account, creds.source.clone()).await;
            return Err(SignInError::BadCredentials);
        }
    };
    // A new session id at every sign-in, whatever cookie the browser sent.
    let secret = crate::secrets::random_bytes::<SESSION_SECRET_LEN>();
    let key = secret_hash(&secret);
    let s = &agency.config.sso;
    let session = Session {
        key,
        sid: public_sid(&key),
        user_id: user.id,
        username: user.username.clone(),
        agency: s.agency.clone(),
        created_ms: now,
        last_seen_ms: now,
        idle_timeout_ms: s.session_idle_timeout_s * 1000,
        absolute_expiry_ms: now + s.session_lifetime_s * 1000,
        auth_time_ms: now,
        methods: vec!["pwd".into()],
        sites: Vec::new(),
    };
    let (session, source) = (Box::new(session), creds.source.clone());
    let op = match previous {
        Some(previous) => Op::ReplaceSession {
            session,
            account,
            source,
            previous,
        },
        None => Op::CreateSession {
            session,
            account,
            source,
        },
    };
    let session = match agency.write(op, None).await {
        Ok(Outcome::Session(s)) => *s,
        Err(NodeError::Apply(e)) if e.code == ErrorCode::TooManyAttempts => {
            return Err(locked(agency, agency.config.sso.lockout_s))
        }
        Ok(_) => return Err(NodeError::Internal("unexpected outcome".into()).into()),
        Err(e) => return Err(e.into()),
    };
    agency.metrics.sign_in(SignInResult::Ok);
    tracing::info!(user = %user.username, sid = %session.sid, "signed in");
    Ok(SignedIn {
        session: ValidSession { session, key },
        secret,
    })
}

fn locked(agency: &Agency, retry_after_s: u64) -> SignInError {
    agency.metrics.sign_in(SignInResult::Locked);
    SignInError::Locked {
        retry_after_s: retry_after_s.max(1),
    }
}
