//! Configuration: parse the TOML file, then `validate()` it into the types the gateway runs on.
//!
//! Nothing half-valid escapes: `load` returns either a complete `Config` or the first error,
//! with the file, line, column, key and reason.
mod describe;
pub mod duration;
mod raw;
pub mod size;
mod tunnels;

use std::{
    collections::HashSet,
    fmt,
    net::SocketAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use ipnet::IpNet;
use toml::Spanned;

pub use crate::target::{Target, TargetHost};
use crate::{
    acl::{self, SourceAcl},
    proxy_protocol::Version as ProxyVersion,
    route::{AcmeAction, HostPattern, Route, RouteTable},
    sniff::{Hostname, Protocol},
};
pub use describe::describe;
pub use raw::RawConfig;
pub use tunnels::{TunnelsConfig, DEFAULT_HEARTBEAT};

/// Default for `gateway.sniff_timeout`: how long a client has to name a host.
pub const DEFAULT_SNIFF_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for `gateway.max_sniff_bytes`: room for a post-quantum ClientHello split over records.
pub const DEFAULT_MAX_SNIFF_BYTES: usize = 16 * 1024;
/// Default for `gateway.connect_timeout`: time allowed to reach the upstream.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default for `gateway.buffer_size`: per-direction buffer of the user-space path. 64 KiB
/// measured twice the throughput of 8 KiB on this class of machine (platform-facts.md).
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;
/// Default for `gateway.pipe_size`: the splice path's pipe per direction. 1 MiB is the
/// kernel's default `fs.pipe-max-size`; 64 KiB pipes measured a third slower.
pub const DEFAULT_PIPE_SIZE: usize = 1 << 20;
/// Default for `gateway.kernel_max_backlog`: bytes one direction of a spliced connection may
/// hold in the kernel beyond what its destination socket has queued.
pub const DEFAULT_KERNEL_MAX_BACKLOG: u64 = 4 << 20;
/// Default for `gateway.kernel_max_backlog_total`: the same, over all connections.
pub const DEFAULT_KERNEL_MAX_BACKLOG_TOTAL: u64 = 256 << 20;
/// Default for `gateway.shutdown_grace`: how long SIGTERM lets established connections finish.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default for `gateway.idle_timeout`: nginx stream's `proxy_timeout` default. Long enough for
/// an idle SSH or XMPP session between keepalives, short enough that abandoned connections go.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);
/// Default for `gateway.udp_idle_timeout`: a UDP session with no datagram either way for this
/// long ends. 30 s is the Linux conntrack default for unreplied UDP and outlives QUIC's
/// usual keep-alives; nginx stream waits 10 min, which holds a socket per forgotten client.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for `gateway.max_udp_sessions`.
pub const DEFAULT_MAX_UDP_SESSIONS: usize = 10_000;

/// What a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Tcp,
    Udp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        })
    }
}

/// Which forwarding path established connections take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataPath {
    /// Chosen per connection by what it carries, from the measurements in the README ("Data
    /// paths"): XMPP and dial streams, which are mostly small interactive messages, take the
    /// kernel path for its lower round trip; everything else takes splice(2), which moves bulk
    /// data fastest. Without the kernel path (no BPF), everything takes splice, after one
    /// warning.
    Auto,
    /// The eBPF sockmap path for every connection, or refuse to start.
    Kernel,
    /// splice(2) through a pipe: driven from user space, but the payload is never copied there.
    Splice,
    /// Always copy in user space.
    Userspace,
}

impl DataPath {
    /// Whether connections on this setting take the kernel path when it is loaded.
    pub fn wants_kernel(self) -> bool {
        matches!(self, DataPath::Auto | DataPath::Kernel)
    }
}

