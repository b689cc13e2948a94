//! Local mode's source: Kubernetes-style YAML in a directory, watched ([`watch`]). Every
//! `*.yaml`/`*.yml` file is read in name order, each possibly holding several documents.
//!
//! Each document is checked on its own: a bad one becomes a [`LoadError`] naming the file, the
//! object and the field, and is skipped; everything else still loads.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use shunt_api::config::{CompactJson, Config, LoadError, Sourced};
use shunt_api::k8s::{DEFAULT_NAMESPACE, Secret};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::config::capture::FieldError;
use crate::config::{LoadOptions, Snapshot, endpoints, kinds, routing};
use shunt_mesh::istio::{INGRESS_V1, INGRESS_V1BETA1, SHUNT_API_VERSION};

/// API groups whose objects are kept as written, for the L7 and security work to come.
const ISTIO_GROUPS: [&str; 3] = [
    "networking.istio.io",
    "security.istio.io",
    "telemetry.istio.io",
];

/// EndpointSlices: their group, and the one version read (`v1beta1` left Kubernetes in 1.25).
const ENDPOINT_SLICE_GROUP: &str = "discovery.k8s.io";
const ENDPOINT_SLICE_V1: &str = "discovery.k8s.io/v1";

mod error;
pub mod watch;

pub use error::Error;

/// Reads `dir` into a [`Snapshot`], with the agent's flags applied over the config. Fails
/// only when the directory cannot be listed; everything wrong inside it ends up in the
/// snapshot's `errors`.
pub fn load(dir: &Path, options: &LoadOptions) -> Result<Snapshot, Error> {
    Ok(load_dir(dir)?.into_snapshot(dir, options))
}

/// What [`load_dir`] read.
#[derive(Debug, Default)]
pub struct Loaded {
    pub config: Config,
    /// Kept apart from `config`, which `GET /config` shows.
    pub secrets: Vec<Sourced<Secret>>,
    pub errors: Vec<LoadError>,
}

impl Loaded {
    /// The [`Snapshot`] of these objects, with the agent's flags; `dir` names the source.
    #[must_use]
    pub fn into_snapshot(self, dir: &Path, options: &LoadOptions) -> Snapshot {
        let mut snapshot = Snapshot::from_config_with(dir, self.config, self.errors, options);
        snapshot.secrets = self.secrets;
        snapshot
    }
}

/// Reads every YAML file of `dir`. Fails only when the directory itself cannot be listed.
pub fn load_dir(dir: &Path) -> Result<Loaded, Error> {
    let mut loader = Loader::default();
    for file in yaml_files(dir)? {
        match std::fs::read_to_string(&file) {
            Ok(text) => loader.load_file(&file, &text),
            Err(e) => loader.errors.push(LoadError {
                file,
                object: None,
                field: None,
                message: format!("cannot read the file: {e}"),
            }),
        }
    }
    Ok(loader.finish())
}

/// `*.yaml` and `*.yml` regular files (or links to them), sorted; dot files are skipped, which
/// also skips the `..data` folders of a mounted ConfigMap.
fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let read_dir = |source| Error::ReadDir {
        dir: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read_dir)? {
        let path = entry.map_err(read_dir)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if is_yaml && !name.starts_with('.') && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Accumulates the objects of several files, and the errors met on the way.
#[derive(Default)]
pub(crate) struct Loader {
    pub(crate) config: Config,
    pub(crate) secrets: Vec<Sourced<Secret>>,
    pub(crate) errors: Vec<LoadError>,
    /// Where each object was first defined, to name both places of a duplicate.
    defined: HashMap<ObjectKey, Place>,
    /// Which pod holds each uid: the agent and the proxy key pods by it.
    pod_uids: HashMap<shunt_mesh::ids::PodUid, (ObjectRef, Place)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ObjectKey {
    api_group: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

#[derive(Clone, Debug)]
struct Place {
    file: PathBuf,
    document: usize,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)
    }
}

/// What an error says about the object it is about.
#[derive(Clone, Debug)]
struct ObjectRef {
    kind: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    document: usize,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.kind, &self.name) {
            (Some(kind), Some(name)) => match &self.namespace {
                Some(namespace) => write!(f, "{kind} {namespace}/{name}"),
                None => write!(f, "{kind} {name}"),
            },
            (Some(kind), None) => write!(f, "document {} ({kind})", self.document),
            (None, _) => write!(f, "document {}", self.document),
        }
    }
}

