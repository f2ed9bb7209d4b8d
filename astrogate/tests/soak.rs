//! The randomized differential soak over every data path (issue 7). Rounds of 1 to 64
//! concurrent connections, sizes from 0 bytes to 2 GiB, and ends that read fast or slowly,
//! stall and resume, speak first, half-close early or reset mid-stream. The same scenarios run
//! on the kernel, splice and user-space paths. Every byte is checked at both ends, byte counts
//! and hashes are compared, the access log's counts must match what each side sent, and a
//! connection that stops moving for 5 s while both ends want to move bytes fails the run with
//! a dump of its state.
//!
//! Parameters (environment): ASTROGATE_SOAK_SECONDS (default 240, over all paths together),
//! ASTROGATE_SOAK_SEED (default: new each run, printed), ASTROGATE_SOAK_PATHS (default
//! `kernel,splice,userspace`). `cargo xtask soak --seconds N --seed S` sets them.
mod common;

use std::{
    collections::HashMap,
    fmt::Write as _,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant, SystemTime},
};

use common::{
    soak::{
        self, access_lines, check,
        plan::{self, Rng},
        watch::Watch,
        Env, Finished, SLOTS, UPSTREAM_BASE,
    },
    Lab,
};

const PATHS: [&str; 3] = ["kernel", "splice", "userspace"];
/// The most bytes one round moves, so a round of 64 connections stays short.
const ROUND_BYTES: u64 = 3 << 30;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[derive(Default)]
struct Tally {
    connections: u64,
    resets: u64,
    up: u64,
    down: u64,
    largest: u64,
    fell_back: u64,
    rounds: u64,
    busy: Duration,
    /// Connections with any problem: a wrong byte, a count or hash that disagrees, an access
    /// line that disagrees.
    failed: u64,
    stalls: u64,
}

