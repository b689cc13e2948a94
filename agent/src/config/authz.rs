//! The config's `security.istio.io` `AuthorizationPolicy` objects (v1, v1beta1): parsed into
//! `shunt_mesh::istio` with field paths and checked by the compiler the proxy runs
//! (`shunt_mesh::security::authz`), so the agent reports what the proxy would reject and
//! sends only the valid policies.
//!
//! A rejected policy is not simply dropped: leaving out a DENY opens what it denied, and
//! leaving out an ALLOW may leave a workload with no ALLOW at all, which allows everything.
//! Unless it is an AUDIT or a dry run, it goes to `MeshState::fail_closed`, where it stands in
//! as a policy that denies everything to the workloads it selects until it is fixed. Unknown
//! spec fields reject a policy rather than warn (a misspelt `notPaths` would widen an ALLOW).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use shunt_api::config::{Config, LoadError, Sourced};
use shunt_mesh::istio::SECURITY_VERSIONS;
use shunt_mesh::model::MeshState;
use shunt_mesh::security::{self, authz};

use super::routing::{add_fail_closed, names, push_typed};

const KIND: &str = "AuthorizationPolicy";

/// Parses and checks the AuthorizationPolicies of `config` into `mesh` (whose mesh settings,
/// with the root namespace, are already read); every problem goes to `errors`.
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
            &mut mesh.authorization_policies,
            errors,
            &unknown_field,
        );
        if !parsed {
            rejected.push(sourced);
        }
    }

    let to_error = |problem: &security::Error| {
        let object = problem.object();
        let mut message = problem.message().to_owned();
        if !problem.drops_object() {
            message.push_str(" (a warning: the policy still applies)");
        }
        LoadError {
            file: files
                .get(&(object.namespace.to_string(), object.name.to_string()))
                .cloned()
                .unwrap_or_default(),
            object: Some(object.to_string()),
            field: Some(problem.field().to_owned()),
            message,
        }
    };
    let mut dropped: HashSet<(String, String)> = HashSet::new();
    for problem in authz::validate(mesh).iter().filter(|p| p.drops_object()) {
        let object = problem.object();
        dropped.insert((object.namespace.to_string(), object.name.to_string()));
        errors.push(to_error(problem));
    }
    mesh.authorization_policies
        .retain(|p| !dropped.contains(&(p.metadata.namespace.clone(), p.metadata.name.clone())));
    let mut dropped: Vec<_> = dropped.into_iter().collect();
    dropped.sort();
    rejected.extend(dropped.iter().filter_map(|key| as_written.get(key)));
    add_fail_closed(&mut mesh.fail_closed, &rejected, errors);
    // What is wrong but leaves a valid policy in force (a dry-run annotation that is not a
    // boolean; rules that can never match).
    errors.extend(authz::validate(mesh).iter().map(to_error));
}

