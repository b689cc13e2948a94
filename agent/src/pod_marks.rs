//! `shunt.io/captured: "true"` on each pod of this node that the agent captures, as istio-cni
//! marks ztunnel's with `ambient.istio.io/redirection`: other nodes read it to know that the
//! pod takes HBONE ([`crate::config::mesh::marked_captured`]).
//!
//! The mark follows the reconciler: set once the pod is ready (the proxy listens and capture
//! is on), kept while it is pending or the reconciler has not seen it yet (an agent restart
//! passes through both, and must not unmark pods whose capture stays pinned), removed when
//! the pod is no longer captured or its capture failed, and from every pod when the agent is
//! uninstalled. A write that fails is logged and retried on
//! the next change; capture never waits for one. Only Kubernetes mode writes
//! ([`MarkWriter`] for a `kube::Client`, a JSON merge patch through `pods/status`); local
//! mode runs no writer.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use shunt_mesh::ids::PodUid;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Snapshot;
use crate::config::mesh::CAPTURED_ANNOTATION;
use crate::pods::{NodeView, PodStatus};

/// How long one write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the uninstall's removals may take together.
const CLEAR_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets or removes the mark on one pod: a seam, so the decisions are tested without an API
/// server.
pub trait MarkWriter {
    type Error: std::fmt::Display;
    fn set(
        &self,
        namespace: &str,
        name: &str,
        captured: bool,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

impl MarkWriter for kube::Client {
    type Error = kube::Error;

    /// A merge patch of the annotation (`null` removes it) through `pods/status`, the
    /// subresource istio-cni patches, so the agent needs no write access to pods themselves.
    async fn set(&self, namespace: &str, name: &str, captured: bool) -> Result<(), kube::Error> {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(self.clone(), namespace);
        let value = if captured {
            serde_json::Value::from("true")
        } else {
            serde_json::Value::Null
        };
        let patch = serde_json::json!({"metadata": {"annotations": {CAPTURED_ANNOTATION: value}}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(drop)
    }
}

/// One write to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub uid: PodUid,
    pub namespace: String,
    pub name: String,
    /// Set (`true`) or remove.
    pub captured: bool,
}

/// What has been asked of each pod, so a write is not repeated while the watch has not yet
/// brought the pod back with it.
#[derive(Debug, Default)]
pub struct Marks {
    /// By pod uid: the mark asked for, and where the pod was read then (in Kubernetes mode,
    /// its resourceVersion: a new one is a change).
    asked: HashMap<PodUid, (bool, PathBuf)>,
}

impl Marks {
    /// The writes that bring this node's pods in line with what the reconciler captures.
    pub fn changes(&mut self, snapshot: &Snapshot, view: &NodeView) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut here = Vec::new();
        for (sourced, plan) in snapshot.config.pods.iter().zip(&snapshot.pods) {
            if !plan.on_this_node {
                continue;
            }
            here.push(plan.uid.clone());
            let status = view.pods.get(&plan.uid).map(|pod| &pod.status);
            let want = match status {
                _ if !plan.captured() => false,
                Some(PodStatus::Ready) => true,
                // Left as it is: see the module doc. Not in the view at all: the view lags
                // this config (at start, before the first reconciliation).
                Some(PodStatus::Pending) | None => continue,
                Some(PodStatus::PendingDiscovery | PodStatus::Failed(_)) => false,
            };
            let has = sourced.object.metadata.annotations.get(CAPTURED_ANNOTATION);
            let done = if want {
                has.map(String::as_str) == Some("true")
            } else {
                has.is_none()
            };
            if done {
                self.asked.remove(&plan.uid);
                continue;
            }
            let asked = (want, sourced.file.clone());
            if self.asked.get(&plan.uid) == Some(&asked) {
                continue; // Written; the watch has not brought it back yet.
            }
            self.asked.insert(plan.uid.clone(), asked);
            changes.push(Change {
                uid: plan.uid.clone(),
                namespace: plan.namespace.clone(),
                name: plan.name.clone(),
                captured: want,
            });
        }
        self.asked.retain(|uid, _| here.contains(uid));
        changes
    }

    /// A write failed: asked again on the next change.
    pub fn failed(&mut self, uid: &PodUid) {
        self.asked.remove(uid);
    }
}

/// Every mark on this node's pods, to be removed (the agent is uninstalled).
#[must_use]
pub fn removals(snapshot: &Snapshot) -> Vec<Change> {
    snapshot
        .config
        .pods
        .iter()
        .zip(&snapshot.pods)
        .filter(|(sourced, plan)| {
            plan.on_this_node
                && sourced
                    .object
                    .metadata
                    .annotations
                    .contains_key(CAPTURED_ANNOTATION)
        })
        .map(|(_, plan)| Change {
            uid: plan.uid.clone(),
            namespace: plan.namespace.clone(),
            name: plan.name.clone(),
            captured: false,
        })
        .collect()
}

/// Keeps the marks in line with every config reading and reconciliation until `shutdown`;
/// then, if `uninstalled`, removes them all.
pub async fn run<W: MarkWriter>(
    writer: W,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    mut view: watch::Receiver<NodeView>,
    shutdown: CancellationToken,
    uninstalled: CancellationToken,
) {
    let mut marks = Marks::default();
    loop {
        let changes = {
            let snapshot = Arc::clone(&snapshots.borrow_and_update());
            marks.changes(&snapshot, &view.borrow_and_update())
        };
        for change in changes {
            if let Err(e) = write(&writer, &change).await {
                tracing::warn!(
                    pod = %format_args!("{}/{}", change.namespace, change.name),
                    "cannot {} {CAPTURED_ANNOTATION}: {e}; retried on the next change",
                    if change.captured { "set" } else { "remove" },
                );
                marks.failed(&change.uid);
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
            changed = view.changed() => if changed.is_err() { break },
        }
    }
    if uninstalled.is_cancelled() {
        let removals = removals(&snapshots.borrow());
        let writes =
            futures_util::future::join_all(removals.iter().map(|change| write(&writer, change)));
        match tokio::time::timeout(CLEAR_TIMEOUT, writes).await {
            Ok(results) => {
                for (change, result) in removals.iter().zip(results) {
                    if let Err(e) = result {
                        tracing::warn!(
                            pod = %format_args!("{}/{}", change.namespace, change.name),
                            "uninstall: cannot remove {CAPTURED_ANNOTATION}: {e}"
                        );
                    }
                }
            }
            Err(_) => tracing::warn!(
                "uninstall: {CAPTURED_ANNOTATION} not removed from every pod within \
                 {CLEAR_TIMEOUT:?}"
            ),
        }
    }
}

async fn write<W: MarkWriter>(writer: &W, change: &Change) -> Result<(), String> {
    let written = writer.set(&change.namespace, &change.name, change.captured);
    match tokio::time::timeout(WRITE_TIMEOUT, written).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
    }
}

#[cfg(test)]
mod tests;
