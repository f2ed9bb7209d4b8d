//! Tunnel mode in namespaces: an internet client, the gateway, and a service host that runs
//! `astrogate-tunnel` with strict reverse-path filtering. The tunnel runs over plain IP (the
//! service host has its own default route to the internet) and over real Yggdrasil nodes (the
//! service host has nothing but the overlay); the tests that matter run on both.
//! Services bound to the wildcard addresses see each client's real address and port, the bytes
//! arrive identical, nothing in the routing tables changes while connections come and go, an
//! unlisted key is refused, the client comes back after a gateway restart, and SIGTERM (or the
//! next start, after a kill) removes everything the client installed.
mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    thread,
    time::Duration,
};

use astrogate_lab::{
    tunnel::{self as lab_tunnel, TUN_V4, TUN_V6},
    wait_for,
    yggdrasil::{wait_routable, NodeSpec, YggNode},
    Child, Netns, Veth,
};
use common::{
    streams::{hash_to_eof, hex, send_pattern, Server},
    Lab,
};

const TUNNEL: &str = env!("CARGO_BIN_EXE_astrogate-tunnel");

/// The internet side: 10.201.0.0/24 and fd00:201::/64; the gateway is .1 / ::1 on it.
const GW_V4: &str = "10.201.0.1";
const GW_V6: &str = "fd00:201::1";
/// The transport between the gateway and the service host over plain IP.
const TRANSPORT_GW: &str = "10.202.0.1";
/// The underlay that carries the two Yggdrasil nodes' peering, and nothing else.
const UNDERLAY_GW: &str = "fd00:202::1";
const UNDERLAY_SVC: &str = "fd00:202::2";

/// What carries the tunnel between the service host and the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    /// IPv4 on a veth; the service host's default route points there too.
    Plain,
    /// Yggdrasil nodes peered over an IPv6 underlay; the service host has no default route,
    /// no IPv4 but the tunnel's, and reaches the gateway only at its 200::/7 address.
    Yggdrasil,
}

/// Runs a test once over each transport.
macro_rules! on_both_transports {
    ($test:ident) => {
        mod $test {
            #[test]
            fn over_plain_ip() {
                super::$test(super::Transport::Plain)
            }
            #[test]
            fn over_yggdrasil() {
                super::$test(super::Transport::Yggdrasil)
            }
        }
    };
}

struct TunnelLab {
    /// Held for their lifetime; before `lab`, so the nodes die before their namespaces go.
    _nodes: Vec<YggNode>,
    lab: Lab,
    /// Where the gateway takes tunnel clients, and where the client dials.
    tunnel_addr: String,
    client: Option<Child>,
    client_public: String,
    client_config: std::path::PathBuf,
}

