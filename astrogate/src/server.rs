//! Binding the listeners and accepting connections.
use std::{future::Future, io, net::SocketAddr, os::fd::AsRawFd, sync::Arc, time::Duration};

use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use crate::{
    config::{Config, DataPath, ListenerConfig},
    conn::{self, Snapshot},
    forward::{
        kernel::{KernelLimits, KernelPath, StartError},
        sockopt::save_syn,
    },
};

/// Listen backlog: generous so bursts of new connections queue rather than fail.
const BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data_path = \"kernel\", but the kernel path cannot start: {0}")]
    Kernel(StartError),
    #[error("listener `{listener}`: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: io::Error,
    },
}

struct BoundListener {
    config: Arc<ListenerConfig>,
    name: Arc<str>,
    sockets: Vec<TcpListener>,
}

/// A gateway with every listener bound. Binding happens before anything is served, so a
/// config that cannot be fully bound never runs half-configured.
pub struct Server {
    listeners: Vec<BoundListener>,
    snapshot: Arc<Snapshot>,
}

impl Server {
    /// Binds every listener of `config`. Must be called inside a Tokio runtime.
    pub fn bind(config: &Config) -> Result<Server, ServeError> {
        let mut listeners = Vec::new();
        for l in &config.listeners {
            let sockets = l
                .bind
                .iter()
                .map(|&addr| {
                    bind_one(addr, l.data_path.wants_kernel()).map_err(|source| ServeError::Bind {
                        listener: l.name.clone(),
                        addr,
                        source,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            listeners.push(BoundListener {
                config: Arc::new(l.clone()),
                name: Arc::from(l.name.as_str()),
                sockets,
            });
        }
        let kernel = start_kernel(config)?;
        Ok(Server {
            listeners,
            snapshot: Arc::new(Snapshot {
                settings: config.gateway.clone(),
                routes: config.routes.clone(),
                kernel,
            }),
        })
    }

    /// The kernel path, when this server forwards through it.
    pub fn kernel(&self) -> Option<&Arc<KernelPath>> {
        self.snapshot.kernel.as_ref()
    }

    /// The bound addresses, by listener name (ports resolved when the config asked for 0).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .flat_map(|l| {
                l.sockets
                    .iter()
                    .filter_map(|s| s.local_addr().ok())
                    .map(|a| (l.name.to_string(), a))
            })
            .collect()
    }

    /// Serves until `shutdown` completes. Connections in flight are dropped with the runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut tasks = tokio::task::JoinSet::new();
        for l in self.listeners {
            for socket in l.sockets {
                tasks.spawn(accept_loop(
                    socket,
                    l.config.clone(),
                    l.name.clone(),
                    self.snapshot.clone(),
                ));
            }
        }
        shutdown.await;
        tasks.abort_all();
    }
}

/// Starts the kernel path when a listener may use it. A listener that requires it makes the
/// gateway refuse to start without it; `auto` listeners fall back to copying, with one warning.
fn start_kernel(config: &Config) -> Result<Option<Arc<KernelPath>>, ServeError> {
    let listeners = || config.listeners.iter().map(|l| l.data_path);
    if !listeners().any(DataPath::wants_kernel) {
        return Ok(None);
    }
    let limits = KernelLimits {
        max_backlog: config.gateway.kernel_max_backlog,
        max_backlog_total: config.gateway.kernel_max_backlog_total,
    };
    match KernelPath::start(limits) {
        Ok(kernel) => Ok(Some(kernel)),
        Err(e) if listeners().any(|p| p == DataPath::Kernel) => Err(ServeError::Kernel(e)),
        Err(e) => {
            tracing::warn!(error = %e, "kernel path unavailable; connections that would take it use splice(2) instead");
            Ok(None)
        }
    }
}

/// Binds one listening socket. `kernel_path` listeners save each connection's SYN: the kernel
/// path needs the client's initial sequence number (see `forward::kernel`).
fn bind_one(addr: SocketAddr, kernel_path: bool) -> io::Result<TcpListener> {
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
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

async fn accept_loop(
    socket: TcpListener,
    config: Arc<ListenerConfig>,
    name: Arc<str>,
    snapshot: Arc<Snapshot>,
) {
    loop {
        match socket.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(serve_one(
                    snapshot.clone(),
                    config.clone(),
                    name.clone(),
                    stream,
                    peer,
                ));
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning, keep serving.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_one(
    snapshot: Arc<Snapshot>,
    config: Arc<ListenerConfig>,
    name: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let record = conn::handle(snapshot, config, name, stream, peer).await;
    record.emit();
}
