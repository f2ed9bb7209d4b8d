//! Giving up root after setup. Both programs start as root to bind, load eBPF and create the
//! TUN; then they switch to an ordinary user and keep only the capabilities that what still
//! happens (reloads, the data paths, cleaning up at exit) needs.
//!
//! Capabilities belong to threads, not to the process. The user switch reaches every thread
//! (glibc applies set*id to all of them), and because every thread was created with
//! PR_SET_KEEPCAPS inherited from the main thread, each one keeps its permitted set across
//! it, with nothing effective. Each thread then narrows its own sets to the kept ones:
//! [`limit_this_thread`] runs once on the calling thread and once on every runtime worker.
//! Threads created later inherit the narrowed sets from the thread that creates them.
use std::collections::HashSet;

use caps::{CapSet, Capability};
use nix::unistd::{Gid, Group, Uid, User};

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("user `{0}` does not exist")]
    NoSuchUser(String),
    #[error("looking up user `{user}`: {source}")]
    Lookup { user: String, source: nix::Error },
    #[error("switching to user `{user}` ({call}): {source}")]
    Switch {
        user: String,
        call: &'static str,
        source: nix::Error,
    },
    #[error("setting this thread's capabilities: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error("PR_SET_KEEPCAPS / PR_SET_NO_NEW_PRIVS: {0}")]
    Prctl(nix::Error),
    #[error("a runtime worker could not limit its capabilities: {0}")]
    Worker(String),
}

/// Whether `name` is a user name as useradd accepts it.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The capabilities the gateway keeps after the switch, and why:
/// - CAP_NET_BIND_SERVICE: a reload may bind a new listener below port 1024;
/// - CAP_NET_ADMIN: a reload may attach the UDP kernel path's classifier (and load either
///   kernel path, with CAP_BPF), and UDP session sockets take buffers past
///   net.core.rmem_max (SO_RCVBUFFORCE) so a burst of replies is not dropped;
/// - CAP_BPF and CAP_PERFMON: a reload that first asks for a kernel path loads its programs;
///   without CAP_PERFMON the verifier refuses their pointer arithmetic on the stack ("pointer
///   arithmetic prohibited for !root", measured).
///
/// The running data paths need none: sockmap and flow-map updates go through map
/// descriptors opened at start, splice and the TUN through descriptors the process holds.
pub const GATEWAY_KEEPS: &[Capability] = &[
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_BPF,
    Capability::CAP_PERFMON,
];

/// The capabilities the tunnel client keeps: CAP_NET_ADMIN, to take its source rules,
/// routes and addresses away at exit. Its TUN, flow map and sockets are descriptors it holds.
pub const TUNNEL_KEEPS: &[Capability] = &[Capability::CAP_NET_ADMIN];

/// The user to switch to, looked up before anything starts, so a typo fails at once.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

impl Target {
    /// `name` and its primary group.
    pub fn lookup(name: &str) -> Result<Target, PrivilegeError> {
        let user = User::from_name(name)
            .map_err(|source| PrivilegeError::Lookup {
                user: name.to_string(),
                source,
            })?
            .ok_or_else(|| PrivilegeError::NoSuchUser(name.to_string()))?;
        Ok(Target {
            name: name.to_string(),
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// The group's name, for the log.
    pub fn group_name(&self) -> String {
        Group::from_gid(self.gid)
            .ok()
            .flatten()
            .map_or_else(|| self.gid.to_string(), |g| g.name)
    }
}

/// Call on the main thread before any other thread exists: threads created from now on keep
/// their permitted capabilities when the process switches user.
pub fn keep_capabilities_across_the_switch() -> Result<(), PrivilegeError> {
    nix::sys::prctl::set_keepcaps(true).map_err(PrivilegeError::Prctl)
}

/// Switches every thread of the process to `target`'s user, group and no supplementary groups.
/// Afterwards no thread has an effective capability until [`limit_this_thread`] runs on it.
pub fn switch_user(target: &Target) -> Result<(), PrivilegeError> {
    let fail = |call| {
        move |source| PrivilegeError::Switch {
            user: target.name.clone(),
            call,
            source,
        }
    };
    nix::unistd::setgroups(&[target.gid]).map_err(fail("setgroups"))?;
    nix::unistd::setgid(target.gid).map_err(fail("setgid"))?;
    nix::unistd::setuid(target.uid).map_err(fail("setuid"))?;
    Ok(())
}

/// This thread's capabilities become exactly `keep`: bounding, permitted and effective; no
/// inheritable or ambient ones; and no execve can ever gain more (PR_SET_NO_NEW_PRIVS).
pub fn limit_this_thread(keep: &[Capability]) -> Result<(), PrivilegeError> {
    let keep: HashSet<Capability> = keep.iter().copied().collect();
    // Dropping from the bounding set takes CAP_SETPCAP in the effective set.
    let permitted = caps::read(None, CapSet::Permitted)?;
    caps::set(None, CapSet::Effective, &permitted)?;
    for cap in caps::all() {
        if !keep.contains(&cap) && caps::has_cap(None, CapSet::Bounding, cap)? {
            caps::drop(None, CapSet::Bounding, cap)?;
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &keep)?;
    caps::set(None, CapSet::Permitted, &keep)?;
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::Prctl)?;
    Ok(())
}

/// Switches to `target` and limits the calling thread and every one of the runtime's
/// `workers` worker threads to `keep`. Must be called from the thread that drives the runtime
/// (`block_on`), before any work that could occupy a worker: each worker is held by one task
/// until every worker holds one, which is what puts one task on each.
pub async fn drop_privileges(
    target: &Target,
    keep: &'static [Capability],
    workers: usize,
) -> Result<(), PrivilegeError> {
    switch_user(target)?;
    limit_this_thread(keep)?;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(workers));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let result = limit_this_thread(keep);
                barrier.wait();
                result
            })
        })
        .collect();
    for task in tasks {
        match task.await {
            Ok(result) => result?,
            Err(e) => return Err(PrivilegeError::Worker(e.to_string())),
        }
    }
    Ok(())
}
