//! Work that reads the whole state (a snapshot build, a rebuild's copy, a
//! digest) on a thread of its own at a lower CPU and I/O priority, as
//! RocksDB runs its compactions: on a small machine such work would otherwise take the CPU
//! time the writes it must not hold up need, and their latency's tail
//! would grow with the state.

/// How much lower than the node's threads such work runs (a nice value).
const NICER_BY: libc::c_int = 10;

/// The I/O priority of such work: the best-effort class at its lowest
/// level (`IOPRIO_PRIO_VALUE(IOPRIO_CLASS_BE, 7)`), so that the disk's
/// scheduler serves the log's syncs first without starving the work.
const LOW_IO_PRIORITY: libc::c_long = (2 << 13) | 7;

/// Runs `work` on a fresh thread named `name`, at a lower CPU priority,
/// and answers its result. The thread ends with the work, so its priority
/// never has to be raised back (which an unprivileged process may not do).
pub async fn run<T, F>(name: &str, work: F) -> std::io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        })?;
    rx.await
        .map_err(|_| std::io::Error::other(format!("the {name} thread stopped without a result")))
}

/// Lowers the calling thread's CPU priority by [`NICER_BY`]; a failure only
/// leaves it where it was.
fn lower_priority() {
    // SAFETY: gettid takes no arguments; on Linux setpriority with
    // PRIO_PROCESS and a thread id changes that thread alone, and reads or
    // writes no memory of ours.
    let rc = unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, now + NICER_BY)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a background thread's priority");
    }
    // SAFETY: ioprio_set(IOPRIO_WHO_PROCESS, 0, prio) sets the calling
    // thread's I/O priority and reads or writes no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, LOW_IO_PRIORITY) };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower a background thread's I/O priority");
    }
}

#[cfg(test)]
mod tests {
    /// The work runs, answers, and at a lower CPU and I/O priority than
    /// its caller.
    #[tokio::test]
    async fn work_runs_at_a_lower_priority() {
        // SAFETY: as in `lower_priority`; ioprio_get reads the calling
        // thread's I/O priority.
        let ours = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
        let (cpu, io) = super::run("test-background", || unsafe {
            (
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t),
                libc::syscall(libc::SYS_ioprio_get, 1, 0),
            )
        })
        .await
        .unwrap();
        assert_eq!(cpu, (ours + super::NICER_BY).min(19));
        assert_eq!(io, super::LOW_IO_PRIORITY);
    }
}
