//! The history of a schedule's client operations, Jepsen-style: each
//! operation is recorded with the time it was invoked, the time it
//! completed, and how it completed — `Ok` (the agency said yes), `Fail`
//! (the agency said no: it did not happen) or `Unknown` (a timeout, a
//! connection error, a 5xx: it may or may not have happened). The secrets
//! the operations made (session cookies, tickets, refresh tokens) live
//! beside the history in [`Entities`], named by index.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baa_proto::model::NodeId;

use crate::sso::SsoCookies;

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Password sign-in of `user`: a new session.
    SignIn {
        /// The account.
        user: String,
    },
    /// A login ticket (authorization code) issued in `session`.
    Issue {
        /// The session.
        session: usize,
    },
    /// Redemption of ticket `code` by the partner site.
    Redeem {
        /// The ticket.
        code: usize,
    },
    /// Rotation of refresh token `token`.
    Refresh {
        /// The token.
        token: usize,
    },
    /// Sign-out of `session`.
    Logout {
        /// The session.
        session: usize,
    },
    /// Admin: create user `name` (a retry carries the same request id).
    CreateUser {
        /// The new account.
        name: String,
    },
    /// Admin: set attribute `key` of the counter user (a retry carries the
    /// same request id).
    Write {
        /// The attribute.
        key: String,
    },
    /// Admin: linearizable read of the counter user.
    Read,
    /// Password sign-in of `user` at the peer agency B (federated schedules).
    PeerSignIn {
        /// B's account.
        user: String,
    },
    /// A sign-in at A through the silent round trip to B, with B's session
    /// `peer_session`: a session derived from it.
    CrossSignIn {
        /// B's session.
        peer_session: usize,
    },
    /// Sign-out of B's session `peer_session` at B.
    PeerLogout {
        /// B's session.
        peer_session: usize,
    },
}

/// What an `Ok` operation produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// Nothing worth keeping.
    None,
    /// A session (index into [`Entities::sessions`]).
    Session(usize),
    /// A ticket (index into [`Entities::codes`]).
    Code(usize),
    /// A refresh token (index into [`Entities::refresh`]).
    Refresh(usize),
    /// A session at B (index into [`Entities::peer_sessions`]).
    PeerSession(usize),
    /// A session at A derived from one at B (index into [`Entities::derived`]).
    Derived(usize),
    /// What a read saw: the revision and the attribute keys.
    Read {
        /// The record's revision.
        revision: u64,
        /// Its attribute keys.
        keys: BTreeSet<String>,
    },
}

/// How an operation completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It happened.
    Ok(Value),
    /// It did not happen.
    Fail(String),
    /// It may have happened.
    Unknown(String),
}

/// One completed operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// The client that ran it.
    pub worker: usize,
    /// The node it was sent to.
    pub node: NodeId,
    /// What it asked.
    pub action: Action,
    /// When it was invoked, from the start of the history.
    pub invoked: Duration,
    /// When it completed.
    pub completed: Duration,
    /// How.
    pub outcome: Outcome,
}

impl Op {
    /// Whether it completed `Ok`.
    pub fn ok(&self) -> bool {
        matches!(self.outcome, Outcome::Ok(_))
    }
    /// Whether it completed `Unknown`.
    pub fn unknown(&self) -> bool {
        matches!(self.outcome, Outcome::Unknown(_))
    }
    /// Whether it completed `Fail`.
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail(_))
    }
}

/// A session the load made.
#[derive(Debug, Clone)]
pub struct SessionRec {
    /// The account.
    pub user: String,
    /// Its cookies.
    pub cookies: SsoCookies,
}

/// A ticket the load was given.
#[derive(Debug, Clone)]
pub struct CodeRec {
    /// The session it was issued in.
    pub session: usize,
    /// The ticket.
    pub code: String,
    /// Its PKCE verifier.
    pub verifier: String,
}

/// A refresh token the load was given.
#[derive(Debug, Clone)]
pub struct RefreshRec {
    /// The session it maps to.
    pub session: usize,
    /// The ticket whose redemption started its family.
    pub code: usize,
    /// The token it was rotated from (`None`: from the redemption).
    pub parent: Option<usize>,
    /// The token.
    pub token: String,
}

