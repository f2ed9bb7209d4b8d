//! The tunnel client's connection to the gateway: dial out, authenticate, serve `Open`s, and
//! reconnect with backoff and jitter when the path drops.
use std::{net::SocketAddr, sync::Arc, time::Duration};

use socket2::{SockRef, TcpKeepalive};
use tokio::{
    io::AsyncWriteExt,
    net::TcpStream,
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{
    config::ClientConfig,
    flow,
    stack::{self, Open},
};
use crate::{
    pipeline::connect::connect_any,
    tunnel::{
        noise, session,
        wire::{Control, DataStatus, Token, DATA_MAGIC},
    },
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A session that lasted this long was a real connection: the next attempt starts from the
/// first backoff again.
const STABLE: Duration = Duration::from_secs(10);

/// Keeps a session with the gateway up for as long as the client runs.
pub async fn run(config: Arc<ClientConfig>, opens: mpsc::Sender<Open>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        match session(&config, &opens).await {
            Ok(why) => tracing::warn!(%why, "disconnected from the gateway"),
            Err(why) => {
                tracing::warn!(%why, gateway = %config.gateway, "cannot connect to the gateway")
            }
        }
        if started.elapsed() >= STABLE {
            backoff = FIRST_BACKOFF;
        }
        // Full jitter over the upper half: clients that lost one gateway together do not
        // come back together.
        let wait = backoff.mul_f64(0.5 + rand::random::<f64>() / 2.0);
        tracing::info!(?wait, "reconnecting");
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn dial(config: &ClientConfig) -> Result<TcpStream, String> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout_at(deadline, tokio::net::lookup_host(&config.gateway)).await {
            Ok(Ok(addrs)) => addrs.collect(),
            Ok(Err(e)) => return Err(format!("resolving {}: {e}", config.gateway)),
            Err(_) => return Err(format!("resolving {}: timed out", config.gateway)),
        };
    let (stream, _) = connect_any(&addrs, deadline, CONNECT_TIMEOUT, false)
        .await
        .map_err(|e| e.to_string())?;
    // A path that dies without a FIN is found by the heartbeat on the control connection and
    // by keepalives on data connections.
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    Ok(stream)
}

/// One session: returns why it ended once it was up, or why it never came up.
async fn session(config: &Arc<ClientConfig>, opens: &mpsc::Sender<Open>) -> Result<String, String> {
    let stream = dial(config).await?;
    let handshake = noise::initiate(stream, &config.key, &config.gateway_key);
    let (tx, mut rx) = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(noise::NoiseError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err("the gateway closed the connection during the handshake: is this client's public key listed in a [[tunnel]]?".into())
        }
        Ok(Err(e)) => return Err(format!("handshake: {e} (is gateway_key the gateway's public key?)")),
        Err(_) => return Err("handshake timed out".into()),
    };
    let welcome = tokio::time::timeout(CONNECT_TIMEOUT, rx.recv()).await;
    let (tunnel, heartbeat) = match welcome.map(|r| r.map(|m| Control::decode(&m))) {
        Ok(Ok(Ok(Control::Welcome {
            tunnel,
            heartbeat_ms,
        }))) => (
            tunnel,
            Duration::from_millis(u64::from(heartbeat_ms.max(100))),
        ),
        _ => return Err("the gateway did not say which tunnel this client serves".into()),
    };
    tracing::info!(%tunnel, gateway = %config.gateway, "connected; serving tunnel");
    let (_keep, queue) = mpsc::channel(1);
    let why = session::run(tx, rx, queue, heartbeat, |msg| {
        if let Control::Open {
            token,
            client,
            port,
            timeout_ms,
            udp,
        } = msg
        {
            let timeout = Duration::from_millis(u64::from(timeout_ms));
            tokio::spawn(serve_open(
                config.clone(),
                opens.clone(),
                token,
                client,
                port,
                timeout,
                udp,
            ));
        }
    })
    .await;
    Ok(why)
}

/// Connects the internet client's address to the service and joins it to a new data
/// connection. The gateway is dialled while the service connects, so an open costs one round
/// trip to the gateway, not two.
async fn serve_open(
    config: Arc<ClientConfig>,
    opens: mpsc::Sender<Open>,
    token: Token,
    client: SocketAddr,
    port: u16,
    timeout: Duration,
    udp: bool,
) {
    let service = stack::service_addr(client, config.v4.map(|a| a.0), config.v6.map(|a| a.0), port);
    let connect = async {
        let Some(service) = service else {
            return Err(DataStatus::NoAddress);
        };
        let (reply, answer) = oneshot::channel();
        let open = Open {
            client,
            service,
            timeout,
            udp,
            reply,
        };
        if opens.send(open).await.is_err() {
            return Err(DataStatus::Failed);
        }
        answer.await.unwrap_or(Err(DataStatus::Failed))
    };
    let (data, flow) = tokio::join!(dial(&config), connect);
    let mut data = match data {
        Ok(data) => data,
        Err(e) => {
            tracing::warn!(%client, error = %e, "cannot open a data connection to the gateway");
            if let Ok(flow) = flow {
                flow.to_service().reset = true;
                flow.wake_stack.notify_one();
            }
            return;
        }
    };
    let _ = data.set_nodelay(true);
    let status = match &flow {
        Ok(_) => DataStatus::Connected,
        Err(status) => *status,
    };
    let mut header = Vec::with_capacity(DATA_MAGIC.len() + token.len() + 1);
    header.extend_from_slice(DATA_MAGIC);
    header.extend_from_slice(&token);
    header.push(status as u8);
    let sent = data.write_all(&header).await;
    match (flow, sent) {
        (Ok(flow), Ok(())) => flow::run(data, flow).await,
        (Ok(flow), Err(_)) => {
            flow.to_service().reset = true;
            flow.wake_stack.notify_one();
        }
        (Err(status), _) => {
            tracing::debug!(%client, port, status = status.describe(), "open failed");
        }
    }
}
