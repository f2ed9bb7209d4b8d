//! Tunnel mode over plain IP, in namespaces: an internet client, the gateway, and a service host
//! that runs `astrogate-tunnel` with strict reverse-path filtering and its own default route.
//! Services bound to the wildcard addresses see each client's real address and port, the bytes
//! arrive identical, nothing in the routing tables changes while connections come and go, an
//! unlisted key is refused, the client comes back after a gateway restart, and SIGTERM (or the
//! next start, after a kill) removes everything the client installed.
mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    thread,
    time::Duration,
};

use astrogate_lab::{wait_for, Child, Netns, Veth};
use common::{
    streams::{hash_to_eof, hex, send_pattern, Server},
    Lab,
};

const TUNNEL: &str = env!("CARGO_BIN_EXE_astrogate-tunnel");

/// The internet side: 10.201.0.0/24 and fd00:201::/64; the gateway is .1 / ::1 on it.
const GW_V4: &str = "10.201.0.1";
const GW_V6: &str = "fd00:201::1";
/// The transport between the gateway and the service host.
const TRANSPORT_GW: &str = "10.202.0.1";
const TUN_V4: &str = "100.64.77.1";
const TUN_V6: &str = "fd64:77::1";

struct TunnelLab {
    lab: Lab,
    client: Option<Child>,
    gateway_public: String,
    client_public: String,
    client_config: std::path::PathBuf,
}

impl TunnelLab {
    /// Three namespaces: the gateway (the lab's own), `inet` (peers[0]) and `svc` (peers[1]).
    fn new(tag: &str) -> TunnelLab {
        let mut lab = Lab::new(tag);
        let inet = Netns::new("inet").expect("creating the internet namespace");
        let svc = Netns::new("svc").expect("creating the service namespace");
        Veth::connect(
            &lab.ns,
            &["10.201.0.1/24", "fd00:201::1/64"],
            &inet,
            &["10.201.0.2/24", "fd00:201::2/64"],
        )
        .expect("the internet veth");
        Veth::connect(&lab.ns, &["10.202.0.1/24"], &svc, &["10.202.0.2/24"])
            .expect("the transport veth");
        // The service host has its own default route (towards the gateway's namespace, which
        // also reaches the internet clients), and strict reverse-path filtering everywhere.
        svc.ip(&["route", "add", "default", "via", TRANSPORT_GW])
            .unwrap();
        for key in ["all", "default", "lo"] {
            sysctl(&svc, &format!("net.ipv4.conf.{key}.rp_filter=1"));
        }
        sysctl(&lab.ns, "net.ipv4.ip_forward=1");
        inet.ip(&["route", "add", "10.202.0.0/24", "via", GW_V4])
            .unwrap();
        lab.peers.push(inet);
        lab.peers.push(svc);
        let gateway_public = keygen(&lab.dir.join("gateway.key"));
        let client_public = keygen(&lab.dir.join("tunnel.key"));
        let client_config = lab
            .dir
            .write(
                "tunnel.toml",
                format!(
                    "gateway = \"{TRANSPORT_GW}:7444\"\ngateway_key = \"{gateway_public}\"\n\
                     key = \"tunnel.key\"\ninterface = \"astg0\"\n\
                     addresses = [\"{TUN_V4}/32\", \"{TUN_V6}/128\"]\n"
                ),
            )
            .unwrap();
        TunnelLab {
            lab,
            client: None,
            gateway_public,
            client_public,
            client_config,
        }
    }

    fn inet(&self) -> &Netns {
        &self.lab.peers[0]
    }

    fn svc(&self) -> &Netns {
        &self.lab.peers[1]
    }

    fn gateway_config(&self, tunnel_key: &str, data_path: &str) -> String {
        format!(
            r#"
[gateway]
data_path = "{data_path}"

[tunnels]
bind = ["{TRANSPORT_GW}:7444"]
key = "gateway.key"
heartbeat = "500ms"

[[tunnel]]
name = "alpha"
key = "{tunnel_key}"

[[listener]]
name = "dial"
bind = ["{GW_V4}:7070", "[{GW_V6}]:7070"]
protocols = ["dial"]

[[listener]]
name = "web"
bind = ["{GW_V4}:80", "[{GW_V6}]:80"]
protocols = ["http"]

[[route]]
hosts = ["hash.test"]
to = "tunnel:alpha:9000"

[[route]]
hosts = ["web.test"]
to = "tunnel:alpha:8080"
"#
        )
    }

    fn start_gateway(&mut self, data_path: &str) {
        let config = self.gateway_config(&self.client_public.clone(), data_path);
        self.lab.gateway(&config);
    }

    /// Starts the tunnel client and waits until it serves the tunnel.
    fn start_client(&mut self) {
        let mut cmd = self.svc().command(TUNNEL);
        cmd.arg("run").arg("--config").arg(&self.client_config);
        cmd.env("RUST_LOG", "info");
        let log = self.lab.dir.join("tunnel.log");
        let child = Child::spawn("astrogate-tunnel", &mut cmd, &log).unwrap();
        self.client = Some(child);
        self.wait_serving(1);
    }

    /// Waits for the client to report its `n`th session.
    fn wait_serving(&self, n: usize) {
        let client = self.client.as_ref().unwrap();
        wait_for(
            "the tunnel client to connect",
            Duration::from_secs(20),
            || (client.output().matches("serving tunnel").count() >= n).then_some(()),
        )
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nclient:\n{}\ngateway:\n{}",
                client.output(),
                self.lab.gateway_log()
            )
        });
    }

    fn client_log(&self) -> String {
        self.client.as_ref().map(Child::output).unwrap_or_default()
    }

    /// What the service host's routing looks like: every rule and every route of every table.
    fn routing_snapshot(&self) -> String {
        let mut out = String::new();
        for args in [
            &["rule", "show"][..],
            &["-6", "rule", "show"],
            &["route", "show", "table", "all"],
            &["-6", "route", "show", "table", "all"],
        ] {
            out += &self.svc().ip(args).unwrap();
        }
        out
    }
}

