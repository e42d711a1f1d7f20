//! A TCP proxy in front of each node's cluster port: the fault-injection point.
//!
//! Every node binds its outgoing cluster connections to `127.0.0.(10+id)`, so
//! the proxy knows which node a connection comes from by its peer address. A
//! proxy holds a set of *blocked* source nodes: new connections from them are
//! refused and existing ones are reset.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baa_proto::model::NodeId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The loopback address node `id` binds its outgoing cluster connections to.
pub fn source_ip(id: NodeId) -> Ipv4Addr {
    assert!(
        (1..=245).contains(&id),
        "node ids 1..=245 fit the 127.0.0.(10+id) scheme"
    );
    Ipv4Addr::new(127, 0, 0, 10 + id as u8)
}

/// The node a peer address belongs to, if it is one of the `127.0.0.(10+id)` addresses.
pub fn node_of(ip: IpAddr) -> Option<NodeId> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 127 && o[1] == 0 && o[2] == 0 && o[3] > 10).then(|| NodeId::from(o[3] - 10))
        }
        IpAddr::V6(_) => None,
    }
}

struct Conn {
    source: Option<NodeId>,
    task: JoinHandle<()>,
}

struct Shared {
    target: SocketAddr,
    blocked: watch::Sender<BTreeSet<NodeId>>,
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
    /// Connections refused because their source was blocked.
    refused: AtomicU64,
}

/// A running proxy; dropping it stops accepting and resets every connection.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every accepted connection to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (blocked, _) = watch::channel(BTreeSet::new());
        let shared = Arc::new(Shared {
            target,
            blocked,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy {
            addr,
            shared,
            accept_task,
        })
    }

    /// The address peers dial (the node's `cluster_advertise`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's real cluster listener.
    pub fn target(&self) -> SocketAddr {
        self.shared.target
    }

    /// The source nodes currently blocked.
    pub fn blocked(&self) -> BTreeSet<NodeId> {
        self.shared.blocked.borrow().clone()
    }

    /// How many connections were refused so far because their source was blocked.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// Number of connections currently being forwarded.
    pub fn open_connections(&self) -> usize {
        lock(&self.shared.conns).len()
    }

    /// Replaces the blocked set. Returns once every existing connection from a
    /// now-blocked source has been reset.
    pub async fn set_blocked(&self, blocked: BTreeSet<NodeId>) {
        self.shared.blocked.send_replace(blocked.clone());
        let doomed: Vec<JoinHandle<()>> = {
            let mut conns = lock(&self.shared.conns);
            let ids: Vec<u64> = conns
                .iter()
                .filter(|(_, c)| c.source.is_some_and(|s| blocked.contains(&s)))
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| conns.remove(&id))
                .map(|c| c.task)
                .collect()
        };
        for mut task in doomed {
            // Each task watches the blocked set and resets its sockets; abort as a fallback.
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        for (_, c) in lock(&self.shared.conns).drain() {
            c.task.abort();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (inbound, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let source = node_of(peer.ip());
        if source.is_some_and(|s| shared.blocked.borrow().contains(&s)) {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            reset(&inbound);
            drop(inbound);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        // Hold the registry lock while spawning so the task cannot remove itself first.
        let mut conns = lock(&shared.conns);
        let task = tokio::spawn(forward(id, inbound, source, shared.clone()));
        conns.insert(id, Conn { source, task });
    }
}

async fn forward(id: u64, mut inbound: TcpStream, source: Option<NodeId>, shared: Arc<Shared>) {
    let mut blocked_rx = shared.blocked.subscribe();
    let is_blocked = |set: &BTreeSet<NodeId>| source.is_some_and(|s| set.contains(&s));
    if let Ok(mut outbound) = TcpStream::connect(shared.target).await {
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        let cut = async {
            loop {
                if is_blocked(&blocked_rx.borrow_and_update()) {
                    return;
                }
                if blocked_rx.changed().await.is_err() {
                    // The proxy is gone: never return, the task gets aborted.
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            _ = cut => {
                reset(&inbound);
                reset(&outbound);
            }
        }
    }
    lock(&shared.conns).remove(&id);
}

/// Makes the coming close send RST instead of FIN: a partition is abrupt.
fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn connect_from(node: NodeId, to: SocketAddr) -> std::io::Result<TcpStream> {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(source_ip(node).into(), 0))?;
        sock.connect(to).await
    }

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<()> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    #[test]
    fn ip_mapping() {
        assert_eq!(node_of(source_ip(3).into()), Some(3));
        assert_eq!(node_of(Ipv4Addr::LOCALHOST.into()), None);
    }

    #[tokio::test]
    async fn blocks_and_heals() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut a = connect_from(1, proxy.addr()).await.unwrap();
        let mut b = connect_from(2, proxy.addr()).await.unwrap();
        round_trip(&mut a).await.unwrap();
        round_trip(&mut b).await.unwrap();

        proxy.set_blocked([1].into()).await;
        // The existing connection from node 1 is reset; node 2's survives.
        assert!(round_trip(&mut a).await.is_err());
        round_trip(&mut b).await.unwrap();
        // New connections from node 1 are refused.
        let refused = match connect_from(1, proxy.addr()).await {
            Err(_) => true,
            Ok(mut s) => round_trip(&mut s).await.is_err(),
        };
        assert!(refused);
        // Unknown sources pass.
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut c).await.unwrap();

        proxy.set_blocked(BTreeSet::new()).await;
        let mut a2 = connect_from(1, proxy.addr()).await.unwrap();
        round_trip(&mut a2).await.unwrap();
    }
}
