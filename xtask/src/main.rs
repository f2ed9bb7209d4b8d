//! `cargo xtask`: the one entry point for setting up a machine, building, running and testing.
//!
//! Every command that builds calls `setup` first, so a fresh machine of the supported kind needs
//! nothing but this repository.
mod bench;
mod demo;
mod ebpf;
mod setup;
mod util;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test Astrogate")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks: apt packages, nightly rust-src and bpf-linker.
    /// Idempotent: a second run only checks, and takes seconds.
    Setup,
    /// Build the eBPF programs (nightly, build-std=core, bpf-linker) into target/ebpf/.
    BuildEbpf,
    /// Set up, build the eBPF programs, then build the daemon and tunnel client (release).
    Build,
    /// Build the Debian package (binaries with eBPF, units, example configs, man pages, shell
    /// completions) under target/debian/ with cargo-deb, installing it on first use.
    Package,
    /// Build, bring up the Yggdrasil namespace lab, run the gateway in it, show every protocol
    /// working in both directions with real clients, and tear the lab down.
    Demo {
        /// Keep the lab running after the table, until Enter or Ctrl-C, to poke at it.
        #[arg(long)]
        keep: bool,
    },
    /// Build, then run the gateway in the foreground on config/astrogate.toml (on a real host).
    Run {
        /// Config file to run with.
        #[arg(long, default_value = "config/astrogate.toml")]
        config: String,
        /// Extra arguments passed to `astrogate run`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the whole test suite (unit, integration, fuzz smoke).
    Test {
        /// Seconds each fuzz target runs in the smoke pass; 0 skips it.
        #[arg(long, default_value_t = 15)]
        fuzz_seconds: u32,
        /// Extra arguments passed to `cargo test` (for example a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Benchmark the kernel and user-space paths against direct connections and HAProxy,
    /// on loopback and across veth, and print a table of medians and ratios.
    Bench {
        /// Runs per measurement; the table shows medians.
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Seconds per throughput and connection-rate run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Idle connections opened for the memory measurement.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Topologies to run, comma-separated: loopback, veth, connrate, ops, udp, tunnel-veth, tunnel-ygg.
        #[arg(
            long,
            default_value = "loopback,veth,connrate,ops,udp,tunnel-veth,tunnel-ygg"
        )]
        topologies: String,
    },
    /// Run the randomized differential soak of every data path (tests/soak.rs) for longer
    /// than the test command's default, and print its counts.
    Soak {
        /// Seconds over all paths together.
        #[arg(long, default_value_t = 3600)]
        seconds: u64,
        /// Scenario seed; a new one each run when not given (the soak prints it).
        #[arg(long)]
        seed: Option<u64>,
        /// Paths to soak, comma-separated: kernel, splice, userspace.
        #[arg(long, default_value = "kernel,splice,userspace")]
        paths: String,
    },
    /// Run every cargo-fuzz target for a while and report executions per target.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = util::workspace_root()?;
    match cli.command {
        Command::Setup => setup::ensure(setup::Scope::Everything),
        Command::BuildEbpf => {
            setup::ensure(setup::Scope::EbpfToolchain)?;
            ebpf::build(&root).map(|_| ())
        }
        Command::Build => build(&root),
        Command::Package => package::run(&root).map(|_| ()),
        Command::Demo { keep } => {
            build(&root)?;
            demo::run(&root, keep)
        }
        Command::Run { config, args } => {
            build(&root)?;
            let bin = root.join("target/release/astrogate");
            let mut cmd = std::process::Command::new(bin);
            cmd.arg("run").arg("--config").arg(config).args(args);
            util::exec(cmd)
        }
        Command::Test { fuzz_seconds, args } => {
            // The package test installs what `package` builds (which sets up and builds the
            // eBPF programs and the binaries first).
            let deb = package::run(&root)?;
            std::env::set_var("ASTROGATE_DEB", &deb);
            util::cargo(&root, &["test", "--workspace", "--release"], &args)?;
            if fuzz_seconds > 0 {
                fuzz::run(&root, fuzz_seconds)?;
            }
            Ok(())
        }
        Command::Bench {
            runs,
            seconds,
            idle,
            topologies,
        } => {
            let topologies: Vec<String> = topologies.split(',').map(str::to_string).collect();
            if let Some(unknown) = topologies
                .iter()
                .find(|t| !bench::TOPOLOGIES.contains(&t.as_str()))
            {
                anyhow::bail!(
                    "unknown topology {unknown:?}; known: {}",
                    bench::TOPOLOGIES.join(", ")
                );
            }
            build(&root)?;
            bench::run(
                &root,
                &bench::Options {
                    runs,
                    seconds,
                    idle,
                    topologies,
                },
            )
        }
        Command::Soak {
            seconds,
            seed,
            paths,
        } => {
            setup::ensure(setup::Scope::Everything)?;
            ebpf::build(&root)?;
            std::env::set_var("ASTROGATE_SOAK_SECONDS", seconds.to_string());
            std::env::set_var("ASTROGATE_SOAK_PATHS", paths);
            if let Some(seed) = seed {
                std::env::set_var("ASTROGATE_SOAK_SEED", seed.to_string());
            }
            util::cargo(
                &root,
                &["test", "--release", "-p", "astrogate", "--test", "soak"],
                &["--".into(), "--nocapture".into()],
            )
        }
        Command::Fuzz { seconds } => {
            setup::ensure(setup::Scope::Everything)?;
            fuzz::run(&root, seconds)
        }
    }
}

pub(crate) fn build(root: &std::path::Path) -> Result<()> {
    setup::ensure(setup::Scope::Everything)?;
    ebpf::build(root)?;
    util::cargo(root, &["build", "--release", "--workspace", "--bins"], &[])
}

mod fuzz;
mod package;
