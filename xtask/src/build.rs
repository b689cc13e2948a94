//! Building the eBPF object and the user-space binaries with the pinned toolchains.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::cmd::{Privilege, run};
use crate::toolchain::{EBPF_TOOLCHAIN, USER_TOOLCHAIN, tool_path};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Where `build-ebpf` leaves the object; `agent/build.rs` embeds it from here.
pub fn ebpf_object() -> PathBuf {
    workspace_root().join("target/ebpf/bpfel-unknown-none/release/shunt-ebpf")
}

pub fn build_ebpf() -> Result<()> {
    println!("==> build-ebpf: shunt-ebpf with {EBPF_TOOLCHAIN} and bpf-linker");
    run(
        Command::new("cargo")
            .arg(format!("+{EBPF_TOOLCHAIN}"))
            .args([
                "build",
                "--package",
                "shunt-ebpf",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--target-dir",
                "target/ebpf",
            ])
            .current_dir(workspace_root())
            .env("PATH", tool_path())
            // BTF lets the kernel's verifier log name our types; bpf_target_arch selects
            // aya-ebpf's x86_64 bindings.
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                [
                    "--cfg",
                    "bpf_target_arch=\"x86_64\"",
                    "-C",
                    "debuginfo=2",
                    "-C",
                    "link-arg=--btf",
                ]
                .join("\u{1f}"),
            ),
        Privilege::User,
    )?;
    println!("    object: {}", ebpf_object().display());
    Ok(())
}

/// Builds every user-space binary (agent, shuntctl, proxy, shunt-testpod), embedding the eBPF
/// object, in the profile the tests and the demo run.
pub fn build_user(release: bool) -> Result<()> {
    println!("==> build: user space with {USER_TOOLCHAIN}");
    let mut cargo = user_cargo();
    // The default members: everything but the eBPF crate, which only builds for the BPF target.
    cargo.args(["build", "--bins"]);
    if release {
        cargo.arg("--release");
    }
    run(cargo.current_dir(workspace_root()), Privilege::User)
}

/// `cargo +1.99.0` with the environment user-space builds need.
pub fn user_cargo() -> Command {
    let mut cargo = Command::new("cargo");
    cargo
        .arg(format!("+{USER_TOOLCHAIN}"))
        .env("SHUNT_EBPF_OBJECT", ebpf_object())
        .env("PATH", tool_path());
    cargo
}

pub fn bin_dir(release: bool) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    target.join(if release { "release" } else { "debug" })
}
