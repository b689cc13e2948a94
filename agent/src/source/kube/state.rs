//! The objects every watch has listed, and the [`Snapshot`] they make.
//!
//! A watch's objects change only at whole steps: an applied or deleted object, or a (re)list
//! swapped in at `InitDone`, replacing everything the watch had (so an object missing from a
//! relist is deleted). A relist in progress leaves the last complete list in place.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::core::DynamicObject;
use kube::runtime::watcher;
use shunt_api::config::LoadError;

use super::resources::{Watch, keep};
use crate::config::{LoadOptions, Snapshot};
use crate::source::local_dir::Loader;

/// What [`Snapshot::dir`] says in Kubernetes mode.
pub const SOURCE_NAME: &str = "kube";

/// `namespace` (empty for a cluster-scoped object) and `name`.
type Key = (String, String);

/// An object as kept between snapshots: its compact JSON text. A parsed `serde_json::Value`
/// takes several times its text in small allocations, which at tens of thousands of pods is
/// most of the agent's memory; the text is parsed again only to build a snapshot.
struct Stored {
    text: Box<str>,
    /// `spec.nodeName` (pods), read for every pod at each snapshot.
    node: Option<Box<str>>,
}

impl Stored {
    fn new(value: &serde_json::Value) -> Self {
        Self {
            text: value.to_string().into_boxed_str(),
            node: value["spec"]["nodeName"].as_str().map(Into::into),
        }
    }

    fn value(&self) -> serde_json::Value {
        // It was written from a Value.
        serde_json::from_str(&self.text).unwrap_or_default()
    }
}

#[derive(Default)]
struct Objects {
    live: BTreeMap<Key, Stored>,
    /// A list in progress, swapped in at its end.
    pending: Option<BTreeMap<Key, Stored>>,
    /// Whether a list has completed once.
    listed: bool,
}

#[derive(Default)]
pub struct State {
    watches: HashMap<Watch, Objects>,
}

impl State {
    pub fn add(&mut self, watch: Watch) {
        self.watches.entry(watch).or_default();
    }

    pub fn remove(&mut self, watch: &Watch) {
        self.watches.remove(watch);
    }

    /// Whether every watch (only those `counted`) has listed once.
    pub fn listed(&self, counted: impl Fn(&Watch) -> bool) -> bool {
        self.watches
            .iter()
            .filter(|(watch, _)| counted(watch))
            .all(|(_, objects)| objects.listed)
    }

    /// Applies one event of `watch`'s stream; true when the objects changed.
    pub fn apply(
        &mut self,
        watch: &Watch,
        api: &kube::core::ApiResource,
        optional: bool,
        event: Result<watcher::Event<DynamicObject>, watcher::Error>,
    ) -> bool {
        let Some(objects) = self.watches.get_mut(watch) else {
            return false; // A watch stopped meanwhile.
        };
        let keyed = |object: DynamicObject| {
            let key = (
                object.metadata.namespace.clone().unwrap_or_default(),
                object.metadata.name.clone().unwrap_or_default(),
            );
            (key, Stored::new(&keep(watch, api, object)))
        };
        match event {
            Ok(watcher::Event::Init) => {
                objects.pending = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(object)) => {
                let (key, value) = keyed(object);
                objects.pending.get_or_insert_default().insert(key, value);
                false
            }
            Ok(watcher::Event::InitDone) => {
                objects.live = objects.pending.take().unwrap_or_default();
                objects.listed = true;
                true
            }
            Ok(watcher::Event::Apply(object)) => {
                let (key, value) = keyed(object);
                objects.live.insert(key, value);
                true
            }
            Ok(watcher::Event::Delete(object)) => {
                let (key, _) = keyed(object);
                objects.live.remove(&key).is_some()
            }
            Err(e) => {
                let what = format!("{} ({})", api.plural, api.api_version);
                if optional && not_found(&e) {
                    // Its CRD is not installed: there are none. Listed again on the retry, in
                    // case the CRD comes.
                    if !objects.listed {
                        tracing::info!("{what}: not served by the API server; none of them");
                    }
                    let changed = !objects.live.is_empty();
                    objects.live.clear();
                    objects.pending = None;
                    objects.listed = true;
                    return changed;
                }
                match &e {
                    // The usual end of a watch whose resourceVersion is too old: relisted.
                    watcher::Error::WatchError(status) if status.code == 410 => {
                        tracing::debug!("{what}: {e}; relisting");
                    }
                    _ => tracing::warn!("watching {what}: {e}; retrying with backoff"),
                }
                false
            }
        }
    }

    /// Every object in the order local mode would read them, parsed by local mode's loader
    /// (so a bad object's error is the same, with `kube resourceVersion N` where the file
    /// would be), and the snapshot they make.
    pub fn snapshot(&self, options: &LoadOptions) -> Snapshot {
        let empty = Objects::default();
        let of = |watch: &Watch| self.watches.get(watch).unwrap_or(&empty);
        let mut loader = Loader::default();
        let mut load =
            |stored: &Stored| match serde_json::from_str::<serde_yaml::Value>(&stored.text) {
                Ok(yaml) => {
                    let version = yaml["metadata"]["resourceVersion"]
                        .as_str()
                        .map(str::to_owned);
                    loader.load_object(&origin(version.as_deref()), yaml);
                }
                Err(e) => tracing::error!("cannot convert an object for the loader: {e}"),
            };
        of(&Watch::Namespaces).live.values().for_each(&mut load);
        let node_pods = &of(&Watch::NodePods).live;
        node_pods.values().for_each(&mut load);
        let node = options.node_name.as_str();
        for (key, pod) in &of(&Watch::AllPods).live {
            // This node's pods come whole from their own watch; an unscheduled pod is nobody's
            // (local mode would count it as this node's).
            let on = pod.node.as_deref().unwrap_or_default();
            if !on.is_empty() && on != node && !node_pods.contains_key(key) {
                load(pod);
            }
        }
        of(&Watch::Services).live.values().for_each(&mut load);
        let mut rest: Vec<&Watch> = self
            .watches
            .keys()
            .filter(|watch| {
                !matches!(
                    watch,
                    Watch::Namespaces | Watch::NodePods | Watch::AllPods | Watch::Services
                )
            })
            .collect();
        rest.sort();
        for watch in rest {
            of(watch).live.values().for_each(&mut load);
        }
        loader
            .finish()
            .into_snapshot(Path::new(SOURCE_NAME), options)
    }
}

