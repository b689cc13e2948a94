//! The traffic-management objects of the config: VirtualService, DestinationRule and
//! ServiceEntry (`networking.istio.io` v1, v1beta1, v1alpha3), `shunt.io/v1alpha1
//! RateLimitPolicy`, and the mesh settings of the ConfigMap `istio-system/istio`.
//!
//! Each is parsed into `shunt_mesh::istio`'s types (a bad field is named by its path), then
//! checked by the very compiler the proxy runs (`shunt_mesh::routing`), so the agent reports
//! exactly what the proxy would reject, and sends only the valid objects. A rejected
//! DestinationRule that asked for TLS fails closed (`MeshState::fail_closed`): its clusters
//! refuse connections rather than send the app's bytes in plaintext.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use shunt_mesh::istio::{self, NETWORKING_VERSIONS, SHUNT_API_VERSION};
use shunt_mesh::model::MeshState;
use shunt_mesh::routing::{self, OutboundTrafficPolicy};

use shunt_api::config::{Config, LoadError, Sourced};
use shunt_api::k8s::NodeName;

use super::mesh_config::{self, MeshBase, field_path};

/// What the agent's flags set over the config.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `--outbound-traffic-policy`: wins over the Istio ConfigMap.
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    /// `--node-name`: the node this agent runs on. It captures only the pods of this node
    /// (`spec.nodeName`, where a pod without one is this node's); by default
    /// [`shunt_api::k8s::DEFAULT_NODE_NAME`].
    pub node_name: NodeName,
    /// `--mesh-config`: the mesh config under the ConfigMap `istio-system/istio`.
    pub mesh_base: Option<Arc<MeshBase>>,
}

