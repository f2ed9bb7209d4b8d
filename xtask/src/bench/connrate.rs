//! New connections per second on one core and on two, Astrogate beside HAProxy in the same
//! run: each connection sends a real TLS ClientHello, which is sniffed and routed by its SNI;
//! the server answers one byte and closes. Also the proxies' CPU time and system calls per
//! connection (counted at full speed with perf's syscall tracepoints, not under strace), and
//! bulk throughput through the same processes.
//!
//! On one core the proxies are pinned to CPU 0 and the load generator (client and server) to
//! CPU 1, and the table shows how busy each CPU was: the comparison means something only while
//! the proxy's CPU is the full one. On two cores everything shares both CPUs (this machine has
//! no third), so there the proxies' CPU time per connection is the figure that does not depend
//! on who the bottleneck is.
//!
//! The load generator is Rust on tokio, one single-threaded runtime per CPU with many
//! connections in flight, and the server likewise (SO_REUSEPORT, one listener per CPU):
//! thread-per-connection tools would spend more on themselves than the proxies do.
//!
//! With `CONNRATE_PROFILE=DIR` set, the system-call run also records each proxy with
//! `perf record -g` into `DIR/<process>.data`: where the time goes, kernel against user space.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use astrogate_lab::{services, Netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    median,
    tools::{spawn_in, CLIENT_HELLO, HELLO_HOST},
    Topology,
};
use crate::util::step;

/// The server: reads the ClientHello, answers this one byte, closes.
const SINK: u16 = 9461;
const ANSWER: u8 = b'x';
/// Connections each load-generator thread keeps in flight.
const IN_FLIGHT: usize = 48;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Direct,
    Astrogate { workers: usize },
    Haproxy { nbthread: usize },
}

/// One process under test (or direct connections), and where it runs.
#[derive(Clone, Copy)]
struct Proxy {
    kind: Kind,
    /// `taskset -c` list.
    cpus: &'static str,
    tls: u16,
    /// Where iperf3 goes through it (a dial listener for Astrogate).
    bulk: u16,
}

impl Proxy {
    fn name(&self) -> String {
        match self.kind {
            Kind::Direct => "direct".into(),
            Kind::Astrogate { workers } => format!("astrogate workers={workers}"),
            Kind::Haproxy { nbthread } => format!("haproxy nbthread={nbthread}"),
        }
    }

    fn process(&self) -> String {
        self.name().replace([' ', '='], "-")
    }
}

const A1: Proxy = Proxy {
    kind: Kind::Astrogate { workers: 1 },
    cpus: "0",
    tls: 8461,
    bulk: 7261,
};
const A2: Proxy = Proxy {
    kind: Kind::Astrogate { workers: 2 },
    cpus: "0,1",
    tls: 8462,
    bulk: 7262,
};
const H1: Proxy = Proxy {
    kind: Kind::Haproxy { nbthread: 1 },
    cpus: "0",
    tls: 8463,
    bulk: 7263,
};
const H2: Proxy = Proxy {
    kind: Kind::Haproxy { nbthread: 2 },
    cpus: "0,1",
    tls: 8464,
    bulk: 7264,
};
const DIRECT: Proxy = Proxy {
    kind: Kind::Direct,
    cpus: "",
    tls: SINK,
    bulk: 5201,
};

/// One table: the proxies compared, and where the load generator runs.
struct Scenario {
    title: &'static str,
    load_cpus: &'static [usize],
    columns: [Proxy; 3],
    /// A CPU quota for the proxies, in percent of one CPU.
    quota: Option<u32>,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        title: "1 core: proxies pinned to CPU 0 (taskset), load generator to CPU 1",
        load_cpus: &[1],
        columns: [DIRECT, A1, H1],
        quota: None,
    },
    // One CPU of load cannot outrun one CPU of proxy (the client's and the server's kernel
    // work is about as large as the proxy's), so the table above can end in a tie at the
    // generator's limit. Capped at half a CPU, the proxy is the one that runs out.
    Scenario {
        title: "half a core: proxies pinned to CPU 0 and capped at 50% of it (CFS quota), \
                load generator on CPU 1",
        load_cpus: &[1],
        columns: [DIRECT, A1, H1],
        quota: Some(50),
    },
    Scenario {
        title: "2 cores: proxies on CPUs 0-1 (taskset), load generator sharing them",
        load_cpus: &[0, 1],
        columns: [DIRECT, A2, H2],
        quota: None,
    },
];

