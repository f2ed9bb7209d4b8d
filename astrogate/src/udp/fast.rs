//! The kernel path for UDP sessions. Once a session's upstream socket is connected, both of
//! its directions are handed to the ingress program (`astrogate_udp_forward`): a datagram
//! from the client to the listener leaves with the session socket's address and port toward
//! the upstream, and a reply from the upstream to that socket leaves with the listener's
//! address toward the client, as user space would have sent them, but without crossing into
//! user space. The session keeps its socket (so its port stays ours and a datagram the program
//! leaves to the stack still lands there) and its task (which ends it when idle, reading the
//! program's last-seen time, and records what both paths carried).
//!
//! A session stays in user space when either direction leaves by an interface the program
//! does not watch (loopback, a TUN such as Yggdrasil's), when the client and the upstream are
//! of different families, or when the flow map is full.
use std::{
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, MutexGuard},
};

use astrogate_common::{UdpFlowAction, UdpFlowKey};
use futures_util::TryStreamExt;
use rtnetlink::RouteMessageBuilder;

use crate::ebpf::{LoadError, UdpFlowCounts, UdpKernel};

/// Session directions the flow map holds at most; mirrors `MAX_UDP_FLOWS` in the programs.
const MAX_FLOWS: usize = 131_072;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("opening a route netlink socket: {0}")]
    Netlink(std::io::Error),
}

/// The loaded program, its map, and a route netlink handle for the lookups.
pub struct UdpFastPath {
    kernel: Mutex<UdpKernel>,
    routes: rtnetlink::Handle,
    /// The watched interfaces: (index, name).
    interfaces: Vec<(u32, String)>,
    /// Directions in the map now.
    flows: std::sync::atomic::AtomicUsize,
}

/// Both directions of one session, ready to insert or inserted.
#[derive(Debug, Clone, Copy)]
pub struct SessionFlows {
    pub up: (UdpFlowKey, UdpFlowAction),
    pub down: (UdpFlowKey, UdpFlowAction),
}

impl UdpFastPath {
    /// Loads and attaches the program. Must be called inside a Tokio runtime.
    pub fn start() -> Result<Arc<UdpFastPath>, StartError> {
        let kernel = UdpKernel::attach()?;
        let (connection, routes, _) = rtnetlink::new_connection().map_err(StartError::Netlink)?;
        tokio::spawn(connection);
        let interfaces = kernel
            .interfaces
            .iter()
            .filter_map(|&i| Some((i, nix::net::if_::if_indextoname(i).ok()?)))
            .map(|(i, n)| (i, n.to_string_lossy().into_owned()))
            .collect();
        Ok(Arc::new(UdpFastPath {
            kernel: Mutex::new(kernel),
            routes,
            interfaces,
            flows: Default::default(),
        }))
    }

