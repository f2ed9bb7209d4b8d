//! Idempotent machine setup. Each step checks before it acts, so a second run only checks.
use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::util::{output, run, step};

/// Debian packages the build, the tests, the benchmarks and the demo use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "procps",
    "curl",
    "openssl",
    "gnutls-bin",
    "socat",
    "iperf3",
    "haproxy",
    "yggdrasil",
    "prosody",
    "lua-sec",
    "sendxmpp",
    // An XMPP client that speaks IPv6 (sendxmpp's Perl stack is IPv4 only).
    "go-sendxmpp",
    "python3",
    // The PyPI test tools' virtual environment.
    "python3-venv",
    "bpftool",
    // UDP tests: a DNS server and client.
    "dnsmasq-base",
    "bind9-dnsutils",
    // The UDP kernel path test turns checksum offload off on its links.
    "ethtool",
    // The package's maintainer scripts; the package test plays its unit (setpriv, prlimit)
    // and verifies it (systemd-analyze).
    "adduser",
    "util-linux",
    "systemd",
];

/// PyPI packages the tests use, pinned, in a virtual environment of their own.
const PYPI_PACKAGES: &[&str] = &["aioquic==1.7.2"];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub enum Scope {
    /// Only what `build-ebpf` needs: nightly rust-src and bpf-linker.
    EbpfToolchain,
    Everything,
}

pub fn ensure(scope: Scope) -> Result<()> {
    if matches!(scope, Scope::Everything) {
        apt_packages()?;
        pypi_packages()?;
    }
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

/// Tools this project installs with `cargo install`, kept out of the user's own `~/.cargo/bin`.
pub fn tools_dir() -> Result<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    Ok(cargo_home.join("astrogate-tools"))
}

const CARGO_FUZZ_VERSION: &str = "0.13.1"; // builds on the stable 1.95 here
const CARGO_DEB_VERSION: &str = "3.8.0"; // likewise

/// Installs cargo-fuzz on first use and returns its path.
pub fn cargo_fuzz() -> Result<PathBuf> {
    cargo_tool("cargo-fuzz", CARGO_FUZZ_VERSION)
}

/// Installs cargo-deb on first use and returns its path.
pub fn cargo_deb() -> Result<PathBuf> {
    cargo_tool("cargo-deb", CARGO_DEB_VERSION)
}

/// `cargo install`s `name` at `version` into the tools directory unless it answers there.
fn cargo_tool(name: &str, version: &str) -> Result<PathBuf> {
    let root = tools_dir()?;
    let bin = root.join("bin").join(name);
    if output(Command::new(&bin).arg("--version")).is_some() {
        return Ok(bin);
    }
    step(&format!(
        "{name}: installing {version} into {}",
        root.display()
    ));
    let mut cmd = Command::new("cargo");
    cmd.env_remove("RUSTUP_TOOLCHAIN")
        .args(["install", name, "--version", version, "--locked"])
        .arg("--root")
        .arg(&root);
    run(cmd)?;
    Ok(bin)
}

