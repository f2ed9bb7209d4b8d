//! Network namespaces as RAII guards.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

use super::process::{run, LabError};

const PREFIX: &str = "astg-";
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with loopback up. Dropping it kills every process still inside and
/// deletes it, with its veth ends.
#[derive(Debug)]
pub struct Netns {
    name: String,
    handle: File,
}

impl Netns {
    /// Creates `astg-<pid>-<n>-<tag>`. Namespaces left behind by test processes that no longer
    /// exist (killed before their guards ran) are removed first.
    pub fn new(tag: &str) -> Result<Netns, LabError> {
        super::require_root()?;
        remove_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on the guard owns the namespace, so a later failure still deletes it.
        let path = format!("/run/netns/{name}");
        let handle = match File::open(&path) {
            Ok(f) => f,
            Err(source) => {
                let _ = run(Command::new("ip").args(["netns", "del", &name]));
                return Err(LabError::Io { what: path, source });
            }
        };
        let ns = Netns { name, handle };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `f` on a thread inside the namespace. Sockets it creates stay in the namespace
    /// wherever they are used afterwards, and threads it spawns start inside it too.
    pub fn enter<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        let handle = self.handle.try_clone().map_err(|source| LabError::Io {
            what: format!("duplicating the handle of {}", self.name),
            source,
        })?;
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter_on_this_thread(&handle, &name)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| {
            Err(LabError::Io {
                what: "a thread inside the namespace panicked".into(),
                source: std::io::Error::other("panic"),
            })
        })
    }

    /// A duplicate handle for threads that enter the namespace themselves.
    pub fn handle(&self) -> Result<File, LabError> {
        self.handle.try_clone().map_err(|source| LabError::Io {
            what: format!("duplicating the handle of {}", self.name),
            source,
        })
    }

    /// Gives the namespace its own `/etc/hosts`: `ip netns exec` bind-mounts
    /// `/etc/netns/<name>/hosts` over it, so every program the lab starts in the namespace
    /// (the gateway included) resolves these names through the ordinary system resolver.
    /// A `resolv.conf` pointing at the namespace's own loopback comes with it, so a name not in
    /// the file fails at once instead of waiting on the host's DNS servers.
    pub fn set_hosts(&self, entries: &[(std::net::IpAddr, &str)]) -> Result<(), LabError> {
        let dir = etc_dir(&self.name);
        let io = |what: String| move |source| LabError::Io { what, source };
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {dir}")))?;
        let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (addr, name) in entries {
            hosts.push_str(&format!("{addr} {name}\n"));
        }
        std::fs::write(format!("{dir}/hosts"), hosts)
            .map_err(io(format!("writing {dir}/hosts")))?;
        std::fs::write(
            format!("{dir}/resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .map_err(io(format!("writing {dir}/resolv.conf")))?;
        Ok(())
    }

    /// Pids of processes inside the namespace.
    pub fn pids(&self) -> Vec<i32> {
        run(Command::new("ip").args(["netns", "pids", &self.name]))
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Moves the calling thread into the namespace `handle` refers to.
pub fn enter_on_this_thread(handle: &File, name: &str) -> Result<(), LabError> {
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    if unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(LabError::Io {
            what: format!("entering namespace {name}"),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: kill(2) on processes confined to our own test namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
        let _ = std::fs::remove_dir_all(etc_dir(&self.name));
    }
}

/// Where `ip netns exec` looks for files to mount over `/etc`.
fn etc_dir(name: &str) -> String {
    format!("/etc/netns/{name}")
}

fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            if let Ok(out) = run(Command::new("ip").args(["netns", "pids", &name])) {
                for p in out.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                    // SAFETY: as in Drop, processes confined to a stale test namespace.
                    unsafe { libc::kill(p, libc::SIGKILL) };
                }
            }
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
    // `ip netns del` leaves /etc/netns/<name> behind; remove those of dead test processes too.
    let Ok(entries) = std::fs::read_dir("/etc/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dead = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
            // SAFETY: signal 0 only checks whether the process exists.
            .is_some_and(|pid| unsafe { libc::kill(pid, 0) } != 0);
        if dead {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A veth pair between two namespaces, addressed on both ends. It disappears with either
/// namespace.
#[derive(Debug, Clone)]
pub struct Veth {
    pub a_if: String,
    pub b_if: String,
}

impl Veth {
    /// Connects `a` and `b`. Addresses are CIDR strings (IPv4 or IPv6); IPv6 ones are added
    /// with `nodad` so they are usable at once.
    pub fn connect(
        a: &Netns,
        a_addrs: &[&str],
        b: &Netns,
        b_addrs: &[&str],
    ) -> Result<Veth, LabError> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let veth = Veth {
            a_if: format!("va{n}"),
            b_if: format!("vb{n}"),
        };
        a.ip(&[
            "link",
            "add",
            &veth.a_if,
            "type",
            "veth",
            "peer",
            "name",
            &veth.b_if,
            "netns",
            b.name(),
        ])?;
        for (ns, ifname, addrs) in [(a, &veth.a_if, a_addrs), (b, &veth.b_if, b_addrs)] {
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", ifname.as_str()];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args)?;
            }
            ns.ip(&["link", "set", ifname, "up"])?;
        }
        // Until the kernel has seen the carrier on both ends (operstate UP), IPv6 is not fully
        // up on them: the first neighbour solicitation then goes unanswered, and the first IPv6
        // connection over the link waits out a one-second retransmit.
        for (ns, ifname) in [(a, &veth.a_if), (b, &veth.b_if)] {
            super::wait_for(
                &format!("{ifname} in {} to be operationally up", ns.name()),
                std::time::Duration::from_secs(5),
                || {
                    ns.ip(&["-o", "link", "show", "dev", ifname])
                        .ok()
                        .filter(|l| l.contains("state UP"))
                },
            )?;
        }
        Ok(veth)
    }
}