impl Drop for TunnelLab {
    fn drop(&mut self) {
        // The client first: it must take its changes back while the namespace exists.
        if let Some(mut c) = self.client.take() {
            c.stop(Duration::from_secs(5));
        }
    }
}

fn sysctl(ns: &Netns, setting: &str) {
    let out = ns
        .command("sysctl")
        .args(["-qw", setting])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sysctl {setting}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keygen(path: &Path) -> String {
    let out = Command::new(TUNNEL)
        .args(["keygen", "--out"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(public.len(), 44, "{public}");
    public
}

/// The hash service: reads to EOF, answers with the peer it saw, the byte count and the hash,
/// then sends `down` pattern bytes and closes. Bound to the wildcard (IPv6 dual-stack).
fn hash_service(svc: &Netns, down: u64) -> Server {
    Server::start(svc, "[::]:9000", move |mut s| {
        let peer = s.peer_addr().unwrap();
        let (n, h) = hash_to_eof(&mut s).unwrap();
        // A dual-stack socket shows IPv4 peers as ::ffff:a.b.c.d.
        let peer = match peer {
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(v4.into(), v6.port()),
                None => peer,
            },
            v4 => v4,
        };
        let line = format!("{peer} {n} {}\n", hex(&h));
        s.write_all(line.as_bytes()).unwrap();
        send_pattern(&mut s, down, down).unwrap();
    })
}

/// The SHA-256 of `len` pattern bytes from `seed`.
fn pattern_hash(seed: u64, len: u64) -> String {
    let mut pattern = common::streams::Pattern::new(seed);
    let mut hash = <sha2::Sha256 as sha2::Digest>::new();
    let mut buf = vec![0u8; 65536];
    let mut left = len;
    while left > 0 {
        let k = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..k]);
        sha2::Digest::update(&mut hash, &buf[..k]);
        left -= k as u64;
    }
    hex(&sha2::Digest::finalize(hash).into())
}

/// Asks the gateway's dial listener for `host`. Runs on a thread inside the internet namespace.
fn dial(gateway: SocketAddr, host: &str) -> TcpStream {
    let mut s =
        TcpStream::connect(gateway).unwrap_or_else(|e| panic!("connecting to {gateway}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("ASTROGATE-DIAL/1 {host} 9000\r\n").as_bytes())
        .unwrap();
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\n") {
        assert_eq!(
            s.read(&mut byte).expect("reading the dial reply"),
            1,
            "closed before the dial reply"
        );
        reply.push(byte[0]);
    }
    assert!(
        reply.starts_with(b"ASTROGATE-DIAL/1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    s
}

/// One transfer through the tunnel to the hash service: `up` bytes up, `DOWN` bytes down.
/// Checks that the service saw this client's own address and port, and the counts and hashes
/// at both ends. Runs on a thread inside the internet namespace.
fn transfer(gateway: SocketAddr, up: u64, seed: u64) {
    let mut s = dial(gateway, "hash.test");
    let me = s.local_addr().unwrap();
    let sent = send_pattern(&mut s, seed, up).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        assert_eq!(
            s.read(&mut byte).unwrap(),
            1,
            "closed before the service's report"
        );
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    assert_eq!(
        line.trim(),
        format!("{me} {up} {}", hex(&sent)),
        "the service must see this client's address and port, and every byte"
    );
    let (n, h) = hash_to_eof(&mut s).unwrap();
    assert_eq!(
        (n, hex(&h)),
        (DOWN, pattern_hash(DOWN, DOWN)),
        "download through the tunnel"
    );
}

/// What the hash service sends back after its report.
const DOWN: u64 = 3 << 20;

fn gw(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Runs `transfers` (gateway address, upload size) from the internet namespace, `parallel` at a
/// time.
fn transfers(t: &TunnelLab, list: Vec<(SocketAddr, u64)>, parallel: usize) {
    let inet = t.inet();
    for batch in list.chunks(parallel) {
        let workers: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, &(gateway, up))| {
                let handle = inet.handle().unwrap();
                let name = inet.name().to_string();
                thread::spawn(move || {
                    astrogate_lab::enter(&handle, &name).unwrap();
                    transfer(gateway, up, up ^ i as u64);
                })
            })
            .collect();
        for w in workers {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

#[test]
fn wildcard_services_see_each_clients_address_and_port_and_every_byte() {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-bytes");
    let _service = hash_service(t.svc(), DOWN);
    t.start_gateway("auto");
    t.start_client();
    // Sizes around the pipes' and the stack's buffers, both families, one at a time and then
    // 16 at once, so a byte lost or doubled at any boundary shows.
    let one_by_one = [
        (0u64, GW_V4),
        (1, GW_V6),
        (65_535, GW_V4),
        (4 << 20, GW_V6),
        (33 << 20, GW_V4),
    ]
    .map(|(up, ip)| (gw(ip, 7070), up));
    transfers(&t, one_by_one.to_vec(), 1);
    let together = (0..16u64)
        .map(|i| {
            (
                gw(if i % 2 == 0 { GW_V4 } else { GW_V6 }, 7070),
                (i * 797_003) % (6 << 20),
            )
        })
        .collect();
    transfers(&t, together, 16);
    let log = t.lab.wait_access_log(&["host=hash.test", "path=splice"]);
    assert!(log.contains("target=tunnel:alpha:9000"), "{log}");
}
