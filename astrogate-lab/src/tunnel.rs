//! Tunnel mode in the lab: key pairs from `astrogate-tunnel keygen`, a client's config, and a
//! running client on a service host.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{run, wait_for, Child, LabError, Netns};

/// The addresses the lab's tunnel clients put on their TUN.
pub const TUN_V4: &str = "100.64.77.1";
pub const TUN_V6: &str = "fd64:77::1";
/// What the client logs once a session with the gateway is up.
pub const SERVING: &str = "serving tunnel";

/// `astrogate-tunnel`, built beside the gateway binary.
pub fn client_binary(gateway: &Path) -> PathBuf {
    gateway.with_file_name("astrogate-tunnel")
}

/// Writes a private key to `out` with `astrogate-tunnel keygen` and returns the public key.
pub fn keygen(tunnel: &Path, out: &Path) -> Result<String, LabError> {
    let printed = run(Command::new(tunnel).args(["keygen", "--out"]).arg(out))?;
    let public = printed.trim().to_string();
    // 32 bytes in base64.
    if public.len() != 44 {
        return Err(LabError::Failed {
            command: format!("{} keygen --out {}", tunnel.display(), out.display()),
            status: "printed no public key".into(),
            stderr: printed,
        });
    }
    Ok(public)
}

/// A client config: dial `gateway` (which must hold `gateway_key`), authenticate with the
/// private key at `key`, put [`TUN_V4`] and [`TUN_V6`] on `astg0`, and then run as `nobody`,
/// as a deployment runs it as its own user: every tunnel test runs after the drop.
pub fn client_config(gateway: &str, gateway_key: &str, key: &Path) -> String {
    format!(
        "gateway = \"{gateway}\"\ngateway_key = \"{gateway_key}\"\nkey = \"{}\"\n\
         interface = \"astg0\"\naddresses = [\"{TUN_V4}/32\", \"{TUN_V6}/128\"]\n\
         user = \"nobody\"\n",
        key.display()
    )
}

/// The shipped unit of the tunnel client.
const TUNNEL_UNIT: &str = include_str!("../../config/astrogate-tunnel.service");

/// `setpriv`'s `--bounding-set` argument for a unit's `CapabilityBoundingSet`: exactly those
/// capabilities, as systemd would leave the service.
pub fn unit_bounding_set(unit: &str) -> Option<String> {
    let caps = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))?;
    let plus: Vec<String> = caps
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    Some(format!("--bounding-set=-all,{}", plus.join(",")))
}

/// Starts `tunnel run --config config` in `ns`, logging to `log`, and waits until it serves.
/// It runs with the shipped unit's capability bounding set, as systemd would run it, so every
/// test that starts a client shows that set is enough.
pub fn start_client(
    ns: &Netns,
    tunnel: &Path,
    config: &Path,
    log: &Path,
) -> Result<Child, LabError> {
    let bounding = unit_bounding_set(TUNNEL_UNIT).ok_or_else(|| LabError::Failed {
        command: "reading config/astrogate-tunnel.service".into(),
        status: "no CapabilityBoundingSet".into(),
        stderr: String::new(),
    })?;
    let mut cmd = ns.command("setpriv");
    cmd.arg(bounding)
        .arg(tunnel)
        .arg("run")
        .arg("--config")
        .arg(config);
    // ASTROGATE_TUNNEL_LOG=info,smoltcp=debug shows the stack's view when a test fails.
    let filter = std::env::var("ASTROGATE_TUNNEL_LOG").unwrap_or_else(|_| "info".into());
    cmd.env("RUST_LOG", filter);
    let mut child = Child::spawn("astrogate-tunnel", &mut cmd, log)?;
    let what = format!("the tunnel client in {} to connect", ns.name());
    match wait_for(&what, Duration::from_secs(20), || {
        if child.exited().is_some() {
            return Some(false);
        }
        child.output().contains(SERVING).then_some(true)
    }) {
        Ok(true) => Ok(child),
        Ok(false) => Err(LabError::Failed {
            command: format!("{cmd:?}"),
            status: "exited during start-up".into(),
            stderr: child.output(),
        }),
        Err(LabError::Timeout { what, after }) => Err(LabError::Timeout {
            what: format!("{what}; its log:\n{}", child.output()),
            after,
        }),
        Err(e) => Err(e),
    }
}
