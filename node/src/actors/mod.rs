//! actix actors of the node, each the owner of some state: cookie
//! validation (its cache of verified references), cross-agency validation
//! (its cache of peers' answers), the federation
//! directory (peer agencies' configurations), ticket issue, token
//! translation (its memory of recorded use), the password-hashing pool and
//! periodic housekeeping (the reaper) and the delivery of the outbox of
//! back-channel logouts (the courier).

use actix::dev::ToEnvelope;
use actix::{Actor, Addr, Handler, MailboxError, Message};

use crate::metrics::Metrics;

pub mod cookie_validator;
pub mod courier;
pub mod federation_directory;
pub mod hasher;
pub mod peer_sessions;
pub mod reaper;
pub mod ticket_issuer;
pub mod token_translator;

/// An actor whose mailbox the metrics watch, under its name.
pub trait Metered: Actor {
    /// The `actor` label of its metrics.
    const NAME: &'static str;
}

/// Sends `msg` to `addr` and waits for the answer, counted meanwhile in
/// `baa_actor_mailbox_depth` and timed into `baa_actor_handling_seconds`
/// (actix shows no mailbox's length, so the sender keeps the count).
pub async fn ask<A, M>(metrics: &Metrics, addr: &Addr<A>, msg: M) -> Result<M::Result, MailboxError>
where
    A: Metered + Handler<M>,
    A::Context: ToEnvelope<A, M>,
    M: Message + Send + 'static,
    M::Result: Send,
{
    let depth = metrics.actor_mailbox_depth.with_label_values(&[A::NAME]);
    depth.inc();
    // Given back also when the caller stops waiting (its request ended).
    let _waiting = Waiting(depth);
    let _timer = metrics
        .actor_handling
        .with_label_values(&[A::NAME])
        .start_timer();
    addr.send(msg).await
}

/// One message in an actor's count, until dropped.
struct Waiting(prometheus::IntGauge);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.dec();
    }
}
