//! A recording TCP relay. Put one in front of the gateway and one behind it, and the test can
//! compare what the client sent with what the upstream received, byte for byte.
use std::{
    io::{ErrorKind, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use super::{netns::enter_on_this_thread, wait_for, LabError, Netns};

/// Everything one relayed connection carried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TapRecord {
    /// Bytes from the connecting side to the target.
    pub up: Vec<u8>,
    /// Bytes from the target back.
    pub down: Vec<u8>,
}

/// A relay listening in a namespace; stops when dropped.
#[derive(Debug)]
pub struct Tap {
    addr: SocketAddr,
    records: Arc<Mutex<Vec<TapRecord>>>,
    stop: Arc<AtomicBool>,
}

impl Tap {
    /// Listens on `listen` inside `ns` and relays each connection to `target`.
    pub fn start(ns: &Netns, listen: SocketAddr, target: SocketAddr) -> Result<Tap, LabError> {
        let handle = ns.handle()?;
        let name = ns.name().to_string();
        let listener = ns
            .enter(move || TcpListener::bind(listen))?
            .map_err(|source| LabError::Io {
                what: format!("tap binding {listen}"),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| LabError::Io {
            what: "tap address".into(),
            source,
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| LabError::Io {
                what: "tap nonblocking".into(),
                source,
            })?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (records2, stop2) = (records.clone(), stop.clone());
        thread::spawn(move || {
            // Relay threads inherit the namespace, so the outgoing connects happen inside it.
            if enter_on_this_thread(&handle, &name).is_err() {
                return;
            }
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let records = records2.clone();
                        thread::spawn(move || relay(client, target, &records));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Ok(Tap {
            addr,
            records,
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until `n` connections have finished, and returns all records so far.
    pub fn wait_records(&self, n: usize, timeout: Duration) -> Result<Vec<TapRecord>, LabError> {
        let what = format!(
            "{n} finished connection(s) through the tap at {}",
            self.addr
        );
        wait_for(&what, timeout, || {
            let records = self.records.lock().ok()?;
            (records.len() >= n).then(|| records.clone())
        })
    }
}

impl Tap {
    /// The connections finished so far.
    pub fn records(&self) -> Vec<TapRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Waits for a finished connection that satisfies `matches` (`what` describes it), so
    /// tests sharing one tap can each find their own connection.
    pub fn wait_record(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl Fn(&TapRecord) -> bool,
    ) -> Result<TapRecord, LabError> {
        let what = format!("{what} through the tap at {}", self.addr);
        wait_for(&what, timeout, || {
            let records = self.records.lock().ok()?;
            records.iter().find(|r| matches(r)).cloned()
        })
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn relay(client: TcpStream, target: SocketAddr, records: &Mutex<Vec<TapRecord>>) {
    let _ = client.set_nonblocking(false);
    let Ok(upstream) = TcpStream::connect(target) else {
        return;
    };
    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = thread::spawn(move || copy(c2, u2));
    let down = copy(upstream, client);
    let up = up.join().unwrap_or_default();
    if let Ok(mut r) = records.lock() {
        r.push(TapRecord { up, down });
    }
}

/// Copies until EOF, passes the EOF on, and returns everything `from` delivered. A tap stands
/// for the wire, so it records what arrives even after its other side has gone: a write that
/// fails stops the copying, not the recording, and a reset on `from` is passed on as a FIN,
/// which leaves the opposite copy free to record the rest of its own direction.
fn copy(mut from: TcpStream, mut to: TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 16384];
    let mut writing = true;
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                seen.extend_from_slice(&buf[..n]);
                if writing && to.write_all(&buf[..n]).is_err() {
                    writing = false;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    seen
}
