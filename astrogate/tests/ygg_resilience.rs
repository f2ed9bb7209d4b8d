//! The gateway when the Yggdrasil side fails: a service's node goes away and comes back, the
//! gateway's own node restarts, and an upstream is down. Each test has its own small lab
//! (internet host, gateway host, one service host, one Yggdrasil client), because these tests
//! break the network on purpose.
use std::{
    net::{IpAddr, SocketAddr},
    process::Output,
    time::{Duration, Instant},
};

use astrogate_lab::{
    run_client, services, start_gateway,
    topology::{Topology, TopologySpec, GATEWAY_V4, GATEWAY_V6, INET_V4},
    wait_for,
    yggdrasil::wait_routable,
    Child, Workdir,
};

const GATEWAY: &str = env!("CARGO_BIN_EXE_astrogate");
const WAIT: Duration = Duration::from_secs(10);
const BODY: &str = "gamma over yggdrasil\n";
const INET_BODY: &str = "www on the clear internet\n";
/// The gateway's connect_timeout in these labs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// What a loaded 2-core machine may add to a timeout before the answer arrives.
const SLACK: Duration = Duration::from_secs(4);

/// Field order is drop order.
struct SmallLab {
    gateway: Child,
    _servers: Vec<Child>,
    topo: Topology,
    dir: Workdir,
}

