//! The benchmark's own servers and clients: an echo server, a ClientHello sink, an idle
//! holder, a 64-byte ping-pong client, a connection-rate client and an idle-connection opener.
//! Each runs on threads that entered the namespace first.
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use astrogate_lab::{enter, Netns};

/// A real ClientHello (curl 7.88, SNI blog.example.com), captured for the sniffer tests.
pub const CLIENT_HELLO: &[u8] = include_bytes!("../../../astrogate/tests/fixtures/tls/curl.bin");
pub const HELLO_HOST: &str = "blog.example.com";

/// How a client reaches its target.
#[derive(Clone, Debug)]
pub struct Dest {
    pub addr: SocketAddr,
    /// Astrogate dial header to send first (`host port`), if the target is a dial listener.
    pub dial: Option<(String, u16)>,
}

/// Runs `f` on a new thread inside `ns` and returns its handle.
pub fn spawn_in<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<thread::JoinHandle<T>> {
    let handle = ns.handle()?;
    let name = ns.name().to_string();
    Ok(thread::spawn(move || {
        enter(&handle, &name).expect("entering the benchmark namespace");
        f()
    }))
}

pub fn listen(ns: &Netns, addr: SocketAddr) -> Result<TcpListener> {
    let listener = ns
        .enter(move || TcpListener::bind(addr))?
        .with_context(|| format!("binding {addr}"))?;
    Ok(listener)
}

/// Servers for the latency, connection-rate and memory measurements. Stopped when dropped.
pub struct Servers {
    stop: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<TcpStream>>>,
}

impl Servers {
    pub fn start(ns: &Netns, ip: std::net::IpAddr) -> Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Vec::new()));
        let echo = listen(ns, SocketAddr::new(ip, 9000))?;
        serve(echo, stop.clone(), |mut s| {
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let sink = listen(ns, SocketAddr::new(ip, 9443))?;
        serve(sink, stop.clone(), |mut s| {
            // Read the whole ClientHello, then close: one complete sniffed connection.
            let mut buf = vec![0u8; CLIENT_HELLO.len()];
            let _ = s.read_exact(&mut buf);
        });
        let idle = listen(ns, SocketAddr::new(ip, 9500))?;
        let keep = held.clone();
        serve(idle, stop.clone(), move |s| keep.lock().unwrap().push(s));
        Ok(Servers { stop, held })
    }

    /// Closes the connections the idle holder keeps.
    pub fn release_idle(&self) {
        self.held.lock().unwrap().clear();
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.release_idle();
    }
}

pub fn serve(
    listener: TcpListener,
    stop: Arc<AtomicBool>,
    handle: impl Fn(TcpStream) + Send + Sync + 'static,
) {
    let _ = listener.set_nonblocking(true);
    let handle = Arc::new(handle);
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let handle = handle.clone();
                    thread::spawn(move || handle(s));
                }
                Err(_) => thread::sleep(Duration::from_millis(1)),
            }
        }
    });
}

fn connect(dest: &Dest) -> Result<TcpStream> {
    let mut s =
        TcpStream::connect(dest.addr).with_context(|| format!("connecting to {}", dest.addr))?;
    s.set_nodelay(true)?;
    if let Some((host, port)) = &dest.dial {
        s.write_all(format!("ASTROGATE-DIAL/1 {host} {port}\r\n").as_bytes())?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") {
            if s.read(&mut byte)? == 0 {
                bail!("the gateway closed before its dial reply");
            }
            line.push(byte[0]);
        }
        if !line.starts_with(b"ASTROGATE-DIAL/1 200") {
            bail!("dial refused: {}", String::from_utf8_lossy(&line).trim());
        }
    }
    Ok(s)
}

/// 64-byte round trips; returns (p50, p99) in microseconds.
pub fn ping_pong(ns: &Netns, dest: Dest, rounds: usize) -> Result<(f64, f64)> {
    spawn_in(ns, move || -> Result<(f64, f64)> {
        let mut s = connect(&dest)?;
        let msg = [0x42u8; 64];
        let mut back = [0u8; 64];
        // Warm up the path (and the kernel's socket caches) before timing.
        for _ in 0..200 {
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
        }
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            s.write_all(&msg)?;
            s.read_exact(&mut back)?;
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
        Ok((at(0.50), at(0.99)))
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("ping-pong thread panicked"))?
}

/// New connections per second, each sending a real ClientHello to be sniffed and routed, over
/// `seconds` with `workers` parallel clients.
pub fn connection_rate(ns: &Netns, dest: Dest, workers: usize, seconds: u64) -> Result<f64> {
    connection_rate_with(ns, dest, &[], workers, seconds)
}

/// The same, each connection sending `prefix` (a PROXY header, as a load balancer would) before
/// the ClientHello.
pub fn connection_rate_with(
    ns: &Netns,
    dest: Dest,
    prefix: &[u8],
    workers: usize,
    seconds: u64,
) -> Result<f64> {
    let first: Arc<[u8]> = [prefix, CLIENT_HELLO].concat().into();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut threads = Vec::new();
    for _ in 0..workers {
        let (dest, done, failed) = (dest.clone(), done.clone(), failed.clone());
        let first = first.clone();
        threads.push(spawn_in(ns, move || {
            while Instant::now() < deadline {
                let ok = (|| -> Result<()> {
                    let mut s = TcpStream::connect(dest.addr)?;
                    s.write_all(&first)?;
                    let mut rest = Vec::new();
                    s.read_to_end(&mut rest)?;
                    Ok(())
                })();
                match ok {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })?);
    }
    for t in threads {
        let _ = t.join();
    }
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("  ({failed} connection attempts failed)");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / seconds as f64)
}

/// Opens `count` connections that stay idle, and returns them.
pub fn open_idle(ns: &Netns, dest: Dest, count: usize) -> Result<Vec<TcpStream>> {
    let workers = 16;
    let mut threads = Vec::new();
    for w in 0..workers {
        let dest = dest.clone();
        let share = count / workers + usize::from(w < count % workers);
        threads.push(spawn_in(ns, move || -> Result<Vec<TcpStream>> {
            (0..share).map(|_| connect(&dest)).collect()
        })?);
    }
    let mut all = Vec::with_capacity(count);
    for t in threads {
        all.extend(t.join().map_err(|_| anyhow::anyhow!("opener panicked"))??);
    }
    Ok(all)
}
