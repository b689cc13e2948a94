//! Finds the netns of pods that are already running (at start, after an agent restart) by
//! scanning `/proc`, as istio-cni's node agent does: each process's cgroup names its pod's
//! UID (kubelet's cgroup layout), the oldest process of a pod (the sandbox's pause process)
//! holds the pod's netns, and the pairing counts only if that netns holds the pod's IP.
//!
//! The proc root is configurable (`--proc-root`): in a DaemonSet the host's `/proc` is
//! mounted at `/host/proc`.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

/// A pod to look for: its UID (lowercase, with dashes) and the IP its netns must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanTarget {
    pub uid: String,
    pub ip: Ipv4Addr,
}

/// A pod found: its oldest process and that process's netns file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanFound {
    pub uid: String,
    pub pid: u32,
    pub netns: PathBuf,
}

/// Why the oldest process of a pod did not give its netns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The process shares the host's netns (or the agent's): a hostNetwork pod, or a
    /// process kubelet's cgroup naming misled.
    HostNetns,
    /// The netns does not hold the pod's IP.
    MissingIp { ip: Ipv4Addr },
    /// Its netns could not be read (the process exited meanwhile, or no permission).
    Unreadable(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HostNetns => write!(f, "it is in the host's network namespace"),
            Self::MissingIp { ip } => write!(f, "its network namespace does not hold {ip}"),
            Self::Unreadable(e) => write!(f, "its network namespace cannot be read: {e}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScanRejected {
    pub uid: String,
    pub pid: u32,
    pub reason: Rejection,
}

/// What one scan found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanReport {
    pub found: Vec<ScanFound>,
    pub rejected: Vec<ScanRejected>,
    /// Set when the host's netns (`<proc-root>/1/ns/net`) could not be read: only the
    /// agent's own netns was then ruled out (a hostNetwork agent's is the host's).
    pub host_netns_unreadable: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot list the processes in {} (check --proc-root): {source}", path.display())]
    List { path: PathBuf, source: io::Error },
}

/// The pod UID that a process's `/proc/<pid>/cgroup` names, in kubelet's layouts:
/// - cgroupfs: `…/kubepods/burstable/pod<uid>/<container>` (also `besteffort`, and
///   `kubepods/pod<uid>` for Guaranteed pods);
/// - systemd: `…/kubepods-burstable-pod<uid_with_underscores>.slice/…` (also `besteffort`,
///   and `kubepods-pod<uid>.slice`).
///
/// Every line counts (cgroup v1 has one per hierarchy, v2 one `0::` line); the path may sit
/// under other folders (a cgroup namespace's `/../..`, a nested runtime). The UID comes back
/// lowercase, with dashes.
#[must_use]
pub fn pod_uid_of_cgroup(cgroup: &str) -> Option<String> {
    cgroup.lines().find_map(|line| {
        // `hierarchy-ID:controllers:path`; the path itself may contain ':'.
        let path = line.splitn(3, ':').nth(2)?;
        let segments: Vec<&str> = path.split('/').collect();
        segments.iter().enumerate().find_map(|(i, segment)| {
            cgroupfs_uid(&segments[..i], segment).or_else(|| systemd_uid(segment))
        })
    })
}

/// QoS folders kubelet puts between `kubepods` and the pod (none for Guaranteed pods).
const QOS_CLASSES: [&str; 3] = ["burstable", "besteffort", "guaranteed"];

/// `pod<uid>` right under `kubepods` or `kubepods/<qos>`.
fn cgroupfs_uid(before: &[&str], segment: &str) -> Option<String> {
    let uid = segment.strip_prefix("pod")?;
    let under_kubepods = match before {
        [.., "kubepods"] => true,
        [.., "kubepods", qos] => QOS_CLASSES.contains(qos),
        _ => false,
    };
    under_kubepods.then(|| valid_uid(uid)).flatten()
}

/// `kubepods[-<qos>]-pod<uid_with_underscores>.slice`.
fn systemd_uid(segment: &str) -> Option<String> {
    let rest = segment.strip_suffix(".slice")?.strip_prefix("kubepods-")?;
    let rest = QOS_CLASSES
        .iter()
        .find_map(|qos| rest.strip_prefix(qos).and_then(|r| r.strip_prefix('-')))
        .unwrap_or(rest);
    valid_uid(&rest.strip_prefix("pod")?.replace('_', "-"))
}

