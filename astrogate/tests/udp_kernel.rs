//! The UDP kernel path over real links: a client namespace, the gateway's, and a server's,
//! joined by veths, the gateway not forwarding IP. Once a session is established the ingress
//! program carries its datagrams both ways; these tests check that every datagram still
//! arrives whole, with checksums the receivers verify in software, counted exactly at both
//! ends and in the access log; that what the program cannot carry (IP fragments, packets over
//! the next link's MTU) still goes through user space; that GSO batches keep their
//! boundaries; and that a session the kernel carries is not ended as idle.
mod common;

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use astrogate_lab::{wait_for, Netns, Veth};
use common::{bpf_map_dumps, Lab};
use sha2::{Digest, Sha256};

/// One test at a time: a gateway starved of the CPU by another test's burst drops datagrams
/// as any UDP receiver would, and these tests count every one.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

const CONFIG: &str = r#"
[gateway]
udp_idle_timeout = "1s"

[[listener]]
name = "k4"
transport = "udp"
bind = ["10.71.0.1:5300"]
to = "10.72.0.2:9000"

[[listener]]
name = "k6"
transport = "udp"
bind = ["[fd71::1]:5300"]
to = "[fd72::2]:9000"

[[listener]]
name = "u4"
transport = "udp"
bind = ["10.71.0.1:5301"]
to = "10.72.0.2:9000"
data_path = "userspace"
"#;

/// The server's link is narrower than the client's, so some datagrams that reach the gateway
/// whole do not fit the next link: the program must leave them to user space.
const SERVER_MTU: &str = "1400";

/// Field order is drop order: the gateway's lab (its processes, then its namespace) before
/// the two peers.
struct Net {
    lab: Lab,
    client: Netns,
    server: Netns,
    client_if: String,
    /// Datagrams and payload bytes the server received.
    received: Arc<(AtomicU64, AtomicU64)>,
}

impl Net {
    fn gateway_pid(&self) -> u32 {
        self.lab
            .children
            .iter()
            .find(|c| c.name() == "astrogate")
            .map(|c| c.pid())
            .expect("the gateway runs")
    }

    /// Counters of /proc/net/snmp's `Udp:` lines in `ns`.
    fn udp_errors(ns: &Netns) -> HashMap<String, u64> {
        let out = ns.command("cat").arg("/proc/net/snmp").output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp: ")).collect();
        udp[0]
            .split_whitespace()
            .zip(udp[1].split_whitespace())
            .skip(1)
            .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
            .collect()
    }

    /// No UDP receiver in any of the three namespaces dropped a datagram or saw a bad checksum.
    fn assert_no_udp_errors(&self) {
        for (name, ns) in [
            ("client", &self.client),
            ("gateway", &self.lab.ns),
            ("server", &self.server),
        ] {
            let counters = Self::udp_errors(ns);
            for key in ["InErrors", "InCsumErrors", "RcvbufErrors", "MemErrors"] {
                assert_eq!(counters.get(key), Some(&0), "{name}: {key} in {counters:?}");
            }
        }
    }
}

fn ethtool(ns: &Netns, args: &[&str]) {
    let out = ns.command("ethtool").args(args).output().unwrap();
    assert!(out.status.success(), "ethtool {args:?}: {out:?}");
}

fn build(tag: &str) -> Net {
    let mut lab = Lab::new(tag);
    let client = Netns::new("ukc").unwrap();
    let server = Netns::new("uks").unwrap();
    let near = Veth::connect(
        &client,
        &["10.71.0.2/24", "fd71::2/64"],
        &lab.ns,
        &["10.71.0.1/24", "fd71::1/64"],
    )
    .unwrap();
    let far = Veth::connect(
        &lab.ns,
        &["10.72.0.1/24", "fd72::1/64"],
        &server,
        &["10.72.0.2/24", "fd72::2/64"],
    )
    .unwrap();
    for (ns, ifname) in [(&lab.ns, &far.a_if), (&server, &far.b_if)] {
        ns.ip(&["link", "set", ifname, "mtu", SERVER_MTU]).unwrap();
    }
    // The client and the server compute their checksums in software, so the receivers verify
    // every checksum the program rewrote (an offloaded one would be trusted unchecked).
    ethtool(&client, &["-K", &near.a_if, "tx", "off"]);
    ethtool(&server, &["-K", &far.b_if, "tx", "off"]);
    let received = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    for addr in ["10.72.0.2:9000", "[fd72::2]:9000"] {
        transform_server(&server, addr.parse().unwrap(), received.clone());
    }
    lab.gateway(CONFIG);
    Net {
        lab,
        client,
        server,
        client_if: near.a_if,
        received,
    }
}

