//! Model equivalence: ONE corpus of YAML, read by local mode (a config dir) and by the
//! Kubernetes source (the same objects served by the fake API server), must give the proxy
//! the same model.
//!
//! "The same" is what the agent sends the proxy, and what it decides for each pod:
//! - the `MeshState` (the `State` message), compared as canonical JSON in which each of its
//!   object lists is sorted: their order is the order the objects were read in (file order
//!   in local mode, list order from the API server), which the proxy never depends on (its
//!   tables sort by namespace and name, or merge order), and no two pods of the corpus share
//!   an address, the one place where the workloads' order could count;
//! - every pod's capture plan (`AddPod` is built from this node's), sorted by pod;
//! - the gateway credentials (`Credentials`) of this node's gateway servers;
//! - the errors, by object, field and message (the place differs by design: a file, or a
//!   `kube resourceVersion`).
//!
//! The `Config` itself is not compared: the Kubernetes source keeps less of another node's
//! pods and of EndpointSlices (the fields nothing reads are stripped), and Secrets only when
//! a gateway here names one. Those differences are allowed exactly as long as the model above
//! stays identical, which is what this test holds them to.

use serde_json::Value;
use shunt_agent::config::Snapshot;
use shunt_agent::config::gateway_credentials::gateway_credentials;

use super::fake_apiserver::{FakeApiServer, Resource};
use super::{NODE, listed, options, source_on};

/// Every kind the agent reads, on two nodes (`node-a` is the agent's). A ready, a not-ready
/// and another node's endpoint; a Service with slices, one without (selector fallback) and a
/// selectorless one whose slice names an address with no pod; another node's pod whose
/// annotations opt it out of capture and exclude a port; and one invalid VirtualService.
const CORPUS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Pod
metadata:
  name: cart-1
  namespace: shop
  uid: uid-cart-1
  labels: {app: cart, version: v1}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: cart-v1-7d9f, controller: true}]
spec:
  nodeName: node-a
  serviceAccountName: cart
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  podIP: 10.244.0.10
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: cart-2
  namespace: shop
  uid: uid-cart-2
  labels: {app: cart, version: v2}
  annotations: {traffic.sidecar.istio.io/excludeInboundPorts: "9090", example.com/big: "x"}
