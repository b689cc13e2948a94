//! The agent's composition root: the control and admin sockets, capture, the config watcher
//! and the reconciler, until SIGTERM/SIGINT or an uninstall.
//!
//! Stopping on a signal leaves capture pinned (the next agent adopts it); only an uninstall
//! removes it, and then the sockets go too.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminContext, AdminServer};
use crate::bpf_log::{self, Forwarder};
use crate::ca::token_review::ReviewOptions;
use crate::ca::{self, CaMode, CaOptions, Cluster};
use crate::capture::ebpf::{BpfLogLevel, CaptureOptions};
use crate::capture::{self, Capture, Installed};
use crate::cni_install::{self, CniInstall};
use crate::cni_server::{self, CniContext, CniServer};
use crate::config;
use crate::control::{self, ControlServer};
use crate::discovery;
use crate::own_daemon_set;
use crate::pod_marks;
use crate::pods::Reconciler;
use crate::source;
use shunt_api::capture::CaptureMode;
use shunt_api::run_dir::{self, RunDir};

/// How long the tasks get to finish once the agent stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);
/// Proxy events waiting for the reconciler; the control server waits when it is full.
const PROXY_EVENTS: usize = 64;
/// How often the CNI install is checked (a primary CNI may rewrite its config).
const CNI_RECHECK: Duration = Duration::from_secs(5);

/// Where the config comes from (`--source`).
#[derive(Clone, Debug)]
pub enum SourceOptions {
    /// Local mode: the YAML of `--config-dir`.
    Local { config_dir: PathBuf },
    /// The Kubernetes API: `--kubeconfig`, else in-cluster, else the default kubeconfig.
    Kube { kubeconfig: Option<PathBuf> },
}

#[derive(Clone, Debug)]
pub struct Options {
    pub source: SourceOptions,
    pub run_dir: RunDir,
    pub capture_mode: CaptureMode,
    /// eBPF capture's options; iptables capture uses only the instance name.
    pub capture: CaptureOptions,
    /// Flags that override the config (e.g. `--outbound-traffic-policy`).
    pub load: config::LoadOptions,
    /// The CA mode (`--ca-listen`), when on.
    pub ca: Option<CaOptions>,
    /// With `--source kube`: how the CA reviews the proxies' tokens.
    pub ca_review: ReviewOptions,
    /// With `--source kube`: the ConfigMap (namespace, name) the CA publishes its roots to.
    pub ca_root_config_map: Option<(String, String)>,
    /// What the eBPF programs report to the agent's log (`--bpf-log`).
    pub bpf_log: BpfLogLevel,
    /// Where the `/proc` scan of netns discovery reads (`--proc-root`; the host's `/proc`).
    pub proc_root: PathBuf,
    /// Chains `shunt-cni` into the node's CNI config (`--install-cni`), when on.
    pub cni: Option<CniInstall>,
    /// shunt's namespace (`--system-namespace`), where Kubernetes mode finds its own
    /// DaemonSet at SIGTERM ([`own_daemon_set`]).
    pub system_namespace: String,
}

