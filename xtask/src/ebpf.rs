//! Builds the eBPF crate and stages the object where the daemon's build script embeds it.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{setup::bpf_linker_dir, util::run, util::step};

/// Path of the staged object, relative to the workspace root. `astrogate/build.rs` reads it.
pub const STAGED_OBJECT: &str = "target/ebpf/astrogate.bpf.o";

pub fn build(root: &Path) -> Result<PathBuf> {
    step("building the eBPF programs");
    let crate_dir = root.join("astrogate-ebpf");
    let linker_bin = bpf_linker_dir()?.join("bin");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![linker_bin];
    paths.extend(std::env::split_paths(&path));
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&crate_dir)
        // A toolchain chosen for the host workspace must not leak into the nightly eBPF build.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env("PATH", std::env::join_paths(paths)?)
        .env("RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf")
        .args([
            "+nightly",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core"]);
    run(cmd)?;
    let built = crate_dir.join("target/bpfel-unknown-none/release/astrogate");
    let staged = root.join(STAGED_OBJECT);
    if let Some(dir) = staged.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // Copy only when different so the daemon is not rebuilt for an unchanged object.
    let fresh = fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    if fs::read(&staged).ok().as_deref() != Some(&fresh[..]) {
        fs::write(&staged, &fresh).with_context(|| format!("writing {}", staged.display()))?;
    }
    step(&format!("eBPF object staged at {}", staged.display()));
    Ok(staged)
}
