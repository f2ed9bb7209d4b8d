//! The Yggdrasil lab with everything running: the topology, real servers on the service hosts
//! and on the internet host, recording taps, and the gateway bridging both worlds. The
//! integration tests (`tests/ygg_lab.rs`) and `cargo xtask demo` both start exactly this.
//!
//! ```text
//!  inet (clear internet)      gw                       alpha (Yggdrasil only)
//!  curl, sendxmpp,   ──v4/v6─▶ astrogate ──200::/7──▶  http :80, https :443, xmpp :5222/5269,
//!  go-sendxmpp, dial          + yggdrasil              echo :7 (dial), acme :8402
//!  www/secure/echo   ◀─v4──── (listens on its         beta (Yggdrasil only)
//!   .inet.example              ygg address too) ◀──── http :80, xmpp :5222/5269
//!                                                      + astrogate-tunnel ◀─ tunnel:beta
//!                                                        http :8080 on 0.0.0.0 and [::]
//!                                                      client (Yggdrasil only): curl, dial
//! ```
//!
//! `home.beta.example` is tunnel mode: beta's `astrogate-tunnel` dials the gateway's Yggdrasil
//! address, and a service bound to the wildcard sees each internet client's own address and
//! port.
//!
//! Recording taps sit in front of the gateway (on `inet`'s and `client`'s loopback) and
//! between the gateway's upstream connections and some real servers (on the server's own
//! address), so a test can compare what a client sent with what the server received.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use super::{
    services::{echo_server, http_server, prosody, source_reporter, tls_server, ProsodySpec},
    start_gateway,
    topology::{Topology, TopologySpec, YggHost, GATEWAY_V4, GATEWAY_V6, INET_V4},
    tunnel, Child, LabError, Netns, Tap, Workdir,
};

/// The ACME HTTP-01 token the alpha host serves, and its key authorization.
pub const ACME_TOKEN: &str = "ygg-lab-token_4Nw9xQ";
pub const ACME_KEY_AUTHORIZATION: &str = "ygg-lab-token_4Nw9xQ.thumbprint-of-the-account-key";
/// What the servers answer, so a client can tell which one it reached.
pub const ALPHA_WWW: &str = "alpha www over yggdrasil\n";
pub const ALPHA_TLS: &str = "alpha https over yggdrasil\n";
pub const BETA_WWW: &str = "beta www over yggdrasil\n";
pub const INET_WWW: &str = "www on the clear internet\n";
pub const INET_TLS: &str = "https on the clear internet\n";
/// XMPP accounts on chat.alpha.example.
pub const XMPP_USERS: &[(&str, &str)] = &[("alice", "s3cret-a"), ("bob", "s3cret-b")];

/// Ports the gateway listens on, on every address.
pub const HTTP: u16 = 80;
pub const HTTPS: u16 = 443;
pub const C2S: u16 = 5222;
pub const S2S: u16 = 5269;
pub const DIAL: u16 = 7070;
/// Where the gateway takes tunnel clients, on its Yggdrasil address.
pub const TUNNELS: u16 = 7444;
/// The service behind beta's tunnel, and the name the internet reaches it by.
pub const TUNNELED_PORT: u16 = 8080;
pub const TUNNELED_HOST: &str = "home.beta.example";
/// Port of the echo services that dial tests name.
pub const ECHO: u16 = 7;
/// The alpha host's ACME responder.
pub const ALPHA_ACME: u16 = 8402;
/// Front taps on `inet`'s loopback forward here + this offset to the gateway's IPv4 address,
/// and on `client`'s loopback to the gateway's Yggdrasil address.
pub const FRONT_OFFSET: u16 = 10000;

/// The running lab. Field order is drop order: taps and processes before the network, the
/// network before the files.
#[derive(Debug)]
pub struct YggLab {
    taps: Vec<(String, Tap)>,
    gateway: Child,
    servers: Vec<Child>,
    pub topo: Topology,
    certs: Vec<(String, PathBuf)>,
    binary: PathBuf,
    pub dir: Workdir,
    /// Namespaces and nodes up and routable.
    pub topology_up: Duration,
    /// Everything up: topology, servers, taps and the gateway.
    pub all_up: Duration,
}

