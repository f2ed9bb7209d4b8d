//! The namespaces and Yggdrasil nodes of the lab, wired the way a real deployment is:
//!
//! ```text
//!   inet ──veth 192.0.2.0/24, 2001:db8:1::/64── gw ──veth fd00:a:N::/64 (peering only)── service N
//!  (clear internet)                           (gateway + node)       └─veth────────────── client
//! ```
//!
//! `inet` has no Yggdrasil: it is the clear internet, holding internet clients and servers.
//! `gw` has both worlds: the internet veth and a node whose TLS listener the other nodes peer
//! with. Service hosts and the client have only a node and the underlay link that carries its
//! peering, so 200::/7 is all they can reach, and `gw` does not forward IP between its links.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use super::{
    yggdrasil::{wait_routable, NodeSpec, YggNode},
    LabError, Netns, Veth, Workdir,
};

/// The gateway's public addresses, on the link to `inet`.
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The internet host's addresses.
pub const INET_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
pub const INET_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
/// Port of the gateway node's peering listener.
pub const PEERING_PORT: u16 = 7443;

const PEERING_WAIT: Duration = Duration::from_secs(15);

/// A namespace with a Yggdrasil node. The node is declared first so it stops before its
/// namespace goes.
#[derive(Debug)]
pub struct YggHost {
    pub node: YggNode,
    pub ns: Netns,
}

impl YggHost {
    pub fn address(&self) -> Ipv6Addr {
        self.node.address()
    }

    /// Stops and starts the node, then waits until it is peered with the gateway again.
    pub fn restart_node(&mut self, gateway: &YggHost) -> Result<(), LabError> {
        self.node.restart(&self.ns)?;
        self.node.wait_peered(&[gateway.address()], PEERING_WAIT)
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct TopologySpec<'a> {
    /// Names of the service hosts (Yggdrasil only), in order.
    pub services: &'a [&'a str],
    /// Whether to add a Yggdrasil-only client host.
    pub client: bool,
}

/// The built lab network. Field order is drop order: nodes and their namespaces first, the
/// internet namespace last.
#[derive(Debug)]
pub struct Topology {
    pub services: Vec<YggHost>,
    pub client: Option<YggHost>,
    pub gateway: YggHost,
    pub inet: Netns,
    /// Wall time from the first namespace to every node routable.
    pub bring_up: Duration,
}

impl Topology {
    /// Builds the namespaces and links, starts the nodes (the listening gateway node first: a
    /// peer whose first dial fails retries only a minute later), and waits until every node
    /// is peered with the gateway and reachable across the overlay.
    pub fn build(spec: &TopologySpec<'_>, dir: &Workdir) -> Result<Topology, LabError> {
        let started = Instant::now();
        let inet = Netns::new("inet")?;
        let gw = Netns::new("gw")?;
        Veth::connect(
            &inet,
            &[&format!("{INET_V4}/24"), &format!("{INET_V6}/64")],
            &gw,
            &[&format!("{GATEWAY_V4}/24"), &format!("{GATEWAY_V6}/64")],
        )?;

        let mut names: Vec<&str> = spec.services.to_vec();
        if spec.client {
            names.push("client");
        }
        // One underlay /64 per host: fd00:a:N::1 on the gateway side, fd00:a:N::2 on the host.
        let mut hosts = Vec::new();
        let mut listen = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let n = i as u16 + 1;
            let ns = Netns::new(name)?;
            let gw_side = Ipv6Addr::new(0xfd00, 0xa, n, 0, 0, 0, 0, 1);
            let host_side = Ipv6Addr::new(0xfd00, 0xa, n, 0, 0, 0, 0, 2);
            Veth::connect(
                &gw,
                &[&format!("{gw_side}/64")],
                &ns,
                &[&format!("{host_side}/64")],
            )?;
            let uri = format!("tls://[{gw_side}]:{PEERING_PORT}");
            listen.push(uri.clone());
            hosts.push((name.to_string(), ns, uri));
        }

        let gw_spec = NodeSpec {
            listen,
            peers: Vec::new(),
        };
        let mut gw_node = YggNode::configure("gw", &gw_spec, dir)?;
        gw_node.start(&gw)?;
        let gateway = YggHost {
            node: gw_node,
            ns: gw,
        };

        let mut started_hosts = Vec::new();
        for (name, ns, uri) in hosts {
            let spec = NodeSpec {
                listen: Vec::new(),
                peers: vec![uri],
            };
            let mut node = YggNode::configure(&name, &spec, dir)?;
            node.start(&ns)?;
            started_hosts.push(YggHost { node, ns });
        }
        let others: Vec<Ipv6Addr> = started_hosts.iter().map(YggHost::address).collect();
        gateway.node.wait_peered(&others, PEERING_WAIT)?;
        // Peering is not yet routing: wait until a SYN crosses the overlay both ways.
        for host in &started_hosts {
            wait_routable(
                &gateway.ns,
                SocketAddr::new(IpAddr::V6(host.address()), 9),
                PEERING_WAIT,
            )?;
            wait_routable(
                &host.ns,
                SocketAddr::new(IpAddr::V6(gateway.address()), 9),
                PEERING_WAIT,
            )?;
        }

        let client = if spec.client {
            started_hosts.pop()
        } else {
            None
        };
        Ok(Topology {
            services: started_hosts,
            client,
            gateway,
            inet,
            bring_up: started.elapsed(),
        })
    }

    /// The service host called `name`.
    pub fn service(&self, name: &str) -> Option<&YggHost> {
        self.services.iter().find(|h| h.node.name() == name)
    }

    pub fn service_mut(&mut self, name: &str) -> Option<&mut YggHost> {
        self.services.iter_mut().find(|h| h.node.name() == name)
    }
}
