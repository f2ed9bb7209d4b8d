//! `cargo xtask bench`: Astrogate's kernel and user-space paths side by side with direct
//! connections and HAProxy, on loopback and across veth, reported as medians and ratios; then
//! tunnel mode beside the gateway's direct path, over veth and over Yggdrasil.
//! A benchmark, not a test: it asserts nothing and prints what it measured.
mod connrate;
mod ops;
mod tools;
mod tunnel;
mod udp;

use std::{
    fmt::Write as _,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use astrogate_lab::{services, Child, Netns, Veth, Workdir};

use self::tools::{Dest, Servers, HELLO_HOST};
use crate::util::step;

pub struct Options {
    pub runs: usize,
    pub seconds: u64,
    pub idle: usize,
    /// Which topologies to run, by name.
    pub topologies: Vec<String>,
}

/// Every topology, in the order they run.
pub const TOPOLOGIES: [&str; 7] = [
    "loopback",
    "veth",
    "connrate",
    "ops",
    "udp",
    "tunnel-veth",
    "tunnel-ygg",
];

/// One column of the table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Config {
    Direct,
    Kernel,
    Splice,
    Userspace,
    Haproxy,
    HaproxyNoSplice,
    /// The gateway forwarding through a tunnel to `astrogate-tunnel` on the server host.
    Tunnel,
}

impl Config {
    const ALL: [Config; 6] = [
        Config::Direct,
        Config::Kernel,
        Config::Splice,
        Config::Userspace,
        Config::Haproxy,
        Config::HaproxyNoSplice,
    ];

    fn is_astrogate(self) -> bool {
        matches!(
            self,
            Config::Kernel | Config::Splice | Config::Userspace | Config::Tunnel
        )
    }

    fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct",
            Config::Kernel => "astrogate kernel",
            Config::Splice => "astrogate splice",
            Config::Userspace => "astrogate userspace",
            Config::Haproxy => "haproxy splice",
            Config::HaproxyNoSplice => "haproxy no-splice",
            Config::Tunnel => "astrogate tunnel",
        }
    }
}

/// Where each configuration listens: (bulk, echo, tls, idle) ports on the gateway.
fn ports(c: Config) -> (u16, u16, u16, u16) {
    match c {
        Config::Direct => (5201, 9000, 9443, 9500),
        Config::Kernel => (7070, 7070, 8443, 7070),
        Config::Splice => (7078, 7078, 8447, 7078),
        Config::Userspace => (7071, 7071, 8444, 7071),
        Config::Haproxy => (7072, 7074, 8445, 7076),
        Config::HaproxyNoSplice => (7073, 7075, 8446, 7077),
        Config::Tunnel => (7079, 7079, 8448, 7079),
    }
}

#[derive(Default, Clone)]
struct Row {
    up_gbps: f64,
    down_gbps: f64,
    cpu_s_per_gb: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
    conns_per_s: f64,
    kib_per_idle_conn: f64,
    rss_kib_per_idle_conn: f64,
}

/// The namespaces of one topology and everything running in them.
struct Topology {
    name: &'static str,
    /// The configurations measured here, in table order.
    columns: Vec<Config>,
    /// The ratios the table shows, as (numerator, denominator).
    ratios: Vec<(Config, Config)>,
    children: Vec<Child>,
    /// Yggdrasil nodes, for the topologies that have them: they go before the namespaces.
    nodes: Vec<astrogate_lab::yggdrasil::YggNode>,
    servers: Option<Servers>,
    client: Netns,
    gw: Option<Netns>,
    server: Option<Netns>,
    gw_ip: IpAddr,
    /// Where the gateway's direct routes and the direct configuration reach the servers.
    server_ip: IpAddr,
    /// Where the tunnel client dials the gateway, for topologies with a tunnel.
    tunnel_addr: Option<String>,
    dir: Workdir,
}

