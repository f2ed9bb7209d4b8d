//! Surviving a slowloris and descriptor exhaustion.
//!
//! - 5,000 connections that each trickle one byte a second hold their places only until the
//!   sniff timeout, and meanwhile an ordinary client is served as fast as without them.
//! - With the descriptor limit used up, the accept loop neither spins (under 10% of a core
//!   while clients keep arriving) nor gives up: it serves again as soon as descriptors free.
mod common;

use std::{
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use astrogate_lab::wait_for;
use common::{streams::Server, Lab};

/// The ordinary client's service: answers one request per connection and closes.
fn http_service(lab: &Lab) -> Server {
    Server::start(&lab.ns, "127.0.0.1:9500", |mut s| {
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    })
}

/// One request through the gateway on a new connection: how long until the whole answer came.
fn timed_request(port: u16) -> Duration {
    let started = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connecting to the gateway");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: fast.test\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("the answer");
    assert!(answer.ends_with(b"\r\n\r\nok"), "{answer:?}");
    started.elapsed()
}

/// Sorted latencies of `n` sequential requests.
fn latencies(lab: &Lab, n: usize) -> Vec<Duration> {
    let mut all = lab
        .ns
        .enter(move || (0..n).map(|_| timed_request(8080)).collect::<Vec<_>>())
        .unwrap();
    all.sort();
    all
}

fn pct(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

const SLOWLORIS: &str = r#"
[gateway]
sniff_timeout = "12s"

[[listener]]
name = "web"
bind = ["127.0.0.1:8080"]
protocols = ["http"]

[[route]]
hosts = ["fast.test"]
to = "127.0.0.1:9500"
"#;

const TRICKLERS: usize = 5000;
const REQUESTS: usize = 200;

#[test]
fn five_thousand_trickling_connections_do_not_slow_an_ordinary_client() {
    raise_nofile();
    let mut lab = Lab::new("slowloris");
    let _service = http_service(&lab);
    lab.gateway(SLOWLORIS);

    let _ = latencies(&lab, 20); // warm up
    let baseline = latencies(&lab, REQUESTS);

    // 5,000 connections, each sending one byte of a never-finished request head per second.
    let conns = lab
        .ns
        .enter(|| {
            (0..TRICKLERS)
                .map(|_| {
                    let s = TcpStream::connect("127.0.0.1:8080").expect("a trickling connection");
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect::<Vec<_>>()
        })
        .unwrap();
    let opened = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let bytes_sent = Arc::new(AtomicU64::new(0));
    let trickler = {
        let (stop, bytes_sent) = (stop.clone(), bytes_sent.clone());
        std::thread::spawn(move || trickle(conns, &stop, &bytes_sent))
    };
    // Let every connection be accepted and send a few bytes first.
    std::thread::sleep(Duration::from_secs(2));
    let loaded = latencies(&lab, REQUESTS);
    let during = opened.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (conns, failed_writes) = trickler.join().unwrap();
    assert_eq!(
        failed_writes, 0,
        "every trickling connection stayed open while the ordinary client was measured"
    );
    assert!(
        during < Duration::from_secs(11),
        "the measurement ran inside the sniff timeout ({during:?})"
    );
    assert!(bytes_sent.load(Ordering::Relaxed) >= 2 * TRICKLERS as u64);

    let (b50, b90, l50, l90) = (
        pct(&baseline, 50),
        pct(&baseline, 90),
        pct(&loaded, 50),
        pct(&loaded, 90),
    );
    eprintln!("ordinary client: p50 {b50:?} -> {l50:?}, p90 {b90:?} -> {l90:?}");
    // Served within its usual time: the median and the 90th percentile, each allowed twice the
    // unloaded figure plus 2 ms of scheduling noise (the trickler shares the two cores).
    let slack = Duration::from_millis(2);
    assert!(l50 <= b50 * 2 + slack, "p50 {b50:?} -> {l50:?}");
    assert!(l90 <= b90 * 2 + slack, "p90 {b90:?} -> {l90:?}");

    // The sniff timeout is the defence: every trickling connection is closed by it.
    let closed = lab.ns.enter(move || count_closed(conns)).unwrap();
    assert_eq!(closed, TRICKLERS, "all closed within 16 s of opening");
    let log = lab.gateway_log();
    let timed_out = log
        .lines()
        .filter(|l| l.contains("astrogate::access") && l.contains("outcome=sniff_timeout"))
        .count();
    assert_eq!(timed_out, TRICKLERS);
}

/// Writes one byte a second to every connection until `stop`; returns the connections and
/// how many writes failed.
fn trickle(conns: Vec<TcpStream>, stop: &AtomicBool, sent: &AtomicU64) -> (Vec<TcpStream>, u64) {
    let head = b"GET / HTTP/1.1\r\nHost: slow.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";
    let mut failed = 0;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let round = Instant::now();
        for mut s in &conns {
            match s.write(&head[i % head.len()..][..1]) {
                Ok(1) => {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                _ => failed += 1,
            }
        }
        i += 1;
        while round.elapsed() < Duration::from_secs(1) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    (conns, failed)
}

/// Waits for the gateway to close each connection; how many it closed.
fn count_closed(conns: Vec<TcpStream>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(16);
    let mut closed = 0;
    for mut s in conns {
        s.set_nonblocking(false).unwrap();
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 512];
        loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    closed += 1;
                    break;
                }
                // The gateway may answer a timed-out request head before closing.
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    closed += 1;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    closed
}

/// The test opens thousands of sockets, and the gateway inherits the limit.
fn raise_nofile() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(
        limit.rlim_cur >= 3 * TRICKLERS as u64,
        "the hard descriptor limit ({}) is too low for this test",
        limit.rlim_cur
    );
}

const HELD: &str = r#"
[gateway]
sniff_timeout = "20s"
data_path = "userspace"

[[listener]]
name = "dial"
bind = ["127.0.0.1:8080"]
protocols = ["dial"]

[[route]]
hosts = ["hold.test"]
to = "127.0.0.1:9101"
"#;

#[test]
fn out_of_descriptors_the_gateway_idles_and_serves_again_when_they_free() {
    let mut lab = Lab::new("emfile");
    // The held service: keeps each connection open until its client goes.
    let _hold = Server::start(&lab.ns, "127.0.0.1:9101", |mut s| {
        let mut buf = [0u8; 64];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    lab.gateway(HELD);
    let pid = lab
        .children
        .iter()
        .find(|c| c.name() == "astrogate")
        .unwrap()
        .pid();
    // Room for a handful of connections above what the gateway holds open now.
    let limit = open_descriptors(pid, usize::MAX) + 8;
    let out = std::process::Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Fill the descriptors with silent clients: each holds exactly one, waiting in the sniff
    // stage. (A client served upstream would hold two, and the last odd descriptor would let
    // accepts succeed while upstream connects fail.)
    let mut held = Vec::new();
    for _ in 0..(limit - open_descriptors(pid, limit)) {
        held.push(
            lab.ns
                .enter(|| TcpStream::connect("127.0.0.1:8080"))
                .unwrap()
                .unwrap(),
        );
    }
    wait_for(
        "the gateway to use every descriptor",
        Duration::from_secs(5),
        || (open_descriptors(pid, limit) == limit).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}: {} of {limit} open", open_descriptors(pid, limit)));

    // Clients keep arriving for 3 s: a new one every 60 ms or so, each giving up after 50 ms
    // without an answer. The gateway's CPU over those 3 s stays under 10% of one core.
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let (arrived, waiting) = lab
        .ns
        .enter(|| {
            let (mut arrived, mut waiting) = (0, 0);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                let mut s = TcpStream::connect("127.0.0.1:8080").unwrap();
                arrived += 1;
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let _ = s.write_all(b"ASTROGATE-DIAL/1 hold.test 9101\r\n");
                let mut byte = [0u8; 1];
                if matches!(s.read(&mut byte), Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut))
                {
                    waiting += 1;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            (arrived, waiting)
        })
        .unwrap();
    let cpu = cpu_seconds(pid) - cpu_before;
    let wall = started.elapsed().as_secs_f64();
    assert!(
        arrived >= 30 && waiting == arrived,
        "{waiting} of {arrived} arriving clients waited\n{}",
        lab.gateway_log()
    );
    assert!(
        cpu < 0.1 * wall,
        "the gateway used {cpu:.3} s of CPU in {wall:.1} s while out of descriptors"
    );
    eprintln!("{arrived} clients waited; the gateway used {cpu:.3} s of CPU in {wall:.1} s");
    let log = lab.gateway_log();
    assert_eq!(
        log.matches("accept failed; pausing").count(),
        1,
        "one warning per episode:\n{log}"
    );

    // Free the descriptors: a new client is served at once (after the backlog of given-up
    // clients drains), and the episode's end is logged.
    drop(held);
    let freed = Instant::now();
    let s = wait_for("a client to be served", Duration::from_secs(10), || {
        try_dial(&lab, Duration::from_secs(2)).ok()
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", lab.gateway_log()));
    eprintln!("served again {:?} after descriptors freed", freed.elapsed());
    assert!(freed.elapsed() < Duration::from_secs(3));
    drop(s);
    wait_for(
        "the episode's end in the log",
        Duration::from_secs(5),
        || lab.gateway_log().contains("accepting again").then_some(()),
    )
    .unwrap();
}

/// Asks the gateway for the held service; the stream once it answered 200.
fn try_dial(lab: &Lab, wait: Duration) -> Result<TcpStream, String> {
    lab.ns
        .enter(move || {
            let mut s = TcpStream::connect("127.0.0.1:8080").map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(wait)).unwrap();
            let _ = s.write_all(b"ASTROGATE-DIAL/1 hold.test 9101\r\n");
            let mut reply = Vec::new();
            let mut byte = [0u8; 1];
            while !reply.ends_with(b"\n") {
                match s.read(&mut byte) {
                    Ok(1) => reply.push(byte[0]),
                    Ok(_) => return Err("closed".to_string()),
                    Err(e) => return Err(e.to_string()),
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

/// How many of the process's descriptors are numbered below `below`. Only those count
/// against a descriptor limit of `below`: the gateway may inherit one numbered far higher.
fn open_descriptors(pid: u32, below: usize) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
        .filter(|&fd| fd < below)
        .count()
}

/// User plus system CPU time the process has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}
