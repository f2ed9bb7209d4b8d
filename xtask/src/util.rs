use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

pub fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map(Path::to_path_buf)
        .context("xtask manifest has no parent directory")
}

/// Runs a command to completion, failing with the command line when it exits non-zero.
pub fn run(mut cmd: Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its trimmed stdout, or None if it could not run or failed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Replaces the current process's job: runs the command and exits with its status.
pub fn exec(mut cmd: Command) -> Result<()> {
    let status = cmd.status().context("could not start the gateway")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Runs the host cargo (stable) in the workspace.
pub fn cargo(root: &Path, args: &[&str], extra: &[String]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root).args(args);
    if !extra.is_empty() {
        cmd.args(extra);
    }
    run(cmd)
}

pub fn step(msg: &str) {
    eprintln!("xtask: {msg}");
}