/// A Kubernetes UID is a UUID: 8-4-4-4-12 hex digits.
fn valid_uid(uid: &str) -> Option<String> {
    let groups: Vec<&str> = uid.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let hex = groups
        .iter()
        .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    (lengths == [8, 4, 4, 4, 12] && hex).then(|| uid.to_ascii_lowercase())
}

/// A process's start time (`/proc/<pid>/stat` field 22, clock ticks since boot).
#[must_use]
pub fn start_time_of_stat(stat: &str) -> Option<u64> {
    // Field 2, the command, is in parentheses and may hold spaces and ')': split after the
    // last one. Field 3 is then the first.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The (device, inode) of a netns file: equal for the same netns.
fn netns_id(path: &Path) -> io::Result<(u64, u64)> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.dev(), meta.ino()))
}

/// Whether the netns at `path` holds `ip` on one of its interfaces: listed from a thread
/// inside it (getifaddrs asks netlink, which answers for the asking socket's netns).
pub fn netns_holds(path: &Path, ip: Ipv4Addr) -> io::Result<bool> {
    let netns = shunt_api::netns::open_netns(path)?;
    shunt_api::netns::run_in_netns(netns.as_fd(), || {
        let addresses = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
        Ok(addresses
            .filter_map(|ifa| ifa.address)
            .filter_map(|address| address.as_sockaddr_in().map(|a| a.ip()))
            .any(|address| address == ip))
    })
}