impl TunnelLab {
    /// Three namespaces: the gateway (the lab's own), `inet` (peers[0]) and `svc` (peers[1]).
    fn new(tag: &str, transport: Transport) -> TunnelLab {
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
        // Strict reverse-path filtering everywhere on the service host.
        for key in ["all", "default", "lo"] {
            sysctl(&svc, &format!("net.ipv4.conf.{key}.rp_filter=1"));
        }
        sysctl(&lab.ns, "net.ipv4.ip_forward=1");
        let (tunnel_addr, nodes) = match transport {
            Transport::Plain => {
                Veth::connect(&lab.ns, &["10.202.0.1/24"], &svc, &["10.202.0.2/24"])
                    .expect("the transport veth");
                // The service host has its own default route (towards the gateway's
                // namespace, which also reaches the internet clients).
                svc.ip(&["route", "add", "default", "via", TRANSPORT_GW])
                    .unwrap();
                inet.ip(&["route", "add", "10.202.0.0/24", "via", GW_V4])
                    .unwrap();
                (format!("{TRANSPORT_GW}:7444"), Vec::new())
            }
            Transport::Yggdrasil => {
                let nodes = yggdrasil_pair(&lab, &svc);
                (format!("[{}]:7444", nodes[0].address()), nodes)
            }
        };
        lab.peers.push(inet);
        lab.peers.push(svc);
        let gateway_public = keygen(&lab.dir.join("gateway.key"));
        let client_public = keygen(&lab.dir.join("tunnel.key"));
        let client_config = lab
            .dir
            .write(
                "tunnel.toml",
                lab_tunnel::client_config(
                    &tunnel_addr,
                    &gateway_public,
                    &lab.dir.join("tunnel.key"),
                ),
            )
            .unwrap();
        TunnelLab {
            _nodes: nodes,
            lab,
            tunnel_addr,
            client: None,
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
        let tunnel_addr = &self.tunnel_addr;
        format!(
            r#"
[gateway]
data_path = "{data_path}"
udp_idle_timeout = "1s"

[tunnels]
bind = ["{tunnel_addr}"]
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

[[listener]]
name = "dns"
transport = "udp"
bind = ["{GW_V4}:53", "[{GW_V6}]:53"]
to = "tunnel:alpha:5300"

[[listener]]
name = "udp-echo"
transport = "udp"
bind = ["{GW_V4}:5301", "[{GW_V6}]:5301"]
to = "tunnel:alpha:5301"

[[route]]
hosts = ["hash.test"]
to = "tunnel:alpha:9000"

[[route]]
hosts = ["web.test"]
to = "tunnel:alpha:8080"

[[route]]
hosts = ["pp.test"]
to = "tunnel:alpha:8081"
proxy_protocol = "v2"
"#
        )
    }

    fn start_gateway(&mut self, data_path: &str) {
        let config = self.gateway_config(&self.client_public.clone(), data_path);
        self.lab.gateway(&config);
    }

    /// Starts the tunnel client and waits until it serves the tunnel.
    fn start_client(&mut self) {
        let log = self.lab.dir.join("tunnel.log");
        let child =
            lab_tunnel::start_client(self.svc(), Path::new(TUNNEL), &self.client_config, &log)
                .unwrap_or_else(|e| panic!("{e}\ngateway:\n{}", self.lab.gateway_log()));
        self.client = Some(child);
    }

    /// Waits for the client to report its `n`th session.
    fn wait_serving(&self, n: usize) {
        let client = self.client.as_ref().unwrap();
        wait_for(
            "the tunnel client to connect",
            Duration::from_secs(20),
            || (client.output().matches(lab_tunnel::SERVING).count() >= n).then_some(()),
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

/// A Yggdrasil node in the gateway's namespace and one on the service host, peered over their
/// own underlay veth and routable across the overlay both ways. The gateway's node first.
fn yggdrasil_pair(lab: &Lab, svc: &Netns) -> Vec<YggNode> {
    Veth::connect(
        &lab.ns,
        &[&format!("{UNDERLAY_GW}/64")],
        svc,
        &[&format!("{UNDERLAY_SVC}/64")],
    )
    .expect("the underlay veth");
    let listen = format!("tls://[{UNDERLAY_GW}]:7443");
    let gw_spec = NodeSpec {
        listen: vec![listen.clone()],
        peers: Vec::new(),
    };
    let mut gw_node = YggNode::configure("gw", &gw_spec, &lab.dir).unwrap();
    gw_node.start(&lab.ns).unwrap();
    let svc_spec = NodeSpec {
        listen: Vec::new(),
        peers: vec![listen],
    };
    let mut svc_node = YggNode::configure("svc", &svc_spec, &lab.dir).unwrap();
    svc_node.start(svc).unwrap();
    let wait = Duration::from_secs(30);
    gw_node.wait_peered(&[svc_node.address()], wait).unwrap();
    wait_routable(&lab.ns, SocketAddr::new(svc_node.address().into(), 9), wait).unwrap();
    wait_routable(svc, SocketAddr::new(gw_node.address().into(), 9), wait).unwrap();
    vec![gw_node, svc_node]
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
    lab_tunnel::keygen(Path::new(TUNNEL), path).unwrap()
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
    let s = TcpStream::connect(gateway).unwrap_or_else(|e| panic!("connecting to {gateway}: {e}"));
    dial_on(s, host)
}

/// The dial exchange on a connection to the gateway's dial listener.
fn dial_on(mut s: TcpStream, host: &str) -> TcpStream {
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

on_both_transports!(wildcard_services_see_each_clients_address_and_port_and_every_byte);
fn wildcard_services_see_each_clients_address_and_port_and_every_byte(transport: Transport) {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-bytes", transport);
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

on_both_transports!(dig_through_the_tunnel_reaches_dnsmasq_which_sees_the_client);
fn dig_through_the_tunnel_reaches_dnsmasq_which_sees_the_client(transport: Transport) {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-dns", transport);
    // dnsmasq on the service host's wildcard, answering from the address each query came to
    // (IP_PKTINFO), and logging who asked.
    let log = t.lab.dir.join("dnsmasq.log");
    let mut cmd = t.svc().command("dnsmasq");
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--port=5300",
        "--address=/svc.example/10.9.8.7",
        "--address=/svc.example/2001:db8::7",
        "--log-queries",
        "--log-facility=-",
        "--pid-file=",
        "--user=root",
    ]);
    let dnsmasq = Child::spawn("dnsmasq", &mut cmd, &log).unwrap();
    t.start_gateway("auto");
    t.start_client();
    for (server, kind, want, client) in [
        (GW_V4, "A", "10.9.8.7", "10.201.0.2"),
        (GW_V6, "AAAA", "2001:db8::7", "fd00:201::2"),
    ] {
        for round in 0..3 {
            let out = t
                .inet()
                .command("dig")
                .args([
                    &format!("@{server}"),
                    "-p",
                    "53",
                    "+short",
                    "+tries=1",
                    "+time=3",
                    &format!("r{round}.svc.example"),
                    kind,
                ])
                .output()
                .unwrap();
            let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(
                answer,
                want,
                "dig {kind} via {server}\ngateway:\n{}\nclient:\n{}\ndnsmasq:\n{}",
                t.lab.gateway_log(),
                t.client_log(),
                dnsmasq.output()
            );
        }
        // dnsmasq saw the internet client's own address, not the gateway's or the tunnel's.
        let seen = dnsmasq.output();
        assert!(
            seen.lines()
                .any(|l| l.contains("svc.example") && l.contains(&format!("from {client}"))),
            "dnsmasq never saw {client}:\n{seen}"
        );
    }
    let line = t.lab.wait_access_log(&["udp session", "listener=dns"]);
    assert!(line.contains("target=tunnel:alpha:5300"), "{line}");
}

on_both_transports!(
    a_wildcard_udp_service_that_picks_no_source_has_its_replies_steered_into_the_tunnel
);
/// Over plain IP the service host has default routes (an IPv6 uplink is added), so the main
/// table sends the replies out of the host and the steering classifier brings them back. Over
/// Yggdrasil it has no route to the clients at all, and the UDP fallback rule takes them.
fn a_wildcard_udp_service_that_picks_no_source_has_its_replies_steered_into_the_tunnel(
    transport: Transport,
) {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-steer", transport);
    if transport == Transport::Plain {
        Veth::connect(&t.lab.ns, &["fd00:203::1/64"], t.svc(), &["fd00:203::2/64"])
            .expect("the IPv6 uplink");
        t.svc()
            .ip(&["-6", "route", "add", "default", "via", "fd00:203::1"])
            .unwrap();
    }
    // Bound to 0.0.0.0 and [::], answering with plain send_to: the kernel picks each reply's
    // source by the main table, whose default routes leave through the uplinks, not the TUN.
    for wildcard in ["0.0.0.0:5301", "[::]:5301"] {
        let addr: SocketAddr = wildcard.parse().unwrap();
        let socket = t
            .svc()
            .enter(move || {
                let s = socket2::Socket::new(
                    socket2::Domain::for_address(addr),
                    socket2::Type::DGRAM,
                    None,
                )?;
                if addr.is_ipv6() {
                    s.set_only_v6(true)?;
                }
                s.bind(&addr.into())?;
                std::io::Result::Ok(std::net::UdpSocket::from(s))
            })
            .unwrap()
            .unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let mut reply = format!("{from} said ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = socket.send_to(&reply, from);
            }
        });
    }
    t.start_gateway("auto");
    t.start_client();
    for (bind, gateway) in [
        ("10.201.0.2:0", gw(GW_V4, 5301)),
        ("[fd00:201::2]:0", gw(GW_V6, 5301)),
    ] {
        let client = t
            .inet()
            .enter(move || std::net::UdpSocket::bind(bind))
            .unwrap()
            .unwrap();
        client.connect(gateway).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let me = client.local_addr().unwrap();
        let mut buf = [0u8; 2048];
        for i in 0..20 {
            let msg = format!("datagram {i}");
            client.send(msg.as_bytes()).unwrap();
            let n = client.recv(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "no reply to {msg} via {gateway}: {e}\ngateway:\n{}\nclient:\n{}",
                    t.lab.gateway_log(),
                    t.client_log()
                )
            });
            // The service saw the internet client itself, and the reply came back whole.
            assert_eq!(
                String::from_utf8_lossy(&buf[..n]),
                format!("{me} said {msg}")
            );
        }
    }
}