/// What a document is, once its `apiVersion` and `kind` are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Namespace,
    Pod,
    Service,
    Secret,
    Istio,
    /// `shunt.io/v1alpha1 RateLimitPolicy`.
    Shunt,
    ConfigMap,
    /// `networking.k8s.io/v1` or `extensions/v1beta1` `Ingress`.
    Ingress,
    /// `discovery.k8s.io/v1` `EndpointSlice`.
    EndpointSlice,
}

impl Kind {
    const fn is_namespaced(self) -> bool {
        !matches!(self, Self::Namespace)
    }
}

/// A problem with one document: the field (when there is one) and what is wrong with it.
struct Problem {
    field: Option<String>,
    message: String,
}

impl Problem {
    fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

const MISSING: &str = "required field is missing";

impl Loader {
    pub(crate) fn load_file(&mut self, file: &Path, text: &str) {
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let place = Place {
                file: file.to_owned(),
                document: index + 1,
            };
            match serde_yaml::Value::deserialize(document) {
                Ok(value) => self.load_document(place, value),
                Err(e) => {
                    // The YAML parser cannot resynchronise after a syntax error (it would
                    // report the same error for ever), so the rest of the file is lost.
                    self.errors.push(LoadError {
                        object: Some(format!("document {}", place.document)),
                        file: place.file,
                        field: None,
                        message: format!("invalid YAML: {e}; the rest of this file is skipped"),
                    });
                    return;
                }
            }
        }
    }

    /// One object that is not from a file (Kubernetes mode's): `origin` stands where a file's
    /// path would, in its errors and in `GET /config`. Checked exactly as a document is.
    pub(crate) fn load_object(&mut self, origin: &Path, value: serde_yaml::Value) {
        let place = Place {
            file: origin.to_owned(),
            document: 1,
        };
        self.load_document(place, value);
    }

    pub(crate) fn finish(mut self) -> Loaded {
        // Grown by doubling: up to half of each list would be spare for as long as the
        // snapshot is held (a `Sourced<Pod>` is hundreds of bytes, and there are tens of
        // thousands in a large cluster).
        let config = &mut self.config;
        config.pods.shrink_to_fit();
        config.services.shrink_to_fit();
        config.endpoint_slices.shrink_to_fit();
        config.namespaces.shrink_to_fit();
        Loaded {
            config: self.config,
            secrets: self.secrets,
            errors: self.errors,
        }
    }

    fn load_document(&mut self, place: Place, value: serde_yaml::Value) {
        if value.is_null() {
            return; // An empty document, e.g. after a trailing `---`.
        }
        let mut object = ObjectRef {
            kind: None,
            namespace: None,
            name: None,
            document: place.document,
        };
        if let Err(problem) = self.try_load_document(&place, &mut object, value) {
            self.errors.push(LoadError {
                file: place.file,
                object: Some(object.to_string()),
                field: problem.field,
                message: problem.message,
            });
        }
    }