/// Scans `proc_root` for the pods in `targets`.
pub fn scan(proc_root: &Path, targets: &[ScanTarget]) -> Result<ScanReport, Error> {
    let wanted: HashMap<&str, Ipv4Addr> = targets.iter().map(|t| (t.uid.as_str(), t.ip)).collect();
    let mut report = ScanReport::default();
    if wanted.is_empty() {
        return Ok(report);
    }
    let host_path = proc_root.join("1/ns/net");
    let host = match netns_id(&host_path) {
        Ok(id) => Some(id),
        Err(e) => {
            report.host_netns_unreadable = Some(format!(
                "cannot read the host's network namespace {} (check --proc-root: in a pod, \
                 mount the host's /proc): {e}",
                host_path.display()
            ));
            None
        }
    };
    // The agent's own netns, from its own /proc (not the host's, where `self` is not it).
    let own = netns_id(Path::new("/proc/self/ns/net")).ok();

    // The oldest process of each wanted pod: (start time, pid); the lower pid breaks a tie
    // between processes started in the same clock tick.
    let mut oldest: BTreeMap<String, (u64, u32)> = BTreeMap::new();
    let entries = std::fs::read_dir(proc_root).map_err(|source| Error::List {
        path: proc_root.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        // A process may exit at any point of the scan: whatever cannot be read is skipped.
        let Ok(cgroup) = std::fs::read_to_string(dir.join("cgroup")) else {
            continue;
        };
        let Some(uid) = pod_uid_of_cgroup(&cgroup) else {
            continue;
        };
        if !wanted.contains_key(uid.as_str()) {
            continue;
        }
        let Some(started) = std::fs::read_to_string(dir.join("stat"))
            .ok()
            .as_deref()
            .and_then(start_time_of_stat)
        else {
            continue;
        };
        let candidate = (started, pid);
        oldest
            .entry(uid)
            .and_modify(|best| *best = (*best).min(candidate))
            .or_insert(candidate);
    }

    for (uid, (_, pid)) in oldest {
        let ip = wanted[uid.as_str()];
        let netns = proc_root.join(pid.to_string()).join("ns/net");
        let verdict = match netns_id(&netns) {
            Err(e) => Err(Rejection::Unreadable(e.to_string())),
            Ok(id) if Some(id) == host || Some(id) == own => Err(Rejection::HostNetns),
            Ok(_) => match netns_holds(&netns, ip) {
                Ok(true) => Ok(()),
                Ok(false) => Err(Rejection::MissingIp { ip }),
                Err(e) => Err(Rejection::Unreadable(e.to_string())),
            },
        };
        match verdict {
            Ok(()) => report.found.push(ScanFound { uid, pid, netns }),
            Err(reason) => report.rejected.push(ScanRejected { uid, pid, reason }),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab";

    #[test]
    fn pod_uids_come_from_both_cgroup_layouts() {
        // (contents of /proc/<pid>/cgroup, expected uid)
        let cases: &[(&str, Option<&str>)] = &[
            // cgroupfs driver, cgroup v2.
            (
                "0::/kubepods/burstable/pod3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab/0a1b2c",
                Some(UID),
            ),
            (
                "0::/kubepods/besteffort/pod3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab/0a1b2c",
                Some(UID),
            ),
            // Guaranteed pods have no QoS folder.
            (
                "0::/kubepods/pod3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab/0a1b2c",
                Some(UID),
            ),
            (
                "0::/kubepods/guaranteed/pod3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab/0a1b2c",
                Some(UID),
            ),
            // The pod's own cgroup (a process kept there, not in a container's).
            (
                "0::/kubepods/burstable/pod3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab",
                Some(UID),
            ),
            // systemd driver.
            (
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3b3f7a4e_2c1d_4f5e_9a8b_0123456789ab.slice/cri-containerd-0a1b.scope",
                Some(UID),
            ),
            (
                "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod3b3f7a4e_2c1d_4f5e_9a8b_0123456789ab.slice/crio-0a1b.scope",
                Some(UID),
            ),
            (
                "0::/kubepods.slice/kubepods-pod3b3f7a4e_2c1d_4f5e_9a8b_0123456789ab.slice/cri-containerd-0a1b.scope",
                Some(UID),
            ),
            // Upper case hex is read as the same UID.
            (
                "0::/kubepods/burstable/pod3B3F7A4E-2C1D-4F5E-9A8B-0123456789AB/x",
                Some(UID),
            ),
            // Nested: kind's node containers, a cgroup namespace seen from outside.
            (
                "0::/../../kubepods/burstable/pod3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab/c",
                Some(UID),
            ),
            (
                "0::/system.slice/docker-1234.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-burstable.slice/kubepods-burstable-pod3b3f7a4e_2c1d_4f5e_9a8b_0123456789ab.slice/x",
                Some(UID),
            ),
            // cgroup v1: one line per hierarchy; any names it.
            (
                "12:pids:/kubepods/burstable/pod3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab/c\n11:memory:/kubepods/burstable/pod3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab/c\n0::/",
                Some(UID),
            ),
            (
                "1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3b3f7a4e_2c1d_4f5e_9a8b_0123456789ab.slice/x",
                Some(UID),
            ),
            // Not a pod's process.
            ("0::/system.slice/containerd.service", None),
            ("0::/", None),
            ("0::/user.slice/user-0.slice/session-1.scope", None),
            ("", None),
            // pod<uid> that kubelet did not make: not under kubepods, or a QoS folder it
            // does not use.
            ("0::/mypods/pod3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab/c", None),
            (
                "0::/kubepods/other/pod3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab/c",
                None,
            ),
            // Not a UUID.
            ("0::/kubepods/burstable/podxyz/c", None),
            ("0::/kubepods/burstable/pod3b3f7a4e-2c1d-4f5e-9a8b/c", None),
            ("0::/kubepods.slice/kubepods-burstable.slice", None),
            ("0::/kubepods.slice/kubepods-burstable-podnope.slice", None),
        ];
        for (cgroup, want) in cases {
            assert_eq!(pod_uid_of_cgroup(cgroup).as_deref(), *want, "{cgroup:?}");
        }
    }

    #[test]
    fn start_times_skip_the_command_whatever_it_holds() {
        let rest = "S 1 1 1 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        let cases = [
            (format!("42 (sleep) {rest}"), Some(123_456)),
            (format!("42 (a b) c)) {rest}"), Some(123_456)),
            ("42 (sleep) S 1".to_owned(), None),
            ("garbage".to_owned(), None),
        ];
        for (stat, want) in cases {
            assert_eq!(start_time_of_stat(&stat), want, "{stat:?}");
        }
    }

    #[test]
    fn an_empty_target_list_reads_nothing() {
        let report = scan(Path::new("/nonexistent/proc"), &[]).unwrap();
        assert_eq!(report, ScanReport::default());
    }

    #[test]
    fn a_wrong_proc_root_names_the_flag() {
        let target = ScanTarget {
            uid: UID.to_owned(),
            ip: Ipv4Addr::new(10, 0, 0, 5),
        };
        let e = scan(Path::new("/nonexistent/proc"), &[target]).unwrap_err();
        assert!(e.to_string().contains("--proc-root"), "{e}");
    }
}
