//! The pinned toolchains and system packages, and `cargo xtask setup`, which installs what a
//! fresh machine lacks. Every step checks first, so a second run changes nothing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd::{Privilege, run, succeeds};

/// User space needs rustc ≥ 1.98 (aya 0.16).
pub const USER_TOOLCHAIN: &str = "1.99.0";
/// The eBPF crate: rustc 1.98-nightly with LLVM 22. Newer nightlies emit LLVM 23 bitcode,
/// which a bpf-linker built against LLVM 22 cannot read ("Invalid record").
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";
/// The static target the image's binaries are built for (`cargo xtask image`).
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PACKAGE: &str = "llvm-22-dev";
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

/// Debian packages: LLVM for bpf-linker; iproute2 for the netns harness (`ip netns`, veth,
/// bridge); util-linux for nsenter (debugging a pod's netns without remounting /sys); python3
/// for the capture tests' stand-in app and proxy processes; iptables for the agent's
/// `--capture=iptables` and its end-to-end cases; haproxy as the bench's reference
/// L4 forwarder (`cargo xtask bench`, scenario S4); curl and openssl as real clients (and
/// openssl's TLS server) in the L7 end-to-end tests (`tests/tests/l7.rs`); tcpdump for the
/// multi-node tests' capture of the underlay between nodes (`tests/src/cluster.rs`);
/// prometheus for `promtool check metrics` on a scrape (the proxy's unit tests) and the real
/// Prometheus that `tests/tests/prometheus.rs` runs the Istio dashboard queries against;
/// qemu-system-x86 and busybox-static for the kernel matrix's guests (`cargo xtask
/// kernel-matrix`: the emulator, and the guest's initramfs, cpio, depmod and modprobe);
/// python3-venv for the virtualenvs that hold kubernetes-validate (the manifests' schema
/// check, `agent/ctl/tests/deploy.rs`) and the OTLP gRPC receiver (`tests/tests/tracing.rs`).
/// containernetworking-plugins (`/usr/lib/cni`: bridge, host-local) as the primary CNI that
/// `tests/tests/cni.rs` chains shunt-cni after. podman, runc (crun cannot run a container
/// under hybrid cgroups) and musl-tools (ring's C for the musl target) for the image
/// (`cargo xtask image`).
const APT_PACKAGES: &[&str] = &[
    LLVM_PACKAGE,
    "iproute2",
    "util-linux",
    "python3",
    "iptables",
    "haproxy",
    "curl",
    "openssl",
    "tcpdump",
    "prometheus",
    "qemu-system-x86",
    "busybox-static",
    "python3-venv",
    "containernetworking-plugins",
    "podman",
    "runc",
    "musl-tools",
];

/// kubernetes-validate (PyPI), pinned: its offline schemas cover Kubernetes 1.33 through 1.37,
/// the versions the manifests are validated against.
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

/// The virtualenv holding kubernetes-validate; the manifest tests look for its binary here.
pub fn kubernetes_validate_venv() -> PathBuf {
    // xtask's own manifest dir is the workspace's `xtask/`.
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/kubernetes-validate")
}

/// The OTLP gRPC collector of `tests/tests/tracing.rs` (`tracing/otlp_grpc_receiver.py`) is
/// made of these (PyPI), pinned.
const OTLP_RECEIVER: &[&str] = &[
    "opentelemetry-proto==1.39.1",
    "grpcio==1.76.0",
    "protobuf==6.33.6",
];

/// The virtualenv holding the OTLP receiver's packages; the tracing tests run its python.
pub fn otlp_receiver_venv() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tools/otlp-receiver")
}

pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"),
        PathBuf::from,
    )
}

/// PATH with cargo's bin folder (bpf-linker) and LLVM's tools in front.
pub fn tool_path() -> std::ffi::OsString {
    let mut dirs = vec![cargo_home().join("bin"), PathBuf::from(LLVM_BIN)];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

pub fn setup() -> Result<()> {
    println!("==> setup: checking what this machine lacks");
    apt_packages()?;
    toolchain(USER_TOOLCHAIN, &["clippy", "rustfmt"])?;
    target(USER_TOOLCHAIN, MUSL_TARGET)?;
    toolchain(EBPF_TOOLCHAIN, &["rust-src"])?;
    bpf_linker()?;
    kubernetes_validate()?;
    otlp_receiver()?;
    kubectl()?;
    println!("==> setup: done");
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        println!(
            "    apt packages: {} already installed",
            APT_PACKAGES.join(", ")
        );
        return Ok(());
    }
    println!("    apt packages: installing {}", missing.join(", "));
    run(
        Command::new("apt-get").args(["update", "-qq"]),
        Privilege::Root,
    )?;
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        Privilege::Root,
    )
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn toolchain(name: &str, components: &[&str]) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("rustup is not on PATH: install rustup first (https://rustup.rs)")?;
    let have_toolchain = String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|line| line.starts_with(&format!("{name}-")));
    if have_toolchain {
        let listed = Command::new("rustup")
            .args(["component", "list", "--installed", "--toolchain", name])
            .output()?;
        let listed = String::from_utf8_lossy(&listed.stdout);
        let missing: Vec<&str> = components
            .iter()
            .copied()
            .filter(|c| {
                !listed
                    .lines()
                    .any(|line| line.starts_with(&format!("{c}-")) || line == *c)
            })
            .collect();
        if missing.is_empty() {
            println!(
                "    toolchain {name}: installed with {}",
                components.join(", ")
            );
            return Ok(());
        }
        println!("    toolchain {name}: adding {}", missing.join(", "));
        return run(
            Command::new("rustup")
                .args(["component", "add", "--toolchain", name])
                .args(&missing),
            Privilege::User,
        );
    }
    println!(
        "    toolchain {name}: installing with {}",
        components.join(", ")
    );
    let mut install = Command::new("rustup");
    install.args(["toolchain", "install", name, "--profile", "minimal"]);
    for component in components {
        install.args(["--component", component]);
    }
    run(&mut install, Privilege::User)
}

