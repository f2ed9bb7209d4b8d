//! The Debian package, installed into this (throwaway, root) test machine and purged again:
//! its files, the `astrogate` system user, the units as `systemd-analyze verify` reads them,
//! `astrogate check` on the shipped config, and the shipped config run by the installed
//! binary with exactly the unit's capability bounding set: it starts, switches to the user,
//! reloads on SIGHUP (the unit's ExecReload) and stops on SIGTERM.
//!
//! systemd itself cannot run here: PID 1 of the test machine is not systemd and there is no
//! systemd instance to start units in (no /run/systemd/system), so the unit's start, reload
//! and stop are played by hand with the unit's own command lines and limits.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use astrogate_lab::{wait_for, Child, Netns, Workdir};

/// The package `cargo xtask package` built (`cargo xtask test` builds it first).
fn package() -> PathBuf {
    if let Some(p) = std::env::var_os("ASTROGATE_DEB") {
        return PathBuf::from(p);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(&dir)
        .ok()
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .unwrap_or_else(|| panic!("no package in {}: run `cargo xtask package`", dir.display()))
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Purges the package when the test ends, passed or not.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "astrogate"]).output();
    }
}

/// `Key=value` of a unit file.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in the unit"))
        .to_string()
}

#[test]
fn the_package_installs_runs_as_its_user_and_purges() {
    let deb = package();
    let (installed_before, _) = run("dpkg", &["-s", "astrogate"]);
    assert!(
        !installed_before,
        "astrogate is installed on this machine already; this test installs and purges it"
    );
    let (ok, out) = run("dpkg", &["-i", &deb.to_string_lossy()]);
    let _purge = Installed;
    assert!(ok, "dpkg -i:\n{out}");
    for file in [
        "/usr/bin/astrogate",
        "/usr/bin/astrogate-tunnel",
        "/lib/systemd/system/astrogate.service",
        "/lib/systemd/system/astrogate-tunnel.service",
        "/etc/astrogate/astrogate.toml",
        "/etc/astrogate/tunnel.toml",
        "/usr/share/man/man1/astrogate.1",
        "/usr/share/man/man1/astrogate-tunnel.1",
        "/usr/share/bash-completion/completions/astrogate",
        "/usr/share/bash-completion/completions/astrogate-tunnel",
        "/usr/share/zsh/vendor-completions/_astrogate",
        "/usr/share/fish/vendor_completions.d/astrogate.fish",
        "/usr/share/doc/astrogate/copyright",
    ] {
        let meta = std::fs::metadata(file).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(meta.len() > 0, "{file} is empty");
    }
    // The man pages are roff for the programs; the completions parse in bash.
    let page = std::fs::read_to_string("/usr/share/man/man1/astrogate.1").unwrap();
    assert!(page.contains(".TH astrogate"), "{page}");
    for name in ["astrogate", "astrogate-tunnel"] {
        let (ok, out) = run(
            "bash",
            &[
                "-n",
                &format!("/usr/share/bash-completion/completions/{name}"),
            ],
        );
        assert!(ok, "{name} completion: {out}");
    }
    // The binaries carry the eBPF programs.
    let (ok, out) = run(
        "/usr/bin/astrogate",
        &["check", "--config", "/etc/astrogate/astrogate.toml"],
    );
    assert!(ok, "astrogate check on the shipped config:\n{out}");
    assert!(out.contains("eBPF programs built in"), "{out}");
    // The system user, and a config directory it can read (reloads read it as the user).
    let (ok, passwd) = run("getent", &["passwd", "astrogate"]);
    assert!(ok, "no astrogate user");
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = fields[2].parse().unwrap();
    assert!(uid < 1000, "a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    let (ok, out) = run(
        "setpriv",
        &[
            "--reuid=astrogate",
            "--regid=astrogate",
            "--init-groups",
            "/usr/bin/astrogate",
            "check",
            "--config",
            "/etc/astrogate/astrogate.toml",
        ],
    );
    assert!(ok, "the astrogate user cannot read its config:\n{out}");
    // The units as systemd reads them: no warning, binaries present.
    let (ok, out) = run(
        "systemd-analyze",
        &[
            "verify",
            "/lib/systemd/system/astrogate.service",
            "/lib/systemd/system/astrogate-tunnel.service",
        ],
    );
    assert!(
        ok && out.trim().is_empty(),
        "systemd-analyze verify:\n{out}"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/astrogate.service").unwrap();
    assert!(unit_value(&unit, "Wants").contains("yggdrasil.service"));
    assert!(unit_value(&unit, "After").contains("yggdrasil.service"));
    assert_eq!(unit_value(&unit, "Restart"), "on-failure");
    assert_eq!(unit_value(&unit, "ExecReload"), "/bin/kill -HUP $MAINPID");
    play_the_unit(&unit, uid);
    drop(_purge);
    for gone in [
        "/usr/bin/astrogate",
        "/etc/astrogate",
        "/lib/systemd/system/astrogate.service",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} is left after purge");
    }
}

/// Runs the unit's ExecStart in a namespace of its own with the unit's capability bounding
/// set and open-file limit, then does what ExecReload and stop do.
fn play_the_unit(unit: &str, uid: u32) {
    let bounding = astrogate_lab::tunnel::unit_bounding_set(unit).expect("a bounding set");
    let exec: Vec<String> = unit_value(unit, "ExecStart")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    // The unit's open-file limit, or this machine's hard limit where that is lower: the test
    // machine may not raise its own (a container's hard limit of 20,000 here).
    let nofile: u64 = unit_value(unit, "LimitNOFILE").parse().unwrap();
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local rlimit.
    assert_eq!(
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
        0
    );
    let nofile = nofile.min(hard.rlim_max);
    let ns = Netns::new("pkg").unwrap();
    let dir = Workdir::new("pkg").unwrap();
    let mut cmd = ns.command("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg("setpriv")
        .arg(bounding)
        .args(&exec);
    let mut gateway = Child::spawn("astrogate", &mut cmd, &dir.join("astrogate.log")).unwrap();
    let log = |g: &Child| g.output();
    wait_for(
        "the packaged gateway to run",
        Duration::from_secs(10),
        || {
            let out = log(&gateway);
            out.contains("astrogate running").then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", log(&gateway)));
    let status = std::fs::read_to_string(format!("/proc/{}/status", gateway.pid())).unwrap();
    let want = format!("Uid:\t{uid}\t{uid}\t{uid}\t{uid}");
    assert!(status.contains(&want), "{status}\n{}", log(&gateway));
    gateway.signal(libc::SIGHUP);
    wait_for("the reload", Duration::from_secs(10), || {
        log(&gateway).contains("config reloaded").then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log(&gateway)));
    gateway.signal(libc::SIGTERM);
    let exit = gateway
        .wait_exit(Duration::from_secs(10))
        .expect("SIGTERM stops it");
    assert!(exit.success(), "{exit}\n{}", log(&gateway));
}
