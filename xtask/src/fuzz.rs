//! Runs every cargo-fuzz target for a fixed time, seeded with the sniffer fixtures, and reports
//! how many inputs each one executed.
use std::{fs, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{setup::tools_dir, util::step};

pub fn run(root: &Path, seconds: u32) -> Result<()> {
    // Installed into the tools directory; cargo finds `cargo-fuzz` there through PATH.
    crate::setup::cargo_fuzz()?;
    let crate_dir = root.join("astrogate");
    let targets_dir = crate_dir.join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = fs::read_dir(&targets_dir)
        .with_context(|| format!("reading {}", targets_dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    targets.sort();
    let mut report = Vec::new();
    for target in &targets {
        step(&format!("fuzzing {target} for {seconds}s"));
        let corpus = crate_dir.join("fuzz/corpus").join(target);
        fs::create_dir_all(&corpus)?;
        let seeds = crate_dir.join("tests/fixtures").join(target);
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&crate_dir)
            .env_remove("RUSTUP_TOOLCHAIN")
            .env("PATH", path_with(&tools_dir()?.join("bin"))?)
            .args(["+nightly", "fuzz", "run", target.as_str()])
            .arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-max_len=20000");
        let out = cmd
            .output()
            .with_context(|| format!("running cargo fuzz for {target}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            eprintln!("{stderr}");
            bail!("fuzz target {target} failed: {}", out.status);
        }
        let runs = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("Done "))
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|n| n.parse::<u64>().ok())
            .next_back()
            .context("libFuzzer printed no `Done N runs` line")?;
        report.push((target.clone(), runs));
    }
    println!("fuzz target       executions  seconds");
    for (target, runs) in report {
        println!("{target:<16} {runs:>11}  {seconds:>7}");
    }
    Ok(())
}

fn path_with(dir: &Path) -> Result<std::ffi::OsString> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    Ok(std::env::join_paths(paths)?)
}