/// Every astrogate path beside direct connections and HAProxy.
fn main_columns() -> (Vec<Config>, Vec<(Config, Config)>) {
    let ours = [Config::Kernel, Config::Splice, Config::Userspace];
    let ratios = ours
        .iter()
        .flat_map(|&c| [(c, Config::Direct), (c, Config::Haproxy)])
        .collect();
    (Config::ALL.to_vec(), ratios)
}

impl Topology {
    fn gw(&self) -> &Netns {
        self.gw.as_ref().unwrap_or(&self.client)
    }

    fn server(&self) -> &Netns {
        self.server.as_ref().unwrap_or(&self.client)
    }

    fn loopback() -> Result<Topology> {
        let client = Netns::new("bench")?;
        let (columns, ratios) = main_columns();
        Ok(Topology {
            name: "loopback",
            columns,
            ratios,
            nodes: Vec::new(),
            tunnel_addr: None,
            children: Vec::new(),
            servers: None,
            client,
            gw: None,
            server: None,
            gw_ip: "127.0.0.1".parse()?,
            server_ip: "127.0.0.1".parse()?,
            dir: Workdir::new("bench-lo")?,
        })
    }

    /// client --veth-- gateway --veth-- server; the gateway host also routes, so "direct"
    /// crosses the same two veths without a proxy.
    fn veth() -> Result<Topology> {
        let client = Netns::new("bclient")?;
        let gw = Netns::new("bgw")?;
        let server = Netns::new("bserver")?;
        Veth::connect(&client, &["10.1.0.2/24"], &gw, &["10.1.0.1/24"])?;
        Veth::connect(&gw, &["10.2.0.1/24"], &server, &["10.2.0.2/24"])?;
        client.ip(&["route", "add", "default", "via", "10.1.0.1"])?;
        server.ip(&["route", "add", "default", "via", "10.2.0.1"])?;
        astrogate_lab::run(gw.command("sysctl").args(["-qw", "net.ipv4.ip_forward=1"]))?;
        let (columns, ratios) = main_columns();
        Ok(Topology {
            name: "veth",
            columns,
            ratios,
            nodes: Vec::new(),
            tunnel_addr: None,
            children: Vec::new(),
            servers: None,
            client,
            gw: Some(gw),
            server: Some(server),
            gw_ip: "10.1.0.1".parse()?,
            server_ip: "10.2.0.2".parse()?,
            dir: Workdir::new("bench-veth")?,
        })
    }

    fn spawn(&mut self, name: &str, in_gw: bool, program: &str, args: &[&str]) -> Result<()> {
        let ns = if in_gw { self.gw() } else { self.server() };
        let mut cmd = ns.command(program);
        cmd.args(args);
        let log = self.dir.join(&format!("{name}.log"));
        let child = Child::spawn(name, &mut cmd, &log)?;
        self.children.push(child);
        Ok(())
    }

    fn pid_of(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|c| c.name() == name)
            .map(Child::pid)
    }

    fn dest(&self, c: Config, which: usize) -> Dest {
        let (bulk, echo, tls, idle) = ports(c);
        let port = [bulk, echo, tls, idle][which];
        let ip = if c == Config::Direct {
            self.server_ip
        } else {
            self.gw_ip
        };
        let dial = match (c, which) {
            (c, 1) if c.is_astrogate() => Some(("echo.bench".to_string(), 9000)),
            (c, 3) if c.is_astrogate() => Some(("idle.bench".to_string(), 9500)),
            _ => None,
        };
        Dest {
            addr: SocketAddr::new(ip, port),
            dial,
        }
    }
}

