//! Netns discovery: where a captured pod's network namespace is when nothing names it (a real
//! cluster's pods; local mode's `shunt.io/netns` annotation names it instead).
//!
//! Two paths feed one [`NetnsDiscovery`], which the reconciler consults:
//! - `shunt-cni`'s ADD (`crate::cni_server`): the runtime names the new sandbox's netns and
//!   the primary CNI's result gives the pod's IP; DEL forgets it;
//! - the `/proc` scan ([`proc_scan`], run by [`run_scanner`]) for pods already running when
//!   the agent starts (or restarts): the oldest process of the pod's cgroup, if its netns
//!   holds the pod's IP.
#![forbid(unsafe_code)]

pub mod proc_scan;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use shunt_mesh::ids::PodUid;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use proc_scan::{ScanReport, ScanTarget};

/// How often pods still pending discovery are looked for again in `/proc`.
pub const SCAN_INTERVAL: Duration = Duration::from_secs(10);

/// Which pod a discovered netns belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    /// Known from the /proc scan, and from CNI when the runtime passes `K8S_POD_UID`.
    pub uid: Option<PodUid>,
}

impl PodRef {
    /// Whether `self` and `other` name the same pod: by UID when both have one (a pod
    /// recreated under the same name is another pod), else by namespace and name.
    fn same_pod(&self, other: &Self) -> bool {
        match (&self.uid, &other.uid) {
            (Some(a), Some(b)) => a == b,
            _ => self.namespace == other.namespace && self.name == other.name,
        }
    }
}

impl std::fmt::Display for PodRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How a netns was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `shunt-cni`'s ADD for sandbox `container_id`.
    Cni { container_id: String },
    /// The `/proc` scan: the netns of the pod's oldest process.
    ProcScan { pid: u32 },
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cni { container_id } => {
                write!(f, "the CNI plugin's ADD (sandbox {container_id})")
            }
            Self::ProcScan { pid } => write!(f, "the /proc scan (oldest process, pid {pid})"),
        }
    }
}

/// A pod's netns, found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discovered {
    pub pod: PodRef,
    pub netns: PathBuf,
    /// The pod's IPv4 addresses as found: the CNI result's, or the one the scan verified.
    pub ips: Vec<Ipv4Addr>,
    pub origin: Origin,
}

/// What the discovery paths tell the reconciler.
#[derive(Debug)]
pub enum DiscoveryEvent {
    Found(Discovered),
    /// `shunt-cni`'s DEL: sandbox `container_id` of `pod` is gone.
    Gone {
        pod: PodRef,
        container_id: String,
    },
}

/// A [`DiscoveryEvent`] on its way to the reconciler; `applied` (when given) fires once the
/// reconciler has acted on it and published the outcome, so the CNI server reads a current
/// view afterwards.
#[derive(Debug)]
pub struct Discovery {
    pub event: DiscoveryEvent,
    pub applied: Option<oneshot::Sender<()>>,
}

impl From<DiscoveryEvent> for Discovery {
    fn from(event: DiscoveryEvent) -> Self {
        Self {
            event,
            applied: None,
        }
    }
}

/// The netns found so far, per pod.
#[derive(Debug, Default)]
pub struct NetnsDiscovery {
    records: Vec<Discovered>,
}

impl NetnsDiscovery {
    /// Records a find; returns whether anything changed. A CNI find replaces whatever was
    /// known of the pod (a new sandbox is a new netns); a scan find never replaces a CNI
    /// one, which names the sandbox exactly.
    pub fn record(&mut self, found: Discovered) -> bool {
        match self.records.iter_mut().find(|r| r.pod.same_pod(&found.pod)) {
            Some(existing) if *existing == found => false,
            Some(existing)
                if matches!(existing.origin, Origin::Cni { .. })
                    && matches!(found.origin, Origin::ProcScan { .. }) =>
            {
                false
            }
            Some(existing) => {
                *existing = found;
                true
            }
            None => {
                self.records.push(found);
                true
            }
        }
    }