    fn kernel(&self) -> MutexGuard<'_, UdpKernel> {
        self.kernel.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Both directions of a session: `client` sent to `local`; the session's socket `socket`
    /// is connected to `upstream`. `Err` says why the session stays in user space.
    pub async fn prepare(
        &self,
        client: SocketAddr,
        local: SocketAddr,
        socket: SocketAddr,
        upstream: SocketAddr,
    ) -> Result<SessionFlows, &'static str> {
        if client.is_ipv4() != upstream.is_ipv4() {
            return Err("the client and the upstream are of different families");
        }
        let (up_if, up_mtu) = self.egress(upstream.ip(), socket.ip()).await?;
        let (down_if, down_mtu) = self.egress(client.ip(), local.ip()).await?;
        let up = (
            key(upstream.is_ipv4(), client, local),
            action(socket, upstream, up_if, up_mtu),
        );
        let down = (
            key(upstream.is_ipv4(), upstream, socket),
            action(local, client, down_if, down_mtu),
        );
        Ok(SessionFlows { up, down })
    }

    /// Starts forwarding both directions in the kernel; `false` if the map is full.
    pub fn install(&self, flows: &SessionFlows) -> bool {
        use std::sync::atomic::Ordering;
        if self.flows.fetch_add(2, Ordering::Relaxed) + 2 > MAX_FLOWS {
            self.flows.fetch_sub(2, Ordering::Relaxed);
            return false;
        }
        let mut kernel = self.kernel();
        let inserted = kernel
            .insert(flows.up.0, flows.up.1)
            .and_then(|()| kernel.insert(flows.down.0, flows.down.1));
        if let Err(e) = inserted {
            tracing::debug!(error = %e, "UDP session left in user space");
            kernel.remove(&flows.up.0);
            self.flows.fetch_sub(2, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// What the program has forwarded for the session so far: (up, down).
    pub fn counts(&self, flows: &SessionFlows) -> (UdpFlowCounts, UdpFlowCounts) {
        let kernel = self.kernel();
        (kernel.counts(&flows.up.0), kernel.counts(&flows.down.0))
    }

    /// Stops forwarding the session in the kernel and returns what the program forwarded.
    pub fn remove(&self, flows: &SessionFlows) -> (UdpFlowCounts, UdpFlowCounts) {
        let mut kernel = self.kernel();
        let counts = (kernel.counts(&flows.up.0), kernel.counts(&flows.down.0));
        kernel.remove(&flows.up.0);
        kernel.remove(&flows.down.0);
        self.flows
            .fetch_sub(2, std::sync::atomic::Ordering::Relaxed);
        counts
    }

    /// Where the gateway's own datagram from `src` to `dst` leaves: a watched interface and
    /// its MTU, or why the kernel cannot send it.
    async fn egress(&self, dst: IpAddr, src: IpAddr) -> Result<(u32, u32), &'static str> {
        let message = match (dst, src) {
            (IpAddr::V4(d), IpAddr::V4(s)) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(d, 32)
                .source_prefix(s, 32)
                .build(),
            (IpAddr::V6(d), IpAddr::V6(s)) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(d, 128)
                .source_prefix(s, 128)
                .build(),
            _ => return Err("the addresses are of different families"),
        };
        let mut answers = self.routes.route().get(message).execute();
        let route = match answers.try_next().await {
            Ok(Some(route)) => route,
            _ => return Err("no route"),
        };
        use rtnetlink::packet_route::route::{RouteAttribute, RouteType};
        if route.header.kind != RouteType::Unicast {
            return Err("the destination is local or not unicast");
        }
        let oif = route.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        let Some((index, name)) = oif.and_then(|o| self.interfaces.iter().find(|(i, _)| *i == o))
        else {
            return Err("the route leaves by an interface the program does not watch");
        };
        let mtu = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
            .ok()
            .and_then(|m| m.trim().parse().ok())
            .ok_or("the interface's MTU is unknown")?;
        Ok((*index, mtu))
    }
}

fn octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(a) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.octets());
            out
        }
        IpAddr::V6(a) => a.octets(),
    }
}

/// A datagram from `src` to `dst` as it reaches the gateway.
fn key(v4: bool, src: SocketAddr, dst: SocketAddr) -> UdpFlowKey {
    UdpFlowKey {
        src_addr: octets(src.ip()),
        dst_addr: octets(dst.ip()),
        src_port: src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        family: if v4 { 4 } else { 6 },
        _pad: [0; 3],
    }
}

/// Rewritten to go from `src` to `dst`, out of `ifindex`.
fn action(src: SocketAddr, dst: SocketAddr, ifindex: u32, mtu: u32) -> UdpFlowAction {
    UdpFlowAction {
        src_addr: octets(src.ip()),
        dst_addr: octets(dst.ip()),
        src_port: src.port().to_be_bytes(),
        dst_port: dst.port().to_be_bytes(),
        ifindex,
        mtu,
        ..UdpFlowAction::default()
    }
}
