//! UDP listeners against real peers: every datagram forwarded exactly, with its boundaries,
//! both ways; replies from the address the client sent to; dig through dnsmasq; HTTP/3
//! (aioquic) routed by the SNI in the QUIC Initial packets, a ClientHello over two Initial
//! packets included; unknown names dropped; sessions ending after the idle timeout; and a
//! flood from many source ports held to the session cap.
mod common;

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use astrogate_lab::{test_python, wait_for};
use common::{stdout, Lab};
use sha2::{Digest, Sha256};

const H3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h3");

/// These tests check that nothing is dropped, and a gateway starved of the CPU for a tenth of
/// a second by another test's flood would drop datagrams as any UDP receiver would. They take
/// turns on this lock so each one has the machine's two cores to itself.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A UDP server on a thread in the lab's namespace: answers each datagram with its SHA-256
/// followed by the datagram reversed, so a reply proves which datagram it answers, whole.
fn transform_server(lab: &Lab, addr: &str) -> SocketAddr {
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = lab
        .ns
        .enter(move || UdpSocket::bind(addr))
        .unwrap()
        .unwrap();
    big_buffers(&socket);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let mut reply = Sha256::digest(&buf[..n]).to_vec();
            reply.extend(buf[..n].iter().rev());
            let _ = socket.send_to(&reply, from);
        }
    });
    addr
}

/// 4 MiB buffers, past net.core.rmem_max (the tests run as root): the test's own sockets
/// must not be where a burst is dropped.
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

/// Datagram sizes from empty to the largest loopback carries, and a deterministic payload.
fn datagram(i: usize) -> Vec<u8> {
    let sizes = [0, 1, 2, 63, 64, 512, 1200, 1472, 1500, 8_000, 65_000 - 32];
    let len = sizes[i % sizes.len()];
    (0..len).map(|j| (i * 31 + j * 7) as u8).collect()
}

const PLAIN: &str = r#"
[gateway]
udp_idle_timeout = "1s"

[[listener]]
name = "dns4"
transport = "udp"
bind = ["0.0.0.0:5353"]
to = "127.0.0.1:9053"

[[listener]]
name = "dns6"
transport = "udp"
bind = ["[::]:5353"]
to = "[::1]:9053"

[[listener]]
name = "dns"
transport = "udp"
bind = ["127.0.0.1:53"]
to = "127.0.0.1:5300"

# TCP and UDP ports are separate: the same address may be both.
[[listener]]
name = "tcp-too"
bind = ["127.0.0.1:5353"]
to = "127.0.0.1:9053"
"#;