pub fn run(root: &Path, opts: &Options) -> Result<()> {
    let idle = raise_fd_limit(opts.idle)?;
    let opts = &Options {
        runs: opts.runs,
        seconds: opts.seconds,
        idle,
        topologies: opts.topologies.clone(),
    };
    let shim = build_shim(root)?;
    let mut report = String::new();
    for (name, make) in [
        ("loopback", Topology::loopback as fn() -> Result<Topology>),
        ("connrate", Topology::veth),
        ("ops", Topology::veth),
        ("udp", Topology::veth),
        ("veth", Topology::veth),
        ("tunnel-veth", Topology::tunnel_veth),
        ("tunnel-ygg", Topology::tunnel_ygg),
    ] {
        if !opts.topologies.iter().any(|t| t == name) {
            continue;
        }
        let special = match name {
            "connrate" => Some(connrate::run(root, &shim, opts.runs, opts.seconds)?),
            "ops" => Some(ops::run(root, opts.runs, opts.seconds)?),
            "udp" => Some(udp::run(root, opts.runs, opts.seconds)?),
            _ => None,
        };
        if let Some(table) = special {
            println!("{table}");
            report.push_str(&table);
            continue;
        }
        let mut topo = make()?;
        step(&format!("bench: {} topology", topo.name));
        start(&mut topo, root, opts.idle)?;
        let rows = measure(&topo, &shim, opts)?;
        let table = render(&topo, &rows, opts);
        println!("{table}");
        report.push_str(&table);
    }
    let out = root.join("target/bench/results.md");
    fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
    step(&format!("bench: results written to {}", out.display()));
    Ok(())
}

/// Raises the open-file limit for this process and the daemons it starts, and returns how
/// many idle connections fit. Raising the hard limit needs CAP_SYS_RESOURCE; without it the soft limit goes
/// up to the hard one.
fn raise_fd_limit(wanted_idle: usize) -> Result<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            bail!(
                "reading the open-file limit: {}",
                std::io::Error::last_os_error()
            );
        }
        let want = (2 * wanted_idle as u64 + 1024).max(limit.rlim_max);
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                bail!(
                    "raising the open-file limit: {}",
                    std::io::Error::last_os_error()
                );
            }
        } else {
            limit = raised;
        }
    }
    // HAProxy reserves about 2.5 descriptors per allowed connection, the tightest of the
    // processes here, and every configuration gets the same count so they compare.
    let fits = (limit.rlim_cur.saturating_sub(2048) * 2 / 5) as usize;
    if fits < wanted_idle {
        step(&format!(
            "bench: the open-file limit ({}) fits {fits} idle connections, not {wanted_idle}",
            limit.rlim_cur
        ));
    }
    Ok(wanted_idle.min(fits))
}

/// Builds the LD_PRELOAD shim that makes iperf3 open every connection with a dial header.
fn build_shim(root: &Path) -> Result<PathBuf> {
    let out = root.join("target/bench/dialshim.so");
    fs::create_dir_all(out.parent().unwrap())?;
    let src = root.join("xtask/src/bench/dialshim.c");
    crate::util::run({
        let mut cmd = Command::new("cc");
        cmd.args(["-O2", "-shared", "-fPIC", "-o"])
            .arg(&out)
            .arg(&src)
            .arg("-ldl");
        cmd
    })?;
    Ok(out)
}

