//! The idle timeout: a connection with no byte either way for `gateway.idle_timeout` is
//! closed, whatever path forwards it.
//!
//! The kernel path moves bytes without the gateway seeing them, so activity is read from the
//! sockets themselves (TCP_INFO: bytes received from, and bytes acknowledged by, each peer)
//! rather than from the pumps. One check costs one getsockopt per socket; checks come every fifth
//! of the timeout, and the first one only takes the baseline (counting as activity), so a
//! connection is closed between 1 and 1.2 timeouts after its last byte, a connection shorter
//! than one check reads no counter at all, and the default (10 minutes) costs a few system
//! calls per connection per minute.
use std::{net::Shutdown, os::fd::AsRawFd, time::Duration};

use socket2::SockRef;
use tokio::{net::TcpStream, time::Instant};

use super::sockopt;

/// Checks are never closer together than this, whatever the timeout.
const MIN_CHECK: Duration = Duration::from_millis(10);

/// Returns once neither socket has received or had acknowledged a byte for `timeout`. Never
/// returns while bytes move; a socket whose counters cannot be read counts as active, so an
/// error cannot close a connection early.
pub async fn expired(client: &TcpStream, upstream: &TcpStream, timeout: Duration) {
    let check = (timeout / 5).max(MIN_CHECK);
    // The first check only takes the baseline, and counts as activity: a connection that ends
    // within one check, as most do, never reads its counters.
    let mut last = None;
    let mut quiet_since = Instant::now();
    loop {
        tokio::time::sleep(check).await;
        let now = activity(client, upstream);
        if now != last || now.is_none() {
            last = now;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= timeout {
            return;
        }
    }
}

/// Closes an idle connection: both peers get a FIN, and each side's reads end, so whichever
/// path is forwarding sees two clean ends and finishes.
pub fn close(client: &TcpStream, upstream: &TcpStream) {
    for s in [client, upstream] {
        let _ = SockRef::from(s).shutdown(Shutdown::Both);
    }
}

/// Every byte either peer has sent or had acknowledged, summed: it changes whenever anything
/// moves.
fn activity(client: &TcpStream, upstream: &TcpStream) -> Option<u64> {
    let mut total = 0u64;
    for s in [client, upstream] {
        total = total.wrapping_add(sockopt::moved_total(s.as_raw_fd()).ok()?);
    }
    Some(total)
}
