//! A SyncArbiter pool that hashes passwords with argon2id (OWASP parameters:
//! m = 19 MiB, t = 2, p = 1), so hashing never blocks the async workers.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_then_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong horse", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }
}
