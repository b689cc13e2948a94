//! The node checks, over a root that tests can point at a temp dir: every path is read below
//! `Node::root`, and the BPF programs and the kernel feature probe come from injected
//! sources.

use std::path::{Path, PathBuf};

use shunt_api::capture::KernelSupport;
use shunt_api::mounts::{MountEntry, parse_mounts};

use super::bpf::{AttachedProgram, ConnectPrograms};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Info,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Info => "info",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One finding: what was checked, what was seen, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

fn finding(check: &'static str, status: Status, detail: String, action: Option<String>) -> Finding {
    Finding {
        check,
        status,
        detail,
        action,
    }
}

/// The node as precheck sees it.
pub struct Node<'a> {
    /// The node's `/` (in a pod with the node's root mounted at /host: `/host`).
    pub root: PathBuf,
    /// The CNI config dir, as a path on the node.
    pub cni_conf_dir: PathBuf,
    /// `shunt-agent --probe-kernel`'s answer, if it could be run (or why not).
    pub kernel_support: Result<KernelSupport, String>,
    pub programs: &'a dyn ConnectPrograms,
}

impl Node<'_> {
    /// A node path below the root.
    fn path(&self, node_path: &Path) -> PathBuf {
        self.root
            .join(node_path.strip_prefix("/").unwrap_or(node_path))
    }
}

/// The oldest kernel eBPF capture runs on: `bpf_get_netns_cookie` in sock_ops (5.15) is the
/// newest feature it needs without the shortcut (shunt-agent's probe, `probe.rs`).
const CAPTURE_KERNEL: (u32, u32) = (5, 15);
/// sockmap links, which pinning the shortcut's sk_msg program needs.
const SHORTCUT_KERNEL: (u32, u32) = (6, 10);
/// Where ztunnel serves its ZDS socket (`/var/run/ztunnel/ztunnel.sock`).
const ZTUNNEL_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

pub fn run(node: &Node<'_>) -> Vec<Finding> {
    let mut findings = kernel(node);
    findings.push(btf(node));
    let mounts = mounts(node);
    let cgroup2 = match &mounts {
        Ok(mounts) => first_of(mounts, "cgroup2"),
        Err(_) => None,
    };
    findings.extend(mount_findings(&mounts));
    findings.extend(cni(node));
    findings.extend(connect_programs(node, cgroup2.as_deref()));
    findings.extend(ztunnel(node));
    findings
}

fn kernel(node: &Node<'_>) -> Vec<Finding> {
    let release = std::fs::read_to_string(node.path(Path::new("/proc/sys/kernel/osrelease")))
        .map(|s| s.trim().to_owned());
    let mut findings = Vec::new();
    let iptables_hint = "run with iptables capture instead (`--set agent.capture=iptables`), \
                         or upgrade the node image to a Linux 5.15+ kernel";
    match &node.kernel_support {
        Ok(support) => {
            findings.push(match &support.ebpf_capture_missing {
                None => finding(
                    "kernel",
                    Status::Ok,
                    format!(
                        "{}: every feature eBPF capture needs (shunt-agent --probe-kernel)",
                        support.probe.kernel_release
                    ),
                    None,
                ),
                Some(missing) => finding(
                    "kernel",
                    Status::Fail,
                    format!(
                        "{}: lacks {} (Linux {}+), so no {}",
                        support.probe.kernel_release,
                        missing.name,
                        missing.since,
                        missing.missing_disables
                    ),
                    Some(iptables_hint.into()),
                ),
            });
            if let Some(missing) = &support.sockmap_shortcut_missing
                && support.ebpf_capture_missing.is_none()
            {
                findings.push(finding(
                    "kernel: sockmap shortcut",
                    Status::Info,
                    format!("lacks {} (Linux {}+)", missing.name, missing.since),
                    Some("leave agent.sockmapShortcut off (the default)".into()),
                ));
            }
        }
        Err(why) => {
            let (status, detail, action) = match release.as_deref().map(version) {
                Ok(Some(v)) if v >= CAPTURE_KERNEL => (
                    Status::Ok,
                    format!(
                        "{}: Linux {}.{}+, which eBPF capture needs (by version only: {why})",
                        release.as_deref().unwrap_or_default(),
                        CAPTURE_KERNEL.0,
                        CAPTURE_KERNEL.1
                    ),
                    None,
                ),
                Ok(Some(_)) => (
                    Status::Fail,
                    format!(
                        "{}: older than Linux {}.{}, which eBPF capture needs",
                        release.as_deref().unwrap_or_default(),
                        CAPTURE_KERNEL.0,
                        CAPTURE_KERNEL.1
                    ),
                    Some(iptables_hint.into()),
                ),
                Ok(None) | Err(_) => (
                    Status::Warn,
                    format!(
                        "cannot tell the kernel version ({}) and {why}",
                        match &release {
                            Ok(text) => format!("unparsable {text:?}"),
                            Err(e) => format!("/proc/sys/kernel/osrelease: {e}"),
                        }
                    ),
                    Some("check `uname -r` is 5.15 or newer".into()),
                ),
            };
            findings.push(finding("kernel", status, detail, action));
            if let Ok(release) = &release
                && version(release).is_some_and(|v| v >= CAPTURE_KERNEL && v < SHORTCUT_KERNEL)
            {
                findings.push(finding(
                    "kernel: sockmap shortcut",
                    Status::Info,
                    format!("{release} is older than 6.10 (sockmap links)"),
                    Some("leave agent.sockmapShortcut off (the default)".into()),
                ));
            }
        }
    }
    findings
}