/// HAProxy, bound to 0.0.0.0 and [::], answers each request with the source it saw.
fn haproxy_reporting_sources(t: &mut TunnelLab) {
    let cfg = t.lab.dir.write(
        "service-haproxy.cfg",
        "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
         frontend web\n  bind 0.0.0.0:8080\n  bind [::]:8080 v6only\n\
         \x20 http-request return status 200 content-type text/plain lf-string \"src=%[src] port=%[src_port]\\n\"\n\
         frontend behind-proxy\n  bind 0.0.0.0:8081 accept-proxy\n  bind [::]:8081 v6only accept-proxy\n\
         \x20 http-request return status 200 content-type text/plain lf-string \"src=%[src] port=%[src_port] dst=%[dst]\\n\"\n",
    )
    .unwrap();
    let mut cmd = t.svc().command("haproxy");
    cmd.arg("-db").arg("-f").arg(&cfg);
    let child = Child::spawn("haproxy", &mut cmd, &t.lab.dir.join("haproxy.log")).unwrap();
    t.lab.children.push(child);
    let svc = t.svc();
    wait_for("haproxy to listen", Duration::from_secs(10), || {
        svc.enter(|| TcpStream::connect("127.0.0.1:8080").is_ok())
            .ok()
            .filter(|up| *up)
    })
    .unwrap();
}