impl YggLab {
    /// Brings the whole lab up with the gateway binary at `binary`.
    pub fn start(binary: &Path) -> Result<YggLab, LabError> {
        let started = Instant::now();
        let dir = Workdir::new("ygg")?;
        let topo = Topology::build(
            &TopologySpec {
                services: &["alpha", "beta"],
                client: true,
            },
            &dir,
        )?;
        let topology_up = started.elapsed();
        let mut servers = Vec::new();
        let mut taps = Vec::new();
        let mut certs = Vec::new();
        let alpha = topo.service("alpha").expect("built above");
        let beta = topo.service("beta").expect("built above");
        let a = IpAddr::V6(alpha.address());
        let b = IpAddr::V6(beta.address());
        let sa = |port| SocketAddr::new(a, port);

        // alpha: the real servers listen on alpha's Yggdrasil address on port + 8000, behind
        // taps on the standard ports (also on that address), except s2s and ACME.
        servers.push(http_server(
            &alpha.ns,
            &dir,
            "alpha-www",
            sa(8000 + HTTP),
            &[("index.html", ALPHA_WWW)],
        )?);
        taps.push(tap(&alpha.ns, "alpha-http", sa(HTTP), sa(8000 + HTTP))?);
        servers.push(http_server(
            &alpha.ns,
            &dir,
            "alpha-acme",
            sa(ALPHA_ACME),
            &[(
                &format!(".well-known/acme-challenge/{ACME_TOKEN}"),
                ACME_KEY_AUTHORIZATION,
            )],
        )?);
        let (child, cert) = tls_server(
            &alpha.ns,
            &dir,
            "alpha-tls",
            "secure.alpha.example",
            sa(8000 + HTTPS),
            &[("index.html", ALPHA_TLS)],
        )?;
        servers.push(child);
        certs.push(("secure.alpha.example".to_string(), cert));
        taps.push(tap(&alpha.ns, "alpha-tls", sa(HTTPS), sa(8000 + HTTPS))?);
        let alpha_ip = alpha.address().to_string();
        servers.push(prosody(
            &alpha.ns,
            &dir,
            &ProsodySpec {
                name: "prosody-alpha",
                domain: "chat.alpha.example",
                interfaces: &[&alpha_ip],
                c2s_port: 8000 + C2S,
                s2s_port: S2S,
                users: XMPP_USERS,
            },
        )?);
        taps.push(tap(&alpha.ns, "alpha-c2s", sa(C2S), sa(8000 + C2S))?);
        servers.push(echo_server(&alpha.ns, &dir, "alpha-echo", sa(8000 + ECHO))?);
        taps.push(tap(&alpha.ns, "alpha-echo", sa(ECHO), sa(8000 + ECHO))?);

        // beta: plain servers straight on its address.
        servers.push(http_server(
            &beta.ns,
            &dir,
            "beta-www",
            SocketAddr::new(b, HTTP),
            &[("index.html", BETA_WWW)],
        )?);
        let beta_ip = beta.address().to_string();
        servers.push(prosody(
            &beta.ns,
            &dir,
            &ProsodySpec {
                name: "prosody-beta",
                domain: "chat.beta.example",
                interfaces: &[&beta_ip],
                c2s_port: C2S,
                s2s_port: S2S,
                users: &[],
            },
        )?);

        // Tunnel mode: beta also runs a service on the wildcard addresses, reached through
        // its own astrogate-tunnel (started once the gateway listens).
        servers.push(source_reporter(&beta.ns, &dir, "beta-home", TUNNELED_PORT)?);
        let tunnel_bin = tunnel::client_binary(binary);
        let tunnel_keys = TunnelKeys {
            gateway: dir.join("gateway-tunnel.key"),
            beta: dir.join("beta-tunnel.key"),
        };
        let gateway_public = tunnel::keygen(&tunnel_bin, &tunnel_keys.gateway)?;
        let beta_public = tunnel::keygen(&tunnel_bin, &tunnel_keys.beta)?;

        // The clear internet: servers on inet's public address, HTTP and echo behind taps.
        let inet = &topo.inet;
        let lo = |port| SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), port);
        let pub4 = |port| SocketAddr::new(IpAddr::V4(INET_V4), port);
        servers.push(http_server(
            inet,
            &dir,
            "inet-www",
            lo(8000 + HTTP),
            &[("index.html", INET_WWW)],
        )?);
        taps.push(tap(inet, "inet-http", pub4(HTTP), lo(8000 + HTTP))?);
        let (child, cert) = tls_server(
            inet,
            &dir,
            "inet-tls",
            "secure.inet.example",
            pub4(HTTPS),
            &[("index.html", INET_TLS)],
        )?;
        servers.push(child);
        certs.push(("secure.inet.example".to_string(), cert));
        servers.push(echo_server(inet, &dir, "inet-echo", lo(8000 + ECHO))?);
        taps.push(tap(inet, "inet-echo", pub4(ECHO), lo(8000 + ECHO))?);

        // Names. Internet clients find the alpha and beta services at the gateway's public
        // addresses; the Yggdrasil client finds internet names at the gateway's Yggdrasil
        // address; the gateway resolves internet names itself, as a real one would with DNS.
        let g = IpAddr::V6(topo.gateway.address());
        let mut inet_hosts = Vec::new();
        for name in INBOUND_NAMES {
            inet_hosts.push((IpAddr::V4(GATEWAY_V4), *name));
            inet_hosts.push((IpAddr::V6(GATEWAY_V6), *name));
        }
        inet.set_hosts(&inet_hosts)?;
        let client = topo.client.as_ref().expect("built above");
        let outbound: Vec<(IpAddr, &str)> = OUTBOUND_NAMES.iter().map(|n| (g, *n)).collect();
        client.ns.set_hosts(&outbound)?;
        let gw_hosts: Vec<(IpAddr, &str)> = OUTBOUND_NAMES
            .iter()
            .chain(["other.inet.example"].iter())
            .map(|n| (IpAddr::V4(INET_V4), *n))
            .collect();
        topo.gateway.ns.set_hosts(&gw_hosts)?;

        let config = gateway_config(&topo, &tunnel_keys.gateway, &beta_public);
        let binary = binary.to_path_buf();
        let gateway = start_gateway(&topo.gateway.ns, &binary, &config, &dir)?;
        let beta = topo.service("beta").expect("built above");
        let client_config = dir.write(
            "beta-tunnel.toml",
            tunnel::client_config(
                &format!("[{g}]:{TUNNELS}"),
                &gateway_public,
                &tunnel_keys.beta,
            ),
        )?;
        servers.push(tunnel::start_client(
            &beta.ns,
            &tunnel_bin,
            &client_config,
            &dir.join("beta-tunnel.log"),
        )?);

        // Taps in front of the gateway, on each client's loopback.
        for port in [HTTP, HTTPS, C2S, DIAL] {
            taps.push(tap(
                inet,
                &format!("front-{port}"),
                lo(FRONT_OFFSET + port),
                SocketAddr::new(IpAddr::V4(GATEWAY_V4), port),
            )?);
        }
        let lo6 = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port);
        for port in [HTTP, DIAL] {
            taps.push(tap(
                &client.ns,
                &format!("yfront-{port}"),
                lo6(FRONT_OFFSET + port),
                SocketAddr::new(g, port),
            )?);
        }

        Ok(YggLab {
            taps,
            gateway,
            servers,
            certs,
            binary,
            topology_up,
            all_up: started.elapsed(),
            topo,
            dir,
        })
    }

    /// The gateway binary the lab runs (also the reference dial client).
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    pub fn inet(&self) -> &Netns {
        &self.topo.inet
    }

    pub fn client(&self) -> &YggHost {
        self.topo.client.as_ref().expect("the lab has a client")
    }

    pub fn alpha(&self) -> &YggHost {
        self.topo.service("alpha").expect("the lab has alpha")
    }

    pub fn beta(&self) -> &YggHost {
        self.topo.service("beta").expect("the lab has beta")
    }

    /// The gateway's Yggdrasil address.
    pub fn gateway_ygg(&self) -> Ipv6Addr {
        self.topo.gateway.address()
    }

    /// The tap called `name` (see [`YggLab::start`] for the names).
    pub fn tap(&self, name: &str) -> &Tap {
        &self
            .taps
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no tap called {name}"))
            .1
    }

    /// The self-signed certificate of a TLS server in the lab.
    pub fn cert(&self, host: &str) -> &Path {
        &self
            .certs
            .iter()
            .find(|(h, _)| h == host)
            .unwrap_or_else(|| panic!("no certificate for {host}"))
            .1
    }

    pub fn gateway_log(&self) -> String {
        self.gateway.output()
    }

    /// The output so far of the server called `name`.
    pub fn server_log(&self, name: &str) -> String {
        self.servers
            .iter()
            .find(|c| c.name() == name)
            .map(Child::output)
            .unwrap_or_default()
    }

    /// Runs a client program in `ns` to completion, at most `limit`.
    pub fn run(
        &self,
        ns: &Netns,
        limit: Duration,
        program: &str,
        args: &[&str],
    ) -> Result<Output, LabError> {
        super::run_client(ns, self.dir.path(), limit, program, args, None)
    }

    /// As [`YggLab::run`], with standard input read from `stdin`.
    pub fn run_with_input(
        &self,
        ns: &Netns,
        limit: Duration,
        program: &str,
        args: &[&str],
        stdin: &Path,
    ) -> Result<Output, LabError> {
        super::run_client(ns, self.dir.path(), limit, program, args, Some(stdin))
    }
}