impl Options {
    /// What this agent installs, and `--uninstall` removes.
    #[must_use]
    pub fn installed(&self) -> Installed {
        Installed {
            ebpf: self.capture.clone(),
            iptables_records: capture::iptables_records(self.run_dir.path()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {} capture: {source}", mode.name())]
    Capture {
        mode: CaptureMode,
        source: capture::Error,
    },
    #[error(transparent)]
    Config(#[from] source::local_dir::Error),
    #[error(transparent)]
    Kube(#[from] source::kube::Error),
    #[error(transparent)]
    RunDir(#[from] run_dir::Error),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error(transparent)]
    Admin(#[from] admin::Error),
    #[error(transparent)]
    Cni(#[from] cni_server::Error),
    #[error("removing shunt-cni: {0}")]
    CniUninstall(#[from] cni_install::Error),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("--ca-only needs --source kube and --ca-listen")]
    CaOnly,
}

/// A source that has read its first config, to be watched from then on.
enum Started {
    Local(PathBuf),
    /// With the client the pod marks are written through.
    Kube(Box<source::kube::KubeSource>, kube::Client),
}

/// Why the agent stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    Signal(&'static str),
    Uninstalled,
}

pub async fn run(options: Options) -> Result<Stopped, Error> {
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    // Read first: a wrong --config-dir, or an API server that cannot be reached, fails (or
    // waits) before anything is installed.
    let (initial, started) = match &options.source {
        SourceOptions::Local { config_dir } => (
            source::local_dir::load(config_dir, &options.load)?,
            Started::Local(config_dir.clone()),
        ),
        SourceOptions::Kube { kubeconfig } => {
            let client = source::kube::connect(kubeconfig.as_deref()).await?;
            let mut kube = source::kube::KubeSource::start(
                client.clone(),
                options.load.clone(),
                source::kube::DEFAULT_PAGE_SIZE,
            );
            tracing::info!("listing the cluster's objects from the API server");
            let listed = tokio::select! {
                listed = kube.listed() => listed,
                _ = terminate.recv() => return Ok(Stopped::Signal("SIGTERM")),
                _ = interrupt.recv() => return Ok(Stopped::Signal("SIGINT")),
            };
            (listed, Started::Kube(Box::new(kube), client))
        }
    };

    // The sockets before capture: a second agent for the same instance stops here, before it
    // touches the kernel.
    options.run_dir.create()?;
    let control = ControlServer::bind(&options.run_dir.control_socket())?;
    let admin = AdminServer::bind(&options.run_dir.admin_socket())?;
    let cni = CniServer::bind(&options.run_dir.cni_socket())?;
    // A program the verifier rejects (or a missing iptables) fails here, with its log: never
    // run without capture.
    let installed = options.installed();
    let capture = match Capture::load(options.capture_mode, &installed) {
        Ok(capture) => capture,
        Err(source) => {
            // Nobody will answer on them.
            let _ = options.run_dir.remove_sockets();
            return Err(Error::Capture {
                mode: options.capture_mode,
                source,
            });
        }
    };

    let shutdown = CancellationToken::new();
    let uninstalled = CancellationToken::new();
    source::local_dir::watch::log_changes(None, &initial);
    let (snapshots_tx, snapshots) = watch::channel(Arc::new(initial));
    let (watcher, kube_client) = match started {
        Started::Local(config_dir) => (
            source::local_dir::watch::spawn(&config_dir, snapshots_tx, shutdown.clone())?,
            None,
        ),
        Started::Kube(kube, client) => (kube.spawn(snapshots_tx, shutdown.clone()), Some(client)),
    };
    let control = control.require_cgroup(capture.proxy_cgroup());
    let reconciler = Reconciler::new(capture.clone());
    let bpf_logs = match capture.start_bpf_log(options.bpf_log, Forwarder::new(reconciler.view())) {
        Ok(logs) => logs,
        Err(source) => {
            let _ = options.run_dir.remove_sockets();
            return Err(Error::Capture {
                mode: options.capture_mode,
                source,
            });
        }
    };
    if options.bpf_log != BpfLogLevel::Off && bpf_logs.is_none() {
        tracing::warn!(
            "--bpf-log: {} capture runs no eBPF programs",
            options.capture_mode.name()
        );
    }
    let mut tasks = JoinSet::new();
    // Beside everything else: a CA that cannot start is reported, and capture goes on.
    let ca = options.ca.clone().map(|ca_options| {
        let (mut ca, status) = CaMode::new(ca_options);
        // In a cluster, nodes are authenticated as istiod does it: TokenReviews.
        if let Some(client) = kube_client.clone() {
            ca = ca.in_cluster(Cluster {
                client,
                review: options.ca_review.clone(),
                root_config_map: options.ca_root_config_map.clone(),
            });
        }
        tasks.spawn(ca.run(snapshots.clone(), shutdown.clone()));
        status
    });
    let context = Arc::new(AdminContext {
        capture,
        installed,
        config: snapshots.clone(),
        node: reconciler.view(),
        uninstalled: uninstalled.clone(),
        ca,
    });
    let cni_context = Arc::new(CniContext {
        config: snapshots.clone(),
        node: reconciler.view(),
        discovery: reconciler.discovery_events(),
    });
    tasks.spawn(discovery::run_scanner(
        options.proc_root.clone(),
        reconciler.pending_discovery(),
        reconciler.discovery_events(),
        shutdown.clone(),
    ));
    tasks.spawn(cni.run(cni_context, shutdown.clone()));
    if let Some(install) = options.cni.clone() {
        tasks.spawn(keep_cni_installed(install, shutdown.clone()));
    }
    // Kubernetes mode only: local mode's pods are files, and get no marks.
    if let Some(client) = kube_client.clone() {
        tasks.spawn(pod_marks::run(
            client,
            snapshots.clone(),
            reconciler.view(),
            shutdown.clone(),
            uninstalled.clone(),
        ));
    }
    let (events_tx, events) = mpsc::channel(PROXY_EVENTS);
    tasks.spawn(reconciler.run(snapshots, events, shutdown.clone()));
    tasks.spawn(control.run(events_tx, shutdown.clone()));
    tasks.spawn(admin.run(Arc::clone(&context), shutdown.clone()));
    if let Some(logs) = bpf_logs {
        tasks.spawn(bpf_log::forward(logs, shutdown.clone()));
    }
    tracing::info!(
        instance = %options.capture.instance,
        capture = options.capture_mode.name(),
        run_dir = %options.run_dir.path().display(),
        "shunt-agent running"
    );

    let mut stopped = tokio::select! {
        _ = terminate.recv() => Stopped::Signal("SIGTERM"),
        _ = interrupt.recv() => Stopped::Signal("SIGINT"),
        () = uninstalled.cancelled() => Stopped::Uninstalled,
    };
    tracing::info!(?stopped, "stopping");
    let uninstall_at_stop = match (stopped, &kube_client) {
        (Stopped::Signal(_), Some(client)) => {
            own_daemon_set_gone(client, &options.system_namespace).await
        }
        _ => false,
    };
    if uninstall_at_stop {
        stopped = Stopped::Uninstalled;
        // Before `shutdown`: the marks task sees it as it stops, and clears the pods' marks.
        uninstalled.cancel();
    }
    shutdown.cancel();
    if uninstall_at_stop {
        remove_capture(&context);
    }
    let finished = tokio::time::timeout(STOP_TIMEOUT, async {
        let _ = watcher.await;
        tasks.join_all().await;
    })
    .await;
    if finished.is_err() {
        tracing::warn!("some tasks did not stop within {STOP_TIMEOUT:?}");
    }
    match stopped {
        Stopped::Uninstalled => {
            let mut removed = options.run_dir.remove_sockets()?;
            if let Some(cni) = &options.cni {
                removed.extend(cni_install::uninstall(
                    &cni.bin_dir,
                    &cni.conf_dir,
                    &cni.agent_socket,
                )?);
            }
            for path in removed {
                tracing::info!(path = %path.display(), "removed");
            }
        }
        Stopped::Signal(_) => {
            tracing::info!(
                "capture stays installed (pins or iptables rules); the next shunt-agent adopts it"
            );
        }
    }
    Ok(stopped)
}

/// Kubernetes mode at SIGTERM: whether the agent's DaemonSet is gone or being deleted (an
/// uninstall: capture, marks and CNI entries go); a rollout keeps everything.
async fn own_daemon_set_gone(client: &kube::Client, namespace: &str) -> bool {
    let own = own_daemon_set::check(client, namespace).await;
    if !own.uninstalls() {
        tracing::info!(
            daemon_set = %format!("{namespace}/{}", own_daemon_set::DAEMON_SET),
            state = ?own,
            "the agent's DaemonSet stays: capture and the CNI entries stay for the next agent"
        );
        return false;
    }
    tracing::info!(state = ?own, "the agent's DaemonSet is being deleted: uninstalling");
    true
}

/// Unpins capture as the agent stops uninstalled.
fn remove_capture(context: &AdminContext) {
    match context.capture.uninstall(&context.installed) {
        Ok(removed) => {
            for path in removed {
                tracing::info!(path = %path.display(), "removed");
            }
        }
        Err(e) => tracing::error!(
            "cannot remove capture: {e}; run `shunt-agent --uninstall` on this node, or its pods' \
             connections keep going to a proxy that is gone"
        ),
    }
}

/// The CA-only process (`--ca-only`): the CA of a cluster, nothing else, until SIGTERM/SIGINT.
pub async fn run_ca_only(options: Options) -> Result<Stopped, Error> {
    let mut terminate = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(Error::Signals)?;
    let (SourceOptions::Kube { kubeconfig }, Some(ca_options)) = (&options.source, &options.ca)
    else {
        return Err(Error::CaOnly);
    };
    let client = source::kube::connect(kubeconfig.as_deref()).await?;
    let shutdown = CancellationToken::new();
    let cluster = Cluster {
        client,
        review: options.ca_review.clone(),
        root_config_map: options.ca_root_config_map.clone(),
    };
    let (_status, task) = ca::spawn_in_cluster(
        ca_options.clone(),
        cluster,
        options.load.clone(),
        shutdown.clone(),
    );
    tracing::info!(listen = %ca_options.listen, "shunt-agent running as the CA only");
    let stopped = tokio::select! {
        _ = terminate.recv() => Stopped::Signal("SIGTERM"),
        _ = interrupt.recv() => Stopped::Signal("SIGINT"),
    };
    tracing::info!(?stopped, "stopping");
    shutdown.cancel();
    if tokio::time::timeout(STOP_TIMEOUT, task).await.is_err() {
        tracing::warn!("the CA did not stop within {STOP_TIMEOUT:?}");
    }
    Ok(stopped)
}

/// Chains `shunt-cni` into the node's CNI config, and keeps it there: at start, then every
/// [`CNI_RECHECK`] (the primary CNI may write its config later, or rewrite it).
async fn keep_cni_installed(install: CniInstall, shutdown: CancellationToken) {
    let mut last_error = None;
    loop {
        let attempt = install.clone();
        match tokio::task::spawn_blocking(move || attempt.install()).await {
            Ok(Ok(installed)) => {
                last_error = None;
                if installed.changed {
                    tracing::info!(
                        config = %installed.config.display(),
                        converted_from = ?installed.converted_from,
                        bin_dir = %install.bin_dir.display(),
                        "shunt-cni chained after the primary CNI"
                    );
                }
            }
            Ok(Err(e)) => {
                let message = e.to_string();
                if last_error.as_ref() != Some(&message) {
                    tracing::warn!("cannot install shunt-cni: {message}");
                    last_error = Some(message);
                }
            }
            Err(e) => tracing::error!("installing shunt-cni panicked: {e}"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CNI_RECHECK) => {}
        }
    }
}