#[test]
fn every_datagram_arrives_whole_both_ways_and_replies_come_from_the_address_used() {
    let _turn = one_at_a_time();
    let mut lab = Lab::new("udp");
    transform_server(&lab, "127.0.0.1:9053");
    transform_server(&lab, "[::1]:9053");
    lab.gateway(PLAIN);
    // 127.0.0.2 is also this host (all of 127/8 is), and the listener is bound to the
    // wildcard: the replies must come from the address each client sent to.
    let clients = [
        ("127.0.0.1:0", "127.0.0.2:5353"),
        ("127.0.0.1:0", "127.0.0.1:5353"),
        ("[::1]:0", "[::1]:5353"),
    ];
    const ROUNDS: usize = 16;
    const PER_ROUND: usize = 64;
    let handles: Vec<_> = clients
        .iter()
        .map(|&(bind, to)| {
            let socket = lab
                .ns
                .enter(move || UdpSocket::bind(bind))
                .unwrap()
                .unwrap();
            // connect() makes the kernel drop datagrams from any other source address.
            socket.connect(to).unwrap();
            big_buffers(&socket);
            socket
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_535];
                let (mut sent, mut received) = (0usize, 0usize);
                for round in 0..ROUNDS {
                    // A burst at full speed, then every answer, matched by content.
                    let burst: Vec<Vec<u8>> = (0..PER_ROUND)
                        .map(|i| datagram(round * PER_ROUND + i))
                        .collect();
                    for d in &burst {
                        socket.send(d).unwrap();
                        sent += 1;
                    }
                    let mut want: Vec<Vec<u8>> = burst.iter().map(|d| expected_reply(d)).collect();
                    while !want.is_empty() {
                        let n = socket.recv(&mut buf).unwrap_or_else(|e| {
                            panic!("{to}: {} replies missing: {e}", want.len())
                        });
                        let at = want
                            .iter()
                            .position(|w| w[..] == buf[..n])
                            .unwrap_or_else(|| {
                                panic!("{to}: a reply of {n} bytes matches no datagram")
                            });
                        // Loopback and a one-thread server keep order, so the gateway must
                        // too, the first burst included: it arrives while the session is
                        // being set up, and is held, then handed over.
                        assert_eq!(at, 0, "{to}: round {round}: a reply came out of order");
                        want.remove(0);
                        received += 1;
                    }
                }
                (to, sent, received)
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
    // No socket in the namespace dropped a datagram: the clients', the gateway's, the server's.
    let snmp = stdout(&lab.client("cat", &["/proc/net/snmp"]));
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp: ")).collect();
    let fields: Vec<&str> = udp[0].split_whitespace().collect();
    let values: Vec<&str> = udp[1].split_whitespace().collect();
    for name in ["InErrors", "RcvbufErrors", "SndbufErrors", "MemErrors"] {
        let at = fields.iter().position(|f| *f == name).unwrap();
        assert_eq!(values[at], "0", "{name}:\n{snmp}");
    }
    for h in results {
        let (to, sent, received) = h.unwrap();
        assert_eq!(
            (sent, received),
            (ROUNDS * PER_ROUND, ROUNDS * PER_ROUND),
            "{to}"
        );
    }
    // One line per session, once it has been idle for udp_idle_timeout, with the counts.
    let total: u64 = (0..ROUNDS * PER_ROUND)
        .map(|i| datagram(i).len() as u64)
        .sum();
    let replies = total + 32 * (ROUNDS * PER_ROUND) as u64;
    for listener in ["dns4", "dns6"] {
        let line = lab.wait_access_log(&["udp session", &format!("listener={listener}")]);
        assert!(line.contains("protocol=udp"), "{line}");
        assert!(line.contains("outcome=ok"), "{line}");
    }
    let log = lab.gateway_log();
    let sessions: Vec<&str> = log.lines().filter(|l| l.contains("udp session")).collect();
    assert_eq!(sessions.len(), 3, "{log}");
    for line in sessions {
        let n = ROUNDS * PER_ROUND;
        for field in [
            format!("up_datagrams={n} "),
            format!("down_datagrams={n} "),
            format!("up_bytes={total} "),
            format!("down_bytes={replies} "),
        ] {
            assert!(line.contains(&field), "{field} in {line}");
        }
    }
}

#[test]
fn dig_resolves_through_the_gateway() {
    let _turn = one_at_a_time();
    let mut lab = Lab::new("udp-dns");
    lab.spawn(
        "dnsmasq",
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--port=5300",
            "--address=/svc.example/10.9.8.7",
            "--address=/svc.example/2001:db8::7",
            "--pid-file=",
            "--user=root",
        ],
        None,
    );
    lab.gateway(PLAIN);
    for (kind, want) in [("A", "10.9.8.7"), ("AAAA", "2001:db8::7")] {
        let answer = wait_for("dig to get an answer", Duration::from_secs(10), || {
            let out = lab.client(
                "dig",
                &[
                    "@127.0.0.1",
                    "-p",
                    "53",
                    "+short",
                    "+tries=1",
                    "+time=1",
                    "svc.example",
                    kind,
                ],
            );
            Some(stdout(&out).trim().to_string()).filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.gateway_log()));
        assert_eq!(answer, want);
    }
}

const QUIC: &str = r#"
[gateway]
udp_idle_timeout = "2s"
sniff_timeout = "2s"