/// Answers each datagram with its SHA-256 followed by the datagram reversed, counting what
/// it received.
fn transform_server(ns: &Netns, addr: SocketAddr, received: Arc<(AtomicU64, AtomicU64)>) {
    let socket = ns.enter(move || UdpSocket::bind(addr)).unwrap().unwrap();
    big_buffers(&socket);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            received.0.fetch_add(1, Ordering::Relaxed);
            received.1.fetch_add(n as u64, Ordering::Relaxed);
            let _ = socket.send_to(&expected_reply(&buf[..n]), from);
        }
    });
}

fn big_buffers(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::RcvBufForce, &(4 << 20)).unwrap();
    setsockopt(socket, sockopt::SndBufForce, &(4 << 20)).unwrap();
}

fn expected_reply(d: &[u8]) -> Vec<u8> {
    let mut reply = Sha256::digest(d).to_vec();
    reply.extend(d.iter().rev());
    reply
}

/// Sizes from empty past both links' MTUs: 1372+ does not fit the server's link (user space
/// fragments it), 1453+ (IPv6) and 1473+ (IPv4) arrive fragmented.
fn datagram(i: usize) -> Vec<u8> {
    let sizes = [
        0, 1, 2, 63, 64, 512, 1200, 1300, 1372, 1400, 1452, 1472, 3000, 9000, 64_000,
    ];
    let len = sizes[i % sizes.len()];
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

fn client_socket(ns: &Netns, bind: &str, to: &str) -> UdpSocket {
    let (bind, to): (SocketAddr, SocketAddr) = (bind.parse().unwrap(), to.parse().unwrap());
    let socket = ns.enter(move || UdpSocket::bind(bind)).unwrap().unwrap();
    socket.connect(to).unwrap();
    big_buffers(&socket);
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    socket
}

/// Sends `rounds` bursts of `per_round` datagrams at full speed and waits for every reply
/// (in any order: the kernel and user space may each carry part of a burst). Returns the
/// datagrams and bytes sent and received.
fn exchange(socket: &UdpSocket, rounds: usize, per_round: usize) -> [u64; 4] {
    let mut buf = vec![0u8; 65_535];
    let mut totals = [0u64; 4];
    let to = socket.peer_addr().unwrap();
    for round in 0..rounds {
        let burst: Vec<Vec<u8>> = (0..per_round)
            .map(|i| datagram(round * per_round + i))
            .collect();
        let mut want: HashMap<Vec<u8>, usize> = HashMap::new();
        for d in &burst {
            socket.send(d).unwrap();
            totals[0] += 1;
            totals[1] += d.len() as u64;
            *want.entry(expected_reply(d)).or_default() += 1;
        }
        let mut missing = per_round;
        while missing > 0 {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("{to}: round {round}: {missing} replies missing: {e}"));
            match want.get_mut(&buf[..n]) {
                Some(left) if *left > 0 => *left -= 1,
                _ => panic!("{to}: round {round}: a reply of {n} bytes matches no datagram sent"),
            }
            missing -= 1;
            totals[2] += 1;
            totals[3] += n as u64;
        }
    }
    totals
}

