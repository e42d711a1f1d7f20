//! Node-local rate limits in front of what an anonymous client can make the
//! cluster write: a flood from one address (or for one client) is answered
//! 429 with `Retry-After` on this node instead of growing the Raft log.
//! Cluster-wide throttling of sign-ins goes through Raft (it must hold on
//! every node); these limits are about cost, so each node keeps its own.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::error::NodeError;

/// Checks between two prunings of idle keys, so memory follows the
/// addresses seen lately, not every address ever seen.
const PRUNE_EVERY: u64 = 4_096;

/// One keyed limit: `burst` at once, then one more every `every`.
pub struct Limit<K: Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    checks: AtomicU64,
}

impl<K: Hash + Eq + Clone> Limit<K> {
    /// A limit of `burst` requests at once, refilled one per `every`.
    pub fn new(burst: u32, every: Duration) -> Self {
        let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(every.max(Duration::from_millis(1)))
            .map_or_else(|| Quota::per_second(burst), |q| q.allow_burst(burst));
        Self {
            limiter: RateLimiter::keyed(quota),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one from `key`'s allowance, or says when to come back.
    pub fn check(&self, key: &K) -> Result<(), NodeError> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            NodeError::RateLimited {
                retry_after_s: wait.as_secs().max(1),
            }
        })
    }
}

/// The limits of one node.
pub struct Limits {
    /// Device authorizations started from one source address.
    pub device_per_source: Limit<String>,
    /// Device authorizations started for one client, from anywhere.
    pub device_per_client: Limit<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // A person starts a device sign-in now and then; a script that
            // starts hundreds is not a person.
            device_per_source: Limit::new(20, Duration::from_secs(6)),
            device_per_client: Limit::new(200, Duration::from_millis(200)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_gets_its_burst_then_waits_and_others_are_apart() {
        let limit = Limit::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            limit.check(&"a".to_string()).unwrap();
        }
        match limit.check(&"a".to_string()) {
            Err(NodeError::RateLimited { retry_after_s }) => {
                assert!((1..=60).contains(&retry_after_s), "{retry_after_s}")
            }
            other => panic!("{other:?}"),
        }
        limit.check(&"b".to_string()).unwrap();
    }
}
