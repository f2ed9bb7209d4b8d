//! Two gateway replicas behind HAProxy from Debian (TCP mode, health checks, send-proxy-v2),
//! as README "Deploying at scale" describes. One replica is killed under load: new
//! connections keep succeeding, at most the requests in flight on the dead replica fail, and
//! the service behind (HAProxy accept-proxy) sees every client's own address and port through
//! both PROXY hops.
mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use astrogate_lab::{services, start_gateway, Workdir};
use common::{Lab, GATEWAY};

const FRONT: &str = "127.0.0.1:7000";
const SERVICE: &str = "127.0.0.1:9201";

fn replica(port: u16) -> String {
    format!(
        r#"
[gateway]
sniff_timeout = "3s"

[[listener]]
name = "front"
bind = ["127.0.0.1:{port}"]
protocols = ["http"]
proxy_protocol_from = ["127.0.0.1/32"]

[[route]]
hosts = ["svc.test"]
to = "{SERVICE}"
proxy_protocol = "v2"
"#
    )
}

/// HAProxy in front: TCP mode, a PROXY v2 header to each replica (health checks too), a
/// check every 200 ms, and a failed connect retried on the other replica.
fn balancer(lab: &mut Lab) {
    let cfg = lab
        .dir
        .write(
            "balancer.cfg",
            format!(
                "defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 10s\n  timeout server 10s\n\
                 \x20 retries 3\n  option redispatch\n\
                 listen front\n  bind {FRONT}\n  balance roundrobin\n\
                 \x20 server a 127.0.0.1:8081 send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 2\n\
                 \x20 server b 127.0.0.1:8082 send-proxy-v2 check check-send-proxy inter 200ms fall 2 rise 2\n"
            ),
        )
        .unwrap();
    lab.spawn(
        "balancer",
        "haproxy",
        &["-db", "-f", &cfg.to_string_lossy()],
        Some(FRONT.parse().unwrap()),
    );
}

/// One request through the balancer from `lab`'s namespace: Ok if the service answered with
/// this connection's own address and port.
fn request(front: SocketAddr) -> Result<(), String> {
    let mut s =
        TcpStream::connect_timeout(&front, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let port = s.local_addr().map_err(|e| e.to_string())?.port();
    s.write_all(b"GET / HTTP/1.1\r\nHost: svc.test\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
    let want = format!("src=127.0.0.1 port={port}");
    if answer.starts_with("HTTP/1.1 200") && answer.contains(&want) {
        Ok(())
    } else {
        Err(format!("unexpected answer: {answer:?}"))
    }
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    failed: AtomicU64,
    /// Failed requests that began before SIGKILL was sent, while the replica was dying (SIGKILL
    /// sent, process not yet gone), and after it was gone.
    failed_before: AtomicU64,
    failed_dying: AtomicU64,
    failed_after_kill: AtomicU64,
}

#[test]
fn a_replica_killed_under_load_costs_at_most_its_requests_in_flight() {
    let mut lab = Lab::new("scale-out");
    let reporter = services::source_reporter_behind_proxy(
        &lab.ns,
        &lab.dir,
        "service",
        SERVICE.parse().unwrap(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    lab.children.push(reporter);
    // Two replicas, each with its own directory, the same routes.
    let dirs = [
        Workdir::new("replica-a").unwrap(),
        Workdir::new("replica-b").unwrap(),
    ];
    for (dir, port) in dirs.iter().zip([8081, 8082]) {
        let child = start_gateway(&lab.ns, Path::new(GATEWAY), &replica(port), dir)
            .unwrap_or_else(|e| panic!("{e}"));
        lab.children.push(child);
    }
    balancer(&mut lab);
    let front: SocketAddr = FRONT.parse().unwrap();
    // Both replicas serve before the load starts.
    for _ in 0..4 {
        lab.ns.enter(move || request(front)).unwrap().unwrap();
    }

    const CLIENTS: usize = 4;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let killing = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (tally, stop, killed) = (tally.clone(), stop.clone(), killed.clone());
            let killing = killing.clone();
            let ns = lab.ns.handle().unwrap();
            std::thread::spawn(move || {
                astrogate_lab::enter(&ns, "scale-out").unwrap();
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let (dying, gone) = (
                        killing.load(Ordering::SeqCst),
                        killed.load(Ordering::SeqCst),
                    );
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = request(front) {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        let phase = match (dying, gone) {
                            (_, true) => &tally.failed_after_kill,
                            (true, false) => &tally.failed_dying,
                            _ => &tally.failed_before,
                        };
                        phase.fetch_add(1, Ordering::Relaxed);
                        errors.push(e);
                    }
                }
                errors
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let before_kill = tally.sent.load(Ordering::Relaxed);
    let replica_a = lab
        .children
        .iter_mut()
        .find(|c| c.name() == "astrogate")
        .unwrap();
    // Requests begun before the signal: at most one per client in flight, so at most CLIENTS
    // fail. Begun while the replica dies (SIGKILL sent, its sockets not yet gone): they may
    // reach its backlog, and fail with it. Begun after: every one must succeed.
    killing.store(true, Ordering::SeqCst);
    replica_a.signal(libc::SIGKILL);
    let signalled = Instant::now();
    replica_a
        .wait_exit(Duration::from_secs(5))
        .expect("the replica dies");
    killed.store(true, Ordering::SeqCst);
    let dying_for = signalled.elapsed();
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let errors: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let (sent, failed, failed_before, failed_dying, failed_after) = (
        load(&tally.sent),
        load(&tally.failed),
        load(&tally.failed_before),
        load(&tally.failed_dying),
        load(&tally.failed_after_kill),
    );
    eprintln!(
        "scale-out: {sent} requests ({before_kill} before the kill, {} in the {:.1} s after), \
         {failed} failed: {failed_before} in flight at the signal ({CLIENTS} at most), \
         {failed_dying} begun while the replica died ({:.1} ms), {failed_after} after",
        sent - before_kill,
        killed_at.elapsed().as_secs_f64(),
        dying_for.as_secs_f64() * 1e3,
    );
    assert!(sent - before_kill > 100, "the load kept going: {sent}");
    assert!(
        failed_before <= CLIENTS as u64,
        "more failures than requests in flight at the kill: {errors:?}"
    );
    assert_eq!(
        failed_after, 0,
        "a request begun after the kill failed: {errors:?}"
    );
    // The survivor still serves, alone.
    for _ in 0..4 {
        lab.ns.enter(move || request(front)).unwrap().unwrap();
    }
}