/// Creates the tools' Python environment (`astrogate-tools/venv`) with the PyPI test tools.
/// Debian's own python3 builds it, whatever else is first on PATH.
fn pypi_packages() -> Result<()> {
    let venv = tools_dir()?.join("venv");
    let python = venv.join("bin/python3");
    let check = PYPI_PACKAGES
        .iter()
        .map(|p| {
            format!(
                "importlib.metadata.version({:?})",
                p.split("==").next().unwrap_or(p)
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let wanted: Vec<&str> = PYPI_PACKAGES
        .iter()
        .map(|p| p.split("==").nth(1).unwrap_or(""))
        .collect();
    let have = output(Command::new(&python).args([
        "-c",
        &format!("import importlib.metadata; print(' '.join([{check}]))"),
    ]));
    if have.as_deref().map(str::trim) == Some(wanted.join(" ").as_str()) {
        step("PyPI test tools: all present");
        return Ok(());
    }
    step(&format!(
        "PyPI test tools: installing {} into {}",
        PYPI_PACKAGES.join(" "),
        venv.display()
    ));
    if !python.exists() {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-m", "venv"]).arg(&venv);
        run(cmd)?;
    }
    let mut cmd = Command::new(venv.join("bin/pip"));
    cmd.args(["install", "-q", "--disable-pip-version-check"])
        .args(PYPI_PACKAGES);
    run(cmd)
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| {
            let status = output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            !matches!(status.as_deref(), Some("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        step("apt packages: all present");
        return Ok(());
    }
    step(&format!("apt packages: installing {}", missing.join(" ")));
    let apt = |args: &[&str]| {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args(args);
        run(cmd)
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)?;
    // Debian starts these services on install; the tests and benchmarks start their own instances
    // in namespaces and need the default ports free.
    for service in ["haproxy", "prosody", "yggdrasil"] {
        let _ = Command::new("systemctl").args(["stop", service]).output();
        let _ = Command::new("pkill").args(["-x", service]).output();
    }
    Ok(())
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        step("rustup: installing the nightly toolchain with rust-src");
        let mut cmd = Command::new("rustup");
        cmd.args(["toolchain", "install", "nightly", "--profile", "minimal"]);
        cmd.args(["--component", "rust-src"]);
        return run(cmd);
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("rustup: nightly rust-src present");
        return Ok(());
    }
    step("rustup: adding rust-src to nightly (needed by -Z build-std=core)");
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    run(cmd)
}

/// Where this project's bpf-linker lives, keyed by the nightly it links against.
///
/// bpf-linker must read the bitcode the nightly's LLVM writes, so it is built against that very
/// libLLVM, which rustup ships as a shared library in the toolchain. That avoids a Debian LLVM 22,
/// which bookworm does not have and trixie's needs a newer glibc than this machine's.
pub fn bpf_linker_dir() -> Result<PathBuf> {
    let sysroot = nightly_sysroot()?;
    let libllvm = nightly_libllvm(&sysroot)?;
    let tag = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .context("unexpected libLLVM file name")?
        .to_string();
    Ok(tools_dir()?.join(format!("bpf-linker-{BPF_LINKER_VERSION}-llvm-{tag}")))
}

fn nightly_sysroot() -> Result<PathBuf> {
    output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .map(PathBuf::from)
        .context("`rustc +nightly --print sysroot` failed: is the nightly toolchain installed?")
}

fn nightly_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let entries = fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))?;
    for entry in entries {
        let path = entry?.path();
        let is_lib = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libLLVM.so."));
        if is_lib {
            return Ok(path);
        }
    }
    bail!(
        "the nightly toolchain in {} ships no shared libLLVM to build bpf-linker against",
        sysroot.display()
    )
}

fn bpf_linker() -> Result<()> {
    let dir = bpf_linker_dir()?;
    let bin = dir.join("bin/bpf-linker");
    let works =
        output(Command::new(&bin).arg("--version")).is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if works {
        step(&format!("bpf-linker: {} present", bin.display()));
        return Ok(());
    }
    step(&format!(
        "bpf-linker: building {BPF_LINKER_VERSION} against the nightly's LLVM into {} (about a minute)",
        dir.display()
    ));
    let libllvm = nightly_libllvm(&nightly_sysroot()?)?;
    let prefix = dir.join("llvm");
    let libdir = prefix.join("lib");
    fs::create_dir_all(&libdir).with_context(|| format!("creating {}", libdir.display()))?;
    let soname = libllvm.file_name().context("libLLVM has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(soname)] {
        let link = libdir.join(name);
        let _ = fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| format!("linking {}", link.display()))?;
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&dir)
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--locked", "--no-default-features", "--features", "llvm-22"])
        .arg("--root")
        .arg(&dir);
    run(cmd)?;
    if output(Command::new(&bin).arg("--version")).is_none() {
        bail!(
            "bpf-linker was installed to {} but does not run",
            bin.display()
        );
    }
    Ok(())
}
