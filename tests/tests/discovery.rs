//! Netns discovery's `/proc` scan on real kernel objects: pod netns holding the pod's IP,
//! `sleep` processes inside them placed in cgroup2 folders named as kubelet names them (both
//! drivers), all under a cgroup of the test's own. Root only (skips, saying so, otherwise).

use std::fmt::Display;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shunt_agent::discovery::proc_scan::{self, Rejection, ScanTarget};
use shunt_tests::Names;
use shunt_tests::cgroup::Cgroup;
use shunt_tests::netns::{self, Netns};
use shunt_tests::process::{Placement, Process};

const TEST: &str = "discovery::the_scan_pairs_pods_with_their_oldest_process_netns";

trait OrPanic<T> {
    fn or_panic(self, what: &str) -> T;
}

impl<T, E: Display> OrPanic<T> for Result<T, E> {
    fn or_panic(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// Everything the test makes, removed on drop, pass or fail.
struct Fixture {
    names: Names,
    root: Cgroup,
    netns: Vec<Netns>,
    processes: Vec<Process>,
    logs: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let names = Names::new(TEST);
        let root = Cgroup::named(&names.node_cgroup()).or_panic("cgroup2");
        let logs = names.temp_dir();
        let mut fixture = Self {
            names,
            root,
            netns: Vec::new(),
            processes: Vec::new(),
            logs,
        };
        fixture.sweep();
        fixture.root = Cgroup::create(&fixture.names.node_cgroup()).or_panic("cgroup");
        std::fs::create_dir_all(&fixture.logs).or_panic("log dir");
        fixture
    }

    /// A netns holding `ip`, when given.
    fn netns(&mut self, name: &str, ip: Option<Ipv4Addr>) -> PathBuf {
        let netns = Netns::create(&self.names.pod_netns(name).or_panic("name")).or_panic("netns");
        self.netns.push(netns.clone());
        if let Some(ip) = ip {
            // On its loopback: the kernel may have no dummy or veth module to spare, and an
            // address is an address to the scan.
            netns
                .ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])
                .or_panic("address");
        }
        netns.path()
    }

    /// `sleep` in `netns` (or the test's own) and cgroup `<root>/<cgroup>`; returns its pid.
    fn process(&mut self, netns: Option<&Path>, cgroup: &str) -> u32 {
        let folder = self.root.create_nested(cgroup).or_panic("cgroup folder");
        let mut command = Command::new("sleep");
        command.arg("120");
        let label = format!("{:02}-sleep", self.processes.len());
        let placement = Placement {
            netns: netns.map(Path::to_path_buf),
            cgroup: Some(folder.path().to_path_buf()),
        };
        let process = Process::spawn(&label, command, &placement, &self.logs).or_panic("sleep");
        let pid = process.pid();
        self.processes.push(process);
        // The next process starts at least a clock tick (10 ms at 100 Hz) later, so "oldest"
        // is decided by start time, not by a tie.
        std::thread::sleep(Duration::from_millis(30));
        pid
    }

    fn sweep(&self) {
        if let Err(e) = self.root.remove_tree() {
            eprintln!("{TEST}: cleanup: {e}");
        }
        for name in netns::list().unwrap_or_default() {
            if self.names.owns_netns(&name) {
                let _gone = netns::delete(&name);
            }
        }
        let _gone = std::fs::remove_dir_all(&self.logs);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.processes.clear(); // Stops them.
        self.sweep();
    }
}

fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).or_panic("stat");
    proc_scan::start_time_of_stat(&stat).unwrap_or_else(|| panic!("no start time in {stat}"))
}

fn same_netns(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let id = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| (m.dev(), m.ino()))
            .or_panic("netns")
    };
    id(a) == id(b)
}

#[test]
fn the_scan_pairs_pods_with_their_oldest_process_netns() {
    if shunt_tests::skip_unless_root(TEST) {
        return;
    }
    let mut f = Fixture::new();
    let ip = |last| Ipv4Addr::new(10, 247, 0, last);
    let uid = |n: u8| format!("9d1c6f3e-4b2a-4e5f-8c7d-0000000000{n:02x}");
    let systemd = |n: u8| uid(n).replace('-', "_");
    // A netns without any pod's IP.
    let stray = f.netns("stray", None);

    // a: cgroupfs, burstable; its oldest process is in its netns, a younger one elsewhere.
    let a_netns = f.netns("a", Some(ip(1)));
    let a_oldest = f.process(
        Some(&a_netns),
        &format!("kubepods/burstable/pod{}/pause", uid(1)),
    );
    let a_younger = f.process(
        Some(&stray),
        &format!("kubepods/burstable/pod{}/app", uid(1)),
    );
    assert!(
        start_time(a_oldest) < start_time(a_younger),
        "fixture: distinct start times"
    );

    // b: systemd, besteffort.
    let b_netns = f.netns("b", Some(ip(2)));
    let b_pid = f.process(
        Some(&b_netns),
        &format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-b.scope",
            systemd(2)
        ),
    );

    // c: cgroupfs, Guaranteed (no QoS folder); its oldest process is in a netns without its
    // IP: rejected, though a younger one sits in a netns that has it.
    let c_netns = f.netns("c", Some(ip(3)));
    let c_oldest = f.process(Some(&stray), &format!("kubepods/pod{}/pause", uid(3)));
    let c_younger = f.process(Some(&c_netns), &format!("kubepods/pod{}/app", uid(3)));
    assert!(
        start_time(c_oldest) < start_time(c_younger),
        "fixture: distinct start times"
    );

    // d: systemd, Guaranteed, in the host's netns (the test's, and so the scanner's own),
    // whose loopback does hold the IP asked for: the host netns is never a pod's.
    let d_pid = f.process(
        None,
        &format!(
            "kubepods.slice/kubepods-pod{}.slice/cri-containerd-d.scope",
            systemd(4)
        ),
    );

    // e: burstable (systemd) with its netns, but not asked for: not reported.
    let e_netns = f.netns("e", Some(ip(5)));
    f.process(
        Some(&e_netns),
        &format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/x.scope",
            systemd(5)
        ),
    );

    let targets = [
        (uid(1), ip(1)),
        (uid(2), ip(2)),
        (uid(3), ip(3)),
        (uid(4), Ipv4Addr::LOCALHOST),
        // No process at all.
        (uid(6), ip(6)),
    ]
    .map(|(uid, ip)| ScanTarget { uid, ip });
    let report = proc_scan::scan(Path::new("/proc"), &targets).or_panic("scan");

    let mut found: Vec<(String, u32)> = report
        .found
        .iter()
        .map(|f| (f.uid.clone(), f.pid))
        .collect();
    found.sort();
    assert_eq!(
        found,
        vec![(uid(1), a_oldest), (uid(2), b_pid)],
        "{report:?}"
    );
    for (found, netns) in report.found.iter().zip([&a_netns, &b_netns]) {
        assert_eq!(
            found.netns,
            PathBuf::from(format!("/proc/{}/ns/net", found.pid))
        );
        assert!(
            same_netns(&found.netns, netns),
            "{found:?} is not {}",
            netns.display()
        );
    }

    let mut rejected: Vec<(String, u32, Rejection)> = report
        .rejected
        .iter()
        .map(|r| (r.uid.clone(), r.pid, r.reason.clone()))
        .collect();
    rejected.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        rejected,
        vec![
            (uid(3), c_oldest, Rejection::MissingIp { ip: ip(3) }),
            (uid(4), d_pid, Rejection::HostNetns),
        ],
        "{report:?}"
    );
}