impl SmallLab {
    fn new(tag: &str) -> SmallLab {
        let dir = Workdir::new(tag).unwrap();
        let spec = TopologySpec {
            services: &["gamma"],
            client: true,
        };
        let topo = Topology::build(&spec, &dir).unwrap_or_else(|e| panic!("{e}"));
        let gamma = topo.service("gamma").unwrap();
        let c = gamma.address();
        let www = services::http_server(
            &gamma.ns,
            &dir,
            "gamma-www",
            SocketAddr::new(IpAddr::V6(c), 80),
            &[("index.html", BODY)],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let echo = services::echo_server(
            &gamma.ns,
            &dir,
            "gamma-echo",
            SocketAddr::new(IpAddr::V6(c), 7),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let inet = services::http_server(
            &topo.inet,
            &dir,
            "inet-www",
            SocketAddr::new(IpAddr::V4(INET_V4), 80),
            &[("index.html", INET_BODY)],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let g = topo.gateway.address();
        let config = format!(
            r#"
[gateway]
connect_timeout = "{}s"

[[listener]]
name = "http"
bind = ["{GATEWAY_V4}:80", "[{GATEWAY_V6}]:80"]
protocols = ["http"]

[[listener]]
name = "dial"
bind = ["{GATEWAY_V4}:7070"]
protocols = ["dial"]

[[listener]]
name = "ygg-http"
bind = ["[{g}]:80"]
protocols = ["http"]

[[route]]
hosts = ["www.gamma.example", "echo.gamma.example"]
to = "[{c}]"
listeners = ["http", "dial"]

[[route]]
hosts = ["www.inet.example"]
to = "{INET_V4}:80"
listeners = ["ygg-http"]

# Nothing listens on this port of gamma.
[[route]]
hosts = ["closed.gamma.example"]
to = "[{c}]:81"
"#,
            CONNECT_TIMEOUT.as_secs()
        );
        let gateway = start_gateway(&topo.gateway.ns, GATEWAY.as_ref(), &config, &dir)
            .unwrap_or_else(|e| panic!("{e}"));
        SmallLab {
            gateway,
            _servers: vec![www, echo, inet],
            topo,
            dir,
        }
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        run_client(
            &self.topo.inet,
            self.dir.path(),
            Duration::from_secs(30),
            program,
            args,
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// GETs `host` through the gateway's IPv4 or IPv6 listener; returns (status, body, time).
    fn get(&self, host: &str, gateway: IpAddr) -> (String, String, Duration) {
        let url = match gateway {
            IpAddr::V4(a) => format!("http://{a}/index.html"),
            IpAddr::V6(a) => format!("http://[{a}]/index.html"),
        };
        let started = Instant::now();
        let o = self.run(
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "-H",
                &format!("Host: {host}"),
                "-w",
                "\n%{http_code}",
                &url,
            ],
        );
        let elapsed = started.elapsed();
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string(), elapsed)
    }

    /// GETs www.inet.example from the Yggdrasil client through the gateway's Yggdrasil
    /// listener; returns (status, body).
    fn get_from_ygg(&self) -> (String, String) {
        let client = self.topo.client.as_ref().unwrap();
        let url = format!("http://[{}]/index.html", self.topo.gateway.address());
        let o = run_client(
            &client.ns,
            self.dir.path(),
            Duration::from_secs(30),
            "curl",
            &[
                "-sS",
                "--max-time",
                "10",
                "-H",
                "Host: www.inet.example",
                "-w",
                "\n%{http_code}",
                &url,
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.to_string(), body.to_string())
    }

    fn access_line(&self, needles: &[&str]) -> String {
        wait_for(
            &format!("an access-log line with {needles:?}"),
            WAIT,
            || {
                self.gateway
                    .output()
                    .lines()
                    .find(|l| {
                        l.contains("astrogate::access") && needles.iter().all(|n| l.contains(n))
                    })
                    .map(str::to_string)
            },
        )
        .unwrap_or_else(|e| panic!("{e}; gateway log:\n{}", self.gateway.output()))
    }
}

#[test]
fn an_upstream_that_is_down_fails_cleanly_and_quickly() {
    let mut lab = SmallLab::new("down");
    let v4 = IpAddr::V4(GATEWAY_V4);

    // A host that is up but has nothing on the port: its RST comes back over the overlay.
    let (code, _, took) = lab.get("closed.gamma.example", v4);
    assert_eq!(code, "502", "a refused upstream");
    // A refused connect does not wait for the connect timeout.
    assert!(took < CONNECT_TIMEOUT, "502 took {took:?}");
    lab.access_line(&["host=closed.gamma.example", "outcome=upstream_unreachable"]);

    // The service's node is gone: nothing answers at all, so the connect timeout decides.
    let gamma = lab.topo.service_mut("gamma").unwrap();
    gamma.node.stop();
    for gateway in [v4, IpAddr::V6(GATEWAY_V6)] {
        let (code, _, took) = lab.get("www.gamma.example", gateway);
        assert_eq!(code, "504", "an upstream whose node is down, via {gateway}");
        assert!(
            took >= CONNECT_TIMEOUT && took < CONNECT_TIMEOUT + SLACK,
            "504 via {gateway} took {took:?}; the gateway's connect_timeout is {CONNECT_TIMEOUT:?}"
        );
    }
    lab.access_line(&["host=www.gamma.example", "outcome=upstream_timeout"]);
    let started = Instant::now();
    let o = lab.run(
        GATEWAY,
        &[
            "dial",
            "echo.gamma.example",
            "7",
            "--via",
            &format!("{GATEWAY_V4}:7070"),
        ],
    );
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("gateway refused: 504"),
        "dial to a down node: {stderr}"
    );
    assert!(took < CONNECT_TIMEOUT + SLACK, "dial took {took:?}");
}

#[test]
fn service_node_restart_recovers_without_restarting_the_gateway() {
    let mut lab = SmallLab::new("restart");
    let v4 = IpAddr::V4(GATEWAY_V4);
    let v6 = IpAddr::V6(GATEWAY_V6);
    let (code, body, _) = lab.get("www.gamma.example", v4);
    assert_eq!((code.as_str(), body.as_str()), ("200", BODY));
    let gateway_pid = lab.gateway.pid();

    // Restart gamma's node in the middle: same key, so the same address comes back.
    let topo = &mut lab.topo;
    let gamma = topo
        .services
        .iter_mut()
        .find(|h| h.node.name() == "gamma")
        .unwrap();
    let before = gamma.address();
    let started = Instant::now();
    gamma
        .restart_node(&topo.gateway)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(gamma.address(), before);
    let target = SocketAddr::new(IpAddr::V6(before), 9);
    wait_routable(&topo.gateway.ns, target, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "gamma's node was back and routable after {:?}",
        started.elapsed()
    );

    // Once it is back, the very next connections succeed, on both listeners and over dial.
    for gateway in [v4, v6] {
        let (code, body, _) = lab.get("www.gamma.example", gateway);
        assert_eq!(
            (code.as_str(), body.as_str()),
            ("200", BODY),
            "after the restart, via {gateway}"
        );
    }
    let input = lab.dir.write("ping.txt", "ping after restart\n").unwrap();
    let o = run_client(
        &lab.topo.inet,
        lab.dir.path(),
        Duration::from_secs(30),
        GATEWAY,
        &[
            "dial",
            "echo.gamma.example",
            "7",
            "--via",
            &format!("{GATEWAY_V4}:7070"),
        ],
        Some(&input),
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ping after restart\n");

    assert_eq!(lab.gateway.pid(), gateway_pid);
    assert!(
        lab.gateway.exited().is_none(),
        "the gateway must still be running"
    );
    let log = lab.gateway.output();
    let ok = log
        .lines()
        .filter(|l| l.contains("host=www.gamma.example") && l.contains("outcome=ok"))
        .count();
    assert_eq!(
        ok, 3,
        "one request before and two after the restart:\n{log}"
    );
}

/// A yggdrasil upgrade on the gateway host restarts the gateway's own node: its address leaves
/// the TUN interface and comes back. The gateway's listener on that address and its upstream
/// connections into the overlay must both work again without restarting the gateway.
#[test]
fn gateway_node_restart_keeps_both_directions_working() {
    let mut lab = SmallLab::new("gwrestart");
    let v4 = IpAddr::V4(GATEWAY_V4);
    assert_eq!(lab.get("www.gamma.example", v4).0, "200");
    assert_eq!(
        lab.get_from_ygg(),
        ("200".to_string(), INET_BODY.to_string())
    );
    let gateway_pid = lab.gateway.pid();

    let topo = &mut lab.topo;
    topo.gateway
        .node
        .restart(&topo.gateway.ns)
        .unwrap_or_else(|e| panic!("{e}"));
    let others: Vec<_> = topo
        .services
        .iter()
        .chain(topo.client.iter())
        .map(|h| h.address())
        .collect();
    // The other nodes dial the gateway's; a dial that failed while it was down is retried
    // later, which bounds how long this may take.
    let started = Instant::now();
    topo.gateway
        .node
        .wait_peered(&others, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}"));
    for addr in &others {
        wait_routable(
            &topo.gateway.ns,
            SocketAddr::new(IpAddr::V6(*addr), 9),
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    let client = topo.client.as_ref().unwrap();
    wait_routable(
        &client.ns,
        SocketAddr::new(IpAddr::V6(topo.gateway.address()), 9),
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "the gateway's node was back and routable after {:?}",
        started.elapsed()
    );

    let (code, body, _) = lab.get("www.gamma.example", v4);
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200", BODY),
        "internet to Yggdrasil"
    );
    assert_eq!(
        lab.get_from_ygg(),
        ("200".to_string(), INET_BODY.to_string()),
        "Yggdrasil to the internet, through the listener on the node's address"
    );
    assert_eq!(lab.gateway.pid(), gateway_pid);
    assert!(
        lab.gateway.exited().is_none(),
        "the gateway must still be running"
    );
}
