//! What outlives a config: the listening sockets, the kernel path and the connections in
//! flight. The config itself is an immutable snapshot that `reload` swaps whole.
mod backoff;
mod listeners;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio_util::task::TaskTracker;

use crate::{
    config::{Config, ConfigError, DataPath, ListenerConfig, Transport},
    forward::kernel::{KernelLimits, KernelPath, StartError},
    metrics::{self, Metrics, MetricsServer},
    pipeline::{admit::Limiter, Snapshot},
    tunnel::hub::Hub,
    udp::{self, fast::UdpFastPath, UdpBound, UdpContext, UdpSessions},
};
use listeners::{Bound, Context, TunnelBound};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data_path = \"kernel\", but the kernel path cannot start: {0}")]
    Kernel(StartError),
    #[error(
        "a UDP listener has data_path = \"kernel\", but the UDP kernel path cannot start: {0}"
    )]
    UdpKernel(crate::udp::fast::StartError),
    #[error("tunnels: cannot bind {addr}: {source}")]
    BindTunnels {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: cannot bind {addr}: {source}")]
    BindMetrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener `{listener}`: cannot bind {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Serve(#[from] ServeError),
}

/// The running gateway.
pub struct Runtime {
    ctx: Context,
    /// Bound sockets by the address the config names (kept across reloads).
    bound: Mutex<HashMap<SocketAddr, Bound>>,
    /// Bound UDP sockets, likewise.
    udp_bound: Mutex<HashMap<SocketAddr, UdpBound>>,
    udp: UdpContext,
    /// Bound `[tunnels]` addresses (kept across reloads, like listeners).
    tunnel_bound: Mutex<HashMap<SocketAddr, TunnelBound>>,
    /// The `[metrics]` endpoint, when the config has one.
    metrics_server: Mutex<Option<MetricsServer>>,
    /// The config in force, for reloads to compare against.
    config: Mutex<Config>,
}

impl Runtime {
    /// Binds every listener of `config` and starts accepting. Binding happens before anything
    /// is served, so a config that cannot be fully bound never runs half-configured. Must be
    /// called inside a Tokio runtime.
    pub fn start(config: Config) -> Result<Runtime, ServeError> {
        let kernel = Arc::new(ArcSwapOption::empty());
        let ctx = Context {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot_of(&config))),
            metrics: Metrics::new(kernel.clone()),
            kernel,
            tunnels: Hub::new(),
            limiter: Limiter::new(),
            tracker: TaskTracker::new(),
        };
        if let Some(kernel) = start_kernel(&config, None)? {
            ctx.kernel.store(Some(kernel));
        }
        let bound = bind_new(&config, &HashMap::new(), &ctx)?;
        let udp = UdpContext {
            snapshot: ctx.snapshot.clone(),
            sessions: UdpSessions::new(),
            metrics: ctx.metrics.clone(),
            tunnels: ctx.tunnels.clone(),
            fast: Arc::new(ArcSwapOption::empty()),
        };
        if let Some(fast) = start_udp_kernel(&config, None)? {
            udp.fast.store(Some(fast));
        }
        let udp_bound = bind_udp_new(&config, &HashMap::new(), &udp)?;
        let tunnel_bound = bind_tunnels_new(&config, &HashMap::new(), &ctx.tunnels)?;
        let metrics_server = bind_metrics(config.metrics, &ctx.metrics)?;
        ctx.tunnels.configure(config.tunnels.clone());
        Ok(Runtime {
            ctx,
            bound: Mutex::new(bound),
            udp_bound: Mutex::new(udp_bound),
            udp,
            tunnel_bound: Mutex::new(tunnel_bound),
            metrics_server: Mutex::new(metrics_server),
            config: Mutex::new(config),
        })
    }

    /// The kernel path, when this gateway forwards through it.
    pub fn kernel(&self) -> Option<Arc<KernelPath>> {
        self.ctx.kernel.load_full()
    }

    /// The tunnel sessions.
    pub fn tunnels(&self) -> Arc<Hub> {
        self.ctx.tunnels.clone()
    }

    /// The metrics this gateway keeps.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.ctx.metrics.clone()
    }

    /// The bound addresses, by listener name (ports resolved when the config asked for 0);
    /// `[tunnels] bind` addresses are named `tunnels`, the `[metrics]` endpoint `metrics`.
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        let mut addrs: Vec<_> = bound
            .values()
            .map(|b| (b.listener.load().name.clone(), b.local))
            .collect();
        let udp = self.udp_bound.lock().unwrap_or_else(|e| e.into_inner());
        addrs.extend(
            udp.values()
                .map(|b| (b.listener.load().name.clone(), b.local)),
        );
        let tunnels = self.tunnel_bound.lock().unwrap_or_else(|e| e.into_inner());
        addrs.extend(tunnels.values().map(|t| ("tunnels".to_string(), t.local)));
        let metrics = self
            .metrics_server
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        addrs.extend(metrics.iter().map(|m| ("metrics".to_string(), m.local)));
        addrs.sort();
        addrs
    }

    /// Reads `path` again and, if it is valid as a whole and every new address binds, puts it
    /// in force: new connections use it at once, listeners that are new start accepting,
    /// removed ones stop, and unchanged addresses keep their sockets. Connections already
    /// accepted carry on with the config they started with. On any error nothing changes.
    pub fn reload(&self, path: &Path) -> Result<Vec<String>, ReloadError> {
        let result = self.try_reload(path);
        self.ctx.metrics.reloaded(result.is_ok());
        result
    }

    fn try_reload(&self, path: &Path) -> Result<Vec<String>, ReloadError> {
        let config = Config::load(path)?;
        let mut bound = self.bound.lock().unwrap_or_else(|e| e.into_inner());
        let mut current = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let kernel = start_kernel(&config, self.ctx.kernel.load_full())?;
        let udp_kernel = start_udp_kernel(&config, self.udp.fast.load_full())?;
        let mut fresh = bind_new(&config, &bound, &self.ctx)?;
        let mut udp_bound = self.udp_bound.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh_udp = bind_udp_new(&config, &udp_bound, &self.udp)?;
        let mut tunnel_bound = self.tunnel_bound.lock().unwrap_or_else(|e| e.into_inner());
        let mut fresh_tunnels = bind_tunnels_new(&config, &tunnel_bound, &self.ctx.tunnels)?;
        let mut metrics_server = self
            .metrics_server
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // The endpoint keeps its socket unless the address changed.
        let fresh_metrics = if config.metrics != current.metrics {
            Some(bind_metrics(config.metrics, &self.ctx.metrics)?)
        } else {
            None
        };
        let changes = describe_changes(&current, &config);
        // From here nothing can fail.
        if let Some(kernel) = kernel {
            self.ctx.kernel.store(Some(kernel));
        }
        if let Some(fast) = udp_kernel {
            self.udp.fast.store(Some(fast));
        }
        self.ctx.snapshot.store(Arc::new(snapshot_of(&config)));
        let wanted = addresses(&config);
        bound.retain(|addr, _| wanted.contains_key(addr));
        for (addr, listener) in wanted {
            if let Some(b) = bound.get(&addr) {
                b.serve(listener.clone());
            }
        }
        bound.extend(fresh.drain());
        let wanted = addresses_of(&config, Transport::Udp);
        udp_bound.retain(|addr, _| wanted.contains_key(addr));
        for (addr, listener) in wanted {
            if let Some(b) = udp_bound.get(&addr) {
                b.serve(listener.clone());
            }
        }
        udp_bound.extend(fresh_udp.drain());
        let tunnel_addrs = tunnel_addresses(&config);
        tunnel_bound.retain(|addr, _| tunnel_addrs.contains(addr));
        tunnel_bound.extend(fresh_tunnels.drain());
        self.ctx.tunnels.configure(config.tunnels.clone());
        if let Some(server) = fresh_metrics {
            *metrics_server = server;
        }
        *current = config;
        Ok(changes)
    }

    /// Stops accepting, lets connections in flight finish for up to `grace`, and returns how
    /// many were still open when it ran out.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.bound.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // UDP has no connections to drain: a session ends when its client goes quiet, and
        // its client cannot tell a stopped gateway from a quiet one.
        self.udp_bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.tunnel_bound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.ctx.tracker.close();
        // The metrics stay up while connections drain; they go when the runtime does.
        if tokio::time::timeout(grace, self.ctx.tracker.wait())
            .await
            .is_ok()
        {
            0
        } else {
            self.ctx.tracker.len()
        }
    }

    /// The grace period of the config in force.
    pub fn shutdown_grace(&self) -> Duration {
        self.config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .gateway
            .shutdown_grace
    }

    /// UDP sessions open now.
    pub fn udp_sessions(&self) -> usize {
        self.udp.sessions.open()
    }

    /// Connections in flight.
    pub fn connections(&self) -> usize {
        self.ctx.tracker.len()
    }
}

