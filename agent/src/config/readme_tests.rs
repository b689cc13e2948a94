//! The README's "Traffic management" and "Security" examples load without a single error:
//! each `yaml` block of those sections, on top of a small mesh with the Services they name.

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

/// The `yaml` fenced blocks between `## <heading>` and the next `## ` heading.
fn examples(heading: &str) -> Vec<&'static str> {
    let start = README
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no \"## {heading}\" section"));
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
    let snapshot = load_cleanly("Traffic management", 7);

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

#[test]
fn every_security_example_in_the_readme_loads_cleanly() {
    use shunt_mesh::routing::{Destination, Host, Routes, TrustRoots, UpstreamTls};
    use shunt_mesh::security::{MtlsMode, PeerAuthnTable};

    let snapshot = load_cleanly("Security", 2);
    let mesh = &snapshot.mesh;
    assert_eq!(
        (
            mesh.peer_authentications.len(),
            mesh.destination_rules.len()
        ),
        (1, 1),
        "every example object reaches the proxy"
    );
    let cart = mesh.workloads.iter().find(|w| w.name == "cart-v1");
    let (peer_authn, _) = PeerAuthnTable::build(mesh);
    assert_eq!(
        cart.map(|w| peer_authn.mode(w, 8080)),
        Some(MtlsMode::Strict),
        "the namespace is STRICT"
    );
    let (routes, _) = shunt_mesh::routing::RouteTable::build(mesh);
    let cluster = routes
        .cluster(
            &Destination {
                host: Host("api.example.com".into()),
                subset: None,
                port: Some(80),
            },
            80,
            cart,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let Some(UpstreamTls::Originate(origination)) = &cluster.policy.tls else {
        panic!("port 80 originates TLS: {:?}", cluster.policy.tls);
    };
    assert!(origination.client_certificate.is_none(), "SIMPLE");
    assert_eq!(origination.sni.as_deref(), Some("api.example.com"));
    assert!(
        matches!(
            &origination.verify,
            shunt_mesh::routing::ServerVerification::Verify {
                roots: TrustRoots::CaFile(file),
                ..
            } if &**file == "/etc/shunt/certs/api-ca.pem"
        ),
        "{:?}",
        origination.verify
    );
}

#[test]
fn every_gateway_example_in_the_readme_loads_cleanly() {
    let snapshot = load_cleanly("Gateways", 3);
    let mesh = &snapshot.mesh;
    assert_eq!((mesh.gateways.len(), mesh.ingresses.len()), (1, 1));
    let gateway = snapshot
        .pods
        .iter()
        .find(|p| p.name == "istio-ingressgateway-1")
        .expect("the gateway pod");
    assert_eq!(
        gateway.capture.as_ref().map(|c| c.role),
        Some(shunt_api::control::PodRole::Gateway),
        "{}",
        gateway.reason
    );
    let (routes, _) = shunt_mesh::routing::RouteTable::build(mesh);
    let ports: Vec<u16> = routes
        .gateway_listeners(&gateway.uid)
        .map(|l| l.ports.iter().map(|p| p.port).collect())
        .unwrap_or_default();
    assert_eq!(
        ports,
        vec![80, 443],
        "the Gateway's and the Ingress's ports"
    );
    assert_eq!(
        routes.gateway_credentials("local"),
        vec![("istio-system".to_owned(), "shop-cert".to_owned())]
    );
}

/// Loads every `yaml` block of the README's `heading` section (at least `at_least` of them)
/// over [`MESH`], and checks that nothing is reported.
fn load_cleanly(heading: &str, at_least: usize) -> Snapshot {
    let examples = examples(heading);
    assert!(
        examples.len() >= at_least,
        "found {} yaml blocks under {heading}",
        examples.len()
    );
    let mut loader = Loader::default();
    loader.load_file(Path::new("mesh.yaml"), MESH);
    for (i, example) in examples.iter().enumerate() {
        loader.load_file(Path::new(&format!("readme-example-{i}.yaml")), example);
    }
    let snapshot = Snapshot::from_config(Path::new("."), loader.config, loader.errors);
    let errors: Vec<String> = snapshot.errors.iter().map(ToString::to_string).collect();
    assert!(
        errors.is_empty(),
        "README {heading} examples do not load:\n{}",
        errors.join("\n")
    );
    snapshot
}
