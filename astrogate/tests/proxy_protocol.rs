//! The PROXY protocol both ways, against HAProxy from Debian as the real peer in both roles:
//! HAProxy `send-proxy`/`send-proxy-v2` in front of the gateway, and HAProxy `accept-proxy`
//! behind it reporting the source it saw. The client HAProxy's header names is the one the
//! access log, the ACLs, the limits and the header sent upstream use; a header from an
//! untrusted source is never believed; a trusted source without one is refused. On every data
//! path, the upstream gets the header and then exactly the client's bytes.
mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use astrogate::proxy_protocol::{self, Parsed, Version};
use astrogate_lab::services;
use common::{
    stderr, stdout,
    streams::{hash_to_eof, send_pattern, Pattern, Server, CHUNK},
    Lab,
};
use sha2::{Digest, Sha256};

const CONFIG: &str = r#"
[gateway]
sniff_timeout = "3s"

[[listener]]
name = "front"
bind = ["127.0.0.1:8080"]
protocols = ["http", "tls"]
proxy_protocol_from = ["127.0.0.1/32"]
deny = ["127.0.0.6/32"]
max_connections_per_source = 2

[[route]]
hosts = ["v2.test"]
to = "127.0.0.1:9201"
proxy_protocol = "v2"

[[route]]
hosts = ["v1.test"]
to = "127.0.0.1:9201"
proxy_protocol = "v1"
"#;

/// Raw listeners, one per data path, that take a PROXY header from 127.0.0.1 and send one on.
const RAW_LISTENERS: &str = r#"
[[listener]]
name = "raw-splice"
bind = ["127.0.0.1:8091"]
to = "127.0.0.1:9300"
data_path = "splice"
proxy_protocol_from = ["127.0.0.1/32"]
proxy_protocol = "v2"

[[listener]]
name = "raw-userspace"
bind = ["127.0.0.1:8092"]
to = "127.0.0.1:9300"
data_path = "userspace"
proxy_protocol_from = ["127.0.0.1/32"]
proxy_protocol = "v2"

[[listener]]
name = "raw-kernel"
bind = ["127.0.0.1:8093"]
to = "127.0.0.1:9300"
data_path = "kernel"
proxy_protocol_from = ["127.0.0.1/32"]
proxy_protocol = "v2"

[[listener]]
name = "raw-v1"
bind = ["127.0.0.1:8094"]
to = "127.0.0.1:9300"
data_path = "splice"
proxy_protocol_from = ["127.0.0.1/32"]
proxy_protocol = "v1"
"#;

/// curl from `source` to `url` with `Host: host`: (status, body, curl's own local port).
fn curl(lab: &Lab, source: &str, url: &str, host: &str) -> (String, String, u16) {
    let out = lab.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--interface",
            source,
            "-H",
            &format!("Host: {host}"),
            "-w",
            "\n%{http_code} %{local_port}",
            url,
        ],
    );
    assert!(out.status.success(), "curl: {}", stderr(&out));
    let text = stdout(&out);
    let (body, tail) = text.trim_end().rsplit_once('\n').unwrap_or(("", &text));
    let (status, port) = tail.split_once(' ').unwrap();
    (
        status.to_string(),
        body.trim_end().to_string(),
        port.parse().unwrap(),
    )
}