fn snapshot_of(config: &Config) -> Snapshot {
    Snapshot {
        settings: config.gateway.clone(),
        routes: config.routes.clone(),
    }
}

/// Every TCP address the config binds, with its listener.
fn addresses(config: &Config) -> BTreeMap<SocketAddr, ListenerConfig> {
    addresses_of(config, Transport::Tcp)
}

/// Every address the config binds for `transport`, with its listener.
fn addresses_of(config: &Config, transport: Transport) -> BTreeMap<SocketAddr, ListenerConfig> {
    config
        .listeners
        .iter()
        .filter(|l| l.transport == transport)
        .flat_map(|l| l.bind.iter().map(move |a| (*a, l.clone())))
        .collect()
}

/// Binds the config's UDP addresses that are not bound yet; all or nothing, like `bind_new`.
fn bind_udp_new(
    config: &Config,
    bound: &HashMap<SocketAddr, UdpBound>,
    ctx: &UdpContext,
) -> Result<HashMap<SocketAddr, UdpBound>, ServeError> {
    let mut fresh = HashMap::new();
    for (addr, listener) in addresses_of(config, Transport::Udp) {
        if bound.contains_key(&addr) {
            continue;
        }
        let name = listener.name.clone();
        let b = udp::bind(addr, listener, ctx.clone()).map_err(|source| ServeError::Bind {
            listener: name,
            addr,
            source,
        })?;
        fresh.insert(addr, b);
    }
    Ok(fresh)
}

