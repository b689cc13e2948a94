use std::path::{Path, PathBuf};

use shunt_api::capture::{Feature, KernelProbe, KernelSupport};

use super::bpf::{AttachedProgram, ConnectPrograms};
use super::checks::{self, Finding, Node, Status};

/// Attached programs as a test says.
struct Fake(Result<Vec<AttachedProgram>, String>, PathBuf);

impl ConnectPrograms for Fake {
    fn attached(&self, cgroup: &Path) -> Result<Vec<AttachedProgram>, String> {
        assert_eq!(
            cgroup, self.1,
            "queried below the root, at the cgroup2 mount"
        );
        self.0.clone()
    }
}

fn program(name: &str) -> AttachedProgram {
    AttachedProgram {
        hook: "connect4",
        id: 7,
        name: name.into(),
    }
}

/// A healthy node: 6.12, BTF, cgroup2 at an unusual path, bpffs, Calico.
fn layout(root: &Path) {
    let write = |path: &str, text: &str| {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("proc/sys/kernel/osrelease", "6.12.118+deb12-amd64\n");
    write(
        "proc/1/mounts",
        "sysfs /sys sysfs rw 0 0\ncgroup2 /run/my\\040cgroup cgroup2 rw 0 0\n\
         bpf /sys/fs/bpf bpf rw 0 0\n",
    );
    write("sys/kernel/btf/vmlinux", "");
    write(
        "etc/cni/net.d/10-calico.conflist",
        r#"{"name": "k8s-pod-network", "plugins": [{"type": "calico"}, {"type": "portmap"}]}"#,
    );
    write(
        "etc/cni/net.d/99-loopback.conf",
        r#"{"name": "lo", "type": "loopback"}"#,
    );
    write("etc/cni/net.d/README", "not a config");
    std::fs::create_dir_all(root.join("run/my cgroup")).unwrap();
}

fn support(missing: Option<&str>) -> KernelSupport {
    let feature = |name: &str| Feature {
        name: name.to_owned().into(),
        supported: Some(false),
        since: "5.15".into(),
        missing_disables: "original-destination recovery".into(),
        error: None,
    };
    KernelSupport {
        probe: KernelProbe {
            kernel_release: "5.10.0-test".into(),
            btf_vmlinux: true,
            cgroup2_mount: None,
            bpffs_mount: None,
            features: Vec::new(),
        },
        ebpf_capture_missing: missing.map(feature),
        sockmap_shortcut_missing: None,
    }
}

type Change = fn(&Path);

fn status_of<'a>(findings: &'a [Finding], check: &str) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.check == check).collect()
}