fn start(lab: &mut Lab) {
    let reporter = services::source_reporter_behind_proxy(
        &lab.ns,
        &lab.dir,
        "reporter",
        "127.0.0.1:9201".parse().unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    lab.children.push(reporter);
    for (name, listen, send) in [
        ("lb-v2", "127.0.0.1:7002", "send-proxy-v2"),
        ("lb-v1", "127.0.0.1:7001", "send-proxy"),
    ] {
        let lb = services::proxy_sender(
            &lab.ns,
            &lab.dir,
            name,
            listen.parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
            send,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        lab.children.push(lb);
    }
}

#[test]
fn haproxy_in_front_and_behind_sees_the_real_client_both_versions() {
    let mut lab = Lab::new("pp-haproxy");
    start(&mut lab);
    lab.gateway(CONFIG);

    // curl -> HAProxy (send-proxy-v2 or send-proxy) -> gateway -> HAProxy (accept-proxy): the
    // service behind sees curl's own address and port, through two PROXY hops each way.
    for (lb, host) in [
        ("127.0.0.1:7002", "v2.test"),
        ("127.0.0.1:7001", "v1.test"),
        ("127.0.0.1:7002", "v1.test"),
        ("127.0.0.1:7001", "v2.test"),
    ] {
        let (status, body, port) = curl(&lab, "127.0.0.5", &format!("http://{lb}/"), host);
        assert_eq!(status, "200", "{lb} {host}: {body}");
        assert_eq!(body, format!("src=127.0.0.5 port={port}"), "{lb} {host}");
        lab.wait_access_log(&[
            &format!("client=127.0.0.5:{port} "),
            "via=127.0.0.1:",
            &format!("host={host}"),
            "outcome=ok",
        ]);
    }

    // The listener's deny applies to the client the header names, not to the load balancer.
    let (status, _, port) = curl(&lab, "127.0.0.6", "http://127.0.0.1:7002/", "v2.test");
    assert_eq!(status, "403");
    lab.wait_access_log(&[
        &format!("client=127.0.0.6:{port} "),
        "via=127.0.0.1:",
        "outcome=denied",
    ]);

    // An untrusted source is an ordinary client: no header expected, and its own address sent.
    let (status, body, port) = curl(&lab, "127.0.0.7", "http://127.0.0.1:8080/", "v2.test");
    assert_eq!(status, "200");
    assert_eq!(body, format!("src=127.0.0.7 port={port}"));
    lab.wait_access_log(&[&format!("client=127.0.0.7:{port} "), "via=- ", "outcome=ok"]);

    // A header from an untrusted source is never believed: it is client bytes, and not HTTP.
    let forged = b"PROXY TCP4 192.0.2.99 127.0.0.1 4444 8080\r\n\
        GET / HTTP/1.1\r\nHost: v2.test\r\n\r\n";
    let answer = exchange(&lab, "127.0.0.7", forged);
    assert!(
        !answer.contains("src="),
        "a forged header was forwarded: {answer}"
    );
    // A trusted source that sends no header is refused, and not forwarded.
    let answer = exchange(
        &lab,
        "127.0.0.1",
        b"GET / HTTP/1.1\r\nHost: v2.test\r\n\r\n",
    );
    assert_eq!(answer, "", "a headerless trusted connection was served");
    lab.wait_access_log(&["client=127.0.0.1:", "outcome=bad_proxy_header"]);
    let log = lab.gateway_log();
    assert!(
        !log.contains("192.0.2.99"),
        "the forged address was believed"
    );
}

/// Sends `bytes` from `source` to the front listener and returns what comes back before the
/// gateway closes.
fn exchange(lab: &Lab, source: &str, bytes: &'static [u8]) -> String {
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    let answer = lab
        .ns
        .enter(move || {
            let s = connect_from(source, "127.0.0.1:8080");
            let mut s = s.expect("connecting to the gateway");
            s.write_all(bytes).unwrap();
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            answer
        })
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn connect_from(source: SocketAddr, to: &str) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&source.into())?;
    let to: SocketAddr = to.parse().unwrap();
    socket.connect(&to.into())?;
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// `max_connections_per_source` counts the client the header names: two held connections for
/// 192.0.2.50, from the one trusted address, fill its place; a third for it is closed at once,
/// while one for 192.0.2.51 is not.
#[test]
fn limits_count_the_client_the_header_names() {
    let mut lab = Lab::new("pp-limits");
    start(&mut lab);
    lab.gateway(CONFIG);
    let header = |client: &str| {
        proxy_protocol::encode(
            Version::V2,
            client.parse().unwrap(),
            "127.0.0.1:8080".parse().unwrap(),
        )
    };
    let open = |client: &'static str| {
        let bytes = header(client);
        lab.ns
            .enter(move || {
                let mut s = TcpStream::connect("127.0.0.1:8080").unwrap();
                s.write_all(&bytes).unwrap();
                s
            })
            .unwrap()
    };
    let held: Vec<TcpStream> = (0..2).map(|_| open("192.0.2.50:1000")).collect();
    // The held connections wait in the sniff stage (3 s) with their places taken.
    std::thread::sleep(Duration::from_millis(500));
    let mut third = open("192.0.2.50:1001");
    let started = Instant::now();
    let mut byte = [0u8; 1];
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    match third.read(&mut byte) {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("the third connection for one client was not closed: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    lab.wait_access_log(&["client=192.0.2.50:1001 ", "outcome=limited"]);

    let mut other = open("192.0.2.51:1000");
    other
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    match other.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("another client was limited too: {other:?}"),
    }
    drop(held);
}

/// Rounds per path: enough to catch a race that loses one run in eight.
const ROUNDS: u64 = 8;
const LEN: u64 = 4 << 20;

/// What the upstream saw on one connection: the header's addresses, then the bytes after it.
type Seen = Arc<Mutex<Vec<(Option<(SocketAddr, SocketAddr)>, u64, [u8; 32])>>>;

/// On every data path, a PROXY header read from the client (with the client's first bytes in
/// the same segment) and one sent upstream leave the stream exact: the upstream parses one
/// header naming the client, then gets every byte the client sent; the client gets every byte
/// the upstream sent. Counts and hashes are checked at both ends, 8 rounds per path.
#[test]
fn every_path_delivers_the_header_then_exactly_the_clients_bytes() {
    let mut lab = Lab::new("pp-paths");
    let seen: Seen = Arc::default();
    let seen2 = seen.clone();
    let _upstream = Server::start(&lab.ns, "127.0.0.1:9300", move |mut s| {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; CHUNK];
        let (len, addresses) = loop {
            if let Parsed::Header { len, addresses } = proxy_protocol::parse(&buf) {
                break (len, addresses);
            }
            assert!(
                !matches!(proxy_protocol::parse(&buf), Parsed::Malformed(_)),
                "upstream: {:?}",
                proxy_protocol::parse(&buf)
            );
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0, "closed before a PROXY header");
            buf.extend_from_slice(&chunk[..n]);
        };
        let mut writer = s.try_clone().unwrap();
        let down = std::thread::spawn(move || {
            let h = send_pattern(&mut writer, 77, LEN).unwrap();
            writer.shutdown(std::net::Shutdown::Write).unwrap();
            h
        });
        let mut hash = Sha256::new();
        hash.update(&buf[len..]);
        let (n, _) = {
            let mut total = (buf.len() - len) as u64;
            loop {
                let n = s.read(&mut chunk).unwrap();
                if n == 0 {
                    break (total, ());
                }
                hash.update(&chunk[..n]);
                total += n as u64;
            }
        };
        down.join().unwrap();
        seen2
            .lock()
            .unwrap()
            .push((addresses, n, hash.finalize().into()));
    });
    let mut config = String::from("[gateway]\nsniff_timeout = \"3s\"\n");
    config.push_str(RAW_LISTENERS);
    lab.gateway(&config);

    let client: SocketAddr = "198.51.100.7:4242".parse().unwrap();
    let dest: SocketAddr = "203.0.113.1:443".parse().unwrap();
    let expected_down = pattern_hash(77, LEN);
    let mut rounds = 0;
    for (port, path) in [
        (8091, "splice"),
        (8092, "userspace"),
        (8093, "kernel"),
        (8094, "splice"),
    ] {
        for round in 0..ROUNDS {
            let seed = port as u64 * 100 + round;
            let header = proxy_protocol::encode(Version::V2, client, dest);
            let (up_hash, down) = lab
                .ns
                .enter(move || {
                    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    let reader = s.try_clone().unwrap();
                    let down = std::thread::spawn(move || {
                        let mut reader = reader;
                        hash_to_eof(&mut reader).unwrap()
                    });
                    // The header and the client's first bytes in one segment.
                    let mut first = header.clone();
                    let mut head = vec![0u8; 100];
                    let mut pattern = Pattern::new(seed);
                    pattern.fill(&mut head);
                    first.extend_from_slice(&head);
                    s.write_all(&first).unwrap();
                    let rest = send_rest(&mut s, pattern, head, LEN);
                    s.shutdown(std::net::Shutdown::Write).unwrap();
                    (rest, down.join().unwrap())
                })
                .unwrap();
            assert_eq!(
                down,
                (LEN, expected_down),
                "{path} {port} round {round}: down"
            );
            rounds += 1;
            // The upstream records its side after its own read ends, which can trail the
            // client's by a moment.
            let deadline = Instant::now() + Duration::from_secs(10);
            while seen.lock().unwrap().len() < rounds && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), rounds, "{path} {port} round {round}");
            let (addresses, n, hash) = seen[rounds - 1];
            assert_eq!(addresses, Some((client, dest)), "{path} {port}");
            assert_eq!((n, hash), (LEN, up_hash), "{path} {port} round {round}: up");
        }
        lab.wait_access_log(&[
            &format!("client={client} "),
            &format!("path={path} "),
            "outcome=ok",
        ]);
    }
}

/// Sends the rest of a pattern whose first bytes (`head`) went already; returns the hash of
/// the whole.
fn send_rest(s: &mut TcpStream, mut pattern: Pattern, head: Vec<u8>, len: u64) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(&head);
    let mut left = len - head.len() as u64;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        s.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    hash.finalize().into()
}

fn pattern_hash(seed: u64, len: u64) -> [u8; 32] {
    let mut pattern = Pattern::new(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    hash.finalize().into()
}