on_both_transports!(an_http_service_reports_the_clients_real_source_for_curl_over_v4_and_v6);
fn an_http_service_reports_the_clients_real_source_for_curl_over_v4_and_v6(transport: Transport) {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-http", transport);
    haproxy_reporting_sources(&mut t);
    t.start_gateway("splice");
    t.start_client();
    // pp.test sends a PROXY v2 header through the tunnel to a service that requires one; its
    // destination is the gateway's listener, not the TUN address the service's socket has.
    for (gateway, local, host, dst) in [
        (GW_V4.to_string(), "10.201.0.2", "web.test", ""),
        (format!("[{GW_V6}]"), "fd00:201::2", "web.test", ""),
        (
            GW_V4.to_string(),
            "10.201.0.2",
            "pp.test",
            " dst=10.201.0.1",
        ),
        (
            format!("[{GW_V6}]"),
            "fd00:201::2",
            "pp.test",
            " dst=fd00:201::1",
        ),
    ] {
        let out = t
            .inet()
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-H",
                &format!("Host: {host}"),
                "-w",
                "local=%{local_ip} %{local_port}\n",
            ])
            .arg(format!("http://{gateway}/"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "curl: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("local={local} ")))
            .unwrap_or_else(|| panic!("curl's local address is {local}: {text}"));
        assert!(
            text.contains(&format!("src={local} port={port}{dst}\n")),
            "HAProxy must see curl's own address and port: {text}"
        );
    }
}

