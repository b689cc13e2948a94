//! Reconciles captured pods: what the config wants against what capture and the proxy have.
//! Only the pods of the agent's own node (`PodPlan::captured_here`) are captured and handed
//! to its proxy; the proxy still gets every pod, of every node, in the `MeshState`.
//!
//! For a newly captured pod the reconciler opens its netns, reads the netns cookie and hands
//! the netns to the proxy (`AddPod`). Only when the proxy answers `PodReady` with its inbound
//! listener does capture turn on for the pod (map entries, sk_lookup link, listener; or the
//! pod's iptables rules), so an app is never redirected to a listener that does not exist yet. A pod that goes away, or is no
//! longer captured, loses all of that again. A pod whose capture-relevant fields did not change
//! is left alone, so a config change never disturbs established connections.
//!
//! After an agent restart, capture of pods that are still wanted is kept as it is (their netns
//! cookies are in the pinned maps, or in the iptables records); capture of netns that no pod
//! wants any more is removed.
//!
//! A captured pod whose netns no annotation names (a real cluster's) waits, "pending netns
//! discovery", until [`crate::discovery`] finds it ([`Reconciler::discovery_events`]: the CNI
//! plugin's ADD, the `/proc` scan); the pods still waiting are published
//! ([`Reconciler::pending_discovery`]) for the scan.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use shunt_api::control::{AgentMessage, InboundBind, ListenerKind, PodRole, ProxyMessage};
use shunt_api::credentials::GatewayCredential;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::capture::ebpf::PodCapture;
use crate::capture::{self, Capture};
use crate::config::gateway_credentials::gateway_credentials;
use crate::config::{CaptureSpec, NetnsSource, PodPlan, Snapshot};
use crate::control::{ConnectionId, Frame, Outgoing, ProxyEvent};
use crate::discovery::{Discovery, DiscoveryEvent, NetnsDiscovery, Origin, PendingPod, PodRef};
use shunt_mesh::ids::PodUid;

use crate::netns::{OpenNetns, PodNetns, open_pod_netns};
use shunt_api::admin as api;

/// The per-pod capture operations the reconciler needs: a seam, so that it can be tested
/// without eBPF.
pub trait CaptureMaps {
    type Error: std::error::Error + Send + Sync + 'static;
    /// Turns capture on for a pod (map entries and sk_lookup link); called again for a pod
    /// already captured, it updates the pod in place.
    fn add_pod(&mut self, pod: &PodCapture<'_>) -> Result<(), Self::Error>;
    fn set_inbound_listener(
        &mut self,
        pod_ip: Ipv4Addr,
        listener: BorrowedFd<'_>,
    ) -> Result<(), Self::Error>;
    fn remove_pod(
        &mut self,
        netns_cookie: u64,
        pod_ip: Option<Ipv4Addr>,
    ) -> Result<(), Self::Error>;
    /// Netns cookies that have capture state, from an earlier run of the agent or this one.
    fn captured_netns(&self) -> Result<Vec<u64>, Self::Error>;
    /// Where the proxy must open a pod's inbound listener for this capture to reach it.
    fn inbound_bind(&self) -> InboundBind {
        InboundBind::Loopback
    }
    /// The maps the proxy splices opaque TCP connections with (`SHORTCUT_BYTES`,
    /// `SPLICED_BYTES`, `SPLICE_ROUTES`, in that order), when this capture has them.
    fn splice_maps(&self) -> Option<Vec<OwnedFd>> {
        None
    }
    /// The ring buffer of closed connections' TCP figures (`TCP_EVENTS`), when this capture
    /// has one.
    fn tcp_events(&self) -> Option<OwnedFd> {
        None
    }
}

impl CaptureMaps for Capture {
    type Error = capture::Error;

    fn add_pod(&mut self, pod: &PodCapture<'_>) -> Result<(), Self::Error> {
        self.with(|capture| capture.add_pod(pod))
    }

    fn inbound_bind(&self) -> InboundBind {
        Capture::inbound_bind(self)
    }

    fn set_inbound_listener(
        &mut self,
        pod_ip: Ipv4Addr,
        listener: BorrowedFd<'_>,
    ) -> Result<(), Self::Error> {
        self.with(|capture| capture.set_inbound_listener(pod_ip, listener))
    }

    fn remove_pod(
        &mut self,
        netns_cookie: u64,
        pod_ip: Option<Ipv4Addr>,
    ) -> Result<(), Self::Error> {
        self.with(|capture| capture.remove_pod(netns_cookie, pod_ip))
    }