/// A CPU cgroup with a quota holding some processes; they go back to the root group when
/// dropped. Either cgroup version: v1's `cpu` hierarchy or v2's `cpu.max`.
struct CpuCap {
    dir: std::path::PathBuf,
    root: std::path::PathBuf,
    pids: Vec<u32>,
}

impl CpuCap {
    fn new(percent: u32, pids: Vec<u32>) -> Result<CpuCap> {
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        let (root, limit) = if v1.join("cpu.cfs_quota_us").exists() {
            (v1.to_path_buf(), None)
        } else {
            let v2 = Path::new("/sys/fs/cgroup");
            fs::write(v2.join("cgroup.subtree_control"), "+cpu")
                .context("enabling cgroup v2 cpu")?;
            (v2.to_path_buf(), Some(format!("{} 100000", percent * 1000)))
        };
        let dir = root.join(format!("astrogate-bench-{}", std::process::id()));
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let cap = CpuCap { dir, root, pids };
        match limit {
            Some(max) => fs::write(cap.dir.join("cpu.max"), max)?,
            None => {
                fs::write(cap.dir.join("cpu.cfs_period_us"), "100000")?;
                fs::write(
                    cap.dir.join("cpu.cfs_quota_us"),
                    (percent * 1000).to_string(),
                )?;
            }
        }
        for pid in &cap.pids {
            fs::write(cap.dir.join("cgroup.procs"), pid.to_string())
                .with_context(|| format!("moving {pid} into {}", cap.dir.display()))?;
        }
        Ok(cap)
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        for pid in &self.pids {
            let _ = fs::write(self.root.join("cgroup.procs"), pid.to_string());
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

fn astrogate_config(topo: &Topology, p: &Proxy, workers: usize) -> String {
    let (gw, server) = (topo.gw_ip, topo.server_ip);
    format!(
        r#"
[gateway]
workers = {workers}

[[listener]]
name = "tls"
bind = ["{gw}:{tls}"]
protocols = ["tls"]

[[listener]]
name = "dial"
bind = ["{gw}:{bulk}"]
protocols = ["dial"]

[[route]]
hosts = ["{HELLO_HOST}"]
to = "{server}:{SINK}"

[[route]]
hosts = ["iperf.bench"]
to = "{server}:5201"
"#,
        tls = p.tls,
        bulk = p.bulk
    )
}

/// SNI routing as the gateway does it, splice-auto (HAProxy's recommended splice setting), no
/// logging (the gateway's access log is off too).
fn haproxy_config(topo: &Topology, p: &Proxy, nbthread: usize) -> String {
    let (gw, server) = (topo.gw_ip, topo.server_ip);
    format!(
        r#"global
    nbthread {nbthread}
    maxconn 4000

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option splice-auto

frontend tls
    bind {gw}:{tls}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend hello if {{ req_ssl_sni -i {HELLO_HOST} }}
backend hello
    server s {server}:{SINK}

frontend bulk
    bind {gw}:{bulk}
    default_backend bulk
backend bulk
    server s {server}:5201
"#,
        tls = p.tls,
        bulk = p.bulk
    )
}

fn start_proxies(topo: &mut Topology, root: &Path) -> Result<()> {
    let gateway = root.join("target/release/astrogate");
    let gateway = gateway.to_string_lossy().into_owned();
    for p in [A1, A2, H1, H2] {
        let name = p.process();
        match p.kind {
            Kind::Astrogate { workers } => {
                let path = topo
                    .dir
                    .write(&format!("{name}.toml"), astrogate_config(topo, &p, workers))?;
                let path = path.to_string_lossy().into_owned();
                topo.spawn(
                    &name,
                    true,
                    "taskset",
                    &[
                        "-c",
                        p.cpus,
                        "env",
                        "RUST_LOG=warn",
                        &gateway,
                        "run",
                        "--config",
                        &path,
                    ],
                )?;
            }
            Kind::Haproxy { nbthread } => {
                let path = topo
                    .dir
                    .write(&format!("{name}.cfg"), haproxy_config(topo, &p, nbthread))?;
                let path = path.to_string_lossy().into_owned();
                topo.spawn(
                    &name,
                    true,
                    "taskset",
                    &["-c", p.cpus, "haproxy", "-db", "-f", &path],
                )?;
            }
            Kind::Direct => {}
        }
        services::wait_listening(topo.gw(), SocketAddr::new(topo.gw_ip, p.tls), &name)?;
    }
    Ok(())
}

/// Pins the calling thread to `cpus`.
fn pin(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity take
    // pointers to it that live for the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn current_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The server: one thread and listener (SO_REUSEPORT) per load CPU. Stopped when dropped.
struct Sink {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Sink {
    fn start(ns: &Netns, addr: SocketAddr, cpus: &[usize]) -> Result<Sink> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &cpu in cpus {
            let socket = ns.enter(move || -> std::io::Result<std::net::TcpListener> {
                let s = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::STREAM,
                    None,
                )?;
                s.set_reuse_address(true)?;
                s.set_reuse_port(true)?;
                s.set_nonblocking(true)?;
                s.bind(&addr.into())?;
                s.listen(4096)?;
                Ok(s.into())
            })??;
            let stop = stop.clone();
            threads.push(thread::spawn(move || {
                pin(&[cpu]);
                current_thread_runtime().block_on(serve(socket, stop));
            }));
        }
        Ok(Sink { stop, threads })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

async fn serve(socket: std::net::TcpListener, stop: Arc<AtomicBool>) {
    let Ok(listener) = tokio::net::TcpListener::from_std(socket) else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let Ok((mut s, _)) = accepted else { continue };
        tokio::spawn(async move {
            let mut hello = [0u8; CLIENT_HELLO.len()];
            if s.read_exact(&mut hello).await.is_ok() {
                let _ = s.write_all(&[ANSWER]).await;
            }
        });
    }
}

/// One connection: the ClientHello out, exactly the one answer byte and EOF back.
async fn one(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(CLIENT_HELLO).await?;
    let mut back = [0u8; 2];
    let mut got = 0;
    loop {
        match s.read(&mut back[got..]).await? {
            0 => break,
            n => got += n,
        }
        if got == back.len() {
            break;
        }
    }
    if got != 1 || back[0] != ANSWER {
        return Err(std::io::Error::other("wrong answer"));
    }
    Ok(())
}

/// The load generator: one thread per CPU in `cpus`, each keeping `IN_FLIGHT` connections
/// going until stopped.
struct Load {
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(ns: &Netns, addr: SocketAddr, cpus: &[usize]) -> Result<Load> {
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &cpu in cpus {
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            threads.push(spawn_in(ns, move || {
                pin(&[cpu]);
                current_thread_runtime().block_on(async move {
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..IN_FLIGHT {
                        let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
                        tasks.spawn(async move {
                            while !stop.load(Ordering::Relaxed) {
                                let r = tokio::time::timeout(Duration::from_secs(5), one(addr));
                                match r.await {
                                    Ok(Ok(())) => done.fetch_add(1, Ordering::Relaxed),
                                    _ => failed.fetch_add(1, Ordering::Relaxed),
                                };
                            }
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                });
            })?);
        }
        Ok(Load {
            done,
            failed,
            stop,
            threads,
        })
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.failed.load(Ordering::Relaxed)
    }
}

/// Busy and total jiffies of each CPU.
fn cpu_jiffies() -> Result<Vec<(u64, u64)>> {
    let stat = fs::read_to_string("/proc/stat")?;
    Ok(stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let idle = f[3] + f.get(4).copied().unwrap_or(0);
            let total: u64 = f.iter().take(8).sum();
            (total - idle, total)
        })
        .collect())
}

/// What one timed run saw.
#[derive(Default, Clone)]
struct Sample {
    rate: f64,
    proxy_cpu_us: f64,
    /// Percent busy, per CPU.
    busy: Vec<f64>,
    failed: u64,
}

/// Runs the load at `addr` for `seconds` after a half-second warm-up. `during` runs over the
/// timed window (perf, for the system-call count) and its result is returned beside.
fn timed<T>(
    topo: &Topology,
    addr: SocketAddr,
    cpus: &[usize],
    pid: Option<u32>,
    seconds: u64,
    during: impl FnOnce() -> Result<T>,
) -> Result<(Sample, T, u64)> {
    let load = Load::start(&topo.client, addr, cpus)?;
    thread::sleep(Duration::from_millis(500));
    let cpu_of = |pid: Option<u32>| pid.map_or(Ok(0.0), super::ops::process_cpu_s);
    let (n0, t0, c0, j0) = (
        load.done.load(Ordering::Relaxed),
        Instant::now(),
        cpu_of(pid)?,
        cpu_jiffies()?,
    );
    let extra = during()?;
    thread::sleep(Duration::from_secs(seconds).saturating_sub(t0.elapsed()));
    let (n1, t1, c1, j1) = (
        load.done.load(Ordering::Relaxed),
        Instant::now(),
        cpu_of(pid)?,
        cpu_jiffies()?,
    );
    let failed = load.finish();
    let conns = n1 - n0;
    let busy = j0
        .iter()
        .zip(&j1)
        .map(|(a, b)| 100.0 * (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64)
        .collect();
    let sample = Sample {
        rate: conns as f64 / (t1 - t0).as_secs_f64(),
        proxy_cpu_us: (c1 - c0) / conns.max(1) as f64 * 1e6,
        busy,
        failed,
    };
    Ok((sample, extra, conns))
}

/// Counts the process's system calls by name for `seconds`, with perf's tracepoints.
fn count_syscalls(pid: u32, seconds: u64) -> Result<BTreeMap<String, u64>> {
    let out = std::process::Command::new("perf")
        .args(["stat", "-x", ",", "-e", "syscalls:sys_enter_*", "-p"])
        .arg(pid.to_string())
        .args(["--", "sleep"])
        .arg(seconds.to_string())
        .output()
        .context("running perf stat")?;
    let text = String::from_utf8_lossy(&out.stderr);
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split(',');
        let (Some(n), Some(_), Some(event)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let (Ok(n), Some(name)) = (n.parse::<u64>(), event.strip_prefix("syscalls:sys_enter_"))
        else {
            continue;
        };
        if n > 0 {
            counts.insert(name.to_string(), n);
        }
    }
    if counts.is_empty() {
        bail!("perf counted no system calls: {}", text.trim());
    }
    Ok(counts)
}

#[derive(Default)]
struct Column {
    samples: Vec<Sample>,
    /// System calls per connection, by name.
    syscalls: BTreeMap<String, f64>,
    bulk_up: Vec<f64>,
    bulk_down: Vec<f64>,
}

pub fn run(root: &Path, shim: &Path, runs: usize, seconds: u64) -> Result<String> {
    let mut topo = Topology::veth()?;
    topo.name = "connection rate (veth)";
    step("bench: connection rate on 1 and 2 cores beside HAProxy");
    topo.spawn(
        "iperf3",
        false,
        "iperf3",
        &["-s", "-B", &topo.server_ip.to_string(), "-p", "5201"],
    )?;
    start_proxies(&mut topo, root)?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### {} (medians of {runs} runs, {seconds} s each, {IN_FLIGHT} connections in flight per \
         load thread)\n\nEach connection: a real TLS ClientHello (517 bytes) sniffed and routed by SNI, one \
         byte back, close. System calls are counted by perf's tracepoints over one more run at full speed, per connect(2) (one per proxied connection). Both \
         proxies splice (Astrogate `auto`, HAProxy `splice-auto`) and log nothing.",
        topo.name
    );
    for sc in &SCENARIOS {
        step(&format!("bench: {}", sc.title));
        let sink = Sink::start(
            topo.server(),
            SocketAddr::new(topo.server_ip, SINK),
            sc.load_cpus,
        )?;
        let pids = sc.columns.iter().filter_map(|p| topo.pid_of(&p.process()));
        let cap = sc
            .quota
            .map(|q| CpuCap::new(q, pids.collect()))
            .transpose()?;
        let mut cols: Vec<Column> = sc.columns.iter().map(|_| Column::default()).collect();
        let addr = |p: &Proxy| match p.kind {
            Kind::Direct => SocketAddr::new(topo.server_ip, SINK),
            _ => SocketAddr::new(topo.gw_ip, p.tls),
        };
        for _ in 0..runs {
            for (p, col) in sc.columns.iter().zip(cols.iter_mut()) {
                let pid = topo.pid_of(&p.process());
                let (s, (), _) = timed(&topo, addr(p), sc.load_cpus, pid, seconds, || Ok(()))?;
                col.samples.push(s);
            }
        }
        for (p, col) in sc.columns.iter().zip(cols.iter_mut()) {
            let Some(pid) = topo.pid_of(&p.process()) else {
                continue;
            };
            let (_, counts, _) = timed(&topo, addr(p), sc.load_cpus, None, seconds, || {
                if let Ok(dir) = std::env::var("CONNRATE_PROFILE") {
                    let _ = std::process::Command::new("perf")
                        .args(["record", "-g", "-o"])
                        .arg(format!("{dir}/{}.data", p.process()))
                        .args(["-p", &pid.to_string(), "--", "sleep", "2"])
                        .output();
                }
                count_syscalls(pid, seconds)
            })?;
            // perf needs a moment to attach to every thread, so its window is shorter than
            // the run's: the count is taken per connect(2), which each proxied connection
            // makes exactly once (the table shows the run's failures; there were none).
            let connects = counts.get("connect").copied().unwrap_or(0).max(1) as f64;
            col.syscalls = counts
                .into_iter()
                .map(|(k, v)| (k, v as f64 / connects))
                .collect();
        }
        for _ in 0..runs {
            for (p, col) in sc.columns.iter().zip(cols.iter_mut()) {
                let dest = match p.kind {
                    Kind::Direct => SocketAddr::new(topo.server_ip, 5201),
                    _ => SocketAddr::new(topo.gw_ip, p.bulk),
                };
                let via_dial = matches!(p.kind, Kind::Astrogate { .. }).then_some(shim);
                col.bulk_up
                    .push(super::iperf_to(&topo, dest, via_dial, false, seconds)?.0);
                col.bulk_down
                    .push(super::iperf_to(&topo, dest, via_dial, true, seconds)?.0);
            }
        }
        drop((sink, cap));
        render(&mut out, sc, &cols);
    }
    Ok(out)
}

fn render(out: &mut String, sc: &Scenario, cols: &[Column]) {
    let _ = writeln!(out, "\n#### {}\n", sc.title);
    let _ = write!(out, "| measure |");
    for p in &sc.columns {
        let _ = write!(out, " {} |", p.name());
    }
    let _ = writeln!(out, " astrogate / haproxy |\n|---|---|---|---|---|");
    let med = |c: &Column, f: &dyn Fn(&Sample) -> f64| median(c.samples.iter().map(f).collect());
    let total = |c: &Column| c.syscalls.values().sum::<f64>();
    type Get<'a> = Box<dyn Fn(&Column) -> f64 + 'a>;
    let mut rows: Vec<(String, Get)> = vec![
        (
            "new connections/s".into(),
            Box::new(|c| med(c, &|s| s.rate)),
        ),
        (
            "proxy CPU us per connection".into(),
            Box::new(|c| med(c, &|s| s.proxy_cpu_us)),
        ),
        ("system calls per connection".into(), Box::new(total)),
        (
            "failed connections (all runs)".into(),
            Box::new(|c| c.samples.iter().map(|s| s.failed as f64).sum()),
        ),
    ];
    for cpu in 0..2 {
        rows.push((
            format!("CPU {cpu} busy %"),
            Box::new(move |c| med(c, &|s| s.busy.get(cpu).copied().unwrap_or(0.0))),
        ));
    }
    rows.push((
        "bulk up, Gbit/s".into(),
        Box::new(|c| median(c.bulk_up.clone())),
    ));
    rows.push((
        "bulk down, Gbit/s".into(),
        Box::new(|c| median(c.bulk_down.clone())),
    ));
    for (label, get) in &rows {
        let v: Vec<f64> = cols.iter().map(|c| get(c)).collect();
        let _ = write!(out, "| {label} |");
        // Direct connections have no proxy process to measure.
        let proxy_only = label.starts_with("proxy") || label.starts_with("system");
        for (x, p) in v.iter().zip(&sc.columns) {
            if proxy_only && p.kind == Kind::Direct {
                let _ = write!(out, " - |");
            } else {
                let _ = write!(out, " {x:.1} |");
            }
        }
        let ratio = if v[2].abs() > 1e-9 {
            format!("{:.2}x", v[1] / v[2])
        } else {
            "-".into()
        };
        let _ = writeln!(out, " {ratio} |");
    }
    // The system calls behind the totals, largest first.
    let mut names: Vec<&String> = cols[1]
        .syscalls
        .keys()
        .chain(cols[2].syscalls.keys())
        .collect();
    names.sort();
    names.dedup();
    let per = |c: &Column, n: &str| c.syscalls.get(n).copied().unwrap_or(0.0);
    names.sort_by(|a, b| {
        (per(&cols[1], b) + per(&cols[2], b)).total_cmp(&(per(&cols[1], a) + per(&cols[2], a)))
    });
    let _ = writeln!(
        out,
        "\n| system calls per connection | {} | {} |\n|---|---|---|",
        sc.columns[1].name(),
        sc.columns[2].name()
    );
    for n in names
        .into_iter()
        .filter(|n| per(&cols[1], n) + per(&cols[2], n) >= 0.05)
    {
        let _ = writeln!(
            out,
            "| {n} | {:.2} | {:.2} |",
            per(&cols[1], n),
            per(&cols[2], n)
        );
    }
}