on_both_transports!(routing_does_not_change_while_100_connections_come_and_go);
fn routing_does_not_change_while_100_connections_come_and_go(transport: Transport) {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-routes", transport);
    let _service = Server::start(t.svc(), "[::]:9000", |mut s| {
        // Holds each connection open until the client half-closes, then echoes a byte count.
        let mut n = 0u64;
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = s.write_all(format!("{n}\n").as_bytes());
    });
    t.start_gateway("auto");
    t.start_client();
    let before = t.routing_snapshot();
    assert!(
        before.contains(&format!("from {TUN_V4} lookup 7744")),
        "{before}"
    );
    assert!(
        before.contains(&format!("from {TUN_V6} lookup 7744")),
        "{before}"
    );
    let inet = t.inet().handle().unwrap();
    let name = t.inet().name().to_string();
    // Channels, not barriers: a connection that fails must fail the test, not hang it.
    let (opened_tx, opened) = std::sync::mpsc::channel::<()>();
    let release = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let (inet, name) = (inet.try_clone().unwrap(), name.clone());
            let (opened, release) = (opened_tx.clone(), release.clone());
            thread::spawn(move || {
                astrogate_lab::enter(&inet, &name).unwrap();
                let ip = if i % 2 == 0 { GW_V4 } else { GW_V6 };
                let mut s = dial(gw(ip, 7070), "hash.test");
                s.write_all(&[7u8; 100]).unwrap();
                opened.send(()).unwrap();
                let (go, ready) = &*release;
                let released = ready
                    .wait_timeout_while(go.lock().unwrap(), Duration::from_secs(60), |go| !*go)
                    .unwrap();
                assert!(*released.0, "never released");
                drop(released);
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut reply = String::new();
                s.read_to_string(&mut reply).unwrap();
                assert_eq!(reply, "100\n");
            })
        })
        .collect();
    drop(opened_tx);
    for n in 0..100 {
        opened
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("only {n} of 100 connections opened: {e}"));
    }
    let during = t.routing_snapshot();
    let pid = t.client.as_ref().unwrap().pid();
    let flows_open = common::bpf_maps_of(pid).get("TUNNEL_FLOWS").copied();
    *release.0.lock().unwrap() = true;
    release.1.notify_all();
    for c in clients {
        c.join().expect("a connection through the tunnel failed");
    }
    let after = t.routing_snapshot();
    assert_eq!(
        before, during,
        "routing changed while 100 connections were open"
    );
    assert_eq!(
        before, after,
        "routing changed after 100 connections closed"
    );
    // The TC program on the TUN's egress counted the replies of the flows it was told of (the
    // counter indexes are astrogate_common::Counter's), knew of every open flow, and each one
    // is gone once its connection closed.
    let counters = common::bpf_counters(pid);
    assert!(counters[10] >= 200, "TunnelFlowPackets: {counters:?}");
    assert_eq!(flows_open, Some(100), "one TC flow per open connection");
    wait_for(
        "the tunnel's flow map to empty",
        Duration::from_secs(10),
        || (common::bpf_maps_of(pid).get("TUNNEL_FLOWS") == Some(&0)).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {:?}", common::bpf_maps_of(pid)));
}

on_both_transports!(a_key_that_is_not_listed_is_refused_before_any_traffic);
fn a_key_that_is_not_listed_is_refused_before_any_traffic(transport: Transport) {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-unlisted", transport);
    // The gateway lists some other key for `alpha`.
    let other = keygen(&t.lab.dir.join("other.key"));
    let config = t.gateway_config(&other, "auto");
    t.lab.gateway(&config);
    let mut cmd = t.svc().command(TUNNEL);
    cmd.arg("run").arg("--config").arg(&t.client_config);
    let child = Child::spawn("astrogate-tunnel", &mut cmd, &t.lab.dir.join("tunnel.log")).unwrap();
    t.client = Some(child);
    let gateway_log = wait_for(
        "the gateway to refuse the key",
        Duration::from_secs(15),
        || {
            let log = t.lab.gateway_log();
            log.contains("not listed in any [[tunnel]]").then_some(log)
        },
    )
    .unwrap();
    assert!(
        gateway_log.contains(&t.client_public),
        "the refusal names the key: {gateway_log}"
    );
    let client_log = wait_for(
        "the client to report the refusal",
        Duration::from_secs(15),
        || {
            let log = t.client_log();
            log.contains("is this client's public key listed")
                .then_some(log)
        },
    )
    .unwrap();
    assert!(!client_log.contains("serving tunnel"), "{client_log}");
    assert!(
        !gateway_log.contains("tunnel client connected"),
        "{gateway_log}"
    );
    // And the route has nobody to serve it.
    let reply = t
        .inet()
        .enter(|| {
            let mut s = TcpStream::connect(gw(GW_V4, 7070)).unwrap();
            s.write_all(b"ASTROGATE-DIAL/1 hash.test 9000\r\n").unwrap();
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            r
        })
        .unwrap();
    assert!(reply.starts_with("ASTROGATE-DIAL/1 502"), "{reply}");
}

