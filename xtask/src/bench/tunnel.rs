//! Tunnel mode in the benchmark: the same servers reached through the gateway's direct path
//! and through `astrogate-tunnel` on the server host, over veth and over Yggdrasil.
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{Context, Result};
use astrogate_lab::{
    tunnel as lab_tunnel,
    yggdrasil::{wait_routable, NodeSpec, YggNode},
    Netns, Veth, Workdir,
};

use super::{Config, Topology};

/// The tunnel client's process name among the topology's children.
pub const CLIENT: &str = "astrogate-tunnel";

impl Topology {
    /// client --veth-- gateway --veth-- server, the server with its own default route through
    /// the gateway host (which routes, so "direct" crosses the same veths without a proxy).
    /// The tunnel client dials the gateway's transport address.
    pub(super) fn tunnel_veth() -> Result<Topology> {
        let client = Netns::new("tclient")?;
        let gw = Netns::new("tgw")?;
        let server = Netns::new("tserver")?;
        Veth::connect(&client, &["10.1.0.2/24"], &gw, &["10.1.0.1/24"])?;
        Veth::connect(&gw, &["10.2.0.1/24"], &server, &["10.2.0.2/24"])?;
        client.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
        server.ip(&["route", "add", "default", "via", "10.2.0.1"])?;
        astrogate_lab::run(gw.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
        Ok(Topology {
            name: "tunnel over veth",
            columns: vec![Config::Direct, Config::Splice, Config::Tunnel],
            ratios: vec![
                (Config::Tunnel, Config::Splice),
                (Config::Tunnel, Config::Direct),
            ],
            children: Vec::new(),
            nodes: Vec::new(),
            servers: None,
            client,
            gw: Some(gw),
            server: Some(server),
            gw_ip: "10.1.0.1".parse()?,
            server_ip: "10.2.0.2".parse()?,
            tunnel_addr: Some("10.2.0.1:7444".into()),
            dir: Workdir::new("bench-tveth")?,
        })
    }

    /// client --veth-- gateway ==Yggdrasil== server. The server host has nothing but the
    /// overlay (no default route, no IPv4 but the tunnel's). `splice` is the gateway reaching
    /// the server's Yggdrasil address: a plain connection over the same overlay.
    pub(super) fn tunnel_ygg() -> Result<Topology> {
        let client = Netns::new("yclient")?;
        let gw = Netns::new("ygw")?;
        let server = Netns::new("yserver")?;
        Veth::connect(&client, &["10.1.0.2/24"], &gw, &["10.1.0.1/24"])?;
        Veth::connect(&gw, &["fd00:202::1/64"], &server, &["fd00:202::2/64"])?;
        client.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
        let dir = Workdir::new("bench-tygg")?;
        let listen = "tls://[fd00:202::1]:7443".to_string();
        let gw_spec = NodeSpec {
            listen: vec![listen.clone()],
            peers: Vec::new(),
        };
        let mut gw_node = YggNode::configure("gw", &gw_spec, &dir)?;
        gw_node.start(&gw)?;
        let server_spec = NodeSpec {
            listen: Vec::new(),
            peers: vec![listen],
        };
        let mut server_node = YggNode::configure("server", &server_spec, &dir)?;
        server_node.start(&server)?;
        let wait = Duration::from_secs(30);
        gw_node.wait_peered(&[server_node.address()], wait)?;
        wait_routable(&gw, SocketAddr::new(server_node.address().into(), 9), wait)?;
        wait_routable(&server, SocketAddr::new(gw_node.address().into(), 9), wait)?;
        Ok(Topology {
            name: "tunnel over Yggdrasil",
            columns: vec![Config::Splice, Config::Tunnel],
            ratios: vec![(Config::Tunnel, Config::Splice)],
            children: Vec::new(),
            servers: None,
            client,
            gw: Some(gw),
            server: Some(server),
            gw_ip: "10.1.0.1".parse()?,
            server_ip: IpAddr::V6(server_node.address()),
            tunnel_addr: Some(format!("[{}]:7444", gw_node.address())),
            nodes: vec![gw_node, server_node],
            dir,
        })
    }
}

/// What the table of a tunnel topology compares.
pub fn note(topo: &Topology) -> Option<&'static str> {
    if !topo.columns.contains(&Config::Tunnel) {
        return None;
    }
    Some(if topo.nodes.is_empty() {
        "`astrogate splice` reaches the server's own address; `astrogate tunnel` reaches the same \
         servers through `astrogate-tunnel` on the server host (one data connection per proxied \
         connection, smoltcp, the TUN). The tunnel's idle memory is the tunnel client's."
    } else {
        "`astrogate splice` is a plain connection from the gateway to the server's Yggdrasil \
         address; `astrogate tunnel` carries the same connections through `astrogate-tunnel` over \
         the same overlay. The tunnel's idle memory is the tunnel client's."
    })
}

/// The gateway's `[tunnels]` and `[[tunnel]]` sections. Makes both key pairs and writes the
/// client's config beside them.
pub fn gateway_section(topo: &Topology, root: &Path) -> Result<String> {
    let tunnel = root.join("target/release/astrogate-tunnel");
    let addr = topo
        .tunnel_addr
        .as_deref()
        .context("a tunnel topology has a tunnel address")?;
    let gateway_key = topo.dir.join("gateway.key");
    let client_key = topo.dir.join("tunnel.key");
    let gateway_public = lab_tunnel::keygen(&tunnel, &gateway_key)?;
    let client_public = lab_tunnel::keygen(&tunnel, &client_key)?;
    topo.dir.write(
        "tunnel.toml",
        lab_tunnel::client_config(addr, &gateway_public, &client_key),
    )?;
    Ok(format!(
        "\n[tunnels]\nbind = [\"{addr}\"]\nkey = \"{}\"\n\n[[tunnel]]\nname = \"bench\"\nkey = \"{client_public}\"\n",
        gateway_key.display()
    ))
}

/// Starts the tunnel client on the server host and waits until it serves.
pub fn start_client(topo: &mut Topology, root: &Path) -> Result<()> {
    let tunnel = root.join("target/release/astrogate-tunnel");
    let config = topo.dir.join("tunnel.toml");
    let log = topo.dir.join(&format!("{CLIENT}.log"));
    let child = lab_tunnel::start_client(topo.server(), &tunnel, &config, &log)?;
    topo.children.push(child);
    Ok(())
}
