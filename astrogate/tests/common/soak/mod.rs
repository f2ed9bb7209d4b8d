//! The randomized differential soak: rounds of 1 to 64 concurrent connections with random
//! sizes and behaviours at both ends, the same scenarios on every data path, every byte
//! checked at both ends against the access log, and a watch for stalls.
pub mod peer;
pub mod plan;
pub mod watch;

use std::{
    collections::HashMap,
    fs::File,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use peer::{Expected, Progress, Report};
use plan::{Protocol, Scenario};
use watch::{Watch, Watched};

/// Upstream slots: slot `k` listens on `UPSTREAM_BASE + k` and is named `s<k>.soak.test`.
pub const SLOTS: usize = 64;
pub const UPSTREAM_BASE: u16 = 20_000;
/// The reply a dial client reads before the upstream's bytes.
pub const DIAL_REPLY: &[u8] = b"ASTROGATE-DIAL/1 200 connected\r\n";

pub fn host(slot: usize) -> String {
    format!("s{slot}.soak.test")
}

/// The bytes a client opens with, and how many of them the gateway passes on.
pub fn preamble(protocol: Protocol, slot: usize) -> (Vec<u8>, usize) {
    let host = host(slot);
    match protocol {
        Protocol::Dial => (format!("ASTROGATE-DIAL/1 {host} 1\r\n").into_bytes(), 0),
        Protocol::Http => {
            let req = format!("GET /soak HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes();
            let n = req.len();
            (req, n)
        }
        Protocol::Tls => {
            let hello = client_hello(&host);
            let n = hello.len();
            (hello, n)
        }
    }
}

/// A minimal TLS 1.2 ClientHello naming `host`, as one record.
fn client_hello(host: &str) -> Vec<u8> {
    let name = host.as_bytes();
    let mut sni = Vec::new();
    sni.extend_from_slice(&((name.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(name.len() as u16).to_be_bytes());
    sni.extend_from_slice(name);
    let mut ext = vec![0, 0];
    ext.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    ext.extend_from_slice(&sni);
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec
}

/// Where the soak runs: the gateway's listener per path, the upstream slots, and the
/// namespace the clients connect from.
pub struct Env {
    pub listeners: HashMap<&'static str, SocketAddr>,
    pub slots: Vec<TcpListener>,
    pub ns: File,
    pub ns_name: String,
}

/// One finished connection.
#[derive(Debug)]
pub struct Finished {
    pub scenario: Scenario,
    /// The upstream slot, which names the route: `host(slot)`.
    pub slot: usize,
    pub client_port: Option<u16>,
    pub client: Report,
    pub upstream: Option<Report>,
}

/// Runs `scenarios` at once, one per slot, and returns them when every side has finished.
pub fn run_round(env: &Env, scenarios: Vec<Scenario>, watch: &Arc<Watch>) -> Vec<Finished> {
    assert!(scenarios.len() <= SLOTS);
    let mut threads = Vec::new();
    for (slot, scenario) in scenarios.into_iter().enumerate() {
        let conn = Arc::new(Watched {
            scenario: scenario.clone(),
            client: Arc::new(Progress::default()),
            upstream: Arc::new(Progress::default()),
            sockets: Mutex::new(Vec::new()),
            client_port: Mutex::new(None),
        });
        watch.add(conn.clone());
        let listener = env.slots[slot].try_clone().expect("cloning a listener");
        let up_conn = conn.clone();
        let upstream = thread::spawn(move || serve_upstream(listener, slot, &up_conn));
        let addr = env.listeners[scenario.path];
        let ns = env.ns.try_clone().expect("cloning the namespace handle");
        let ns_name = env.ns_name.clone();
        let client = thread::spawn(move || {
            astrogate_lab::enter(&ns, &ns_name).expect("entering the namespace");
            run_client(addr, slot, &conn)
        });
        threads.push((client, upstream));
    }
    let finished = threads
        .into_iter()
        .enumerate()
        .map(|(slot, (client, upstream))| {
            let (scenario, client_port, client) = client.join().expect("client thread");
            let upstream = upstream.join().expect("upstream thread");
            Finished {
                scenario,
                slot,
                client_port,
                client,
                upstream,
            }
        })
        .collect();
    watch.clear();
    finished
}

fn run_client(addr: SocketAddr, slot: usize, conn: &Watched) -> (Scenario, Option<u16>, Report) {
    let sc = conn.scenario.clone();
    let stream = match TcpStream::connect(addr) {
        Ok(s) => s,
        Err(e) => {
            let report = Report {
                error: Some(format!("connecting to the gateway: {e}")),
                ..Report::default()
            };
            return (sc, None, report);
        }
    };
    let port = stream.local_addr().ok().map(|a| a.port());
    *conn.client_port.lock().unwrap() = port;
    if let Ok(clone) = stream.try_clone() {
        conn.sockets.lock().unwrap().push(clone);
    }
    let (preamble, counted) = preamble(sc.protocol, slot);
    let reply = if sc.protocol == Protocol::Dial {
        DIAL_REPLY.to_vec()
    } else {
        Vec::new()
    };
    let injected = reply.len();
    // An echoing upstream sends back what it got: the replayed preamble, then our payload.
    let expect = if sc.upstream.order == plan::Order::Echo {
        let mut prefix = reply;
        prefix.extend_from_slice(&preamble[preamble.len() - counted..]);
        Expected {
            injected,
            prefix,
            len: sc.client.writes,
            seed: sc.client.seed,
        }
    } else {
        Expected {
            injected,
            prefix: reply,
            len: sc.upstream.writes,
            seed: sc.upstream.seed,
        }
    };
    let report = peer::run(
        stream,
        &sc.client,
        preamble,
        counted,
        expect,
        conn.client.clone(),
    );
    (sc, port, report)
}

fn serve_upstream(listener: TcpListener, slot: usize, conn: &Watched) -> Option<Report> {
    let sc = &conn.scenario;
    let deadline = Instant::now() + Duration::from_secs(30);
    listener.set_nonblocking(true).ok()?;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if Instant::now() < deadline && !conn.client.finished_early() => {
                thread::sleep(Duration::from_millis(2));
            }
            Err(_) => return None,
        }
    };
    stream.set_nonblocking(false).ok()?;
    if let Ok(clone) = stream.try_clone() {
        conn.sockets.lock().unwrap().push(clone);
    }
    let (preamble, counted) = preamble(sc.protocol, slot);
    let replayed = preamble[preamble.len() - counted..].to_vec();
    let expect = Expected {
        injected: 0,
        prefix: replayed,
        len: sc.client.writes,
        seed: sc.client.seed,
    };
    Some(peer::run(
        stream,
        &sc.upstream,
        Vec::new(),
        0,
        expect,
        conn.upstream.clone(),
    ))
}

impl Progress {
    /// The client gave up before its bytes could reach an upstream (a reset or an error).
    fn finished_early(&self) -> bool {
        self.finished.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The fields of the access-log lines in `log`, by (client port, listener, host). Ports are
/// reused over a long soak, so a port alone does not name a connection.
pub fn access_lines(log: &str) -> HashMap<(u16, String, String), HashMap<String, String>> {
    let mut lines = HashMap::new();
    for line in log.lines().filter(|l| l.contains("astrogate::access")) {
        let fields: HashMap<String, String> = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let port = fields
            .get("client")
            .and_then(|c| c.rsplit(':').next())
            .and_then(|p| p.parse().ok());
        if let Some(port) = port {
            let listener = fields.get("listener").cloned().unwrap_or_default();
            let host = fields.get("host").cloned().unwrap_or_default();
            lines.insert((port, listener, host), fields);
        }
    }
    lines
}

impl Finished {
    /// The key of this connection's access-log line.
    pub fn access_key(&self) -> Option<(u16, String, String)> {
        self.client_port
            .map(|p| (p, self.scenario.path.to_string(), host(self.slot)))
    }
}

/// What went wrong with one connection, if anything.
pub fn check(f: &Finished, access: Option<&HashMap<String, String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for (who, r) in [
        ("client", Some(&f.client)),
        ("upstream", f.upstream.as_ref()),
    ] {
        let Some(r) = r else { continue };
        if let Some(at) = r.mismatch_at {
            problems.push(format!("{who} read a wrong byte at offset {at}"));
        }
        if let Some(e) = &r.error {
            problems.push(format!("{who}: {e}"));
        }
    }
    // A reset loses whatever was in flight; what did arrive was checked byte by byte above.
    if f.scenario.resets() {
        return problems;
    }
    let Some(up) = f.upstream.as_ref() else {
        problems.push("the upstream was never connected".into());
        return problems;
    };
    let client = &f.client;
    if up.received != client.sent || up.received_hash != client.sent_hash {
        problems.push(format!(
            "the upstream read {} bytes, the client sent {} (hashes {})",
            up.received,
            client.sent,
            if up.received_hash == client.sent_hash {
                "agree"
            } else {
                "differ"
            }
        ));
    }
    if client.received != up.sent || client.received_hash != up.sent_hash {
        problems.push(format!(
            "the client read {} bytes, the upstream sent {} (hashes {})",
            client.received,
            up.sent,
            if client.received_hash == up.sent_hash {
                "agree"
            } else {
                "differ"
            }
        ));
    }
    match access {
        None => problems.push("no access-log line".into()),
        Some(a) => {
            let get = |k: &str| a.get(k).map(String::as_str).unwrap_or("?");
            if get("up_bytes") != client.sent.to_string() {
                problems.push(format!(
                    "access log up_bytes={} want {}",
                    get("up_bytes"),
                    client.sent
                ));
            }
            if get("down_bytes") != up.sent.to_string() {
                problems.push(format!(
                    "access log down_bytes={} want {}",
                    get("down_bytes"),
                    up.sent
                ));
            }
            if get("outcome") != "ok" {
                problems.push(format!("access log outcome={}", get("outcome")));
            }
        }
    }
    problems
}