spec:
  nodeName: node-b
  serviceAccountName: cart
  containers: [{name: app, image: cart:2, ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  podIP: 10.244.1.11
  hostIP: 192.0.2.2
  conditions: [{type: Ready, status: "True"}, {type: Initialized, status: "True"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: cart-3
  namespace: shop
  uid: uid-cart-3
  labels: {app: cart, version: v1}
spec:
  nodeName: node-b
  serviceAccountName: cart
  containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]
status:
  phase: Running
  podIP: 10.244.1.12
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: v1
kind: Pod
metadata:
  name: db-0
  namespace: shop
  uid: uid-db-0
  labels: {app: db}
  annotations: {sidecar.istio.io/inject: "false"}
spec:
  nodeName: node-b
  serviceAccountName: db
  containers: [{name: db, ports: [{name: tcp-pg, containerPort: 5432}]}]
status:
  phase: Running
  podIP: 10.244.1.20
---
apiVersion: v1
kind: Pod
metadata:
  name: ingress-1
  namespace: istio-system
  uid: uid-ingress-1
  labels: {istio: ingressgateway}
spec:
  nodeName: node-a
  serviceAccountName: ingress
  containers: [{name: proxy, ports: [{containerPort: 8443}]}]
status:
  phase: Running
  podIP: 10.244.0.5
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: db}
  ports: [{name: tcp-pg, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: http, port: 80, targetPort: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: cart-abcde
  namespace: shop
  labels: {kubernetes.io/service-name: cart, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2026-12-07T10:00:00Z"}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
  - addresses: [10.244.0.10]
    conditions: {ready: true, serving: true, terminating: false}
    nodeName: node-a
    zone: zone-1
    targetRef: {kind: Pod, namespace: shop, name: cart-1, uid: uid-cart-1}
  - addresses: [10.244.1.12]
    conditions: {ready: false, serving: false}
    nodeName: node-b
    targetRef: {kind: Pod, namespace: shop, name: cart-3, uid: uid-cart-3}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: cart-fghij
  namespace: shop
  labels: {kubernetes.io/service-name: cart}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.244.1.11]
    hints: {forZones: [{name: zone-2}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: legacy-1
  namespace: shop
  labels: {kubernetes.io/service-name: legacy}
addressType: IPv4
ports: [{name: http, port: 9000}]
endpoints: [{addresses: [192.0.2.50]}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    outboundTrafficPolicy: {mode: REGISTRY_ONLY}
    ingressClass: istio
---
apiVersion: v1
kind: Secret
type: kubernetes.io/tls
metadata: {name: shop-cert, namespace: istio-system}
data: {tls.crt: Y2VydA==, tls.key: a2V5}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart-routes, namespace: shop}
spec:
  hosts: [cart]
  http:
    - match: [{headers: {x-canary: {exact: "1"}}}]
      route: [{destination: {host: cart, subset: v2}}]
    - route: [{destination: {host: cart, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: shop}
spec:
  hosts: [cart]
  http: [{route: [{destination: {host: cart}, weight: -5}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers:
    - port: {number: 443, name: https, protocol: HTTPS}
      hosts: [shop.example.test]
      tls: {mode: SIMPLE, credentialName: shop-cert}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments, namespace: shop}
spec:
  hosts: [payments.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: cart, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  jwtRules:
    - issuer: cart-issuer
      jwks: '{"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: shunt.io/v1alpha1
kind: RateLimitPolicy
metadata: {name: cart-limit, namespace: shop}
spec: {service: cart, requestsPerSecond: 10, burst: 20}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: istio
  rules:
    - host: www.example.test
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: cart, port: {number: 80}}}}
"#;

/// Where the fake API server serves each kind of the corpus.
const RESOURCES: [(&str, Resource); 15] = [
    ("Namespace", super::NAMESPACES),
    ("Pod", super::PODS),
    ("Service", super::SERVICES),
    ("EndpointSlice", super::ENDPOINT_SLICES),
    ("ConfigMap", super::CONFIG_MAPS),
    ("Secret", super::SECRETS),
    ("VirtualService", super::VIRTUAL_SERVICES),
    ("DestinationRule", "networking.istio.io/v1/destinationrules"),
    ("Gateway", super::GATEWAYS),
    ("ServiceEntry", "networking.istio.io/v1/serviceentries"),
    ("PeerAuthentication", super::PEER_AUTHENTICATIONS),
    (
        "RequestAuthentication",
        "security.istio.io/v1/requestauthentications",
    ),
    (
        "AuthorizationPolicy",
        "security.istio.io/v1/authorizationpolicies",
    ),
    ("RateLimitPolicy", super::RATE_LIMIT_POLICIES),
    ("Ingress", super::INGRESSES),
];

fn corpus() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(CORPUS)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|e| panic!("the corpus is YAML: {e}"))
        })
        .collect()
}

/// What the proxy gets from `snapshot`, and the plans and errors, in a comparable form.
fn model(snapshot: &Snapshot) -> Value {
    let mut mesh = serde_json::to_value(&snapshot.mesh).unwrap_or_else(|e| panic!("{e}"));
    sort_lists(&mut mesh);
    if let Some(fail_closed) = mesh.get_mut("fail_closed") {
        sort_lists(fail_closed);
    }
    let mut plans: Vec<String> = snapshot.pods.iter().map(|p| format!("{p:#?}")).collect();
    plans.sort();
    let credentials = gateway_credentials(snapshot, &snapshot.gateway_secret_refs());
    let mut errors: Vec<String> = snapshot
        .errors
        .iter()
        .map(|e| format!("{:?}: {:?}: {}", e.object, e.field, e.message))
        .collect();
    errors.sort();
    serde_json::json!({
        "mesh": mesh,
        "plans": plans,
        "credentials": format!("{credentials:#?}"),
        "errors": errors,
    })
}

/// Sorts each list directly under `value` (an object) by its items' names (a workload's uid,
/// an object's metadata), then their JSON, so that a difference shows at its object.
fn sort_lists(value: &mut Value) {
    let key = |item: &Value| {
        let names = ["uid", "metadata", "namespace", "name"].map(|field| item[field].to_string());
        (names, item.to_string())
    };
    for item in value
        .as_object_mut()
        .into_iter()
        .flat_map(|o| o.values_mut())
    {
        if let Some(list) = item.as_array_mut() {
            list.sort_by_key(key);
        }
    }
}

#[tokio::test]
async fn local_mode_and_the_kubernetes_source_give_the_proxy_the_same_model() {
    let objects = corpus();

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary dir: {e}"));
    std::fs::write(dir.path().join("corpus.yaml"), CORPUS)
        .unwrap_or_else(|e| panic!("writing the corpus: {e}"));
    let local = shunt_agent::source::local_dir::load(dir.path(), &options())
        .unwrap_or_else(|e| panic!("local mode: {e}"));

    let server = FakeApiServer::start().await;
    for object in &objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let (_, resource) = RESOURCES
            .iter()
            .find(|(k, _)| *k == kind)
            .unwrap_or_else(|| panic!("no resource for the corpus's {kind}"));
        server.apply(resource, object.clone());
    }
    let (mut source, _kubeconfig) = source_on(&server, 3).await;
    let kube = listed(&mut source).await;

    // The corpus exercises what it claims to, so that equality means something.
    let broken = "VirtualService shop/broken";
    assert!(
        local
            .errors
            .iter()
            .any(|e| e.object.as_deref() == Some(broken)),
        "the corpus's one invalid object is reported: {:?}",
        local.errors
    );
    assert_eq!(local.errors.len(), 1, "{:?}", local.errors);
    let cart = local.mesh.services.iter().find(|s| s.name == "cart");
    let endpoints = cart.and_then(|s| s.ports[0].endpoints.as_ref());
    assert_eq!(
        endpoints.map(Vec::len),
        Some(3),
        "cart's endpoints are its slices' {endpoints:?}"
    );
    let db = local.mesh.services.iter().find(|s| s.name == "db");
    assert_eq!(db.map(|s| s.ports[0].endpoints.is_none()), Some(true));
    assert!(
        local
            .mesh
            .workloads
            .iter()
            .any(|w| w.node.as_deref() == Some(NODE))
    );
    assert!(
        local
            .mesh
            .workloads
            .iter()
            .any(|w| w.node.as_deref() == Some("node-b"))
    );
    for (field, list) in [
        ("virtual_services", local.mesh.virtual_services.len()),
        ("destination_rules", local.mesh.destination_rules.len()),
        ("service_entries", local.mesh.service_entries.len()),
        ("gateways", local.mesh.gateways.len()),
        ("ingresses", local.mesh.ingresses.len()),
        ("rate_limit_policies", local.mesh.rate_limit_policies.len()),
        (
            "peer_authentications",
            local.mesh.peer_authentications.len(),
        ),
        (
            "request_authentications",
            local.mesh.request_authentications.len(),
        ),
        (
            "authorization_policies",
            local.mesh.authorization_policies.len(),
        ),
    ] {
        assert_eq!(list, 1, "the corpus has one valid {field}");
    }

    let (local, kube) = (model(&local), model(&kube));
    let mut differences = Vec::new();
    differ(&local, &kube, "", &mut differences);
    assert!(
        differences.is_empty(),
        "local mode and the Kubernetes source differ (local mode, then kube):\n{}",
        differences.join("\n")
    );
}

/// The paths where `a` and `b` differ, with both values.
fn differ(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for key in keys {
                let (at_a, at_b) = (x.get(key), y.get(key));
                let path = format!("{path}.{key}");
                differ(
                    at_a.unwrap_or(&Value::Null),
                    at_b.unwrap_or(&Value::Null),
                    &path,
                    out,
                );
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (at_a, at_b)) in x.iter().zip(y).enumerate() {
                differ(at_a, at_b, &format!("{path}[{i}]"), out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} / {b}")),
        _ => {}
    }
}