/// `6.1.0-57-amd64` → (6, 1).
fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn btf(node: &Node<'_>) -> Finding {
    let path = node.path(Path::new("/sys/kernel/btf/vmlinux"));
    if path.exists() {
        finding(
            "BTF",
            Status::Ok,
            "/sys/kernel/btf/vmlinux is there".into(),
            None,
        )
    } else {
        finding(
            "BTF",
            Status::Warn,
            "no /sys/kernel/btf/vmlinux: the kernel was built without CONFIG_DEBUG_INFO_BTF".into(),
            Some(
                "use a node image whose kernel has BTF (GKE COS, EKS AL2023 and Bottlerocket \
                 do); shunt is tested only with BTF"
                    .into(),
            ),
        )
    }
}

/// The node's mounts as its init process sees them (`/proc/1/mounts`: in a pod with the
/// node's /proc at /host/proc, that is the node's view, not the container's).
fn mounts(node: &Node<'_>) -> Result<Vec<MountEntry>, String> {
    let path = node.path(Path::new("/proc/1/mounts"));
    std::fs::read_to_string(&path)
        .map(|text| parse_mounts(&text))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn first_of(mounts: &[MountEntry], fs_type: &str) -> Option<PathBuf> {
    mounts
        .iter()
        .find(|m| m.fs_type == fs_type)
        .map(|m| m.mount_point.clone())
}

fn mount_findings(mounts: &Result<Vec<MountEntry>, String>) -> Vec<Finding> {
    let mounts = match mounts {
        Ok(mounts) => mounts,
        Err(e) => {
            return vec![finding(
                "mounts",
                Status::Fail,
                e.clone(),
                Some("run precheck as root on the node, or pass --root".into()),
            )];
        }
    };
    let cgroup2 = match first_of(mounts, "cgroup2") {
        Some(path) => finding(
            "cgroup2",
            Status::Ok,
            format!("mounted at {}", path.display()),
            None,
        ),
        None => finding(
            "cgroup2",
            Status::Fail,
            if first_of(mounts, "cgroup").is_some() {
                "only cgroup v1 is mounted".into()
            } else {
                "no cgroup2 mount".into()
            },
            Some(
                "shunt attaches its connect() programs to the cgroup2 root: boot the node \
                 with the unified hierarchy (systemd.unified_cgroup_hierarchy=1; GKE COS 97+ \
                 and EKS AL2023 default to it)"
                    .into(),
            ),
        ),
    };
    let bpffs = match first_of(mounts, "bpf") {
        Some(path) => finding(
            "bpffs",
            Status::Ok,
            format!("mounted at {}", path.display()),
            None,
        ),
        None => finding(
            "bpffs",
            Status::Warn,
            "no bpffs mount".into(),
            Some(
                "mount it on the node (`mount -t bpf bpf /sys/fs/bpf`, or a systemd \
                 sys-fs-bpf.mount): the agent's DaemonSet mounts the node's /sys/fs/bpf, and \
                 pins made in a bpffs the agent mounts itself would not outlive its pod"
                    .into(),
            ),
        ),
    };
    vec![cgroup2, bpffs]
}

/// One CNI config file: its name and the plugin types it chains.
struct CniConfig {
    file: String,
    name: String,
    plugins: Vec<String>,
}

fn read_cni_config(path: &Path) -> Result<CniConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("not JSON: {e}"))?;
    let types = |items: &[serde_json::Value]| {
        items
            .iter()
            .filter_map(|p| p["type"].as_str().map(str::to_owned))
            .collect()
    };
    let plugins = match json["plugins"].as_array() {
        Some(plugins) => types(plugins),
        None => types(std::slice::from_ref(&json)),
    };
    Ok(CniConfig {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        name: json["name"].as_str().unwrap_or_default().to_owned(),
        plugins,
    })
}

