//! A SyncArbiter pool that hashes passwords with argon2id (OWASP parameters:
//! m = 19 MiB, t = 2, p = 1), so hashing never blocks the async workers; and
//! [`Hashers`], its handle with a bounded queue: a flood of sign-ins gets
//! "busy" at once instead of waiting behind each other without end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix::{Actor, Addr, Handler, Message, SyncArbiter, SyncContext};
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

/// Hashes and verifies passwords on dedicated threads; each keeps its
/// argon2 memory (19 MiB) from one password to the next, so the node's
/// resident memory is one such block per thread, not what the allocator
/// happens to keep of thousands of them.
#[derive(Default)]
pub struct PasswordHasher {
    work: Work,
}

impl super::Metered for PasswordHasher {
    const NAME: &'static str = "password_hasher";
}

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

/// argon2 work with its memory blocks kept between calls.
#[derive(Default)]
struct Work {
    memory: Vec<Block>,
}

impl Work {
    /// The raw hash of `password` with `salt` into `out`, in the kept memory.
    fn raw(
        &mut self,
        argon: &Argon2<'_>,
        password: &[u8],
        salt: &[u8],
        out: &mut [u8],
    ) -> Result<(), argon2::Error> {
        let blocks = argon.params().block_count();
        if self.memory.len() < blocks {
            self.memory.resize(blocks, Block::default());
        }
        argon.hash_password_into_with_memory(password, salt, out, &mut self.memory[..blocks])
    }

    /// A PHC string of `password` with a fresh random salt.
    fn hash(&mut self, password: &str) -> Result<String, String> {
        let argon = argon2();
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_buf = [0u8; 64];
        let salt_bytes = salt.decode_b64(&mut salt_buf).map_err(|e| e.to_string())?;
        let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
            self.raw(&argon, password.as_bytes(), salt_bytes, out)
                .map_err(|_| argon2::password_hash::Error::Password)
        })
        .map_err(|e| e.to_string())?;
        let phc = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(argon.params()).map_err(|e| e.to_string())?,
            salt: Some(salt.as_salt()),
            hash: Some(output),
        };
        Ok(phc.to_string())
    }

    /// Whether `password` matches the PHC string `hash` (with the
    /// parameters the string names).
    fn verify(&mut self, password: &str, hash: &str) -> bool {
        let Ok(phc) = PasswordHash::new(hash) else {
            return false;
        };
        let (Some(expected), Some(salt)) = (phc.hash, phc.salt) else {
            return false;
        };
        let Ok(params) = Params::try_from(&phc) else {
            return false;
        };
        let Ok(algorithm) = Algorithm::try_from(phc.algorithm) else {
            return false;
        };
        let version = match phc.version.map(Version::try_from).transpose() {
            Ok(v) => v.unwrap_or_default(),
            Err(_) => return false,
        };
        let mut salt_buf = [0u8; 64];
        let Ok(salt_bytes) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        let argon = Argon2::new(algorithm, version, params);
        let mut out = vec![0u8; expected.len()];
        self.raw(&argon, password.as_bytes(), salt_bytes, &mut out)
            .is_ok()
            && bool::from(expected.as_bytes().ct_eq(&out))
    }
}

/// Hashes `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    Work::default().hash(password)
}

/// Checks `password` against a stored PHC string.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Work::default().verify(password, hash)
}

impl Handler<HashPassword> for PasswordHasher {
    type Result = Result<String, String>;

    fn handle(&mut self, msg: HashPassword, _: &mut Self::Context) -> Self::Result {
        self.work.hash(&msg.0)
    }
}

impl Handler<VerifyPassword> for PasswordHasher {
    type Result = bool;

    fn handle(&mut self, msg: VerifyPassword, _: &mut Self::Context) -> Self::Result {
        self.work.verify(&msg.password, &msg.hash)
    }
}

/// Starts a pool of `threads` hashers.
pub fn start(threads: usize) -> Addr<PasswordHasher> {
    SyncArbiter::start(threads.max(1), PasswordHasher::default)
}

/// The pool's queue is full: the caller should answer "busy, retry".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// The hashing pool with at most `capacity` requests queued or running.
#[derive(Clone)]
pub struct Hashers {
    addr: Addr<PasswordHasher>,
    metrics: Arc<crate::metrics::Metrics>,
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
    pub fn start(threads: usize, capacity: usize, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            addr: start(threads),
            metrics,
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
        Ok(
            super::ask(&self.metrics, &self.addr, HashPassword(password))
                .await
                .unwrap_or_else(|e| Err(format!("password hasher unavailable: {e}"))),
        )
    }

    /// Whether `password` matches `hash`, or `Busy`.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, Busy> {
        let _slot = self.slot()?;
        Ok(
            super::ask(&self.metrics, &self.addr, VerifyPassword { password, hash })
                .await
                .unwrap_or(false),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// L8: past its capacity the queue answers busy at once rather than
    /// growing; places come back as requests finish.
    #[actix_rt::test]
    async fn l8_the_hashing_queue_is_bounded() {
        let hashers = Hashers::start(1, 2, crate::metrics::Metrics::new());
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

    #[test]
    fn hashes_of_the_argon2_crate_and_other_parameters_verify() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        // Made by the crate's own code path (as earlier releases did), and
        // with smaller parameters: both verify with the kept memory.
        let mut work = Work::default();
        for params in [
            Params::default(),
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        ] {
            let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
            let salt = SaltString::generate(&mut OsRng);
            let h = argon.hash_password(b"pw", &salt).unwrap().to_string();
            assert!(work.verify("pw", &h), "{h}");
            assert!(!work.verify("px", &h));
        }
        // And ours verify with the crate's.
        let ours = work.hash("pw").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(argon2().verify_password(b"pw", &parsed).is_ok());
    }
}