fn start(topo: &mut Topology, root: &Path, idle: usize) -> Result<()> {
    let gateway = root.join("target/release/astrogate");
    let server_ip = topo.server_ip.to_string();
    let gw_ip = topo.gw_ip.to_string();
    if topo.tunnel_addr.is_some() {
        // Connections through the tunnel arrive at the TUN's address, the others at the
        // server's own: the servers listen on the (dual-stack) wildcard, as services do.
        topo.spawn("iperf3", false, "iperf3", &["-s", "-p", "5201"])?;
        topo.servers = Some(Servers::start(topo.server(), "::".parse()?)?);
    } else {
        topo.spawn(
            "iperf3",
            false,
            "iperf3",
            &["-s", "-B", &server_ip, "-p", "5201"],
        )?;
        topo.servers = Some(Servers::start(topo.server(), topo.server_ip)?);
    }
    let direct = match topo.server_ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    for c in topo.columns.clone() {
        let (mode, upstream, tunnels) = match c {
            Config::Kernel => ("kernel", direct.clone(), String::new()),
            Config::Splice => ("splice", direct.clone(), String::new()),
            Config::Userspace => ("userspace", direct.clone(), String::new()),
            Config::Tunnel => (
                "splice",
                "tunnel:bench".to_string(),
                tunnel::gateway_section(topo, root)?,
            ),
            _ => continue,
        };
        let (dial, _, tls, _) = ports(c);
        let config = format!(
            r#"
[gateway]
data_path = "{mode}"
{tunnels}
[[listener]]
name = "dial"
bind = ["{gw_ip}:{dial}"]
protocols = ["dial"]

[[listener]]
name = "tls"
bind = ["{gw_ip}:{tls}"]
protocols = ["tls"]

[[route]]
hosts = ["iperf.bench"]
to = "{upstream}:5201"

[[route]]
hosts = ["echo.bench"]
to = "{upstream}:9000"

[[route]]
hosts = ["idle.bench"]
to = "{upstream}:9500"

[[route]]
hosts = ["{HELLO_HOST}"]
to = "{upstream}:9443"
"#
        );
        let name = process_name(c).unwrap_or("astrogate");
        let path = topo.dir.write(&format!("{name}.toml"), config)?;
        let path = path.to_string_lossy().into_owned();
        let gateway = gateway.to_string_lossy().into_owned();
        topo.spawn(
            name,
            true,
            "env",
            &["RUST_LOG=warn", &gateway, "run", "--config", &path],
        )?;
    }
    for (c, splice, offset) in [
        (Config::Haproxy, true, 0u16),
        (Config::HaproxyNoSplice, false, 1),
    ] {
        let Some(name) = process_name(c).filter(|_| topo.columns.contains(&c)) else {
            continue;
        };
        let path = topo.dir.write(
            &format!("{name}.cfg"),
            haproxy_config(&gw_ip, &server_ip, splice, offset, idle + 50),
        )?;
        let path = path.to_string_lossy().into_owned();
        topo.spawn(name, true, "haproxy", &["-db", "-f", &path])?;
    }
    let ns = topo.gw();
    let mut listening: Vec<u16> = topo
        .columns
        .iter()
        .filter(|&&c| c != Config::Direct)
        .flat_map(|&c| {
            let (bulk, echo, tls, idle) = ports(c);
            [bulk, echo, tls, idle]
        })
        .collect();
    listening.sort_unstable();
    listening.dedup();
    for port in listening {
        services::wait_listening(ns, SocketAddr::new(topo.gw_ip, port), "a benchmark gateway")?;
    }
    if topo.columns.contains(&Config::Tunnel) {
        tunnel::start_client(topo, root)?;
    }
    Ok(())
}

/// The process that serves a configuration (for the tunnel: the tunnel client, whose memory
/// is the one that grows with its connections).
fn process_name(c: Config) -> Option<&'static str> {
    match c {
        Config::Direct => None,
        Config::Kernel => Some("astrogate-kernel"),
        Config::Splice => Some("astrogate-splice"),
        Config::Userspace => Some("astrogate-userspace"),
        Config::Haproxy => Some("haproxy-splice"),
        Config::HaproxyNoSplice => Some("haproxy-nosplice"),
        Config::Tunnel => Some("astrogate-tunnel-gateway"),
    }
}