    fn captured_netns(&self) -> Result<Vec<u64>, Self::Error> {
        self.with(|capture| capture.captured_netns())
    }

    fn tcp_events(&self) -> Option<OwnedFd> {
        match self.with(|capture| capture.tcp_events()) {
            Ok(events) => events,
            Err(e) => {
                // The proxy still samples TCP_INFO; only the figures at close are lost.
                tracing::warn!("cannot hand the TCP events ring buffer to the proxy: {e}");
                None
            }
        }
    }

    fn splice_maps(&self) -> Option<Vec<OwnedFd>> {
        match self.with(|capture| capture.splice_maps()) {
            Ok(maps) => maps,
            Err(e) => {
                // The proxy still forwards every connection itself; only the splice is lost.
                tracing::warn!("cannot hand the splice maps to the proxy: {e}");
                None
            }
        }
    }
}

/// Discovery events waiting for the reconciler; the CNI server and the scan wait when full.
const DISCOVERY_EVENTS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot open the network namespace {} of pod {pod} (from {origin}): {source}",
        path.display()
    )]
    Netns {
        pod: String,
        path: PathBuf,
        origin: String,
        source: io::Error,
    },
    #[error(
        "pod {pod}: its netns {} was found by {origin} with addresses {found:?}, which do not \
         include its status.podIP {ip}",
        path.display()
    )]
    IpMismatch {
        pod: String,
        path: PathBuf,
        origin: Origin,
        found: Vec<Ipv4Addr>,
        ip: Ipv4Addr,
    },
    #[error(
        "pod {pod}: its netns {} was found by {origin} without an IPv4 address, and the pod \
         has no status.podIP",
        path.display()
    )]
    NoIp {
        pod: String,
        path: PathBuf,
        origin: Origin,
    },
    #[error("pod {pod} uses network namespace {} of pod {other}; each pod needs its own", path.display())]
    SharedNetns {
        pod: String,
        other: String,
        path: PathBuf,
    },
    #[error("capture could not {action} for pod {pod}: {source}")]
    Capture {
        pod: String,
        action: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the proxy answered PodReady for pod {pod} without its inbound listener descriptor")]
    NoListener { pod: String },
    #[error("the proxy cannot serve pod {pod}: {error}")]
    Proxy { pod: String, error: String },
}

/// What `shuntctl workloads` and `status` show: published after every change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    pub proxy: api::ProxyStatus,
    pub workloads: Vec<api::Workload>,
    /// This node's captured pods, by uid: what the CNI server waits on.
    pub pods: BTreeMap<PodUid, PodState>,
}

/// A captured pod of this node as the reconciler holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodState {
    /// The netns file it was opened from, once known.
    pub netns: Option<PathBuf>,
    pub status: PodStatus,
}

/// Where a captured pod stands with the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodStatus {
    /// No annotation names its netns and discovery has not found it yet.
    PendingDiscovery,
    /// Handed to the proxy (or waiting for one); capture is not on yet, unless kept from
    /// before an agent restart.
    Pending,
    /// The proxy listens in the pod's netns and capture is on.
    Ready,
    /// Something failed; capture is off. Retried on the next proxy connection, or (for a netns
    /// that could not be opened) on the next config reading.
    Failed(String),
}

impl PodStatus {
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::PendingDiscovery => "pending netns discovery".to_owned(),
            Self::Pending => "pending".to_owned(),
            Self::Ready => "ready".to_owned(),
            Self::Failed(error) => format!("failed: {error}"),
        }
    }
}

#[derive(Debug)]
struct OpenNetnsFile {
    fd: Arc<OwnedFd>,
    cookie: u64,
}

/// Where a captured pod's netns is, and the IP capture uses.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    path: PathBuf,
    ip: Ipv4Addr,
    /// `None`: the `shunt.io/netns` annotation.
    origin: Option<Origin>,
}

impl Target {
    fn origin(&self) -> String {
        self.origin.as_ref().map_or_else(
            || "its shunt.io/netns annotation".to_owned(),
            ToString::to_string,
        )
    }

    /// Another netns or IP is another pod for capture and the proxy; the origin alone is not.
    fn same_place(a: Option<&Self>, b: Option<&Self>) -> bool {
        a.map(|t| (&t.path, t.ip)) == b.map(|t| (&t.path, t.ip))
    }
}

/// Where discovery (or the annotation) places a pod: `Ok(None)` while it is not known.
type Resolved = Result<Option<Target>, Error>;

