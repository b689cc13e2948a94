//! A Kubernetes Event on each object the loader rejects, so `kubectl describe` shows why:
//! `events.k8s.io/v1`, type `Warning`, reason `InvalidConfig`, the loader's message as the
//! note, reported by `shunt.io/agent` from this node.
//!
//! Once per (object, resourceVersion, message): a snapshot rebuilt for another object's
//! change reports nothing again. Only the errors of the current snapshot are remembered, so
//! memory is bounded by them. The Event's name is derived from what it reports, so an agent
//! that restarts finds its earlier Event (409) instead of writing a second one.

use std::collections::HashSet;
use std::hash::{Hash as _, Hasher as _};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use shunt_api::config::LoadError;
use shunt_api::k8s::NodeName;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// `reportingController` of every Event.
pub const REPORTING_CONTROLLER: &str = "shunt.io/agent";
/// `reason` of every Event.
pub const REASON: &str = "InvalidConfig";
/// What the agent did when it met the error (`action`, required by `events.k8s.io/v1`).
const ACTION: &str = "Load";
/// The API server's limit on `note`.
const NOTE_LIMIT: usize = 1024;
/// Events waiting to be written; beyond that they wait for a later snapshot.
const QUEUE: usize = 256;
/// Where an Event about a cluster-scoped object goes, as client-go puts it.
const CLUSTER_SCOPED_NAMESPACE: &str = "default";

/// (object: uid, else its reference; resourceVersion; message)
type Reported = (String, String, String);

/// Decides which errors get an Event and hands them to the writer task.
pub struct Reporter {
    node: NodeName,
    reported: HashSet<Reported>,
    queue: mpsc::Sender<Event>,
    task: JoinHandle<()>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Reporter {
    pub fn start(client: kube::Client, node: NodeName) -> Self {
        let (queue, events) = mpsc::channel(QUEUE);
        Self {
            node,
            reported: HashSet::new(),
            queue,
            task: tokio::spawn(write(client, events)),
        }
    }

    /// Reports each of `errors` whose object `regarding` finds (one that came from the API)
    /// and that was not reported at this resourceVersion with this message.
    pub fn report(
        &mut self,
        errors: &[LoadError],
        regarding: impl Fn(&LoadError) -> Option<ObjectReference>,
    ) {
        let mut current = HashSet::new();
        for error in errors {
            let Some(object) = regarding(error) else {
                continue;
            };
            let note = note(error);
            let key: Reported = (
                object.uid.clone().unwrap_or_else(|| reference(&object)),
                object.resource_version.clone().unwrap_or_default(),
                note.clone(),
            );
            current.insert(key.clone());
            if self.reported.contains(&key) {
                continue;
            }
            match self.queue.try_send(event(&self.node, object, note)) {
                Ok(()) => {
                    self.reported.insert(key);
                }
                // Not remembered: tried again with the next snapshot.
                Err(_) => tracing::warn!(
                    "too many Events waiting to be written; {} waits for the next change",
                    key.0
                ),
            }
        }
        self.reported.retain(|key| current.contains(key));
    }
}

/// The loader's message, with the field it names, within the API server's limit.
fn note(error: &LoadError) -> String {
    let mut note = match &error.field {
        Some(field) => format!("{field}: {}", error.message),
        None => error.message.clone(),
    };
    if note.len() > NOTE_LIMIT {
        let mut end = NOTE_LIMIT - 3;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push_str("...");
    }
    note
}

/// `Kind ns/name`, for messages.
fn reference(object: &ObjectReference) -> String {
    let kind = object.kind.as_deref().unwrap_or_default();
    let name = object.name.as_deref().unwrap_or_default();
    match &object.namespace {
        Some(namespace) => format!("{kind} {namespace}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn event(node: &NodeName, regarding: ObjectReference, note: String) -> Event {
    let namespace = regarding
        .namespace
        .clone()
        .unwrap_or_else(|| CLUSTER_SCOPED_NAMESPACE.to_owned());
    // Stable for what it reports (a restarted agent writes the same name), distinct between
    // nodes, versions and messages. A name is a DNS subdomain of at most 253 characters.
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (
        node.as_str(),
        &regarding.uid,
        &regarding.resource_version,
        &note,
    )
        .hash(&mut hasher);
    let object_name = regarding.name.as_deref().unwrap_or("object");
    let mut prefix: String = object_name.chars().take(200).collect();
    while prefix.ends_with(['.', '-']) {
        prefix.pop();
    }
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{prefix}.{:016x}", hasher.finish())),
            namespace: Some(namespace),
            ..ObjectMeta::default()
        },
        event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
        type_: Some("Warning".to_owned()),
        reason: Some(REASON.to_owned()),
        action: Some(ACTION.to_owned()),
        note: Some(note),
        regarding: Some(regarding),
        reporting_controller: Some(REPORTING_CONTROLLER.to_owned()),
        // At most 128 characters, a node name up to 253.
        reporting_instance: Some(node.as_str().chars().take(128).collect()),
        ..Event::default()
    }
}

/// Writes the queued Events, one at a time; a failure is logged with the object.
async fn write(client: kube::Client, mut events: mpsc::Receiver<Event>) {
    while let Some(event) = events.recv().await {
        let namespace = event.metadata.namespace.clone().unwrap_or_default();
        let about = event.regarding.as_ref().map(reference).unwrap_or_default();
        let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => tracing::debug!(object = %about, "Event {REASON} written"),
            // An earlier run of this agent wrote it.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => tracing::warn!(object = %about, "cannot write an Event on it: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_is_cut_to_the_api_servers_limit_on_a_character_boundary() {
        for (message, want_len) in [("short", 11), (&"é".repeat(600)[..], NOTE_LIMIT - 1)] {
            let error = LoadError {
                file: "kube resourceVersion 1".into(),
                object: Some("VirtualService shop/a".into()),
                field: Some("spec".into()),
                message: message.to_owned(),
            };
            let note = note(&error);
            assert!(note.starts_with("spec: "));
            assert_eq!(note.len(), want_len, "{note}");
        }
    }
}