impl fmt::Display for DataPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataPath::Auto => "auto",
            DataPath::Kernel => "kernel",
            DataPath::Splice => "splice",
            DataPath::Userspace => "userspace",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    pub sniff_timeout: Duration,
    pub max_sniff_bytes: usize,
    pub connect_timeout: Duration,
    pub data_path: DataPath,
    pub buffer_size: usize,
    pub pipe_size: usize,
    pub kernel_max_backlog: u64,
    pub kernel_max_backlog_total: u64,
    pub shutdown_grace: Duration,
    /// Open client connections over all listeners beyond which new ones are closed at once.
    pub max_connections: Option<usize>,
    /// An established connection with no byte either way for this long is closed; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// A UDP session with no datagram either way for this long ends.
    pub udp_idle_timeout: Duration,
    /// UDP sessions over all listeners beyond which datagrams from new sources are dropped.
    pub max_udp_sessions: usize,
    /// The user to switch to once set up; `None`: stay root.
    pub user: Option<String>,
    /// Runtime worker threads; 0: one per core.
    pub workers: usize,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        Self {
            sniff_timeout: DEFAULT_SNIFF_TIMEOUT,
            max_sniff_bytes: DEFAULT_MAX_SNIFF_BYTES,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            data_path: DataPath::Auto,
            buffer_size: DEFAULT_BUFFER_SIZE,
            pipe_size: DEFAULT_PIPE_SIZE,
            kernel_max_backlog: DEFAULT_KERNEL_MAX_BACKLOG,
            kernel_max_backlog_total: DEFAULT_KERNEL_MAX_BACKLOG_TOTAL,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_connections: None,
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            max_udp_sessions: DEFAULT_MAX_UDP_SESSIONS,
            user: None,
            workers: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    /// TCP connections or UDP datagrams.
    pub transport: Transport,
    pub bind: Vec<SocketAddr>,
    /// Sniffers to try, in priority order; empty for a raw listener.
    pub protocols: Vec<Protocol>,
    /// A raw TCP listener's one target: every connection goes there, unsniffed.
    pub to: Option<Target>,
    /// Where connections with no name, or a name no route serves, go.
    pub default: Option<Target>,
    /// This listener's forwarding path; `gateway.data_path` unless the listener sets its own.
    pub data_path: DataPath,
    /// Client addresses this listener admits.
    pub acl: SourceAcl,
    /// Open connections one client address (IPv6: one /64) may hold on this listener.
    pub max_connections_per_source: Option<usize>,
    /// Sources that must start with a PROXY header; the client is then the one it names.
    pub proxy_protocol_from: Vec<IpNet>,
    /// A PROXY header to send to `to` or `default` (routes set their own).
    pub proxy_protocol: Option<ProxyVersion>,
}