/// A standard library for another target (the image's static musl binaries).
fn target(toolchain: &str, target: &str) -> Result<()> {
    let listed = Command::new("rustup")
        .args(["target", "list", "--installed", "--toolchain", toolchain])
        .output()
        .context("rustup is not on PATH: install rustup first (https://rustup.rs)")?;
    if String::from_utf8_lossy(&listed.stdout)
        .lines()
        .any(|line| line.trim() == target)
    {
        println!("    toolchain {toolchain}: target {target} installed");
        return Ok(());
    }
    println!("    toolchain {toolchain}: adding target {target}");
    run(
        Command::new("rustup").args(["target", "add", "--toolchain", toolchain, target]),
        Privilege::User,
    )
}

fn bpf_linker() -> Result<()> {
    let linker = cargo_home().join("bin/bpf-linker");
    if succeeds(Command::new(&linker).arg("--version")) {
        println!("    bpf-linker: installed at {}", linker.display());
        return Ok(());
    }
    println!(
        "    bpf-linker: building {BPF_LINKER_VERSION} against Debian's LLVM 22 (about a minute)"
    );
    run(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("PATH", tool_path()),
        Privilege::User,
    )?;
    if !succeeds(Command::new(&linker).arg("--version")) {
        bail!(
            "bpf-linker installed but {} --version fails: check that {LLVM_PACKAGE} is installed",
            linker.display()
        );
    }
    Ok(())
}

fn kubernetes_validate() -> Result<()> {
    let venv = kubernetes_validate_venv();
    let bin = venv.join("bin/kubernetes-validate");
    if succeeds(Command::new(&bin).arg("--version")) {
        println!("    kubernetes-validate: installed in {}", venv.display());
        return Ok(());
    }
    println!(
        "    kubernetes-validate: installing {KUBERNETES_VALIDATE} from PyPI into {}",
        venv.display()
    );
    // Debian's python3 (with python3-venv above), not whatever python3 is first on PATH.
    run(
        Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv),
        Privilege::User,
    )?;
    run(
        Command::new(venv.join("bin/pip")).args(["install", "--quiet", KUBERNETES_VALIDATE]),
        Privilege::User,
    )?;
    if !succeeds(Command::new(&bin).arg("--version")) {
        bail!(
            "kubernetes-validate installed but {} --version fails",
            bin.display()
        );
    }
    Ok(())
}

fn otlp_receiver() -> Result<()> {
    let venv = otlp_receiver_venv();
    let python = venv.join("bin/python");
    let imports = "import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc";
    if succeeds(Command::new(&python).args(["-c", imports])) {
        println!(
            "    OTLP receiver (grpcio, opentelemetry-proto): installed in {}",
            venv.display()
        );
        return Ok(());
    }
    println!(
        "    OTLP receiver: installing {} from PyPI into {}",
        OTLP_RECEIVER.join(" "),
        venv.display()
    );
    run(
        Command::new("/usr/bin/python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv),
        Privilege::User,
    )?;
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet"])
            .args(OTLP_RECEIVER),
        Privilege::User,
    )?;
    if !succeeds(Command::new(&python).args(["-c", imports])) {
        bail!(
            "the OTLP receiver's packages installed but {} cannot import grpc and \
             opentelemetry.proto",
            python.display()
        );
    }
    Ok(())
}

/// kubectl with kustomize v5 renders `deploy/overlays/*` in the manifest tests. Debian's
/// `kubernetes-client` is 1.20 (kustomize v2, without `patches` targets), so it is not
/// installed from there: the machine image has to carry kubectl.
fn kubectl() -> Result<()> {
    let out = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    let text = match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).into_owned(),
        _ => bail!(
            "kubectl is not on PATH: the manifest tests run `kubectl kustomize deploy/overlays/*` \
             and need kubectl 1.27+ (kustomize v5); Debian's kubernetes-client is too old"
        ),
    };
    let kustomize = text
        .lines()
        .find_map(|line| line.strip_prefix("Kustomize Version: v"))
        .and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    match kustomize {
        Some(major) if major >= 5 => {
            println!(
                "    kubectl: {}",
                text.lines().next().unwrap_or_default().trim()
            );
            Ok(())
        }
        _ => bail!(
            "kubectl's kustomize is older than v5 (`kubectl version --client`: {}): the \
             manifest tests need kubectl 1.27+",
            text.trim().replace('\n', ", ")
        ),
    }
}
