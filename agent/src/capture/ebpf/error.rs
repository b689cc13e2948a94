//! Everything that can go wrong loading, attaching, pinning and adopting capture.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use shunt_api::capture::Feature;

use shunt_common::map_names;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("eBPF object not embedded: run `cargo xtask build-ebpf` then rebuild the agent")]
    NotEmbedded,
    #[error("invalid instance name {instance:?}: {reason}")]
    InvalidInstance { instance: String, reason: String },
    #[error(transparent)]
    Mounts(#[from] super::mounts::Error),
    #[error("could not open cgroup {}: {error}", path.display())]
    OpenCgroup {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the kernel lacks {} (Linux {}+), which {} needs; kernel probe: see `shuntctl status`",
        feature.name, feature.since, feature.missing_disables)]
    Unsupported { feature: Box<Feature> },
    #[error("could not create pin folder {}: {error}", path.display())]
    PinDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "could not load the eBPF object: {error} — if the pinned maps under {} come from \
         another shunt version, remove them with `shunt-agent --uninstall`",
        pin_dir.display()
    )]
    Object {
        pin_dir: PathBuf,
        error: Box<aya::EbpfError>,
    },
    #[error(
        "the embedded eBPF object has no program {program}: rebuild it with `cargo xtask build-ebpf`"
    )]
    MissingProgram { program: &'static str },
    #[error("the embedded eBPF object has no map {map}: rebuild it with `cargo xtask build-ebpf`")]
    MissingMap { map: &'static str },
    #[error("eBPF program {program} has an unexpected type: {error}")]
    ProgramKind {
        program: &'static str,
        error: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF program {program} has unexpected type {found}")]
    UnexpectedProgramType {
        program: &'static str,
        found: String,
    },
    #[error("map {map} has unexpected type {found}")]
    UnexpectedMapType { map: &'static str, found: String },
    /// The verifier's full log is part of `error`.
    #[error("the kernel rejected eBPF program {program}: {error}")]
    ProgramLoad {
        program: &'static str,
        error: Box<aya::programs::ProgramError>,
    },
    #[error("could not attach eBPF program {program} to {target}: {error}")]
    Attach {
        program: &'static str,
        target: String,
        error: Box<aya::programs::ProgramError>,
    },
    #[error(
        "eBPF program {program} was attached without a bpf_link, so it cannot be pinned: {error}"
    )]
    NotALink {
        program: &'static str,
        error: Box<aya::programs::links::LinkError>,
    },
    #[error("could not pin link at {}: {error}", path.display())]
    Pin {
        path: PathBuf,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "could not open pinned link {}: {error} — remove stale pins with `shunt-agent --uninstall`",
        path.display()
    )]
    Adopt {
        path: PathBuf,
        error: Box<aya::programs::links::LinkError>,
    },
    #[error("could not remove pin {}: {error}", path.display())]
    Unpin {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{action} map {map} failed: {error}")]
    Map {
        map: &'static str,
        action: &'static str,
        error: Box<aya::maps::MapError>,
    },
    #[error(
        "could not put the proxy's inbound listener for pod {pod_ip} into {}: {error} — it \
         must be a listening TCP socket",
        map_names::INBOUND_LISTENERS
    )]
    InboundListener {
        pod_ip: Ipv4Addr,
        error: Box<aya::maps::MapError>,
    },
    #[error("pod in netns {netns_cookie}: {field} {reason}")]
    InvalidPod {
        netns_cookie: u64,
        field: &'static str,
        reason: String,
    },
    #[error("unknown map {name:?}; the maps are: {}", map_names::ALL.join(", "))]
    UnknownMap { name: String },
    #[error(
        "cannot read the programs' log ring {}: {error} — if it was pinned by another shunt \
         version, `shunt-agent --uninstall` removes it; or run without --bpf-log",
        map_names::AYA_LOGS
    )]
    BpfLog { error: Box<aya_log::Error> },
}
