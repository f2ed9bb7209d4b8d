//! Byte streams for forwarding tests: deterministic data, hashing, in-namespace servers, and a
//! dial client.
#![allow(dead_code)]

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use astrogate_lab::Netns;
use sha2::{Digest, Sha256};

pub const CHUNK: usize = 64 * 1024;

/// A deterministic pseudo-random byte stream (xorshift64*), cheap enough for gigabytes.
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Writes `len` pattern bytes, then returns their SHA-256.
pub fn send_pattern(s: &mut TcpStream, seed: u64, len: u64) -> io::Result<[u8; 32]> {
    let mut pattern = Pattern::new(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        pattern.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        s.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(hash.finalize().into())
}

/// Reads to EOF and returns (bytes, SHA-256).
pub fn hash_to_eof(s: &mut TcpStream) -> io::Result<(u64, [u8; 32])> {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok((total, hash.finalize().into()));
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
}

/// A server in a namespace that runs `handle` on a thread per connection; stops when dropped.
/// A handler that panics (a failed assertion) fails the test when the server is dropped, with
/// the handler's message, instead of showing up only as a timeout somewhere else.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(
        ns: &Netns,
        addr: &str,
        handle: impl Fn(TcpStream) + Send + Sync + 'static,
    ) -> Server {
        let addr: SocketAddr = addr.parse().unwrap();
        let listener = ns.enter(move || TcpListener::bind(addr)).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let failures2 = failures.clone();
        let handle = Arc::new(handle);
        thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(false).unwrap();
                        let handle = handle.clone();
                        let failures = failures2.clone();
                        thread::spawn(move || {
                            let run = std::panic::AssertUnwindSafe(|| handle(s));
                            if let Err(panic) = std::panic::catch_unwind(run) {
                                let what = panic
                                    .downcast_ref::<String>()
                                    .cloned()
                                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                                    .unwrap_or_else(|| "a panic".into());
                                failures.lock().unwrap().push(what);
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server {
            addr,
            stop,
            failures,
        }
    }
}

impl Server {
    /// How many handlers have failed so far.
    pub fn failures_so_far(&self) -> usize {
        self.failures.lock().unwrap().len()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let failures = self.failures.lock().unwrap().clone();
        if !failures.is_empty() && !thread::panicking() {
            panic!(
                "a server handler on {} failed: {}",
                self.addr,
                failures.join("; ")
            );
        }
    }
}

/// Connects to the gateway's dial listener inside `ns` and asks for `host:port`.
pub fn dial(ns: &Netns, gateway: &'static str, host: &str, port: u16) -> TcpStream {
    let mut s = ns
        .enter(move || TcpStream::connect(gateway))
        .unwrap()
        .unwrap_or_else(|e| panic!("connecting to the gateway at {gateway}: {e}"));
    s.write_all(format!("ASTROGATE-DIAL/1 {host} {port}\r\n").as_bytes())
        .unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\n") {
        let n = s.read(&mut byte).expect("reading the dial reply");
        assert_eq!(n, 1, "the gateway closed before replying");
        line.push(byte[0]);
    }
    assert!(
        line.starts_with(b"ASTROGATE-DIAL/1 200"),
        "{}",
        String::from_utf8_lossy(&line)
    );
    s
}

/// Half-closes the write side. A peer that already reset makes this fail; the data checks of
/// each test say whether that mattered.
pub fn finish(s: &TcpStream) {
    let _ = s.shutdown(Shutdown::Write);
}

pub fn hex(h: &[u8; 32]) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}
