//! The test and demo lab: network namespaces, child processes and recording taps, all behind
//! RAII guards so a failing test still cleans up. Used by the integration tests and by
//! `cargo xtask demo`; the gateway itself never calls into it.
//!
//! Everything here needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN), which CI has.
mod gateway;
mod netns;
mod process;
mod tap;
mod workdir;

use std::time::{Duration, Instant};

pub use gateway::start_gateway;
pub use netns::{enter_on_this_thread as enter, Netns, Veth};
pub use process::{run, Child, LabError};
pub use tap::{Tap, TapRecord};
pub use workdir::Workdir;

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

/// Fails early, with the reason, when the lab cannot work here.
pub fn require_root() -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    Ok(())
}