impl ListenerConfig {
    /// Whether a connection from `peer` must start with a PROXY header.
    pub fn expects_proxy_header(&self, peer: std::net::IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.proxy_protocol_from.iter().any(|n| n.contains(&peer))
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    pub gateway: GatewaySettings,
    pub listeners: Vec<ListenerConfig>,
    pub routes: RouteTable,
    /// `[tunnels]` with its `[[tunnel]]` clients, when this gateway serves tunnels.
    pub tunnels: Option<TunnelsConfig>,
    /// `[metrics] bind`: where the Prometheus endpoint listens.
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read config: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {key}{sep}{reason}", sep = if key.is_empty() { "" } else { ": " })]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        key: String,
        reason: String,
    },
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` is only used in errors and `source`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let at = Locator { file: path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            at.error(span, "", e.message().trim_end())
        })?;
        validate(path, raw, &at)
    }
}

/// Turns byte spans into `file:line:column` errors.
pub(crate) struct Locator<'a> {
    pub(crate) file: &'a Path,
    pub(crate) text: &'a str,
}

impl Locator<'_> {
    pub(crate) fn error(
        &self,
        span: Range<usize>,
        key: &str,
        reason: impl fmt::Display,
    ) -> ConfigError {
        let before = self.text.get(..span.start).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::Invalid {
            file: self.file.display().to_string(),
            line,
            column,
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(crate) fn at<T>(
        &self,
        value: &Spanned<T>,
        key: &str,
        reason: impl fmt::Display,
    ) -> ConfigError {
        self.error(value.span(), key, reason)
    }
}

fn validate(path: &Path, raw: RawConfig, at: &Locator<'_>) -> Result<Config, ConfigError> {
    let gateway = validate_gateway(&raw.gateway, at)?;
    let mut listeners = Vec::with_capacity(raw.listener.len());
    let mut names = HashSet::new();
    let mut binds = HashSet::new();
    for (i, l) in raw.listener.iter().enumerate() {
        let key = |k: &str| format!("listener[{i}].{k}");
        let l = l.get_ref();
        let listener = validate_listener(l, at, &key, gateway.data_path)?;
        if !names.insert(listener.name.clone()) {
            return Err(at.at(&l.name, &key("name"), "duplicate listener name"));
        }
        for (addr, raw_addr) in listener.bind.iter().zip(l.bind.get_ref()) {
            // TCP and UDP have separate ports: `443` may be both.
            if !binds.insert((listener.transport, *addr)) {
                let what = format!("{} {addr} is bound twice", listener.transport);
                return Err(at.at(raw_addr, &key("bind"), what));
            }
        }
        listeners.push(listener);
    }
    if listeners.is_empty() {
        return Err(at.error(0..0, "listener", "the config defines no [[listener]]"));
    }
    let mut routes = RouteTable::default();
    for (i, r) in raw.route.iter().enumerate() {
        let key = |k: &str| format!("route[{i}].{k}");
        let route = validate_route(r.get_ref(), at, &key, &names)?;
        routes.push(route).map_err(|dup| {
            at.at(
                &r.get_ref().hosts,
                &key("hosts"),
                format!("`{}` is already in route[{}]", dup.pattern, dup.first_route),
            )
        })?;
    }
    let tunnels = tunnels::validate(&raw, path, at)?;
    let metrics = raw
        .metrics
        .as_ref()
        .map(|m| {
            let bind = &m.get_ref().bind;
            bind.get_ref().parse::<SocketAddr>().map_err(|_| {
                at.at(
                    bind,
                    "metrics.bind",
                    format!("`{}` is not \"ip:port\" or \"[v6]:port\"", bind.get_ref()),
                )
            })
        })
        .transpose()?;
    Ok(Config {
        source: path.to_path_buf(),
        gateway,
        listeners,
        routes,
        tunnels,
        metrics,
    })
}

fn validate_gateway(g: &raw::RawGateway, at: &Locator<'_>) -> Result<GatewaySettings, ConfigError> {
    let mut s = GatewaySettings::default();
    let duration =
        |v: &Spanned<String>, key: &str| duration::parse(v.get_ref()).map_err(|e| at.at(v, key, e));
    if let Some(v) = &g.sniff_timeout {
        s.sniff_timeout = duration(v, "gateway.sniff_timeout")?;
        if s.sniff_timeout.is_zero() {
            return Err(at.at(v, "gateway.sniff_timeout", "must be more than zero"));
        }
    }
    if let Some(v) = &g.connect_timeout {
        s.connect_timeout = duration(v, "gateway.connect_timeout")?;
        if s.connect_timeout.is_zero() {
            return Err(at.at(v, "gateway.connect_timeout", "must be more than zero"));
        }
    }
    if let Some(v) = &g.max_sniff_bytes {
        s.max_sniff_bytes = in_range(v, 512, 1 << 20, "gateway.max_sniff_bytes", at)?;
    }
    if let Some(v) = &g.max_connections {
        s.max_connections = Some(in_range(v, 1, 100_000_000, "gateway.max_connections", at)?);
    }
    if let Some(v) = &g.buffer_size {
        s.buffer_size = in_range(v, 4096, 16 << 20, "gateway.buffer_size", at)?;
    }
    let size = |v: &Spanned<size::RawSize>, key: &str, min: u64| {
        size::parse(v.get_ref())
            .map_err(|e| at.at(v, key, e))
            .and_then(|n| {
                (n >= min)
                    .then_some(n)
                    .ok_or_else(|| at.at(v, key, format!("must be at least {min} bytes")))
            })
    };
    if let Some(v) = &g.pipe_size {
        let n = size(v, "gateway.pipe_size", 4096)?;
        s.pipe_size = usize::try_from(n)
            .ok()
            .filter(|&n| n <= 1 << 30)
            .ok_or_else(|| at.at(v, "gateway.pipe_size", "must be at most 1GiB"))?;
    }
    if let Some(v) = &g.kernel_max_backlog {
        s.kernel_max_backlog = size(v, "gateway.kernel_max_backlog", 64 << 10)?;
    }
    if let Some(v) = &g.kernel_max_backlog_total {
        s.kernel_max_backlog_total = size(v, "gateway.kernel_max_backlog_total", 1 << 20)?;
    }
    if s.kernel_max_backlog_total < s.kernel_max_backlog {
        let v = g
            .kernel_max_backlog_total
            .as_ref()
            .or(g.kernel_max_backlog.as_ref());
        if let Some(v) = v {
            return Err(at.at(
                v,
                "gateway.kernel_max_backlog_total",
                "must be at least kernel_max_backlog",
            ));
        }
    }
    if let Some(v) = &g.data_path {
        s.data_path = parse_data_path(v, "gateway.data_path", at)?;
    }
    if let Some(v) = &g.shutdown_grace {
        s.shutdown_grace = duration(v, "gateway.shutdown_grace")?;
    }
    if let Some(v) = &g.idle_timeout {
        // "0s" turns it off, as `timeout 0` does in nginx.
        let idle = duration(v, "gateway.idle_timeout")?;
        s.idle_timeout = (!idle.is_zero()).then_some(idle);
    }
    if let Some(v) = &g.udp_idle_timeout {
        // Unlike TCP, a UDP session has no end of its own: it must time out.
        s.udp_idle_timeout = duration(v, "gateway.udp_idle_timeout")?;
        if s.udp_idle_timeout < Duration::from_millis(100) {
            return Err(at.at(v, "gateway.udp_idle_timeout", "must be at least 100ms"));
        }
    }
    if let Some(v) = &g.max_udp_sessions {
        s.max_udp_sessions = in_range(v, 1, 10_000_000, "gateway.max_udp_sessions", at)?;
    }
    if let Some(v) = &g.user {
        // The user's existence is checked at start, where it is used.
        if !crate::privileges::valid_user_name(v.get_ref()) {
            return Err(at.at(v, "gateway.user", "not a user name"));
        }
        s.user = Some(v.get_ref().clone());
    }
    if let Some(v) = &g.workers {
        s.workers = in_range(v, 0, 1024, "gateway.workers", at)?;
    }
    Ok(s)
}

fn parse_data_path(
    v: &Spanned<String>,
    key: &str,
    at: &Locator<'_>,
) -> Result<DataPath, ConfigError> {
    match v.get_ref().as_str() {
        "auto" => Ok(DataPath::Auto),
        "kernel" => Ok(DataPath::Kernel),
        "splice" => Ok(DataPath::Splice),
        "userspace" => Ok(DataPath::Userspace),
        _ => Err(at.at(
            v,
            key,
            "expected \"auto\", \"kernel\", \"splice\" or \"userspace\"",
        )),
    }
}

fn in_range(
    v: &Spanned<i64>,
    min: usize,
    max: usize,
    key: &str,
    at: &Locator<'_>,
) -> Result<usize, ConfigError> {
    usize::try_from(*v.get_ref())
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| at.at(v, key, format!("must be between {min} and {max}")))
}

fn validate_listener(
    l: &raw::RawListener,
    at: &Locator<'_>,
    key: &dyn Fn(&str) -> String,
    gateway_path: DataPath,
) -> Result<ListenerConfig, ConfigError> {
    let name = l.name.get_ref().trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(at.at(
            &l.name,
            &key("name"),
            "use letters, digits, `-`, `_` or `.`",
        ));
    }
    if l.bind.get_ref().is_empty() {
        return Err(at.at(&l.bind, &key("bind"), "needs at least one address"));
    }
    let transport = match &l.transport {
        None => Transport::Tcp,
        Some(t) => match t.get_ref().as_str() {
            "tcp" => Transport::Tcp,
            "udp" => Transport::Udp,
            _ => return Err(at.at(t, &key("transport"), "expected \"tcp\" or \"udp\"")),
        },
    };
    let bind = l
        .bind
        .get_ref()
        .iter()
        .map(|b| {
            b.get_ref().parse::<SocketAddr>().map_err(|_| {
                at.at(
                    b,
                    &key("bind"),
                    format!("`{}` is not \"ip:port\" or \"[v6]:port\"", b.get_ref()),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let to =
        l.to.as_ref()
            .map(|t| parse_target(t, at, &key("to")))
            .transpose()?;
    let protocols = match (&l.protocols, &to) {
        (Some(p), Some(_)) => {
            return Err(at.at(
                p,
                &key("protocols"),
                "a listener with `to` forwards without sniffing: remove `protocols` or `to`",
            ))
        }
        (None, None) => {
            return Err(at.at(
                &l.name,
                &key("protocols"),
                "set `protocols` to sniff, or `to` to forward every connection to one target",
            ))
        }
        (None, Some(_)) => Vec::new(),
        (Some(p), None) => validate_protocols(p, at, key)?,
    };
    if let Some(p) = &l.protocols {
        let quic = protocols.contains(&Protocol::Quic);
        match transport {
            Transport::Udp if protocols != [Protocol::Quic] => return Err(at.at(
                p,
                &key("protocols"),
                "a UDP listener sniffs only `quic`: protocols = [\"quic\"], or `to` for plain UDP",
            )),
            Transport::Tcp if quic => {
                return Err(at.at(
                    p,
                    &key("protocols"),
                    "`quic` runs over UDP: set transport = \"udp\" on this listener",
                ))
            }
            _ => {}
        }
    }
    if transport == Transport::Udp {
        // What TCP listeners have and datagrams do not.
        let tcp_only: [(&str, Option<std::ops::Range<usize>>); 3] = [
            (
                "proxy_protocol_from",
                l.proxy_protocol_from.as_ref().map(Spanned::span),
            ),
            (
                "proxy_protocol",
                l.proxy_protocol.as_ref().map(Spanned::span),
            ),
            (
                "max_connections_per_source",
                l.max_connections_per_source.as_ref().map(Spanned::span),
            ),
        ];
        for (k, span) in tcp_only {
            if let Some(span) = span {
                return Err(at.error(span, &key(k), "applies to TCP listeners only"));
            }
        }
    }
    if let (Some(d), Some(_)) = (&l.default, &to) {
        return Err(at.at(
            d,
            &key("default"),
            "a raw listener (`to`) has no default: it forwards everything to `to`",
        ));
    }
    let default = l
        .default
        .as_ref()
        .map(|d| parse_target(d, at, &key("default")))
        .transpose()?;
    let data_path = match &l.data_path {
        Some(v) => parse_data_path(v, &key("data_path"), at)?,
        None => gateway_path,
    };
    // A UDP session is forwarded in the kernel (auto, kernel) or in user space; splice(2)
    // moves streams, not datagrams.
    if let (Transport::Udp, Some(v), DataPath::Splice) = (transport, &l.data_path, data_path) {
        return Err(at.error(
            v.span(),
            &key("data_path"),
            "a UDP listener's data_path is \"auto\", \"kernel\" or \"userspace\"",
        ));
    }
    let acl = parse_acl(&l.allow, &l.deny, at, key)?;
    let max_connections_per_source = l
        .max_connections_per_source
        .as_ref()
        .map(|v| in_range(v, 1, 100_000_000, &key("max_connections_per_source"), at))
        .transpose()?;
    let proxy_protocol_from = match &l.proxy_protocol_from {
        Some(list) => cidr_list(list, at, &key("proxy_protocol_from"))?,
        None => Vec::new(),
    };
    let proxy_protocol = proxy_version(&l.proxy_protocol, at, &key("proxy_protocol"))?;
    Ok(ListenerConfig {
        name: name.to_string(),
        transport,
        bind,
        protocols,
        to,
        default,
        data_path,
        acl,
        max_connections_per_source,
        proxy_protocol_from,
        proxy_protocol,
    })
}

fn validate_protocols(
    list: &Spanned<Vec<Spanned<String>>>,
    at: &Locator<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<Vec<Protocol>, ConfigError> {
    if list.get_ref().is_empty() {
        return Err(at.at(list, &key("protocols"), "needs at least one protocol"));
    }
    let mut protocols = Vec::new();
    for p in list.get_ref() {
        let protocol = Protocol::ALL
            .into_iter()
            .find(|known| known.name() == p.get_ref())
            .ok_or_else(|| {
                at.at(
                    p,
                    &key("protocols"),
                    format!(
                        "unknown protocol `{}`: expected tls, http, acme, xmpp, dial or quic",
                        p.get_ref()
                    ),
                )
            })?;
        if protocols.contains(&protocol) {
            return Err(at.at(
                p,
                &key("protocols"),
                format!("`{protocol}` is listed twice"),
            ));
        }
        protocols.push(protocol);
    }
    Ok(protocols)
}

fn parse_target(v: &Spanned<String>, at: &Locator<'_>, key: &str) -> Result<Target, ConfigError> {
    v.get_ref()
        .parse::<Target>()
        .map_err(|e| at.at(v, key, format!("`{}`: {e}", v.get_ref())))
}

fn validate_route(
    r: &raw::RawRoute,
    at: &Locator<'_>,
    key: &dyn Fn(&str) -> String,
    listeners: &HashSet<String>,
) -> Result<Route, ConfigError> {
    if r.hosts.get_ref().is_empty() {
        return Err(at.at(&r.hosts, &key("hosts"), "needs at least one hostname"));
    }
    let hosts = r
        .hosts
        .get_ref()
        .iter()
        .map(|h| {
            HostPattern::parse(h.get_ref())
                .map_err(|e| at.at(h, &key("hosts"), format!("`{}`: {e}", h.get_ref())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let to = parse_target(&r.to, at, &key("to"))?;
    let acme = match (&r.acme, &r.acme_redirect) {
        (Some(_), Some(redirect)) => {
            return Err(at.at(
                redirect,
                &key("acme_redirect"),
                "set either `acme` or `acme_redirect`, not both",
            ))
        }
        (Some(proxy), None) => Some(AcmeAction::Proxy(parse_target(proxy, at, &key("acme"))?)),
        (None, Some(redirect)) => Some(AcmeAction::Redirect(
            parse_redirect_base(redirect.get_ref())
                .map_err(|e| at.at(redirect, &key("acme_redirect"), e))?,
        )),
        (None, None) => None,
    };
    let route_listeners = match &r.listeners {
        None => None,
        Some(names) => {
            for n in names.get_ref() {
                if !listeners.contains(n.get_ref()) {
                    return Err(at.at(
                        n,
                        &key("listeners"),
                        format!("no listener is named `{}`", n.get_ref()),
                    ));
                }
            }
            Some(
                names
                    .get_ref()
                    .iter()
                    .map(|n| n.get_ref().clone())
                    .collect(),
            )
        }
    };
    let acl = parse_acl(&r.allow, &r.deny, at, key)?;
    let proxy_protocol = proxy_version(&r.proxy_protocol, at, &key("proxy_protocol"))?;
    Ok(Route {
        hosts,
        to,
        acme,
        listeners: route_listeners,
        acl,
        proxy_protocol,
    })
}

/// A listener's or route's `allow` and `deny` lists.
fn parse_acl(
    allow: &Option<Spanned<Vec<Spanned<String>>>>,
    deny: &Option<Spanned<Vec<Spanned<String>>>>,
    at: &Locator<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<SourceAcl, ConfigError> {
    let blocks = |list: &Spanned<Vec<Spanned<String>>>, name: &str| cidr_list(list, at, &key(name));
    let allow = allow.as_ref().map(|a| blocks(a, "allow")).transpose()?;
    let deny = match deny {
        Some(d) => blocks(d, "deny")?,
        None => Vec::new(),
    };
    Ok(SourceAcl::new(allow, deny))
}

fn proxy_version(
    v: &Option<Spanned<String>>,
    at: &Locator<'_>,
    key: &str,
) -> Result<Option<ProxyVersion>, ConfigError> {
    v.as_ref()
        .map(|v| v.get_ref().parse().map_err(|e| at.at(v, key, e)))
        .transpose()
}

/// A list of CIDR blocks or single addresses.
fn cidr_list(
    list: &Spanned<Vec<Spanned<String>>>,
    at: &Locator<'_>,
    key: &str,
) -> Result<Vec<IpNet>, ConfigError> {
    list.get_ref()
        .iter()
        .map(|b| acl::parse_block(b.get_ref()).map_err(|e| at.at(b, key, e)))
        .collect()
}

/// Validates an `acme_redirect` base URL. ACME CAs follow redirects only to http or https on
/// ports 80 or 443, so anything else would fail validation at the CA, not here.
fn parse_redirect_base(s: &str) -> Result<String, String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or("expected \"http://host\" or \"https://host\"")?;
    if scheme != "http" && scheme != "https" {
        return Err("scheme must be http or https".into());
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err("give only scheme and host: the challenge path is appended".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    match port {
        None | Some("80") | Some("443") => {}
        Some(_) => return Err("ACME redirects may only use port 80 or 443".into()),
    }
    let host =
        Hostname::parse(host.as_bytes()).map_err(|_| "invalid redirect hostname".to_string())?;
    Ok(match port {
        Some(p) => format!("{scheme}://{host}:{p}"),
        None => format!("{scheme}://{host}"),
    })
}

#[cfg(test)]
mod tests;