/// A pod the config wants captured.
#[derive(Debug)]
struct CapturedPod {
    /// `namespace/name`, for messages.
    name: String,
    pod: PodRef,
    spec: CaptureSpec,
    /// `None` while discovery has not found the netns (see `status`).
    target: Option<Target>,
    /// `None` when the netns is not known or could not be opened (see `status`).
    netns: Option<OpenNetnsFile>,
    /// The pod's listening sockets as its proxy last handed them over (`PodReady`), given to
    /// a next proxy that connects while this one is still connected (a rollout), which
    /// accepts from them instead of binding its own: no connection is refused while one
    /// proxy replaces another. Empty until the first `PodReady`, for a new netns, and once
    /// the proxy has disconnected.
    listeners: Vec<(ListenerKind, Arc<OwnedFd>)>,
    status: PodStatus,
    /// Whether capture has (or may have) state for this pod, which must go when it goes.
    capture_on: bool,
}

struct ProxyLink {
    connection: ConnectionId,
    pid: u32,
    outbox: mpsc::UnboundedSender<Outgoing>,
}

pub struct Reconciler<C> {
    capture: C,
    open_netns: OpenNetns,
    /// By pod uid.
    pods: BTreeMap<PodUid, CapturedPod>,
    /// The last config reading: its plans (for the view) and its mesh (as last sent). Shared
    /// with the source rather than copied: at tens of thousands of pods a copy is tens of MiB.
    snapshot: Arc<Snapshot>,
    /// The TLS credentials of this node's gateway servers, as last sent.
    credentials: Vec<GatewayCredential>,
    proxy: Option<ProxyLink>,
    /// The last proxy refused (pid, why), until one is served.
    refused: Option<(u32, String)>,
    /// Netns cookies that had capture state when the agent started and that no pod has
    /// claimed yet; what is left after the first config is removed.
    inherited: Option<BTreeSet<u64>>,
    view: watch::Sender<NodeView>,
    discovery: NetnsDiscovery,
    discovery_tx: mpsc::Sender<Discovery>,
    discovery_rx: Option<mpsc::Receiver<Discovery>>,
    /// The captured pods still pending discovery that have an IP: what the scan looks for.
    pending: watch::Sender<Vec<PendingPod>>,
}

impl<C: CaptureMaps> Reconciler<C> {
    pub fn new(capture: C) -> Self {
        let inherited = capture.captured_netns().unwrap_or_else(|e| {
            tracing::warn!("cannot list the pods captured before this start: {e}");
            Vec::new()
        });
        if !inherited.is_empty() {
            tracing::info!(
                netns = inherited.len(),
                "capture state from an earlier run found; keeping it for pods still captured"
            );
        }
        let (discovery_tx, discovery_rx) = mpsc::channel(DISCOVERY_EVENTS);
        Self {
            capture,
            open_netns: open_pod_netns,
            pods: BTreeMap::new(),
            snapshot: Arc::default(),
            credentials: Vec::new(),
            proxy: None,
            refused: None,
            inherited: Some(inherited.into_iter().collect()),
            view: watch::Sender::new(NodeView::default()),
            discovery: NetnsDiscovery::default(),
            discovery_tx,
            discovery_rx: Some(discovery_rx),
            pending: watch::Sender::new(Vec::new()),
        }
    }

    /// Where the discovery paths send what they find (see [`Reconciler::discovered`]).
    #[must_use]
    pub fn discovery_events(&self) -> mpsc::Sender<Discovery> {
        self.discovery_tx.clone()
    }

    /// Follows the captured pods still pending discovery, for the `/proc` scan.
    #[must_use]
    pub fn pending_discovery(&self) -> watch::Receiver<Vec<PendingPod>> {
        self.pending.subscribe()
    }

    /// Replaces how pod netns files are opened (tests use plain files).
    #[must_use]
    pub fn with_netns_opener(mut self, open_netns: OpenNetns) -> Self {
        self.open_netns = open_netns;
        self
    }

    /// Follows the view, which changes after every reconciliation and proxy event.
    pub fn view(&self) -> watch::Receiver<NodeView> {
        self.view.subscribe()
    }

