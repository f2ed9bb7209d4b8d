//! Embeds the eBPF object that `cargo xtask build-ebpf` stages in target/ebpf/.
//!
//! A missing object is not a build error: the daemon then embeds nothing, `data_path = "auto"`
//! falls back to user space with a warning, and `"kernel"` refuses to start, naming the fix.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let staged = manifest.join("../target/ebpf/astrogate.bpf.o");
    println!("cargo:rerun-if-changed={}", staged.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("astrogate.bpf.o");
    let bytes = match fs::read(&staged) {
        Ok(bytes) => bytes,
        Err(_) => {
            println!(
                "cargo:warning=no eBPF object at {}: run `cargo xtask build-ebpf`; embedding none",
                staged.display()
            );
            Vec::new()
        }
    };
    fs::write(&out, bytes).expect("writing OUT_DIR/astrogate.bpf.o");
}
