//! The stall watch: a connection whose bytes stop moving for `STALL` while both ends want to
//! move them fails the soak, after its state is dumped.
use std::{
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use super::{peer::Progress, plan::Scenario};

pub const STALL: Duration = Duration::from_secs(5);

/// One live connection, as the watch sees it.
pub struct Watched {
    pub scenario: Scenario,
    pub client: Arc<Progress>,
    pub upstream: Arc<Progress>,
    /// Clones of the two sockets, so a stalled connection can be reset to free its threads.
    pub sockets: Mutex<Vec<TcpStream>>,
    pub client_port: Mutex<Option<u16>>,
}

/// A stall: which connection, and the state dumped when it was found.
#[derive(Debug, Clone)]
pub struct Stall {
    pub scenario: Scenario,
    pub dump: String,
}

pub struct Watch {
    live: Mutex<Vec<Arc<Watched>>>,
    pub stalls: Mutex<Vec<Stall>>,
    stop: AtomicBool,
}

/// Per direction: the last counters seen and when they last changed.
struct DirState {
    last: (u64, u64, bool),
    since: Instant,
}

impl Watch {
    /// Starts watching; `dump` describes the gateway's side (sockets, maps, log).
    pub fn start(dump: impl Fn() -> String + Send + 'static) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            live: Mutex::new(Vec::new()),
            stalls: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let w = watch.clone();
        thread::spawn(move || w.run(dump));
        watch
    }

    pub fn add(&self, conn: Arc<Watched>) {
        self.live.lock().unwrap().push(conn);
    }

    pub fn clear(&self) {
        self.live.lock().unwrap().clear();
    }

    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    fn run(&self, dump: impl Fn() -> String) {
        let mut states: Vec<(usize, [DirState; 2])> = Vec::new();
        while !self.stop.load(Relaxed) {
            thread::sleep(Duration::from_millis(200));
            let live = self.live.lock().unwrap().clone();
            states.retain(|(addr, _)| live.iter().any(|c| Arc::as_ptr(c) as usize == *addr));
            for conn in &live {
                let key = Arc::as_ptr(conn) as usize;
                if !states.iter().any(|(k, _)| *k == key) {
                    let fresh = || DirState {
                        last: (0, 0, false),
                        since: Instant::now(),
                    };
                    states.push((key, [fresh(), fresh()]));
                }
                let dirs = &mut states.iter_mut().find(|(k, _)| *k == key).unwrap().1;
                let pairs = [
                    (&conn.client, &conn.upstream),
                    (&conn.upstream, &conn.client),
                ];
                for (d, (from, to)) in pairs.into_iter().enumerate() {
                    let now = (
                        from.sent.load(Relaxed),
                        to.received.load(Relaxed),
                        to.eof.load(Relaxed),
                    );
                    if now != dirs[d].last {
                        dirs[d] = DirState {
                            last: now,
                            since: Instant::now(),
                        };
                        continue;
                    }
                    if wants_to_move(from, to) && dirs[d].since.elapsed() >= STALL {
                        self.report(conn, d, &dump);
                        dirs[d].since = Instant::now();
                    }
                }
            }
        }
    }

    fn report(&self, conn: &Watched, direction: usize, dump: &impl Fn() -> String) {
        let which = if direction == 0 {
            "client to upstream"
        } else {
            "upstream to client"
        };
        let text = format!(
            "STALL {which}: no byte moved for {STALL:?} while both ends wanted to move bytes\n\
             scenario: {:?}\nclient port: {:?}\nclient: {:?}\nupstream: {:?}\n{}",
            conn.scenario,
            conn.client_port.lock().unwrap(),
            conn.client,
            conn.upstream,
            dump()
        );
        eprintln!("{text}");
        self.stalls.lock().unwrap().push(Stall {
            scenario: conn.scenario.clone(),
            dump: text,
        });
        // Free the connection's threads; the soak fails on the recorded stall.
        for s in conn.sockets.lock().unwrap().iter() {
            super::peer::reset(s);
        }
    }
}

/// Bytes should be moving from `from` to `to`: the receiver is reading and either bytes are
/// in flight, a FIN is in flight, or the sender is blocked writing. Or the receiver is gone
/// (it reset, or closed) while the sender is blocked writing: the gateway owes the sender an
/// error, not a write that never returns.
fn wants_to_move(from: &Progress, to: &Progress) -> bool {
    if to.finished.load(Relaxed) {
        return from.writing.load(Relaxed);
    }
    if !to.reading.load(Relaxed) {
        return false;
    }
    let in_flight = from.sent.load(Relaxed) > to.received.load(Relaxed);
    let fin_in_flight = from.fin_sent.load(Relaxed) && !to.eof.load(Relaxed);
    in_flight || fin_in_flight || from.writing.load(Relaxed)
}
