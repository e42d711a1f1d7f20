//! The wall clock, in one place: every time the node stamps on a command or
//! compares against an expiry comes from here (apply never reads it).
//!
//! Debug builds (the ones the cluster tests run) can skew it: a node started
//! with `BAA_TEST_CLOCK_OFFSET_FILE` reads its wall clock as the system's
//! plus the milliseconds that file holds, so the fault schedules can set one
//! node's clock ahead or behind the others'. Release builds have no offset.
//! Raft's timers are monotonic (`Instant`) and never skewed, as with NTP.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    skewed(real)
}

#[cfg(not(debug_assertions))]
fn skewed(real: u64) -> u64 {
    real
}

#[cfg(debug_assertions)]
fn skewed(real: u64) -> u64 {
    real.saturating_add_signed(test_offset::OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed))
}

/// Starts following `$BAA_TEST_CLOCK_OFFSET_FILE`, when it is set, in a
/// debug build; does nothing otherwise.
pub fn follow_test_offset() {
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os("BAA_TEST_CLOCK_OFFSET_FILE") {
        test_offset::follow(std::path::PathBuf::from(path));
    }
}

#[cfg(debug_assertions)]
mod test_offset {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration;

    /// The offset now in force, in milliseconds.
    pub(super) static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

    /// How often the file is read again.
    const EVERY: Duration = Duration::from_millis(50);

    /// Reads `path` every [`EVERY`] (absent or unreadable: no offset) and,
    /// after each change, writes the offset in force to `<path>.seen`, so a
    /// test knows when the node's clock has moved.
    pub(super) fn follow(path: PathBuf) {
        let seen = path.with_extension("seen");
        let spawned = std::thread::Builder::new()
            .name("test-clock".into())
            .spawn(move || {
                let mut last = None;
                loop {
                    let want = read(&path);
                    if last != Some(want) {
                        OFFSET_MS.store(want, Ordering::Relaxed);
                        tracing::warn!(offset_ms = want, "test clock offset in force");
                        acknowledge(&seen, want);
                        last = Some(want);
                    }
                    std::thread::sleep(EVERY);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not follow the test clock offset");
        }
    }

    fn read(path: &Path) -> i64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    fn acknowledge(seen: &Path, offset: i64) {
        let tmp = seen.with_extension("seen.tmp");
        let written =
            std::fs::write(&tmp, offset.to_string()).and_then(|()| std::fs::rename(&tmp, seen));
        if let Err(e) = written {
            tracing::error!(error = %e, "could not acknowledge the test clock offset");
        }
    }
}