/// Every field of an AuthorizationPolicy spec that shunt does not read rejects it.
fn unknown_field(field: &str) -> Option<&'static str> {
    let attached = ["spec.targetRef", "spec.targetRefs"].iter().any(|f| {
        field
            .strip_prefix(f)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    });
    Some(if attached {
        "targetRef(s) (attaching a policy to a Gateway or Service) is not supported yet: the \
         policy is refused, and fails closed for its namespace's workloads, rather than applied \
         to workloads it was not meant for; use spec.selector"
    } else {
        "not a field of AuthorizationPolicy shunt reads (a typo?): an authorization setting \
         shunt cannot read is refused rather than ignored (a misspelt notPaths, say, would \
         widen an ALLOW)"
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use shunt_mesh::security::AuthzTable;
    use shunt_mesh::security::authz::{Facts, HttpFacts};

    use super::*;
    use crate::config::Snapshot;
    use crate::source::local_dir::Loader;

    const PODS: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata:
  name: cart
  namespace: shop
  labels: {app: cart}
  annotations: {shunt.io/netns: /run/netns/cart}
status: {podIP: 10.244.0.21}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations: {shunt.io/netns: /run/netns/web}
status: {podIP: 10.244.0.22}
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: other
  labels: {app: client}
  annotations: {shunt.io/netns: /run/netns/client}
status: {podIP: 10.244.0.23}
";

    fn snapshot_of(files: &[(&str, &str)]) -> Snapshot {
        let mut loader = Loader::default();
        for (name, text) in files {
            loader.load_file(Path::new(name), text);
        }
        Snapshot::from_config(Path::new("/cfg"), loader.config, loader.errors)
    }

    /// Whether `GET /<path>` from plaintext 10.244.0.99 reaches `pod` on port 8080, as the
    /// proxy's table decides from the snapshot's mesh.
    fn allowed(snapshot: &Snapshot, pod: &str, path: &str) -> bool {
        let (table, errors) = AuthzTable::build(&snapshot.mesh);
        assert!(
            !errors.iter().any(security::Error::drops_object),
            "the agent sends only valid policies: {errors:?}"
        );
        let workload = snapshot
            .mesh
            .workloads
            .iter()
            .find(|w| w.name == pod)
            .unwrap();
        let headers = hyper::HeaderMap::new();
        let facts = Facts {
            peer: None,
            source_ip: [10, 244, 0, 99].into(),
            destination_ip: workload.ip.unwrap(),
            destination_port: 8080,
            sni: None,
            http: Some(HttpFacts {
                host: "cart",
                method: "GET",
                path,
                headers: &headers,
                remote_ip: shunt_mesh::security::authz::RemoteIp::Peer,
                auth: None,
            }),
        };
        table.evaluate(workload, &facts).allowed
    }

    fn fail_closed(snapshot: &Snapshot, pod: &str) -> bool {
        let plan = snapshot.pods.iter().find(|p| p.name == pod).unwrap();
        plan.capture.as_ref().unwrap().fail_closed
    }

    #[test]
    fn valid_policies_reach_the_mesh_and_their_pods_fail_closed() {
        let policies = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin*"]}}]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: audit
  namespace: other
  annotations: {istio.io/dry-run: "true", kubectl.kubernetes.io/last-applied-configuration: "{}"}
spec:
  action: AUDIT
  rules:
  - {}
"#;
        let snapshot = snapshot_of(&[("pods.yaml", PODS), ("authz.yaml", policies)]);
        assert_eq!(snapshot.errors, vec![]);
        assert_eq!(snapshot.mesh.authorization_policies.len(), 2);
        assert!(snapshot.mesh.fail_closed.is_empty());
        assert!(!allowed(&snapshot, "cart", "/admin/x"));
        assert!(allowed(&snapshot, "cart", "/"));
        assert!(allowed(&snapshot, "web", "/admin/x"));
        // A DENY's pod must not be reachable around the proxy; an AUDIT's may.
        assert!(fail_closed(&snapshot, "cart"));
        assert!(!fail_closed(&snapshot, "web"));
        assert!(!fail_closed(&snapshot, "client"));
    }

    /// Each case: the document; the `(object, field)` of every error, in order (field `None`:
    /// the line saying how it fails closed); the pods that then deny `GET /`.
    #[test]
    fn bad_policies_are_named_and_fail_closed() {
        let doc = |api: &str, name: &str, spec: &str| {
            format!(
                "apiVersion: {api}\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n"
            )
        };
        let v1 = |spec: &str| doc("security.istio.io/v1", "p", spec);
        let object = "AuthorizationPolicy shop/p";
        type Case = (
            String,
            Vec<(&'static str, Option<&'static str>)>,
            Vec<&'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                v1("{action: DENY, rules: [{to: [{operation: {methods: [GET], notPath: [/x]}}]}]}"),
                vec![
                    (object, Some("spec.rules[0].to[0].operation.notPath")),
                    (object, None),
                ],
                vec!["cart", "web"],
            ),
            // A misspelt matchLabels is refused, not read as namespace-wide; every pod it may
            // have meant is locked down.
            (
                v1("{selector: {matchLabel: {app: cart}}, rules: [{}]}"),
                vec![(object, Some("spec.selector.matchLabel")), (object, None)],
                vec!["cart", "web"],
            ),
            (
                v1(
                    "{selector: {matchLabels: {app: cart}}, rules: [{when: [{key: \"request.header[x]\", values: [a]}]}]}",
                ),
                vec![(object, Some("spec.rules[0].when[0].key")), (object, None)],
                vec!["cart"],
            ),
            (
                v1(
                    "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: gw}], rules: [{}]}",
                ),
                vec![(object, Some("spec.targetRefs")), (object, None)],
                vec!["cart", "web"],
            ),
            (
                doc(
                    "security.istio.io/v1alpha1",
                    "p",
                    "{action: DENY, rules: [{}]}",
                ),
                vec![(object, Some("apiVersion")), (object, None)],
                vec!["cart", "web"],
            ),
            (
                v1("{action: DENY, rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]}"),
                vec![
                    (object, Some("spec.rules[0].from[0].source.ipBlocks[0]")),
                    (object, None),
                ],
                vec!["cart", "web"],
            ),
            // An AUDIT that is wrong is left out; nothing fails closed for it.
            (
                v1("{action: AUDIT, rules: [{to: []}]}"),
                vec![(object, Some("spec.rules[0].to"))],
                vec![],
            ),
            // Harmless problems leave the policy in.
            (
                v1("{action: DENY}"),
                vec![(object, Some("spec.rules"))],
                vec![],
            ),
        ];
        for (text, want, denied) in cases {
            let snapshot = snapshot_of(&[("pods.yaml", PODS), ("authz.yaml", &text)]);
            let got: Vec<_> = snapshot
                .errors
                .iter()
                .map(|e| (e.object.as_deref().unwrap_or_default(), e.field.as_deref()))
                .collect();
            assert_eq!(got, want, "{text}: {:#?}", snapshot.errors);
            assert!(
                snapshot
                    .errors
                    .iter()
                    .all(|e| e.file == Path::new("authz.yaml"))
            );
            for pod in ["cart", "web", "client"] {
                let deny = denied.contains(&pod);
                assert_eq!(!allowed(&snapshot, pod, "/"), deny, "{text}: {pod}");
                assert_eq!(fail_closed(&snapshot, pod), deny, "{text}: {pod}");
            }
        }
    }
}
