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
