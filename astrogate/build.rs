//! Embeds the eBPF object that `cargo xtask build-ebpf` stages in target/ebpf/.
//!
//! A release build without the object is an error: it would ship a gateway whose kernel path
//! can never load. `ASTROGATE_ALLOW_NO_EBPF=1` allows it on purpose. Other builds (clippy,
//! debug tests, docs) embed nothing with a warning; the daemon then reports the kernel path as
//! missing, `data_path = "auto"` falls back with a warning, and `"kernel"` refuses to start.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let staged = manifest.join("../target/ebpf/astrogate.bpf.o");
    println!("cargo:rerun-if-changed={}", staged.display());
    println!("cargo:rerun-if-env-changed=ASTROGATE_ALLOW_NO_EBPF");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("astrogate.bpf.o");
    let bytes = match fs::read(&staged) {
        Ok(bytes) => bytes,
        Err(_) => {
            let release = env::var("PROFILE").as_deref() == Ok("release");
            let allowed = env::var_os("ASTROGATE_ALLOW_NO_EBPF").is_some_and(|v| v == "1");
            if release && !allowed {
                eprintln!(
                    "error: no eBPF object at {}. Run `cargo xtask build-ebpf` (or `cargo xtask \
                     build`) first, or set ASTROGATE_ALLOW_NO_EBPF=1 to build a gateway without \
                     its kernel path.",
                    staged.display()
                );
                std::process::exit(1);
            }
            println!(
                "cargo:warning=no eBPF object at {}: run `cargo xtask build-ebpf`; embedding none",
                staged.display()
            );
            Vec::new()
        }
    };
    fs::write(&out, bytes).expect("writing OUT_DIR/astrogate.bpf.o");
}
