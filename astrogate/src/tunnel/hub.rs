//! The gateway's side of tunnel mode.
//!
//! A tunnel client keeps one control connection open: a Noise IK channel that says which
//! tunnel its key serves, and carries heartbeats and `Open` requests. For each client
//! connection routed to `tunnel:NAME`, the gateway sends an `Open` with a fresh random token;
//! the tunnel client connects to its service (from the client's address, on its TUN), then
//! opens a data connection to the gateway that presents the token and a status byte. After
//! that the data connection carries the proxied bytes untouched, on any data path.
//!
//! Why the data connections are plain TCP and not inside the Noise channel: the proxied bytes
//! are the client's own stream (TLS, most of the time), and keeping them on their own TCP
//! connection is what lets splice(2) move them without a copy and keeps one slow connection
//! from blocking the others (no head-of-line blocking). The token is 128 random bits sent only
//! inside the authenticated channel, and is good for one connection within the connect
//! timeout, so a data connection cannot be claimed by anyone who did not read it there.
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use arc_swap::ArcSwapOption;
use tokio::{
    io::AsyncReadExt,
    net::TcpStream,
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{
    keys, noise, session,
    wire::{Control, DataStatus, Token, CONTROL_MAGIC, DATA_MAGIC, TOKEN_LEN},
};
use crate::config::TunnelsConfig;

/// How long a new connection to the tunnel port has to say what it is (and, for a control
/// connection, to complete the handshake).
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Control messages queued for one client before `open` waits.
const CONTROL_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("tunnel `{0}` has no client connected")]
    NotConnected(String),
    #[error("tunnel `{0}`: the client did not open the connection in time")]
    Timeout(String),
    #[error("tunnel `{tunnel}`: {}", status.describe())]
    Service { tunnel: String, status: DataStatus },
    #[error("tunnel `{tunnel}`: data connection: {source}")]
    Io { tunnel: String, source: io::Error },
}

struct Session {
    id: u64,
    to_client: mpsc::Sender<Control>,
}

/// Where a data connection goes once it presents its token.
type Pending = oneshot::Sender<TcpStream>;

/// Tunnel sessions and the data connections awaited, shared by every connection.
#[derive(Default)]
pub struct Hub {
    config: ArcSwapOption<TunnelsConfig>,
    sessions: Mutex<HashMap<String, Session>>,
    pending: Mutex<HashMap<Token, Pending>>,
    next_id: AtomicU64,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Puts a config in force. Sessions whose key is no longer listed for their tunnel are
    /// closed; the others carry on.
    pub fn configure(&self, config: Option<TunnelsConfig>) {
        let keep = |name: &String| {
            config
                .as_ref()
                .is_some_and(|c| c.peers.values().any(|n| n == name))
        };
        self.sessions().retain(|name, _| keep(name));
        self.config.store(config.map(Arc::new));
    }

