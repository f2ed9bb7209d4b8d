//! A gateway's life: SIGHUP reloads the config without refusing a connection or disturbing
//! one in flight, a broken file is refused, SIGTERM drains, and raw TCP listeners forward
//! without sniffing on every path.
mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use common::{
    streams::{dial, finish, hash_to_eof, hex, send_pattern, Server},
    Lab,
};

const GIB: u64 = 1 << 30;

fn gateway(lab: &Lab) -> &astrogate_lab::Child {
    lab.children
        .iter()
        .find(|c| c.name() == "astrogate")
        .expect("the gateway runs")
}

fn config(listeners: &str, routes: &str) -> String {
    format!("[gateway]\nshutdown_grace = \"20s\"\n{listeners}\n{routes}")
}

const KERNEL_DIAL: &str = r#"
[[listener]]
name = "kernel-dial"
bind = ["127.0.0.1:7071"]
protocols = ["dial"]
data_path = "kernel"
"#;

const SPLICE_DIAL: &str = r#"
[[listener]]
name = "splice-dial"
bind = ["127.0.0.1:7072"]
protocols = ["dial"]
data_path = "splice"
"#;

const DOOMED: &str = r#"
[[listener]]
name = "doomed"
bind = ["127.0.0.1:7073"]
protocols = ["dial"]
"#;

const ADDED: &str = r#"
[[listener]]
name = "added"
bind = ["127.0.0.1:7074"]
protocols = ["dial"]
"#;

const ROUTES: &str = r#"
[[route]]
hosts = ["sink.test", "source.test"]
to = "127.0.0.1"
"#;

const ROUTES_PLUS: &str = r#"
[[route]]
hosts = ["sink.test", "source.test"]
to = "127.0.0.1"

[[route]]
hosts = ["new.test"]
to = "127.0.0.1:9003"
"#;

fn config_path(lab: &Lab) -> std::path::PathBuf {
    lab.dir.join("astrogate.toml")
}

/// Rewrites the gateway's config file and sends SIGHUP; waits for the log to say how it went.
fn reload(lab: &Lab, text: &str, expect: &str) -> String {
    let before = lab.gateway_log().matches(expect).count();
    std::fs::write(config_path(lab), text).unwrap();
    gateway(lab).signal(libc::SIGHUP);
    astrogate_lab::wait_for("the reload to be logged", Duration::from_secs(10), || {
        let log = lab.gateway_log();
        (log.matches(expect).count() > before).then(|| {
            log.lines()
                .rev()
                .find(|l| l.contains(expect))
                .unwrap_or_default()
                .to_string()
        })
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.gateway_log()))
}

fn connects(lab: &Lab, addr: &'static str) -> bool {
    lab.ns
        .enter(move || TcpStream::connect(addr).is_ok())
        .unwrap()
}

