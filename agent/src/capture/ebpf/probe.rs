//! What the running kernel offers shunt, and what each missing piece disables.

use shunt_api::capture::{Feature, KernelProbe, KernelSupport};
use std::path::Path;

use aya::programs::ProgramType;
use aya::sys::{BpfHelper, is_helper_supported, is_program_supported};
use aya::util::KernelVersion;

use super::mounts;

const BTF_VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Which check answers whether a feature is there.
enum Check {
    Program(ProgramType),
    Helper(ProgramType, BpfHelper),
    Kernel(KernelVersion),
}

struct Requirement {
    name: &'static str,
    since: &'static str,
    check: Check,
    missing_disables: &'static str,
    /// Only the sockmap shortcut needs it.
    shortcut_only: bool,
}

const REQUIREMENTS: &[Requirement] = &[
    Requirement {
        name: "cgroup/connect4 programs",
        since: "4.17",
        check: Check::Program(ProgramType::CgroupSockAddr),
        missing_disables: "outbound capture",
        shortcut_only: false,
    },
    Requirement {
        name: "sock_ops programs",
        since: "4.13",
        check: Check::Program(ProgramType::SockOps),
        missing_disables: "original-destination recovery and the sockmap shortcut",
        shortcut_only: false,
    },
    Requirement {
        name: "bpf_get_netns_cookie in sock_ops",
        since: "5.15",
        check: Check::Helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_get_netns_cookie),
        missing_disables: "original-destination recovery (sock_ops cannot tell pods apart)",
        shortcut_only: false,
    },
    Requirement {
        // Never missing where the netns cookie is there (5.15): no perf-buffer fallback.
        name: "BPF ring buffers in sock_ops",
        since: "5.8",
        check: Check::Helper(ProgramType::SockOps, BpfHelper::BPF_FUNC_ringbuf_output),
        missing_disables: "the sock_ops program, which sends kernel TCP telemetry through one",
        shortcut_only: false,
    },
    Requirement {
        name: "cgroup/getsockopt programs",
        since: "5.3",
        check: Check::Program(ProgramType::CgroupSockopt),
        missing_disables: "SO_ORIGINAL_DST answers: the proxy cannot tell where captured \
                           connections were going",
        shortcut_only: false,
    },
    Requirement {
        name: "sk_lookup programs",
        since: "5.9",
        check: Check::Program(ProgramType::SkLookup),
        missing_disables: "inbound capture",
        shortcut_only: false,
    },
    Requirement {
        name: "sk_msg programs",
        since: "4.17",
        check: Check::Program(ProgramType::SkMsg),
        missing_disables: "the sockmap shortcut (--sockmap-shortcut)",
        shortcut_only: true,
    },
    Requirement {
        name: "bpf_get_netns_cookie in sk_msg",
        since: "5.15",
        check: Check::Helper(ProgramType::SkMsg, BpfHelper::BPF_FUNC_get_netns_cookie),
        missing_disables: "the sockmap shortcut (--sockmap-shortcut)",
        shortcut_only: true,
    },
    Requirement {
        name: "sockmap links (pinning sk_msg)",
        since: "6.10",
        check: Check::Kernel(KernelVersion::new(6, 10, 0)),
        missing_disables: "the sockmap shortcut (--sockmap-shortcut)",
        shortcut_only: true,
    },
];

/// Probes the running kernel. Never fails: what cannot be probed is reported as unknown.
pub fn probe() -> KernelProbe {
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"));
    KernelProbe {
        kernel_release,
        btf_vmlinux: Path::new(BTF_VMLINUX).exists(),
        cgroup2_mount: mounts::find_cgroup2().ok().flatten(),
        bpffs_mount: mounts::find_bpffs().ok().flatten(),
        features: REQUIREMENTS.iter().map(check).collect(),
    }
}

fn check(requirement: &Requirement) -> Feature {
    let result: Result<bool, String> = match requirement.check {
        Check::Program(program_type) => {
            is_program_supported(program_type).map_err(|e| e.to_string())
        }
        Check::Helper(program_type, helper) => {
            is_helper_supported(program_type, helper).map_err(|e| e.to_string())
        }
        Check::Kernel(minimum) => KernelVersion::current()
            .map(|current| current >= minimum)
            .map_err(|e| e.to_string()),
    };
    let (supported, error) = match result {
        Ok(supported) => (Some(supported), None),
        Err(error) => (None, Some(error)),
    };
    Feature {
        name: requirement.name.into(),
        supported,
        since: requirement.since.into(),
        missing_disables: requirement.missing_disables.into(),
        error,
    }
}

/// Probes the running kernel and says what each way of running eBPF capture lacks.
pub fn kernel_support() -> KernelSupport {
    let probe = probe();
    KernelSupport {
        ebpf_capture_missing: first_missing(&probe, false).cloned(),
        sockmap_shortcut_missing: first_missing(&probe, true).cloned(),
        probe,
    }
}

/// The first missing feature of `probe` that capture needs with these options.
pub fn first_missing(probe: &KernelProbe, sockmap_shortcut: bool) -> Option<&Feature> {
    probe
        .features
        .iter()
        .zip(REQUIREMENTS)
        .find_map(|(feature, requirement)| {
            let needed = sockmap_shortcut || !requirement.shortcut_only;
            (needed && feature.is_missing()).then_some(feature)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_with(missing: &str) -> KernelProbe {
        KernelProbe {
            kernel_release: "test".into(),
            btf_vmlinux: true,
            cgroup2_mount: None,
            bpffs_mount: None,
            features: REQUIREMENTS
                .iter()
                .map(|r| Feature {
                    name: r.name.into(),
                    supported: Some(r.name != missing),
                    since: r.since.into(),
                    missing_disables: r.missing_disables.into(),
                    error: None,
                })
                .collect(),
        }
    }

    #[test]
    fn shortcut_features_only_matter_with_the_shortcut_on() {
        let cases = [
            ("sk_lookup programs", false, Some("sk_lookup programs")),
            ("sk_lookup programs", true, Some("sk_lookup programs")),
            ("sockmap links (pinning sk_msg)", false, None),
            (
                "sockmap links (pinning sk_msg)",
                true,
                Some("sockmap links (pinning sk_msg)"),
            ),
            ("nothing", true, None),
        ];
        for (missing, shortcut, expected) in cases {
            let probe = probe_with(missing);
            assert_eq!(
                first_missing(&probe, shortcut).map(|f| &*f.name),
                expected,
                "{missing} missing, shortcut {shortcut}"
            );
        }
    }

    #[test]
    fn an_unknown_result_is_not_missing() {
        let mut probe = probe_with("nothing");
        for feature in &mut probe.features {
            feature.supported = None;
        }
        assert!(first_missing(&probe, true).is_none());
    }
}