    /// Forgets `pod`'s netns after a DEL of sandbox `container_id`: its CNI record if it is
    /// that sandbox's, or a scan record. Returns whether anything changed.
    pub fn forget(&mut self, pod: &PodRef, container_id: &str) -> bool {
        let before = self.records.len();
        self.records.retain(|r| {
            !(r.pod.same_pod(pod)
                && match &r.origin {
                    Origin::Cni { container_id: id } => id == container_id,
                    Origin::ProcScan { .. } => true,
                })
        });
        self.records.len() != before
    }

    /// The netns found for the pod `uid` (`namespace/name`): by UID, or by name for a
    /// record that came without one.
    #[must_use]
    pub fn lookup(&self, uid: &PodUid, namespace: &str, name: &str) -> Option<&Discovered> {
        let pod = PodRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid: Some(uid.clone()),
        };
        self.records.iter().find(|r| r.pod.same_pod(&pod))
    }
}

/// A captured pod whose netns is still unknown, with the IP the scan must find in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingPod {
    pub pod: PodRef,
    pub uid: PodUid,
    pub ip: Ipv4Addr,
}

/// Scans `proc_root` for the pods in `pending`: at start, whenever the list changes (a new
/// config, a pod forgotten), and every [`SCAN_INTERVAL`] while it is not empty. Finds go to
/// the reconciler as [`DiscoveryEvent::Found`].
pub async fn run_scanner(
    proc_root: PathBuf,
    mut pending: watch::Receiver<Vec<PendingPod>>,
    events: mpsc::Sender<Discovery>,
    shutdown: CancellationToken,
) {
    // What was last said of each pod, so a pod that stays pending is not logged every scan.
    let mut said: HashMap<String, String> = HashMap::new();
    loop {
        let pods = pending.borrow_and_update().clone();
        if !pods.is_empty() {
            let targets: Vec<ScanTarget> = pods
                .iter()
                .map(|p| ScanTarget {
                    uid: p.uid.as_str().to_ascii_lowercase(),
                    ip: p.ip,
                })
                .collect();
            let root = proc_root.clone();
            let scanned =
                tokio::task::spawn_blocking(move || proc_scan::scan(&root, &targets)).await;
            match scanned {
                Ok(Ok(report)) => {
                    for event in finds(&pods, &report, &mut said) {
                        if events.send(event.into()).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(Err(e)) => {
                    let message = e.to_string();
                    if said.get("") != Some(&message) {
                        tracing::warn!("netns discovery: {message}");
                        said.insert(String::new(), message);
                    }
                }
                Err(e) => tracing::error!("netns discovery: the /proc scan panicked: {e}"),
            }
        }
        let tick = async {
            if pods.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(SCAN_INTERVAL).await;
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = pending.changed() => if changed.is_err() { return },
            () = tick => {}
        }
    }
}

/// Turns a scan's report into events, logging each pod's outcome once.
fn finds(
    pods: &[PendingPod],
    report: &ScanReport,
    said: &mut HashMap<String, String>,
) -> Vec<DiscoveryEvent> {
    let pod_of = |uid: &str| {
        pods.iter()
            .find(|p| p.uid.as_str().eq_ignore_ascii_case(uid))
    };
    if let Some(warning) = &report.host_netns_unreadable
        && said.get("host") != Some(warning)
    {
        tracing::warn!("netns discovery: {warning}; only the agent's own netns is ruled out");
        said.insert("host".to_owned(), warning.clone());
    }
    for rejected in &report.rejected {
        let message = format!("pid {}: {}", rejected.pid, rejected.reason);
        if said.get(&rejected.uid) != Some(&message) {
            if let Some(pod) = pod_of(&rejected.uid) {
                tracing::info!(
                    pod = %pod.pod,
                    "netns discovery: the /proc scan passed over the pod's oldest process, {message}"
                );
            }
            said.insert(rejected.uid.clone(), message);
        }
    }
    report
        .found
        .iter()
        .filter_map(|found| {
            let pod = pod_of(&found.uid)?;
            said.remove(&found.uid);
            tracing::info!(
                pod = %pod.pod,
                pid = found.pid,
                netns = %found.netns.display(),
                "netns discovery: found the pod's netns in /proc"
            );
            Some(DiscoveryEvent::Found(Discovered {
                pod: PodRef {
                    uid: Some(pod.uid.clone()),
                    ..pod.pod.clone()
                },
                netns: found.netns.clone(),
                ips: vec![pod.ip],
                origin: Origin::ProcScan { pid: found.pid },
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: Option<&str>) -> PodRef {
        PodRef {
            namespace: "shop".into(),
            name: name.into(),
            uid: uid.map(PodUid::new),
        }
    }

    fn found(pod: PodRef, netns: &str, origin: Origin) -> Discovered {
        Discovered {
            pod,
            netns: netns.into(),
            ips: vec![Ipv4Addr::new(10, 0, 0, 5)],
            origin,
        }
    }

    fn cni(id: &str) -> Origin {
        Origin::Cni {
            container_id: id.into(),
        }
    }

    #[test]
    fn finds_are_kept_per_pod_and_cni_wins_over_the_scan() {
        let mut d = NetnsDiscovery::default();
        let uid = PodUid::new("u1");
        assert!(d.lookup(&uid, "shop", "web").is_none());

        // The scan finds it; the same find again changes nothing.
        let scanned = found(
            pod("web", Some("u1")),
            "/proc/7/ns/net",
            Origin::ProcScan { pid: 7 },
        );
        assert!(d.record(scanned.clone()));
        assert!(!d.record(scanned.clone()));
        assert_eq!(d.lookup(&uid, "shop", "web"), Some(&scanned));

        // A CNI ADD replaces it; a later scan does not replace the CNI's.
        let added = found(pod("web", Some("u1")), "/run/netns/cni-1", cni("c1"));
        assert!(d.record(added.clone()));
        assert!(!d.record(scanned));
        assert_eq!(d.lookup(&uid, "shop", "web"), Some(&added));

        // A DEL of another sandbox leaves it; of this one, forgets it.
        assert!(!d.forget(&pod("web", Some("u1")), "c0"));
        assert!(d.forget(&pod("web", Some("u1")), "c1"));
        assert!(d.lookup(&uid, "shop", "web").is_none());
    }

    #[test]
    fn pods_match_by_uid_else_by_name() {
        let mut d = NetnsDiscovery::default();
        // No K8S_POD_UID from the runtime: found by name.
        d.record(found(pod("a", None), "/run/netns/a", cni("ca")));
        // With one: only that uid.
        d.record(found(pod("b", Some("u-b")), "/run/netns/b", cni("cb")));
        let cases = [
            ("u-a", "a", Some("/run/netns/a")),
            ("u-b", "b", Some("/run/netns/b")),
            // b recreated under the same name is another pod.
            ("u-b2", "b", None),
            ("u-c", "c", None),
        ];
        for (uid, name, want) in cases {
            let got = d.lookup(&PodUid::new(uid), "shop", name);
            assert_eq!(got.map(|r| r.netns.to_str().unwrap()), want, "{uid} {name}");
        }
    }

    #[test]
    fn scan_reports_become_finds_for_the_pods_asked() {
        let pending = vec![PendingPod {
            pod: pod("web", None),
            uid: PodUid::new("3B3F7A4E-2C1D-4F5E-9A8B-0123456789AB"),
            ip: Ipv4Addr::new(10, 0, 0, 5),
        }];
        let report = ScanReport {
            found: vec![proc_scan::ScanFound {
                uid: "3b3f7a4e-2c1d-4f5e-9a8b-0123456789ab".into(),
                pid: 42,
                netns: "/host/proc/42/ns/net".into(),
            }],
            rejected: vec![],
            host_netns_unreadable: None,
        };
        let events = finds(&pending, &report, &mut HashMap::new());
        let [DiscoveryEvent::Found(found)] = events.as_slice() else {
            panic!("{events:?}");
        };
        assert_eq!(found.origin, Origin::ProcScan { pid: 42 });
        assert_eq!(found.pod.uid, Some(pending[0].uid.clone()));
        assert_eq!(found.ips, vec![Ipv4Addr::new(10, 0, 0, 5)]);
    }
}
