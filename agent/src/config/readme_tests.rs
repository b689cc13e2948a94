//! The README's "Traffic management" examples load without a single error: each `yaml` block
//! of that section, on top of a small mesh with the Services they name.

use std::path::Path;

use shunt_mesh::routing::OutboundTrafficPolicy;

use super::Snapshot;
use crate::source::local_dir::Loader;

const README: &str = include_str!("../../../README.md");

/// What the examples refer to: namespace `shop` with `cart` (pods v1 and v2; ports 80 http,
/// 443 https, 5000 tcp) and `reviews`, and the uncaptured pod the ServiceEntry points at.
const MESH: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata:
  name: cart-v1
  namespace: shop
  annotations: {shunt.io/netns: /run/netns/cart-v1}
  labels: {app: cart, version: v1}
status: {podIP: 10.244.0.21}
---
apiVersion: v1
kind: Pod
metadata:
  name: cart-v2
  namespace: shop
  annotations: {shunt.io/netns: /run/netns/cart-v2}
  labels: {app: cart, version: v2}
status: {podIP: 10.244.0.22}
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews
  namespace: shop
  annotations: {shunt.io/netns: /run/netns/reviews}
  labels: {app: reviews}
status: {podIP: 10.244.0.30}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: cart}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: 8443}
  - {name: tcp-orders, port: 5000}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: reviews}
  ports: [{name: http, port: 80, targetPort: 9080}]
";

/// The `yaml` fenced blocks between `## Traffic management` and the next `## ` heading.
fn traffic_management_examples() -> Vec<&'static str> {
    let start = README
        .find("\n## Traffic management\n")
        .unwrap_or_else(|| panic!("README.md has no \"## Traffic management\" section"));
    let section = &README[start + 1..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let section = &section[..end];
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(open) = rest.find("```yaml\n") {
        let body = &rest[open + "```yaml\n".len()..];
        let close = body
            .find("```")
            .unwrap_or_else(|| panic!("unterminated yaml block in README"));
        blocks.push(&body[..close]);
        rest = &body[close..][3..];
    }
    blocks
}

#[test]
fn every_traffic_management_example_in_the_readme_loads_cleanly() {
    let examples = traffic_management_examples();
    assert!(examples.len() >= 7, "found {} yaml blocks", examples.len());
    let mut loader = Loader::default();
    loader.load_file(Path::new("mesh.yaml"), MESH);
    for (i, example) in examples.iter().enumerate() {
        loader.load_file(Path::new(&format!("readme-example-{i}.yaml")), example);
    }
    let snapshot = Snapshot::from_config(Path::new("."), loader.config, loader.errors);
    let errors: Vec<String> = snapshot.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors.is_empty(),
        "README examples do not load:\n{}",
        errors.join("\n")
    );

    let mesh = &snapshot.mesh;
    assert_eq!(
        (
            mesh.virtual_services.len(),
            mesh.destination_rules.len(),
            mesh.service_entries.len(),
            mesh.rate_limit_policies.len(),
        ),
        (4, 1, 1, 1),
        "every example object reaches the proxy"
    );
    assert_eq!(
        mesh.mesh.outbound_traffic_policy,
        OutboundTrafficPolicy::RegistryOnly,
        "the mesh ConfigMap example applies"
    );
}