fn cni(node: &Node<'_>) -> Vec<Finding> {
    let dir = node.path(&node.cni_conf_dir);
    let shown = node.cni_conf_dir.display();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            return vec![finding(
                "CNI",
                Status::Warn,
                format!("cannot read the CNI config dir {shown}: {e}"),
                Some(
                    "on a Kubernetes node, pass the runtime's CNI config dir with \
                     --cni-conf-dir, and set the same as cni.confDir when installing"
                        .into(),
                ),
            )];
        }
    };
    // As libcni: .conf, .conflist and .json files, in name order; the first is the network.
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|ext| ext == "conf" || ext == "conflist" || ext == "json")
        })
        .collect();
    files.sort();
    let Some(primary) = files.first() else {
        return vec![finding(
            "CNI",
            Status::Warn,
            format!("no .conf/.conflist in {shown} yet"),
            Some(
                "the primary CNI writes its config when it starts: install shunt once the \
                 node is Ready"
                    .into(),
            ),
        )];
    };
    let mut findings = Vec::new();
    let configs: Vec<(PathBuf, Result<CniConfig, String>)> = files
        .iter()
        .map(|f| (f.clone(), read_cni_config(f)))
        .collect();
    match &configs[0].1 {
        Ok(config) => findings.push(finding(
            "CNI",
            Status::Ok,
            format!(
                "primary CNI config {}/{} (network {:?}, plugins {})",
                shown,
                config.file,
                config.name,
                config.plugins.join(", ")
            ),
            None,
        )),
        Err(e) => findings.push(finding(
            "CNI",
            Status::Fail,
            format!("primary CNI config {}: {e}", primary.display()),
            Some("the runtime reads this file first: fix or remove it".into()),
        )),
    }
    for (_, config) in &configs {
        let Ok(config) = config else { continue };
        if config.plugins.iter().any(|p| p == "istio-cni") {
            findings.push(finding(
                "Istio CNI",
                Status::Warn,
                format!("{} chains istio-cni", config.file),
                Some(
                    "istio-cni sets up Istio's own redirection (sidecar iptables or ambient's \
                     ztunnel) for the pods it selects: keep shunt's and Istio's pods apart \
                     (label namespaces for one of them only), or uninstall istio-cni from \
                     nodes shunt runs on"
                        .into(),
                ),
            ));
        }
        if config.plugins.iter().any(|p| p == "cilium-cni") {
            findings.push(finding(
                "Cilium",
                Status::Info,
                format!(
                    "{} uses cilium-cni (Cilium, or GKE Dataplane V2, which is Cilium)",
                    config.file
                ),
                Some("see the connect() check for Cilium's socket load balancer".into()),
            ));
        }
    }
    findings
}

