//! Local mode's config: Kubernetes-style YAML in a directory, watched.
//!
//! [`Snapshot::load`] reads the directory into a [`Snapshot`]: the objects, the errors met
//! (each naming file, object and field; the bad object is skipped and everything else
//! applies), each pod's capture plan and the `MeshState` the proxy gets.
#![forbid(unsafe_code)]

pub mod capture;
pub mod kinds;
pub mod mesh;
mod parse;
pub mod routing;
pub mod watch;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shunt_mesh::model::MeshState;

pub use capture::{CaptureSpec, PodPlan};
use kinds::{Namespace, Pod, Service};
pub use routing::LoadOptions;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the config directory {}: {source}; check --config-dir", dir.display())]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot watch the config directory {}: {source}", dir.display())]
    Watch { dir: PathBuf, source: notify::Error },
}

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

/// One reading of the config dir and everything derived from it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub dir: PathBuf,
    pub config: Config,
    /// Parse errors, then capture errors.
    pub errors: Vec<LoadError>,
    /// One per pod, in `config.pods` order.
    pub pods: Vec<PodPlan>,
    pub mesh: MeshState,
    /// The flags it was read with; a reload reads with the same.
    pub options: LoadOptions,
}

impl Snapshot {
    /// Reads `dir`. Fails only when the directory cannot be listed; everything wrong inside it
    /// ends up in `errors`.
    pub fn load(dir: &Path) -> Result<Self, Error> {
        Self::load_with(dir, &LoadOptions::default())
    }

    /// [`Snapshot::load`], with the agent's flags applied over the config.
    pub fn load_with(dir: &Path, options: &LoadOptions) -> Result<Self, Error> {
        let (config, errors) = parse::load_dir(dir)?;
        Ok(Self::from_config_with(dir, config, errors, options))
    }

    /// Plans capture for every pod and builds the mesh from parsed objects.
    #[must_use]
    pub fn from_config(dir: &Path, config: Config, errors: Vec<LoadError>) -> Self {
        Self::from_config_with(dir, config, errors, &LoadOptions::default())
    }

    /// [`Snapshot::from_config`], with the agent's flags.
    #[must_use]
    pub fn from_config_with(
        dir: &Path,
        config: Config,
        mut errors: Vec<LoadError>,
        options: &LoadOptions,
    ) -> Self {
        let namespaces: HashMap<&str, &Namespace> = config
            .namespaces
            .iter()
            .map(|ns| (ns.object.metadata.name.as_str(), &ns.object))
            .collect();
        let mut pods = Vec::with_capacity(config.pods.len());
        let mut mesh = MeshState::default();
        for sourced in &config.pods {
            let pod = &sourced.object;
            let namespace = namespaces.get(pod.metadata.namespace()).copied();
            let (plan, problems) = capture::plan(pod, namespace);
            errors.extend(problems.into_iter().map(|problem| LoadError {
                file: sourced.file.clone(),
                object: Some(format!("Pod {}/{}", plan.namespace, plan.name)),
                field: Some(problem.field),
                message: problem.message,
            }));
            mesh.workloads.push(mesh::workload(pod, plan.captured()));
            pods.push(plan);
        }
        mesh.services = config
            .services
            .iter()
            .map(|s| mesh::service(&s.object))
            .collect();
        routing::add_to_mesh(&config, options, &mut mesh, &mut errors);
        Self {
            dir: dir.to_owned(),
            config,
            errors,
            pods,
            mesh,
            options: options.clone(),
        }
    }
}

#[cfg(test)]
mod readme_tests;
#[cfg(test)]
mod tests;
