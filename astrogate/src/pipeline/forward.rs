//! The forward stage: which data path a routed connection takes, and the one place that
//! decides what happens when a path cannot take it.
use tokio::net::TcpStream;

use super::{Shared, Snapshot};
use crate::{
    config::DataPath,
    forward::{self, kernel::SpliceError, PathKind},
    sniff::Protocol,
};

/// How the forward stage ended.
pub struct Forwarded {
    pub forwarded: forward::Forwarded,
    /// The idle timeout closed the connection.
    pub idle: bool,
}

/// Forwards (see [`on_path`]) under the idle timeout: when it expires, both sockets are shut
/// down and the path is left to see the two ends and finish, so its own accounting (the kernel
/// path's maps included) is never cut off halfway.
pub async fn forward(
    setting: DataPath,
    protocol: Option<Protocol>,
    sniffed: u64,
    snap: &Snapshot,
    shared: &Shared,
    client: &TcpStream,
    upstream: &TcpStream,
) -> Result<Forwarded, SpliceError> {
    let run = on_path(setting, protocol, sniffed, snap, shared, client, upstream);
    let Some(timeout) = snap.settings.idle_timeout else {
        return run.await.map(|forwarded| Forwarded {
            forwarded,
            idle: false,
        });
    };
    tokio::pin!(run);
    tokio::select! {
        r = &mut run => r.map(|forwarded| Forwarded { forwarded, idle: false }),
        () = forward::idle::expired(client, upstream, timeout) => {
            forward::idle::close(client, upstream);
            run.await.map(|forwarded| Forwarded { forwarded, idle: true })
        }
    }
}

/// Forwards on the path the listener's setting and the sniffed protocol choose. The kernel
/// path declines connections it cannot take (a side already half-closed, a full sockmap, no
/// saved SYN): they are copied instead, counting any bytes the kernel path had already moved.
/// `sniffed` is how many bytes the sniff stage read from the client.
async fn on_path(
    setting: DataPath,
    protocol: Option<Protocol>,
    sniffed: u64,
    snap: &Snapshot,
    shared: &Shared,
    client: &TcpStream,
    upstream: &TcpStream,
) -> Result<forward::Forwarded, SpliceError> {
    let settings = &snap.settings;
    let path = forward::choose(setting, protocol, shared.kernel.is_some());
    let mut moved = 0;
    match (path, &shared.kernel) {
        (PathKind::Kernel, Some(kernel)) => match kernel.splice(client, upstream, sniffed).await {
            Err(SpliceError::Unavailable { why, moved: m }) => {
                tracing::debug!(%why, "kernel path cannot take this connection");
                moved = m;
            }
            result => return result,
        },
        (PathKind::Splice, _) => {
            return Ok(forward::splice::forward(client, upstream, settings.pipe_size).await)
        }
        _ => {}
    }
    let mut copied = forward::userspace::forward(client, upstream, settings.buffer_size).await;
    copied.up_bytes += moved;
    copied.copied_bytes += moved;
    Ok(copied)
}
