//! The config as a source publishes it ([`Snapshot`]): the objects, the errors met (each
//! naming file, object and field; the bad object is skipped and everything else applies),
//! each pod's capture plan and the `MeshState` the proxy gets. Sources live in
//! [`crate::source`].
#![forbid(unsafe_code)]

pub mod authz;
pub mod capture;
pub mod endpoints;
pub mod gateway_credentials;
pub mod kinds;
pub mod mesh;
pub mod mesh_config;
pub mod request_authn;
pub mod routing;
pub mod security;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use shunt_mesh::model::MeshState;

pub use capture::{CaptureSpec, NetnsSource, PodPlan};
pub use routing::LoadOptions;
use shunt_api::config::{Config, LoadError, Sourced};
use shunt_api::k8s::{Namespace, Secret};

/// The Gateways whose servers the gateway pod `uid` serves (`Gateway ns/name`), sorted, once
/// each; empty for any other pod.
fn gateway_names(
    routes: &shunt_mesh::routing::RouteTable,
    uid: &shunt_mesh::ids::PodUid,
) -> Vec<String> {
    let mut names: Vec<String> = routes
        .gateway_listeners(uid)
        .map(|listeners| {
            listeners
                .ports
                .iter()
                .flat_map(|port| port.servers.iter())
                .map(|server| server.gateway.to_string())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
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
    /// The config's Secrets (`v1`), for the agent alone: key material is neither sent to the
    /// proxy in the `MeshState` nor shown by `GET /config`.
    pub secrets: Vec<Sourced<Secret>>,
}

impl Snapshot {
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
        mesh.workloads.reserve_exact(config.pods.len());
        for sourced in &config.pods {
            let pod = &sourced.object;
            let namespace = namespaces.get(pod.metadata.namespace()).copied();
            let (plan, problems) = capture::plan(pod, namespace, &options.node_name);
            errors.extend(problems.into_iter().map(|problem| LoadError {
                file: sourced.file.clone(),
                object: Some(format!("Pod {}/{}", plan.namespace, plan.name)),
                field: Some(problem.field),
                message: problem.message,
            }));
            if let Err(message) = mesh::num_trusted_proxies(pod) {
                errors.push(LoadError {
                    file: sourced.file.clone(),
                    object: Some(format!("Pod {}/{}", plan.namespace, plan.name)),
                    field: Some(format!(
                        "metadata.annotations.{}",
                        mesh::PROXY_CONFIG_ANNOTATION
                    )),
                    message,
                });
            }
            // Another node's pod is an HBONE peer when its labels opt it in, or when its
            // node's shunt or ztunnel says it captures it.
            let captured = plan.captured() || (!plan.on_this_node && mesh::marked_captured(pod));
            mesh.workloads
                .push(mesh::workload(pod, captured, &plan.node));
            pods.push(plan);
        }
        let slices = endpoints::Slices::new(&config.endpoint_slices);
        let pod_refs = endpoints::Pods::new(config.pods.iter().map(|p| &p.object));
        mesh.services = config
            .services
            .iter()
            .map(|s| {
                let meta = &s.object.metadata;
                let slices = slices.of(meta.namespace(), &meta.name);
                mesh::service(&s.object, slices.as_deref(), &pod_refs)
            })
            .collect();
        routing::add_to_mesh(&config, options, &mut mesh, &mut errors);
        mesh.node_name = Some(options.node_name.to_string());
        security::add_to_mesh(&config, &mut mesh, &mut errors);
        authz::add_to_mesh(&config, &mut mesh, &mut errors);
        request_authn::add_to_mesh(&config, &mut mesh, &mut errors);
        // Their problems are already in `errors`, from the `add_to_mesh` calls.
        let (peer_authn, _) = shunt_mesh::security::PeerAuthnTable::build(&mesh);
        let (authz, _) = shunt_mesh::security::AuthzTable::build(&mesh);
        for (plan, workload) in pods.iter_mut().zip(&mesh.workloads) {
            if let Some(spec) = plan.capture.as_mut() {
                spec.fail_closed = peer_authn.fail_closed(workload) || authz.enforces(workload);
            }
        }
        // Gateway pods: served by the proxy, their own traffic not captured. Only Gateways
        // (written, or made of Ingresses) select them; without any, the route table (which
        // copies every workload) is not built.
        let has_gateways = !mesh.gateways.is_empty() || !mesh.ingresses.is_empty();
        let routes = has_gateways.then(|| shunt_mesh::routing::RouteTable::build(&mesh).0);
        if let Some(routes) = &routes {
            for ((plan, workload), sourced) in
                pods.iter_mut().zip(&mut mesh.workloads).zip(&config.pods)
            {
                let gateways = gateway_names(routes, &workload.uid);
                if gateways.is_empty() {
                    continue;
                }
                let problems = capture::make_gateway(&sourced.object, plan, &gateways);
                errors.extend(problems.into_iter().map(|problem| LoadError {
                    file: sourced.file.clone(),
                    object: Some(format!("Pod {}/{}", plan.namespace, plan.name)),
                    field: Some(problem.field),
                    message: problem.message,
                }));
                workload.captured = false;
            }
        }
        Self {
            dir: dir.to_owned(),
            config,
            errors,
            pods,
            mesh,
            options: options.clone(),
            secrets: Vec::new(),
        }
    }

    /// The Secrets that this node's gateway servers name (`namespace`, `name`).
    #[must_use]
    pub fn gateway_secret_refs(&self) -> Vec<(String, String)> {
        if self.mesh.gateways.is_empty() && self.mesh.ingresses.is_empty() {
            // Only gateway servers name Secrets; the route table (a copy of every workload)
            // is not built to find none, after every snapshot.
            return Vec::new();
        }
        let (routes, _) = shunt_mesh::routing::RouteTable::build(&self.mesh);
        routes.gateway_credentials(self.options.node_name.as_str())
    }

    /// The Secret `namespace/name`, if the config has it (and it is valid).
    #[must_use]
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&Secret> {
        self.secrets
            .iter()
            .map(|sourced| &sourced.object)
            .find(|secret| secret.metadata.namespace() == namespace && secret.metadata.name == name)
    }
}

#[cfg(test)]
mod ext_authz_tests;
#[cfg(test)]
mod readme_tests;
#[cfg(test)]
mod tests;