/// Binds the config's addresses that are not bound yet. All or nothing: a failure drops what
/// this call bound.
fn bind_new(
    config: &Config,
    bound: &HashMap<SocketAddr, Bound>,
    ctx: &Context,
) -> Result<HashMap<SocketAddr, Bound>, ServeError> {
    let mut fresh = HashMap::new();
    for (addr, listener) in addresses(config) {
        if bound.contains_key(&addr) {
            continue;
        }
        let name = listener.name.clone();
        let b =
            listeners::bind(addr, listener, ctx.clone()).map_err(|source| ServeError::Bind {
                listener: name,
                addr,
                source,
            })?;
        fresh.insert(addr, b);
    }
    Ok(fresh)
}

/// Binds the `[metrics]` endpoint, when the config has one.
fn bind_metrics(
    addr: Option<SocketAddr>,
    metrics: &Arc<Metrics>,
) -> Result<Option<MetricsServer>, ServeError> {
    addr.map(|addr| {
        metrics::serve(addr, metrics.clone())
            .map_err(|source| ServeError::BindMetrics { addr, source })
    })
    .transpose()
}

fn tunnel_addresses(config: &Config) -> Vec<SocketAddr> {
    config
        .tunnels
        .as_ref()
        .map(|t| t.bind.clone())
        .unwrap_or_default()
}

/// Binds the `[tunnels]` addresses that are not bound yet; all or nothing, like `bind_new`.
fn bind_tunnels_new(
    config: &Config,
    bound: &HashMap<SocketAddr, TunnelBound>,
    hub: &Arc<Hub>,
) -> Result<HashMap<SocketAddr, TunnelBound>, ServeError> {
    let mut fresh = HashMap::new();
    for addr in tunnel_addresses(config) {
        if bound.contains_key(&addr) {
            continue;
        }
        let b = listeners::bind_tunnels(addr, hub.clone())
            .map_err(|source| ServeError::BindTunnels { addr, source })?;
        fresh.insert(addr, b);
    }
    Ok(fresh)
}

