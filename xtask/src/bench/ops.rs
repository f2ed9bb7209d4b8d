//! The cost of the operations features on new connections: a gateway that reads a PROXY v2
//! header from its load balancer, checks listener and route ACLs and a per-source limit, and
//! sends a PROXY v2 header upstream, beside the same gateway with none of it. Both are
//! separate processes on the same veth topology, measured in alternating runs.
//!
//! The rate alone can tie when the load generator saturates the machine, so the table also
//! shows the gateway's own CPU time per connection, which does not depend on who is the
//! bottleneck.
use std::{
    fmt::Write as _,
    io::Read,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::{atomic::AtomicBool, Arc},
};

use anyhow::{Context, Result};
use astrogate_lab::services;

use super::{
    median,
    tools::{self, Dest, CLIENT_HELLO, HELLO_HOST},
    Topology,
};
use crate::util::step;

const PLAIN: u16 = 8451;
const GUARDED: u16 = 8452;
/// The upstream sink that expects a PROXY v2 header before the ClientHello.
const PROXIED_SINK: u16 = 9444;
/// The load generator's address on the veth topology: the balancer the gateway trusts.
const BALANCER: &str = "10.1.0.2";
/// The client the balancer's header names.
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

/// Sixteen blocks each way, as an operator's lists might hold; the client's is the last.
fn acl(allow: bool) -> String {
    let mut blocks: Vec<String> = (0..15)
        .map(|i| {
            if allow {
                format!("\"198.18.{i}.0/24\"")
            } else {
                format!("\"203.0.{}.0/24\"", 100 + i)
            }
        })
        .collect();
    blocks.push(if allow {
        "\"192.0.2.0/24\"".into()
    } else {
        "\"2001:db8::/32\"".into()
    });
    format!("[{}]", blocks.join(", "))
}

/// A PROXY v2 header for a TCP/IPv4 connection from `CLIENT` to the gateway.
fn proxy_v2_header(to: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&CLIENT.octets());
    match to.ip() {
        std::net::IpAddr::V4(ip) => h.extend_from_slice(&ip.octets()),
        std::net::IpAddr::V6(_) => unreachable!("the ops topology is IPv4"),
    }
    h.extend_from_slice(&40000u16.to_be_bytes());
    h.extend_from_slice(&to.port().to_be_bytes());
    h
}

fn gateway_config(topo: &Topology, guarded: bool) -> String {
    let (gw, server) = (topo.gw_ip, topo.server_ip);
    if !guarded {
        return format!(
            r#"
[gateway]
data_path = "splice"

[[listener]]
name = "tls"
bind = ["{gw}:{PLAIN}"]
protocols = ["tls"]

[[route]]
hosts = ["{HELLO_HOST}"]
to = "{server}:9443"
"#
        );
    }
    format!(
        r#"
[gateway]
data_path = "splice"
max_connections = 20000

[[listener]]
name = "tls"
bind = ["{gw}:{GUARDED}"]
protocols = ["tls"]
proxy_protocol_from = ["{BALANCER}/32"]
allow = {allow}
deny = {deny}
max_connections_per_source = 1000

[[route]]
hosts = ["{HELLO_HOST}"]
to = "{server}:{PROXIED_SINK}"
proxy_protocol = "v2"
allow = {allow}
deny = {deny}
"#,
        allow = acl(true),
        deny = acl(false),
    )
}

/// Reads a PROXY v2 header, then the whole ClientHello, then closes.
fn start_proxied_sink(topo: &Topology, stop: Arc<AtomicBool>) -> Result<()> {
    let listener = tools::listen(topo.server(), SocketAddr::new(topo.server_ip, PROXIED_SINK))?;
    tools::serve(listener, stop, |mut s| {
        let mut fixed = [0u8; 16];
        if s.read_exact(&mut fixed).is_err() {
            return;
        }
        let len = u16::from_be_bytes([fixed[14], fixed[15]]) as usize;
        let mut rest = vec![0u8; len + CLIENT_HELLO.len()];
        let _ = s.read_exact(&mut rest);
    });
    Ok(())
}

/// CPU seconds (user + system) a process has used.
pub(super) fn process_cpu_s(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = &stat[stat.rfind(')').context("a /proc stat line")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

pub fn run(root: &Path, runs: usize, seconds: u64) -> Result<String> {
    let mut topo = Topology::veth()?;
    topo.name = "operations (veth)";
    step("bench: operations features on new connections");
    let stop = Arc::new(AtomicBool::new(false));
    topo.servers = Some(tools::Servers::start(topo.server(), topo.server_ip)?);
    start_proxied_sink(&topo, stop.clone())?;
    let gateway = root.join("target/release/astrogate");
    let gateway = gateway.to_string_lossy().into_owned();
    for (name, guarded) in [("plain", false), ("guarded", true)] {
        let path = topo
            .dir
            .write(&format!("{name}.toml"), gateway_config(&topo, guarded))?;
        let path = path.to_string_lossy().into_owned();
        topo.spawn(
            name,
            true,
            "env",
            &["RUST_LOG=warn", &gateway, "run", "--config", &path],
        )?;
    }
    let gw = topo.gw_ip;
    for port in [PLAIN, GUARDED] {
        services::wait_listening(topo.gw(), SocketAddr::new(gw, port), "a gateway")?;
    }
    let header = proxy_v2_header(SocketAddr::new(gw, GUARDED));
    // (rate, gateway CPU us per connection, machine CPU us per connection) per run.
    let mut results: [Vec<(f64, f64, f64)>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..runs {
        for (i, (name, port, prefix)) in
            [("plain", PLAIN, &[][..]), ("guarded", GUARDED, &header[..])]
                .into_iter()
                .enumerate()
        {
            let pid = topo.pid_of(name).context("the gateway's pid")?;
            let dest = Dest {
                addr: SocketAddr::new(gw, port),
                dial: None,
            };
            let (cpu0, busy0) = (process_cpu_s(pid)?, super::busy_jiffies()?);
            let rate = tools::connection_rate_with(&topo.client, dest, prefix, 8, seconds)?;
            let (cpu1, busy1) = (process_cpu_s(pid)?, super::busy_jiffies()?);
            let conns = rate * seconds as f64;
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
            let machine = (busy1 - busy0) as f64 / hz;
            results[i].push((rate, (cpu1 - cpu0) / conns * 1e6, machine / conns * 1e6));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let med = |i: usize, f: fn(&(f64, f64, f64)) -> f64| median(results[i].iter().map(f).collect());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### {} (medians of {runs} runs, {seconds} s each, 8 client threads)\n\n\
         `guarded`: PROXY v2 header in from the balancer, 16-block allow and deny lists on the listener and \
         on the route, a per-source limit, PROXY v2 out to the upstream. `plain`: none of it. Both splice.\n",
        topo.name
    );
    let _ = writeln!(
        out,
        "| measure | plain | guarded | guarded / plain |\n|---|---|---|---|"
    );
    let rows: [(&str, fn(&(f64, f64, f64)) -> f64); 3] = [
        ("new TLS connections/s", |r| r.0),
        ("gateway CPU us per connection", |r| r.1),
        ("whole-machine CPU us per connection", |r| r.2),
    ];
    for (label, f) in rows {
        let (a, b) = (med(0, f), med(1, f));
        let _ = writeln!(out, "| {label} | {a:.1} | {b:.1} | {:.3}x |", b / a);
    }
    Ok(out)
}
