//! The gateway between the clear internet and a real Yggdrasil network, both ways, with real
//! clients and servers (see `astrogate_lab::ygglab` for the topology).
//!
//! One lab serves every test here: bringing it up (five namespaces, four yggdrasil nodes, two
//! prosody servers) costs seconds, and the tests only read from it. This harness brings it up
//! on first use and tears it down after the last test, even when tests fail; each test still
//! passes or fails on its own, and tests that run in parallel tell their connections apart by
//! name or content, never by order.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    process::Output,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use astrogate_lab::{
    topology::{GATEWAY_V4, GATEWAY_V6, INET_V4, INET_V6},
    wait_for,
    ygglab::*,
    TapRecord,
};
use libtest_mimic::{Arguments, Failed, Trial};

const GATEWAY: &str = env!("CARGO_BIN_EXE_astrogate");
const WAIT: Duration = Duration::from_secs(10);
const CLIENT_LIMIT: Duration = Duration::from_secs(30);

type Fixture = Arc<OnceLock<Result<YggLab, String>>>;
type Test = (&'static str, fn(&YggLab));

fn main() {
    let args = Arguments::from_args();
    let fixture: Fixture = Arc::new(OnceLock::new());
    let tests: &[Test] = &[
        ("inet_to_ygg::http_by_host_over_ipv4_and_ipv6", inet_http),
        ("inet_to_ygg::https_by_sni_over_ipv4_and_ipv6", inet_https),
        (
            "inet_to_ygg::xmpp_c2s_starttls_and_sasl_over_ipv4",
            inet_xmpp_c2s_v4,
        ),
        (
            "inet_to_ygg::xmpp_c2s_starttls_and_sasl_over_ipv6",
            inet_xmpp_c2s_v6,
        ),
        (
            "inet_to_ygg::xmpp_s2s_header_reaches_the_right_server",
            inet_xmpp_s2s,
        ),
        ("inet_to_ygg::dial_over_ipv4_and_ipv6", inet_dial),
        (
            "inet_to_ygg::tunnel_service_sees_each_clients_address_and_port",
            inet_tunnel,
        ),
        ("inet_to_ygg::acme_http01_proxied", inet_acme_proxy),
        ("inet_to_ygg::acme_http01_redirected", inet_acme_redirect),
        (
            "inet_to_ygg::internet_names_are_refused",
            inet_refuses_internet_names,
        ),
        ("ygg_to_inet::http_by_host", ygg_http),
        ("ygg_to_inet::tls_by_sni", ygg_tls),
        ("ygg_to_inet::dial", ygg_dial),
        ("ygg_to_inet::not_an_open_relay", ygg_not_an_open_relay),
        (
            "ygg_to_inet::client_has_no_other_way_out",
            ygg_client_is_ygg_only,
        ),
    ];
    let trials = tests
        .iter()
        .map(|&(name, test)| {
            let fixture = fixture.clone();
            Trial::test(name, move || {
                let lab = fixture.get_or_init(|| {
                    let lab = YggLab::start(GATEWAY.as_ref()).map_err(|e| e.to_string());
                    if let Ok(lab) = &lab {
                        eprintln!(
                            "ygg lab: topology up in {:?}, everything up in {:?} ({})",
                            lab.topology_up,
                            lab.all_up,
                            lab.dir.path().display()
                        );
                    }
                    lab
                });
                let lab = lab
                    .as_ref()
                    .map_err(|e| Failed::from(format!("the lab did not come up: {e}")))?;
                test(lab);
                Ok(())
            })
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Tear the lab down before exiting: `exit` skips destructors.
    if let Some(Some(Ok(lab))) = Arc::into_inner(fixture).map(OnceLock::into_inner) {
        if conclusion.has_failed() {
            eprintln!("gateway log:\n{}", lab.gateway_log());
        }
        drop(lab);
    }
    conclusion.exit();
}

// ---- helpers ----

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn curl(lab: &YggLab, ns: &astrogate_lab::Netns, args: &[&str]) -> Output {
    let mut all = vec!["-sS", "--max-time", "10"];
    all.extend_from_slice(args);
    lab.run(ns, CLIENT_LIMIT, "curl", &all)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Runs curl and expects success with `body`.
fn curl_ok(lab: &YggLab, ns: &astrogate_lab::Netns, args: &[&str], body: &str) {
    let o = curl(lab, ns, args);
    assert!(o.status.success(), "curl {args:?}: {}", err(&o));
    assert_eq!(out(&o), body, "curl {args:?}");
}

/// Runs curl and returns the HTTP status it got.
fn curl_status(lab: &YggLab, ns: &astrogate_lab::Netns, args: &[&str]) -> String {
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    let o = curl(lab, ns, &all);
    out(&o)
}

/// Waits for an access-log line that contains every needle.
fn access_line(lab: &YggLab, needles: &[&str]) -> String {
    wait_for(
        &format!("an access-log line with {needles:?}"),
        WAIT,
        || {
            lab.gateway_log()
                .lines()
                .find(|l| l.contains("astrogate::access") && needles.iter().all(|n| l.contains(n)))
                .map(str::to_string)
        },
    )
    .unwrap_or_else(|e| panic!("{e}; gateway log:\n{}", lab.gateway_log()))
}

/// Expects the record `front` (what a client sent and got) to appear, byte for byte, at the
/// tap called `back` (what a server got and sent).
fn same_bytes_at(lab: &YggLab, front: &TapRecord, back: &str) {
    lab.tap(back)
        .wait_record("the client's exact bytes", WAIT, |r| r == front)
        .unwrap_or_else(|e| {
            panic!(
                "{e}: the server must see exactly the client's bytes, both ways ({} up, {} down); \
                 records there: {:?}",
                front.up.len(),
                front.down.len(),
                lab.tap(back)
                    .records()
                    .iter()
                    .map(|r| (r.up.len(), r.down.len()))
                    .collect::<Vec<_>>()
            )
        });
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// 200 KB of varied bytes: more than one buffer, and not all text.
fn payload(seed: u32) -> Vec<u8> {
    (0..200_000u32)
        .map(|i| ((i ^ seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn v6(addr: impl std::fmt::Display) -> String {
    format!("[{addr}]")
}

// ---- internet to Yggdrasil ----

fn inet_http(lab: &YggLab) {
    let inet = lab.inet();
    // IPv4 through the front tap, so the bytes can be compared at alpha.
    let path = "/index.html?inet-http-v4";
    let url = format!("http://www.alpha.example{path}");
    let tap = format!("www.alpha.example:80:127.0.0.1:{}", FRONT_OFFSET + HTTP);
    curl_ok(lab, inet, &["--connect-to", &tap, &url], ALPHA_WWW);
    let front = lab
        .tap(&format!("front-{HTTP}"))
        .wait_record("curl's request", WAIT, |r| contains(&r.up, path.as_bytes()))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(front
        .up
        .starts_with(b"GET /index.html?inet-http-v4 HTTP/1.1\r\n"));
    same_bytes_at(lab, &front, "alpha-http");
    // IPv6 straight to the gateway; the name resolves through inet's hosts file.
    curl_ok(lab, inet, &["-6", "http://www.alpha.example/"], ALPHA_WWW);
    // Another name on the same listener reaches another Yggdrasil host.
    curl_ok(lab, inet, &["-4", "http://www.beta.example/"], BETA_WWW);
    curl_ok(lab, inet, &["-6", "http://www.beta.example/"], BETA_WWW);

    let alpha = lab.alpha().address();
    let line = access_line(
        lab,
        &["listener=inet-http", "host=www.alpha.example", "outcome=ok"],
    );
    assert!(line.contains(&format!("upstream=[{alpha}]:80")), "{line}");
    let gw6 = format!("client=[{INET_V6}]");
    access_line(lab, &[&gw6, "host=www.alpha.example", "outcome=ok"]);
    let beta = format!("upstream=[{}]:80", lab.beta().address());
    access_line(lab, &["host=www.beta.example", &beta, "outcome=ok"]);
}

fn inet_https(lab: &YggLab) {
    let inet = lab.inet();
    let cert = lab
        .cert("secure.alpha.example")
        .to_string_lossy()
        .into_owned();
    let url = "https://secure.alpha.example/index.html";
    let tap = format!(
        "secure.alpha.example:443:127.0.0.1:{}",
        FRONT_OFFSET + HTTPS
    );
    curl_ok(
        lab,
        inet,
        &["--cacert", &cert, "--connect-to", &tap, url],
        ALPHA_TLS,
    );
    // The front tap sees only this test's TLS connections: find the one naming the host.
    let front = lab
        .tap(&format!("front-{HTTPS}"))
        .wait_record("curl's TLS connection", WAIT, |r| {
            contains(&r.up, b"secure.alpha.example")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(front.up[0], 0x16, "a TLS handshake record");
    same_bytes_at(lab, &front, "alpha-tls");
    for family in [format!("{GATEWAY_V4}"), v6(GATEWAY_V6)] {
        let resolve = format!("secure.alpha.example:443:{family}");
        curl_ok(
            lab,
            inet,
            &["--cacert", &cert, "--resolve", &resolve, url],
            ALPHA_TLS,
        );
    }
    let alpha = format!("upstream=[{}]:443", lab.alpha().address());
    let line = access_line(lab, &["protocol=tls", "host=secure.alpha.example", &alpha]);
    assert!(line.contains("outcome=ok"), "{line}");
    access_line(
        lab,
        &[
            &format!("client=[{INET_V6}]"),
            "host=secure.alpha.example",
            "outcome=ok",
        ],
    );
}

fn prosody_authenticated(lab: &YggLab, jid: &str) {
    let log = || lab.server_log("prosody-alpha");
    wait_for(
        &format!("prosody on alpha to authenticate {jid}"),
        WAIT,
        || {
            log()
                .contains(&format!("Authenticated as {jid}"))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", log()));
}

fn inet_xmpp_c2s_v4(lab: &YggLab) {
    let message = lab
        .dir
        .write("message-v4.txt", "hello over yggdrasil\n")
        .unwrap();
    let via = format!("127.0.0.1:{}", FRONT_OFFSET + C2S);
    // sendxmpp (Perl, IO::Socket::INET) speaks IPv4 only: it goes through the front tap.
    let o = lab
        .run(
            lab.inet(),
            CLIENT_LIMIT,
            "sendxmpp",
            &[
                "-j",
                &via,
                "-o",
                "chat.alpha.example",
                "-u",
                "alice",
                "-p",
                "s3cret-a",
                "-t",
                "-n",
                "-m",
                message.to_str().unwrap(),
                "alice@chat.alpha.example",
            ],
        )
        .unwrap();
    assert!(o.status.success(), "sendxmpp: {}{}", out(&o), err(&o));
    prosody_authenticated(lab, "alice@chat.alpha.example");
    let front = lab
        .tap(&format!("front-{C2S}"))
        .wait_record("sendxmpp's stream", WAIT, |r| {
            r.up.starts_with(b"<?xml version='1.0'?><stream:stream")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        contains(
            &front.up,
            b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
        ) && contains(&front.down, b"<proceed"),
        "the client must negotiate STARTTLS through the gateway"
    );
    same_bytes_at(lab, &front, "alpha-c2s");
    access_line(
        lab,
        &[
            "protocol=xmpp",
            "host=chat.alpha.example",
            "client=192.0.2.2",
            "outcome=ok",
        ],
    );
}

fn inet_xmpp_c2s_v6(lab: &YggLab) {
    let message = lab
        .dir
        .write("message-v6.txt", "hello over yggdrasil, v6\n")
        .unwrap();
    let via = format!("[{GATEWAY_V6}]:{C2S}");
    // go-sendxmpp negotiates STARTTLS (the default without -t) and SASL.
    let o = lab
        .run(
            lab.inet(),
            CLIENT_LIMIT,
            "go-sendxmpp",
            &[
                "-j",
                &via,
                "-u",
                "bob@chat.alpha.example",
                "-p",
                "s3cret-b",
                "-n",
                "--timeout",
                "10",
                "-m",
                message.to_str().unwrap(),
                "bob@chat.alpha.example",
            ],
        )
        .unwrap();
    assert!(o.status.success(), "go-sendxmpp: {}{}", out(&o), err(&o));
    prosody_authenticated(lab, "bob@chat.alpha.example");
    access_line(
        lab,
        &[
            "protocol=xmpp",
            "host=chat.alpha.example",
            &format!("client=[{INET_V6}]"),
            "outcome=ok",
        ],
    );
}

/// Sends an s2s stream header for `to` from the internet host to `gateway` and returns what
/// came back until the stream features (or 5 s).
fn s2s_exchange(lab: &YggLab, gateway: SocketAddr, to: &str) -> String {
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' \
         xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' \
         from='remote.inet.example' to='{to}' version='1.0'>"
    );
    lab.inet()
        .enter(move || {
            let mut s = TcpStream::connect_timeout(&gateway, WAIT).expect("connecting for s2s");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(header.as_bytes()).unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && !contains(&got, b"</stream:features>") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&got).into_owned()
        })
        .unwrap()
}

fn inet_xmpp_s2s(lab: &YggLab) {
    let gw4 = SocketAddr::new(IpAddr::V4(GATEWAY_V4), S2S);
    let gw6 = SocketAddr::new(IpAddr::V6(GATEWAY_V6), S2S);
    for (gateway, domain, other) in [
        (gw4, "chat.alpha.example", "chat.beta.example"),
        (gw6, "chat.beta.example", "chat.alpha.example"),
        (gw4, "chat.beta.example", "chat.alpha.example"),
    ] {
        let reply = s2s_exchange(lab, gateway, domain);
        // The server that answers names itself in its stream header: the right prosody.
        assert!(
            reply.contains("xmlns='jabber:server'") || reply.contains("xmlns=\"jabber:server\""),
            "s2s to {domain} via {gateway}: {reply:?}"
        );
        assert!(
            reply.contains(&format!("from='{domain}'"))
                || reply.contains(&format!("from=\"{domain}\"")),
            "s2s to {domain} via {gateway} must be answered by {domain}'s server: {reply:?}"
        );
        assert!(!reply.contains(other), "{reply:?}");
        assert!(reply.contains("<stream:features"), "{reply:?}");
    }
    let beta = format!("upstream=[{}]:5269", lab.beta().address());
    access_line(lab, &["protocol=xmpp", "host=chat.beta.example", &beta]);
    let alpha = format!("upstream=[{}]:5269", lab.alpha().address());
    access_line(lab, &["protocol=xmpp", "host=chat.alpha.example", &alpha]);
}

fn inet_dial(lab: &YggLab) {
    for (i, via) in [
        format!("127.0.0.1:{}", FRONT_OFFSET + DIAL),
        format!("[{GATEWAY_V6}]:{DIAL}"),
    ]
    .iter()
    .enumerate()
    {
        let data = payload(i as u32 + 1);
        let input = lab.dir.write(&format!("dial-in-{i}.bin"), &data).unwrap();
        let o = lab
            .run_with_input(
                lab.inet(),
                CLIENT_LIMIT,
                GATEWAY,
                &[
                    "dial",
                    "echo.alpha.example",
                    &ECHO.to_string(),
                    "--via",
                    via,
                ],
                &input,
            )
            .unwrap();
        assert!(o.status.success(), "dial via {via}: {}", err(&o));
        assert!(
            o.stdout == data,
            "echo via {via} differs ({} bytes back)",
            o.stdout.len()
        );
        // The echo service on alpha got exactly the payload: the header was the only thing
        // the gateway took out.
        lab.tap("alpha-echo")
            .wait_record("the dial payload", WAIT, |r| r.up == data && r.down == data)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let front = lab
        .tap(&format!("front-{DIAL}"))
        .wait_record("the dial connection", WAIT, |r| {
            r.up.starts_with(b"ASTROGATE-DIAL/1")
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(front
        .up
        .starts_with(b"ASTROGATE-DIAL/1 echo.alpha.example 7\r\n"));
    assert!(
        front.down.starts_with(b"ASTROGATE-DIAL/1 200 "),
        "{:?}",
        &front.down[..40]
    );
    let alpha = format!("upstream=[{}]:7", lab.alpha().address());
    access_line(
        lab,
        &[
            "protocol=dial",
            "host=echo.alpha.example",
            &alpha,
            "outcome=ok",
        ],
    );
}

/// Beta's service behind its tunnel (over Yggdrasil) is HAProxy bound to the wildcard: it
/// reports the source it saw, which must be curl's own address and port, over IPv4 and IPv6.
fn inet_tunnel(lab: &YggLab) {
    let url = format!("http://{TUNNELED_HOST}/");
    for (family, local) in [("-4", INET_V4.to_string()), ("-6", INET_V6.to_string())] {
        let o = curl(
            lab,
            lab.inet(),
            &[family, "-w", "local=%{local_ip} %{local_port}\n", &url],
        );
        let text = out(&o);
        assert!(o.status.success(), "curl {family}: {text}{}", err(&o));
        let port = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("local={local} ")))
            .unwrap_or_else(|| panic!("curl's local address is {local}: {text}"));
        assert!(
            text.contains(&format!("src={local} port={port}\n")),
            "the service must see curl's own address and port: {text}"
        );
    }
    let target = format!("target=tunnel:beta:{TUNNELED_PORT}");
    access_line(
        lab,
        &[&format!("host={TUNNELED_HOST}"), &target, "outcome=ok"],
    );
}

fn inet_acme_proxy(lab: &YggLab) {
    let url = format!("http://www.alpha.example/.well-known/acme-challenge/{ACME_TOKEN}");
    for family in ["-4", "-6"] {
        curl_ok(lab, lab.inet(), &[family, &url], ACME_KEY_AUTHORIZATION);
    }
    // The web server on alpha does not have the token: only the ACME target could answer.
    let o = curl_status(
        lab,
        lab.inet(),
        &[&format!("http://www.alpha.example/{ACME_TOKEN}")],
    );
    assert_eq!(o, "404");
    let acme = format!("upstream=[{}]:{ALPHA_ACME}", lab.alpha().address());
    access_line(
        lab,
        &[
            "protocol=acme",
            "host=www.alpha.example",
            &acme,
            "outcome=ok",
        ],
    );
}

fn inet_acme_redirect(lab: &YggLab) {
    let url = format!("http://redirect.alpha.example/.well-known/acme-challenge/{ACME_TOKEN}");
    for family in ["-4", "-6"] {
        // Without following: the gateway itself answers with the redirect.
        let o = curl(lab, lab.inet(), &[family, "-i", &url]);
        let head = out(&o);
        assert!(head.starts_with("HTTP/1.1 302"), "{head}");
        let location = format!(
            "\nlocation: http://acme.alpha.example/.well-known/acme-challenge/{ACME_TOKEN}"
        );
        assert!(
            head.to_ascii_lowercase()
                .contains(&location.to_ascii_lowercase()),
            "{head}"
        );
        // Following it, as a CA does: acme.alpha.example is routed to alpha's responder.
        curl_ok(
            lab,
            lab.inet(),
            &[family, "-L", &url],
            ACME_KEY_AUTHORIZATION,
        );
    }
    access_line(
        lab,
        &["host=redirect.alpha.example", "outcome=acme_redirect"],
    );
    let acme = format!("upstream=[{}]:{ALPHA_ACME}", lab.alpha().address());
    access_line(lab, &["host=acme.alpha.example", &acme, "outcome=ok"]);
}

/// The public listeners serve Yggdrasil names only: internet names get nowhere.
fn inet_refuses_internet_names(lab: &YggLab) {
    let resolve = format!("www.inet.example:80:{GATEWAY_V4}");
    let code = curl_status(
        lab,
        lab.inet(),
        &["--resolve", &resolve, "http://www.inet.example/"],
    );
    assert_eq!(code, "421", "an internet name on the public listener");
    let via = format!("{GATEWAY_V4}:{DIAL}");
    let o = lab
        .run(
            lab.inet(),
            CLIENT_LIMIT,
            GATEWAY,
            &["dial", "echo.inet.example", "7", "--via", &via],
        )
        .unwrap();
    assert!(
        !o.status.success() && err(&o).contains("403"),
        "{}",
        err(&o)
    );
    access_line(
        lab,
        &[
            "listener=inet-http",
            "host=www.inet.example",
            "outcome=no_route",
        ],
    );
    access_line(
        lab,
        &[
            "listener=inet-dial",
            "host=echo.inet.example",
            "outcome=no_route",
        ],
    );
}

// ---- Yggdrasil to the internet ----

fn ygg_http(lab: &YggLab) {
    let client = &lab.client().ns;
    let path = "/index.html?ygg-http";
    let url = format!("http://www.inet.example{path}");
    let tap = format!("www.inet.example:80:[::1]:{}", FRONT_OFFSET + HTTP);
    curl_ok(
        lab,
        client,
        &["-H", "X-From-Ygg: 1", "--connect-to", &tap, &url],
        INET_WWW,
    );
    let front = lab
        .tap(&format!("yfront-{HTTP}"))
        .wait_record("curl's request", WAIT, |r| contains(&r.up, path.as_bytes()))
        .unwrap_or_else(|e| panic!("{e}"));
    same_bytes_at(lab, &front, "inet-http");
    // The client's hosts file points internet names at the gateway's Yggdrasil address.
    curl_ok(
        lab,
        client,
        &["-H", "X-From-Ygg: 1", "http://www.inet.example/"],
        INET_WWW,
    );
    let from = format!("client=[{}]", lab.client().address());
    let line = access_line(
        lab,
        &[
            "listener=ygg-http",
            &from,
            "host=www.inet.example",
            "outcome=ok",
        ],
    );
    assert!(line.contains(&format!("upstream={INET_V4}:80")), "{line}");
}

fn ygg_tls(lab: &YggLab) {
    let client = &lab.client().ns;
    let cert = lab
        .cert("secure.inet.example")
        .to_string_lossy()
        .into_owned();
    curl_ok(
        lab,
        client,
        &["--cacert", &cert, "https://secure.inet.example/index.html"],
        INET_TLS,
    );
    let line = access_line(
        lab,
        &["listener=ygg-tls", "host=secure.inet.example", "outcome=ok"],
    );
    assert!(line.contains(&format!("upstream={INET_V4}:443")), "{line}");
}

fn ygg_dial(lab: &YggLab) {
    let data = payload(99);
    let input = lab.dir.write("dial-ygg.bin", &data).unwrap();
    let via = format!("[{}]:{DIAL}", lab.gateway_ygg());
    let o = lab
        .run_with_input(
            &lab.client().ns,
            CLIENT_LIMIT,
            GATEWAY,
            &[
                "dial",
                "echo.inet.example",
                &ECHO.to_string(),
                "--via",
                &via,
            ],
            &input,
        )
        .unwrap();
    assert!(o.status.success(), "dial via {via}: {}", err(&o));
    assert!(
        o.stdout == data,
        "echo differs ({} bytes back)",
        o.stdout.len()
    );
    lab.tap("inet-echo")
        .wait_record("the dial payload", WAIT, |r| r.up == data && r.down == data)
        .unwrap_or_else(|e| panic!("{e}"));
    let line = access_line(
        lab,
        &["listener=ygg-dial", "host=echo.inet.example", "outcome=ok"],
    );
    assert!(line.contains(&format!("upstream={INET_V4}:7")), "{line}");
}

/// Only names the config allows: no other internet name, no address, no Yggdrasil name.
fn ygg_not_an_open_relay(lab: &YggLab) {
    let client = &lab.client().ns;
    let gw = lab.gateway_ygg();
    let url = format!("http://{}/", v6(gw));
    // A name the gateway can resolve but has no route for, a Yggdrasil name whose route only
    // the internet listeners may use, and IP literals (which name no host: no default, no way).
    let ip4 = INET_V4.to_string();
    let ip6 = v6(INET_V6);
    for (host, logged) in [
        ("other.inet.example", "other.inet.example"),
        ("www.alpha.example", "www.alpha.example"),
        (ip4.as_str(), "-"),
        (ip6.as_str(), "-"),
    ] {
        let code = curl_status(lab, client, &["-H", &format!("Host: {host}"), &url]);
        assert_eq!(code, "421", "Host: {host} from Yggdrasil");
        access_line(
            lab,
            &[
                "listener=ygg-http",
                &format!("host={logged} "),
                "outcome=no_route",
            ],
        );
    }

    let via = format!("[{gw}]:{DIAL}");
    let dial = |host: &str| {
        lab.run(
            client,
            CLIENT_LIMIT,
            GATEWAY,
            &["dial", host, "80", "--via", &via],
        )
        .unwrap()
    };
    let o = dial("other.inet.example");
    assert!(
        !o.status.success() && err(&o).contains("gateway refused: 403"),
        "dial other.inet.example: {}",
        err(&o)
    );
    access_line(
        lab,
        &[
            "listener=ygg-dial",
            "host=other.inet.example ",
            "outcome=no_route",
        ],
    );
    // The reference client refuses to send an IP literal, so send the header by hand.
    let gw_dial = SocketAddr::new(IpAddr::V6(gw), DIAL);
    let header = format!("ASTROGATE-DIAL/1 {INET_V4} 80\r\n");
    let reply = client
        .enter(move || {
            let mut s = TcpStream::connect_timeout(&gw_dial, WAIT).expect("connecting to dial");
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(header.as_bytes()).unwrap();
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            reply
        })
        .unwrap();
    assert!(
        reply.starts_with("ASTROGATE-DIAL/1 400 "),
        "dial to an IP: {reply:?}"
    );
    access_line(lab, &["listener=ygg-dial", "outcome=malformed"]);

    // TLS for a name without a route: the gateway answers with an unrecognized_name alert.
    let resolve = format!("other.inet.example:443:{}", v6(gw));
    let o = curl(
        lab,
        client,
        &["--resolve", &resolve, "https://other.inet.example/"],
    );
    assert!(
        !o.status.success() && err(&o).contains("unrecognized name"),
        "TLS to other.inet.example: {}",
        err(&o)
    );
    access_line(
        lab,
        &[
            "listener=ygg-tls",
            "host=other.inet.example",
            "outcome=no_route",
        ],
    );
}

/// The Yggdrasil client can reach the internet only through the gateway.
fn ygg_client_is_ygg_only(lab: &YggLab) {
    let client = &lab.client().ns;
    for url in [
        format!("http://{INET_V4}/"),
        format!("http://{}/", v6(INET_V6)),
    ] {
        let o = curl(lab, client, &["--connect-timeout", "2", &url]);
        // Only "could not connect" (7) or "timed out" (28) mean unreachable; any failure
        // (a missing curl, a bad option) used to pass.
        assert!(
            matches!(o.status.code(), Some(7) | Some(28)),
            "{url} must be unreachable from the Yggdrasil client: curl exited {:?}: {}",
            o.status.code(),
            err(&o)
        );
    }
}
