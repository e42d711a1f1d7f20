//! Polling instead of sleeping: retry a probe until it yields a value or a
//! deadline passes.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long to wait between two probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(75);

/// Calls `probe` every [`POLL_INTERVAL`] until it returns `Some`, and returns that
/// value. Panics naming `what` if `deadline` passes first.
pub async fn poll_until<T, F, Fut>(deadline: Duration, what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match try_poll_until(deadline, probe).await {
        Some(v) => v,
        None => panic!("timed out after {deadline:?} waiting for: {what}"),
    }
}

/// Like [`poll_until`] but returns `None` instead of panicking (for benchmarks,
/// or to check that something does *not* happen).
pub async fn try_poll_until<T, F, Fut>(deadline: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        // A probe that hangs must not outlive the deadline.
        let left = end.saturating_duration_since(Instant::now());
        if let Ok(Some(v)) = tokio::time::timeout(left.max(Duration::from_millis(1)), probe()).await
        {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_first_some() {
        let n = AtomicU32::new(0);
        let v = poll_until(Duration::from_secs(5), "three probes", || async {
            let k = n.fetch_add(1, Ordering::SeqCst);
            (k >= 2).then_some(k)
        })
        .await;
        assert_eq!(v, 2);
    }

    #[tokio::test]
    async fn gives_up() {
        let r: Option<()> = try_poll_until(Duration::from_millis(200), || async { None }).await;
        assert!(r.is_none());
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for: never")]
    async fn panics_with_what() {
        poll_until(Duration::from_millis(100), "never", || async { None::<()> }).await;
    }
}
