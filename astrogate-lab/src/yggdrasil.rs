//! Real Yggdrasil nodes (Debian's `yggdrasil` 0.4.7) inside lab namespaces.
//!
//! Each node gets a fresh key pair from `yggdrasil -genconf`, multicast discovery off (so nodes
//! only ever meet the peers the lab names), an admin socket in the lab's directory, and a TUN
//! interface inside its namespace that carries its 200::/7 address.
use std::{
    net::{Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{run, wait_for, Child, LabError, Netns, Workdir};

/// Sun paths are at most 108 bytes including the terminator; yggdrasil fails obscurely beyond.
const MAX_SOCKET_PATH: usize = 100;

/// How a node is wired into the overlay.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    /// Listen URIs, such as `tls://[fd00::1]:7443`.
    pub listen: Vec<String>,
    /// Peer URIs to dial, such as `tls://[fd00::1]:7443`.
    pub peers: Vec<String>,
}

/// A yggdrasil process in a namespace. Dropping it kills the process.
#[derive(Debug)]
pub struct YggNode {
    name: String,
    config: PathBuf,
    admin: PathBuf,
    log_dir: PathBuf,
    address: Ipv6Addr,
    starts: u32,
    child: Option<Child>,
}

impl YggNode {
    /// Writes a config for a new node called `name` (keys, listen, peers) into `dir`, without
    /// starting it. The address is known from here on.
    pub fn configure(name: &str, spec: &NodeSpec, dir: &Workdir) -> Result<YggNode, LabError> {
        let generated = run(Command::new("yggdrasil").args(["-genconf", "-json"]))?;
        let private_key =
            json_string_field(&generated, "PrivateKey").ok_or_else(|| LabError::Failed {
                command: "yggdrasil -genconf -json".into(),
                status: "no PrivateKey in its output".into(),
                stderr: generated.clone(),
            })?;
        let admin = dir.join(&format!("ygg-{name}.sock"));
        if admin.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(LabError::Io {
                what: format!("admin socket path {}", admin.display()),
                source: std::io::Error::other("longer than a unix socket path may be"),
            });
        }
        let quoted = |uris: &[String]| {
            uris.iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // IfName is fixed: each node has its own namespace, so names never collide, and the
        // tests can look the interface up. MulticastInterfaces is empty so that nodes do not
        // discover each other (or anything else) behind the lab's back.
        let config = format!(
            r#"{{
  "PrivateKey": "{private_key}",
  "Listen": [{listen}],
  "Peers": [{peers}],
  "InterfacePeers": {{}},
  "AllowedPublicKeys": [],
  "MulticastInterfaces": [],
  "AdminListen": "unix://{admin}",
  "IfName": "ygg0",
  "IfMTU": 65535,
  "NodeInfoPrivacy": true,
  "NodeInfo": null
}}
"#,
            listen = quoted(&spec.listen),
            peers = quoted(&spec.peers),
            admin = admin.display(),
        );
        let config = dir.write(&format!("ygg-{name}.json"), config)?;
        let address = run(Command::new("yggdrasil")
            .arg("-useconffile")
            .arg(&config)
            .arg("-address"))?;
        let address = address
            .trim()
            .parse::<Ipv6Addr>()
            .map_err(|e| LabError::Failed {
                command: format!("yggdrasil -useconffile {} -address", config.display()),
                status: format!("printed no address ({e})"),
                stderr: address.clone(),
            })?;
        Ok(YggNode {
            name: name.to_string(),
            config,
            admin,
            log_dir: dir.path().to_path_buf(),
            address,
            starts: 0,
            child: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's 200::/7 address, derived from its key (stable across restarts).
    pub fn address(&self) -> Ipv6Addr {
        self.address
    }

    pub fn admin_socket(&self) -> &Path {
        &self.admin
    }

    /// The log of the current (or last) run.
    pub fn log_path(&self) -> PathBuf {
        self.log_dir
            .join(format!("ygg-{}-{}.log", self.name, self.starts.max(1)))
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the node in `ns` and waits until its TUN interface carries its address. Each run
    /// logs to its own file, so a restart keeps the earlier log for a failing test to show.
    pub fn start(&mut self, ns: &Netns) -> Result<(), LabError> {
        if self.child.is_some() {
            return Ok(());
        }
        // A node killed without a clean exit leaves its socket file, and yggdrasil then
        // refuses to listen on it.
        let _ = std::fs::remove_file(&self.admin);
        self.starts += 1;
        let mut cmd = ns.command("yggdrasil");
        cmd.arg("-useconffile")
            .arg(&self.config)
            .args(["-logto", "stdout"]);
        let mut child = Child::spawn(
            &format!("yggdrasil-{}", self.name),
            &mut cmd,
            &self.log_path(),
        )?;
        let what = format!(
            "yggdrasil node {} to bring up ygg0 with {} in {}",
            self.name,
            self.address,
            ns.name()
        );
        let wanted = self.address.to_string();
        let up = wait_for(&what, Duration::from_secs(10), || {
            if child.exited().is_some() {
                return Some(false);
            }
            let addrs = ns.ip(&["-6", "addr", "show", "dev", "ygg0"]).ok()?;
            addrs.contains(&wanted).then_some(true)
        });
        match up {
            Ok(true) => {
                self.child = Some(child);
                Ok(())
            }
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

    /// Stops the node (SIGTERM, then SIGKILL after a grace period). Its address disappears
    /// from the namespace with its TUN interface.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(Duration::from_secs(3));
        }
    }

    /// Stops the node and starts it again in `ns`, with the same key and so the same address.
    pub fn restart(&mut self, ns: &Netns) -> Result<(), LabError> {
        self.stop();
        self.start(ns)
    }

    /// `yggdrasilctl -json` against this node's admin socket.
    pub fn ctl(&self, command: &str) -> Result<serde_json::Value, LabError> {
        let endpoint = format!("-endpoint=unix://{}", self.admin.display());
        // Bounded: a wedged node must fail the wait that asked, not hang it.
        let out =
            run(Command::new("timeout").args(["5", "yggdrasilctl", "-json", &endpoint, command]))?;
        serde_json::from_str(&out).map_err(|e| LabError::Failed {
            command: format!("yggdrasilctl {endpoint} {command}"),
            status: format!("printed no JSON ({e})"),
            stderr: out,
        })
    }

    /// Addresses of the nodes this one is peered with right now.
    pub fn peer_addresses(&self) -> Vec<Ipv6Addr> {
        let Ok(peers) = self.ctl("getPeers") else {
            return Vec::new();
        };
        peers["peers"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|p| p["address"].as_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until this node is peered with every node in `others`.
    pub fn wait_peered(&self, others: &[Ipv6Addr], timeout: Duration) -> Result<(), LabError> {
        let what = format!(
            "yggdrasil node {} ({}) to peer with {others:?}; its log:\n{}",
            self.name,
            self.address,
            self.output()
        );
        wait_for(&what, timeout, || {
            let peers = self.peer_addresses();
            others.iter().all(|o| peers.contains(o)).then_some(())
        })
    }
}

impl Drop for YggNode {
    fn drop(&mut self) {
        // Killing is enough: the TUN interface goes with the process, and the namespace guard
        // removes whatever else is left.
        self.child.take();
    }
}

/// Waits until a TCP connection from `ns` to `addr` gets an answer across the overlay. A
/// refusal counts: the SYN crossed the network and the far host's RST came back, which is all
/// routing needs; only silence means the route is not there yet.
pub fn wait_routable(ns: &Netns, addr: SocketAddr, timeout: Duration) -> Result<(), LabError> {
    let what = format!("a route from {} to {addr} over Yggdrasil", ns.name());
    wait_for(&what, timeout, || {
        let answered = ns
            .enter(
                move || match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                    Ok(_) => true,
                    Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                },
            )
            .ok()?;
        answered.then_some(())
    })
}

/// The string value of `"field": "..."` in yggdrasil's generated JSON config.
fn json_string_field(json: &str, field: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value[field].as_str().map(str::to_string)
}
