//! Faults the tests inject: kill, clean stop and restart of a node, signals
//! (pause and resume), and partitions (both ways or one way) through the
//! per-node proxies.

use super::*;

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

impl Cluster {
    /// SIGKILL, then reap.
    pub fn kill(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGTERM, then wait for the exit (panics if the node does not stop in time).
    pub async fn stop(&mut self, id: NodeId) -> ExitStatus {
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        signal(child.id(), libc::SIGTERM);
        let end = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("waiting for node") {
                return status;
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not exit within {STOP_DEADLINE:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a stopped node again with the same config and data, and waits for `/healthz`.
    pub async fn restart(&mut self, id: NodeId) {
        self.spawn(id);
        self.wait_healthy(id).await;
    }

    /// Cuts every cluster connection between `side_a` and `side_b` (both directions).
    /// Returns once existing connections across the cut are reset.
    pub async fn partition(&self, side_a: &[NodeId], side_b: &[NodeId]) {
        let a: BTreeSet<NodeId> = side_a.iter().copied().collect();
        let b: BTreeSet<NodeId> = side_b.iter().copied().collect();
        assert!(a.is_disjoint(&b), "partition sides overlap: {a:?} {b:?}");
        for id in &a {
            self.node(*id).proxy.set_blocked(b.clone()).await;
        }
        for id in &b {
            self.node(*id).proxy.set_blocked(a.clone()).await;
        }
    }

    /// Cuts `id` off from every other node.
    pub async fn isolate(&self, id: NodeId) {
        let others: Vec<NodeId> = self.ids().into_iter().filter(|&o| o != id).collect();
        self.partition(&[id], &others).await;
    }

    /// Refuses (and resets) the cluster connections node `from` opens to
    /// node `to`. `to` still reaches `from`, and gets answers on its own
    /// connections: Raft RPCs from `from` to `to` are lost, those from `to`
    /// to `from` are not. Undone by [`Cluster::heal`].
    pub async fn cut_one_way(&self, from: NodeId, to: NodeId) {
        assert_ne!(from, to, "a node cannot be cut from itself");
        let proxy = &self.node(to).proxy;
        let mut blocked = proxy.blocked();
        blocked.insert(from);
        proxy.set_blocked(blocked).await;
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers.
    pub fn pause(&self, id: NodeId) {
        let pid = self
            .node(id)
            .pid()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        signal(pid, libc::SIGSTOP);
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&self, id: NodeId) {
        let pid = self
            .node(id)
            .pid()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        signal(pid, libc::SIGCONT);
    }

    /// Sets node `id`'s wall clock `offset_ms` ahead of the system's (behind
    /// when negative; 0 undoes it) and, when the node runs, waits until it
    /// says the offset is in force. Only debug builds of `baa` follow it
    /// (see `node/src/clock.rs`); the offset outlives restarts.
    pub async fn set_clock_offset(&self, id: NodeId, offset_ms: i64) {
        let node = self.node(id);
        let path = node.clock_offset_path();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, offset_ms.to_string())
            .and_then(|()| std::fs::rename(&tmp, &path))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if node.child.is_none() {
            return;
        }
        let seen = path.with_extension("seen");
        let want = offset_ms.to_string();
        poll_until(
            CONVERGE_DEADLINE,
            &format!("node {id} running {offset_ms} ms off the system clock"),
            || async { (std::fs::read_to_string(&seen).ok()? == want).then_some(()) },
        )
        .await;
    }

    /// Kills node `id` if it runs and forgets it: it no longer counts in
    /// [`Cluster::ids`] (its directory stays for reading). For a node that
    /// has left the membership.
    pub fn remove_node(&mut self, id: NodeId) {
        if self.node(id).child.is_some() {
            self.kill(id);
        }
        self.nodes.remove(&id);
    }

    /// Removes every partition.
    pub async fn heal(&self) {
        for node in self.nodes.values() {
            node.proxy.set_blocked(BTreeSet::new()).await;
        }
    }
}