    /// Fills `object` in as soon as each part of its name is known, so that the error names it
    /// as precisely as the document allows.
    fn try_load_document(
        &mut self,
        place: &Place,
        object: &mut ObjectRef,
        mut value: serde_yaml::Value,
    ) -> Result<(), Problem> {
        if !value.is_mapping() {
            return Err(Problem {
                field: None,
                message: format!(
                    "expected a Kubernetes object (a mapping with apiVersion, kind and \
                     metadata), got {}",
                    describe(&value)
                ),
            });
        }
        let kind_name =
            string_field(&value, "kind")?.ok_or_else(|| Problem::at("kind", MISSING))?;
        object.kind = Some(kind_name.clone());
        let meta_str = |value: &serde_yaml::Value, field: &str| {
            value
                .get("metadata")
                .and_then(|m| m.get(field))
                .and_then(serde_yaml::Value::as_str)
                .map(str::to_owned)
        };
        object.name = meta_str(&value, "name").filter(|name| !name.is_empty());
        let api_version = string_field(&value, "apiVersion")?
            .ok_or_else(|| Problem::at("apiVersion", MISSING))?;
        let kind = classify(&api_version, &kind_name)?;
        if kind.is_namespaced() {
            let written = value.get("metadata").and_then(|m| m.get("namespace"));
            if let Some(other) = written.filter(|n| !n.is_string() && !n.is_null()) {
                return Err(Problem::at(
                    "metadata.namespace",
                    format!("expected a string, got {}", describe(other)),
                ));
            }
            let namespace = meta_str(&value, "namespace")
                .filter(|namespace| !namespace.is_empty())
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
            object.namespace = Some(namespace.clone());
            // Written back so that every parsed object carries its namespace.
            if let Some(metadata) = value.get_mut("metadata").and_then(|m| m.as_mapping_mut()) {
                metadata.insert("namespace".into(), namespace.into());
            }
        }
        let name = object.name.clone().ok_or_else(|| {
            match value.get("metadata").and_then(|m| m.get("name")) {
                None | Some(serde_yaml::Value::Null) => Problem::at("metadata.name", MISSING),
                Some(other) => Problem::at(
                    "metadata.name",
                    format!("expected a non-empty string, got {}", describe(other)),
                ),
            }
        })?;
        let key = ObjectKey {
            api_group: api_group(&api_version).to_owned(),
            kind: kind_name,
            namespace: object.namespace.clone(),
            name,
        };
        if let Some(first) = self.defined.get(&key) {
            return Err(Problem {
                field: None,
                message: format!("{object} is already defined in {first}; this one is ignored"),
            });
        }
        match kind {
            Kind::Namespace => {
                let namespace = checked(kinds::namespace(typed(value)?))?;
                self.config.namespaces.push(sourced(place, namespace));
            }
            Kind::Pod => {
                let pod = checked(kinds::pod(typed(value)?))?;
                let uid = pod.uid();
                if let Some((holder, at)) = self.pod_uids.get(&uid) {
                    return Err(Problem::at(
                        "metadata.uid",
                        format!(
                            "uid {:?} is already used by {holder} in {at}; this pod is ignored",
                            uid.as_str()
                        ),
                    ));
                }
                self.pod_uids.insert(uid, (object.clone(), place.clone()));
                self.config.pods.push(sourced(place, pod));
            }
            Kind::Service => {
                let service = checked(kinds::service(typed(value)?))?;
                self.config.services.push(sourced(place, service));
            }
            Kind::Secret => {
                let secret: Secret = typed(value)?;
                let missing = secret.missing_keys();
                if !missing.is_empty() {
                    return Err(Problem::at(
                        "data",
                        format!(
                            "a Secret of type {:?} needs the keys {} (in data or stringData); \
                             missing: {}",
                            secret.kind,
                            Secret::required_keys(&secret.kind).join(", "),
                            missing.join(", ")
                        ),
                    ));
                }
                self.secrets.push(sourced(place, secret));
            }
            Kind::Istio => {
                let raw = to_json(value, "")?;
                self.config.istio.push(sourced(place, raw));
            }
            Kind::Shunt => {
                let raw = to_json(value, "")?;
                self.config.shunt.push(sourced(place, raw));
            }
            Kind::ConfigMap => {
                let raw = to_json(value, "")?;
                self.config.config_maps.push(sourced(place, raw));
            }
            Kind::Ingress => {
                let raw = to_json(value, "")?;
                self.config.ingresses.push(sourced(place, raw));
            }
            Kind::EndpointSlice => {
                let slice: EndpointSlice = typed(value)?;
                checked(endpoints::check(&slice))?;
                // Kept in Kubernetes' shape (what `GET /config` shows), as parsed.
                let raw = serde_json::to_value(&slice).map_err(|e| Problem {
                    field: None,
                    message: format!("cannot be kept: {e}"),
                })?;
                self.config
                    .endpoint_slices
                    .push(sourced(place, CompactJson::new(&raw)));
            }
        }
        self.defined.insert(key, place.clone());
        Ok(())
    }
}

fn sourced<T>(place: &Place, object: T) -> Sourced<T> {
    Sourced {
        file: place.file.clone(),
        document: place.document,
        object,
    }
}

/// A top-level string field, `None` when absent.
fn string_field(value: &serde_yaml::Value, field: &str) -> Result<Option<String>, Problem> {
    match value.get(field) {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(Problem::at(
            field,
            format!("expected a string, got {}", describe(other)),
        )),
    }
}

fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