    /// The tunnels that have a client connected now.
    pub fn connected(&self) -> Vec<String> {
        let mut names: Vec<String> = self.sessions().keys().cloned().collect();
        names.sort();
        names
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<Token, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Serves one connection accepted on a `[tunnels] bind` address, control or data.
    pub async fn serve_connection(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let mut magic = [0u8; 8];
        let read = tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut magic)).await;
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        if &magic == DATA_MAGIC {
            self.serve_data(stream).await;
        } else if &magic == CONTROL_MAGIC {
            self.serve_control(stream, peer).await;
        } else {
            tracing::debug!(%peer, "tunnel port: not a tunnel client");
        }
    }

    async fn serve_data(&self, mut stream: TcpStream) {
        let mut token = [0u8; TOKEN_LEN];
        let read = tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut token)).await;
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        // An unknown token (late, or guessed) gets the connection closed and nothing else.
        let Some(pending) = self.pending().remove(&token) else {
            return;
        };
        let _ = pending.send(stream);
    }

    async fn serve_control(self: Arc<Self>, mut stream: TcpStream, peer: SocketAddr) {
        let Some(config) = self.config.load_full() else {
            return;
        };
        let accepted =
            tokio::time::timeout(HELLO_TIMEOUT, noise::accept(&mut stream, &config.key)).await;
        let (hs, key) = match accepted {
            Ok(Ok(ok)) => ok,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "tunnel handshake failed");
                return;
            }
            Err(_) => return,
        };
        // Refused before the gateway answers: an unlisted key learns nothing, not even
        // whether the gateway's key was right.
        let Some(tunnel) = config.peers.get(&key).cloned() else {
            tracing::warn!(%peer, key = %keys::encode(&key), "tunnel client key is not listed in any [[tunnel]]; refused");
            return;
        };
        let (mut tx, rx) =
            match tokio::time::timeout(HELLO_TIMEOUT, noise::complete(stream, hs)).await {
                Ok(Ok(ok)) => ok,
                _ => return,
            };
        let heartbeat = config.heartbeat;
        let welcome = Control::Welcome {
            tunnel: tunnel.clone(),
            heartbeat_ms: heartbeat.as_millis().min(u32::MAX as u128) as u32,
        };
        if tx.send(&welcome.encode()).await.is_err() {
            return;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (to_client, queue) = mpsc::channel(CONTROL_QUEUE);
        // A new session for a tunnel replaces the old one: the client reconnected, and the
        // old path is dead or about to be.
        self.sessions()
            .insert(tunnel.clone(), Session { id, to_client });
        tracing::info!(%tunnel, %peer, "tunnel client connected");
        let why = session::run(tx, rx, queue, heartbeat, |_| {}).await;
        let mut sessions = self.sessions();
        if sessions.get(&tunnel).is_some_and(|s| s.id == id) {
            sessions.remove(&tunnel);
        }
        drop(sessions);
        tracing::info!(%tunnel, %peer, %why, "tunnel client disconnected");
    }

    /// Asks `tunnel`'s client to connect from `client` to its service's `port` (TCP, or a UDP
    /// flow with `udp`), and returns the data connection once the service has accepted.
    pub async fn open(
        &self,
        tunnel: &str,
        client: SocketAddr,
        port: u16,
        timeout: Duration,
        udp: bool,
    ) -> Result<TcpStream, OpenError> {
        let deadline = Instant::now() + timeout;
        let to_client = self
            .sessions()
            .get(tunnel)
            .map(|s| s.to_client.clone())
            .ok_or_else(|| OpenError::NotConnected(tunnel.to_string()))?;
        let token: Token = rand::random();
        let (tx, rx) = oneshot::channel();
        self.pending().insert(token, tx);
        let _forget = Forget { hub: self, token };
        let open = Control::Open {
            token,
            client,
            port,
            timeout_ms: timeout.as_millis().min(u32::MAX as u128) as u32,
            udp,
        };
        let timed_out = || OpenError::Timeout(tunnel.to_string());
        match tokio::time::timeout_at(deadline, to_client.send(open)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(OpenError::NotConnected(tunnel.to_string())),
            Err(_) => return Err(timed_out()),
        }
        let mut stream = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) => return Err(OpenError::NotConnected(tunnel.to_string())),
            Err(_) => return Err(timed_out()),
        };
        let mut status = [0u8];
        match tokio::time::timeout_at(deadline, stream.read_exact(&mut status)).await {
            Ok(Ok(_)) => {}
            Ok(Err(source)) => {
                return Err(OpenError::Io {
                    tunnel: tunnel.to_string(),
                    source,
                })
            }
            Err(_) => return Err(timed_out()),
        }
        match DataStatus::from_byte(status[0]) {
            DataStatus::Connected => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            status => Err(OpenError::Service {
                tunnel: tunnel.to_string(),
                status,
            }),
        }
    }

    /// Tokens awaiting a data connection (for tests and diagnostics).
    pub fn pending_count(&self) -> usize {
        self.pending().len()
    }
}

/// Drops a token when its `open` ends, however it ends, so a late data connection finds
/// nothing to claim.
struct Forget<'a> {
    hub: &'a Hub,
    token: Token,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.hub.pending().remove(&self.token);
    }
}
