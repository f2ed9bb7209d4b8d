//! The Astrogate tunnel client: serves a host's TCP services through an Astrogate gateway, so
//! each connection arrives from the internet client's own address and port.
use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use astrogate::tunnel::{
    client::{self, ClientConfig},
    keys,
};
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "astrogate-tunnel",
    version,
    about = "Astrogate tunnel client: serve this host's TCP services through an Astrogate gateway",
    long_about = "The client dials out to the gateway (so it works behind NAT, over Yggdrasil or \
        any IP), and each connection the gateway routes to its tunnel arrives at this host's \
        services on a TUN interface, from the internet client's real address and port.\n\n\
        Start with `astrogate-tunnel keygen --out /etc/astrogate/tunnel.key`, list the printed \
        public key in the gateway's [[tunnel]], then `astrogate-tunnel run --config FILE` as root."
)]
struct Cli {
    /// Log filter, e.g. `info` or `astrogate=debug` (RUST_LOG overrides it).
    #[arg(long, default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new private key to FILE (mode 0600) and print its public key on stdout.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key of a private key file.
    Pubkey {
        #[arg(long)]
        key: PathBuf,
    },
    /// Run the client in the foreground (root) until SIGINT or SIGTERM, which remove the TUN
    /// and the rules it installed.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Write the man page and shell completions under DIR (for packaging).
    #[command(hide = true)]
    Assets { dir: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let result = match cli.command {
        Command::Keygen { out } => keygen(&out),
        Command::Assets { dir } => astrogate::assets::write(Cli::command(), &dir)
            .with_context(|| format!("writing to {}", dir.display())),
        Command::Pubkey { key } => keys::read_private(&key)
            .map(|k| println!("{}", keys::encode(&keys::public_of(&k))))
            .map_err(Into::into),
        Command::Run { config } => run(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("astrogate-tunnel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn keygen(out: &std::path::Path) -> Result<()> {
    let (private, public) = keys::generate()?;
    keys::write_private(out, &private)?;
    println!("{}", keys::encode(&public));
    Ok(())
}

fn run(path: &std::path::Path) -> Result<()> {
    let config = ClientConfig::load(path)?;
    // Each connection's stack buffers (2 x 256 KiB) are allocated zeroed. Above glibc's mmap
    // threshold that is a fresh mapping whose pages exist only once touched, so an idle
    // connection costs a few pages; but glibc raises the threshold after the first such
    // buffer is freed, and then every buffer comes from the heap and is zeroed by hand: 300 KiB
    // of resident memory per idle connection, measured. Pinning the threshold keeps them
    // mappings. SAFETY: mallopt only sets an allocator parameter, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    // One thread: the stack task and every flow's data connection hand bytes to each other
    // all the time, and on one thread that costs a function call instead of a cross-thread
    // wake-up (measured in `cargo xtask bench`, README "Tunnel mode").
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let path = path.to_path_buf();
    runtime.block_on(async {
        tokio::spawn(check_on_hangup(path));
        client::run(config, stop_signal()).await?;
        Ok(())
    })
}

/// SIGHUP (systemd's ExecReload) checks the config file and says so. Everything in it shapes
/// the host (the TUN, its addresses, the rules) or the session (the gateway, the keys), which
/// are set up once, so a change takes a restart; but a reload must never stop the client, as
/// SIGHUP's default action would.
async fn check_on_hangup(path: std::path::PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot watch SIGHUP");
        return;
    };
    while hup.recv().await.is_some() {
        match ClientConfig::load(&path) {
            Ok(_) => tracing::info!(
                config = %path.display(),
                "SIGHUP: the config is valid; the client applies it at its next start"
            ),
            Err(e) => {
                tracing::error!("SIGHUP: the config is not valid, fix it before restarting: {e}")
            }
        }
    }
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn init_logging(level: &str) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