/// Two 1 GiB transfers in flight (one on the kernel path, one on splice) while a reload adds a
/// route and a listener and removes another; a third address is hammered with connects the
/// whole time. The transfers finish byte-exact, no connect to a kept listener is refused, the
/// removed listener stops and the added one serves.
#[test]
fn a_reload_under_load_changes_listeners_and_routes_without_disturbing_anyone() {
    let mut lab = Lab::new("reload");
    lab.gateway(&config(
        &format!("{KERNEL_DIAL}{SPLICE_DIAL}{DOOMED}"),
        ROUTES,
    ));
    let (tx, rx) = mpsc::channel();
    let sink_tx = tx.clone();
    let _sink = Server::start(&lab.ns, "127.0.0.1:9001", move |mut s| {
        sink_tx.send(("up", hash_to_eof(&mut s).unwrap())).unwrap();
    });
    let _source = Server::start(&lab.ns, "127.0.0.1:9002", move |mut s| {
        let h = send_pattern(&mut s, 0x5eed, GIB).unwrap();
        finish(&s);
        tx.send(("down-sent", (GIB, h))).unwrap();
    });
    let _new = Server::start(&lab.ns, "127.0.0.1:9003", |mut s| {
        s.write_all(b"new route").unwrap();
        finish(&s);
    });

    // Connection attempts to a listener every reload keeps, as fast as they go.
    let stop = Arc::new(AtomicBool::new(false));
    let (tried, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let hammer = {
        let (stop, tried, refused) = (stop.clone(), tried.clone(), refused.clone());
        let handle = lab.ns.handle().unwrap();
        let name = lab.ns.name().to_string();
        thread::spawn(move || {
            astrogate_lab::enter(&handle, &name).unwrap();
            while !stop.load(Ordering::Relaxed) {
                tried.fetch_add(1, Ordering::Relaxed);
                if TcpStream::connect("127.0.0.1:7072").is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                thread::sleep(Duration::from_millis(1));
            }
        })
    };

    let ns = lab.ns.handle().unwrap();
    let name = lab.ns.name().to_string();
    let up = thread::spawn(move || {
        astrogate_lab::enter(&ns, &name).unwrap();
        let mut s = dial_here("127.0.0.1:7071", "sink.test", 9001);
        let sent = send_pattern(&mut s, 0xA11CE, GIB).unwrap();
        finish(&s);
        (GIB, sent)
    });
    let mut down = dial(&lab.ns, "127.0.0.1:7072", "source.test", 9002);
    let down_reader = thread::spawn(move || hash_to_eof(&mut down).unwrap());

    // Both transfers are moving; now reload.
    thread::sleep(Duration::from_millis(300));
    let line = reload(
        &lab,
        &config(&format!("{KERNEL_DIAL}{SPLICE_DIAL}{ADDED}"), ROUTES_PLUS),
        "config reloaded",
    );
    for change in [
        "listener added added",
        "listener doomed removed",
        "routes: 1 before, 2 now",
    ] {
        assert!(line.contains(change), "{change:?} missing from {line}");
    }
    // The new listener and the new route serve; the removed listener is gone.
    let mut s = dial(&lab.ns, "127.0.0.1:7074", "new.test", 1);
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"new route");
    assert!(
        !connects(&lab, "127.0.0.1:7073"),
        "the removed listener still accepts"
    );

    // The transfers that were in flight finish exact.
    let (n, sent) = up.join().unwrap();
    let (what, (got_n, got)) = rx.recv_timeout(Duration::from_secs(120)).unwrap();
    let (what2, (sent_n, sent_down)) = rx.recv_timeout(Duration::from_secs(120)).unwrap();
    let (up_got, down_sent) = if what == "up" {
        ((got_n, got), (sent_n, sent_down))
    } else {
        assert_eq!(what2, "up");
        ((sent_n, sent_down), (got_n, got))
    };
    assert_eq!(
        (up_got.0, hex(&up_got.1)),
        (n, hex(&sent)),
        "upload across the reload"
    );
    let (down_n, down_got) = down_reader.join().unwrap();
    assert_eq!(
        (down_n, hex(&down_got)),
        (down_sent.0, hex(&down_sent.1)),
        "download across the reload"
    );
    lab.wait_access_log(&[
        "host=sink.test",
        "path=kernel",
        "outcome=ok",
        &format!("up_bytes={GIB}"),
    ]);
    lab.wait_access_log(&[
        "host=source.test",
        "path=splice",
        "outcome=ok",
        &format!("down_bytes={GIB}"),
    ]);

    stop.store(true, Ordering::Relaxed);
    hammer.join().unwrap();
    let (tried, refused) = (
        tried.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
    );
    assert!(tried > 50, "only {tried} connects tried");
    assert_eq!(
        refused, 0,
        "{refused} of {tried} connects to a kept listener were refused"
    );
}

/// A dial from a thread already inside the namespace.
fn dial_here(gateway: &str, host: &str, port: u16) -> TcpStream {
    let mut s = TcpStream::connect(gateway).unwrap();
    s.write_all(format!("ASTROGATE-DIAL/1 {host} {port}\r\n").as_bytes())
        .unwrap();
    let mut reply = [0u8; 32];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"ASTROGATE-DIAL/1 200 connected\r\n");
    s
}

/// A broken file is refused with its file, line and reason, and the old config keeps serving;
/// a later good file is taken.
#[test]
fn a_broken_config_is_refused_and_the_old_one_keeps_serving() {
    let mut lab = Lab::new("reload-bad");
    lab.gateway(&config(DOOMED, ROUTES));
    let _echo = Server::start(&lab.ns, "127.0.0.1:9001", |mut s| {
        let mut r = s.try_clone().unwrap();
        let _ = std::io::copy(&mut r, &mut s);
        finish(&s);
    });
    let broken = config(&DOOMED.replace("dial", "gopher"), ROUTES);
    let line = reload(&lab, &broken, "config reload refused");
    let file = config_path(&lab).display().to_string();
    assert!(line.contains(&format!("{file}:")), "no file in {line}");
    assert!(
        line.contains("unknown protocol `gopher`"),
        "no reason in {line}"
    );
    assert!(line.contains("listener[0].protocols"), "no key in {line}");
    // Still serving with the old config.
    let mut s = dial(&lab.ns, "127.0.0.1:7073", "sink.test", 9001);
    s.write_all(b"still here").unwrap();
    finish(&s);
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, b"still here");
    // An address another process holds fails the reload too, and changes nothing.
    let _squatter = lab
        .ns
        .enter(|| std::net::TcpListener::bind("127.0.0.1:7074"))
        .unwrap()
        .unwrap();
    let line = reload(
        &lab,
        &config(&format!("{DOOMED}{ADDED}"), ROUTES),
        "config reload refused",
    );
    assert!(line.contains("cannot bind 127.0.0.1:7074"), "{line}");
    assert!(connects(&lab, "127.0.0.1:7073"));
}

