//! Forwarding an established, routed connection in both directions.
//!
//! The path is chosen per connection. User space copying is always available and is the
//! fallback; the kernel path (eBPF sockmap) is added beside it.
pub mod idle;
pub mod kernel;
pub(crate) mod sockopt;
pub mod splice;
pub mod userspace;

use std::{fmt, future::Future, io};

use tokio::net::TcpStream;

use crate::{config::DataPath, sniff::Protocol};

/// The path one connection takes: the listener's setting, with `auto` resolved to splice(2)
/// for every protocol.
///
/// `auto` used to put XMPP on the kernel path. The one-hour soak of December 2026 (seed
/// 20261204) found a stall there that is not understood yet: in 1 of 10,462 kernel-path
/// connections (both ends sending FIN at once, no payload) the upstream's FIN did not reach
/// the client for 5 s. splice and userspace were clean over the same hour. A correct path beats
/// a fast one, so the kernel path is only taken where a listener asks for it by name, and
/// `astrogate check` calls that experimental (README, "Data paths").
pub fn choose(setting: DataPath, _protocol: Option<Protocol>, _kernel_loaded: bool) -> PathKind {
    match setting {
        DataPath::Kernel => PathKind::Kernel,
        DataPath::Splice | DataPath::Auto => PathKind::Splice,
        DataPath::Userspace => PathKind::Userspace,
    }
}

/// Which path forwarded a connection's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Userspace,
    Splice,
    Kernel,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Userspace => "userspace",
            PathKind::Splice => "splice",
            PathKind::Kernel => "kernel",
        }
    }
}

impl fmt::Display for PathKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one direction of a connection ended.
#[derive(Debug)]
pub enum DirectionEnd {
    /// The source sent FIN; the FIN was passed on.
    Eof,
    /// The source reset the connection; the reset was passed on.
    Reset,
    /// The destination refused the bytes (reset or broken pipe); the source was reset.
    WriteFailed(io::Error),
    /// Some other error on the source.
    ReadFailed(io::Error),
    /// The other direction failed and this one was cut short.
    Aborted,
}

/// The result of forwarding a connection.
#[derive(Debug)]
pub struct Forwarded {
    pub path: PathKind,
    /// Bytes from the client to the upstream, including replayed sniffed bytes.
    pub up_bytes: u64,
    /// Bytes from the upstream to the client.
    pub down_bytes: u64,
    /// Of those, the bytes user space copied through its own buffers.
    pub copied_bytes: u64,
    pub up_end: DirectionEnd,
    pub down_end: DirectionEnd,
}

impl Forwarded {
    /// Both directions ended with a FIN passed on: nothing was cut short.
    pub fn clean(&self) -> bool {
        matches!(
            (&self.up_end, &self.down_end),
            (DirectionEnd::Eof, DirectionEnd::Eof)
        )
    }
}

/// Runs a connection's two direction pumps until both have ended, or one fails: a failure
/// resets both sockets, so each peer sees what happened. `copies` says whether the pumps move
/// the payload through user-space buffers.
pub(crate) async fn run_pair(
    path: PathKind,
    copies: bool,
    (client, upstream): (&TcpStream, &TcpStream),
    up: impl Future<Output = (u64, DirectionEnd)>,
    down: impl Future<Output = (u64, DirectionEnd)>,
) -> Forwarded {
    tokio::pin!(up, down);
    let mut up_res = None;
    let mut down_res = None;
    while up_res.is_none() || down_res.is_none() {
        tokio::select! {
            r = &mut up, if up_res.is_none() => up_res = Some(r),
            r = &mut down, if down_res.is_none() => down_res = Some(r),
        }
        let failed = |r: &Option<(u64, DirectionEnd)>| {
            r.as_ref()
                .is_some_and(|(_, end)| !matches!(end, DirectionEnd::Eof))
        };
        if failed(&up_res) || failed(&down_res) {
            break;
        }
    }
    let (up_bytes, up_end) = up_res.unwrap_or((0, DirectionEnd::Aborted));
    let (down_bytes, down_end) = down_res.unwrap_or((0, DirectionEnd::Aborted));
    let result = Forwarded {
        path,
        up_bytes,
        down_bytes,
        copied_bytes: if copies { up_bytes + down_bytes } else { 0 },
        up_end,
        down_end,
    };
    if !result.clean() {
        userspace::reset_on_close(client);
        userspace::reset_on_close(upstream);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_never_picks_the_experimental_kernel_path() {
        let auto = |p, loaded| choose(DataPath::Auto, p, loaded);
        assert_eq!(auto(Some(Protocol::Xmpp), true), PathKind::Splice);
        assert_eq!(auto(Some(Protocol::Xmpp), false), PathKind::Splice);
        for p in [
            Protocol::Tls,
            Protocol::Http,
            Protocol::Acme,
            Protocol::Dial,
        ] {
            assert_eq!(auto(Some(p), true), PathKind::Splice, "{p:?}");
        }
        assert_eq!(auto(None, true), PathKind::Splice);
        let fixed = |s| choose(s, Some(Protocol::Tls), true);
        assert_eq!(fixed(DataPath::Kernel), PathKind::Kernel);
        assert_eq!(fixed(DataPath::Splice), PathKind::Splice);
        assert_eq!(fixed(DataPath::Userspace), PathKind::Userspace);
    }
}
