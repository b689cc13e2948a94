//! What `GET /status` reports of capture, in either mode: eBPF's programs, links, maps and
//! counters with the kernel probe, or iptables' rules per pod.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How the agent redirects captured pods' traffic to the proxy (`--capture`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum CaptureMode {
    /// eBPF programs at the socket layer (connect4, sk_lookup, ...).
    #[default]
    Ebpf,
    /// Istio-style nat rules in each pod's netns; no eBPF at all.
    Iptables,
}

impl CaptureMode {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Ebpf => "ebpf",
            Self::Iptables => "iptables",
        }
    }
}

/// What `shuntctl status` shows of capture.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaptureStatus {
    pub instance: String,
    pub pin_dir: PathBuf,
    pub bpffs: PathBuf,
    pub cgroup: PathBuf,
    pub sockmap_shortcut: bool,
    pub programs: Vec<ProgramStatus>,
    /// The per-pod attach points: one sk_lookup link per captured pod's netns.
    pub pods: Vec<PodAttachment>,
    pub maps: Vec<MapStatus>,
    /// `STATS`, summed over CPUs, by counter name.
    pub counters: BTreeMap<String, u64>,
    pub kernel: KernelProbe,
    /// Parts of the status that could not be read.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgramStatus {
    pub name: Cow<'static, str>,
    /// ELF section, e.g. `cgroup/connect4`.
    pub program_type: Cow<'static, str>,
    /// A cgroup folder, a map, or the pods' network namespaces.
    pub attach_point: String,
    pub attachment: Attachment,
    pub link_pin: Option<PathBuf>,
    /// Of the pinned link, read at status time.
    pub link: Option<LinkIds>,
    /// Set when an adopted link runs a different build of the program than this agent loaded.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodAttachment {
    pub netns_cookie: u64,
    pub link_pin: PathBuf,
    pub link: Option<LinkIds>,
    /// From `MESHED_NETNS`; `None` when the netns has a link but no entry.
    pub pod_ip: Option<Ipv4Addr>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapStatus {
    pub name: Cow<'static, str>,
    pub pin: PathBuf,
    pub entries: usize,
    pub max_entries: u32,
}

/// How a program's link came to be there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attachment {
    /// This agent attached it and pinned the link.
    Attached,
    /// The link was already pinned (an earlier agent attached it) and was kept as it is.
    Adopted,
    /// Loaded only: the program is not needed with these options.
    NotAttached,
    /// Attached to each captured pod's network namespace (see the pods in the status).
    PerPod,
}

/// The ids of a pinned link and of the program it runs.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct LinkIds {
    pub link_id: u32,
    pub program_id: u32,
}

/// The kernel feature probe shown by `shuntctl status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelProbe {
    /// `uname -r`.
    pub kernel_release: String,
    /// Kernel BTF at /sys/kernel/btf/vmlinux.
    pub btf_vmlinux: bool,
    pub cgroup2_mount: Option<PathBuf>,
    pub bpffs_mount: Option<PathBuf>,
    pub features: Vec<Feature>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Feature {
    pub name: Cow<'static, str>,
    /// `None` when probing failed (see `error`).
    pub supported: Option<bool>,
    /// The first Linux release that has it.
    pub since: Cow<'static, str>,
    /// What shunt cannot do without it.
    pub missing_disables: Cow<'static, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Feature {
    pub fn is_missing(&self) -> bool {
        self.supported == Some(false)
    }
}

/// What `shuntctl status` shows of iptables capture.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IptablesStatus {
    /// `iptables --version`, e.g. `iptables v1.8.9 (nf_tables)`.
    pub iptables: String,
    pub record_dir: PathBuf,
    pub pods: Vec<PodRulesStatus>,
    /// Parts of the status that could not be read.
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodRulesStatus {
    pub netns_cookie: u64,
    pub netns: PathBuf,
    pub pod_ip: Ipv4Addr,
    /// shunt's rules found in the pod's nat table, as `iptables -S` prints them.
    pub rules: Vec<String>,
}

/// What `shunt-agent --probe-kernel` prints: the probe `shuntctl status` shows, and for each
/// way of running eBPF capture the first feature it needs that the kernel lacks (`None`: it
/// can run). Privileged tests skip by it, and the kernel matrix (`cargo xtask kernel-matrix`)
/// reports it per kernel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelSupport {
    pub probe: KernelProbe,
    /// What eBPF capture needs without the shortcut.
    pub ebpf_capture_missing: Option<Feature>,
    /// What eBPF capture with `--sockmap-shortcut` needs.
    pub sockmap_shortcut_missing: Option<Feature>,
}
