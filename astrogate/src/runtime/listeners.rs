//! Listening sockets and their accept loops (the accept stage).
use std::{io, net::SocketAddr, os::fd::AsRawFd, sync::Arc};

use arc_swap::{ArcSwap, ArcSwapOption};
use socket2::{Domain, Socket, Type};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::task::TaskTracker;

use super::backoff::AcceptBackoff;
use crate::{
    config::ListenerConfig,
    forward::{kernel::KernelPath, sockopt::save_syn},
    metrics::Metrics,
    pipeline::{self, admit::Limiter, record, Shared, Snapshot},
    tunnel::hub::Hub,
};

/// Listen backlog: generous so bursts of new connections queue rather than fail.
const BACKLOG: i32 = 4096;

/// One bound address and the loop accepting on it. The listener config it serves is swapped
/// on reload; the socket is kept, so a reload refuses no connection attempt.
pub struct Bound {
    pub listener: Arc<ArcSwap<ListenerConfig>>,
    pub local: SocketAddr,
    socket: std::os::fd::RawFd,
    task: JoinHandle<()>,
}

impl Bound {
    /// Points this address at `listener` (after a reload).
    pub fn serve(&self, listener: ListenerConfig) {
        if listener.data_path.wants_kernel() {
            let _ = save_syn(self.socket);
        }
        self.listener.store(Arc::new(listener));
    }
}

impl Drop for Bound {
    fn drop(&mut self) {
        // Dropping the accept loop closes its socket; established connections are their own
        // tasks and carry on.
        self.task.abort();
    }
}

/// What every accept loop hands to the connections it accepts.
#[derive(Clone)]
pub struct Context {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub kernel: Arc<ArcSwapOption<KernelPath>>,
    pub tunnels: Arc<Hub>,
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<Metrics>,
    pub tracker: TaskTracker,
}

/// Binds `addr` for `listener` and starts accepting on it.
pub fn bind(addr: SocketAddr, listener: ListenerConfig, ctx: Context) -> io::Result<Bound> {
    let socket = bind_one(addr, listener.data_path.wants_kernel())?;
    let local = socket.local_addr()?;
    let fd = socket.as_raw_fd();
    let listener = Arc::new(ArcSwap::from_pointee(listener));
    let task = tokio::spawn(accept_loop(socket, listener.clone(), ctx));
    Ok(Bound {
        listener,
        local,
        socket: fd,
        task,
    })
}

/// Binds one listening socket. `kernel_path` listeners save each connection's SYN: the kernel
/// path needs the client's initial sequence number (see `forward::kernel`).
pub(super) fn bind_one(addr: SocketAddr, kernel_path: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    // Binding a specific address that is not configured yet (the Yggdrasil node creates its
    // 200::/7 address after it starts) is allowed, so the gateway does not depend on start
    // order; connections arrive once the address exists.
    if addr.is_ipv6() {
        // `0.0.0.0:443` and `[::]:443` are both allowed in one listener, so the IPv6 socket
        // must not also claim IPv4.
        socket.set_only_v6(true)?;
        socket.set_freebind_ipv6(true)?;
    } else {
        socket.set_freebind(true)?;
    }
    if kernel_path {
        save_syn(socket.as_raw_fd())?;
    }
    // Accepted sockets inherit TCP_NODELAY from their listener: one setsockopt here instead of
    // one per connection (the sniffed bytes and small replies must not wait for Nagle).
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(socket: TcpListener, listener: Arc<ArcSwap<ListenerConfig>>, ctx: Context) {
    let mut backoff = AcceptBackoff::default();
    // Where connections arrive, when the bind names one address: then no connection needs
    // its own getsockname.
    let bound = socket
        .local_addr()
        .ok()
        .filter(|a| !a.ip().is_unspecified());
    loop {
        match socket.accept().await {
            Ok((stream, peer)) => {
                backoff.succeeded(&listener.load().name);
                // The connection keeps the config that was current when it arrived.
                let snapshot = ctx.snapshot.load_full();
                let shared = Shared {
                    kernel: ctx.kernel.load_full(),
                    tunnels: ctx.tunnels.clone(),
                    limiter: ctx.limiter.clone(),
                    metrics: ctx.metrics.clone(),
                };
                let listener = listener.load_full();
                let active = ctx.metrics.open_connection();
                ctx.tracker.spawn(async move {
                    let metrics = shared.metrics.clone();
                    let rec =
                        pipeline::handle(snapshot, shared, listener, stream, peer, bound).await;
                    record::record(&rec, &metrics);
                    drop(active);
                });
            }
            Err(e) => {
                if let Some(pause) = backoff.failed(&listener.load().name, &e) {
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }
}

/// One `[tunnels] bind` address and the loop accepting tunnel clients' connections on it.
pub struct TunnelBound {
    pub local: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TunnelBound {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds a `[tunnels] bind` address. Its connections (control sessions and data connections)
/// are not tracked as client connections: a data connection belongs to the client connection
/// that asked for it, and a control session lives as long as the gateway.
pub fn bind_tunnels(addr: SocketAddr, hub: Arc<Hub>) -> io::Result<TunnelBound> {
    let socket = bind_one(addr, false)?;
    let local = socket.local_addr()?;
    let task = tokio::spawn(async move {
        let what = format!("tunnels {addr}");
        let mut backoff = AcceptBackoff::default();
        loop {
            match socket.accept().await {
                Ok((stream, peer)) => {
                    backoff.succeeded(&what);
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(hub.clone().serve_connection(stream, peer));
                }
                Err(e) => {
                    if let Some(pause) = backoff.failed(&what, &e) {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    });
    Ok(TunnelBound { local, task })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay_without_a_call_each() {
        let listener = bind_one("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
