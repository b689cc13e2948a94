//! Embeds the eBPF object built by `cargo xtask build-ebpf`, when there is one.
//!
//! Without it the agent still builds (so `cargo build` and `cargo clippy` need no bpf-linker),
//! and loading capture fails with an error that says how to build the object.
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-env-changed=SHUNT_EBPF_OBJECT");
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let object = std::env::var_os("SHUNT_EBPF_OBJECT").map_or_else(
        || manifest_dir.join("../target/ebpf/bpfel-unknown-none/release/shunt-ebpf"),
        PathBuf::from,
    );
    println!("cargo::rerun-if-changed={}", object.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("shunt-ebpf.o");
    match std::fs::read(&object) {
        Ok(bytes) if !bytes.is_empty() => {
            if let Err(e) = std::fs::write(&out, bytes) {
                println!("cargo::warning=could not copy {}: {e}", object.display());
                return;
            }
            println!("cargo::rustc-cfg=shunt_ebpf_embedded");
        }
        _ => {
            // An empty file keeps include_bytes! valid; the cfg above stays off.
            let _ = std::fs::write(&out, []);
        }
    }
}