[[listener]]
name = "h3"
transport = "udp"
bind = ["127.0.0.1:8443", "[::1]:8443"]
protocols = ["quic"]

[[route]]
hosts = ["a.example"]
to = "127.0.0.1:9441"

[[route]]
hosts = ["b.example"]
to = "127.0.0.1:9442"
"#;

fn h3_server(lab: &mut Lab, name: &str, port: u16) {
    let (cert, key) = lab.cert(&format!("{name}.example"));
    let python = test_python();
    let python = python.to_str().unwrap();
    let script = format!("{H3}/server.py");
    let port = port.to_string();
    lab.spawn(
        &format!("h3-{name}"),
        python,
        &[&script, name, "127.0.0.1", &port, &cert, &key],
        None,
    );
}

/// GET through the gateway; the body, or `None` when nothing answered.
fn h3_get(lab: &Lab, host: &str, sni: &str, path: &str, pad: usize) -> Option<String> {
    let python = test_python();
    let script = format!("{H3}/client.py");
    let pad = pad.to_string();
    let out = lab.client(
        python.to_str().unwrap(),
        &[&script, host, "8443", sni, path, &pad],
    );
    out.status
        .success()
        .then(|| stdout(&out).trim().to_string())
}

#[test]
fn http3_is_routed_by_the_sni_in_its_initial_packets() {
    let _turn = one_at_a_time();
    let mut lab = Lab::new("udp-quic");
    assert!(
        test_python().exists(),
        "{} is missing: run `cargo xtask setup`",
        test_python().display()
    );
    h3_server(&mut lab, "a", 9441);
    h3_server(&mut lab, "b", 9442);
    lab.gateway(QUIC);
    // The servers are up once they answer directly.
    wait_for("the HTTP/3 servers", Duration::from_secs(10), || {
        let python = test_python();
        let script = format!("{H3}/client.py");
        let a = lab.client(
            python.to_str().unwrap(),
            &[&script, "127.0.0.1", "9441", "a.example", "/"],
        );
        let b = lab.client(
            python.to_str().unwrap(),
            &[&script, "127.0.0.1", "9442", "b.example", "/"],
        );
        (a.status.success() && b.status.success()).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}"));

    for round in 0..4 {
        let path = format!("/round{round}");
        assert_eq!(
            h3_get(&lab, "127.0.0.1", "a.example", &path, 0),
            Some(format!("a {path}"))
        );
        assert_eq!(
            h3_get(&lab, "::1", "b.example", &path, 0),
            Some(format!("b {path}"))
        );
        // A ClientHello that needs two Initial packets: the gateway holds the first datagram
        // until the second completes it.
        assert_eq!(
            h3_get(&lab, "127.0.0.1", "b.example", &path, 1500),
            Some(format!("b {path}"))
        );
    }
    // An unknown name reaches no server: the client hears nothing.
    let started = Instant::now();
    assert_eq!(h3_get(&lab, "127.0.0.1", "c.example", "/", 0), None);
    assert!(started.elapsed() >= Duration::from_secs(4));
    let line = lab.wait_access_log(&["udp session", "host=c.example"]);
    assert!(line.contains("outcome=no_route"), "{line}");
    let line = lab.wait_access_log(&["udp session", "host=a.example"]);
    assert!(
        line.contains("protocol=quic") && line.contains("upstream=127.0.0.1:9441"),
        "{line}"
    );
}

const CAPPED: &str = r#"
[gateway]
udp_idle_timeout = "1s"
max_udp_sessions = 50

[metrics]
bind = "127.0.0.1:9100"

[[listener]]
name = "flooded"
transport = "udp"
bind = ["127.0.0.1:5353"]
to = "127.0.0.1:9053"
"#;

#[test]
fn a_flood_from_many_ports_is_held_to_the_cap_and_sessions_end_when_idle() {
    let _turn = one_at_a_time();
    let mut lab = Lab::new("udp-flood");
    transform_server(&lab, "127.0.0.1:9053");
    lab.gateway(CAPPED);
    let pid = lab
        .children
        .iter()
        .find(|c| c.name() == "astrogate")
        .unwrap()
        .pid();
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    // 2,000 sources, one datagram each, as fast as they go.
    let sockets: Vec<UdpSocket> = lab
        .ns
        .enter(|| {
            (0..2_000)
                .map(|_| {
                    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                    s.send_to(b"flood", "127.0.0.1:5353").unwrap();
                    s
                })
                .collect()
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let during = fds();
    assert!(
        during <= before + 50,
        "{during} descriptors with 50 sessions allowed (from {before})"
    );
    let metrics = scrape(&lab);
    assert_eq!(
        metric(&metrics, "astrogate_udp_sessions_active"),
        50.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "astrogate_udp_dropped_total{reason=\"session_cap\"}"
        ),
        1950.0
    );
    // The 50 that got in were answered.
    let answered = sockets
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            s.recv(&mut [0u8; 64]).is_ok()
        })
        .count();
    assert_eq!(answered, 50);
    // After the idle timeout the sessions are gone, their sockets closed, and a new client
    // gets in.
    wait_for("the sessions to time out", Duration::from_secs(5), || {
        (metric(&scrape(&lab), "astrogate_udp_sessions_active") == 0.0).then_some(())
    })
    .unwrap();
    assert!(fds() <= before + 1);
    let s = &sockets[1999];
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.send_to(b"again", "127.0.0.1:5353").unwrap();
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf).expect("a new session after the flood");
    assert_eq!(buf[..n], expected_reply(b"again")[..]);
    assert_eq!(
        lab.gateway_log().matches("UDP session cap reached").count(),
        1,
        "one warning per episode"
    );
}

