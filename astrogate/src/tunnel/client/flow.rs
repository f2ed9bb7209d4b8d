//! One proxied connection on the tunnel client: the bytes between the userspace TCP stack
//! (where the connection to the service lives) and the data connection to the gateway.
//!
//! Each direction is a bounded pipe. The stack task and the data connection's tasks each own
//! one end, and wake the other with a `Notify` (which keeps a permit, so no wake-up is lost).
//! A full pipe stops its writer: the stack stops reading the service's socket (its window
//! closes) or the data connection stops being read (TCP's window closes), so memory per
//! connection is bounded by the pipes and the stack's socket buffers.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
};

use socket2::SockRef;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
    sync::Notify,
};

/// Bytes a pipe holds before its writer waits. With the stack's socket buffers, what one
/// connection can hold in flight each way; measured in `cargo xtask bench` (tunnel over veth,
/// upload): 128 KiB pipes and 64 KiB reads gave 0.49x the gateway's direct path, 512 KiB and
/// 256 KiB 0.63x, and with 512 KiB socket buffers 0.73x.
pub const PIPE_CAP: usize = 512 * 1024;
const CHUNK: usize = 256 * 1024;

/// One direction's bytes in flight, and how that direction ended.
#[derive(Default)]
pub struct Pipe {
    pub buf: VecDeque<u8>,
    /// The writer sent FIN: once `buf` is empty, pass the FIN on.
    pub eof: bool,
    /// The writer's side was reset or failed: reset the reader's side.
    pub reset: bool,
}

impl Pipe {
    pub fn space(&self) -> usize {
        PIPE_CAP.saturating_sub(self.buf.len())
    }
}

/// What the stack and the data connection share for one flow.
pub struct FlowShared {
    /// Gateway to service: filled from the data connection, drained into the stack's socket.
    pub to_service: Mutex<Pipe>,
    /// Service to gateway: filled from the stack's socket, drained into the data connection.
    pub to_gateway: Mutex<Pipe>,
    /// Wakes the stack task (shared by every flow).
    pub wake_stack: Arc<Notify>,
    /// Wakes the data connection's reader: `to_service` has room again.
    pub service_space: Notify,
    /// Wakes the data connection's writer: `to_gateway` has bytes or an end.
    pub gateway_data: Notify,
}

impl FlowShared {
    pub fn new(wake_stack: Arc<Notify>) -> Arc<FlowShared> {
        Arc::new(FlowShared {
            to_service: Mutex::default(),
            to_gateway: Mutex::default(),
            wake_stack,
            service_space: Notify::new(),
            gateway_data: Notify::new(),
        })
    }

    pub fn to_service(&self) -> MutexGuard<'_, Pipe> {
        self.to_service.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn to_gateway(&self) -> MutexGuard<'_, Pipe> {
        self.to_gateway.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Moves a flow's bytes over its data connection until both directions have ended, or either
/// side was reset (then the data connection is reset too, so the gateway resets its client).
pub async fn run(stream: TcpStream, flow: Arc<FlowShared>) {
    let (r, w) = stream.into_split();
    let inbound = pump_in(r, &flow);
    let outbound = pump_out(w, &flow);
    tokio::pin!(inbound, outbound);
    let (mut in_done, mut out_done) = (false, false);
    while !(in_done && out_done) {
        tokio::select! {
            _ = &mut inbound, if !in_done => in_done = true,
            ok = &mut outbound, if !out_done => {
                out_done = true;
                if !ok {
                    // The halves are dropped on return; the linger set in pump_out resets.
                    flow.to_service().reset = true;
                    flow.wake_stack.notify_one();
                    return;
                }
            }
        }
        if in_done && flow.to_service().reset {
            return;
        }
    }
}

/// Gateway → service: reads the data connection into `to_service` while it has room.
async fn pump_in(mut r: OwnedReadHalf, flow: &FlowShared) {
    let mut tmp = vec![0u8; CHUNK];
    loop {
        let space = loop {
            let space = flow.to_service().space();
            if space > 0 {
                break space;
            }
            flow.service_space.notified().await;
        };
        let n = r.read(&mut tmp[..space.min(CHUNK)]).await;
        let mut pipe = flow.to_service();
        match n {
            Ok(0) => pipe.eof = true,
            Ok(n) => pipe.buf.extend(&tmp[..n]),
            Err(_) => pipe.reset = true,
        }
        let end = pipe.eof || pipe.reset;
        drop(pipe);
        flow.wake_stack.notify_one();
        if end {
            return;
        }
    }
}

/// Service → gateway: writes `to_gateway` to the data connection; passes a FIN on as a
/// shutdown, a reset as a reset. Returns false when the flow was reset.
async fn pump_out(mut w: OwnedWriteHalf, flow: &FlowShared) -> bool {
    let mut chunk = Vec::with_capacity(CHUNK);
    loop {
        chunk.clear();
        let (eof, reset) = {
            let mut pipe = flow.to_gateway();
            // Slices, not the drain iterator: that copies byte by byte (it was 40% of the
            // client's CPU in a download).
            let (a, b) = pipe.buf.as_slices();
            let from_a = a.len().min(CHUNK);
            let from_b = b.len().min(CHUNK - from_a);
            chunk.extend_from_slice(&a[..from_a]);
            chunk.extend_from_slice(&b[..from_b]);
            pipe.buf.drain(..from_a + from_b);
            (pipe.eof && pipe.buf.is_empty(), pipe.reset)
        };
        if reset {
            let _ = SockRef::from(w.as_ref()).set_linger(Some(std::time::Duration::ZERO));
            return false;
        }
        if chunk.is_empty() {
            if eof {
                let _ = w.shutdown().await;
                return true;
            }
            flow.gateway_data.notified().await;
            continue;
        }
        flow.wake_stack.notify_one();
        if w.write_all(&chunk).await.is_err() {
            let _ = SockRef::from(w.as_ref()).set_linger(Some(std::time::Duration::ZERO));
            return false;
        }
    }
}
