//! Shared set-up for the integration tests: one namespace per test with the real gateway, real
//! servers and real clients on its loopback. Guards clean up in reverse order even on panic.
#![allow(dead_code)]

pub mod rawtcp;
pub mod soak;
pub mod streams;

use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use astrogate_lab::{services, start_gateway, wait_for, Child, Netns, Tap, Veth, Workdir};

pub const GATEWAY: &str = env!("CARGO_BIN_EXE_astrogate");

/// Field order is drop order: processes and taps go before the namespace, the namespace before
/// the files its processes used.
pub struct Lab {
    pub children: Vec<Child>,
    pub taps: Vec<Tap>,
    pub peers: Vec<Netns>,
    pub ns: Netns,
    pub dir: Workdir,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        let ns = Netns::new(tag).expect("creating the test namespace");
        let dir = Workdir::new(tag).expect("creating the test directory");
        Lab {
            children: Vec::new(),
            taps: Vec::new(),
            peers: Vec::new(),
            ns,
            dir,
        }
    }

    /// Routes `cidr` (an IPv4 /24) to a veth whose far end never answers: connects to it time
    /// out instead of failing at once.
    pub fn blackhole(&mut self, cidr: &str, local: &str) {
        let void = Netns::new("void").expect("creating the blackhole namespace");
        let veth = Veth::connect(&self.ns, &[local], &void, &[]).expect("creating the veth");
        let target = cidr
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".0")
            .to_string()
            + ".1";
        self.ns
            .ip(&[
                "neigh",
                "add",
                &target,
                "lladdr",
                "02:00:00:00:00:01",
                "dev",
                &veth.a_if,
                "nud",
                "permanent",
            ])
            .expect("adding a permanent neighbour");
        self.peers.push(void);
    }

    /// Starts the gateway with `config` and waits until it serves.
    pub fn gateway(&mut self, config: &str) {
        let child = start_gateway(&self.ns, Path::new(GATEWAY), config, &self.dir)
            .unwrap_or_else(|e| panic!("{e}"));
        self.children.push(child);
    }

    /// The gateway's log so far.
    pub fn gateway_log(&self) -> String {
        self.children
            .iter()
            .find(|c| c.name() == "astrogate")
            .map(Child::output)
            .unwrap_or_default()
    }

    /// Waits for the access-log line matching every `needle`.
    pub fn wait_access_log(&self, needles: &[&str]) -> String {
        let found = wait_for("an access-log line", Duration::from_secs(10), || {
            self.gateway_log()
                .lines()
                .find(|l| l.contains("astrogate::access") && needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
        });
        found.unwrap_or_else(|e| panic!("{e}: wanted {needles:?} in\n{}", self.gateway_log()))
    }

    /// Starts a long-running process inside the namespace, keeps its guard, and waits for
    /// `ready` to accept connections when given.
    pub fn spawn(&mut self, name: &str, program: &str, args: &[&str], ready: Option<SocketAddr>) {
        let mut cmd = self.ns.command(program);
        cmd.args(args).current_dir(self.dir.path());
        let log = self.dir.join(&format!("{name}.log"));
        let child = Child::spawn(name, &mut cmd, &log).unwrap_or_else(|e| panic!("{e}"));
        self.children.push(child);
        if let Some(addr) = ready {
            self.wait_listening(addr, name);
        }
    }

    pub fn wait_listening(&self, addr: SocketAddr, what: &str) {
        let ns = &self.ns;
        wait_for(
            &format!("{what} to listen on {addr}"),
            Duration::from_secs(10),
            || {
                ns.enter(move || TcpStream::connect(addr).is_ok())
                    .ok()
                    .filter(|up| *up)
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Serves `files` (path, contents) over HTTP with Python's http.server.
    pub fn http_server(&mut self, name: &str, addr: SocketAddr, files: &[(&str, &str)]) {
        let child = services::http_server(&self.ns, &self.dir, name, addr, files)
            .unwrap_or_else(|e| panic!("{e}"));
        self.children.push(child);
    }

    /// A recording relay from `listen` to `target`.
    pub fn tap(&mut self, listen: &str, target: &str) -> usize {
        let tap = Tap::start(&self.ns, listen.parse().unwrap(), target.parse().unwrap())
            .unwrap_or_else(|e| panic!("{e}"));
        self.taps.push(tap);
        self.taps.len() - 1
    }

    /// Runs a client program inside the namespace to completion.
    pub fn client(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = self.ns.command(program);
        cmd.args(args).current_dir(self.dir.path());
        cmd.output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
    }

    /// A self-signed certificate for `host`, as (cert, key) paths.
    pub fn cert(&self, host: &str) -> (String, String) {
        let (cert, key) =
            services::self_signed_cert(&self.dir, host, &[]).unwrap_or_else(|e| panic!("{e}"));
        (
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )
    }
}

/// Entry counts of the BPF maps a process holds, by map name. The maps are found through the
/// process's own descriptors (/proc/PID/fdinfo) and counted with bpftool, from outside.
pub fn bpf_maps_of(pid: u32) -> std::collections::HashMap<String, usize> {
    let run = |args: &[&str]| {
        let out = Command::new("bpftool")
            .args(args)
            .output()
            .expect("running bpftool");
        assert!(out.status.success(), "bpftool {args:?}: {}", stderr(&out));
        stdout(&out)
    };
    let mut maps = std::collections::HashMap::new();
    let fdinfo = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("reading fdinfo");
    for entry in fdinfo.flatten() {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")) else {
            continue;
        };
        let id = id.trim();
        let show = run(&["map", "show", "id", id]);
        // bpftool can dump hash maps; a sockhash's values are sockets and cannot be read back.
        if show.split_whitespace().nth(1) != Some("hash") {
            continue;
        }
        let name = show
            .split_whitespace()
            .skip_while(|w| *w != "name")
            .nth(1)
            .unwrap_or("")
            .to_string();
        let dump = run(&["map", "dump", "id", id]);
        let count = dump
            .lines()
            .find_map(|l| {
                l.strip_prefix("Found ")
                    .and_then(|r| r.split_whitespace().next())
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        maps.insert(name, count);
    }
    maps
}

/// Sums the little-endian u64 at `offset` of every value in the process's hash map `name`.
pub fn bpf_stat_sum(pid: u32, name: &str, offset: usize) -> u64 {
    let fdinfo = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).expect("reading fdinfo");
    for entry in fdinfo.flatten() {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")) else {
            continue;
        };
        let id = id.trim();
        let show = Command::new("bpftool")
            .args(["map", "show", "id", id])
            .output()
            .unwrap();
        if !stdout(&show).contains(&format!("name {name} ")) {
            continue;
        }
        let dump = Command::new("bpftool")
            .args(["-j", "map", "dump", "id", id])
            .output()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&dump.stdout).expect("bpftool JSON");
        let mut sum = 0u64;
        for element in json.as_array().into_iter().flatten() {
            let bytes: Vec<u8> = element["value"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|b| b.as_str())
                .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
                .collect();
            if let Some(v) = bytes.get(offset..offset + 8) {
                sum += u64::from_le_bytes(v.try_into().unwrap());
            }
        }
        return sum;
    }
    panic!("process {pid} holds no map named {name}");
}

/// The BPF map ids a process holds, with their names and types (from `bpftool map show`).
fn bpf_maps_held(pid: u32) -> Vec<(String, String, String)> {
    let mut maps = Vec::new();
    let Ok(fdinfo) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return maps;
    };
    for entry in fdinfo.flatten() {
        let info = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Some(id) = info.lines().find_map(|l| l.strip_prefix("map_id:")) else {
            continue;
        };
        let id = id.trim().to_string();
        let Ok(show) = Command::new("bpftool")
            .args(["map", "show", "id", &id])
            .output()
        else {
            continue;
        };
        let show = stdout(&show);
        let kind = show.split_whitespace().nth(1).unwrap_or("").to_string();
        let name = show
            .split_whitespace()
            .skip_while(|w| *w != "name")
            .nth(1)
            .unwrap_or("")
            .to_string();
        maps.push((id, name, kind));
    }
    maps
}

