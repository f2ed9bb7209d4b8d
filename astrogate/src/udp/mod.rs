//! UDP listeners: datagrams grouped into sessions, each forwarded through its own upstream
//! socket. The same stages as a TCP connection, per session:
//! receive → admit → sniff (QUIC) → route → connect → forward → record.
//!
//! A session is keyed by the client's address and port and the local address it sent to.
//! One loop per bound socket receives every datagram and hands it to its session's task; it
//! never waits on anything else, so one slow session (a name to resolve, a full upstream)
//! holds up only itself.
mod session;
mod socket;

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use arc_swap::ArcSwap;
use tokio::{
    sync::mpsc::{self, error::TrySendError},
    task::JoinHandle,
};

use crate::{config::ListenerConfig, metrics::Metrics, pipeline::Snapshot};
pub use socket::ListenSocket;

/// Datagrams a session may have queued before its task takes them; beyond, they are dropped
/// (and counted), as a full socket buffer would drop them.
const SESSION_QUEUE: usize = 256;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// What every UDP listener shares: the count of open sessions, for `max_udp_sessions`.
#[derive(Debug, Default)]
pub struct UdpSessions {
    open: AtomicUsize,
    /// Whether the cap is being hit now, so that it is logged once per episode.
    full: AtomicBool,
}

impl UdpSessions {
    pub fn new() -> Arc<UdpSessions> {
        Arc::new(UdpSessions::default())
    }

    /// Sessions open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A place for a new session, or `None` at the cap.
    fn admit(self: &Arc<Self>, cap: usize) -> Option<SessionSlot> {
        let before = self.open.fetch_add(1, Ordering::Relaxed);
        if before >= cap {
            self.open.fetch_sub(1, Ordering::Relaxed);
            if !self.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max_udp_sessions = cap,
                    "UDP session cap reached; datagrams from new sources are dropped"
                );
            }
            return None;
        }
        if self.full.swap(false, Ordering::Relaxed) {
            tracing::warn!("UDP sessions below the cap again");
        }
        Some(SessionSlot(self.clone()))
    }
}

/// A session's place under the cap, given back when the session ends.
pub struct SessionSlot(Arc<UdpSessions>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a UDP listener's sessions use.
#[derive(Clone)]
pub struct UdpContext {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub sessions: Arc<UdpSessions>,
    pub metrics: Arc<Metrics>,
}

/// One bound UDP address and the loop receiving on it.
pub struct UdpBound {
    pub listener: Arc<ArcSwap<ListenerConfig>>,
    pub local: SocketAddr,
    task: JoinHandle<()>,
}

impl UdpBound {
    /// Points this address at `listener` (after a reload); sessions keep the one they began with.
    pub fn serve(&self, listener: ListenerConfig) {
        self.listener.store(Arc::new(listener));
    }
}

impl Drop for UdpBound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` for `listener` and starts receiving. Must be called inside a Tokio runtime.
pub fn bind(addr: SocketAddr, listener: ListenerConfig, ctx: UdpContext) -> io::Result<UdpBound> {
    let socket = Arc::new(ListenSocket::bind(addr)?);
    let local = socket.local_addr();
    let listener = Arc::new(ArcSwap::from_pointee(listener));
    let task = tokio::spawn(receive_loop(socket, listener.clone(), ctx));
    Ok(UdpBound {
        listener,
        local,
        task,
    })
}

/// A session: who sent, and to which of our addresses.
type Key = (SocketAddr, SocketAddr);

async fn receive_loop(
    socket: Arc<ListenSocket>,
    listener: Arc<ArcSwap<ListenerConfig>>,
    ctx: UdpContext,
) {
    let mut sessions: HashMap<Key, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<Key>();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            received = socket.recv(&mut buf) => {
                let (n, from, to) = match received {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::debug!(error = %e, "UDP receive failed");
                        continue;
                    }
                };
                let key = (from, to);
                let datagram = buf[..n].to_vec();
                if let Some(tx) = sessions.get(&key) {
                    match tx.try_send(datagram) {
                        Ok(()) => continue,
                        Err(TrySendError::Full(_)) => {
                            ctx.metrics.udp_dropped("queue_full");
                            continue;
                        }
                        // The session just ended: this datagram starts the next one.
                        Err(TrySendError::Closed(d)) => {
                            sessions.remove(&key);
                            start(&mut sessions, key, d, &socket, &listener, &ctx, &ended_tx);
                        }
                    }
                } else {
                    start(&mut sessions, key, datagram, &socket, &listener, &ctx, &ended_tx);
                }
            }
            Some(key) = ended_rx.recv() => {
                if sessions.get(&key).is_some_and(mpsc::Sender::is_closed) {
                    sessions.remove(&key);
                }
            }
        }
    }
}

/// Admits a new session under the cap and starts its task with its first datagram.
fn start(
    sessions: &mut HashMap<Key, mpsc::Sender<Vec<u8>>>,
    key: Key,
    first: Vec<u8>,
    socket: &Arc<ListenSocket>,
    listener: &Arc<ArcSwap<ListenerConfig>>,
    ctx: &UdpContext,
    ended: &mpsc::UnboundedSender<Key>,
) {
    let snapshot = ctx.snapshot.load_full();
    let Some(slot) = ctx.sessions.admit(snapshot.settings.max_udp_sessions) else {
        ctx.metrics.udp_dropped("session_cap");
        return;
    };
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    let _ = tx.try_send(first);
    sessions.insert(key, tx);
    let session = session::Session {
        client: key.0,
        local: key.1,
        listener: listener.load_full(),
        snapshot,
        socket: socket.clone(),
        metrics: ctx.metrics.clone(),
        slot,
    };
    let ended = ended.clone();
    tokio::spawn(async move {
        session.run(rx).await;
        let _ = ended.send(key);
    });
}
