//! The command line: `check` on good and bad configs, and `run` refusing to start half-configured.
mod common;

use std::process::Command;

use common::{stderr, stdout, Lab, GATEWAY};

fn astrogate(args: &[&str]) -> std::process::Output {
    Command::new(GATEWAY)
        .args(args)
        .output()
        .expect("running astrogate")
}

#[test]
fn check_accepts_the_shipped_config_and_prints_what_it_understood() {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/astrogate.toml");
    let out = astrogate(&["check", "--config", config]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "is valid",
        "  https\n    bind      0.0.0.0:443, [::]:443\n    sniff     tls\n    default   [201:5d78::9]:443",
        "sniff     acme -> http",
        "blog.example.com, *.blog.example.com -> [201:5d78::1] (port: the listener's); acme challenges -> [201:5d78::1]:80",
        // The binary under test is the one that ships: it must carry its kernel path (a
        // release build without the eBPF object used to embed nothing, silently).
        "kernel path: eBPF programs built in (",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

#[test]
fn check_reports_file_line_key_and_reason() {
    let lab = Lab::new("clicheck");
    let path = lab
        .dir
        .write(
            "bad.toml",
            "[[listener]]\nname = \"web\"\nbind = [\"127.0.0.1:80\"]\nprotocols = [\"http\"]\n\n[[route]]\nhosts = [\"a.example\"]\nto = \"[201::1]:http\"\n",
        )
        .unwrap();
    let out = astrogate(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "{}:8:6: route[0].to: `[201::1]:http`: port must be 1-65535",
            path.display()
        )),
        "{err}"
    );
    let out = astrogate(&["check", "--config", "/nonexistent/astrogate.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/astrogate.toml: cannot read config"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_refuses_to_start_when_any_bind_fails() {
    let mut lab = Lab::new("clibind");
    lab.spawn(
        "holder",
        "socat",
        &["TCP-LISTEN:8081,bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"],
        Some("127.0.0.1:8081".parse().unwrap()),
    );
    let path = lab
        .dir
        .write(
            "two.toml",
            "[[listener]]\nname = \"free\"\nbind = [\"127.0.0.1:8080\"]\nprotocols = [\"http\"]\n\n[[listener]]\nname = \"taken\"\nbind = [\"127.0.0.1:8081\"]\nprotocols = [\"http\"]\n",
        )
        .unwrap();
    let out = lab.client(GATEWAY, &["run", "--config", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out)
            .contains("listener `taken`: cannot bind 127.0.0.1:8081: Address already in use"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn help_explains_the_commands() {
    let out = astrogate(&["--help"]);
    let text = stdout(&out);
    for word in ["run", "check", "dial", "--log-format"] {
        assert!(text.contains(word), "{text}");
    }
}

/// Without the privileges BPF needs, a listener on the kernel path refuses to start and names
/// the reason, while `"auto"` (which loads the kernel path, so a reload can switch a listener
/// to it) warns once and serves XMPP with splice(2).
#[test]
fn kernel_refuses_and_auto_falls_back_without_bpf() {
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new("clinobpf");
    let config = |mode: &str| {
        format!(
            "[gateway]\ndata_path = \"{mode}\"\n\n[[listener]]\nname = \"xmpp\"\nbind = [\"127.0.0.1:7070\"]\nprotocols = [\"xmpp\"]\n\n[[route]]\nhosts = [\"echo.test\"]\nto = \"127.0.0.1:9001\"\n"
        )
    };
    // An unprivileged user: no CAP_BPF, CAP_NET_ADMIN or CAP_SYS_ADMIN.
    let unprivileged = |path: &std::path::Path| {
        let mut cmd = lab.ns.command("setpriv");
        cmd.args([
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(GATEWAY)
        .args(["run", "--config"])
        .arg(path);
        cmd
    };
    let readable = |p: &std::path::Path| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap()
    };
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let kernel = lab.dir.write("kernel.toml", config("kernel")).unwrap();
    readable(&kernel);
    let out = unprivileged(&kernel).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("data_path = \"kernel\", but the kernel path cannot start: loading the eBPF object failed"),
        "{}",
        stderr(&out)
    );

    let auto = lab.dir.write("auto.toml", config("auto")).unwrap();
    readable(&auto);
    let log = lab.dir.join("auto.log");
    let mut gateway =
        astrogate_lab::Child::spawn("astrogate", &mut unprivileged(&auto), &log).unwrap();
    astrogate_lab::wait_for(
        "the unprivileged gateway to start",
        std::time::Duration::from_secs(10),
        || gateway.output().contains("astrogate running").then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.output()));
    let echo = common::streams::Server::start(&lab.ns, "127.0.0.1:9001", |mut s| {
        let mut r = s.try_clone().unwrap();
        let _ = std::io::copy(&mut r, &mut s);
        common::streams::finish(&s);
    });
    let header = b"<?xml version='1.0'?><stream:stream to='echo.test' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>";
    let mut s = lab
        .ns
        .enter(|| std::net::TcpStream::connect("127.0.0.1:7070"))
        .unwrap()
        .unwrap();
    use std::io::{Read, Write};
    s.write_all(header).unwrap();
    common::streams::finish(&s);
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    assert_eq!(back, header);
    drop(echo);
    astrogate_lab::wait_for(
        "the access-log line",
        std::time::Duration::from_secs(10),
        || {
            let text = gateway.output();
            text.lines()
                .any(|l| l.contains("protocol=xmpp") && l.contains("path=splice outcome=ok"))
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", gateway.output()));
    let text = gateway.output();
    assert_eq!(
        text.matches(
            "kernel path unavailable; connections that would take it use splice(2) instead"
        )
        .count(),
        1,
        "{text}"
    );
    gateway.stop(std::time::Duration::from_secs(5));
}

/// A listener may name an address the host does not have yet (a Yggdrasil node adds its
/// address after it starts): the gateway starts anyway and serves once the address appears.
#[test]
fn listeners_bind_addresses_that_appear_later() {
    let mut lab = Lab::new("clifreebind");
    lab.spawn(
        "echo",
        "socat",
        &["TCP-LISTEN:9001,bind=127.0.0.1,reuseaddr,fork", "EXEC:cat"],
        Some("127.0.0.1:9001".parse().unwrap()),
    );
    lab.gateway(
        "[[listener]]\nname = \"later\"\nbind = [\"[fd00:77::1]:7070\", \"10.77.0.1:7070\"]\nprotocols = [\"dial\"]\n\n[[route]]\nhosts = [\"echo.test\"]\nto = \"127.0.0.1:9001\"\n",
    );
    lab.ns
        .ip(&["addr", "add", "fd00:77::1/64", "dev", "lo", "nodad"])
        .unwrap();
    lab.ns
        .ip(&["addr", "add", "10.77.0.1/24", "dev", "lo"])
        .unwrap();
    for via in ["[fd00:77::1]:7070", "10.77.0.1:7070"] {
        let mut s = common::streams::dial(&lab.ns, via, "echo.test", 9001);
        use std::io::{Read, Write};
        s.write_all(b"ping").unwrap();
        common::streams::finish(&s);
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"ping", "via {via}");
    }
}
