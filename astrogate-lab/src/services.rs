//! Real servers for the lab to put behind the gateway: Python's http.server, `openssl
//! s_server`, a socat echo, and prosody. Each runs in a namespace as a [`Child`] and is
//! waited for until it accepts connections.
use std::{
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use super::{run, wait_for, Child, LabError, Netns, Workdir};

const READY: Duration = Duration::from_secs(10);

/// Waits until something in `ns` accepts TCP connections on `addr`.
pub fn wait_listening(ns: &Netns, addr: SocketAddr, what: &str) -> Result<(), LabError> {
    wait_for(
        &format!("{what} to listen on {addr} in {}", ns.name()),
        READY,
        || {
            ns.enter(move || TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok())
                .ok()
                .filter(|up| *up)
        },
    )
    .map(|_| ())
}

/// Spawns `program args` in `ns` (working directory `dir`) and, when given, waits for `ready`.
pub fn spawn(
    ns: &Netns,
    dir: &Workdir,
    name: &str,
    program: &str,
    args: &[&str],
    ready: Option<SocketAddr>,
) -> Result<Child, LabError> {
    let mut cmd = ns.command(program);
    cmd.args(args).current_dir(dir.path());
    let mut child = Child::spawn(name, &mut cmd, &dir.join(&format!("{name}.log")))?;
    if let Some(addr) = ready {
        if let Err(e) = wait_listening(ns, addr, name) {
            let status = child.exited();
            return Err(match status {
                Some(status) => LabError::Failed {
                    command: format!("{cmd:?}"),
                    status: status.to_string(),
                    stderr: child.output(),
                },
                None => e,
            });
        }
    }
    Ok(child)
}

/// A self-signed certificate for `host` (also valid for the names in `more`), as
/// (certificate, key) paths.
pub fn self_signed_cert(
    dir: &Workdir,
    host: &str,
    more: &[&str],
) -> Result<(PathBuf, PathBuf), LabError> {
    let cert = dir.join(&format!("{host}.crt"));
    let key = dir.join(&format!("{host}.key"));
    let san = std::iter::once(host)
        .chain(more.iter().copied())
        .map(|h| format!("DNS:{h}"))
        .collect::<Vec<_>>()
        .join(",");
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "2", "-subj", &format!("/CN={host}")])
        .args(["-addext", &format!("subjectAltName={san}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert))?;
    Ok((cert, key))
}

/// Serves `files` (path, contents) over HTTP on `addr` with Python's http.server.
pub fn http_server(
    ns: &Netns,
    dir: &Workdir,
    name: &str,
    addr: SocketAddr,
    files: &[(&str, &str)],
) -> Result<Child, LabError> {
    let root = format!("www-{name}");
    for (path, body) in files {
        dir.write(&format!("{root}/{path}"), body)?;
    }
    let root = dir.join(&root).to_string_lossy().into_owned();
    let (port, ip) = (addr.port().to_string(), addr.ip().to_string());
    spawn(
        ns,
        dir,
        name,
        "python3",
        &[
            "-m",
            "http.server",
            &port,
            "--bind",
            &ip,
            "--directory",
            &root,
        ],
        Some(addr),
    )
}

/// A TLS server (`openssl s_server -WWW`) on `addr` with a self-signed certificate for
/// `host`; it serves `files` by path (`GET /index.html`). Returns the server and the
/// certificate a client must trust.
pub fn tls_server(
    ns: &Netns,
    dir: &Workdir,
    name: &str,
    host: &str,
    addr: SocketAddr,
    files: &[(&str, &str)],
) -> Result<(Child, PathBuf), LabError> {
    let (cert, key) = self_signed_cert(dir, host, &[])?;
    let root = format!("tls-{name}");
    for (path, body) in files {
        dir.write(&format!("{root}/{path}"), body)?;
    }
    let mut cmd = ns.command("openssl");
    cmd.args(["s_server", "-quiet", "-WWW", "-accept", &addr.to_string()])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        // -WWW serves paths relative to its working directory.
        .current_dir(dir.join(&root));
    let mut child = Child::spawn(name, &mut cmd, &dir.join(&format!("{name}.log")))?;
    if let Err(e) = wait_listening(ns, addr, name) {
        return Err(match child.exited() {
            Some(status) => LabError::Failed {
                command: format!("{cmd:?}"),
                status: status.to_string(),
                stderr: child.output(),
            },
            None => e,
        });
    }
    Ok((child, cert))
}

/// An echo server on `addr` (socat, one `cat` per connection).
pub fn echo_server(
    ns: &Netns,
    dir: &Workdir,
    name: &str,
    addr: SocketAddr,
) -> Result<Child, LabError> {
    let listen = match addr {
        SocketAddr::V4(a) => format!("TCP4-LISTEN:{},bind={},reuseaddr,fork", a.port(), a.ip()),
        SocketAddr::V6(a) => format!("TCP6-LISTEN:{},bind=[{}],reuseaddr,fork", a.port(), a.ip()),
    };
    spawn(ns, dir, name, "socat", &[&listen, "EXEC:cat"], Some(addr))
}

/// Where and how a prosody instance serves one XMPP domain.
#[derive(Debug, Clone)]
pub struct ProsodySpec<'a> {
    /// Names the config, data directory, log and certificate files.
    pub name: &'a str,
    pub domain: &'a str,
    /// Addresses prosody listens on (IPv4 or IPv6 literals).
    pub interfaces: &'a [&'a str],
    pub c2s_port: u16,
    pub s2s_port: u16,
    /// (user, password) accounts to register before start.
    pub users: &'a [(&'a str, &'a str)],
}