#[test]
fn randomized_soak_on_every_path() {
    let seconds = env_u64("ASTROGATE_SOAK_SECONDS").unwrap_or(240);
    let seed = env_u64("ASTROGATE_SOAK_SEED").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    let paths: Vec<&'static str> = match std::env::var("ASTROGATE_SOAK_PATHS") {
        Ok(list) => PATHS
            .into_iter()
            .filter(|p| list.split(',').any(|w| w.trim() == *p))
            .collect(),
        Err(_) => PATHS.to_vec(),
    };
    assert!(!paths.is_empty(), "ASTROGATE_SOAK_PATHS names no path");
    eprintln!(
        "soak: seed {seed}, {seconds} s over {paths:?} (repeat with ASTROGATE_SOAK_SEED={seed})"
    );

    let (lab, env) = soak_lab(&paths);
    let pid = lab
        .children
        .iter()
        .find(|c| c.name() == "astrogate")
        .unwrap()
        .pid();
    let ns_name = lab.ns.name().to_string();
    let log_path = lab.dir.join("astrogate.log");
    let log_file = log_path.clone();
    let watch = Watch::start(move || dump(&ns_name, pid, &log_path));

    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tallies: HashMap<&str, Tally> = HashMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut round = 0u64;
    while Instant::now() < deadline && failures.is_empty() {
        let path = paths[(round % paths.len() as u64) as usize];
        // The same scenarios for every path: the generator depends on the set, not the path.
        let set = round / paths.len() as u64;
        let mut rng = Rng::new(seed ^ set.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let count = plan::concurrency(&mut rng);
        let max = ROUND_BYTES / (2 * count as u64);
        let scenarios: Vec<_> = (0..count as u64)
            .map(|i| plan::scenario(&mut rng, set * 100 + i, path, max))
            .collect();
        let began = Instant::now();
        let log_from = std::fs::metadata(&log_file).map_or(0, |m| m.len());
        let finished = soak::run_round(&env, scenarios, &watch);
        let tally = tallies.entry(path).or_default();
        tally.busy += began.elapsed();
        tally.rounds += 1;
        let waited = Instant::now();
        let access = wait_for_access(&log_file, log_from, &finished);
        if std::env::var_os("ASTROGATE_SOAK_DEBUG").is_some() {
            eprintln!("round {round} {path}: {count} connections, {:?} running, {:?} waiting for the access log", began.elapsed(), waited.elapsed());
        }
        for f in &finished {
            let line = f.access_key().and_then(|k| access.get(&k));
            let problems = check(f, line);
            tally.failed += u64::from(!problems.is_empty());
            for problem in problems {
                failures.push(format!(
                    "{path} round {round}, connection {} (client port {:?}): {problem}\n  scenario {:?}\n  client {:?}\n  upstream {:?}\n  access {:?}",
                    f.scenario.id, f.client_port, f.scenario, f.client, f.upstream, line
                ));
            }
            tally.connections += 1;
            tally.resets += u64::from(f.scenario.resets());
            tally.up += f.client.sent;
            tally.down += f.upstream.as_ref().map_or(0, |u| u.sent);
            tally.largest = tally
                .largest
                .max(f.client.sent)
                .max(f.upstream.as_ref().map_or(0, |u| u.sent));
            if line.and_then(|l| l.get("path")).is_some_and(|p| p != path) {
                tally.fell_back += 1;
            }
        }
        round += 1;
    }
    watch.stop();
    let stalls = watch.stalls.lock().unwrap().clone();
    for s in &stalls {
        tallies.entry(s.scenario.path).or_default().stalls += 1;
    }
    eprintln!("{}", summary(&paths, &tallies, started.elapsed(), pid));
    for s in &stalls {
        failures.push(format!("stall: {}", s.dump));
    }
    assert!(
        failures.is_empty(),
        "soak seed {seed}: {} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The gateway with one listener per path, every sniffer on each, and a route per slot.
fn soak_lab(paths: &[&'static str]) -> (Lab, Env) {
    let mut lab = Lab::new("soak");
    // Thousands of short connections through the same ports: let TIME_WAIT be reused.
    let _ = lab
        .ns
        .command("sysctl")
        .args(["-qw", "net.ipv4.tcp_tw_reuse=1"])
        .status();
    let mut config = String::from("[gateway]\nsniff_timeout = \"10s\"\n");
    let mut listeners = HashMap::new();
    for (i, path) in paths.iter().enumerate() {
        let addr: SocketAddr = format!("127.0.0.1:{}", 7201 + i).parse().unwrap();
        listeners.insert(*path, addr);
        writeln!(
            config,
            "\n[[listener]]\nname = \"{path}\"\nbind = [\"{addr}\"]\n\
             protocols = [\"tls\", \"http\", \"dial\"]\ndata_path = \"{path}\""
        )
        .unwrap();
    }
    for slot in 0..SLOTS {
        writeln!(
            config,
            "\n[[route]]\nhosts = [\"{}\"]\nto = \"127.0.0.1:{}\"",
            soak::host(slot),
            UPSTREAM_BASE + slot as u16
        )
        .unwrap();
    }
    lab.gateway(&config);
    let slots = (0..SLOTS)
        .map(|slot| {
            let addr: SocketAddr = format!("127.0.0.1:{}", UPSTREAM_BASE + slot as u16)
                .parse()
                .unwrap();
            lab.ns
                .enter(move || TcpListener::bind(addr))
                .expect("entering the namespace")
                .expect("binding an upstream slot")
        })
        .collect();
    let env = Env {
        listeners,
        slots,
        ns: lab.ns.handle().expect("a namespace handle"),
        ns_name: lab.ns.name().to_string(),
    };
    (lab, env)
}

/// The access-log lines of a round's connections (those written since `from`), once all are.
fn wait_for_access(
    log: &PathBuf,
    from: u64,
    finished: &[Finished],
) -> HashMap<(u16, String, String), HashMap<String, String>> {
    let keys: Vec<_> = finished.iter().filter_map(Finished::access_key).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read(log).unwrap_or_default();
        let since = text.get(from as usize..).unwrap_or_default();
        let lines = access_lines(&String::from_utf8_lossy(since));
        if keys.iter().all(|k| lines.contains_key(k)) || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a stall report shows of the gateway: every socket in the namespace with its queues
/// and TCP state, the kernel path's maps and counters, and the end of the gateway's log.
fn dump(ns: &str, pid: u32, log: &PathBuf) -> String {
    let run = |cmd: &mut Command| {
        cmd.output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("({e})"))
    };
    let mut out = String::new();
    out += "--- ss -tinme (gateway namespace)\n";
    out += &run(Command::new("ip").args(["netns", "exec", ns, "ss", "-tinme"]));
    for (name, json) in common::bpf_map_dumps(pid, &["STATS", "PEERS", "COUNTERS"]) {
        let _ = writeln!(out, "--- map {name}\n{json}");
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    out += "--- gateway log (last 30 lines)\n";
    for line in tail.into_iter().rev() {
        let _ = writeln!(out, "{line}");
    }
    out
}

fn summary(paths: &[&str], t: &HashMap<&str, Tally>, elapsed: Duration, pid: u32) -> String {
    let mut s = format!("soak summary ({:.0} s):\n", elapsed.as_secs_f64());
    s += "path       rounds  connections  resets  fell back  up GiB  down GiB  largest MiB  busy s  failed  stalls\n";
    for p in paths {
        let Some(x) = t.get(p) else { continue };
        let _ = writeln!(
            s,
            "{p:<10} {:>6}  {:>11}  {:>6}  {:>9}  {:>6.2}  {:>8.2}  {:>11}  {:>6.0}  {:>6}  {:>6}",
            x.rounds,
            x.connections,
            x.resets,
            x.fell_back,
            x.up as f64 / (1u64 << 30) as f64,
            x.down as f64 / (1u64 << 30) as f64,
            x.largest >> 20,
            x.busy.as_secs_f64(),
            x.failed,
            x.stalls
        );
    }
    let counters = common::bpf_counters(pid);
    if !counters.is_empty() {
        s += "kernel path counters:";
        for (i, v) in counters.iter().enumerate() {
            let _ = write!(s, " {}={v}", COUNTER_NAMES.get(i).unwrap_or(&"?"));
        }
    }
    s
}

/// `astrogate_common::Counter`, in order.
const COUNTER_NAMES: [&str; 10] = [
    "redirected_skbs",
    "redirected_bytes",
    "passed_skbs",
    "no_peer",
    "redirect_failed",
    "events_lost",
    "fins_dropped",
    "overlaps_trimmed",
    "overlap_bytes",
    "gaps",
];