#[test]
fn findings_on_node_layouts() {
    struct Case {
        name: &'static str,
        change: Change,
        kernel: Result<KernelSupport, String>,
        programs: Result<Vec<AttachedProgram>, String>,
        check: &'static str,
        status: Status,
        detail: &'static str,
        action: Option<&'static str>,
    }
    let nothing: Change = |_| {};
    let no_probe = || Err("no shunt-agent".to_owned());
    let cases = [
        Case {
            name: "healthy: kernel by version",
            change: nothing,
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "kernel",
            status: Status::Ok,
            detail: "6.12.118+deb12-amd64: Linux 5.15+",
            action: None,
        },
        Case {
            name: "old kernel by version",
            change: |root| {
                std::fs::write(root.join("proc/sys/kernel/osrelease"), "5.10.0-9\n").unwrap()
            },
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "kernel",
            status: Status::Fail,
            detail: "older than Linux 5.15",
            action: Some("agent.capture=iptables"),
        },
        Case {
            name: "the agent's probe decides over the version",
            change: nothing,
            kernel: Ok(support(Some("bpf_get_netns_cookie in sock_ops"))),
            programs: Ok(vec![]),
            check: "kernel",
            status: Status::Fail,
            detail: "lacks bpf_get_netns_cookie in sock_ops (Linux 5.15+)",
            action: Some("agent.capture=iptables"),
        },
        Case {
            name: "probe finds everything",
            change: nothing,
            kernel: Ok(support(None)),
            programs: Ok(vec![]),
            check: "kernel",
            status: Status::Ok,
            detail: "shunt-agent --probe-kernel",
            action: None,
        },
        Case {
            name: "no BTF",
            change: |root| std::fs::remove_file(root.join("sys/kernel/btf/vmlinux")).unwrap(),
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "BTF",
            status: Status::Warn,
            detail: "CONFIG_DEBUG_INFO_BTF",
            action: Some("BTF"),
        },
        Case {
            name: "cgroup2 found where it is mounted",
            change: nothing,
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "cgroup2",
            status: Status::Ok,
            detail: "mounted at /run/my cgroup",
            action: None,
        },
        Case {
            name: "cgroup v1 only",
            change: |root| {
                std::fs::write(
                    root.join("proc/1/mounts"),
                    "cgroup /sys/fs/cgroup/cpu cgroup rw 0 0\n",
                )
                .unwrap();
            },
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "cgroup2",
            status: Status::Fail,
            detail: "only cgroup v1",
            action: Some("unified_cgroup_hierarchy"),
        },
        Case {
            name: "no bpffs",
            change: |root| {
                std::fs::write(
                    root.join("proc/1/mounts"),
                    "cgroup2 /run/my\\040cgroup cgroup2 rw 0 0\n",
                )
                .unwrap();
            },
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "bpffs",
            status: Status::Warn,
            detail: "no bpffs mount",
            action: Some("mount -t bpf bpf /sys/fs/bpf"),
        },
        Case {
            name: "primary CNI is the first config by name",
            change: nothing,
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "CNI",
            status: Status::Ok,
            detail: "/etc/cni/net.d/10-calico.conflist (network \"k8s-pod-network\", plugins calico, portmap)",
            action: None,
        },
        Case {
            name: "a broken primary config",
            change: |root| std::fs::write(root.join("etc/cni/net.d/05-bad.conf"), "{").unwrap(),
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "CNI",
            status: Status::Fail,
            detail: "05-bad.conf: not JSON",
            action: Some("fix or remove it"),
        },
        Case {
            name: "no CNI config yet",
            change: |root| {
                for f in ["10-calico.conflist", "99-loopback.conf"] {
                    std::fs::remove_file(root.join("etc/cni/net.d").join(f)).unwrap();
                }
            },
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "CNI",
            status: Status::Warn,
            detail: "no .conf/.conflist",
            action: Some("once the node is Ready"),
        },
        Case {
            name: "Istio's CNI chained",
            change: |root| {
                std::fs::write(
                    root.join("etc/cni/net.d/10-calico.conflist"),
                    r#"{"name": "k8s-pod-network", "plugins": [{"type": "calico"}, {"type": "istio-cni"}]}"#,
                )
                .unwrap();
            },
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "Istio CNI",
            status: Status::Warn,
            detail: "10-calico.conflist chains istio-cni",
            action: Some("keep shunt's and Istio's pods apart"),
        },
        Case {
            name: "Cilium's socket LB",
            change: nothing,
            kernel: no_probe(),
            programs: Ok(vec![program("cil_sock4_conne")]),
            check: "Cilium socket LB",
            status: Status::Warn,
            detail: "cil_sock4_conne id 7 on connect4",
            action: Some("socketLB.hostNamespaceOnly=true"),
        },
        Case {
            name: "another program",
            change: nothing,
            kernel: no_probe(),
            programs: Ok(vec![program("shunt_connect4"), program("")]),
            check: "connect() programs",
            status: Status::Warn,
            detail: "(unnamed) id 7 on connect4",
            action: Some("bpftool prog show id N"),
        },
        Case {
            name: "shunt's own program",
            change: nothing,
            kernel: no_probe(),
            programs: Ok(vec![program("shunt_connect4")]),
            check: "connect() programs",
            status: Status::Info,
            detail: "an agent runs here",
            action: None,
        },
        Case {
            name: "programs cannot be listed",
            change: nothing,
            kernel: no_probe(),
            programs: Err("needs root".into()),
            check: "connect() programs",
            status: Status::Warn,
            detail: "needs root",
            action: Some("as root"),
        },
        Case {
            name: "ztunnel by process",
            change: |root| {
                std::fs::create_dir_all(root.join("proc/4242")).unwrap();
                std::fs::write(root.join("proc/4242/comm"), "ztunnel\n").unwrap();
            },
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "ztunnel",
            status: Status::Warn,
            detail: "process 4242",
            action: Some("istio.io/dataplane-mode=ambient"),
        },
        Case {
            name: "ztunnel by socket",
            change: |root| {
                std::fs::create_dir_all(root.join("var/run/ztunnel")).unwrap();
                std::fs::write(root.join("var/run/ztunnel/ztunnel.sock"), "").unwrap();
            },
            kernel: no_probe(),
            programs: Ok(vec![]),
            check: "ztunnel",
            status: Status::Warn,
            detail: "its socket /var/run/ztunnel/ztunnel.sock",
            action: Some("one of them per node"),
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        layout(dir.path());
        (case.change)(dir.path());
        let fake = Fake(case.programs, dir.path().join("run/my cgroup"));
        let findings = checks::run(&Node {
            root: dir.path().to_owned(),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            kernel_support: case.kernel,
            programs: &fake,
        });
        let matching = status_of(&findings, case.check);
        let hit = matching
            .iter()
            .find(|f| f.status == case.status && f.detail.contains(case.detail));
        let Some(hit) = hit else {
            panic!(
                "{}: no {:?} {} finding with {:?} in {findings:#?}",
                case.name, case.status, case.check, case.detail
            );
        };
        match case.action {
            Some(action) => assert!(
                hit.action.as_deref().is_some_and(|a| a.contains(action)),
                "{}: action {:?} lacks {action:?}",
                case.name,
                hit.action
            ),
            None => assert!(hit.action.is_none(), "{}: {:?}", case.name, hit.action),
        }
    }
}

#[test]
fn the_healthy_layout_has_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    layout(dir.path());
    let fake = Fake(Ok(Vec::new()), dir.path().join("run/my cgroup"));
    let findings = checks::run(&Node {
        root: dir.path().to_owned(),
        cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
        kernel_support: Ok(support(None)),
        programs: &fake,
    });
    let bad: Vec<&Finding> = findings
        .iter()
        .filter(|f| matches!(f.status, Status::Warn | Status::Fail))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
}