fn scrape(lab: &Lab) -> String {
    let out = lab.client("curl", &["-sf", "http://127.0.0.1:9100/metrics"]);
    stdout(&out)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

const IPERF: &str = r#"
[[listener]]
name = "iperf-control"
bind = ["127.0.0.1:7201"]
to = "127.0.0.1:5201"

[[listener]]
name = "iperf-data"
transport = "udp"
bind = ["127.0.0.1:7201"]
to = "127.0.0.1:5201"
"#;

#[test]
fn iperf3_over_udp_through_the_gateway_drops_nothing_of_its_own() {
    let _turn = one_at_a_time();
    let mut lab = Lab::new("udp-iperf");
    lab.spawn(
        "iperf3",
        "iperf3",
        &["-s", "-p", "5201"],
        Some("127.0.0.1:5201".parse().unwrap()),
    );
    lab.gateway(IPERF);
    // iperf3's control connection (TCP) and its datagrams (UDP) share the port: two
    // listeners, one per transport. Both directions, 2 s each at 200 Mbit/s of 1200 B.
    for reverse in [false, true] {
        let mut args = vec![
            "-u",
            "-J",
            "-c",
            "127.0.0.1",
            "-p",
            "7201",
            "-l",
            "1200",
            "-b",
            "200M",
            "-t",
            "2",
        ];
        if reverse {
            args.push("-R");
        }
        let before = receive_buffer_errors(&lab);
        let out = lab.client("iperf3", &args);
        let text = stdout(&out);
        let at = text
            .find("\"sum_received\"")
            .unwrap_or_else(|| panic!("{text}"));
        let field = |key: &str| -> u64 {
            let rest = &text[at..];
            let from = rest.find(key).unwrap() + key.len();
            rest[from..]
                .trim_start_matches([':', ' '])
                .split([',', '\n'])
                .next()
                .unwrap()
                .trim()
                .parse::<f64>()
                .unwrap() as u64
        };
        let (packets, lost, bytes) = (
            field("\"packets\""),
            field("\"lost_packets\""),
            field("\"bytes\""),
        );
        eprintln!("reverse={reverse}: {packets} datagrams, {lost} lost, {bytes} bytes received");
        assert!(packets > 20_000, "{packets} datagrams in 2 s at 200 Mbit/s");
        // Under the other tests' load, iperf3's own sockets (default 208 KiB buffers) may
        // overflow; the gateway's must not. Every datagram lost must be one some socket in
        // the namespace dropped for a full buffer, and none of those sockets the gateway's.
        let dropped = receive_buffer_errors(&lab) - before;
        let gateway = gateway_socket_drops(&lab);
        assert_eq!(gateway, 0, "the gateway's sockets dropped datagrams");
        assert!(
            lost <= dropped,
            "reverse={reverse}: {lost} lost but only {dropped} dropped by full socket buffers"
        );
        assert_eq!(bytes, (packets - lost) * 1200);
    }
}

#[test]
fn datagrams_a_client_sends_with_gso_keep_their_boundaries() {
    let _turn = one_at_a_time();
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrStorage};
    use std::{io::IoSlice, os::fd::AsRawFd};
    let mut lab = Lab::new("udp-gso");
    transform_server(&lab, "127.0.0.1:9053");
    lab.gateway(PLAIN);
    let socket = lab
        .ns
        .enter(|| UdpSocket::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    socket.connect("127.0.0.1:5353").unwrap();
    big_buffers(&socket);
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = vec![0u8; 65_535];
    // A first datagram sets the session up; what follows reaches a forwarding session.
    socket.send(b"hello").unwrap();
    let n = socket.recv(&mut buf).unwrap();
    assert_eq!(buf[..n], expected_reply(b"hello")[..]);
    // Then buffers of 11 datagrams, 1000 bytes each and a shorter last one, each sent in one
    // call with UDP_SEGMENT: the gateway's socket (UDP_GRO) receives each buffer whole, and
    // sends it on with GSO. The server must still see eleven datagrams.
    for round in 0..32u8 {
        let data: Vec<u8> = (0..10_500u32).map(|i| (i as u8) ^ round).collect();
        let iov = [IoSlice::new(&data)];
        let segment: u16 = 1000;
        let cmsg = [ControlMessage::UdpGsoSegments(&segment)];
        sendmsg::<SockaddrStorage>(socket.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .unwrap();
        for (i, d) in data.chunks(1000).enumerate() {
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}: reply {i} of 11: {e}"));
            assert!(
                buf[..n] == expected_reply(d)[..],
                "round {round}: reply {i} differs ({n} bytes)"
            );
        }
    }
    let line = lab.wait_access_log(&["udp session", "listener=dns4"]);
    let sent = 1 + 32 * 11;
    assert!(line.contains(&format!("up_datagrams={sent} ")), "{line}");
    assert!(line.contains(&format!("down_datagrams={sent} ")), "{line}");
}

/// RcvbufErrors in the lab's namespace so far.
fn receive_buffer_errors(lab: &Lab) -> u64 {
    let snmp = stdout(&lab.client("cat", &["/proc/net/snmp"]));
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp: ")).collect();
    let at = udp[0]
        .split_whitespace()
        .position(|f| f == "RcvbufErrors")
        .unwrap();
    udp[1].split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// Datagrams dropped by the gateway's own UDP sockets (their `drops` in /proc/net/udp*).
fn gateway_socket_drops(lab: &Lab) -> u64 {
    let pid = lab
        .children
        .iter()
        .find(|c| c.name() == "astrogate")
        .unwrap()
        .pid();
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = stdout(&lab.client("cat", &["/proc/net/udp", "/proc/net/udp6"]));
    // sl local rem st tx:rx tr:tm retr uid timeout inode ref pointer drops
    let ours: Vec<u64> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 13 && inodes.iter().any(|i| i == f[9]))
        .map(|f| f[12].parse::<u64>().unwrap())
        .collect();
    // The listening socket and the session's upstream socket at least: else this checks
    // nothing.
    assert!(
        ours.len() >= 2,
        "found {} of the gateway's UDP sockets",
        ours.len()
    );
    ours.iter().sum()
}
