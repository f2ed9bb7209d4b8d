//! An established control session, on either side: heartbeats out, pongs back, a dead path
//! detected, and every other message handed to the caller.
use std::time::Duration;

use tokio::{sync::mpsc, time::Instant};

use super::{
    noise::{Receiver, Sender},
    wire::Control,
};

/// Heartbeats a peer may miss before its path counts as dead.
pub const MISSED_HEARTBEATS: u32 = 3;
const INCOMING_QUEUE: usize = 256;

/// Runs a session until the path dies, the peer misbehaves or `queue` closes, sending what
/// `queue` yields and handing `on_message` each message that is not a heartbeat. Returns why
/// it ended.
pub async fn run(
    mut tx: Sender,
    rx: Receiver,
    mut queue: mpsc::Receiver<Control>,
    heartbeat: Duration,
    mut on_message: impl FnMut(Control),
) -> String {
    let (heard_tx, mut heard) = mpsc::channel(INCOMING_QUEUE);
    let _reader = AbortOnDrop(tokio::spawn(read_messages(rx, heard_tx)));
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut ping = 0u64;
    loop {
        let out = tokio::select! {
            out = queue.recv() => match out {
                Some(msg) => msg,
                None => return "closed by this side".into(),
            },
            msg = heard.recv() => {
                last_heard = Instant::now();
                match msg {
                    Some(Ok(Control::Ping(n))) => Control::Pong(n),
                    Some(Ok(Control::Pong(_))) => continue,
                    Some(Ok(other)) => {
                        on_message(other);
                        continue;
                    }
                    Some(Err(why)) => return why,
                    None => return "the channel closed".into(),
                }
            },
            _ = ticker.tick() => {
                if last_heard.elapsed() > heartbeat * MISSED_HEARTBEATS {
                    return format!("no heartbeat for {:?}", last_heard.elapsed());
                }
                ping += 1;
                Control::Ping(ping)
            }
        };
        if let Err(e) = tx.send(&out.encode()).await {
            return format!("sending: {e}");
        }
    }
}

/// Reads messages into `out`: `Receiver::recv` is not cancel-safe, so it runs in a task of its
/// own rather than in a `select!`.
async fn read_messages(mut rx: Receiver, out: mpsc::Sender<Result<Control, String>>) {
    loop {
        let msg = match rx.recv().await {
            Ok(bytes) => Control::decode(&bytes).map_err(|e| e.to_string()),
            Err(e) => Err(format!("receiving: {e}")),
        };
        let end = msg.is_err();
        if out.send(msg).await.is_err() || end {
            return;
        }
    }
}

pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