    /// Reconciles with every config reading and proxy event until `shutdown`.
    pub async fn run(
        mut self,
        mut snapshots: watch::Receiver<Arc<Snapshot>>,
        mut events: mpsc::Receiver<ProxyEvent>,
        shutdown: CancellationToken,
    ) {
        let first = Arc::clone(&snapshots.borrow_and_update());
        self.apply(&first);
        let Some(mut discovered) = self.discovery_rx.take() else {
            return;
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                // The reconciler holds a sender itself, so this never ends.
                Some(Discovery { event, applied }) = discovered.recv() => {
                    self.discovered(event);
                    if let Some(applied) = applied {
                        let _ = applied.send(());
                    }
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let snapshot = Arc::clone(&snapshots.borrow_and_update());
                    self.apply(&snapshot);
                }
                event = events.recv() => match event {
                    Some(event) => self.handle(event),
                    None => return,
                },
            }
        }
    }

    /// Brings capture and the proxy in line with a config reading.
    pub fn apply(&mut self, snapshot: &Arc<Snapshot>) {
        // Before the state whose gateway servers need them.
        let credentials = gateway_credentials(snapshot, &snapshot.gateway_secret_refs());
        if credentials != self.credentials {
            self.credentials = credentials;
            self.send(AgentMessage::Credentials {
                credentials: self.credentials.clone(),
            });
        }
        let previous = std::mem::replace(&mut self.snapshot, Arc::clone(snapshot));
        if snapshot.mesh != previous.mesh {
            drop(previous);
            self.send_state();
        }
        self.reconcile();

        if let Some(inherited) = self.inherited.take() {
            for cookie in inherited {
                tracing::info!(
                    netns_cookie = cookie,
                    "removing capture of a netns no pod is captured in any more"
                );
                if let Err(e) = self.capture.remove_pod(cookie, None) {
                    tracing::error!(netns_cookie = cookie, "removing capture failed: {e}");
                }
            }
        }
        self.publish();
    }

    /// Takes in what a discovery path found (or a DEL), and reconciles with it.
    pub fn discovered(&mut self, event: DiscoveryEvent) {
        match event {
            DiscoveryEvent::Found(found) => {
                if self.discovery.record(found.clone()) {
                    tracing::info!(
                        pod = %found.pod,
                        netns = %found.netns.display(),
                        "netns discovered by {}",
                        found.origin
                    );
                }
            }
            DiscoveryEvent::Gone { pod, container_id } => {
                if self.discovery.forget(&pod, &container_id) {
                    tracing::info!(%pod, container_id, "sandbox deleted; its netns is forgotten");
                }
            }
        }
        // Also when nothing changed: a repeated ADD retries a netns that failed to open.
        self.reconcile();
        self.publish();
    }

    /// Brings capture and the proxy in line with the last config's plans and what discovery
    /// knows.
    fn reconcile(&mut self) {
        let snapshot = Arc::clone(&self.snapshot);
        let plans = &snapshot.pods;
        // Only this node's pods: another node's are its agent's to capture.
        let wanted: BTreeMap<&PodUid, (&PodPlan, &CaptureSpec, Resolved)> = plans
            .iter()
            .filter_map(|plan| {
                let spec = plan.captured_here()?;
                Some((&plan.uid, (plan, spec, self.resolve(plan, spec))))
            })
            .collect();

        // A pod that moved to another netns or IP is another pod as far as capture and the
        // proxy are concerned: remove it, then add it again below.
        let gone: Vec<PodUid> = self
            .pods
            .iter()
            .filter(|(uid, pod)| {
                // A pod that became (or stopped being) a gateway pod is served afresh too.
                wanted.get(uid).is_none_or(|(_, spec, target)| {
                    spec.role != pod.spec.role
                        || !Target::same_place(
                            pod.target.as_ref(),
                            target.as_ref().ok().and_then(Option::as_ref),
                        )
                })
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.remove(&uid);
        }

        for (uid, (plan, spec, target)) in wanted {
            if self.pods.contains_key(uid) {
                self.update(uid, spec, target);
            } else {
                self.add(plan, spec, target);
            }
        }
    }

    /// Where the pod's netns is: its annotation, or what discovery found.
    fn resolve(&self, plan: &PodPlan, spec: &CaptureSpec) -> Resolved {
        let pod = || format!("{}/{}", plan.namespace, plan.name);
        match &spec.netns {
            NetnsSource::Annotation(path) => Ok(spec.ip.map(|ip| Target {
                path: path.clone(),
                ip,
                origin: None,
            })),
            NetnsSource::Discovered => {
                let Some(found) = self
                    .discovery
                    .lookup(&plan.uid, &plan.namespace, &plan.name)
                else {
                    return Ok(None);
                };
                let ip = match (spec.ip, found.ips.first()) {
                    (Some(ip), _) if found.ips.is_empty() || found.ips.contains(&ip) => ip,
                    (Some(ip), _) => {
                        return Err(Error::IpMismatch {
                            pod: pod(),
                            path: found.netns.clone(),
                            origin: found.origin.clone(),
                            found: found.ips.clone(),
                            ip,
                        });
                    }
                    (None, Some(ip)) => *ip,
                    (None, None) => {
                        return Err(Error::NoIp {
                            pod: pod(),
                            path: found.netns.clone(),
                            origin: found.origin.clone(),
                        });
                    }
                };
                Ok(Some(Target {
                    path: found.netns.clone(),
                    ip,
                    origin: Some(found.origin.clone()),
                }))
            }
        }
    }

    fn add(&mut self, plan: &PodPlan, spec: &CaptureSpec, target: Resolved) {
        let mut pod = CapturedPod {
            name: format!("{}/{}", plan.namespace, plan.name),
            pod: PodRef {
                namespace: plan.namespace.clone(),
                name: plan.name.clone(),
                uid: Some(plan.uid.clone()),
            },
            spec: spec.clone(),
            target: None,
            netns: None,
            listeners: Vec::new(),
            status: PodStatus::PendingDiscovery,
            capture_on: false,
        };
        Self::set_target(&mut pod, target);
        if pod.target.is_some() {
            self.open(&plan.uid, &mut pod);
        }
        self.pods.insert(plan.uid.clone(), pod);
    }

    /// Takes the pod's resolved netns; without one, says why the pod waits.
    fn set_target(pod: &mut CapturedPod, target: Resolved) {
        match target {
            Ok(Some(target)) => pod.target = Some(target),
            Ok(None) => {
                pod.target = None;
                pod.status = PodStatus::PendingDiscovery;
            }
            Err(e) => {
                pod.target = None;
                let e = e.to_string();
                if !matches!(&pod.status, PodStatus::Failed(previous) if *previous == e) {
                    tracing::warn!("{e}");
                }
                pod.status = PodStatus::Failed(e);
            }
        }
    }

    /// Opens the pod's netns and hands it to the proxy.
    fn open(&mut self, uid: &PodUid, pod: &mut CapturedPod) {
        let Some(target) = &pod.target else {
            return;
        };
        let opened = (self.open_netns)(&target.path).map_err(|source| Error::Netns {
            pod: pod.name.clone(),
            path: target.path.clone(),
            origin: target.origin(),
            source,
        });
        let netns = match opened.and_then(|netns| self.check_unshared(pod, netns)) {
            Ok(netns) => netns,
            Err(e) => {
                if !matches!(&pod.status, PodStatus::Failed(previous) if *previous == e.to_string())
                {
                    tracing::warn!("{e}");
                }
                pod.status = PodStatus::Failed(e.to_string());
                return;
            }
        };
        // Capture left on by the previous agent stays on: its connections keep flowing.
        pod.capture_on = self
            .inherited
            .as_mut()
            .is_some_and(|inherited| inherited.remove(&netns.cookie));
        tracing::info!(
            pod = %pod.name,
            netns = %target.path.display(),
            netns_from = %target.origin(),
            netns_cookie = netns.cookie,
            kept_from_earlier_run = pod.capture_on,
            "pod to capture; handing it to the proxy"
        );
        let netns = OpenNetnsFile {
            fd: Arc::new(netns.fd),
            cookie: netns.cookie,
        };
        pod.status = PodStatus::Pending;
        // A netns opened afresh has no listeners yet.
        pod.listeners.clear();
        self.send_outgoing(add_pod(
            uid,
            &netns,
            self.capture.inbound_bind(),
            pod.spec.role,
            &[],
        ));
        pod.netns = Some(netns);
    }

    fn check_unshared(&self, pod: &CapturedPod, netns: PodNetns) -> Result<PodNetns, Error> {
        let other = self.pods.values().find(|other| {
            other
                .netns
                .as_ref()
                .is_some_and(|o| o.cookie == netns.cookie)
        });
        match other {
            Some(other) => Err(Error::SharedNetns {
                pod: pod.name.clone(),
                other: other.name.clone(),
                path: pod
                    .target
                    .as_ref()
                    .map(|t| t.path.clone())
                    .unwrap_or_default(),
            }),
            None => Ok(netns),
        }
    }

    /// Same pod, same netns and IP: only the excluded ports (or where the netns was learnt)
    /// can have changed. A netns that could not be opened is tried again.
    fn update(&mut self, uid: &PodUid, spec: &CaptureSpec, target: Resolved) {
        let Some(mut pod) = self.pods.remove(uid) else {
            return;
        };
        match (&mut pod.target, target) {
            (Some(current), Ok(Some(target))) => current.origin = target.origin,
            (_, target) => Self::set_target(&mut pod, target),
        }
        if pod.spec != *spec {
            pod.spec = spec.clone();
            if pod.capture_on {
                // Updated in place: the pod's connections are not touched.
                let result = pod
                    .netns
                    .as_ref()
                    .zip(pod.target.as_ref())
                    .map(|(netns, target)| {
                        self.capture
                            .add_pod(&pod_capture(&pod.spec, target, netns))
                            .map_err(|e| capture_error(&pod.name, "update the excluded ports", e))
                    });
                if let Some(Err(e)) = result {
                    tracing::error!("{e}");
                    pod.status = PodStatus::Failed(e.to_string());
                }
            }
        }
        if pod.netns.is_none() && pod.target.is_some() {
            self.open(uid, &mut pod);
        }
        self.pods.insert(uid.to_owned(), pod);
    }

    fn remove(&mut self, uid: &PodUid) {
        let Some(pod) = self.pods.remove(uid) else {
            return;
        };
        if pod.netns.is_none() {
            return; // Never handed over nor captured.
        }
        tracing::info!(pod = %pod.name, "pod no longer captured");
        if pod.capture_on {
            self.capture_off(&pod);
        }
        self.send(AgentMessage::RemovePod { uid: uid.clone() });
    }

    fn capture_off(&mut self, pod: &CapturedPod) {
        let (Some(netns), Some(target)) = (&pod.netns, &pod.target) else {
            return;
        };
        if let Err(e) = self.capture.remove_pod(netns.cookie, Some(target.ip)) {
            tracing::error!("{}", capture_error(&pod.name, "remove capture", e));
        }
    }

    /// Reacts to the proxy.
    pub fn handle(&mut self, event: ProxyEvent) {
        match event {
            ProxyEvent::Connected {
                connection,
                pid,
                version: _,
                outbox,
            } => self.connected(ProxyLink {
                connection,
                pid,
                outbox,
            }),
            ProxyEvent::Message {
                connection,
                message,
                fds,
            } if self.is_current(connection) => match message {
                ProxyMessage::PodReady { uid, listeners } => {
                    self.pod_ready(&uid, handed_listeners(listeners, fds));
                }
                ProxyMessage::PodFailed { uid, error } => self.pod_failed(&uid, error),
                ProxyMessage::Hello { .. } => {}
            },
            ProxyEvent::Refused {
                connection: _,
                pid,
                reason,
            } => {
                self.refused = Some((pid, reason));
            }
            ProxyEvent::Disconnected { connection, reason } if self.is_current(connection) => {
                tracing::warn!(
                    "proxy disconnected ({reason}); capture stays as it is until it is back"
                );
                self.proxy = None;
                // Listeners are kept for a proxy that replaces a connected one (a rollout).
                // A proxy that is gone takes its sockets with it: what then reaches the
                // pods is refused or dropped (fail closed), not left waiting in a backlog.
                for pod in self.pods.values_mut() {
                    pod.listeners.clear();
                }
            }
            // From a connection that a newer one replaced.
            ProxyEvent::Message { .. } | ProxyEvent::Disconnected { .. } => {}
        }
        self.publish();
    }

    fn is_current(&self, connection: ConnectionId) -> bool {
        self.proxy
            .as_ref()
            .is_some_and(|proxy| proxy.connection == connection)
    }

    /// A (new) proxy: it gets the whole state, then every pod, then the list of pods.
    fn connected(&mut self, link: ProxyLink) {
        self.refused = None;
        if let Some(old) = self.proxy.replace(link) {
            tracing::info!(
                old_pid = old.pid,
                "a new proxy connection replaces the previous one; it takes over the pods' listeners"
            );
            // The old proxy then stops redialing, which would take the pods back, and serves
            // what it holds until it is stopped. Its connection ends as the outbox drops.
            let _ = old.outbox.send(Outgoing {
                message: AgentMessage::Superseded.into(),
                fds: Vec::new(),
            });
        }
        if !self.credentials.is_empty() {
            self.send(AgentMessage::Credentials {
                credentials: self.credentials.clone(),
            });
        }
        self.send_state();
        if let Some(maps) = self.capture.splice_maps() {
            self.send_outgoing(Outgoing {
                message: AgentMessage::SpliceMaps.into(),
                fds: maps.into_iter().map(Arc::new).collect(),
            });
        }
        if let Some(events) = self.capture.tcp_events() {
            self.send_outgoing(Outgoing {
                message: AgentMessage::TcpEvents.into(),
                fds: vec![Arc::new(events)],
            });
        }
        let mut handed = Vec::new();
        let inbound_bind = self.capture.inbound_bind();
        for (uid, pod) in &mut self.pods {
            let Some(netns) = &pod.netns else {
                continue;
            };
            pod.status = PodStatus::Pending;
            if let Some(proxy) = &self.proxy {
                let _ = proxy.outbox.send(add_pod(
                    uid,
                    netns,
                    inbound_bind,
                    pod.spec.role,
                    &pod.listeners,
                ));
            }
            handed.push(uid.clone());
        }
        self.send(AgentMessage::Synced { pods: handed });
    }

    /// The proxy listens in the pod's netns: capture turns on.
    fn pod_ready(&mut self, uid: &PodUid, listeners: Vec<(ListenerKind, Arc<OwnedFd>)>) {
        let Some(pod) = self.pods.get_mut(uid) else {
            // Removed while the proxy was opening it; RemovePod is on its way.
            return;
        };
        let (Some(netns), Some(target)) = (&pod.netns, &pod.target) else {
            return;
        };
        pod.listeners = listeners;
        if pod.spec.role == PodRole::Gateway {
            // Served, and nothing to capture: its listeners are the Gateways' own ports.
            if pod.status != PodStatus::Ready {
                tracing::info!(pod = %pod.name, netns_cookie = netns.cookie, "gateway pod served");
            }
            pod.status = PodStatus::Ready;
            return;
        }
        let inbound = pod
            .listeners
            .iter()
            .find(|(kind, _)| *kind == ListenerKind::Inbound)
            .map(|(_, fd)| fd);
        let result = match inbound {
            None => Err(Error::NoListener {
                pod: pod.name.clone(),
            }),
            Some(listener) => self
                .capture
                .add_pod(&pod_capture(&pod.spec, target, netns))
                .map_err(|e| capture_error(&pod.name, "turn capture on", e))
                .and_then(|()| {
                    self.capture
                        .set_inbound_listener(target.ip, listener.as_fd())
                        .map_err(|e| capture_error(&pod.name, "install the inbound listener", e))
                }),
        };
        match result {
            Ok(()) => {
                if pod.status != PodStatus::Ready {
                    tracing::info!(pod = %pod.name, netns_cookie = netns.cookie, "pod captured");
                }
                pod.capture_on = true;
                pod.status = PodStatus::Ready;
            }
            Err(e) => {
                tracing::error!("{e}");
                pod.status = PodStatus::Failed(e.to_string());
                // Half-installed capture would send the app to a listener that is not there.
                if let Err(e) = self.capture.remove_pod(netns.cookie, Some(target.ip)) {
                    tracing::error!("{}", capture_error(&pod.name, "remove capture", e));
                }
                pod.capture_on = false;
            }
        }
    }

    /// The proxy cannot serve the pod: capture must not send the pod's traffic there.
    fn pod_failed(&mut self, uid: &PodUid, error: String) {
        let Some(mut pod) = self.pods.remove(uid) else {
            return;
        };
        let e = Error::Proxy {
            pod: pod.name.clone(),
            error,
        };
        tracing::error!("{e}");
        pod.status = PodStatus::Failed(e.to_string());
        if pod.capture_on {
            self.capture_off(&pod);
            pod.capture_on = false;
        }
        self.pods.insert(uid.to_owned(), pod);
    }

    /// The mesh of the last config reading, whole: the shared snapshot, written out by the
    /// connection's writer, not a copy.
    fn send_state(&self) {
        if self.proxy.is_some() {
            self.send_outgoing(Outgoing {
                message: Frame::State(Arc::clone(&self.snapshot)),
                fds: Vec::new(),
            });
        }
    }

    fn send(&self, message: AgentMessage) {
        self.send_outgoing(Outgoing {
            message: message.into(),
            fds: Vec::new(),
        });
    }

    fn send_outgoing(&self, outgoing: Outgoing) {
        if let Some(proxy) = &self.proxy {
            // A closed outbox means the connection is ending; its Disconnected event follows.
            let _ = proxy.outbox.send(outgoing);
        }
    }

    fn publish(&self) {
        let workloads = self
            .snapshot
            .pods
            .iter()
            .map(|plan| {
                let pod = self.pods.get(&plan.uid);
                let target = pod.and_then(|pod| pod.target.as_ref());
                let annotated = plan.capture.as_ref().and_then(|spec| match &spec.netns {
                    NetnsSource::Annotation(path) => Some(path.clone()),
                    NetnsSource::Discovered => None,
                });
                let reason = match target.and_then(|t| t.origin.as_ref().map(|o| (t, o))) {
                    Some((target, origin)) => format!(
                        "{}; netns {} found by {origin}",
                        plan.reason,
                        target.path.display()
                    ),
                    None => plan.reason.clone(),
                };
                api::Workload {
                    namespace: plan.namespace.clone(),
                    name: plan.name.clone(),
                    uid: plan.uid.clone(),
                    ip: plan.ip.or(target.map(|t| t.ip)),
                    node: Some(plan.node.clone()),
                    captured: plan.captured(),
                    reason,
                    netns: target.map(|t| t.path.clone()).or(annotated),
                    netns_cookie: pod.and_then(|pod| pod.netns.as_ref().map(|n| n.cookie)),
                    proxy: pod.map_or_else(|| "n/a".to_owned(), |pod| pod.status.describe()),
                }
            })
            .collect();
        let view = NodeView {
            proxy: match (&self.proxy, &self.refused) {
                (Some(proxy), _) => api::ProxyStatus {
                    connected: true,
                    pid: Some(proxy.pid),
                    refused: None,
                },
                (None, Some((pid, reason))) => api::ProxyStatus {
                    connected: false,
                    pid: Some(*pid),
                    refused: Some(reason.clone()),
                },
                (None, None) => api::ProxyStatus::default(),
            },
            workloads,
            pods: self
                .pods
                .iter()
                .map(|(uid, pod)| {
                    let state = PodState {
                        netns: pod.target.as_ref().map(|t| t.path.clone()),
                        status: pod.status.clone(),
                    };
                    (uid.clone(), state)
                })
                .collect(),
        };
        let pending: Vec<PendingPod> = self
            .pods
            .iter()
            .filter(|(_, pod)| pod.status == PodStatus::PendingDiscovery)
            .filter_map(|(uid, pod)| {
                Some(PendingPod {
                    pod: pod.pod.clone(),
                    uid: uid.clone(),
                    ip: pod.spec.ip?,
                })
            })
            .collect();
        self.pending.send_if_modified(|current| {
            let changed = *current != pending;
            if changed {
                *current = pending;
            }
            changed
        });
        self.view.send_if_modified(|current| {
            let changed = *current != view;
            if changed {
                *current = view;
            }
            changed
        });
    }
}