/// SIGTERM: no new connections, the one in flight finishes within the grace period, exit 0.
#[test]
fn sigterm_lets_connections_in_flight_finish_then_exits_cleanly() {
    let mut lab = Lab::new("drain");
    lab.gateway(&config(SPLICE_DIAL, ROUTES));
    let (tx, rx) = mpsc::channel();
    let _sink = Server::start(&lab.ns, "127.0.0.1:9001", move |mut s| {
        tx.send(hash_to_eof(&mut s).unwrap()).unwrap();
    });
    let mut s = dial(&lab.ns, "127.0.0.1:7072", "sink.test", 9001);
    s.write_all(&[1u8; 1000]).unwrap();
    gateway(&lab).signal(libc::SIGTERM);
    astrogate_lab::wait_for(
        "the gateway to stop accepting",
        Duration::from_secs(10),
        || (!connects(&lab, "127.0.0.1:7072")).then_some(()),
    )
    .unwrap();
    // The connection in flight still works after the signal.
    thread::sleep(Duration::from_millis(500));
    s.write_all(&[2u8; 1000]).unwrap();
    finish(&s);
    let (n, _) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(n, 2000);
    drop(s);
    let gw = lab
        .children
        .iter_mut()
        .find(|c| c.name() == "astrogate")
        .unwrap();
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("the gateway exits");
    assert!(status.success(), "exit status {status}");
    assert!(gw
        .output()
        .contains("stopped accepting; letting connections finish"));
}

/// Past the grace period the rest is closed, and the exit is still clean.
#[test]
fn sigterm_closes_what_is_left_after_the_grace_period() {
    let mut lab = Lab::new("drain-grace");
    lab.gateway(&format!(
        "[gateway]\nshutdown_grace = \"1s\"\n{SPLICE_DIAL}\n{ROUTES}"
    ));
    let _idle = Server::start(&lab.ns, "127.0.0.1:9001", |mut s| {
        let mut buf = [0u8; 1];
        let _ = s.read(&mut buf);
    });
    let _s = dial(&lab.ns, "127.0.0.1:7072", "sink.test", 9001);
    let started = Instant::now();
    gateway(&lab).signal(libc::SIGTERM);
    let gw = lab
        .children
        .iter_mut()
        .find(|c| c.name() == "astrogate")
        .unwrap();
    let status = gw
        .wait_exit(Duration::from_secs(10))
        .expect("the gateway exits");
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "left before the grace period"
    );
    assert!(gw.output().contains("grace period over; closing the rest"));
}

/// Raw TCP listeners forward every connection to their target without sniffing: bytes that
/// look like nothing, and a server that speaks first, both ways exact, on every path.
fn raw_listener(mode: &str) {
    let mut lab = Lab::new(&format!("raw-{mode}"));
    lab.gateway(&format!(
        r#"
[[listener]]
name = "ssh"
bind = ["127.0.0.1:2222"]
to = "127.0.0.1:9022"
data_path = "{mode}"
"#
    ));
    let (tx, rx) = mpsc::channel();
    let _server = Server::start(&lab.ns, "127.0.0.1:9022", move |mut s| {
        // Speaks first, like an SSH server, then reads the client's bytes.
        s.write_all(b"SSH-2.0-test\r\n").unwrap();
        let sent = send_pattern(&mut s, 7, 32 << 20).unwrap();
        finish(&s);
        tx.send((sent, hash_to_eof(&mut s).unwrap())).unwrap();
    });
    let mut s = lab
        .ns
        .enter(|| TcpStream::connect("127.0.0.1:2222"))
        .unwrap()
        .unwrap();
    let mut banner = [0u8; 14];
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-test\r\n");
    let mut reader = s.try_clone().unwrap();
    let down = thread::spawn(move || hash_to_eof(&mut reader).unwrap());
    let sent_up = send_pattern(&mut s, 8, 32 << 20).unwrap();
    finish(&s);
    let (down_n, down_hash) = down.join().unwrap();
    let (sent_down, (up_n, up_hash)) = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!((up_n, hex(&up_hash)), (32 << 20, hex(&sent_up)));
    assert_eq!((down_n, hex(&down_hash)), (32 << 20, hex(&sent_down)));
    lab.wait_access_log(&[
        "listener=ssh",
        "protocol=raw",
        &format!("path={mode}"),
        "outcome=ok",
    ]);
}

#[test]
fn raw_listener_on_the_kernel_path() {
    raw_listener("kernel");
}

#[test]
fn raw_listener_on_the_splice_path() {
    raw_listener("splice");
}

#[test]
fn raw_listener_on_the_copy_path() {
    raw_listener("userspace");
}