/// A session A derived from one of B's.
#[derive(Debug, Clone)]
pub struct DerivedRec {
    /// B's session it came from.
    pub peer_session: usize,
    /// Its cookies at A (`Cookie` header value).
    pub cookies: String,
}

/// The secrets the operations made, by index.
#[derive(Debug, Clone, Default)]
pub struct Entities {
    /// Sessions.
    pub sessions: Vec<SessionRec>,
    /// Tickets.
    pub codes: Vec<CodeRec>,
    /// Refresh tokens.
    pub refresh: Vec<RefreshRec>,
    /// Sessions at the peer agency B.
    pub peer_sessions: Vec<SessionRec>,
    /// Sessions at A derived from B's.
    pub derived: Vec<DerivedRec>,
}

#[derive(Default)]
struct Inner {
    ops: Vec<Op>,
    entities: Entities,
}

/// A history being recorded by concurrent clients (cheap to clone).
#[derive(Clone)]
pub struct History {
    start: Instant,
    inner: Arc<Mutex<Inner>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

/// An invoked operation, completed by [`History::complete`].
pub struct Pending {
    worker: usize,
    node: NodeId,
    action: Action,
    invoked: Duration,
}

impl History {
    /// An empty history starting now.
    pub fn new() -> Self {
        History {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records the invocation of `action` on `node` by `worker`.
    pub fn invoke(&self, worker: usize, node: NodeId, action: Action) -> Pending {
        Pending {
            worker,
            node,
            action,
            invoked: self.now(),
        }
    }

    /// Records how `p` completed.
    pub fn complete(&self, p: Pending, outcome: Outcome) {
        let op = Op {
            worker: p.worker,
            node: p.node,
            action: p.action,
            invoked: p.invoked,
            completed: self.now(),
            outcome,
        };
        self.lock().ops.push(op);
    }

    /// Keeps a new session; returns its index.
    pub fn add_session(&self, rec: SessionRec) -> usize {
        let mut g = self.lock();
        g.entities.sessions.push(rec);
        g.entities.sessions.len() - 1
    }

    /// Keeps a new ticket; returns its index.
    pub fn add_code(&self, rec: CodeRec) -> usize {
        let mut g = self.lock();
        g.entities.codes.push(rec);
        g.entities.codes.len() - 1
    }

    /// Keeps a new refresh token; returns its index.
    pub fn add_refresh(&self, rec: RefreshRec) -> usize {
        let mut g = self.lock();
        g.entities.refresh.push(rec);
        g.entities.refresh.len() - 1
    }

    /// Keeps a new session at B; returns its index.
    pub fn add_peer_session(&self, rec: SessionRec) -> usize {
        let mut g = self.lock();
        g.entities.peer_sessions.push(rec);
        g.entities.peer_sessions.len() - 1
    }

    /// Keeps a new derived session at A; returns its index.
    pub fn add_derived(&self, rec: DerivedRec) -> usize {
        let mut g = self.lock();
        g.entities.derived.push(rec);
        g.entities.derived.len() - 1
    }

    /// Ticket `i`.
    pub fn code(&self, i: usize) -> Option<CodeRec> {
        self.lock().entities.codes.get(i).cloned()
    }

    /// Refresh token `i`.
    pub fn refresh(&self, i: usize) -> Option<RefreshRec> {
        self.lock().entities.refresh.get(i).cloned()
    }

    /// A copy of the operations so far, in completion order, and of the entities.
    pub fn snapshot(&self) -> (Vec<Op>, Entities) {
        let g = self.lock();
        (g.ops.clone(), g.entities.clone())
    }
}

/// Counts of a history's operations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every operation.
    pub ops: usize,
    /// `Ok`.
    pub ok: usize,
    /// `Fail`.
    pub fail: usize,
    /// `Unknown`.
    pub unknown: usize,
}

/// Counts `ops` by outcome.
pub fn counts(ops: &[Op]) -> Counts {
    let mut c = Counts {
        ops: ops.len(),
        ..Counts::default()
    };
    for op in ops {
        match op.outcome {
            Outcome::Ok(_) => c.ok += 1,
            Outcome::Fail(_) => c.fail += 1,
            Outcome::Unknown(_) => c.unknown += 1,
        }
    }
    c
}
