//! The proxy's end of the control connection: dials the agent, applies what it says, and keeps
//! everything (state and pods' listeners) while the agent is away.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use super::tcp_events;
use crate::gateway::CredentialStore;
use crate::inpod::PodRegistry;
use crate::splice::{AgentMaps, Splicer};
use crate::state::StateStore;
use crate::telemetry::tcp::TcpWatches;
use shunt_api::control::{
    self as wire, AgentMessage, InboundBind, ListenerKind, PodRole, ProxyMessage,
};
use shunt_mesh::ids::PodUid;

/// How often the proxy redials a control socket that is away.
pub const REDIAL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot connect to the agent's control socket {path} (is shunt-agent running?): {source}"
    )]
    Connect { path: PathBuf, source: io::Error },
    #[error("control connection to the agent failed: {0}")]
    Wire(#[from] wire::Error),
    #[error("the agent refused this proxy: {0}")]
    Refused(String),
    #[error("a newer proxy has taken over from this one")]
    Superseded,
}

/// Keeps the proxy in step with the agent.
pub struct ControlClient {
    socket_path: PathBuf,
    state: Arc<StateStore>,
    pods: Arc<PodRegistry>,
    splice: Arc<Splicer>,
    credentials: Arc<CredentialStore>,
    /// Where the kernel's TCP events go, and the task reading the agent's ring buffer.
    tcp: Option<Arc<TcpWatches>>,
    tcp_reader: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ControlClient {
    #[must_use]
    pub fn new(
        socket_path: PathBuf,
        state: Arc<StateStore>,
        pods: Arc<PodRegistry>,
        splice: Arc<Splicer>,
        credentials: Arc<CredentialStore>,
    ) -> Self {
        Self {
            socket_path,
            state,
            pods,
            splice,
            credentials,
            tcp: None,
            tcp_reader: std::sync::Mutex::new(None),
        }
    }

    /// Reads the agent's `TCP_EVENTS` ring buffer (`AgentMessage::TcpEvents`) into `watches`.
    #[must_use]
    pub fn with_tcp_watches(mut self, watches: Arc<TcpWatches>) -> Self {
        self.tcp = Some(watches);
        self
    }

    /// A (newer) ring buffer from the agent: its reader replaces the previous one.
    fn read_tcp_events(&self, fds: Vec<OwnedFd>) {
        let Some(watches) = &self.tcp else {
            return;
        };
        let count = fds.len();
        let Ok([fd]) = <[OwnedFd; 1]>::try_from(fds) else {
            tracing::warn!(
                "the agent's TcpEvents message carried {count} descriptors; expected 1 \
                 (TCP_EVENTS): kernel TCP telemetry falls back to TCP_INFO readings"
            );
            return;
        };
        let mut reader = self
            .tcp_reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(old) = reader.take() {
            old.abort();
        }
        match tcp_events::spawn(fd, Arc::clone(watches)) {
            Ok(task) => {
                *reader = Some(task);
                tracing::info!("reading the kernel's TCP events (RTT, retransmits at close)");
            }
            Err(error) => {
                watches.set_kernel_events(false);
                tracing::warn!(%error, "kernel TCP events off");
            }
        }
    }

    /// Dials, serves a session, and redials every [`REDIAL_INTERVAL`] while the agent is away,
    /// until `shutdown` fires.
    pub async fn run(&self, shutdown: CancellationToken) {
        // Warn once per outage; every failed redial after that is only debug noise.
        let mut outage_reported = false;
        loop {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return,
                outcome = self.dial_and_serve() => outcome,
            };
            match outcome {
                // Redialing would take the pods back from the newer proxy.
                Err(Error::Superseded) => {
                    tracing::info!(
                        "a newer proxy has taken over the pods (the agent keeps their listeners \
                         for it); serving what this proxy holds until it is stopped"
                    );
                    return;
                }
                Err(error @ Error::Connect { .. }) if outage_reported => {
                    tracing::debug!(%error, "agent still unreachable");
                }
                // Each redial is checked again: once the operator has fixed what the agent
                // names (say, moved this process into the capture cgroup), the next one is
                // served.
                Err(error @ Error::Refused(_)) if outage_reported => {
                    tracing::debug!(%error, "still refused by the agent");
                }
                Err(error @ Error::Refused(_)) => {
                    tracing::error!(%error, redial_every = ?REDIAL_INTERVAL, "not serving any pod");
                    outage_reported = true;
                }
                Err(error @ Error::Connect { .. }) => {
                    tracing::warn!(
                        %error,
                        redial_every = ?REDIAL_INTERVAL,
                        "agent unreachable; keeping the last state and every pod's listeners"
                    );
                    outage_reported = true;
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        redial_every = ?REDIAL_INTERVAL,
                        "lost the agent; keeping the last state and every pod's listeners"
                    );
                    outage_reported = true;
                }
                Ok(()) => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(REDIAL_INTERVAL) => {}
            }
        }
    }

    async fn dial_and_serve(&self) -> Result<(), Error> {
        let stream = connect(&self.socket_path).await?;
        tracing::info!(socket = %self.socket_path.display(), "connected to the agent");
        self.serve(stream).await
    }

    /// Runs one session on a connected stream until the agent goes away.
    pub async fn serve(&self, mut stream: UnixStream) -> Result<(), Error> {
        let hello = ProxyMessage::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        wire::send(&mut stream, &hello, &[]).await?;
        // Each agent session says anew whether there is anything to splice with.
        self.splice.set(None);
        loop {
            let (message, fds) = wire::recv::<AgentMessage>(&mut stream).await?;
            match message {
                AgentMessage::State { state } => {
                    let errors = self.state.replace(&state);
                    for error in &errors {
                        tracing::warn!(%error, "mesh state problem");
                    }
                    let index = self.state.load();
                    self.pods
                        .mesh_settings_changed(&index.route_table().mesh_settings().trust_domain);
                    // Gateways may have gained or lost ports.
                    self.pods.sync_gateways().await;
                    tracing::info!(
                        workloads = index.workload_count(),
                        services = index.service_count(),
                        problems = errors.len(),
                        "mesh state updated"
                    );
                }
                AgentMessage::AddPod {
                    uid,
                    netns_cookie,
                    inbound_bind,
                    role,
                    listeners,
                } => {
                    let reply = self
                        .add_pod(&uid, netns_cookie, inbound_bind, role, &listeners, fds)
                        .await;
                    match reply {
                        Ok(listeners) => {
                            let ready = ProxyMessage::PodReady {
                                uid,
                                listeners: listeners.iter().map(|(kind, _)| *kind).collect(),
                            };
                            // SCM_RIGHTS gives the agent its own descriptor for each listener;
                            // a gateway pod has none.
                            let fds: Vec<_> =
                                listeners.iter().map(|(_, l)| l.as_raw_fd()).collect();
                            wire::send(&mut stream, &ready, &fds).await?;
                        }
                        Err(error) => {
                            tracing::warn!(pod = %uid, %error, "cannot serve pod");
                            let failed = ProxyMessage::PodFailed { uid, error };
                            wire::send(&mut stream, &failed, &[]).await?;
                        }
                    }
                }
                AgentMessage::RemovePod { uid } => {
                    if !self.pods.remove(uid.as_str()).await {
                        tracing::debug!(pod = %uid, "RemovePod for a pod that was not served");
                    }
                }
                AgentMessage::SpliceMaps => match AgentMaps::from_fds(fds) {
                    Ok(maps) => {
                        self.splice.set(Some(Arc::new(maps)));
                        tracing::info!(
                            "splicing opaque TCP between pods of this node (sockmap shortcut on)"
                        );
                    }
                    Err(error) => tracing::warn!(%error, "splicing stays off"),
                },
                AgentMessage::TcpEvents => self.read_tcp_events(fds),
                AgentMessage::Refused { reason } => return Err(Error::Refused(reason)),
                AgentMessage::Superseded => return Err(Error::Superseded),
                AgentMessage::Credentials { credentials } => {
                    self.credentials.replace(credentials);
                }
                AgentMessage::Synced { pods } => {
                    self.pods.retain(&pods).await;
                    tracing::info!(pods = self.pods.served().len(), "in sync with the agent");
                }
            }
        }
    }

    /// Serves a pod; the error is what `PodFailed` tells the agent.
    async fn add_pod(
        &self,
        uid: &PodUid,
        netns_cookie: u64,
        inbound_bind: InboundBind,
        role: PodRole,
        listeners: &[ListenerKind],
        fds: Vec<OwnedFd>,
    ) -> Result<Vec<(ListenerKind, Arc<tokio::net::TcpListener>)>, String> {
        if fds.len() != 1 + listeners.len() {
            return Err(format!(
                "AddPod for {uid} carried {} descriptors; expected {}: the pod's network \
                 namespace, then its listeners {listeners:?}",
                fds.len(),
                1 + listeners.len()
            ));
        }
        let mut fds = fds.into_iter();
        let netns = fds.next().ok_or("AddPod without its netns")?;
        let adopt = listeners.iter().copied().zip(fds).collect();
        self.pods
            .add(uid.clone(), netns_cookie, inbound_bind, role, netns, adopt)
            .await
            .map_err(|error| error.to_string())
    }
}

async fn connect(path: &Path) -> Result<UnixStream, Error> {
    UnixStream::connect(path)
        .await
        .map_err(|source| Error::Connect {
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests;
