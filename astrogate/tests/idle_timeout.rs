//! `gateway.idle_timeout` on every data path: a connection that trickles a byte more often than
//! the timeout stays open for several timeouts; once quiet, it is closed with a FIN to both
//! peers between one and 1.5 timeouts later, and logged as `outcome=idle_timeout`.
mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{streams::Server, Lab};

const TIMEOUT: Duration = Duration::from_secs(1);

const CONFIG: &str = r#"
[gateway]
idle_timeout = "1s"

[[listener]]
name = "splice"
bind = ["127.0.0.1:8101"]
to = "127.0.0.1:9400"
data_path = "splice"

[[listener]]
name = "userspace"
bind = ["127.0.0.1:8102"]
to = "127.0.0.1:9400"
data_path = "userspace"

[[listener]]
name = "kernel"
bind = ["127.0.0.1:8103"]
to = "127.0.0.1:9400"
data_path = "kernel"
"#;

#[test]
fn a_quiet_connection_is_closed_on_every_path_and_a_trickling_one_is_not() {
    let mut lab = Lab::new("idle");
    // An echo server that reports, per connection, every byte it echoed and when the gateway's
    // FIN reached it.
    let (ends_tx, ends) = mpsc::channel::<(u64, Instant)>();
    let ends_tx = std::sync::Mutex::new(ends_tx);
    let _upstream = Server::start(&lab.ns, "127.0.0.1:9400", move |mut s| {
        let mut buf = [0u8; 4096];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).expect("upstream read");
            if n == 0 {
                break;
            }
            s.write_all(&buf[..n]).expect("upstream write");
            total += n as u64;
        }
        ends_tx
            .lock()
            .unwrap()
            .send((total, Instant::now()))
            .unwrap();
    });
    lab.gateway(CONFIG);

    let results: Vec<_> = [(8101u16, "splice"), (8102, "userspace"), (8103, "kernel")]
        .into_iter()
        .map(|(port, path)| {
            let mut s = lab
                .ns
                .enter(move || TcpStream::connect(("127.0.0.1", port)))
                .unwrap()
                .unwrap();
            std::thread::spawn(move || (path, trickle_then_fall_quiet(&mut s)))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();

    for (path, (sent, quiet_from, closed_at)) in &results {
        let waited = closed_at.duration_since(*quiet_from);
        assert!(
            waited >= TIMEOUT && waited < TIMEOUT * 3 / 2 + Duration::from_millis(250),
            "{path}: closed {waited:?} after the last byte (timeout {TIMEOUT:?})"
        );
        lab.wait_access_log(&[
            &format!("path={path} "),
            &format!("up_bytes={sent} down_bytes={sent} "),
            "outcome=idle_timeout",
        ]);
    }
    // The upstream got a FIN on each connection, at about the time the client did, after
    // echoing every byte.
    let mut sent: Vec<u64> = results.iter().map(|(_, (n, _, _))| *n).collect();
    let mut echoed = Vec::new();
    for _ in 0..results.len() {
        let (total, at) = ends
            .recv_timeout(Duration::from_secs(5))
            .expect("upstream FIN");
        let earliest = results.iter().map(|(_, (_, q, _))| *q).min().unwrap();
        assert!(
            at.duration_since(earliest) >= TIMEOUT,
            "the upstream was closed early"
        );
        echoed.push(total);
    }
    sent.sort();
    echoed.sort();
    assert_eq!(sent, echoed);
}

/// Sends a byte every 300 ms for 3 s (three timeouts), checking each echo, then falls quiet.
/// Returns the bytes sent, when the last echo arrived, and when the gateway's FIN arrived.
fn trickle_then_fall_quiet(s: &mut TcpStream) -> (u64, Instant, Instant) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut byte = [0u8; 1];
    let mut last_byte = started;
    while started.elapsed() < TIMEOUT * 3 {
        s.write_all(&[b'a' + (sent % 26) as u8]).unwrap();
        s.read_exact(&mut byte).expect("the echo, while trickling");
        assert_eq!(byte[0], b'a' + (sent % 26) as u8);
        sent += 1;
        last_byte = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
    }
    let n = s.read(&mut byte).expect("a FIN, not a reset or a timeout");
    assert_eq!(n, 0, "no bytes after the last echo");
    (sent, last_byte, Instant::now())
}
