//! A UDP session whose route targets a tunnel: its datagrams go through the tunnel's data
//! connection, each after its length (u16, big-endian), and the tunnel client sends them to
//! the service from the internet client's own address and port. The session's end (idle)
//! closes the data connection, which ends the flow on the tunnel client.
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
    time::{Duration, Instant},
};

use super::session::{Counts, Session};
use crate::access_log::{AccessRecord, Outcome};

/// What the reader half has passed to the client, and when last.
#[derive(Default)]
struct Down {
    datagrams: AtomicU64,
    bytes: AtomicU64,
    last_ms: AtomicU64,
}

pub(super) async fn forward(
    session: &Session,
    rx: &mut mpsc::Receiver<Vec<u8>>,
    stream: TcpStream,
    held: Vec<Vec<u8>>,
    idle: Duration,
    counts: &mut Counts,
    rec: &mut AccessRecord,
) -> Outcome {
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let down = Arc::new(Down::default());
    // The replies, on a task of their own: reading a frame is not something to abandon
    // half-way when a datagram arrives from the client.
    let replies = {
        let down = down.clone();
        let socket = session.socket.clone();
        let (client, local) = (session.client(), session.local());
        let counter = session.metrics.udp_datagrams("down");
        tokio::spawn(async move {
            let mut buf = vec![0u8; u16::MAX as usize];
            loop {
                let mut prefix = [0u8; 2];
                if reader.read_exact(&mut prefix).await.is_err() {
                    return;
                }
                let len = usize::from(u16::from_be_bytes(prefix));
                if reader.read_exact(&mut buf[..len]).await.is_err() {
                    return;
                }
                if socket.send(&buf[..len], client, local).await.is_ok() {
                    down.datagrams.fetch_add(1, Ordering::Relaxed);
                    down.bytes.fetch_add(len as u64, Ordering::Relaxed);
                    counter.inc();
                }
                down.last_ms
                    .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
            }
        })
    };
    let up = session.metrics.udp_datagrams("up");
    let mut last_up = Instant::now();
    let mut outcome = Outcome::Ok;
    let mut pending: Vec<Vec<u8>> = held;
    loop {
        for d in pending.drain(..) {
            let mut frame = Vec::with_capacity(2 + d.len());
            frame.extend_from_slice(&(d.len() as u16).to_be_bytes());
            frame.extend_from_slice(&d);
            if let Err(e) = writer.write_all(&frame).await {
                rec.detail = Some(format!("tunnel data connection: {e}"));
                outcome = Outcome::UpstreamReset;
                break;
            }
            counts.up.0 += 1;
            counts.up.1 += d.len() as u64;
            up.inc();
        }
        if outcome != Outcome::Ok || replies.is_finished() {
            if replies.is_finished() && outcome == Outcome::Ok {
                rec.detail = Some("the tunnel closed the flow".into());
                outcome = Outcome::UpstreamReset;
            }
            break;
        }
        let last_down = started + Duration::from_millis(down.last_ms.load(Ordering::Relaxed));
        let quiet_since = last_up.max(last_down);
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => {
                    last_up = Instant::now();
                    pending.push(d);
                }
                None => break,
            },
            _ = tokio::time::sleep_until(quiet_since + idle) => {
                let last_down =
                    started + Duration::from_millis(down.last_ms.load(Ordering::Relaxed));
                if Instant::now() >= last_up.max(last_down) + idle {
                    break;
                }
            }
            // Wakes the loop when the data connection closes, to end the session.
            _ = tokio::time::sleep(Duration::from_millis(250)), if !replies.is_finished() => {}
        }
    }
    let _ = writer.shutdown().await;
    replies.abort();
    counts.down = (
        down.datagrams.load(Ordering::Relaxed),
        down.bytes.load(Ordering::Relaxed),
    );
    outcome
}
