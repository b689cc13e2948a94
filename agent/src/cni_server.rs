//! The agent's end of `shunt-cni` (`<run-dir>/cni.sock`, `shunt_api::cni`): the runtime runs
//! the plugin for every pod sandbox, after the primary CNI, and the plugin asks here.
//!
//! - `ADD`: is the pod captured? If so, the sandbox's netns (and the primary CNI's IP) go to
//!   the reconciler as a discovery, and the answer waits until the pod's status is ready —
//!   the proxy listens in that netns and capture is on — bounded by the plugin's timeout. A
//!   pod the config does not know (yet) fails the ADD: kubelet retries, and the pod never
//!   starts uncaptured.
//! - `DEL`: the reconciler forgets the sandbox's netns (capture off, the proxy drops the pod).
//! - `CHECK`: a captured pod must be ready in that netns.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shunt_api::cni::{self as wire, CniAnswer, CniCommand, CniPod, CniRequest};
use shunt_api::run_dir;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{NetnsSource, PodPlan, Snapshot};
use crate::discovery::{Discovered, Discovery, DiscoveryEvent, Origin, PodRef};
use crate::pods::{NodeView, PodStatus};

/// How long the plugin gets to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a DEL waits for the reconciler to have forgotten the netns.
const DEL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Socket(#[from] run_dir::Error),
}

/// What the CNI server reads and where it sends what it learns.
pub struct CniContext {
    pub config: watch::Receiver<Arc<Snapshot>>,
    pub node: watch::Receiver<NodeView>,
    pub discovery: mpsc::Sender<Discovery>,
}

pub struct CniServer {
    listener: UnixListener,
    path: PathBuf,
}

impl CniServer {
    /// Listens on `path` (mode 0600: the runtime runs the plugin as root).
    pub fn bind(path: &Path) -> Result<Self, Error> {
        Ok(Self {
            listener: run_dir::bind_socket(path)?,
            path: path.to_owned(),
        })
    }