/// Starts the kernel path when a listener may use it and it is not running yet. A listener
/// that requires it makes the config fail without it; `auto` listeners fall back with one
/// warning. The kernel path outlives configs: a reload never stops it.
fn start_kernel(
    config: &Config,
    running: Option<Arc<KernelPath>>,
) -> Result<Option<Arc<KernelPath>>, ServeError> {
    let paths = || {
        config
            .listeners
            .iter()
            .filter(|l| l.transport == Transport::Tcp)
            .map(|l| l.data_path)
    };
    if running.is_some() || !paths().any(DataPath::wants_kernel) {
        return Ok(None);
    }
    let limits = KernelLimits {
        max_backlog: config.gateway.kernel_max_backlog,
        max_backlog_total: config.gateway.kernel_max_backlog_total,
    };
    match KernelPath::start(limits) {
        Ok(kernel) => Ok(Some(kernel)),
        Err(e) if paths().any(|p| p == DataPath::Kernel) => Err(ServeError::Kernel(e)),
        Err(e) => {
            tracing::warn!(error = %e, "kernel path unavailable; connections that would take it use splice(2) instead");
            Ok(None)
        }
    }
}

/// Starts the UDP kernel path when a UDP listener may use it and it is not running yet, as
/// `start_kernel` does for TCP: required by `data_path = "kernel"`, one warning for `auto`.
fn start_udp_kernel(
    config: &Config,
    running: Option<Arc<UdpFastPath>>,
) -> Result<Option<Arc<UdpFastPath>>, ServeError> {
    let paths = || {
        config
            .listeners
            .iter()
            .filter(|l| l.transport == Transport::Udp)
            .map(|l| l.data_path)
    };
    if running.is_some() || !paths().any(DataPath::wants_kernel) {
        return Ok(None);
    }
    match UdpFastPath::start() {
        Ok(fast) => Ok(Some(fast)),
        Err(e) if paths().any(|p| p == DataPath::Kernel) => Err(ServeError::UdpKernel(e)),
        Err(e) => {
            tracing::warn!(error = %e, "UDP kernel path unavailable; UDP sessions are forwarded in user space");
            Ok(None)
        }
    }
}

/// One line per change a reload makes, for the log.
fn describe_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    // The user and the threads are set once, at start.
    if old.gateway.user != new.gateway.user || old.gateway.workers != new.gateway.workers {
        out.push("gateway.user and gateway.workers take effect at the next start".to_string());
    }
    let names = |c: &Config| -> BTreeMap<String, ListenerConfig> {
        c.listeners
            .iter()
            .map(|l| (l.name.clone(), l.clone()))
            .collect()
    };
    let (before, after) = (names(old), names(new));
    for (name, l) in &after {
        match before.get(name) {
            None => out.push(format!("listener {name} added ({})", binds(l))),
            Some(was) if was != l => out.push(format!("listener {name} changed")),
            Some(_) => {}
        }
    }
    for (name, l) in &before {
        if !after.contains_key(name) {
            out.push(format!("listener {name} removed ({})", binds(l)));
        }
    }
    let (r0, r1) = (old.routes.routes().len(), new.routes.routes().len());
    if r0 != r1 || format!("{:?}", old.routes) != format!("{:?}", new.routes) {
        out.push(format!("routes: {r0} before, {r1} now"));
    }
    if old.gateway != new.gateway {
        out.push("gateway settings changed".into());
    }
    if old.tunnels != new.tunnels {
        out.push("tunnels changed".into());
    }
    if old.metrics != new.metrics {
        out.push("metrics endpoint moved".into());
    }
    if out.is_empty() {
        out.push("nothing changed".into());
    }
    out
}

fn binds(l: &ListenerConfig) -> String {
    l.bind
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