/// The field `name=value` of an access-log line.
fn field<'a>(line: &'a str, name: &str) -> &'a str {
    let at = line
        .find(&format!(" {name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        + name.len()
        + 2;
    line[at..].split_whitespace().next().unwrap_or("")
}

/// The session line of the client at `client`.
fn session_line(net: &Net, client: SocketAddr) -> String {
    net.lab
        .wait_access_log(&["udp session", &format!("client={client} ")])
}

/// The flow map, once every session has ended, holds nothing.
fn assert_flow_map_empty(net: &Net) {
    let pid = net.gateway_pid();
    let dumps = bpf_map_dumps(pid, &["UDP_FLOWS"]);
    assert_eq!(dumps.len(), 1, "the gateway holds one UDP_FLOWS map");
    assert!(
        dumps[0].1.contains("Found 0 elements"),
        "UDP_FLOWS after the sessions ended:\n{}",
        dumps[0].1
    );
}

#[test]
fn established_sessions_are_carried_by_the_kernel_and_every_datagram_arrives_whole() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = build("udpk");
    const ROUNDS: usize = 16;
    const PER_ROUND: usize = 60;
    let clients = [
        ("10.71.0.2:0", "10.71.0.1:5300"),
        ("10.71.0.2:0", "10.71.0.1:5300"),
        ("[fd71::2]:0", "[fd71::1]:5300"),
        ("[fd71::2]:0", "[fd71::1]:5300"),
        // The same on a listener kept in user space.
        ("10.71.0.2:0", "10.71.0.1:5301"),
    ];
    let sockets: Vec<UdpSocket> = clients
        .iter()
        .map(|(bind, to)| client_socket(&net.client, bind, to))
        .collect();
    let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
    let threads: Vec<_> = sockets
        .into_iter()
        .map(|s| std::thread::spawn(move || exchange(&s, ROUNDS, PER_ROUND)))
        .collect();
    let totals: Vec<[u64; 4]> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    // Every datagram sent arrived at the server, and every reply at its client.
    let sent: u64 = totals.iter().map(|t| t[0]).sum();
    let sent_bytes: u64 = totals.iter().map(|t| t[1]).sum();
    assert_eq!(net.received.0.load(Ordering::Relaxed), sent);
    assert_eq!(net.received.1.load(Ordering::Relaxed), sent_bytes);
    for t in &totals {
        assert_eq!(t[0], t[2], "{totals:?}");
    }
    net.assert_no_udp_errors();
    // One line per session, with the exact counts, and the kernel's share of them.
    for (i, (addr, t)) in addrs.iter().zip(&totals).enumerate() {
        let line = session_line(&net, *addr);
        assert_eq!(field(&line, "up_datagrams"), t[0].to_string(), "{line}");
        assert_eq!(field(&line, "down_datagrams"), t[2].to_string(), "{line}");
        assert_eq!(field(&line, "up_bytes"), t[1].to_string(), "{line}");
        assert_eq!(field(&line, "down_bytes"), t[3].to_string(), "{line}");
        assert_eq!(field(&line, "outcome"), "ok", "{line}");
        let kernel = field(&line, "kernel_datagrams");
        if i == 4 {
            assert_eq!(kernel, "-", "a userspace listener: {line}");
            continue;
        }
        let (up, down) = kernel.split_once('/').expect("kernel_datagrams=UP/DOWN");
        let (up, down): (u64, u64) = (up.parse().unwrap(), down.parse().unwrap());
        // After the first burst, every datagram that fits both links unfragmented goes
        // through the kernel: 8 of the 15 sizes up (up to 1300 bytes, IPv4 and IPv6 alike,
        // under the 1400 MTU), and their replies (32 bytes longer) down.
        let fitting = (PER_ROUND * (ROUNDS - 1)) as u64 * 7 / 15;
        assert!(
            up >= fitting && up < t[0],
            "kernel up {up} of {}: {line}",
            t[0]
        );
        assert!(down >= fitting && down < t[2], "kernel down {down}: {line}");
    }
    assert_flow_map_empty(&net);
}

