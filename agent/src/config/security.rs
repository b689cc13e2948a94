//! The security objects of the config: `security.istio.io` `PeerAuthentication` (v1,
//! v1beta1), parsed into `shunt_mesh::istio` with field paths and checked by the compiler the
//! proxy runs (`shunt_mesh::security`), so the agent reports what the proxy would reject and
//! sends only the valid policies.
//!
//! A rejected policy that asked for `STRICT` is not simply dropped, which would weaken its
//! pods to whatever the broader scope says: it goes to `MeshState::fail_closed`, where it
//! stands in as `STRICT` on every port until it is fixed
//! (`shunt_mesh::security::PeerAuthnTable` says how). Unknown spec fields reject a
//! PeerAuthentication rather than warn.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use shunt_api::config::{Config, LoadError, Sourced};
use shunt_mesh::istio::SECURITY_VERSIONS;
use shunt_mesh::model::MeshState;
use shunt_mesh::security;

use super::routing::{add_fail_closed, names, push_typed};

const KIND: &str = "PeerAuthentication";

/// Parses and checks the PeerAuthentications of `config` into `mesh` (whose mesh settings,
/// with the root namespace, are already read); every problem goes to `errors`.
pub fn add_to_mesh(config: &Config, mesh: &mut MeshState, errors: &mut Vec<LoadError>) {
    let mut files: HashMap<(String, String), PathBuf> = HashMap::new();
    let mut as_written: HashMap<(String, String), &Sourced<serde_json::Value>> = HashMap::new();
    let mut rejected: Vec<&Sourced<serde_json::Value>> = Vec::new();
    for sourced in &config.istio {
        let object = &sourced.object;
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        if !api_version.starts_with("security.istio.io/") || object["kind"] != KIND {
            continue; // RequestAuthentication, AuthorizationPolicy: kept for the work to come.
        }
        let (namespace, name) = names(object);
        files.insert((namespace.clone(), name.clone()), sourced.file.clone());
        as_written.insert((namespace.clone(), name.clone()), sourced);
        if !SECURITY_VERSIONS.contains(&api_version) {
            errors.push(LoadError {
                file: sourced.file.clone(),
                object: Some(format!("{KIND} {namespace}/{name}")),
                field: Some("apiVersion".into()),
                message: format!(
                    "unsupported apiVersion {api_version:?} for {KIND}: expected one of {}",
                    SECURITY_VERSIONS.join(", ")
                ),
            });
            rejected.push(sourced);
            continue;
        }
        let parsed = push_typed(
            sourced,
            KIND,
            &mut mesh.peer_authentications,
            errors,
            &|_| {
                Some(
                    "not a field of PeerAuthentication shunt reads (a typo?): a security \
                     setting shunt cannot read is refused rather than ignored (a misspelt \
                     matchLabels, say, would widen the policy to the whole namespace)",
                )
            },
        );
        if !parsed {
            rejected.push(sourced);
        }
    }

    let to_error = |problem: &security::Error| {
        let object = problem.object();
        LoadError {
            file: files
                .get(&(object.namespace.to_string(), object.name.to_string()))
                .cloned()
                .unwrap_or_default(),
            object: Some(object.to_string()),
            field: Some(problem.field().to_owned()),
            message: problem.message().to_owned(),
        }
    };
    let mut dropped: HashSet<(String, String)> = HashSet::new();
    for problem in security::validate(mesh).iter().filter(|p| p.drops_object()) {
        let object = problem.object();
        dropped.insert((object.namespace.to_string(), object.name.to_string()));
        errors.push(to_error(problem));
    }
    mesh.peer_authentications
        .retain(|p| !dropped.contains(&(p.metadata.namespace.clone(), p.metadata.name.clone())));
    let mut dropped: Vec<_> = dropped.into_iter().collect();
    dropped.sort();
    rejected.extend(dropped.iter().filter_map(|key| as_written.get(key)));
    add_fail_closed(&mut mesh.fail_closed, &rejected, errors);
    // With the stand-ins in place: what does nothing (a selector in the root namespace, a
    // policy an older one of its scope shadows).
    errors.extend(security::validate(mesh).iter().map(to_error));
}