/// Parses and checks the routing objects of `config` into `mesh`; every problem goes to
/// `errors`, and an invalid object is left out whole.
pub fn add_to_mesh(
    config: &Config,
    options: &LoadOptions,
    mesh: &mut MeshState,
    errors: &mut Vec<LoadError>,
) {
    // Where each object came from, to name the file of a compile error.
    let mut files: HashMap<(String, String, String), PathBuf> = HashMap::new();
    // DestinationRules left out, as written: each may have to fail closed.
    let mut rejected_rules: Vec<&Sourced<serde_json::Value>> = Vec::new();
    let mut rules_as_written: HashMap<(String, String), &Sourced<serde_json::Value>> =
        HashMap::new();
    for sourced in &config.istio {
        let object = &sourced.object;
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        if !api_version.starts_with("networking.istio.io/") {
            continue;
        }
        let known = matches!(
            kind,
            "VirtualService" | "DestinationRule" | "ServiceEntry" | "Gateway"
        );
        if !known {
            continue; // Sidecar, WorkloadEntry, ...: not for a node proxy.
        }
        let (namespace, name) = names(object);
        if kind == "DestinationRule" {
            rules_as_written.insert((namespace.clone(), name.clone()), sourced);
        }
        if !NETWORKING_VERSIONS.contains(&api_version) {
            errors.push(LoadError {
                file: sourced.file.clone(),
                object: Some(format!("{kind} {namespace}/{name}")),
                field: Some("apiVersion".into()),
                message: format!(
                    "unsupported apiVersion {api_version:?} for {kind}: expected one of {}",
                    NETWORKING_VERSIONS.join(", ")
                ),
            });
            if kind == "DestinationRule" {
                rejected_rules.push(sourced);
            }
            continue;
        }
        files.insert(
            (kind.to_owned(), namespace.clone(), name.clone()),
            sourced.file.clone(),
        );
        let no_strict_fields = |_: &str| None;
        match kind {
            "VirtualService" => {
                push_typed(
                    sourced,
                    kind,
                    &mut mesh.virtual_services,
                    errors,
                    &no_strict_fields,
                );
            }
            "DestinationRule" => {
                let parsed = push_typed(
                    sourced,
                    kind,
                    &mut mesh.destination_rules,
                    errors,
                    &unknown_tls_field,
                );
                if !parsed {
                    rejected_rules.push(sourced);
                }
            }
            "Gateway" => {
                push_typed(sourced, kind, &mut mesh.gateways, errors, &no_strict_fields);
            }
            _ => {
                push_typed(
                    sourced,
                    kind,
                    &mut mesh.service_entries,
                    errors,
                    &no_strict_fields,
                );
            }
        }
    }
    for sourced in &config.shunt {
        let (namespace, name) = names(&sourced.object);
        files.insert(
            ("RateLimitPolicy".into(), namespace, name),
            sourced.file.clone(),
        );
        push_typed(
            sourced,
            "RateLimitPolicy",
            &mut mesh.rate_limit_policies,
            errors,
            &|_| None,
        );
    }
    for sourced in &config.ingresses {
        let (namespace, name) = names(&sourced.object);
        files.insert(("Ingress".into(), namespace, name), sourced.file.clone());
        // extensions/v1beta1 is read in its own shape, then converted to v1's.
        if sourced.object["apiVersion"].as_str() == Some(istio::INGRESS_V1BETA1) {
            let mut old: Vec<istio::IngressV1beta1> = Vec::new();
            push_typed(sourced, "Ingress", &mut old, errors, &|_| None);
            mesh.ingresses
                .extend(old.into_iter().map(istio::IngressV1beta1::into_v1));
        } else {
            push_typed(sourced, "Ingress", &mut mesh.ingresses, errors, &|_| None);
        }
    }
    mesh.mesh = mesh_config::mesh_settings(config, options.mesh_base.as_deref(), errors);
    if let Some(policy) = options.outbound_traffic_policy {
        mesh.mesh.outbound_traffic_policy = policy;
    }

    let problems = routing::validate(mesh);
    let mut dropped: HashSet<(&'static str, String, String)> = HashSet::new();
    for problem in &problems {
        let object = problem.object();
        let key = (
            object.kind.to_owned(),
            object.namespace.to_string(),
            object.name.to_string(),
        );
        let mut message = problem.message();
        if problem.drops_object() {
            dropped.insert((
                object.kind,
                object.namespace.to_string(),
                object.name.to_string(),
            ));
        } else if matches!(problem, routing::Error::Warning { .. }) {
            message.push_str(" (a warning: the object still applies)");
        }
        errors.push(LoadError {
            file: files.get(&key).cloned().unwrap_or_default(),
            object: Some(object.to_string()),
            field: Some(problem.field().to_owned()),
            message,
        });
    }
    let keep = |kind: &'static str, meta: &istio::Metadata| {
        !dropped.contains(&(kind, meta.namespace.clone(), meta.name.clone()))
    };
    mesh.virtual_services
        .retain(|o| keep("VirtualService", &o.metadata));
    mesh.destination_rules
        .retain(|o| keep("DestinationRule", &o.metadata));
    mesh.service_entries
        .retain(|o| keep("ServiceEntry", &o.metadata));
    mesh.gateways.retain(|o| keep("Gateway", &o.metadata));
    mesh.ingresses.retain(|o| {
        !dropped.contains(&(
            "Ingress",
            o.metadata.namespace.clone(),
            o.metadata.name.clone(),
        ))
    });
    mesh.rate_limit_policies
        .retain(|o| keep("RateLimitPolicy", &o.metadata));

    rejected_rules.extend(
        dropped
            .iter()
            .filter(|(kind, _, _)| *kind == "DestinationRule")
            .filter_map(|(_, namespace, name)| {
                rules_as_written.get(&(namespace.clone(), name.clone()))
            }),
    );
    let before = mesh.fail_closed.destination_rules.len();
    add_fail_closed(&mut mesh.fail_closed, &rejected_rules, errors);
    if mesh.fail_closed.destination_rules.len() > before {
        // A rejected rule stands where it would have: a valid rule it shadows in its
        // namespace is ignored, which the first check could not see.
        let stand_ins: HashSet<(String, String)> = mesh.fail_closed.destination_rules[before..]
            .iter()
            .map(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()))
            .collect();
        for problem in routing::validate(mesh) {
            if let routing::Error::DuplicateDestinationRule { kept, ignored, .. } = &problem
                && stand_ins.contains(&(kept.namespace.to_string(), kept.name.to_string()))
            {
                errors.push(LoadError {
                    file: files
                        .get(&(
                            "DestinationRule".to_owned(),
                            ignored.namespace.to_string(),
                            ignored.name.to_string(),
                        ))
                        .cloned()
                        .unwrap_or_default(),
                    object: Some(ignored.to_string()),
                    field: Some(problem.field().to_owned()),
                    message: problem.message(),
                });
            }
        }
    }
}