fn connect_programs(node: &Node<'_>, cgroup2: Option<&Path>) -> Vec<Finding> {
    let Some(cgroup2) = cgroup2 else {
        return Vec::new();
    };
    let programs = match node.programs.attached(&node.path(cgroup2)) {
        Ok(programs) => programs,
        Err(e) => {
            return vec![finding(
                "connect() programs",
                Status::Warn,
                format!("cannot list the programs on {}: {e}", cgroup2.display()),
                Some("run precheck as root on the node".into()),
            )];
        }
    };
    let (own, others): (Vec<&AttachedProgram>, Vec<&AttachedProgram>) =
        programs.iter().partition(|p| p.name.starts_with("shunt_"));
    let mut findings = Vec::new();
    if others.is_empty() {
        findings.push(finding(
            "connect() programs",
            Status::Ok,
            format!(
                "no other program rewrites connect() at {}",
                cgroup2.display()
            ),
            None,
        ));
    }
    if !own.is_empty() {
        findings.push(finding(
            "connect() programs",
            Status::Info,
            format!(
                "shunt's own are attached ({}): an agent runs here",
                names(&own)
            ),
            None,
        ));
    }
    let (cilium, foreign): (Vec<&AttachedProgram>, Vec<&AttachedProgram>) =
        others.into_iter().partition(|p| p.name.starts_with("cil_"));
    if !cilium.is_empty() {
        findings.push(finding(
            "Cilium socket LB",
            Status::Warn,
            format!(
                "Cilium's socket load balancer rewrites connect() at {} ({}): pods' \
                 connections to a Service IP reach shunt already turned into a backend pod IP, \
                 so Service routing (VirtualService hosts, DestinationRule subsets) no longer \
                 applies",
                cgroup2.display(),
                names(&cilium)
            ),
            Some(
                "limit Cilium's socket LB to the host namespace, as Istio requires too: \
                 Helm `socketLB.hostNamespaceOnly=true` (cilium-config \
                 `bpf-lb-sock-hostns-only: \"true\"`); on GKE Dataplane V2 this is not \
                 configurable, so test Service routing there before relying on it"
                    .into(),
            ),
        ));
    }
    if !foreign.is_empty() {
        findings.push(finding(
            "connect() programs",
            Status::Warn,
            format!(
                "other programs rewrite connect() at {}: {}",
                cgroup2.display(),
                names(&foreign)
            ),
            Some(
                "shunt attaches beside them and the kernel runs every attached program: find \
                 their owner (`bpftool prog show id N`) and make sure they leave pod \
                 connections alone"
                    .into(),
            ),
        ));
    }
    findings
}

fn names(programs: &[&AttachedProgram]) -> String {
    programs
        .iter()
        .map(|p| {
            let name = if p.name.is_empty() {
                "(unnamed)"
            } else {
                &p.name
            };
            format!("{name} id {} on {}", p.id, p.hook)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn ztunnel(node: &Node<'_>) -> Vec<Finding> {
    let mut seen = Vec::new();
    if node.path(Path::new(ZTUNNEL_SOCKET)).exists() {
        seen.push(format!("its socket {ZTUNNEL_SOCKET}"));
    }
    if let Ok(entries) = std::fs::read_dir(node.path(Path::new("/proc"))) {
        let pids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter(|e| {
                std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "ztunnel")
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        if !pids.is_empty() {
            seen.push(format!("process {}", pids.join(", ")));
        }
    }
    if seen.is_empty() {
        return vec![finding(
            "ztunnel",
            Status::Ok,
            "not running here".into(),
            None,
        )];
    }
    vec![finding(
        "ztunnel",
        Status::Warn,
        format!(
            "Istio ambient's ztunnel runs on this node ({})",
            seen.join(", ")
        ),
        Some(
            "shunt also captures pods labelled istio.io/dataplane-mode=ambient: run one of \
             them per node (e.g. a nodeSelector on one DaemonSet and its negation on the \
             other), or opt pods into shunt with shunt.io/capture=enabled only"
                .into(),
        ),
    )]
}
