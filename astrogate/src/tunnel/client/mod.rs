//! The tunnel client (`astrogate-tunnel run`): a TUN on the service host where each proxied
//! connection arrives from the internet client's own address and port.
//!
//! The pipeline on this side: control session (`control`) → `Open` → a connection from the
//! client's address in the userspace stack (`stack`) → a data connection to the gateway
//! (`flow`). `host` owns what changes on the host.
pub mod config;
mod control;
mod datagrams;
mod flow;
mod host;
pub mod stack;
mod tc;

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
    #[error("the tunnel's TC program: {0}")]
    Ebpf(#[from] crate::ebpf::LoadError),
    #[error("{0}")]
    Privileges(crate::privileges::PrivilegeError),
}

/// Opens waiting for the stack.
const OPEN_QUEUE: usize = 1024;

/// Sets the host up, serves until `stop` completes (or the TUN fails), and takes every host
/// change back.
pub async fn run(config: ClientConfig, stop: impl Future<Output = ()>) -> Result<(), ClientError> {
    // Looked up first, so that a missing user fails before the host is changed.
    let target = config
        .user
        .as_deref()
        .map(crate::privileges::Target::lookup)
        .transpose()
        .map_err(ClientError::Privileges)?;
    let (tun, host) = host::Host::setup(&config).await?;
    let (v4, v6) = (config.v4.map(|a| a.0), config.v6.map(|a| a.0));
    let tc = match crate::ebpf::TunnelKernel::attach(&config.interface, v4, v6) {
        Ok(tc) => tc,
        Err(e) => {
            let _ = host.remove().await;
            return Err(e.into());
        }
    };
    tracing::info!(
        interface = %config.interface,
        v4 = ?config.v4.map(|a| a.0),
        v6 = ?config.v6.map(|a| a.0),
        table = config.table,
        "TUN up, source rules installed, TC program attached"
    );
    if let Some(target) = target {
        // One thread: the runtime is current-thread.
        use crate::privileges::{
            keep_capabilities_across_the_switch, limit_this_thread, switch_user, TUNNEL_KEEPS,
        };
        let dropped = keep_capabilities_across_the_switch()
            .and_then(|()| switch_user(&target))
            .and_then(|()| limit_this_thread(TUNNEL_KEEPS));
        match dropped {
            Ok(()) => tracing::info!(
                user = %target.name,
                group = %target.group_name(),
                capabilities = ?crate::privileges::TUNNEL_KEEPS,
                "switched user"
            ),
            Err(e) => {
                drop(tc);
                let _ = host.remove().await;
                return Err(ClientError::Privileges(e));
            }
        }
    }
    let (opens, queue) = mpsc::channel(OPEN_QUEUE);
    let flows = Arc::new(std::sync::Mutex::new(tc::TcFlows(tc)));
    let stack = Stack::new(tun, Box::new(SharedFlows(flows.clone())));
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
    let _ = stack_task.await;
    let (open, counted, strays) = flows.lock().unwrap_or_else(|e| e.into_inner()).summary();
    tracing::info!(open, counted, strays, "TC flows at exit");
    // Detach the program before the TUN goes.
    drop(flows);
    host.remove().await?;
    tracing::info!("host changes removed");
    result
}

/// The flow map, shared between the stack (which updates it) and `run` (which reports it).
struct SharedFlows(Arc<std::sync::Mutex<tc::TcFlows>>);

impl FlowObserver for SharedFlows {
    fn opened(&mut self, client: std::net::SocketAddr, service: std::net::SocketAddr, udp: bool) {
        self.lock().opened(client, service, udp);
    }
    fn closed(&mut self, client: std::net::SocketAddr, service: std::net::SocketAddr, udp: bool) {
        self.lock().closed(client, service, udp);
    }
}

impl SharedFlows {
    fn lock(&self) -> std::sync::MutexGuard<'_, tc::TcFlows> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}
