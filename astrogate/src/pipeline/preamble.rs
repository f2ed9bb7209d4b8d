//! The preamble stage: a PROXY protocol header that a trusted load balancer puts before the
//! client's own bytes, read and removed before sniffing, under the sniff stage's deadline and
//! byte cap. Only sources in the listener's `proxy_protocol_from` are read here; a header from
//! anyone else is never believed (it reaches the sniffers as client bytes, and they refuse it).
use std::{io::ErrorKind, net::SocketAddr};

use tokio::{net::TcpStream, time::Instant};

use crate::{
    access_log::Outcome,
    proxy_protocol::{self, Parsed},
};

#[derive(Debug, thiserror::Error)]
pub enum PreambleError {
    #[error("no PROXY header within the sniff timeout")]
    Timeout,
    #[error("no PROXY header within max_sniff_bytes")]
    Limit,
    #[error("peer closed before a complete PROXY header")]
    Closed,
    #[error("{0}")]
    Malformed(String),
    #[error("reading the peer: {0}")]
    Io(std::io::Error),
}

impl PreambleError {
    pub fn outcome(&self) -> Outcome {
        match self {
            PreambleError::Timeout => Outcome::SniffTimeout,
            PreambleError::Limit => Outcome::SniffLimit,
            PreambleError::Closed => Outcome::ClientClosed,
            PreambleError::Malformed(_) => Outcome::BadProxyHeader,
            PreambleError::Io(_) => Outcome::ClientReset,
        }
    }
}

/// A PROXY header read from a trusted peer.
#[derive(Debug)]
pub struct Preamble {
    /// The header's length: bytes read from the socket that no one downstream sees.
    pub len: usize,
    /// The client and the address it connected to, as the header names them; `None` when the
    /// peer speaks for itself (a health check), and the connection's own addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// Reads a PROXY header from `client`. Bytes after it stay in `buf` for the sniffers.
pub async fn read(
    client: &TcpStream,
    deadline: Instant,
    max: usize,
    buf: &mut Vec<u8>,
) -> Result<Preamble, PreambleError> {
    loop {
        match proxy_protocol::parse(buf) {
            Parsed::Header { len, addresses } => {
                buf.drain(..len);
                return Ok(Preamble { len, addresses });
            }
            Parsed::Malformed(why) => return Err(PreambleError::Malformed(why)),
            Parsed::NeedMore if buf.len() >= max => return Err(PreambleError::Limit),
            Parsed::NeedMore => {}
        }
        match tokio::time::timeout_at(deadline, client.readable()).await {
            Err(_) => return Err(PreambleError::Timeout),
            Ok(Err(e)) => return Err(PreambleError::Io(e)),
            Ok(Ok(())) => {}
        }
        // A v2 header says its length after 16 bytes; read no further than the cap.
        let mut chunk = Vec::with_capacity((max - buf.len()).min(4096));
        match client.try_read_buf(&mut chunk) {
            Ok(0) => return Err(PreambleError::Closed),
            Ok(_) => buf.extend_from_slice(&chunk),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(e) => return Err(PreambleError::Io(e)),
        }
    }
}