impl State {
    /// The object `error` names (`Kind ns/name` or `Kind name`), if it came from a watch at
    /// the version the error was met in. Other nodes' pods are not looked at: their own
    /// agent reports them.
    pub fn regarding(&self, error: &LoadError) -> Option<ObjectReference> {
        let (kind, name) = error.object.as_deref()?.split_once(' ')?;
        let key = match name.split_once('/') {
            Some((namespace, name)) => (namespace.to_owned(), name.to_owned()),
            None => (String::new(), name.to_owned()),
        };
        let object = self
            .watches
            .iter()
            .filter(|(watch, _)| **watch != Watch::AllPods)
            .filter_map(|(_, objects)| objects.live.get(&key))
            .map(Stored::value)
            .find(|object| {
                object["kind"] == kind
                    && origin(object["metadata"]["resourceVersion"].as_str()) == error.file
            })?;
        let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
        let metadata = &object["metadata"];
        Some(ObjectReference {
            api_version: text(&object["apiVersion"]),
            kind: Some(kind.to_owned()),
            namespace: text(&metadata["namespace"]),
            name: text(&metadata["name"]),
            uid: text(&metadata["uid"]),
            resource_version: text(&metadata["resourceVersion"]),
            field_path: None,
        })
    }
}

/// Where an object from the API server "was read": its resourceVersion, since there is no file.
fn origin(version: Option<&str>) -> PathBuf {
    let version = version.unwrap_or("unknown");
    PathBuf::from(format!("{SOURCE_NAME} resourceVersion {version}"))
}

pub(super) fn not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status)) => {
            status.code == 404 || status.is_not_found()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use kube::core::{ApiResource, Status};

    use super::*;
    use crate::source::kube::resources::Watch;

    enum Step {
        Init,
        InitApply(&'static str),
        InitDone,
        Apply(&'static str),
        Delete(&'static str),
        NotFound,
        Gone,
    }

    fn event(
        api: &ApiResource,
        step: &Step,
    ) -> Result<watcher::Event<DynamicObject>, watcher::Error> {
        let object = |name: &str| DynamicObject::new(name, api).within("shop");
        let status = |code| Box::new(Status::failure("test", "Test").with_code(code));
        Ok(match step {
            Step::Init => watcher::Event::Init,
            Step::InitApply(name) => watcher::Event::InitApply(object(name)),
            Step::InitDone => watcher::Event::InitDone,
            Step::Apply(name) => watcher::Event::Apply(object(name)),
            Step::Delete(name) => watcher::Event::Delete(object(name)),
            Step::NotFound => {
                return Err(watcher::Error::InitialListFailed(kube::Error::Api(status(
                    404,
                ))));
            }
            Step::Gone => return Err(watcher::Error::WatchError(status(410))),
        })
    }

    #[test]
    fn a_watch_changes_only_at_whole_steps() {
        struct Case {
            name: &'static str,
            optional: bool,
            steps: Vec<Step>,
            /// The objects then, `None` while never listed.
            want: Option<Vec<&'static str>>,
        }
        use Step::*;
        let cases = [
            Case {
                name: "a list in progress is not served",
                optional: false,
                steps: vec![Init, InitApply("a"), InitApply("b")],
                want: None,
            },
            Case {
                name: "a list is swapped in at InitDone",
                optional: false,
                steps: vec![Init, InitApply("a"), InitApply("b"), InitDone],
                want: Some(vec!["a", "b"]),
            },
            Case {
                name: "an object missing from a relist is deleted",
                optional: false,
                steps: vec![
                    Init,
                    InitApply("a"),
                    InitApply("b"),
                    InitDone,
                    Gone,
                    Init,
                    InitApply("b"),
                    InitDone,
                ],
                want: Some(vec!["b"]),
            },
            Case {
                name: "a relist in progress keeps the last complete list",
                optional: false,
                steps: vec![Init, InitApply("a"), InitDone, Gone, Init, InitApply("b")],
                want: Some(vec!["a"]),
            },
            Case {
                name: "applies and deletes after the list",
                optional: false,
                steps: vec![Init, InitApply("a"), InitDone, Apply("c"), Delete("a")],
                want: Some(vec!["c"]),
            },
            Case {
                name: "a custom resource without its CRD has no objects",
                optional: true,
                steps: vec![NotFound],
                want: Some(vec![]),
            },
            Case {
                name: "a core resource answering 404 is never listed",
                optional: false,
                steps: vec![NotFound],
                want: None,
            },
        ];
        let watch = Watch::Services;
        let api = ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&());
        for case in cases {
            let mut state = State::default();
            state.add(watch.clone());
            for step in &case.steps {
                state.apply(&watch, &api, case.optional, event(&api, step));
            }
            let objects = &state.watches[&watch];
            let got = objects.listed.then(|| {
                objects
                    .live
                    .keys()
                    .map(|(_, name)| name.as_str())
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, case.want, "{}", case.name);
            assert_eq!(state.listed(|_| true), case.want.is_some(), "{}", case.name);
        }
    }
}
