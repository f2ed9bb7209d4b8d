//! UDP and QUIC through the gateway beside direct, over veth: datagrams per second and loss
//! at 64 and 1200 bytes (iperf3 -u), and new QUIC connections (aioquic handshakes, each routed
//! by its SNI). Direct crosses the same two veths with the gateway host routing.
use std::{fmt::Write as _, net::SocketAddr, path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use astrogate_lab::{services, test_python, wait_for};

use super::{median, Topology};
use crate::util::step;

/// The gateway's UDP and TCP (iperf3's control connection) listeners for iperf3.
const IPERF: u16 = 7201;
/// The same, with UDP sessions kept in user space.
const IPERF_USER: u16 = 7202;
/// The gateway's QUIC listener.
const QUIC: u16 = 8453;
/// The HTTP/3 server on the server host.
const H3_SERVER: u16 = 9443;
const SNI: &str = "bench.example";

/// One iperf3 -u run at `rate` bits/s (0: as fast as the client goes): (datagrams/s
/// received, loss in percent). The server takes one test at a time and may still be closing
/// the last one, so a refused start is tried again.
fn iperf_udp(
    topo: &Topology,
    to: SocketAddr,
    len: usize,
    rate: u64,
    seconds: u64,
) -> Result<(f64, f64)> {
    let mut last = None;
    for _ in 0..3 {
        match iperf_udp_once(topo, to, len, rate, seconds) {
            Ok(r) => return Ok(r),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("iperf3 -u never ran")))
}

fn iperf_udp_once(
    topo: &Topology,
    to: SocketAddr,
    len: usize,
    rate: u64,
    seconds: u64,
) -> Result<(f64, f64)> {
    let out = topo
        .client
        .command("iperf3")
        .args(["-u", "-J", "-c", &to.ip().to_string()])
        .args(["-p", &to.port().to_string(), "-l", &len.to_string()])
        .args(["-b", &rate.to_string(), "-t", &seconds.to_string()])
        .output()
        .context("running iperf3 -u")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let received = text.find("\"sum_received\"").map(|at| &text[at..]);
    let field = |key: &str| -> Option<f64> {
        let rest = received?;
        let at = rest.find(key)? + key.len();
        rest[at..]
            .trim_start_matches([':', ' ', '"'])
            .split([',', '\n', '}'])
            .next()?
            .trim()
            .parse()
            .ok()
    };
    let (Some(bytes), Some(secs), Some(lost)) = (
        field("\"bytes\""),
        field("\"seconds\""),
        field("\"lost_percent\""),
    ) else {
        let error = text.find("\"error\"").map_or("", |at| &text[at..]);
        bail!(
            "iperf3 -u to {to} gave no result ({}): {error} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok((bytes / len as f64 / secs, lost))
}

/// `n` QUIC handshakes one after another: (median ms, p90 ms, connections/s).
fn handshakes(topo: &Topology, root: &Path, to: SocketAddr, n: usize) -> Result<(f64, f64, f64)> {
    let script = root.join("astrogate/tests/h3/handshakes.py");
    let python = test_python();
    let out = topo
        .client
        .command(&python.to_string_lossy())
        .arg(script)
        .args([
            &to.ip().to_string(),
            &to.port().to_string(),
            SNI,
            &n.to_string(),
        ])
        .output()
        .context("running the QUIC handshake client")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    if v.len() != 3 {
        bail!(
            "handshakes to {to}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((v[0], v[1], v[2]))
}

pub fn run(root: &Path, runs: usize, seconds: u64) -> Result<String> {
    let mut topo = Topology::veth()?;
    topo.name = "UDP and QUIC (veth)";
    step("bench: UDP datagrams and QUIC handshakes");
    let (gw, server) = (topo.gw_ip, topo.server_ip);
    topo.spawn(
        "iperf3",
        false,
        "iperf3",
        &["-s", "-B", &server.to_string(), "-p", "5201"],
    )?;
    let (cert, key) = services::self_signed_cert(&topo.dir, SNI, &[])?;
    let python = test_python();
    let h3 = root.join("astrogate/tests/h3/server.py");
    topo.spawn(
        "h3",
        false,
        &python.to_string_lossy(),
        &[
            &h3.to_string_lossy(),
            "bench",
            &server.to_string(),
            &H3_SERVER.to_string(),
            &cert.to_string_lossy(),
            &key.to_string_lossy(),
        ],
    )?;
    let config = format!(
        r#"
[gateway]
udp_idle_timeout = "5s"

[[listener]]
name = "iperf-control"
bind = ["{gw}:{IPERF}"]
to = "{server}:5201"

[[listener]]
name = "iperf"
transport = "udp"
bind = ["{gw}:{IPERF}"]
to = "{server}:5201"

# The same, kept in user space (no kernel path), for comparison.
[[listener]]
name = "iperf-user-control"
bind = ["{gw}:{IPERF_USER}"]
to = "{server}:5201"

[[listener]]
name = "iperf-user"
transport = "udp"
bind = ["{gw}:{IPERF_USER}"]
to = "{server}:5201"
data_path = "userspace"

[[listener]]
name = "h3"
transport = "udp"
bind = ["{gw}:{QUIC}"]
protocols = ["quic"]

[[route]]
hosts = ["{SNI}"]
to = "{server}:{H3_SERVER}"
"#
    );
    let path = topo.dir.write("astrogate.toml", config)?;
    let gateway = root.join("target/release/astrogate");
    topo.spawn(
        "astrogate",
        true,
        "env",
        &[
            "RUST_LOG=warn",
            &gateway.to_string_lossy(),
            "run",
            "--config",
            &path.to_string_lossy(),
        ],
    )?;
    let direct_iperf = SocketAddr::new(server, 5201);
    let via_iperf = SocketAddr::new(gw, IPERF);
    let user_iperf = SocketAddr::new(gw, IPERF_USER);
    let (direct_h3, via_h3) = (
        SocketAddr::new(server, H3_SERVER),
        SocketAddr::new(gw, QUIC),
    );
    wait_for(
        "the HTTP/3 server and the gateway",
        Duration::from_secs(15),
        || handshakes(&topo, root, via_h3, 1).ok(),
    )?;

    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### {} (medians of {runs} runs, {seconds} s each)\n\n\
         iperf3 -u, one client; \"max\" runs unpaced (`-b 0`), \"paced\" at half of what direct received unpaced. \
         QUIC: aioquic handshakes one after another, each a new session routed by its SNI.\n",
        topo.name
    );
    let _ = writeln!(
        out,
        "| measure | direct | astrogate | astrogate / direct |\n|---|---|---|---|"
    );
    let row = |out: &mut String, label: &str, d: f64, a: f64| {
        let ratio = if d.abs() < 1e-9 {
            "-".to_string()
        } else {
            format!("{:.2}x", a / d)
        };
        let _ = writeln!(out, "| {label} | {d:.2} | {a:.2} | {ratio} |");
    };
    for len in [64usize, 1200] {
        let (mut d_rate, mut a_rate, mut d_loss, mut a_loss) = (vec![], vec![], vec![], vec![]);
        let mut u_rate = vec![];
        for _ in 0..runs {
            let d = iperf_udp(&topo, direct_iperf, len, 0, seconds)?;
            let a = iperf_udp(&topo, via_iperf, len, 0, seconds)?;
            let u = iperf_udp(&topo, user_iperf, len, 0, seconds)?;
            d_rate.push(d.0);
            a_rate.push(a.0);
            u_rate.push(u.0);
            d_loss.push(d.1);
            a_loss.push(a.1);
        }
        let direct_rate = median(d_rate);
        row(
            &mut out,
            &format!("{len} B max, kdatagrams/s received"),
            direct_rate / 1e3,
            median(a_rate) / 1e3,
        );
        row(
            &mut out,
            &format!("{len} B max, kdatagrams/s received, sessions kept in user space"),
            direct_rate / 1e3,
            median(u_rate) / 1e3,
        );
        row(
            &mut out,
            &format!("{len} B max, loss %"),
            median(d_loss),
            median(a_loss),
        );
        let paced = (direct_rate / 2.0 * len as f64 * 8.0) as u64;
        let (mut dp, mut ap) = (vec![], vec![]);
        for _ in 0..runs {
            dp.push(iperf_udp(&topo, direct_iperf, len, paced, seconds)?.1);
            ap.push(iperf_udp(&topo, via_iperf, len, paced, seconds)?.1);
        }
        row(
            &mut out,
            &format!(
                "{len} B paced at {:.0} kdatagrams/s, loss %",
                direct_rate / 2e3
            ),
            median(dp),
            median(ap),
        );
    }
    let (mut d, mut a) = (vec![], vec![]);
    for _ in 0..runs {
        d.push(handshakes(&topo, root, direct_h3, 50)?);
        a.push(handshakes(&topo, root, via_h3, 50)?);
    }
    let pick =
        |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| median(v.iter().map(f).collect());
    row(
        &mut out,
        "QUIC handshake p50, ms",
        pick(&d, |r| r.0),
        pick(&a, |r| r.0),
    );
    row(
        &mut out,
        "QUIC handshake p90, ms",
        pick(&d, |r| r.1),
        pick(&a, |r| r.1),
    );
    row(
        &mut out,
        "new QUIC connections/s (one client)",
        pick(&d, |r| r.2),
        pick(&a, |r| r.2),
    );
    let _ = writeln!(
        out,
        "\nQUIC routing adds {:.3} ms to the median handshake.",
        pick(&a, |r| r.0) - pick(&d, |r| r.0)
    );
    Ok(out)
}
