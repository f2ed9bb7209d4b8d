//! UDP listeners: datagrams grouped into sessions, each forwarded through its own upstream
//! socket. The same stages as a TCP connection, per session:
//! receive → admit → sniff (QUIC) → route → connect → forward → record.
//!
//! A session is keyed by the client's address and port and the local address it sent to.
//! One loop per bound socket receives every datagram and hands it to its session's task; it
//! never waits on anything else, so one slow session (a name to resolve, a full upstream)
//! holds up only itself.
pub mod fast;
mod flow;
mod session;
mod socket;
mod tunnel;

use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::{
    sync::mpsc::{self, error::TrySendError},
    task::JoinHandle,
};

use crate::{config::ListenerConfig, metrics::Metrics, pipeline::Snapshot, tunnel::hub::Hub};
use flow::Flow;
pub use socket::ListenSocket;

/// Datagrams a session may have queued before its task takes them; beyond, they are dropped
/// (and counted), as a full socket buffer would drop them.
const SESSION_QUEUE: usize = 256;
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams received per system call, at most.
const BATCH: usize = 32;

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
    /// For `tunnel:NAME` targets.
    pub tunnels: Arc<Hub>,
    /// The kernel path for established sessions, when loaded.
    pub fast: Arc<ArcSwapOption<fast::UdpFastPath>>,
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

/// A session as the receive loop sees it.
enum Entry {
    /// Sniffing, routing or connecting: datagrams go to the session's task, which holds them.
    Starting {
        tx: mpsc::Sender<Vec<u8>>,
        /// Datagrams that came after the task stopped taking them (it is handing over to the
        /// loop); they follow the held ones, in order.
        waiting: Vec<Vec<u8>>,
    },
    /// Forwarding: the loop sends each datagram straight to the upstream, without a copy or a
    /// hop to another task.
    Forwarding(Arc<Flow>),
}

/// What a session's task tells its receive loop.
enum Control {
    /// The upstream is connected: send these held datagrams, then forward directly, in the
    /// kernel when the session's directions are given.
    Ready(
        Key,
        Arc<Flow>,
        Vec<Vec<u8>>,
        Option<Box<(Arc<fast::UdpFastPath>, fast::SessionFlows)>>,
    ),
    /// The session is over.
    Ended(Key),
}

async fn receive_loop(
    socket: Arc<ListenSocket>,
    listener: Arc<ArcSwap<ListenerConfig>>,
    ctx: UdpContext,
) {
    let mut sessions: HashMap<Key, Entry> = HashMap::new();
    let (control_tx, mut control) = mpsc::unbounded_channel::<Control>();
    let up = ctx.metrics.udp_datagrams("up");
    let mut bufs = vec![vec![0u8; MAX_DATAGRAM]; BATCH];
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        tokio::select! {
            received = socket.recv_batch(&mut bufs, &mut batch) => {
                if let Err(e) = received {
                    tracing::debug!(error = %e, "UDP receive failed");
                    continue;
                }
                let mut i = 0;
                while i < batch.len() {
                    let r = batch[i];
                    let key = (r.from, r.to);
                    // A forwarding session's run of datagrams in this batch goes up in one call.
                    if let (0, Some(Entry::Forwarding(flow))) = (r.segment, sessions.get(&key)) {
                        let run = batch[i..]
                            .iter()
                            .take_while(|b| b.segment == 0 && (b.from, b.to) == key)
                            .count();
                        if run > 1 {
                            let datagrams: Vec<&[u8]> = (i..i + run)
                                .map(|k| &bufs[k][..batch[k].len])
                                .collect();
                            let sent = flow.send_up_many(&datagrams);
                            up.inc_by(sent);
                            for _ in sent..run as u64 {
                                ctx.metrics.udp_dropped("upstream_busy");
                            }
                            i += run;
                            continue;
                        }
                    }
                    i += 1;
                    let data = &bufs[i - 1][..r.len];
                    let segment = usize::from(r.segment);
                    if segment > 0 && data.len() > segment {
                        // Coalesced by GRO: a forwarding session sends it on as it came;
                        // anything else takes the datagrams one by one.
                        if let Some(Entry::Forwarding(flow)) = sessions.get(&key) {
                            match flow.send_up_segments(data, r.segment) {
                                Ok(n) => {
                                    up.inc_by(n);
                                }
                                Err(why) => ctx.metrics.udp_dropped(why),
                            }
                            continue;
                        }
                        for d in data.chunks(segment) {
                            one(&mut sessions, key, d, &socket, &listener, &ctx, &control_tx, &up);
                        }
                    } else {
                        one(&mut sessions, key, data, &socket, &listener, &ctx, &control_tx, &up);
                    }
                }
            }
            Some(message) = control.recv() => match message {
                Control::Ready(key, flow, held, kernel) => {
                    let waiting = match sessions.remove(&key) {
                        Some(Entry::Starting { waiting, .. }) => waiting,
                        _ => Vec::new(),
                    };
                    for d in held.iter().chain(&waiting) {
                        match flow.send_up(d) {
                            Ok(()) => {
                                up.inc();
                            }
                            Err(why) => ctx.metrics.udp_dropped(why),
                        }
                    }
                    // Only now, so that what was held goes up before anything the kernel
                    // forwards. A datagram already queued on the listening socket may still
                    // follow one the kernel sent; UDP promises no order.
                    if let Some((fast, flows)) = kernel.map(|k| *k) {
                        if fast.install(&flows) {
                            let _ = flow.kernel.set(flows);
                        }
                    }
                    sessions.insert(key, Entry::Forwarding(flow));
                }
                Control::Ended(key) => {
                    // Datagrams that came while it was ending start the next session.
                    if let Some(Entry::Starting { waiting, .. }) = sessions.remove(&key) {
                        if !waiting.is_empty() {
                            start(&mut sessions, key, waiting, &socket, &listener, &ctx, &control_tx);
                        }
                    }
                }
            }
        }
    }
}

