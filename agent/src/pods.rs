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
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use shunt_api::control::{AgentMessage, InboundBind, PodRole, ProxyMessage};
use shunt_api::credentials::GatewayCredential;
use shunt_mesh::model::MeshState;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::capture::ebpf::PodCapture;
use crate::capture::{self, Capture};
use crate::config::gateway_credentials::gateway_credentials;
use crate::config::{CaptureSpec, PodPlan, Snapshot};
use crate::control::{ConnectionId, Outgoing, ProxyEvent};
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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot open the network namespace {} of pod {pod}: {source}; check the pod's \
         shunt.io/netns annotation",
        path.display()
    )]
    Netns {
        pod: String,
        path: PathBuf,
        source: io::Error,
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
}

/// Where a captured pod stands with the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PodStatus {
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
    fn describe(&self) -> String {
        match self {
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

/// A pod the config wants captured.
#[derive(Debug)]
struct CapturedPod {
    /// `namespace/name`, for messages.
    name: String,
    spec: CaptureSpec,
    /// `None` when the netns could not be opened (see `status`).
    netns: Option<OpenNetnsFile>,
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
    /// The last config's plans, for the view.
    plans: Vec<PodPlan>,
    mesh: MeshState,
    /// The TLS credentials of this node's gateway servers, as last sent.
    credentials: Vec<GatewayCredential>,
    proxy: Option<ProxyLink>,
    /// The last proxy refused (pid, why), until one is served.
    refused: Option<(u32, String)>,
    /// Netns cookies that had capture state when the agent started and that no pod has
    /// claimed yet; what is left after the first config is removed.
    inherited: Option<BTreeSet<u64>>,
    view: watch::Sender<NodeView>,
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
        Self {
            capture,
            open_netns: open_pod_netns,
            pods: BTreeMap::new(),
            plans: Vec::new(),
            mesh: MeshState::default(),
            credentials: Vec::new(),
            proxy: None,
            refused: None,
            inherited: Some(inherited.into_iter().collect()),
            view: watch::Sender::new(NodeView::default()),
        }
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
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
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
    pub fn apply(&mut self, snapshot: &Snapshot) {
        // Before the state whose gateway servers need them.
        let credentials = gateway_credentials(snapshot, &snapshot.gateway_secret_refs());
        if credentials != self.credentials {
            self.credentials = credentials;
            self.send(AgentMessage::Credentials {
                credentials: self.credentials.clone(),
            });
        }
        if snapshot.mesh != self.mesh {
            self.mesh = snapshot.mesh.clone();
            self.send(AgentMessage::State {
                state: self.mesh.clone(),
            });
        }
        // Only this node's pods: another node's are its agent's to capture.
        let wanted: BTreeMap<&PodUid, (&PodPlan, &CaptureSpec)> = snapshot
            .pods
            .iter()
            .filter_map(|plan| Some((&plan.uid, (plan, plan.captured_here()?))))
            .collect();

        // A pod that moved to another netns or IP is another pod as far as capture and the
        // proxy are concerned: remove it, then add it again below.
        let gone: Vec<PodUid> = self
            .pods
            .iter()
            .filter(|(uid, pod)| {
                // A pod that became (or stopped being) a gateway pod is served afresh too.
                wanted.get(uid).is_none_or(|(_, spec)| {
                    spec.netns != pod.spec.netns
                        || spec.ip != pod.spec.ip
                        || spec.role != pod.spec.role
                })
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            self.remove(&uid);
        }

        for (uid, (plan, spec)) in wanted {
            if self.pods.contains_key(uid) {
                self.update(uid, spec);
            } else {
                self.add(plan, spec);
            }
        }

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
        self.plans = snapshot.pods.clone();
        self.publish();
    }

    fn add(&mut self, plan: &PodPlan, spec: &CaptureSpec) {
        let mut pod = CapturedPod {
            name: format!("{}/{}", plan.namespace, plan.name),
            spec: spec.clone(),
            netns: None,
            status: PodStatus::Pending,
            capture_on: false,
        };
        self.open(&plan.uid, &mut pod);
        self.pods.insert(plan.uid.clone(), pod);
    }

    /// Opens the pod's netns and hands it to the proxy.
    fn open(&mut self, uid: &PodUid, pod: &mut CapturedPod) {
        let opened = (self.open_netns)(&pod.spec.netns).map_err(|source| Error::Netns {
            pod: pod.name.clone(),
            path: pod.spec.netns.clone(),
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
            netns = %pod.spec.netns.display(),
            netns_cookie = netns.cookie,
            kept_from_earlier_run = pod.capture_on,
            "pod to capture; handing it to the proxy"
        );
        let netns = OpenNetnsFile {
            fd: Arc::new(netns.fd),
            cookie: netns.cookie,
        };
        pod.status = PodStatus::Pending;
        self.send_outgoing(add_pod(
            uid,
            &netns,
            self.capture.inbound_bind(),
            pod.spec.role,
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
                path: pod.spec.netns.clone(),
            }),
            None => Ok(netns),
        }
    }

    /// Same pod, same netns and IP: only the excluded ports can have changed. A netns that
    /// could not be opened is tried again.
    fn update(&mut self, uid: &PodUid, spec: &CaptureSpec) {
        let Some(mut pod) = self.pods.remove(uid) else {
            return;
        };
        if pod.spec != *spec {
            pod.spec = spec.clone();
            if pod.capture_on {
                // Updated in place: the pod's connections are not touched.
                let result = pod.netns.as_ref().map(|netns| {
                    self.capture
                        .add_pod(&pod_capture(&pod.spec, netns))
                        .map_err(|e| capture_error(&pod.name, "update the excluded ports", e))
                });
                if let Some(Err(e)) = result {
                    tracing::error!("{e}");
                    pod.status = PodStatus::Failed(e.to_string());
                }
            }
        }
        if pod.netns.is_none() {
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
        let Some(netns) = &pod.netns else {
            return;
        };
        if let Err(e) = self.capture.remove_pod(netns.cookie, Some(pod.spec.ip)) {
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
                ProxyMessage::PodReady { uid } => self.pod_ready(&uid, fds.into_iter().next()),
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
                "a new proxy connection replaces the previous one"
            );
        }
        if !self.credentials.is_empty() {
            self.send(AgentMessage::Credentials {
                credentials: self.credentials.clone(),
            });
        }
        self.send(AgentMessage::State {
            state: self.mesh.clone(),
        });
        if let Some(maps) = self.capture.splice_maps() {
            self.send_outgoing(Outgoing {
                message: AgentMessage::SpliceMaps,
                fds: maps.into_iter().map(Arc::new).collect(),
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
                let _ = proxy
                    .outbox
                    .send(add_pod(uid, netns, inbound_bind, pod.spec.role));
            }
            handed.push(uid.clone());
        }
        self.send(AgentMessage::Synced { pods: handed });
    }

    /// The proxy listens in the pod's netns: capture turns on.
    fn pod_ready(&mut self, uid: &PodUid, listener: Option<OwnedFd>) {
        let Some(pod) = self.pods.get_mut(uid) else {
            // Removed while the proxy was opening it; RemovePod is on its way.
            return;
        };
        let Some(netns) = &pod.netns else {
            return;
        };
        if pod.spec.role == PodRole::Gateway {
            // Served, and nothing to capture: its listeners are the Gateways' own ports.
            if pod.status != PodStatus::Ready {
                tracing::info!(pod = %pod.name, netns_cookie = netns.cookie, "gateway pod served");
            }
            pod.status = PodStatus::Ready;
            return;
        }
        let result = match &listener {
            None => Err(Error::NoListener {
                pod: pod.name.clone(),
            }),
            Some(listener) => self
                .capture
                .add_pod(&pod_capture(&pod.spec, netns))
                .map_err(|e| capture_error(&pod.name, "turn capture on", e))
                .and_then(|()| {
                    self.capture
                        .set_inbound_listener(pod.spec.ip, listener.as_fd())
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
                if let Err(e) = self.capture.remove_pod(netns.cookie, Some(pod.spec.ip)) {
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

    fn send(&self, message: AgentMessage) {
        self.send_outgoing(Outgoing {
            message,
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
            .plans
            .iter()
            .map(|plan| {
                let pod = self.pods.get(&plan.uid);
                api::Workload {
                    namespace: plan.namespace.clone(),
                    name: plan.name.clone(),
                    uid: plan.uid.clone(),
                    ip: plan.ip,
                    node: Some(plan.node.clone()),
                    captured: plan.captured(),
                    reason: plan.reason.clone(),
                    netns: plan.capture.as_ref().map(|spec| spec.netns.clone()),
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
        };
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
) -> Outgoing {
    Outgoing {
        message: AgentMessage::AddPod {
            uid: uid.clone(),
            netns_cookie: netns.cookie,
            inbound_bind,
            role,
        },
        fds: vec![Arc::clone(&netns.fd)],
    }
}

fn pod_capture<'a>(spec: &'a CaptureSpec, netns: &'a OpenNetnsFile) -> PodCapture<'a> {
    PodCapture {
        netns_cookie: netns.cookie,
        netns: netns.fd.as_fd(),
        netns_path: &spec.netns,
        pod_ip: spec.ip,
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