    /// Serves until `shutdown`; an ADD still waiting then fails (the runtime retries).
    pub async fn run(self, context: Arc<CniContext>, shutdown: CancellationToken) {
        tracing::info!(socket = %self.path.display(), "CNI plugin socket listening");
        let mut requests = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
                Some(_) = requests.join_next() => continue,
            };
            match accepted {
                Ok((stream, _)) => {
                    let context = Arc::clone(&context);
                    let shutdown = shutdown.clone();
                    requests.spawn(async move {
                        tokio::select! {
                            () = serve(stream, &context) => {}
                            () = shutdown.cancelled() => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a CNI plugin connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        requests.shutdown().await;
    }
}

async fn serve(stream: UnixStream, context: &CniContext) {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = BufReader::new(read.take(wire::MAX_LINE as u64));
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await;
    let answer = match read {
        Err(_) => CniAnswer::Failed {
            error: format!("no request within {REQUEST_TIMEOUT:?}"),
        },
        Ok(Err(e)) => CniAnswer::Failed {
            error: format!("reading the request: {e}"),
        },
        Ok(Ok(_)) => match wire::decode_line::<CniRequest>(&line, "request") {
            Ok(request) => answer(context, request).await,
            Err(e) => CniAnswer::Failed {
                error: e.to_string(),
            },
        },
    };
    let mut out = Vec::new();
    if let Err(e) = wire::write_line(&mut out, "answer", &answer) {
        tracing::error!("cannot encode the CNI answer: {e}");
        return;
    }
    if let Err(e) = write.write_all(&out).await {
        tracing::warn!("the CNI plugin left before its answer: {e}");
    }
}

async fn answer(context: &CniContext, request: CniRequest) -> CniAnswer {
    let command = request.command;
    let pod = request.pod.clone();
    let answer = match command {
        CniCommand::Add => add(context, request).await,
        CniCommand::Del => del(context, request).await,
        CniCommand::Check => check(context, &request),
    };
    match &answer {
        CniAnswer::Failed { error } => tracing::warn!(%pod, ?command, "CNI: {error}"),
        answer => tracing::info!(%pod, ?command, ?answer, "CNI"),
    }
    answer
}

/// The pod's plan: by uid when the runtime gave one, else by namespace and name.
fn find_plan(snapshot: &Snapshot, pod: &CniPod) -> Option<PodPlan> {
    snapshot
        .pods
        .iter()
        .find(|plan| {
            plan.namespace == pod.namespace
                && plan.name == pod.name
                && pod
                    .uid
                    .as_deref()
                    .is_none_or(|uid| plan.uid.as_str() == uid)
        })
        .cloned()
}

async fn add(context: &CniContext, request: CniRequest) -> CniAnswer {
    let wait = Duration::from_millis(request.timeout_ms.min(wire::MAX_WAIT_MS));
    let deadline = Instant::now() + wait;
    let pod = &request.pod;
    let Some(netns) = request.netns.clone() else {
        return failed(format!("ADD for pod {pod} came without CNI_NETNS"));
    };

    // The config may lag behind the runtime by a moment (a watch not caught up yet).
    let mut config = context.config.clone();
    let plan = loop {
        if let Some(plan) = find_plan(&config.borrow_and_update(), pod) {
            break plan;
        }
        if tokio::time::timeout_at(deadline, config.changed())
            .await
            .is_err()
        {
            return failed(format!(
                "pod {pod} is not in the agent's config (waited {wait:?}); it must be known \
                 before it can start, captured or not"
            ));
        }
    };
    let Some(spec) = plan.capture.as_ref() else {
        return CniAnswer::NotCaptured {
            reason: plan.reason,
        };
    };
    if !plan.on_this_node {
        return failed(format!(
            "pod {pod}: the config places it on node {}, but its sandbox is being made on \
             this agent's node (check the agent's --node-name)",
            plan.node
        ));
    }
    let discovered = spec.netns == NetnsSource::Discovered;
    if discovered {
        let (applied, done) = oneshot::channel();
        let event = DiscoveryEvent::Found(Discovered {
            pod: PodRef {
                namespace: plan.namespace.clone(),
                name: plan.name.clone(),
                uid: Some(plan.uid.clone()),
            },
            netns: netns.clone(),
            ips: request.ips.clone(),
            origin: Origin::Cni {
                container_id: request.container_id.clone(),
            },
        });
        let sent = context
            .discovery
            .send(Discovery {
                event,
                applied: Some(applied),
            })
            .await;
        if sent.is_err() || tokio::time::timeout_at(deadline, done).await.is_err() {
            return failed(format!("the agent is stopping; pod {pod} is not captured"));
        }
    }

    // The reconciler has acted on the netns: what the view says now is about this sandbox.
    let mut node = context.node.clone();
    loop {
        let status = {
            let view = node.borrow_and_update();
            view.pods.get(&plan.uid).cloned()
        };
        let here =
            |state_netns: &Option<PathBuf>| !discovered || state_netns.as_ref() == Some(&netns);
        match status {
            Some(state) if state.status == PodStatus::Ready && here(&state.netns) => {
                return CniAnswer::Captured {
                    detail: format!(
                        "pod {pod} captured in {}: the proxy listens there",
                        netns.display()
                    ),
                };
            }
            Some(state) => {
                if let PodStatus::Failed(error) = &state.status {
                    return failed(error.clone());
                }
                let last = state.status.describe();
                if tokio::time::timeout_at(deadline, node.changed())
                    .await
                    .is_err()
                {
                    return failed(format!(
                        "pod {pod} was not captured within {wait:?} (its status: {last}); is \
                         shunt-proxy running and connected to the agent?"
                    ));
                }
            }
            None => {
                if tokio::time::timeout_at(deadline, node.changed())
                    .await
                    .is_err()
                {
                    return failed(format!(
                        "pod {pod} is captured by the config but the agent does not hold it \
                         (waited {wait:?})"
                    ));
                }
            }
        }
    }
}

async fn del(context: &CniContext, request: CniRequest) -> CniAnswer {
    let (applied, done) = oneshot::channel();
    let event = DiscoveryEvent::Gone {
        pod: PodRef {
            namespace: request.pod.namespace.clone(),
            name: request.pod.name.clone(),
            uid: request.pod.uid.clone().map(Into::into),
        },
        container_id: request.container_id,
    };
    let sent = context
        .discovery
        .send(Discovery {
            event,
            applied: Some(applied),
        })
        .await;
    // DEL succeeds regardless: the netns is going whatever the agent does.
    if sent.is_ok() {
        let _ = tokio::time::timeout(DEL_TIMEOUT, done).await;
    }
    CniAnswer::Forgotten
}

fn check(context: &CniContext, request: &CniRequest) -> CniAnswer {
    let pod = &request.pod;
    let Some(plan) = find_plan(&context.config.borrow(), pod) else {
        return failed(format!("pod {pod} is not in the agent's config"));
    };
    let Some(spec) = plan.captured_here() else {
        return CniAnswer::NotCaptured {
            reason: plan.reason,
        };
    };
    let discovered = spec.netns == NetnsSource::Discovered;
    let state = context.node.borrow().pods.get(&plan.uid).cloned();
    match state {
        Some(state)
            if state.status == PodStatus::Ready
                && (!discovered || state.netns == request.netns) =>
        {
            CniAnswer::Captured {
                detail: format!("pod {pod} is captured"),
            }
        }
        Some(state) => failed(format!(
            "pod {pod} should be captured in {} but is not: netns {}, status {}",
            request
                .netns
                .as_deref()
                .map_or_else(|| "(no CNI_NETNS)".into(), |p| p.display().to_string()),
            state
                .netns
                .as_deref()
                .map_or_else(|| "unknown".into(), |p| p.display().to_string()),
            state.status.describe()
        )),
        None => failed(format!(
            "pod {pod} should be captured but the agent does not hold it"
        )),
    }
}

fn failed(error: String) -> CniAnswer {
    CniAnswer::Failed { error }
}
