//! Client-address access control: a listener's `deny` turns a source away before anything is
//! routed, a route's `allow` keeps a name to some sources, and each refused client hears it in
//! its own protocol (HTTP 403, TLS `access_denied`, XMPP `policy-violation`, dial 403) while the
//! access log says `outcome=denied`. Real curl, and real captured preambles, from distinct
//! loopback source addresses.
mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use common::{stderr, stdout, Lab};

const CONFIG: &str = r#"
[gateway]
sniff_timeout = "2s"

[[listener]]
name = "mixed"
bind = ["127.0.0.1:8080"]
protocols = ["tls", "xmpp", "dial", "http"]
deny = ["127.0.0.2/32"]

[[route]]
hosts = ["open.test", "chat.example"]
to = "127.0.0.1:9101"

[[route]]
hosts = ["inner.test", "blog.example.com"]
to = "127.0.0.1:9101"
allow = ["127.0.0.1/32", "::1/128"]
"#;

const GATEWAY: &str = "127.0.0.1:8080";

/// curl from `source` for `host`, printing the status code.
fn curl_status(lab: &Lab, source: &str, host: &str, path: &str) -> String {
    let out = lab.client(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            "--interface",
            source,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{GATEWAY}{path}"),
        ],
    );
    assert!(out.status.success(), "curl: {}", stderr(&out));
    stdout(&out)
}

/// Sends `preamble` from `source` and returns everything the gateway answers before closing.
fn exchange(lab: &Lab, source: &str, preamble: &'static [u8]) -> Vec<u8> {
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    lab.ns
        .enter(move || {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&source.into()).unwrap();
            let gateway: SocketAddr = GATEWAY.parse().unwrap();
            socket.connect(&gateway.into()).unwrap();
            let mut s: TcpStream = socket.into();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(preamble).unwrap();
            let mut answer = Vec::new();
            s.read_to_end(&mut answer)
                .expect("the gateway answers and closes");
            answer
        })
        .unwrap()
}

const CLIENT_HELLO: &[u8] = include_bytes!("fixtures/tls/curl.bin");
const XMPP_OPEN: &[u8] = b"<?xml version='1.0'?><stream:stream to='chat.example' \
    xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
const DIAL: &[u8] = b"ASTROGATE-DIAL/1 open.test 80\r\n";
/// A fatal `access_denied` (49) alert, in plaintext, as a server sends before any keys exist.
const ACCESS_DENIED: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 49];

#[test]
fn denied_sources_are_refused_in_their_own_protocol_and_logged() {
    let mut lab = Lab::new("acl");
    lab.http_server(
        "web",
        "127.0.0.1:9101".parse().unwrap(),
        &[("index.html", "served\n")],
    );
    lab.gateway(CONFIG);

    // Allowed everywhere, and on the restricted route.
    assert_eq!(curl_status(&lab, "127.0.0.1", "open.test", "/"), "200");
    assert_eq!(curl_status(&lab, "127.0.0.1", "inner.test", "/"), "200");
    // 127.0.0.3 may use the listener, but not the route that allows only 127.0.0.1.
    assert_eq!(curl_status(&lab, "127.0.0.3", "open.test", "/"), "200");
    assert_eq!(
        curl_status(&lab, "127.0.0.3", "inner.test", "/route-denied"),
        "403"
    );
    assert_eq!(exchange(&lab, "127.0.0.3", CLIENT_HELLO), ACCESS_DENIED);

    // 127.0.0.2 is denied by the listener, whatever it asks for and however it asks.
    assert_eq!(
        curl_status(&lab, "127.0.0.2", "open.test", "/listener-denied"),
        "403"
    );
    assert_eq!(exchange(&lab, "127.0.0.2", CLIENT_HELLO), ACCESS_DENIED);
    let xmpp = String::from_utf8(exchange(&lab, "127.0.0.2", XMPP_OPEN)).unwrap();
    assert!(
        xmpp.contains(
            "<stream:error><policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
        ),
        "{xmpp}"
    );
    let dial = String::from_utf8(exchange(&lab, "127.0.0.2", DIAL)).unwrap();
    assert!(dial.starts_with("ASTROGATE-DIAL/1 403"), "{dial}");

    // The log says why, with the client and the protocol; the upstream never saw a refused
    // request.
    lab.wait_access_log(&[
        "client=127.0.0.3:",
        "host=inner.test",
        "protocol=http",
        "outcome=denied",
    ]);
    for protocol in ["http", "tls", "xmpp", "dial"] {
        lab.wait_access_log(&[
            "client=127.0.0.2:",
            &format!("protocol={protocol}"),
            "outcome=denied",
        ]);
    }
    let served = std::fs::read_to_string(lab.dir.join("web.log")).unwrap_or_default();
    assert!(served.contains("GET / "), "the allowed requests: {served}");
    assert!(
        !served.contains("denied"),
        "a refused request reached the upstream: {served}"
    );
}

fn check(path: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_astrogate"))
        .arg("check")
        .arg("--config")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn check_shows_the_lists_and_a_malformed_block_is_refused_with_file_line_and_key() {
    let dir = astrogate_lab::Workdir::new("acl-config").unwrap();
    let good = dir.write("good.toml", CONFIG).unwrap();
    let out = check(&good);
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = stdout(&out);
    assert!(
        shown.contains("sources   allow all, deny 127.0.0.2/32"),
        "{shown}"
    );
    assert!(
        shown.contains("; sources allow 127.0.0.1/32 ::1/128"),
        "{shown}"
    );

    let bad = dir
        .write("bad.toml", CONFIG.replace("127.0.0.2/32", "127.0.0.2/8"))
        .unwrap();
    let out = check(&bad);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bad.toml:9:"), "file and line: {err}");
    assert!(err.contains("listener[0].deny"), "the key: {err}");
    assert!(
        err.contains("127.0.0.0/8"),
        "the error suggests the block: {err}"
    );
}
