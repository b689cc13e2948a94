//! MeshConfig `extensionProviders` as the agent loads them: a bad provider is reported by
//! ConfigMap and field and kept as invalid (CUSTOM policies naming it deny), and the rest of
//! the mesh config still applies.

use std::path::{Path, PathBuf};

use shunt_api::config::LoadError;
use shunt_mesh::ext_authz::{ProviderError, ProviderKind};

use super::Snapshot;
use crate::source::local_dir::Loader;

fn snapshot(mesh: &str) -> Snapshot {
    let indented: String = mesh.lines().map(|line| format!("    {line}\n")).collect();
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: istio, namespace: istio-system}}\n\
         data:\n  mesh: |\n{indented}"
    );
    let mut loader = Loader::default();
    loader.load_file(Path::new("mesh.yaml"), &text);
    Snapshot::from_config(Path::new("/cfg"), loader.config, loader.errors)
}

#[test]
fn providers_are_read_and_a_bad_one_is_named_and_costs_only_itself() {
    let snapshot = snapshot(
        r#"trustDomain: example.org
extensionProviders:
- name: sample-ext-authz-http
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: "8000"
    includeRequestHeadersInCheck: ["x-ext-authz"]
    headersToUpstreamOnAllow: ["x-ext-authz-check-result"]
- name: typo
  envoyExtAuthzHttp:
    service: ext-authz.foo.svc.cluster.local
    port: 8000
    failopen: true
- name: sample-ext-authz-grpc
  envoyExtAuthzGrpc:
    service: ext-authz.foo.svc.cluster.local
    port: 9000
"#,
    );
    let settings = &snapshot.mesh.mesh;
    let providers = &settings.extension_providers;
    assert_eq!(settings.trust_domain, "example.org");
    let http = providers.http("sample-ext-authz-http").unwrap();
    assert_eq!(
        (http.host.as_str(), http.port),
        ("ext-authz.foo.svc.cluster.local", 8000)
    );
    assert!(matches!(
        providers.http("sample-ext-authz-grpc"),
        Err(ProviderError::NotHttpAuthorizer { .. })
    ));
    assert!(matches!(providers.0[1].kind, ProviderKind::Invalid { .. }));
    assert_eq!(snapshot.errors.len(), 1, "{:?}", snapshot.errors);
    let LoadError {
        file,
        object,
        field,
        message,
    } = &snapshot.errors[0];
    assert_eq!(file, &PathBuf::from("mesh.yaml"));
    assert_eq!(object.as_deref(), Some("ConfigMap istio-system/istio"));
    assert_eq!(
        field.as_deref(),
        Some("data.mesh.extensionProviders[1].envoyExtAuthzHttp.failopen")
    );
    assert!(message.contains("unknown field \"failopen\""), "{message}");
}

#[test]
fn no_providers_is_the_default() {
    let snapshot = snapshot("trustDomain: example.org\n");
    assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
    assert!(snapshot.mesh.mesh.extension_providers.is_empty());
    assert!(matches!(
        snapshot.mesh.mesh.extension_providers.http("any"),
        Err(ProviderError::NotFound { .. })
    ));
}