fn classify(api_version: &str, kind: &str) -> Result<Kind, Problem> {
    if ISTIO_GROUPS.contains(&api_group(api_version)) {
        return Ok(Kind::Istio);
    }
    if api_group(api_version) == routing::SHUNT_GROUP {
        return match kind {
            "RateLimitPolicy" if routing::is_shunt_version(api_version) => Ok(Kind::Shunt),
            "RateLimitPolicy" => Err(Problem::at(
                "apiVersion",
                format!(
                    "expected \"{SHUNT_API_VERSION}\" for a RateLimitPolicy, got {api_version:?}"
                ),
            )),
            _ => Err(Problem::at(
                "kind",
                format!("unknown kind {kind:?} of {api_version:?}: shunt.io has RateLimitPolicy"),
            )),
        };
    }
    if kind == "Ingress" && matches!(api_group(api_version), "networking.k8s.io" | "extensions") {
        return if [INGRESS_V1, INGRESS_V1BETA1].contains(&api_version) {
            Ok(Kind::Ingress)
        } else {
            Err(Problem::at(
                "apiVersion",
                format!(
                    "expected \"{INGRESS_V1}\" (or the older \"{INGRESS_V1BETA1}\") for an \
                     Ingress, got {api_version:?}"
                ),
            ))
        };
    }
    if kind == "EndpointSlice" && api_group(api_version) == ENDPOINT_SLICE_GROUP {
        return if api_version == ENDPOINT_SLICE_V1 {
            Ok(Kind::EndpointSlice)
        } else {
            Err(Problem::at(
                "apiVersion",
                format!(
                    "expected \"{ENDPOINT_SLICE_V1}\" for an EndpointSlice, got {api_version:?}"
                ),
            ))
        };
    }
    let core = match kind {
        "Namespace" => Kind::Namespace,
        "Pod" => Kind::Pod,
        "Service" => Kind::Service,
        "Secret" => Kind::Secret,
        "ConfigMap" => Kind::ConfigMap,
        _ => {
            return Err(Problem::at(
                "kind",
                format!(
                    "unknown kind {kind:?} (apiVersion {api_version:?}): local mode reads \
                     Namespace, Pod, Service, ConfigMap and Secret (v1), EndpointSlice \
                     ({ENDPOINT_SLICE_V1}), Ingress ({INGRESS_V1}, {INGRESS_V1BETA1}), \
                     RateLimitPolicy ({SHUNT_API_VERSION}) and the Istio kinds ({})",
                    ISTIO_GROUPS.join(", ")
                ),
            ));
        }
    };
    if api_version != "v1" {
        return Err(Problem::at(
            "apiVersion",
            format!("expected \"v1\" for a {kind}, got {api_version:?}"),
        ));
    }
    Ok(core)
}

/// Deserializes a checked object; the error names the field by its path in the document.
/// A check's error ([`kinds`], [`endpoints`]) as the loader reports it.
fn checked<T>(result: Result<T, FieldError>) -> Result<T, Problem> {
    result.map_err(|e| Problem::at(e.field, e.message))
}

fn typed<T: DeserializeOwned>(value: serde_yaml::Value) -> Result<T, Problem> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // serde reports a missing field at its parent; name the field itself.
        if let Some(missing) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
        {
            let field = if path == "." {
                missing.to_owned()
            } else {
                format!("{path}.{missing}")
            };
            return Problem::at(field, MISSING);
        }
        Problem {
            field: (path != ".").then_some(path),
            message,
        }
    })
}

/// Converts a YAML value to JSON for objects kept as written. YAML tags are dropped; scalar
/// keys become strings, as Kubernetes' own YAML reader does.
fn to_json(value: serde_yaml::Value, path: &str) -> Result<serde_json::Value, Problem> {
    use serde_yaml::Value as Yaml;
    Ok(match value {
        Yaml::Null => serde_json::Value::Null,
        Yaml::Bool(b) => b.into(),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.into()
            } else if let Some(u) = n.as_u64() {
                u.into()
            } else {
                n.as_f64()
                    .and_then(serde_json::Number::from_f64)
                    .map(serde_json::Value::Number)
                    .ok_or_else(|| {
                        Problem::at(
                            path.trim_start_matches('.'),
                            format!("{n} is not a finite number"),
                        )
                    })?
            }
        }
        Yaml::String(s) => s.into(),
        Yaml::Sequence(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| to_json(item, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()?
            .into(),
        Yaml::Mapping(entries) => {
            let mut object = serde_json::Map::new();
            for (key, item) in entries {
                let key = match key {
                    Yaml::String(s) => s,
                    Yaml::Bool(b) => b.to_string(),
                    Yaml::Number(n) => n.to_string(),
                    other => {
                        return Err(Problem::at(
                            path.trim_start_matches('.'),
                            format!("expected string keys, got {}", describe(&other)),
                        ));
                    }
                };
                let item = to_json(item, &format!("{path}.{key}"))?;
                object.insert(key, item);
            }
            object.into()
        }
        Yaml::Tagged(tagged) => to_json(tagged.value, path)?,
    })
}

/// A short description of a YAML value for messages.
fn describe(value: &serde_yaml::Value) -> String {
    use serde_yaml::Value as Yaml;
    match value {
        Yaml::Null => "nothing".to_owned(),
        Yaml::Bool(b) => b.to_string(),
        Yaml::Number(n) => n.to_string(),
        Yaml::String(s) => format!("{s:?}"),
        Yaml::Sequence(_) => "a list".to_owned(),
        Yaml::Mapping(_) => "a mapping".to_owned(),
        Yaml::Tagged(tagged) => describe(&tagged.value),
    }
}
