//! Connecting to a route's target.
use std::{io, net::SocketAddr, time::Duration};

use tokio::{net::TcpStream, time::Instant};

use crate::config::{Target, TargetHost};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("could not resolve {name}: {source}")]
    Resolve { name: String, source: io::Error },
    #[error("{name} resolved to no addresses")]
    NoAddresses { name: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{addr}: {source}")]
    Refused { addr: SocketAddr, source: io::Error },
}

/// Connects to `target`, trying each resolved address in order within one overall `timeout`.
/// `default_port` applies when the target names none.
pub async fn connect(
    target: &Target,
    default_port: u16,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let deadline = Instant::now() + timeout;
    let port = target.port.unwrap_or(default_port);
    let addrs: Vec<SocketAddr> = match &target.host {
        TargetHost::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        TargetHost::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            match tokio::time::timeout_at(deadline, lookup).await {
                Err(_) => return Err(ConnectError::Timeout(timeout)),
                Ok(Err(source)) => {
                    return Err(ConnectError::Resolve {
                        name: name.to_string(),
                        source,
                    })
                }
                Ok(Ok(addrs)) => addrs.collect(),
            }
        }
    };
    let mut last = None;
    for addr in &addrs {
        match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Err(_) => return Err(ConnectError::Timeout(timeout)),
            Ok(Ok(stream)) => {
                // Latency beats coalescing here: the client already decided how to batch.
                let _ = stream.set_nodelay(true);
                return Ok((stream, *addr));
            }
            Ok(Err(source)) => {
                last = Some(ConnectError::Refused {
                    addr: *addr,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::NoAddresses {
        name: target.to_string(),
    }))
}
