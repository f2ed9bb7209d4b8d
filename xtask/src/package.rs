//! `cargo xtask package`: the Debian package, under target/debian/. The binaries are built
//! with the eBPF object embedded, each binary writes its own man page and completions (from
//! its command-line definition) into target/release/assets, and cargo-deb packs them with the units
//! and the example configs as `astrogate/Cargo.toml` lists them.
use std::{path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::util::step;

/// Builds the package and returns its path.
pub fn run(root: &Path) -> Result<std::path::PathBuf> {
    crate::build(root)?;
    let assets = root.join("target/release/assets");
    for binary in ["astrogate", "astrogate-tunnel"] {
        let status = Command::new(root.join("target/release").join(binary))
            .arg("assets")
            .arg(&assets)
            .status()
            .with_context(|| format!("running {binary} assets"))?;
        if !status.success() {
            bail!("{binary} assets: {status}");
        }
    }
    let cargo_deb = crate::setup::cargo_deb()?;
    let out = root.join("target/debian");
    std::fs::create_dir_all(&out)?;
    step("packaging with cargo-deb");
    let status = Command::new(&cargo_deb)
        .current_dir(root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["deb", "-p", "astrogate", "--no-build", "--output"])
        .arg(&out)
        .status()
        .context("running cargo-deb")?;
    if !status.success() {
        bail!("cargo-deb: {status}");
    }
    let deb = std::fs::read_dir(&out)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
        .context("cargo-deb wrote no .deb")?;
    step(&format!("package: {}", deb.display()));
    Ok(deb)
}
