//! The objects a config source publishes (local mode's directory today), each with where it
//! was read, and the problems met reading them: what `GET /config` shows.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::k8s::{Namespace, Pod, Service};

/// An object and where it was read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sourced<T> {
    pub file: PathBuf,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    pub object: T,
}

/// Every object of the config dir, in file order then document order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub namespaces: Vec<Sourced<Namespace>>,
    pub pods: Vec<Sourced<Pod>>,
    pub services: Vec<Sourced<Service>>,
    /// Istio's kinds (`networking.istio.io`, `security.istio.io`, `telemetry.istio.io`), kept
    /// as written; the routing ones are also parsed into `Snapshot::mesh`.
    pub istio: Vec<Sourced<serde_json::Value>>,
    /// shunt's own kinds (`shunt.io/v1alpha1 RateLimitPolicy`), as written.
    #[serde(default)]
    pub shunt: Vec<Sourced<serde_json::Value>>,
    /// `v1` ConfigMaps, as written; `istio-system/istio` carries Istio's MeshConfig.
    #[serde(default)]
    pub config_maps: Vec<Sourced<serde_json::Value>>,
    /// Kubernetes Ingresses (`networking.k8s.io/v1`, `extensions/v1beta1`), as written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingresses: Vec<Sourced<serde_json::Value>>,
    /// EndpointSlices (`discovery.k8s.io/v1`), checked, in Kubernetes' shape: a Service's
    /// endpoints when it has any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_slices: Vec<Sourced<CompactJson>>,
}

/// A JSON value kept as its compact text. A parsed `serde_json::Value` costs several times its
/// text in small allocations, which for the tens of thousands of EndpointSlices of a large
/// cluster was the largest part of the agent's memory. It (de)serializes as the JSON it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactJson(Box<str>);

impl CompactJson {
    #[must_use]
    pub fn new(value: &serde_json::Value) -> Self {
        Self(value.to_string().into_boxed_str())
    }

    /// The JSON text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for CompactJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Written from a Value, so it parses; a Value only while being serialized.
        let value: serde_json::Value =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        value.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for CompactJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(deserializer).map(|value| Self::new(&value))
    }
}

/// A problem in the config: which file, which object, which field, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadError {
    pub file: PathBuf,
    /// `Pod shop/cart`, `Namespace shop`, or `document 3` when the object has no name yet.
    pub object: Option<String>,
    /// The field's path, e.g. `spec.ports[1].port`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}
