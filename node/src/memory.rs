//! Gives the heap that a burst of load freed back to the operating system.
//!
//! glibc's allocator returns freed memory to the system only from the top of
//! each arena; pages freed in the middle stay resident until `malloc_trim`
//! releases them. After a load of logins most of what sled and the request
//! path allocated is free again, yet the node's resident size would stay at
//! its peak for good. A trim every few seconds costs a walk over the free
//! lists and gives back every free page; pages that still hold a live chunk
//! stay (see BENCHMARKS.md on the memory a login leaves).

use std::time::Duration;

/// How often the heap is trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Trims the heap every [`TRIM_EVERY`] on a blocking thread, for as long as
/// the node runs.
pub fn start_trimming() {
    actix::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            // A failed join means the runtime is shutting down.
            if tokio::task::spawn_blocking(trim).await.is_err() {
                return;
            }
        }
    });
}

/// Releases free heap pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists; it takes
    // the arena locks itself and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}