#[test]
fn gso_batches_keep_their_boundaries_through_the_kernel() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = build("udpk-gso");
    // GSO needs checksum offload on the sending link.
    ethtool(&net.client, &["-K", &net.client_if, "tx", "on"]);
    let socket = client_socket(&net.client, "10.71.0.2:0", "10.71.0.1:5300");
    let addr = socket.local_addr().unwrap();
    // Establish the session first, so the batches meet the kernel path.
    assert_eq!(exchange(&socket, 1, 1)[2], 1);
    const SEGMENT: u16 = 1000;
    const PER_BATCH: usize = 40;
    const BATCHES: usize = 16;
    let mut buf = vec![0u8; 65_535];
    let mut segments = 0u64;
    for b in 0..BATCHES {
        let data: Vec<u8> = (0..PER_BATCH * usize::from(SEGMENT) - 7)
            .map(|j| (b * 13 + j * 3 + j / 1000) as u8)
            .collect();
        send_gso(&socket, &data, SEGMENT);
        let mut want: HashMap<Vec<u8>, usize> = HashMap::new();
        for d in data.chunks(usize::from(SEGMENT)) {
            *want.entry(expected_reply(d)).or_default() += 1;
            segments += 1;
        }
        for _ in 0..data.len().div_ceil(usize::from(SEGMENT)) {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("batch {b}: a reply is missing: {e}"));
            match want.get_mut(&buf[..n]) {
                Some(left) if *left > 0 => *left -= 1,
                _ => panic!("batch {b}: a reply of {n} bytes matches no segment"),
            }
        }
    }
    // The server got each segment as its own datagram, and nothing else.
    assert_eq!(net.received.0.load(Ordering::Relaxed), segments + 1);
    net.assert_no_udp_errors();
    let line = session_line(&net, addr);
    assert_eq!(
        field(&line, "up_datagrams"),
        (segments + 1).to_string(),
        "{line}"
    );
    let kernel = field(&line, "kernel_datagrams");
    let up: u64 = kernel.split('/').next().unwrap().parse().unwrap();
    assert_eq!(up, segments, "every batch went through the kernel: {line}");
    assert_flow_map_empty(&net);
}

/// One sendmsg of `data` cut into `segment`-byte datagrams by the kernel (UDP_SEGMENT).
fn send_gso(socket: &UdpSocket, data: &[u8], segment: u16) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
    use std::{io::IoSlice, os::fd::AsRawFd};
    let iov = [IoSlice::new(data)];
    let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
    sendmsg::<SockaddrStorage>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
        .expect("sendmsg with UDP_SEGMENT");
}

#[test]
fn a_session_the_kernel_carries_is_not_ended_as_idle() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let net = build("udpk-idle");
    let socket = client_socket(&net.client, "[fd71::2]:0", "[fd71::1]:5300");
    let addr = socket.local_addr().unwrap();
    // Three idle timeouts long, a datagram every quarter of one: the session must last.
    let mut buf = vec![0u8; 100];
    const SENDS: usize = 12;
    for i in 0..SENDS {
        let d = [i as u8; 64];
        socket.send(&d).unwrap();
        let n = socket.recv(&mut buf).expect("a reply");
        assert_eq!(&buf[..n], &expected_reply(&d)[..]);
        std::thread::sleep(Duration::from_millis(250));
    }
    let line = session_line(&net, addr);
    assert_eq!(field(&line, "up_datagrams"), SENDS.to_string(), "{line}");
    let kernel = field(&line, "kernel_datagrams");
    let up: u64 = kernel.split('/').next().unwrap().parse().unwrap();
    assert!(up >= SENDS as u64 - 1, "{line}");
    // And only one session: none ended early and started again.
    std::thread::sleep(Duration::from_millis(300));
    let log = net.lab.gateway_log();
    let lines = log
        .lines()
        .filter(|l| l.contains("udp session") && l.contains(&format!("client={addr} ")))
        .count();
    assert_eq!(lines, 1, "{log}");
    wait_for("the flow map to empty", Duration::from_secs(3), || {
        let dumps = bpf_map_dumps(net.gateway_pid(), &["UDP_FLOWS"]);
        dumps
            .first()
            .filter(|d| d.1.contains("Found 0 elements"))
            .map(|_| ())
    })
    .unwrap();
}
