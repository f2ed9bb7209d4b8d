//! The gateway gives up root after setup: every thread runs as the configured user with
//! exactly the four capabilities it keeps, and traffic still flows on every data path; a
//! reload still binds a port below 1024 and still loads a kernel path.
mod common;

use std::time::Duration;

use astrogate_lab::wait_for;
use common::Lab;
use sha2::{Digest, Sha256};

/// CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39).
const KEPT: u64 = (1 << 10) | (1 << 12) | (1 << 38) | (1 << 39);

const CONFIG: &str = r#"
[gateway]
user = "nobody"
workers = 2

[[listener]]
name = "kernel"
bind = ["127.0.0.1:443"]
protocols = ["http"]
data_path = "kernel"

[[listener]]
name = "splice"
bind = ["127.0.0.1:8081"]
protocols = ["http"]
data_path = "splice"

[[listener]]
name = "userspace"
bind = ["127.0.0.1:8082"]
protocols = ["http"]
data_path = "userspace"

[[route]]
hosts = ["files.example"]
to = "127.0.0.1:9000"
"#;

/// The `Key:` line of a /proc status file, its value.
fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in\n{status}"))
        .trim()
        .to_string()
}

fn mask(status: &str, key: &str) -> u64 {
    u64::from_str_radix(&status_field(status, key), 16).unwrap()
}

/// Fetches `path` through `port` and checks it is `want`, byte for byte.
fn fetch(lab: &Lab, port: u16, path: &str, want: &[u8]) {
    let url = format!("http://127.0.0.1:{port}{path}");
    let out = lab.client(
        "curl",
        &["-sS", "--max-time", "10", "-H", "Host: files.example", &url],
    );
    assert!(out.status.success(), "curl {url}: {out:?}");
    assert_eq!(out.stdout.len(), want.len(), "{url}");
    assert_eq!(Sha256::digest(&out.stdout), Sha256::digest(want), "{url}");
}

#[test]
fn after_setup_every_thread_runs_as_the_user_with_four_capabilities_and_traffic_flows() {
    let mut lab = Lab::new("privileges");
    // 4 MiB, so each path moves it in many pieces.
    let body: String = (0..4 << 20)
        .map(|i: usize| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    lab.http_server(
        "files",
        "127.0.0.1:9000".parse().unwrap(),
        &[("big.txt", &body)],
    );
    lab.gateway(CONFIG);
    let pid = lab
        .children
        .iter()
        .find(|c| c.name() == "astrogate")
        .unwrap()
        .pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let nobody = "65534\t65534\t65534\t65534";
    assert_eq!(status_field(&status, "Uid"), nobody, "{status}");
    assert_eq!(status_field(&status, "Gid"), nobody, "{status}");
    assert_eq!(status_field(&status, "Groups"), "65534", "{status}");
    // Every thread, not only the main one: capabilities belong to threads.
    let tasks: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| t.unwrap().path())
        .collect();
    assert!(
        tasks.len() >= 3,
        "the main thread and two workers: {tasks:?}"
    );
    for task in &tasks {
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        for key in ["CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(mask(&status, key), KEPT, "{key} of {task:?}:\n{status}");
        }
        assert_eq!(mask(&status, "CapInh"), 0, "{task:?}");
        assert_eq!(mask(&status, "CapAmb"), 0, "{task:?}");
        assert_eq!(status_field(&status, "NoNewPrivs"), "1", "{task:?}");
        assert_eq!(status_field(&status, "Uid"), nobody, "{task:?}");
    }
    let log = lab.gateway_log();
    assert!(log.contains("switched user"), "{log}");
    for port in [443, 8081, 8082] {
        fetch(&lab, port, "/big.txt", body.as_bytes());
    }
    // A reload binds port 80 and starts the UDP kernel path, loading and attaching its
    // program, as the user.
    let path = lab.dir.join("astrogate.toml");
    let more = format!(
        "{CONFIG}\n[[listener]]\nname = \"low\"\nbind = [\"127.0.0.1:80\"]\nprotocols = [\"http\"]\n\
         \n[[listener]]\nname = \"dns\"\ntransport = \"udp\"\nbind = [\"127.0.0.1:53\"]\n\
         to = \"127.0.0.1:5300\"\ndata_path = \"kernel\"\n"
    );
    std::fs::write(&path, more).unwrap();
    let gateway = lab
        .children
        .iter()
        .find(|c| c.name() == "astrogate")
        .unwrap();
    gateway.signal(libc::SIGHUP);
    let outcome = wait_for("the reload", Duration::from_secs(10), || {
        let log = lab.gateway_log();
        if log.contains("config reload refused") {
            return Some(Err(log));
        }
        log.contains("config reloaded").then_some(Ok(()))
    })
    .unwrap();
    if let Err(log) = outcome {
        panic!("the reload was refused as the user:\n{log}");
    }
    fetch(&lab, 80, "/big.txt", body.as_bytes());
}