on_both_transports!(the_client_reconnects_after_a_gateway_restart);
fn the_client_reconnects_after_a_gateway_restart(transport: Transport) {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-restart", transport);
    let _service = hash_service(t.svc(), DOWN);
    t.start_gateway("auto");
    t.start_client();
    transfers(&t, vec![(gw(GW_V4, 7070), 1000)], 1);
    let mut old = t.lab.children.remove(0);
    old.stop(Duration::from_secs(10));
    drop(old);
    t.start_gateway("auto");
    t.wait_serving(2);
    transfers(
        &t,
        vec![(gw(GW_V4, 7070), 1000), (gw(GW_V6, 7070), 2000)],
        2,
    );
}

/// A path that dies without a FIN or a reset: the service host's packets to the gateway
/// vanish. Only the heartbeats (every 500 ms here) can tell, on both sides; once the path heals
/// the client is back by itself.
#[test]
fn heartbeats_find_a_silently_dead_path_and_the_client_returns_when_it_heals() {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-deadpath", Transport::Plain);
    let _service = hash_service(t.svc(), DOWN);
    t.start_gateway("auto");
    t.start_client();
    transfers(&t, vec![(gw(GW_V4, 7070), 1000)], 1);
    let cut = format!("{TRANSPORT_GW}/32");
    t.svc().ip(&["route", "add", "blackhole", &cut]).unwrap();
    let client = wait_for(
        "the client to notice the dead path",
        Duration::from_secs(15),
        || {
            let log = t.client_log();
            log.contains("no heartbeat for").then_some(log)
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", t.client_log()));
    assert!(client.contains("disconnected from the gateway"), "{client}");
    wait_for(
        "the gateway to notice the dead path",
        Duration::from_secs(15),
        || {
            let log = t.lab.gateway_log();
            (log.contains("tunnel client disconnected") && log.contains("no heartbeat for"))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}: {}", t.lab.gateway_log()));
    t.svc().ip(&["route", "del", "blackhole", &cut]).unwrap();
    t.wait_serving(2);
    transfers(
        &t,
        vec![(gw(GW_V4, 7070), 1000), (gw(GW_V6, 7070), 2000)],
        2,
    );
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// How one leak-test connection ends.
fn leak_round(gateway: SocketAddr, i: usize) {
    let mut s = dial(gateway, "hash.test");
    match i % 3 {
        // FIN from the internet client first; the service answers and closes.
        0 => {
            s.write_all(b"f").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            assert_eq!(r, "1\n");
        }
        // The service closes first, while the client still has its side open.
        1 => {
            s.write_all(b"c").unwrap();
            let mut r = String::new();
            s.read_to_string(&mut r).unwrap();
            assert_eq!(r, "bye\n");
        }
        // A reset from the internet client in the middle of the connection.
        _ => {
            s.write_all(b"r").unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }
}

/// 10,000 connections through the tunnel, ended by a FIN from either end or by a reset, 32 at a
/// time: afterwards the TC flow map is empty, both processes hold the descriptors they held
/// before, and the client's memory is where it was after the first thousand.
#[test]
fn nothing_is_left_after_10k_connections() {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-leak", Transport::Plain);
    let _service = Server::start(t.svc(), "[::]:9000", |mut s| {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).is_err() {
            return;
        }
        match first[0] {
            b'c' => {
                let _ = s.write_all(b"bye\n");
            }
            _ => {
                let mut rest = Vec::new();
                if s.read_to_end(&mut rest).is_ok() {
                    let _ = s.write_all(format!("{}\n", 1 + rest.len()).as_bytes());
                }
            }
        }
    });
    t.start_gateway("auto");
    t.start_client();
    let client = t.client.as_ref().unwrap().pid();
    let gateway = t.lab.children[0].pid();
    let run = |from: usize, to: usize| {
        let workers: Vec<_> = (0..32)
            .map(|w| {
                let handle = t.inet().handle().unwrap();
                let name = t.inet().name().to_string();
                thread::spawn(move || {
                    astrogate_lab::enter(&handle, &name).unwrap();
                    for i in (from + w..to).step_by(32) {
                        let ip = if i % 2 == 0 { GW_V4 } else { GW_V6 };
                        leak_round(gw(ip, 7070), i);
                    }
                })
            })
            .collect();
        for w in workers {
            if let Err(panic) = w.join() {
                std::panic::resume_unwind(panic);
            }
        }
    };
    let settled = |what: &str, fds: (usize, usize)| {
        let pid_map = || common::bpf_maps_of(client).get("TUNNEL_FLOWS").copied();
        wait_for(what, Duration::from_secs(20), || {
            (pid_map() == Some(0) && (open_fds(client), open_fds(gateway)) == fds).then_some(())
        })
        .unwrap_or_else(|e| {
            panic!(
                "{e}: flows {:?}, descriptors (client, gateway) {:?}, not {fds:?}",
                pid_map(),
                (open_fds(client), open_fds(gateway))
            )
        })
    };
    let fds = (open_fds(client), open_fds(gateway));
    let started = std::time::Instant::now();
    run(0, 1000);
    settled("the first 1,000 connections to leave nothing", fds);
    let warm = rss_kib(client);
    run(1000, 10_000);
    settled("10,000 connections to leave nothing", fds);
    let end = rss_kib(client);
    eprintln!(
        "10,000 connections in {:?}; client RSS {warm} KiB after 1,000, {end} KiB after 10,000; \
         descriptors (client, gateway) {fds:?} before and after",
        started.elapsed()
    );
    // The stack's buffers for 32 connections at a time are about 16 MiB; a leak of even 2 KiB
    // per connection would add 18 MiB more.
    assert!(
        end < warm + 8 * 1024,
        "the client grew from {warm} KiB to {end} KiB over 9,000 connections"
    );
    let counters = common::bpf_counters(client);
    assert!(counters[10] >= 10_000, "TunnelFlowPackets: {counters:?}");
}

/// A service that closes first leaves the connection in TIME_WAIT on its host, and the next
/// internet client to reuse that address and port arrives on the same 4-tuple. The service's
/// kernel takes that SYN only if it is newer (the stack's TCP timestamps say so); before they
/// were on, one such connection in two waited a second for a retransmitted SYN.
#[test]
fn a_client_port_reused_while_the_service_holds_time_wait_connects_at_once() {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-timewait", Transport::Plain);
    let _service = Server::start(t.svc(), "[::]:9000", |mut s| {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(b"y");
        }
        // Dropped here: the service closes first, and keeps TIME_WAIT.
    });
    t.start_gateway("auto");
    t.start_client();
    let from: SocketAddr = "10.201.0.2:40123".parse().unwrap();
    let times = t
        .inet()
        .enter(move || {
            (0..12)
                .map(|_| {
                    let started = std::time::Instant::now();
                    // The last connection from this port may still be in LAST-ACK on the
                    // client's own side for a moment (it closed second): its 4-tuple is
                    // not free until the gateway's ACK lands, and connect() says
                    // EADDRNOTAVAIL meanwhile. Only the service's TIME_WAIT is under test.
                    let socket = loop {
                        let socket = socket2::Socket::new(
                            socket2::Domain::IPV4,
                            socket2::Type::STREAM,
                            None,
                        )
                        .unwrap();
                        socket.set_reuse_address(true).unwrap();
                        socket.bind(&from.into()).unwrap();
                        match socket.connect(&gw(GW_V4, 7070).into()) {
                            Ok(()) => break socket,
                            Err(e)
                                if e.kind() == std::io::ErrorKind::AddrNotAvailable
                                    && started.elapsed() < Duration::from_millis(500) =>
                            {
                                std::thread::sleep(Duration::from_millis(1));
                            }
                            Err(e) => panic!("connecting from {from}: {e}"),
                        }
                    };
                    let mut s = dial_on(socket.into(), "hash.test");
                    s.write_all(b"x").unwrap();
                    let mut reply = Vec::new();
                    s.read_to_end(&mut reply).unwrap();
                    assert_eq!(reply, b"y");
                    started.elapsed()
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    let waiting = t
        .svc()
        .command("ss")
        .args(["-Htan", "state", "time-wait"])
        .output()
        .unwrap();
    let waiting = String::from_utf8_lossy(&waiting.stdout);
    // The service listens on [::], so it shows IPv4 peers as ::ffff:a.b.c.d.
    assert!(
        waiting
            .lines()
            .any(|l| l.contains(&format!("{TUN_V4}]:9000")) && l.contains("10.201.0.2]:40123")),
        "the service host holds the client's 4-tuple in TIME_WAIT: {waiting}"
    );
    // Each takes a few milliseconds; a SYN the service's kernel turned away costs a second.
    assert!(
        times.iter().all(|d| *d < Duration::from_millis(600)),
        "connections from one reused port: {times:?}"
    );
}

#[test]
fn the_host_reaches_an_address_that_is_connected_to_it_through_the_tunnel() {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-own", Transport::Plain);
    let _service = Server::start(t.svc(), "[::]:9000", |mut s| {
        let mut buf = [0u8; 16];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    // A server on the internet client's own address, which the service host reaches through
    // its ordinary default route.
    let _client_side = Server::start(t.inet(), "10.201.0.2:5555", |mut s| {
        s.write_all(b"direct\n").unwrap();
    });
    t.start_gateway("auto");
    t.start_client();
    let handle = t.inet().handle().unwrap();
    let name = t.inet().name().to_string();
    let tunneled = thread::spawn(move || {
        astrogate_lab::enter(&handle, &name).unwrap();
        let s = dial(gw(GW_V4, 7070), "hash.test");
        thread::sleep(Duration::from_secs(2));
        drop(s);
    });
    thread::sleep(Duration::from_millis(500));
    let reply = t
        .svc()
        .enter(|| {
            let mut s = TcpStream::connect_timeout(
                &"10.201.0.2:5555".parse().unwrap(),
                Duration::from_secs(5),
            )?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok::<_, std::io::Error>(r)
        })
        .unwrap();
    assert_eq!(reply.unwrap(), "direct\n");
    tunneled.join().unwrap();
}

#[test]
fn sigterm_removes_everything_and_a_killed_clients_leftovers_go_at_the_next_start() {
    astrogate_lab::require_root().unwrap();
    let mut t = TunnelLab::new("tunnel-cleanup", Transport::Plain);
    let pristine = t.routing_snapshot();
    t.start_gateway("auto");
    t.start_client();
    assert_ne!(t.routing_snapshot(), pristine);
    // Killed outright: nothing is taken back; the TUN goes with the process (it is not
    // persistent), the rules stay.
    let mut client = t.client.take().unwrap();
    client.signal(libc::SIGKILL);
    client
        .wait_exit(Duration::from_secs(5))
        .expect("the client dies");
    drop(client);
    let left = t.routing_snapshot();
    assert!(
        left.contains("lookup 7744"),
        "a killed client leaves its rules: {left}"
    );
    // The next start removes them before installing its own, so there is one of each.
    t.start_client();
    let running = t.routing_snapshot();
    assert_eq!(
        running
            .matches(&format!("from {TUN_V4} lookup 7744"))
            .count(),
        1,
        "{running}"
    );
    // It runs as `nobody` with CAP_NET_ADMIN (12) alone, on every thread, and that is
    // enough to take its changes back at SIGTERM.
    let mut client = t.client.take().unwrap();
    let pid = client.pid();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}:")))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        assert_eq!(field("Uid"), "65534\t65534\t65534\t65534", "{status}");
        for key in ["CapPrm", "CapEff", "CapBnd"] {
            assert_eq!(
                field(key),
                format!("{:016x}", 1u64 << 12),
                "{key}: {status}"
            );
        }
    }
    client.signal(libc::SIGTERM);
    let status = client
        .wait_exit(Duration::from_secs(10))
        .expect("SIGTERM stops the client");
    assert!(status.success(), "{status}: {}", client.output());
    assert_eq!(
        t.routing_snapshot(),
        pristine,
        "SIGTERM must take every change back"
    );
    let links = t.svc().ip(&["link", "show"]).unwrap();
    assert!(!links.contains("astg0"), "{links}");
}