/// Names the internet finds at the gateway.
const INBOUND_NAMES: &[&str] = &[
    "www.alpha.example",
    "secure.alpha.example",
    "chat.alpha.example",
    "echo.alpha.example",
    "acme.alpha.example",
    "redirect.alpha.example",
    "www.beta.example",
    "chat.beta.example",
    TUNNELED_HOST,
];

/// Private key files for the tunnel between beta and the gateway.
struct TunnelKeys {
    gateway: PathBuf,
    beta: PathBuf,
}

/// Internet names the gateway lets Yggdrasil clients reach.
const OUTBOUND_NAMES: &[&str] = &[
    "www.inet.example",
    "secure.inet.example",
    "echo.inet.example",
];

fn tap(
    ns: &Netns,
    name: &str,
    listen: SocketAddr,
    target: SocketAddr,
) -> Result<(String, Tap), LabError> {
    Ok((name.to_string(), Tap::start(ns, listen, target)?))
}

/// The gateway's config: public listeners for the internet, Yggdrasil listeners for the
/// overlay, and routes that each name the listeners allowed to use them, so neither side can
/// use the gateway to reach its own world or anything the config does not name.
pub fn gateway_config(topo: &Topology, tunnel_key: &Path, beta_public: &str) -> String {
    let tunnel_key = tunnel_key.display();
    let a = topo.service("alpha").map(YggHost::address);
    let b = topo.service("beta").map(YggHost::address);
    let g = topo.gateway.address();
    let (a, b) = (a.expect("alpha"), b.expect("beta"));
    format!(
        r#"# The gateway of the Yggdrasil lab (astrogate_lab::ygglab).
[gateway]
sniff_timeout = "3s"
# Short, so that an unreachable Yggdrasil node fails fast.
connect_timeout = "2s"

# Tunnel clients dial the gateway's Yggdrasil address; beta's key alone serves tunnel "beta".
[tunnels]
bind = ["[{g}]:{TUNNELS}"]
key = "{tunnel_key}"

[[tunnel]]
name = "beta"
key = "{beta_public}"

# Facing the internet: the gateway's public IPv4 and IPv6 addresses.
[[listener]]
name = "inet-http"
bind = ["{GATEWAY_V4}:{HTTP}", "[{GATEWAY_V6}]:{HTTP}"]
protocols = ["acme", "http"]

[[listener]]
name = "inet-tls"
bind = ["{GATEWAY_V4}:{HTTPS}", "[{GATEWAY_V6}]:{HTTPS}"]
protocols = ["tls"]

[[listener]]
name = "inet-xmpp"
bind = ["{GATEWAY_V4}:{C2S}", "[{GATEWAY_V6}]:{C2S}", "{GATEWAY_V4}:{S2S}", "[{GATEWAY_V6}]:{S2S}"]
protocols = ["xmpp"]

[[listener]]
name = "inet-dial"
bind = ["{GATEWAY_V4}:{DIAL}", "[{GATEWAY_V6}]:{DIAL}"]
protocols = ["dial"]

# Facing Yggdrasil: the node's own 200::/7 address.
[[listener]]
name = "ygg-http"
bind = ["[{g}]:{HTTP}"]
protocols = ["http"]

[[listener]]
name = "ygg-tls"
bind = ["[{g}]:{HTTPS}"]
protocols = ["tls"]

[[listener]]
name = "ygg-dial"
bind = ["[{g}]:{DIAL}"]
protocols = ["dial"]

# Internet to Yggdrasil.
[[route]]
hosts = ["www.alpha.example"]
to = "[{a}]"
acme = "[{a}]:{ALPHA_ACME}"
listeners = ["inet-http"]

[[route]]
hosts = ["redirect.alpha.example"]
to = "[{a}]"
acme_redirect = "http://acme.alpha.example"
listeners = ["inet-http"]

[[route]]
hosts = ["acme.alpha.example"]
to = "[{a}]:{ALPHA_ACME}"
listeners = ["inet-http"]

[[route]]
hosts = ["secure.alpha.example"]
to = "[{a}]"
listeners = ["inet-tls"]

[[route]]
hosts = ["chat.alpha.example"]
to = "[{a}]"
listeners = ["inet-xmpp"]

[[route]]
hosts = ["echo.alpha.example"]
to = "[{a}]"
listeners = ["inet-dial"]

[[route]]
hosts = ["www.beta.example"]
to = "[{b}]"
listeners = ["inet-http"]

[[route]]
hosts = ["chat.beta.example"]
to = "[{b}]"
listeners = ["inet-xmpp"]

# Internet to a service behind beta's tunnel, which sees each client's address and port.
[[route]]
hosts = ["{TUNNELED_HOST}"]
to = "tunnel:beta:{TUNNELED_PORT}"
listeners = ["inet-http"]

# Yggdrasil to the internet: names resolved by the system resolver at connect time.
[[route]]
hosts = ["www.inet.example"]
to = "www.inet.example:{HTTP}"
listeners = ["ygg-http"]

[[route]]
hosts = ["secure.inet.example"]
to = "secure.inet.example:{HTTPS}"
listeners = ["ygg-tls"]

[[route]]
hosts = ["echo.inet.example"]
to = "echo.inet.example"
listeners = ["ygg-dial"]
"#
    )
}