/// One thread, tcp mode, SNI routing on the TLS frontend as the gateway does it; splice on or
/// off. Frontends per purpose because HAProxy cannot read the dial header.
fn haproxy_config(gw: &str, server: &str, splice: bool, offset: u16, maxconn: usize) -> String {
    let splice = if splice {
        "    option splice-request\n    option splice-response\n"
    } else {
        ""
    };
    let global_splice = if offset == 1 { "    nosplice\n" } else { "" };
    format!(
        r#"global
    nbthread 1
    maxconn {maxconn}
{global_splice}
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
{splice}
frontend bulk
    bind {gw}:{bulk}
    default_backend bulk
backend bulk
    server s {server}:5201

frontend echo
    bind {gw}:{echo}
    default_backend echo
backend echo
    server s {server}:9000

frontend idle
    bind {gw}:{idle}
    default_backend idle
backend idle
    server s {server}:9500

frontend tls
    bind {gw}:{tls}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend hello if {{ req_ssl_sni -i {HELLO_HOST} }}
backend hello
    server s {server}:9443
"#,
        bulk = 7072 + offset,
        echo = 7074 + offset,
        idle = 7076 + offset,
        tls = 8445 + offset,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Busy CPU jiffies of the whole machine: user, nice, system, irq, softirq, steal.
fn busy_jiffies() -> Result<u64> {
    let stat = fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    Ok(f[0] + f[1] + f[2] + f[5] + f[6] + f.get(7).copied().unwrap_or(0))
}

/// One iperf3 run: (Gbit/s received, bytes, CPU seconds used by the whole machine).
fn iperf(
    topo: &Topology,
    c: Config,
    shim: &Path,
    reverse: bool,
    seconds: u64,
) -> Result<(f64, f64, f64)> {
    let dest = topo.dest(c, 0).addr;
    let shim = c.is_astrogate().then_some(shim);
    iperf_to(topo, dest, shim, reverse, seconds).with_context(|| format!("via {}", c.name()))
}

/// One iperf3 run to `dest`, through a dial listener (with the dial shim) when `shim` is
/// given: (Gbit/s received, bytes, CPU seconds used by the whole machine).
fn iperf_to(
    topo: &Topology,
    dest: SocketAddr,
    shim: Option<&Path>,
    reverse: bool,
    seconds: u64,
) -> Result<(f64, f64, f64)> {
    let mut cmd = topo.client.command("env");
    if let Some(shim) = shim {
        cmd.arg(format!("LD_PRELOAD={}", shim.display()))
            .arg("ASTROGATE_DIAL_HOST=iperf.bench")
            .arg("ASTROGATE_DIAL_PORT=5201");
    }
    cmd.args(["iperf3", "-J", "-c"])
        .arg(dest.ip().to_string())
        .arg("-p")
        .arg(dest.port().to_string())
        .arg("-t")
        .arg(seconds.to_string());
    if reverse {
        cmd.arg("-R");
    }
    let before = busy_jiffies()?;
    let out = cmd.output().context("running iperf3")?;
    let after = busy_jiffies()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| -> Option<f64> {
        let end = text.find("\"sum_received\"")?;
        let rest = &text[end..];
        let at = rest.find(key)? + key.len();
        rest[at..]
            .trim_start_matches([':', ' ', '"'])
            .split([',', '\n', '}'])
            .next()?
            .trim()
            .parse()
            .ok()
    };
    let (Some(bps), Some(bytes)) = (field("\"bits_per_second\""), field("\"bytes\"")) else {
        bail!(
            "iperf3 to {dest} gave no result: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((bps / 1e9, bytes, (after - before) as f64 / hz))
}

/// Kernel slab memory: where sockets, their buffers' bookkeeping and map entries live.
/// (MemAvailable moves with the page cache and is too noisy per connection.)
fn slab_kib() -> Result<f64> {
    let meminfo = fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no Slab line in /proc/meminfo")
}

fn rss_kib(pid: u32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

fn measure(topo: &Topology, shim: &Path, opts: &Options) -> Result<Vec<(Config, Row)>> {
    let mut rows = Vec::new();
    for c in topo.columns.clone() {
        step(&format!("bench: {} / {}", topo.name, c.name()));
        let mut row = Row::default();
        let (mut up, mut down, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            let (gbps, bytes, cpu_s) = iperf(topo, c, shim, false, opts.seconds)?;
            up.push(gbps);
            cpu.push(cpu_s / (bytes / 1e9));
            let (gbps, bytes, cpu_s) = iperf(topo, c, shim, true, opts.seconds)?;
            down.push(gbps);
            cpu.push(cpu_s / (bytes / 1e9));
        }
        row.up_gbps = median(up);
        row.down_gbps = median(down);
        row.cpu_s_per_gb = median(cpu);
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            let (a, b) = tools::ping_pong(&topo.client, topo.dest(c, 1), 5000)?;
            p50.push(a);
            p99.push(b);
        }
        row.rtt_p50_us = median(p50);
        row.rtt_p99_us = median(p99);
        row.conns_per_s = tools::connection_rate(&topo.client, topo.dest(c, 2), 8, opts.seconds)?;
        // For the tunnel, the client's memory: the process that holds a user-space stack's
        // state for every connection.
        let process = match c {
            Config::Tunnel => topo.pid_of(tunnel::CLIENT),
            c => process_name(c).and_then(|name| topo.pid_of(name)),
        };
        let (mem0, rss0) = (slab_kib()?, process.map_or(0.0, rss_kib));
        let idle = tools::open_idle(&topo.client, topo.dest(c, 3), opts.idle)?;
        thread::sleep(Duration::from_secs(2));
        let (mem1, rss1) = (slab_kib()?, process.map_or(0.0, rss_kib));
        row.kib_per_idle_conn = (mem1 - mem0) / opts.idle as f64;
        row.rss_kib_per_idle_conn = (rss1 - rss0) / opts.idle as f64;
        drop(idle);
        if let Some(s) = &topo.servers {
            s.release_idle();
        }
        thread::sleep(Duration::from_secs(2));
        rows.push((c, row));
    }
    Ok(rows)
}

/// A table row: its label and how to read it from a configuration's results.
type Measure = (&'static str, fn(&Row) -> f64);

fn render(topo: &Topology, rows: &[(Config, Row)], opts: &Options) -> String {
    let get = |c: Config| {
        rows.iter()
            .find(|(k, _)| *k == c)
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### {} (medians of {} runs, {} s each; idle memory over {} connections)\n",
        topo.name, opts.runs, opts.seconds, opts.idle
    );
    if topo.columns.contains(&Config::Kernel) {
        let _ = writeln!(
            out,
            "`astrogate kernel` is the experimental small-message path: compare its round trips, not its \
             bulk figures (its bulk bytes mostly take the hard-limit copy; README, \"Data paths\").\n"
        );
    }
    if let Some(note) = tunnel::note(topo) {
        let _ = writeln!(out, "{note}\n");
    }
    let short = |c: Config| c.name().trim_start_matches("astrogate ");
    let _ = write!(out, "| measure |");
    for c in &topo.columns {
        let _ = write!(out, " {} |", c.name());
    }
    for &(a, b) in &topo.ratios {
        let _ = write!(out, " {} / {} |", short(a), short(b));
    }
    let _ = writeln!(out);
    let columns = 1 + topo.columns.len() + topo.ratios.len();
    let _ = writeln!(out, "|{}", "---|".repeat(columns));
    let measures: [Measure; 8] = [
        ("throughput up, Gbit/s", |r| r.up_gbps),
        ("throughput down, Gbit/s", |r| r.down_gbps),
        ("CPU s per GB (whole machine)", |r| r.cpu_s_per_gb),
        ("64 B round trip p50, us", |r| r.rtt_p50_us),
        ("64 B round trip p99, us", |r| r.rtt_p99_us),
        ("new TLS connections/s", |r| r.conns_per_s),
        ("kernel slab KiB per idle conn", |r| r.kib_per_idle_conn),
        ("proxy RSS KiB per idle conn", |r| r.rss_kib_per_idle_conn),
    ];
    let ratio = |a: f64, b: f64| {
        if b.abs() < 1e-9 {
            "-".to_string()
        } else {
            format!("{:.2}x", a / b)
        }
    };
    for (label, f) in measures {
        let _ = write!(out, "| {label} |");
        for &c in &topo.columns {
            let _ = write!(out, " {:.2} |", f(&get(c)));
        }
        for &(a, b) in &topo.ratios {
            let _ = write!(out, " {} |", ratio(f(&get(a)), f(&get(b))));
        }
        let _ = writeln!(out);
    }
    out
}
