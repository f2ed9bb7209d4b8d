//! Connecting to a route's target.
use std::{io, net::SocketAddr, time::Duration};

use tokio::{
    net::{TcpSocket, TcpStream},
    time::Instant,
};

use crate::{
    config::{Target, TargetHost},
    tunnel::hub::{Hub, OpenError},
};

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
    #[error("{0}")]
    Tunnel(OpenError),
}

impl ConnectError {
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            ConnectError::Timeout(_) | ConnectError::Tunnel(OpenError::Timeout(_))
        )
    }
}

/// Connects to `target` for `client`: through its tunnel client for a `tunnel:NAME` target
/// (the connection then comes from `client`'s address on the service host), directly
/// otherwise. Returns the stream and the address it reaches.
pub async fn open(
    target: &Target,
    default_port: u16,
    timeout: Duration,
    tunnels: &Hub,
    client: SocketAddr,
    sends_first: bool,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let TargetHost::Tunnel(name) = &target.host else {
        return connect(target, default_port, timeout, sends_first).await;
    };
    let port = target.port.unwrap_or(default_port);
    let stream = tunnels
        .open(name, client, port, timeout, false)
        .await
        .map_err(ConnectError::Tunnel)?;
    let addr = stream.peer_addr().map_err(|source| {
        ConnectError::Tunnel(OpenError::Io {
            tunnel: name.clone(),
            source,
        })
    })?;
    Ok((stream, addr))
}

/// Connects to an address or name `target` within one overall `timeout` (Happy Eyeballs over
/// its addresses). `default_port` applies when the target names none. `sends_first`: the
/// gateway writes to the connection as soon as it is up (see [`attempt`]).
pub async fn connect(
    target: &Target,
    default_port: u16,
    timeout: Duration,
    sends_first: bool,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    let deadline = Instant::now() + timeout;
    let port = target.port.unwrap_or(default_port);
    let addrs: Vec<SocketAddr> = match &target.host {
        TargetHost::Ip(ip) => vec![SocketAddr::new(*ip, port)],
        // Tunnels are opened by `open`; nothing resolves a tunnel name.
        TargetHost::Tunnel(_) => Vec::new(),
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
    connect_any(&addrs, deadline, timeout, sends_first)
        .await
        .map_err(|e| match e {
            ConnectError::NoAddresses { .. } => ConnectError::NoAddresses {
                name: target.to_string(),
            },
            other => other,
        })
}

/// RFC 8305's connection attempt delay: how long an attempt runs alone before the next starts.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Happy Eyeballs (RFC 8305): attempts start in turn, alternating address families, each
/// `ATTEMPT_DELAY` after the last or at once when the last failed, and the first to connect
/// wins; the others are dropped. A dead first address no longer eats the whole
/// `connect_timeout` (it did, when addresses were tried one after another).
pub async fn connect_any(
    addrs: &[SocketAddr],
    deadline: Instant,
    timeout: Duration,
    sends_first: bool,
) -> Result<(TcpStream, SocketAddr), ConnectError> {
    if let [addr] = addrs {
        // One address, nothing to race: no attempt task, no attempt timer.
        return match tokio::time::timeout_at(deadline, attempt(*addr, sends_first)).await {
            Err(_) => Err(ConnectError::Timeout(timeout)),
            Ok(Err(source)) => Err(ConnectError::Refused {
                addr: *addr,
                source,
            }),
            Ok(Ok(stream)) => Ok((stream, *addr)),
        };
    }
    let mut queue = interleave_families(addrs).into_iter();
    let mut attempts = tokio::task::JoinSet::new();
    let mut last = None;
    loop {
        if attempts.is_empty() {
            match queue.next() {
                Some(addr) => {
                    attempts.spawn(async move { (addr, attempt(addr, sends_first).await) });
                }
                None => break,
            }
        }
        let next_start = tokio::time::sleep(ATTEMPT_DELAY);
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return Err(ConnectError::Timeout(timeout)),
            done = attempts.join_next() => match done {
                Some(Ok((addr, Ok(stream)))) => return Ok((stream, addr)),
                Some(Ok((addr, Err(source)))) => last = Some(ConnectError::Refused { addr, source }),
                // A task cannot panic or be cancelled here; count it as a failed attempt.
                Some(Err(_)) | None => {}
            },
            _ = next_start => {
                if let Some(addr) = queue.next() {
                    attempts.spawn(async move { (addr, attempt(addr, sends_first).await) });
                }
            }
        }
        if attempts.is_empty() && queue.len() == 0 {
            break;
        }
    }
    Err(last.unwrap_or(ConnectError::NoAddresses {
        name: String::new(),
    }))
}

/// One connection attempt. TCP_NODELAY: latency beats coalescing here, the client already
/// decided how to batch. With `sends_first`, quick ACKs are off before the handshake (HAProxy's
/// `tcp-smart-connect`): the handshake's last ACK then rides on the first bytes, which the
/// gateway sends at once, one packet fewer for both ends. Without bytes to send (a server that
/// speaks first) it stays on, or the server would wait for the delayed ACK to accept.
async fn attempt(addr: SocketAddr, sends_first: bool) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_nodelay(true)?;
    if sends_first {
        socket2::SockRef::from(&socket).set_quickack(false)?;
    }
    socket.connect(addr).await
}

/// Alternates address families, starting with the family of the first address (RFC 8305 §4).
fn interleave_families(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut lead, mut other): (Vec<SocketAddr>, Vec<SocketAddr>) = addrs
        .iter()
        .copied()
        .partition(|a| a.is_ipv6() == first.is_ipv6());
    lead.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(addrs.len());
    while !lead.is_empty() || !other.is_empty() {
        out.extend(lead.pop());
        out.extend(other.pop());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::interleave_families;

    #[test]
    fn families_alternate_starting_with_the_first() {
        let a = |s: &str| s.parse().unwrap();
        let addrs = [
            a("[2001:db8::1]:80"),
            a("[2001:db8::2]:80"),
            a("192.0.2.1:80"),
            a("192.0.2.2:80"),
            a("[2001:db8::3]:80"),
        ];
        let order: Vec<String> = interleave_families(&addrs)
            .iter()
            .map(|x| x.to_string())
            .collect();
        assert_eq!(
            order,
            [
                "[2001:db8::1]:80",
                "192.0.2.1:80",
                "[2001:db8::2]:80",
                "192.0.2.2:80",
                "[2001:db8::3]:80"
            ]
        );
        assert!(interleave_families(&[]).is_empty());
    }
}
