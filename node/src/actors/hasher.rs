//! A SyncArbiter pool that hashes passwords with argon2id (OWASP parameters:
//! m = 19 MiB, t = 2, p = 1), so hashing never blocks the async workers; and
//! [`Hashers`], its handle with a bounded queue: a flood of sign-ins gets
//! "busy" at once instead of waiting behind each other without end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::{Actor, Addr, Handler, Message, SyncArbiter, SyncContext};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;

/// Hashes and verifies passwords on dedicated threads.
pub struct PasswordHasher;

impl Actor for PasswordHasher {
    type Context = SyncContext<Self>;
}

/// Hash a password; the result is a PHC string. Deliberately not `Debug`:
/// the message holds a secret.
#[derive(Message)]
#[rtype(result = "Result<String, String>")]
pub struct HashPassword(pub String);

/// Verify a password against a PHC string.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct VerifyPassword {
    /// The candidate password.
    pub password: String,
    /// The stored PHC string.
    pub hash: String,
}

/// argon2id with the OWASP-recommended parameters (the crate's defaults).
fn argon2() -> Argon2<'static> {
    Argon2::default()
}

/// Hashes `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Checks `password` against a stored PHC string.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| argon2().verify_password(password.as_bytes(), &h).is_ok())
}

impl Handler<HashPassword> for PasswordHasher {
    type Result = Result<String, String>;

    fn handle(&mut self, msg: HashPassword, _: &mut Self::Context) -> Self::Result {
        hash_password(&msg.0)
    }
}

impl Handler<VerifyPassword> for PasswordHasher {
    type Result = bool;

    fn handle(&mut self, msg: VerifyPassword, _: &mut Self::Context) -> Self::Result {
        verify_password(&msg.password, &msg.hash)
    }
}

/// Starts a pool of `threads` hashers.
pub fn start(threads: usize) -> Addr<PasswordHasher> {
    SyncArbiter::start(threads.max(1), || PasswordHasher)
}

/// The pool's queue is full: the caller should answer "busy, retry".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The hashing pool with at most `capacity` requests queued or running.
#[derive(Clone)]
pub struct Hashers {
    addr: Addr<PasswordHasher>,
    pending: Arc<AtomicUsize>,
    capacity: usize,
}

/// A place in the queue, given back when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Hashers {
    /// `threads` hashers taking at most `capacity` requests at a time.
    pub fn start(threads: usize, capacity: usize) -> Self {
        Self {
            addr: start(threads),
            pending: Arc::new(AtomicUsize::new(0)),
            capacity: capacity.max(1),
        }
    }

    /// Takes a place in the queue, if one is free.
    fn slot(&self) -> Result<Slot, Busy> {
        let taken = self.pending.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.pending.clone());
        if taken >= self.capacity {
            return Err(Busy);
        }
        Ok(slot)
    }

    /// Hashes `password` (a PHC string, or why not), or `Busy`.
    pub async fn hash(&self, password: String) -> Result<Result<String, String>, Busy> {
        let _slot = self.slot()?;
        Ok(self
            .addr
            .send(HashPassword(password))
            .await
            .unwrap_or_else(|e| Err(format!("password hasher unavailable: {e}"))))
    }

    /// Whether `password` matches `hash`, or `Busy`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, Busy> {
        let _slot = self.slot()?;
        Ok(self
            .addr
            .send(VerifyPassword { password, hash })
            .await
            .unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L8: past its capacity the queue answers busy at once rather than
    /// growing; places come back as requests finish.
    #[actix_rt::test]
    async fn l8_the_hashing_queue_is_bounded() {
        let hashers = Hashers::start(1, 2);
        let h = hash_password("pw").unwrap();
        let results =
            futures::future::join_all((0..10).map(|_| hashers.verify("pw".into(), h.clone())))
                .await;
        let busy = results.iter().filter(|r| **r == Err(Busy)).count();
        assert_eq!(busy, 8, "{results:?}");
        assert!(results.iter().all(|r| *r == Ok(true) || *r == Err(Busy)));
        // Everything finished: the queue is empty again.
        assert_eq!(hashers.verify("pw".into(), h).await, Ok(true));
    }

    #[test]
    fn hash_then_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }
}