/// Starts prosody for `spec.domain` with STARTTLS required on c2s (self-signed certificate),
/// SASL PLAIN accounts, and s2s with dialback. Prosody refuses to run as root, so it runs as
/// the `prosody` user, which must own its data, config, certificate and key.
pub fn prosody(ns: &Netns, dir: &Workdir, spec: &ProsodySpec<'_>) -> Result<Child, LabError> {
    let name = spec.name;
    let (cert, key) = self_signed_cert(dir, spec.domain, &[])?;
    let data = dir.join(&format!("{name}-data"));
    let interfaces = spec
        .interfaces
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        r#"
pidfile = "{data}/prosody.pid"
data_path = "{data}"
interfaces = {{ {interfaces} }}
c2s_ports = {{ {c2s} }}
s2s_ports = {{ {s2s} }}
modules_enabled = {{ "disco"; "roster"; "saslauth"; "tls"; "ping"; "dialback" }}
authentication = "internal_plain"
c2s_require_encryption = true
s2s_secure_auth = false
log = {{ {{ levels = {{ min = "info" }}, to = "console" }} }}
VirtualHost "{domain}"
  ssl = {{ certificate = "{cert}"; key = "{key}" }}
"#,
        data = data.display(),
        c2s = spec.c2s_port,
        s2s = spec.s2s_port,
        domain = spec.domain,
        cert = cert.display(),
        key = key.display(),
    );
    let config = dir.write(&format!("{name}.cfg.lua"), config)?;
    std::fs::create_dir_all(&data).map_err(|source| LabError::Io {
        what: format!("creating {}", data.display()),
        source,
    })?;
    run(Command::new("chown")
        .args(["-R", "prosody:prosody"])
        .arg(&data)
        .arg(&config)
        .arg(&cert)
        .arg(&key))?;
    for (user, password) in spec.users {
        run(Command::new("prosodyctl")
            .arg("--config")
            .arg(&config)
            .args(["register", user, spec.domain, password]))?;
    }
    let ready = spec
        .interfaces
        .first()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, spec.c2s_port));
    let config = config.to_string_lossy().into_owned();
    spawn(
        ns,
        dir,
        name,
        "runuser",
        &["-u", "prosody", "--", "prosody", "--config", &config, "-F"],
        ready,
    )
}

/// HAProxy in HTTP mode on `0.0.0.0:port` and `[::]:port`, answering every request with the
/// source address and port it saw (`src=ADDR port=PORT`): a real server bound to the wildcard,
/// as a service behind a tunnel is.
pub fn source_reporter(
    ns: &Netns,
    dir: &Workdir,
    name: &str,
    port: u16,
) -> Result<Child, LabError> {
    let binds = format!("  bind 0.0.0.0:{port}\n  bind [::]:{port} v6only\n");
    reporter(
        ns,
        dir,
        name,
        &binds,
        SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

/// The same report from HAProxy on `addr` with `accept-proxy`: every connection must start
/// with a PROXY header (v1 or v2), and the source reported is the one it names.
pub fn source_reporter_behind_proxy(
    ns: &Netns,
    dir: &Workdir,
    name: &str,
    addr: SocketAddr,
) -> Result<Child, LabError> {
    let binds = format!("  bind {addr} accept-proxy\n");
    // The readiness probe connects and closes without a header: HAProxy logs it and goes on.
    reporter(ns, dir, name, &binds, addr)
}

fn reporter(
    ns: &Netns,
    dir: &Workdir,
    name: &str,
    binds: &str,
    ready: SocketAddr,
) -> Result<Child, LabError> {
    let cfg = dir.write(
        &format!("{name}.cfg"),
        format!(
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend web\n{binds}\
             \x20 http-request return status 200 content-type text/plain \
             lf-string \"src=%[src] port=%[src_port]\\n\"\n"
        ),
    )?;
    let cfg = cfg.to_string_lossy().into_owned();
    spawn(ns, dir, name, "haproxy", &["-db", "-f", &cfg], Some(ready))
}

/// HAProxy in TCP mode on `listen`, passing every connection to `server` with a PROXY header
/// (`send-proxy` for v1, `send-proxy-v2` for v2): a load balancer in front of the gateway.
pub fn proxy_sender(
    ns: &Netns,
    dir: &Workdir,
    name: &str,
    listen: SocketAddr,
    server: SocketAddr,
    send: &str,
) -> Result<Child, LabError> {
    let cfg = dir.write(
        &format!("{name}.cfg"),
        format!(
            "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             listen front\n  bind {listen}\n  server gateway {server} {send}\n"
        ),
    )?;
    let cfg = cfg.to_string_lossy().into_owned();
    spawn(ns, dir, name, "haproxy", &["-db", "-f", &cfg], Some(listen))
}
