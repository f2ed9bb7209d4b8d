//! The Astrogate tunnel client. Tunnel mode (a TUN interface on the service host where proxied
//! connections appear from their original internet addresses) arrives with the tunnel issue;
//! until then this binary only explains that.
use std::process::ExitCode;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "astrogate-tunnel",
    version,
    about = "Astrogate tunnel client: expose a service host's TUN interface to an Astrogate gateway",
    long_about = "Tunnel mode is not implemented yet. Run the gateway with `astrogate run` and \
        route hostnames to the service's Yggdrasil address instead."
)]
struct Cli {}

fn main() -> ExitCode {
    let _ = Cli::parse();
    eprintln!("astrogate-tunnel: tunnel mode is not implemented yet; see `astrogate --help`");
    ExitCode::FAILURE
}
