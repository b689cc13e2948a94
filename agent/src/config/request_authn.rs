//! `security.istio.io` `RequestAuthentication` (v1, v1beta1): parsed into
//! `shunt_mesh::istio` with field paths and checked by the compiler the proxy runs
//! (`shunt_mesh::security::RequestAuthnTable`), so the agent reports what the proxy would
//! reject and sends only the valid policies.
//!
//! A rejected policy is not simply dropped, which would let the tokens it would have refused
//! through unchecked: it goes to `MeshState::rejected_request_authentications`, where it
//! stands in over its scope, refusing (401) the tokens of its issuers until it is fixed.
//! Unknown spec fields reject a RequestAuthentication rather than warn: a misspelt
//! `matchLabels` or `audiences` would otherwise widen what it accepts.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use shunt_api::config::{Config, LoadError, Sourced};
use shunt_mesh::istio::{RejectedRequestAuthentication, SECURITY_VERSIONS};
use shunt_mesh::model::MeshState;
use shunt_mesh::security;

use super::routing::{names, push_typed};

const KIND: &str = "RequestAuthentication";

/// Parses and checks the RequestAuthentications of `config` into `mesh` (whose mesh
/// settings, with the root namespace, are already read); every problem goes to `errors`.
pub fn add_to_mesh(config: &Config, mesh: &mut MeshState, errors: &mut Vec<LoadError>) {
    let mut files: HashMap<(String, String), PathBuf> = HashMap::new();
    let mut as_written: HashMap<(String, String), &Sourced<serde_json::Value>> = HashMap::new();
    let mut rejected: Vec<&Sourced<serde_json::Value>> = Vec::new();
    for sourced in &config.istio {
        let object = &sourced.object;
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        if !api_version.starts_with("security.istio.io/") || object["kind"] != KIND {
            continue;
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
            &mut mesh.request_authentications,
            errors,
            &|_| {
                Some(
                    "not a field of RequestAuthentication shunt reads (a typo, or targetRef(s), \
                     which shunt does not implement): a security setting shunt cannot read is \
                     refused rather than ignored (a misspelt matchLabels, say, would widen the \
                     policy to the whole namespace)",
                )
            },
        );
        if !parsed {
            rejected.push(sourced);
        }
    }

    let mut dropped: HashSet<(String, String)> = HashSet::new();
    for problem in security::validate_request_authentications(mesh) {
        let object = problem.object();
        let key = (object.namespace.to_string(), object.name.to_string());
        errors.push(LoadError {
            file: files.get(&key).cloned().unwrap_or_default(),
            object: Some(object.to_string()),
            field: Some(problem.field().to_owned()),
            message: problem.message().to_owned(),
        });
        if problem.drops_object() {
            dropped.insert(key);
        }
    }
    mesh.request_authentications
        .retain(|p| !dropped.contains(&(p.metadata.namespace.clone(), p.metadata.name.clone())));
    let mut dropped: Vec<_> = dropped.into_iter().collect();
    dropped.sort();
    rejected.extend(dropped.iter().filter_map(|key| as_written.get(key)));

    // Each rejected object stands in once (a bad apiVersion and bad fields reject it twice).
    let mut seen: HashSet<(&Path, usize)> = HashSet::new();
    for sourced in rejected {
        if !seen.insert((&sourced.file, sourced.document)) {
            continue;
        }
        let Some(stand_in) = RejectedRequestAuthentication::from_raw(&sourced.object) else {
            continue;
        };
        let (namespace, name) = names(&sourced.object);
        let refused = match &stand_in.issuers {
            Some(issuers) if issuers.is_empty() => "no issuer's tokens (it has no jwtRules)".into(),
            Some(issuers) => format!("tokens issued by {}", issuers.join(", ")),
            None => "every token (its issuers cannot be read)".to_owned(),
        };
        errors.push(LoadError {
            file: sourced.file.clone(),
            object: Some(format!("{KIND} {namespace}/{name}")),
            field: None,
            message: format!(
                "left out, but until it is fixed the workloads it selects refuse {refused} with \
                 401 (failing closed); requests without a token pass as before"
            ),
        });
        mesh.rejected_request_authentications.push(stand_in);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use shunt_mesh::security::RequestAuthnTable;

    use crate::config::Snapshot;
    use crate::source::local_dir::Loader;

    const PODS: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, labels: {app: cart}}
status: {podIP: 10.244.0.21}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 10.244.0.22}
";

    fn snapshot(policies: &str) -> Snapshot {
        let mut loader = Loader::default();
        loader.load_file(Path::new("pods.yaml"), PODS);
        loader.load_file(Path::new("ra.yaml"), policies);
        Snapshot::from_config(Path::new("/cfg"), loader.config, loader.errors)
    }

    /// The issuers each pod's rules check, `!` marking a rejected policy's stand-in.
    fn issuers(snapshot: &Snapshot, pod: &str) -> Vec<String> {
        let (table, errors) = RequestAuthnTable::build(&snapshot.mesh);
        assert_eq!(errors, vec![], "the agent sends only valid policies");
        let workload = snapshot
            .mesh
            .workloads
            .iter()
            .find(|w| w.name == pod)
            .unwrap();
        table
            .rules_for(workload)
            .iter()
            .map(|rule| {
                let issuer = rule.issuer.clone().unwrap_or_else(|| "*".into());
                if rule.rejected() {
                    format!("!{issuer}")
                } else {
                    issuer
                }
            })
            .collect()
    }

    #[test]
    fn request_authentications_reach_the_mesh() {
        let snapshot = snapshot(
            r#"
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  jwtRules:
    - issuer: https://issuer.example
      jwksUri: http://jwks.shop.svc.cluster.local/jwks.json
      audiences: [shop]
      forwardOriginalToken: true
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: cart, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  jwtRules:
    - issuer: cart-issuer
      jwks: '{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}'
      fromHeaders: [{name: x-jwt}]
"#,
        );
        assert_eq!(snapshot.errors, vec![]);
        assert_eq!(snapshot.mesh.request_authentications.len(), 2);
        assert!(snapshot.mesh.rejected_request_authentications.is_empty());
        assert_eq!(
            issuers(&snapshot, "cart"),
            ["cart-issuer", "https://issuer.example"]
        );
        assert_eq!(issuers(&snapshot, "web"), ["https://issuer.example"]);
    }

    /// Each case: the document; the (object, field) of every error (field `None`: the line
    /// saying how it fails closed); what cart's rules check then.
    #[test]
    fn bad_request_authentications_are_named_and_fail_closed() {
        let doc = |api: &str, spec: &str| {
            format!(
                "apiVersion: {api}\nkind: RequestAuthentication\n\
                 metadata: {{name: bad, namespace: shop}}\nspec: {spec}\n"
            )
        };
        let v1 = |spec: &str| doc("security.istio.io/v1", spec);
        type Case = (String, Vec<Option<&'static str>>, Vec<&'static str>);
        let cases: Vec<Case> = vec![
            (
                v1("{jwtRules: [{issuer: a, jwksUri: 'ftp://keys/'}]}"),
                vec![Some("spec.jwtRules[0].jwksUri"), None],
                vec!["!a"],
            ),
            (
                v1("{jwtRules: [{issuer: a, jwksUri: 'https://k/', audience: [x]}]}"),
                vec![Some("spec.jwtRules[0].audience"), None],
                vec!["!a"],
            ),
            (
                v1("{selector: {matchLabels: {app: web}}, jwtRules: [{issuer: a}]}"),
                vec![Some("spec.jwtRules[0]"), None],
                vec![],
            ),
            (
                v1(
                    "{targetRef: {kind: Gateway, name: gw}, jwtRules: [{issuer: a, jwksUri: 'https://k/'}]}",
                ),
                vec![Some("spec.targetRef"), None],
                vec!["!a"],
            ),
            (
                v1("{jwtRules: [{isuser: a, jwksUri: 'https://k/'}]}"),
                vec![Some("spec.jwtRules[0].isuser"), None],
                vec!["!*"],
            ),
            (
                v1("{jwtRules: {issuer: a}}"),
                vec![Some("spec.jwtRules"), None],
                vec!["!*"],
            ),
            (
                doc(
                    "security.istio.io/v1alpha1",
                    "{jwtRules: [{issuer: a, jwksUri: 'https://k/'}]}",
                ),
                vec![Some("apiVersion"), None],
                vec!["!a"],
            ),
        ];
        for (document, fields, cart) in cases {
            let snapshot = snapshot(&document);
            let got: Vec<(Option<&str>, Option<&str>)> = snapshot
                .errors
                .iter()
                .map(|e| (e.object.as_deref(), e.field.as_deref()))
                .collect();
            let want: Vec<(Option<&str>, Option<&str>)> = fields
                .iter()
                .map(|field| (Some("RequestAuthentication shop/bad"), *field))
                .collect();
            assert_eq!(got, want, "{document}");
            assert!(
                snapshot
                    .errors
                    .iter()
                    .all(|e| e.file == Path::new("ra.yaml")),
                "{document}"
            );
            assert!(
                snapshot.mesh.request_authentications.is_empty(),
                "{document}"
            );
            assert_eq!(issuers(&snapshot, "cart"), cart, "{document}");
        }
    }
}
