//! The embedded eBPF object loads, attaches, and its verdict program really splices: bytes
//! written by one client reach the other without user space reading the middle sockets.
mod common;

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    os::fd::AsRawFd,
};

use astrogate::ebpf::Kernel;
use astrogate_common::{Counter, PeerEntry, SockStats, PEER_FLAG_ENABLED};
use common::Lab;

fn cookie(s: &TcpStream) -> u64 {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 into the buffer we pass with its exact length.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}

/// client <-> (g1 .. g2) <-> server, with g1 and g2 the "gateway" sockets.
fn socket_pairs(lab: &Lab) -> [TcpStream; 4] {
    lab.ns
        .enter(|| {
            let front = TcpListener::bind("127.0.0.1:0").unwrap();
            let back = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(front.local_addr().unwrap()).unwrap();
            let (g1, _) = front.accept().unwrap();
            let g2 = TcpStream::connect(back.local_addr().unwrap()).unwrap();
            let (server, _) = back.accept().unwrap();
            // A read the kernel never satisfies fails the test instead of hanging it.
            for s in [&client, &g1, &g2, &server] {
                s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .unwrap();
            }
            [client, g1, g2, server]
        })
        .unwrap()
}

#[test]
fn the_embedded_programs_load_and_splice_both_directions() {
    let lab = Lab::new("ebpf");
    let (_kernel, mut maps, _events) = Kernel::load().unwrap_or_else(|e| panic!("{e}"));
    let [mut client, g1, g2, mut server] = socket_pairs(&lab);
    let (c1, c2) = (cookie(&g1), cookie(&g2));
    for (c, s) in [(c1, &g1), (c2, &g2)] {
        maps.stats.insert(c, SockStats::default(), 0).unwrap();
        maps.targets.insert(c, s.as_raw_fd(), 0).unwrap();
    }
    let entry = |peer| PeerEntry {
        peer,
        limit: u64::MAX,
        hard_limit: u64::MAX,
        consumed: 0,
        flags: PEER_FLAG_ENABLED,
        start_seq: 0,
    };
    maps.peers.insert(c1, entry(c2), 0).unwrap();
    maps.peers.insert(c2, entry(c1), 0).unwrap();
    maps.socks.insert(c2, g2.as_raw_fd(), 0).unwrap();
    maps.socks.insert(c1, g1.as_raw_fd(), 0).unwrap();

    client.write_all(b"hello through the kernel").unwrap();
    let mut got = [0u8; 24];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello through the kernel");
    server.write_all(b"and back").unwrap();
    let mut back = [0u8; 8];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"and back");

    assert_eq!(maps.counter(Counter::RedirectedBytes).unwrap(), 32);
    assert_eq!(maps.counter(Counter::Redirected).unwrap(), 2);
    assert_eq!(maps.stats.get(&c1, 0).unwrap().redirected, 24);
    assert_eq!(maps.stats.get(&c2, 0).unwrap().redirected, 8);
    maps.socks.remove(&c1).unwrap();
    maps.socks.remove(&c2).unwrap();
}

/// The verdict cuts bytes it has seen off a segment's head, by the segment's own sequence
/// number, and reports a hole through aya-log into tracing. The test moves the program's idea
/// of the next sequence number: 5 ahead (so the next segment's first 5 bytes look seen), then
/// behind (so the next segment starts past a hole).
#[test]
fn the_verdict_trims_by_sequence_number_and_logs_a_hole() {
    let lab = Lab::new("ebpfseq");
    let (mut kernel, mut maps, _events) = Kernel::load().unwrap_or_else(|e| panic!("{e}"));
    let mut logs = kernel.take_logs().expect("the programs' log ring");
    let [mut client, g1, g2, mut server] = socket_pairs(&lab);
    let (c1, c2) = (cookie(&g1), cookie(&g2));
    for (c, s) in [(c1, &g1), (c2, &g2)] {
        maps.stats.insert(c, SockStats::default(), 0).unwrap();
        maps.targets.insert(c, s.as_raw_fd(), 0).unwrap();
    }
    let entry = |peer| PeerEntry {
        peer,
        limit: u64::MAX,
        hard_limit: u64::MAX,
        consumed: 0,
        flags: PEER_FLAG_ENABLED,
        start_seq: 0,
    };
    maps.peers.insert(c1, entry(c2), 0).unwrap();
    maps.peers.insert(c2, entry(c1), 0).unwrap();
    maps.socks.insert(c2, g2.as_raw_fd(), 0).unwrap();
    maps.socks.insert(c1, g1.as_raw_fd(), 0).unwrap();

    let mut got = [0u8; 4];
    client.write_all(b"seq!").unwrap();
    server.read_exact(&mut got).unwrap();
    let stats = maps.stats.get(&c1, 0).unwrap();
    assert_eq!(stats.seq_known, 1);
    let next = stats.next_seq;

    maps.stats
        .insert(
            c1,
            SockStats {
                next_seq: next.wrapping_add(5),
                ..stats
            },
            0,
        )
        .unwrap();
    client.write_all(b"ABCDEFGHIJ").unwrap();
    let mut got = [0u8; 5];
    server.read_exact(&mut got).unwrap();
    assert_eq!(
        &got, b"FGHIJ",
        "the 5 bytes the program had 'seen' were cut"
    );
    let stats = maps.stats.get(&c1, 0).unwrap();
    assert_eq!((stats.trimmed, stats.next_seq), (5, next.wrapping_add(10)));
    assert_eq!(maps.counter(Counter::Overlaps).unwrap(), 1);

    maps.stats
        .insert(
            c1,
            SockStats {
                next_seq: next.wrapping_add(10).wrapping_sub(100),
                ..stats
            },
            0,
        )
        .unwrap();
    client.write_all(b"xyz").unwrap();
    let mut got = [0u8; 3];
    server.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"xyz", "a hole is reported, not papered over");
    assert_eq!(maps.counter(Counter::Gaps).unwrap(), 1);

    let captured = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || Capture(sink.clone()))
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || logs.flush());
    let text = String::from_utf8(captured.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("astrogate::ebpf")
            && text.contains("a segment starts 100 bytes past the next unseen byte"),
        "{text}"
    );
    maps.socks.remove(&c1).unwrap();
    maps.socks.remove(&c2).unwrap();
}

/// A tracing writer into a shared buffer.
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_pair_that_is_not_enabled_passes_bytes_to_user_space() {
    let lab = Lab::new("ebpfpass");
    let (_kernel, mut maps, _events) = Kernel::load().unwrap_or_else(|e| panic!("{e}"));
    let [mut client, mut g1, g2, _server] = socket_pairs(&lab);
    let (c1, c2) = (cookie(&g1), cookie(&g2));
    maps.stats.insert(c1, SockStats::default(), 0).unwrap();
    let disabled = PeerEntry {
        peer: c2,
        limit: u64::MAX,
        hard_limit: u64::MAX,
        consumed: 0,
        flags: 0,
        start_seq: 0,
    };
    maps.peers.insert(c1, disabled, 0).unwrap();
    maps.socks.insert(c1, g1.as_raw_fd(), 0).unwrap();
    client.write_all(b"sniff me").unwrap();
    let mut got = [0u8; 8];
    g1.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"sniff me");
    assert_eq!(maps.counter(Counter::Redirected).unwrap(), 0);
    assert_eq!(maps.stats.get(&c1, 0).unwrap().passed, 8);
    drop(g2);
}