/// Delivers one datagram to its session, starting one for a new source.
#[allow(clippy::too_many_arguments)]
fn one(
    sessions: &mut HashMap<Key, Entry>,
    key: Key,
    datagram: &[u8],
    socket: &Arc<ListenSocket>,
    listener: &Arc<ArcSwap<ListenerConfig>>,
    ctx: &UdpContext,
    control: &mpsc::UnboundedSender<Control>,
    up: &prometheus_client::metrics::counter::Counter,
) {
    match sessions.get_mut(&key) {
        Some(Entry::Forwarding(flow)) => match flow.send_up(datagram) {
            Ok(()) => {
                up.inc();
            }
            Err(why) => ctx.metrics.udp_dropped(why),
        },
        Some(Entry::Starting { tx, waiting }) => {
            if !waiting.is_empty() {
                hold(waiting, datagram.to_vec(), ctx);
                return;
            }
            match tx.try_send(datagram.to_vec()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => ctx.metrics.udp_dropped("queue_full"),
                Err(TrySendError::Closed(d)) => hold(waiting, d, ctx),
            }
        }
        None => {
            let first = vec![datagram.to_vec()];
            start(sessions, key, first, socket, listener, ctx, control);
        }
    }
}

/// Keeps a datagram for a session that is handing over to the loop, within the queue's size.
fn hold(waiting: &mut Vec<Vec<u8>>, datagram: Vec<u8>, ctx: &UdpContext) {
    if waiting.len() < SESSION_QUEUE {
        waiting.push(datagram);
    } else {
        ctx.metrics.udp_dropped("queue_full");
    }
}

/// Admits a new session under the cap and starts its task with its first datagrams.
fn start(
    sessions: &mut HashMap<Key, Entry>,
    key: Key,
    first: Vec<Vec<u8>>,
    socket: &Arc<ListenSocket>,
    listener: &Arc<ArcSwap<ListenerConfig>>,
    ctx: &UdpContext,
    control: &mpsc::UnboundedSender<Control>,
) {
    let snapshot = ctx.snapshot.load_full();
    let Some(slot) = ctx.sessions.admit(snapshot.settings.max_udp_sessions) else {
        for _ in &first {
            ctx.metrics.udp_dropped("session_cap");
        }
        return;
    };
    let (tx, rx) = mpsc::channel(SESSION_QUEUE);
    for d in first {
        let _ = tx.try_send(d);
    }
    sessions.insert(
        key,
        Entry::Starting {
            tx,
            waiting: Vec::new(),
        },
    );
    let listener = listener.load_full();
    let fast = ctx
        .fast
        .load_full()
        .filter(|_| listener.data_path.wants_kernel());
    let session = session::Session {
        key,
        fast,
        listener,
        snapshot,
        socket: socket.clone(),
        metrics: ctx.metrics.clone(),
        tunnels: ctx.tunnels.clone(),
        control: control.clone(),
        slot,
    };
    tokio::spawn(session.run(rx));
}