/// `bpftool map dump` of each named map a process holds, for failure reports.
pub fn bpf_map_dumps(pid: u32, names: &[&str]) -> Vec<(String, String)> {
    bpf_maps_held(pid)
        .into_iter()
        .filter(|(_, name, _)| names.contains(&name.as_str()))
        .map(|(id, name, _)| {
            let dump = Command::new("bpftool")
                .args(["map", "dump", "id", &id])
                .output()
                .map(|o| stdout(&o))
                .unwrap_or_default();
            (name, dump)
        })
        .collect()
}

/// The kernel path's counters (the COUNTERS per-CPU array), summed over CPUs, by index.
pub fn bpf_counters(pid: u32) -> Vec<u64> {
    let Some((id, _, _)) = bpf_maps_held(pid)
        .into_iter()
        .find(|(_, name, _)| name == "COUNTERS")
    else {
        return Vec::new();
    };
    let Ok(out) = Command::new("bpftool")
        .args(["-j", "map", "dump", "id", &id])
        .output()
    else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let le = |v: &serde_json::Value| -> u64 {
        match v {
            serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
            serde_json::Value::Array(bytes) => {
                let raw: Vec<u8> = bytes
                    .iter()
                    .filter_map(|b| b.as_str())
                    .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
                    .collect();
                raw.get(..8)
                    .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
            }
            _ => 0,
        }
    };
    let mut sums = Vec::new();
    for element in json.as_array().into_iter().flatten() {
        let total = element["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|cpu| le(&cpu["value"]))
            .sum();
        sums.push(total);
    }
    sums
}

/// Counts the bytes a process moves through read- and write-family system calls while the
/// guard lives, with strace attached from outside.
pub struct SyscallBytes {
    strace: std::process::Child,
    log: std::path::PathBuf,
}

impl SyscallBytes {
    pub fn attach(pid: u32, log: std::path::PathBuf) -> SyscallBytes {
        let strace = Command::new("strace")
            .args(["-f", "-qq", "-e", "signal=none"])
            .args([
                "-e",
                "trace=read,readv,recvfrom,recvmsg,write,writev,sendto,sendmsg,splice",
            ])
            .arg("-o")
            .arg(&log)
            .args(["-p", &pid.to_string()])
            .spawn()
            .expect("starting strace");
        // Wait until strace traces every thread of the process, so no byte moves unwatched
        // (a fixed sleep let a late attach pass without watching the whole transfer).
        let traced = wait_for(
            "strace to attach to every thread",
            Duration::from_secs(10),
            || {
                let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
                let all = tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("status"))
                        .unwrap_or_default()
                        .lines()
                        .find_map(|l| l.strip_prefix("TracerPid:"))
                        .is_some_and(|v| v.trim() != "0")
                });
                all.then_some(())
            },
        );
        traced.unwrap_or_else(|e| panic!("{e}"));
        SyscallBytes { strace, log }
    }

    /// Detaches and returns (bytes read, bytes written, bytes spliced). Spliced bytes move
    /// between kernel buffers at user space's request, never through its memory.
    pub fn finish(mut self) -> (u64, u64, u64) {
        // SAFETY: SIGINT to our own strace child makes it detach cleanly.
        unsafe { libc::kill(self.strace.id() as i32, libc::SIGINT) };
        let _ = self.strace.wait();
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let (mut read, mut written, mut spliced) = (0u64, 0u64, 0u64);
        for line in text.lines() {
            let call = line.split_whitespace().nth(1).unwrap_or("");
            let Some(n) = line
                .rsplit("= ")
                .next()
                .and_then(|r| r.split_whitespace().next())
            else {
                continue;
            };
            let Ok(n) = n.parse::<i64>() else { continue };
            if n <= 0 {
                continue;
            }
            if call.starts_with("splice") {
                spliced += n as u64;
            } else if call.starts_with("read") || call.starts_with("recv") {
                read += n as u64;
            } else {
                written += n as u64;
            }
        }
        (read, written, spliced)
    }
}

impl Drop for SyscallBytes {
    fn drop(&mut self) {
        let _ = self.strace.kill();
        let _ = self.strace.wait();
    }
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The value of `key=` in an access-log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}
