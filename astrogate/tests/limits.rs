//! Connection limits: `max_connections_per_source` on a listener and the gateway's
//! `max_connections`. A connection over either is closed at once, unread, and logged as
//! `outcome=limited`; a connection that ends gives its place back.
mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use astrogate_lab::wait_for;
use common::{streams::Server, Lab};

const CONFIG: &str = r#"
[gateway]
sniff_timeout = "20s"
max_connections = 3

[[listener]]
name = "dial"
bind = ["127.0.0.1:8080"]
protocols = ["dial"]
max_connections_per_source = 2

[[route]]
hosts = ["hold.test"]
to = "127.0.0.1:9101"
"#;

/// Connects from `source` and asks for the held service. `Ok` with the stream once the
/// gateway has connected it (the dial reply proves the connection was admitted); `Err` with
/// what happened instead.
fn dial_from(lab: &Lab, source: &str) -> Result<TcpStream, String> {
    let source: SocketAddr = format!("{source}:0").parse().unwrap();
    lab.ns
        .enter(move || {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            socket.bind(&source.into()).unwrap();
            let gateway: SocketAddr = "127.0.0.1:8080".parse().unwrap();
            socket.connect(&gateway.into()).unwrap();
            let mut s: TcpStream = socket.into();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            // A write to a connection the gateway already closed may fail; the read says why.
            let _ = s.write_all(b"ASTROGATE-DIAL/1 hold.test 9101\r\n");
            let mut reply = Vec::new();
            let mut byte = [0u8; 1];
            while !reply.ends_with(b"\n") {
                match s.read(&mut byte) {
                    Ok(1) => reply.push(byte[0]),
                    Ok(_) => return Err("closed".to_string()),
                    Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                        return Err("reset".to_string())
                    }
                    Err(e) => return Err(format!("no answer: {e}")),
                }
            }
            if reply.starts_with(b"ASTROGATE-DIAL/1 200") {
                Ok(s)
            } else {
                Err(String::from_utf8_lossy(&reply).into_owned())
            }
        })
        .unwrap()
}

fn closed_at_once(result: Result<TcpStream, String>) {
    match result {
        Ok(_) => panic!("admitted over the limit"),
        Err(why) => assert!(why == "closed" || why == "reset", "{why}"),
    }
}

#[test]
fn connections_over_a_limit_are_closed_at_once_and_places_come_back() {
    let mut lab = Lab::new("limits");
    // Holds every connection open until the client goes.
    let _service = Server::start(&lab.ns, "127.0.0.1:9101", |mut s| {
        let mut buf = [0u8; 64];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    lab.gateway(CONFIG);

    let a1 = dial_from(&lab, "127.0.0.2").expect("first from .2");
    let _a2 = dial_from(&lab, "127.0.0.2").expect("second from .2");
    // A third from the same source is over max_connections_per_source = 2.
    closed_at_once(dial_from(&lab, "127.0.0.2"));
    // Another source may still connect: three open in all.
    let _b1 = dial_from(&lab, "127.0.0.3").expect("first from .3");
    // A fourth from anywhere is over max_connections = 3.
    closed_at_once(dial_from(&lab, "127.0.0.4"));

    // One ends: its place comes back once the gateway has seen it close.
    drop(a1);
    let _c1 = wait_for("a place to come back", Duration::from_secs(10), || {
        dial_from(&lab, "127.0.0.4").ok()
    })
    .unwrap();
    closed_at_once(dial_from(&lab, "127.0.0.5"));

    let log = lab.wait_access_log(&[
        "client=127.0.0.2:",
        "outcome=limited",
        "over max_connections_per_source",
    ]);
    assert!(log.contains("protocol=-"), "closed unread: {log}");
    lab.wait_access_log(&[
        "client=127.0.0.4:",
        "outcome=limited",
        "over gateway.max_connections",
    ]);
}
