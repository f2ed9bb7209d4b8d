//! The Astrogate daemon.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use astrogate::{config::Config, privileges, runtime::Runtime};
use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

mod dial;

#[derive(Parser)]
#[command(
    name = "astrogate",
    version,
    about = "Route TCP connections between the internet and Yggdrasil by the hostname they name",
    long_about = "Astrogate accepts TCP connections, reads the first bytes to learn the protocol \
        (TLS SNI, HTTP Host, XMPP stream `to`, ACME HTTP-01, or an Astrogate dial header) and the \
        hostname the client wants, and connects the client to the target its config routes that \
        name to. The client's bytes are forwarded untouched.\n\n\
        Start with `astrogate check --config config/astrogate.toml` to see how a config is read."
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `astrogate=debug` (RUST_LOG overrides it).
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in the foreground until interrupted (SIGINT or SIGTERM).
    Run {
        /// Path to the TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config and print the listeners and routing table it defines.
    Check {
        /// Path to the TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Connect to HOST PORT through a gateway's dial listener and relay stdin/stdout, like
    /// netcat. Works as an ssh ProxyCommand: `astrogate dial %h %p --via gw:7070`.
    Dial {
        /// Hostname to ask the gateway for.
        host: String,
        /// Port to ask the gateway for.
        port: u16,
        /// The gateway's dial listener, `host:port`.
        #[arg(long)]
        via: String,
    },
    /// Write the man page and shell completions under DIR (for packaging).
    #[command(hide = true)]
    Assets { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    let result = match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Dial { host, port, via } => dial::run(&host, port, &via),
        Command::Assets { dir } => astrogate::assets::write(Cli::command(), &dir)
            .with_context(|| format!("writing to {}", dir.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("astrogate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn run(path: &std::path::Path) -> Result<()> {
    let config = Config::load(path)?;
    raise_fd_limit();
    // Looked up first, so that a missing user fails before anything is bound.
    let target = config
        .gateway
        .user
        .as_deref()
        .map(privileges::Target::lookup)
        .transpose()?;
    if target.is_some() {
        privileges::keep_capabilities_across_the_switch()?;
    }
    let workers = match config.gateway.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let routes = config.routes.routes().len();
        let data_path = config.gateway.data_path;
        let gateway = Runtime::start(config)?;
        if let Some(target) = &target {
            privileges::drop_privileges(target, privileges::GATEWAY_KEEPS, workers).await?;
            tracing::info!(
                user = %target.name,
                group = %target.group_name(),
                capabilities = ?privileges::GATEWAY_KEEPS,
                "switched user"
            );
        }
        for (listener, addr) in gateway.local_addrs() {
            tracing::info!(%listener, %addr, "listening");
        }
        tracing::info!(routes, %data_path, workers, "astrogate running");
        serve_until_stopped(&gateway, path).await;
        let grace = gateway.shutdown_grace();
        tracing::info!(
            connections = gateway.connections(),
            grace = ?grace,
            "stopped accepting; letting connections finish"
        );
        let cut = gateway.shutdown(grace).await;
        if cut > 0 {
            tracing::warn!(connections = cut, "grace period over; closing the rest");
        }
        if let Some(kernel) = gateway.kernel() {
            if cut == 0 {
                // Every connection has ended here, so any entry left would be a leak.
                let (socks, targets, peers, stats) = kernel.map_entries();
                tracing::info!(
                    socks,
                    targets,
                    peers,
                    stats,
                    "kernel path: map entries at exit"
                );
            }
            let counters: Vec<String> = kernel
                .counters()
                .into_iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect();
            tracing::info!(counters = %counters.join(" "), "kernel path: counters at exit");
        }
        tracing::info!("shutting down");
        Ok(())
    })
}

/// Serves until SIGTERM or SIGINT, reloading the config file on every SIGHUP. A broken file
/// is refused with one line naming the file, line and reason; the config in force stays.
async fn serve_until_stopped(gateway: &Runtime, path: &std::path::Path) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; reloads are off");
            None
        }
    };
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let reload = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = reload => match gateway.reload(path) {
                Ok(changes) => tracing::info!(changes = %changes.join("; "), "config reloaded"),
                Err(e) => tracing::error!("config reload refused, the previous config stays in force: {e}"),
            },
        }
    }
}

/// A gateway holds two descriptors per connection; the usual soft limit of 1024 would cap it
/// near 500 connections, so take the hard limit.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("could not raise the open-file limit");
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn check(path: &std::path::Path) -> Result<()> {
    let config = Config::load(path)?;
    print!("{}", astrogate::config::describe(&config));
    match astrogate::ebpf::embedded_object_len() {
        0 => println!("\nkernel path: not built into this binary (cargo xtask build-ebpf)"),
        n => println!("\nkernel path: eBPF programs built in ({n} bytes)"),
    }
    Ok(())
}
