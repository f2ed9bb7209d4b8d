//! The tunnel client (`astrogate-tunnel run`): a TUN on the service host where each proxied
//! connection arrives from the internet client's own address and port.
//!
//! The pipeline on this side: control session (`control`) → `Open` → a connection from the
//! client's address in the userspace stack (`stack`) → a data connection to the gateway
//! (`flow`). `host` owns what changes on the host.
pub mod config;
mod control;
mod flow;
mod host;
pub mod stack;

use std::{future::Future, sync::Arc};

use tokio::sync::mpsc;

pub use config::ClientConfig;
pub use host::HostError;
use stack::{FlowObserver, Stack};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Host(#[from] HostError),
    #[error("the TUN failed: {0}")]
    Tun(std::io::Error),
}

/// Opens waiting for the stack.
const OPEN_QUEUE: usize = 1024;

/// Sets the host up, serves until `stop` completes (or the TUN fails), and takes every host
/// change back.
pub async fn run(config: ClientConfig, stop: impl Future<Output = ()>) -> Result<(), ClientError> {
    let (tun, host) = host::Host::setup(&config).await?;
    tracing::info!(
        interface = %config.interface,
        v4 = ?config.v4.map(|a| a.0),
        v6 = ?config.v6.map(|a| a.0),
        table = config.table,
        "TUN up, source rules installed"
    );
    let (opens, queue) = mpsc::channel(OPEN_QUEUE);
    let stack = Stack::new(tun, Box::new(NoObserver));
    let mut stack_task = tokio::spawn(stack.run(queue));
    let control = tokio::spawn(control::run(Arc::new(config), opens));
    tokio::pin!(stop);
    let result = tokio::select! {
        _ = &mut stop => Ok(()),
        r = &mut stack_task => match r {
            Ok(Err(e)) => Err(ClientError::Tun(e)),
            _ => Ok(()),
        },
    };
    control.abort();
    stack_task.abort();
    host.remove().await?;
    tracing::info!("host changes removed");
    result
}

struct NoObserver;

impl FlowObserver for NoObserver {
    fn opened(&mut self, _: std::net::SocketAddr, _: std::net::SocketAddr) {}
    fn closed(&mut self, _: std::net::SocketAddr, _: std::net::SocketAddr) {}
}
