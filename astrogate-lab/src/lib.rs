//! The test and demo lab: network namespaces, child processes and recording taps, all behind
//! RAII guards so a failing test still cleans up. Used by the integration tests and by
//! `cargo xtask demo`; the gateway itself never calls into it.
//!
//! Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), which CI has.
mod gateway;
mod netns;
mod process;
pub mod services;
mod tap;
pub mod topology;
pub mod tunnel;
mod workdir;
pub mod yggdrasil;
pub mod ygglab;

use std::{
    path::Path,
    process::Output,
    time::{Duration, Instant},
};

pub use gateway::start_gateway;
pub use netns::{enter_on_this_thread as enter, Netns, Veth};
pub use process::{run, Child, LabError};
pub use tap::{Tap, TapRecord};
pub use workdir::Workdir;

/// The Python with the PyPI test tools (aioquic) that `cargo xtask setup` installs:
/// `$CARGO_HOME/astrogate-tools/venv/bin/python3`.
pub fn test_python() -> std::path::PathBuf {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| "/root/.cargo".into());
    cargo_home.join("astrogate-tools/venv/bin/python3")
}

/// Polls `check` until it returns `Some`, or fails after `timeout` saying what it waited for.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T, LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: what.to_string(),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a client program in `ns` (working directory `dir`, standard input from `stdin` or
/// empty) to completion and returns its output whatever its exit status; `timeout(1)` kills
/// it after `limit`, so no client can hang a test.
pub fn run_client(
    ns: &Netns,
    dir: &Path,
    limit: Duration,
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
) -> Result<Output, LabError> {
    let mut cmd = ns.command("timeout");
    let secs = format!("{}", limit.as_secs_f64());
    cmd.args(["--kill-after=2", &secs, program])
        .args(args)
        .current_dir(dir);
    match stdin {
        Some(path) => {
            let file = std::fs::File::open(path).map_err(|source| LabError::Io {
                what: format!("opening {}", path.display()),
                source,
            })?;
            cmd.stdin(file);
        }
        None => {
            cmd.stdin(std::process::Stdio::null());
        }
    }
    cmd.output().map_err(|source| LabError::Spawn {
        command: format!("{cmd:?}"),
        source,
    })
}

/// Fails early, with the reason, when the lab cannot work here.
pub fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    Ok(())
}