fn add_pod(
    uid: &PodUid,
    netns: &OpenNetnsFile,
    inbound_bind: InboundBind,
    role: PodRole,
    listeners: &[(ListenerKind, Arc<OwnedFd>)],
) -> Outgoing {
    let mut fds = vec![Arc::clone(&netns.fd)];
    fds.extend(listeners.iter().map(|(_, fd)| Arc::clone(fd)));
    Outgoing {
        message: AgentMessage::AddPod {
            uid: uid.clone(),
            netns_cookie: netns.cookie,
            inbound_bind,
            role,
            listeners: listeners.iter().map(|(kind, _)| *kind).collect(),
        }
        .into(),
        fds,
    }
}

/// Pairs `PodReady`'s listener kinds with its descriptors; an older proxy lists none and
/// sends one descriptor, its inbound listener. Extra descriptors are closed.
fn handed_listeners(
    kinds: Vec<ListenerKind>,
    fds: Vec<OwnedFd>,
) -> Vec<(ListenerKind, Arc<OwnedFd>)> {
    let kinds = if kinds.is_empty() {
        vec![ListenerKind::Inbound]
    } else {
        kinds
    };
    kinds
        .into_iter()
        .zip(fds.into_iter().map(Arc::new))
        .collect()
}

fn pod_capture<'a>(
    spec: &'a CaptureSpec,
    target: &'a Target,
    netns: &'a OpenNetnsFile,
) -> PodCapture<'a> {
    PodCapture {
        netns_cookie: netns.cookie,
        netns: netns.fd.as_fd(),
        netns_path: &target.path,
        pod_ip: target.ip,
        excluded_outbound_ports: spec.excluded_outbound_ports.clone(),
        excluded_inbound_ports: spec.excluded_inbound_ports.clone(),
        fail_closed: spec.fail_closed,
    }
}

fn capture_error(
    pod: &str,
    action: &'static str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Capture {
        pod: pod.to_owned(),
        action,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests;
