//! Refusing a connection in its own protocol, and closing without a reset.
use std::{io::ErrorKind, time::Duration};

use socket2::SockRef;
use tokio::net::TcpStream;

use crate::{
    forward::userspace::write_all,
    reply::{self, Refusal},
    sniff::Protocol,
};

/// How long a refusal may take to write and drain, so a client that does not read cannot
/// hold the connection open.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// Sends the protocol's refusal, then closes without a reset so the client can read it.
pub async fn refuse(client: &TcpStream, protocol: Option<Protocol>, refusal: Refusal) {
    let bytes = reply::refusal(protocol, refusal);
    let _ = tokio::time::timeout(REFUSAL_LINGER, write_all(client, &bytes)).await;
    close_gracefully(client).await;
}

/// Sends FIN and discards what the client still sends for a moment: closing with unread input
/// would make the kernel answer with RST and the client could lose the reply.
pub async fn close_gracefully(client: &TcpStream) {
    let _ = SockRef::from(client).shutdown(std::net::Shutdown::Write);
    let drain = async {
        let mut discarded = 0usize;
        let mut scratch = Vec::with_capacity(4096);
        while discarded < 64 * 1024 {
            if client.readable().await.is_err() {
                return;
            }
            scratch.clear();
            match client.try_read_buf(&mut scratch) {
                Ok(0) => return,
                Ok(n) => discarded += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, drain).await;
}
