//! Running the real `astrogate` binary inside a namespace.
use std::{path::Path, time::Duration};

use super::{Child, LabError, Netns, Workdir};

/// Starts `astrogate run` in `ns` with `config` and waits until it reports it is serving.
/// Output goes to `astrogate.log` in `dir`.
pub fn start_gateway(
    ns: &Netns,
    binary: &Path,
    config: &str,
    dir: &Workdir,
) -> Result<Child, LabError> {
    let config_path = dir.write("astrogate.toml", config)?;
    let mut cmd = ns.command(&binary.to_string_lossy());
    cmd.arg("run").arg("--config").arg(&config_path);
    // ASTROGATE_LAB_LOG raises the gateway's log level when a test needs to be debugged.
    cmd.env(
        "RUST_LOG",
        std::env::var("ASTROGATE_LAB_LOG").unwrap_or_else(|_| "info".into()),
    );
    let mut child = Child::spawn("astrogate", &mut cmd, &dir.join("astrogate.log"))?;
    let timeout = Duration::from_secs(10);
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let out = child.output();
        if out.contains("astrogate running") {
            return Ok(child);
        }
        if let Some(status) = child.exited() {
            return Err(LabError::Failed {
                command: format!("{cmd:?}"),
                status: status.to_string(),
                stderr: out,
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!("astrogate to start; its output so far:\n{out}"),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