/// Locks down what each rejected object (as written) asked to secure, and says so, one line
/// per object; an object rejected twice (bad apiVersion and fields) counts once.
pub(super) fn add_fail_closed(
    fail_closed: &mut istio::FailClosed,
    rejected: &[&Sourced<serde_json::Value>],
    errors: &mut Vec<LoadError>,
) {
    let mut seen: HashSet<(&Path, usize)> = HashSet::new();
    for sourced in rejected {
        if !seen.insert((&sourced.file, sourced.document)) {
            continue;
        }
        if let Some(effect) = fail_closed.add_rejected(&sourced.object) {
            let (namespace, name) = names(&sourced.object);
            let kind = sourced.object["kind"].as_str().unwrap_or_default();
            errors.push(LoadError {
                file: sourced.file.clone(),
                object: Some(format!("{kind} {namespace}/{name}")),
                field: None,
                message: effect.to_string(),
            });
        }
    }
}

/// An unknown field inside a DestinationRule's `tls` rejects the rule: ignored, a misspelt
/// `mode` would read as `DISABLE` and send plaintext.
fn unknown_tls_field(field: &str) -> Option<&'static str> {
    field
        .split(['.', '['])
        .any(|segment| segment.eq_ignore_ascii_case("tls"))
        .then_some(
            "not a field of the TLS settings shunt reads (a typo?): a TLS setting shunt \
             cannot read is refused rather than ignored, since a misspelt one could send \
             plaintext",
        )
}

pub(super) fn names(object: &serde_json::Value) -> (String, String) {
    let meta = &object["metadata"];
    (
        meta["namespace"]
            .as_str()
            .unwrap_or(istio::DEFAULT_NAMESPACE)
            .to_owned(),
        meta["name"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Parses `sourced` into `into`; returns whether it is there. An unknown spec field is a
/// warning, unless `rejects(field)` gives a reason to refuse the object for it.
pub(super) fn push_typed<T: DeserializeOwned>(
    sourced: &Sourced<serde_json::Value>,
    kind: &str,
    into: &mut Vec<T>,
    errors: &mut Vec<LoadError>,
    rejects: &dyn Fn(&str) -> Option<&'static str>,
) -> bool {
    let (namespace, name) = names(&sourced.object);
    let mut value = sourced.object.clone();
    drop_nulls(&mut value);
    let mut ignored = Vec::new();
    let parsed = serde_path_to_error::deserialize(serde_ignored::Deserializer::new(
        value,
        &mut |path: serde_ignored::Path<'_>| ignored.push(field_path(&path)),
    ));
    let object = format!("{kind} {namespace}/{name}");
    let typed = match parsed {
        Ok(typed) => typed,
        Err(e) => {
            errors.push(LoadError {
                file: sourced.file.clone(),
                object: Some(object),
                field: Some(e.path().to_string()),
                message: e.inner().to_string(),
            });
            return false;
        }
    };
    // What `kubectl apply` warns about for a CRD: a field the schema does not know. Only the
    // spec is checked; metadata carries much that is not shunt's business.
    let mut refused = false;
    for field in ignored.into_iter().filter(|f| f.starts_with("spec.")) {
        let message = match rejects(&field) {
            Some(reason) => {
                refused = true;
                reason.to_owned()
            }
            None => "not a field shunt reads (a typo, or an Istio field shunt does not \
                     implement yet): ignored (a warning: the object still applies)"
                .to_owned(),
        };
        errors.push(LoadError {
            file: sourced.file.clone(),
            object: Some(object.clone()),
            field: Some(field),
            message,
        });
    }
    if !refused {
        into.push(typed);
    }
    !refused
}

/// YAML's empty sections (`http:`) are nulls; Kubernetes reads them as absent.
fn drop_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// `SHUNT_API_VERSION`'s group, for the loader.
pub const SHUNT_GROUP: &str = "shunt.io";

/// Whether `api_version` is the one `RateLimitPolicy` is read at.
#[must_use]
pub fn is_shunt_version(api_version: &str) -> bool {
    api_version == SHUNT_API_VERSION
}
