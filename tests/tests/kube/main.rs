//! The agent's Kubernetes source (`shunt-agent --source kube`) against a FAKE API server
//! ([`fake_apiserver`]: a test double on loopback, not a kube-apiserver), driven in-process:
//! no netns, no privileges. What the fake leaves untested is in the README, "Kubernetes mode".

mod ca;
mod fake_apiserver;

use std::sync::Arc;
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Resource};
use serde_json::{Value, json};
use shunt_agent::config::{LoadOptions, Snapshot};
use shunt_agent::source::kube::{self as source, KubeSource};
use shunt_api::k8s::NodeName;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PODS: Resource = "/v1/pods";
const NAMESPACES: Resource = "/v1/namespaces";
const SERVICES: Resource = "/v1/services";
const CONFIG_MAPS: Resource = "/v1/configmaps";
const SECRETS: Resource = "/v1/secrets";
const VIRTUAL_SERVICES: Resource = "networking.istio.io/v1/virtualservices";
const GATEWAYS: Resource = "networking.istio.io/v1/gateways";
const PEER_AUTHENTICATIONS: Resource = "security.istio.io/v1/peerauthentications";
const RATE_LIMIT_POLICIES: Resource = "shunt.io/v1alpha1/ratelimitpolicies";
const INGRESSES: Resource = "networking.k8s.io/v1/ingresses";
/// Every resource the source watches besides pods (and the gateways' Secrets).
const WATCHED: [Resource; 12] = [
    NAMESPACES,
    SERVICES,
    INGRESSES,
    CONFIG_MAPS,
    VIRTUAL_SERVICES,
    "networking.istio.io/v1/destinationrules",
    "networking.istio.io/v1/serviceentries",
    GATEWAYS,
    PEER_AUTHENTICATIONS,
    "security.istio.io/v1/authorizationpolicies",
    "security.istio.io/v1/requestauthentications",
    RATE_LIMIT_POLICIES,
];
const NODE: &str = "node-a";

fn pod(namespace: &str, name: &str, node: &str, ip: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                     "labels": labels,
                     "annotations": {"example.com/note": "kept only on this node's pods"},
                     "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
        "spec": {"nodeName": node, "serviceAccountName": name,
                 "containers": [{"name": "app", "image": "example/app:1",
                                 "ports": [{"name": "http", "containerPort": 8080}]}],
                 "volumes": [{"name": "data", "emptyDir": {}}]},
        "status": {"phase": "Running", "podIP": ip, "hostIP": "192.0.2.1",
                   "conditions": [{"type": "Ready", "status": "True"},
                                  {"type": "PodScheduled", "status": "True"}]}
    })
}

fn virtual_service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
}

fn good_routes() -> Value {
    virtual_service(
        "cart-routes",
        json!({"hosts": ["cart"], "http": [{"route": [{"destination": {"host": "cart"}}]}]}),
    )
}

fn tls_secret(name: &str, cert: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
           "metadata": {"name": name, "namespace": "istio-system"},
           "data": {"tls.crt": cert, "tls.key": "a2V5"}})
}

fn gateway(credential: &str) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
           "metadata": {"name": "shop", "namespace": "istio-system"},
           "spec": {"selector": {"istio": "ingressgateway"},
                    "servers": [{"port": {"number": 443, "name": "https", "protocol": "HTTPS"},
                                 "hosts": ["shop.example.test"],
                                 "tls": {"mode": "SIMPLE", "credentialName": credential}}]}})
}

fn secret_names(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .secrets
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s.object.metadata.namespace(),
                s.object.metadata.name
            )
        })
        .collect()
}

/// A small cluster with every kind the source reads: this node's app and gateway pods,
/// another node's pod, a Service, Istio objects (a Gateway naming a Secret), a
/// RateLimitPolicy, the mesh ConfigMap, and two Secrets, one of them named by no gateway.
fn seed(server: &FakeApiServer) {
    for name in ["shop", "istio-system"] {
        server.apply(
            NAMESPACES,
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "labels": {"team": name}},
                   "spec": {"finalizers": ["kubernetes"]}}),
        );
    }
    server.apply(
        PODS,
        pod("shop", "cart", NODE, "10.244.0.10", json!({"app": "cart"})),
    );
    server.apply(
        PODS,
        pod("shop", "db", "node-b", "10.244.1.20", json!({"app": "db"})),
    );
    server.apply(
        PODS,
        pod(
            "istio-system",
            "ingress-1",
            NODE,
            "10.244.0.5",
            json!({"istio": "ingressgateway"}),
        ),
    );
    server.apply(
        SERVICES,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "cart", "namespace": "shop"},
               "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "cart"},
                        "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}),
    );
    server.apply(VIRTUAL_SERVICES, good_routes());
    server.apply(GATEWAYS, gateway("shop-cert"));
    server.apply(
        INGRESSES,
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
               "metadata": {"name": "shop", "namespace": "shop"},
               "spec": {"ingressClassName": "istio", "rules": [{"host": "shop.example.test",
                        "http": {"paths": [{"path": "/", "pathType": "Prefix",
                                 "backend": {"service": {"name": "cart",
                                                         "port": {"number": 80}}}}]}}]}}),
    );
    server.apply(
        PEER_AUTHENTICATIONS,
        json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
               "metadata": {"name": "default", "namespace": "shop"},
               "spec": {"mtls": {"mode": "PERMISSIVE"}}}),
    );
    server.apply(
        RATE_LIMIT_POLICIES,
        json!({"apiVersion": "shunt.io/v1alpha1", "kind": "RateLimitPolicy",
               "metadata": {"name": "cart-limit", "namespace": "shop"},
               "spec": {"service": "cart", "requestsPerSecond": 10, "burst": 20}}),
    );
    server.apply(
        CONFIG_MAPS,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "istio", "namespace": "istio-system"},
               "data": {"mesh": "outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n"}}),
    );
    server.apply(
        CONFIG_MAPS,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "other", "namespace": "istio-system"}, "data": {}}),
    );
    for name in ["shop-cert", "unrelated", "next-cert"] {
        server.apply(SECRETS, tls_secret(name, "Y2VydA=="));
    }
}

fn options() -> LoadOptions {
    LoadOptions {
        node_name: NodeName::new(NODE).unwrap_or_else(|e| panic!("{e}")),
        ..LoadOptions::default()
    }
}

/// The source on `server`, its initial lists paginated `page_size` objects at a time.
async fn source_on(server: &FakeApiServer, page_size: u32) -> (KubeSource, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary dir: {e}"));
    let client = source::connect(Some(&server.kubeconfig(dir.path())))
        .await
        .unwrap_or_else(|e| panic!("a client for the fake API server: {e}"));
    (KubeSource::start(client, options(), page_size), dir)
}

async fn listed(source: &mut KubeSource) -> Snapshot {
    tokio::time::timeout(Duration::from_secs(60), source.listed())
        .await
        .unwrap_or_else(|_| panic!("the fake API server's objects were not listed in 60 s"))
}

/// The source on `server`, listed and publishing.
struct Running {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _kubeconfig: tempfile::TempDir,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .unwrap_or_else(|e| panic!("the source's task: {e}"));
    }
}

async fn running(server: &FakeApiServer) -> Running {
    let (mut source, kubeconfig) = source_on(server, 500).await;
    let initial = listed(&mut source).await;
    let (tx, snapshots) = watch::channel(Arc::new(initial));
    let shutdown = CancellationToken::new();
    let task = source.spawn(tx, shutdown.clone());
    Running {
        snapshots,
        shutdown,
        task,
        _kubeconfig: kubeconfig,
    }
}

/// Waits for a published snapshot of which `done` holds.
async fn published(
    snapshots: &mut watch::Receiver<Arc<Snapshot>>,
    what: &str,
    done: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let snapshot = Arc::clone(&snapshots.borrow_and_update());
            if done(&snapshot) {
                return snapshot;
            }
            if snapshots.changed().await.is_err() {
                panic!("the source stopped");
            }
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("no snapshot with {what}: {:#?}", snapshots.borrow().config))
}

fn pod_named<'a>(snapshot: &'a Snapshot, name: &str) -> &'a shunt_api::k8s::Pod {
    snapshot
        .config
        .pods
        .iter()
        .map(|p| &p.object)
        .find(|pod| pod.metadata.name == name)
        .unwrap_or_else(|| panic!("no pod {name}"))
}

fn pod_names(snapshot: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = snapshot
        .config
        .pods
        .iter()
        .map(|p| {
            format!(
                "{}/{}",
                p.object.metadata.namespace(),
                p.object.metadata.name
            )
        })
        .collect();
    names.sort();
    names
}

fn istio_names(snapshot: &Snapshot) -> Vec<String> {
    let mut names: Vec<String> = snapshot
        .config
        .istio
        .iter()
        .map(|o| {
            let meta = &o.object["metadata"];
            format!(
                "{} {}/{}",
                o.object["kind"].as_str().unwrap_or("?"),
                meta["namespace"].as_str().unwrap_or("?"),
                meta["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn the_initial_lists_reach_the_snapshot_with_every_kind() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let (mut source, _dir) = source_on(&server, 2).await;
    let snapshot = listed(&mut source).await;

    assert_eq!(snapshot.errors, vec![], "the seed is valid");
    let namespaces: Vec<&str> = snapshot
        .config
        .namespaces
        .iter()
        .map(|n| n.object.metadata.name.as_str())
        .collect();
    assert_eq!(namespaces, ["istio-system", "shop"]);
    assert_eq!(
        pod_names(&snapshot),
        ["istio-system/ingress-1", "shop/cart", "shop/db"]
    );
    let db = pod_named(&snapshot, "db");
    assert!(
        db.metadata.annotations.is_empty(),
        "another node's pod is trimmed: {:?}",
        db.metadata
    );
    assert_eq!(db.spec.node_name.as_ref().unwrap().as_str(), "node-b");
    assert_eq!(db.spec.service_account_name.as_deref(), Some("db"));
    let cart = pod_named(&snapshot, "cart");
    assert_eq!(
        cart.metadata.annotations.len(),
        1,
        "this node's pods are whole"
    );
    let db_workload = snapshot
        .mesh
        .workloads
        .iter()
        .find(|w| w.name == "db")
        .unwrap();
    assert_eq!(
        (
            db_workload.ip.map(|ip| ip.to_string()),
            db_workload.ready,
            db_workload.ports.len()
        ),
        (Some("10.244.1.20".to_owned()), true, 1),
        "a trimmed pod is still a peer and an endpoint"
    );
    assert_eq!(snapshot.config.services.len(), 1);
    assert_eq!(
        istio_names(&snapshot),
        [
            "Gateway istio-system/shop",
            "PeerAuthentication shop/default",
            "VirtualService shop/cart-routes"
        ]
    );
    assert_eq!(snapshot.mesh.virtual_services.len(), 1);
    assert_eq!(snapshot.mesh.ingresses.len(), 1, "the istio-class Ingress");
    assert_eq!(snapshot.mesh.rate_limit_policies.len(), 1);
    assert_eq!(
        snapshot.config.config_maps.len(),
        1,
        "only istio-system/istio"
    );
    assert_eq!(
        snapshot.mesh.mesh.outbound_traffic_policy,
        shunt_mesh::routing::OutboundTrafficPolicy::RegistryOnly
    );
    assert_eq!(
        secret_names(&snapshot),
        ["istio-system/shop-cert"],
        "only the Secrets a gateway here names"
    );
    assert!(
        snapshot.secret("istio-system", "shop-cert").is_some(),
        "the gateway's credential is there for its listener"
    );
    // Where a file would be: the object's resourceVersion.
    assert!(
        snapshot.config.services[0]
            .file
            .to_str()
            .unwrap()
            .starts_with("kube resourceVersion "),
        "{:?}",
        snapshot.config.services[0].file
    );
    let continued = server
        .served()
        .into_iter()
        .any(|s| s.resource == PODS && s.page.is_some());
    assert!(
        continued,
        "the pod lists were paginated: {:?}",
        server.served()
    );
}

#[tokio::test]
async fn an_update_and_a_delete_reach_the_next_snapshot() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut running = running(&server).await;
    let snapshots = &mut running.snapshots;

    server.apply(
        PODS,
        pod("shop", "cart", NODE, "10.244.0.11", json!({"app": "cart"})),
    );
    server.delete(VIRTUAL_SERVICES, "shop/cart-routes");
    server.delete(PODS, "shop/db");
    let snapshot = published(snapshots, "the new IP, without the deleted objects", |s| {
        let cart_ip = s
            .mesh
            .workloads
            .iter()
            .find(|w| w.name == "cart")
            .and_then(|w| w.ip);
        cart_ip.map(|ip| ip.to_string()).as_deref() == Some("10.244.0.11")
            && s.mesh.virtual_services.is_empty()
            && !s.config.pods.iter().any(|p| p.object.metadata.name == "db")
    })
    .await;
    assert_eq!(
        pod_names(&snapshot),
        ["istio-system/ingress-1", "shop/cart"]
    );
    assert_eq!(snapshot.errors, vec![]);
    running.stop().await;
}

#[tokio::test]
async fn a_relist_after_410_gone_drops_an_object_deleted_meanwhile() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut running = running(&server).await;
    assert_eq!(running.snapshots.borrow().mesh.virtual_services.len(), 1);
    let snapshots = &mut running.snapshots;
    let lists_of = |served: &[fake_apiserver::Served]| {
        served
            .iter()
            .filter(|s| s.resource == VIRTUAL_SERVICES && !s.watch)
            .count()
    };
    server
        .wait_for("the VirtualService watch", |served| {
            served
                .iter()
                .any(|s| s.resource == VIRTUAL_SERVICES && s.watch)
        })
        .await;

    // No DELETED event: only the relist that the 410 forces can show it.
    server.forget(VIRTUAL_SERVICES, "shop/cart-routes");
    let snapshot = published(snapshots, "the VirtualService gone", |s| {
        s.mesh.virtual_services.is_empty()
    })
    .await;
    assert_eq!(lists_of(&server.served()), 2, "listed again after the 410");
    assert!(
        istio_names(&snapshot)
            .iter()
            .all(|n| !n.starts_with("VirtualService"))
    );
    assert_eq!(pod_names(&snapshot).len(), 3, "everything else stays");
    running.stop().await;
}

#[tokio::test]
async fn a_bad_istio_object_is_reported_as_local_mode_does_and_the_rest_applies() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let broken = virtual_service(
        "broken",
        json!({"hosts": ["cart"], "http": [{"route": [{"destination": {"host": 7}}]}]}),
    );
    let version = server.apply(VIRTUAL_SERVICES, broken.clone());
    let (mut source, _dir) = source_on(&server, 500).await;
    let snapshot = listed(&mut source).await;

    // Local mode, reading the same object from a file.
    let dir = tempfile::tempdir().unwrap();
    let yaml = serde_yaml::to_string(&broken).unwrap();
    std::fs::write(dir.path().join("broken.yaml"), yaml).unwrap();
    let local = shunt_agent::source::local_dir::load(dir.path(), &options()).unwrap();
    assert_eq!(local.errors.len(), 1, "{:?}", local.errors);
    let mut want = local.errors[0].clone();
    want.file = format!("kube resourceVersion {version}").into();
    assert_eq!(snapshot.errors, vec![want.clone()]);
    assert_eq!(want.object.as_deref(), Some("VirtualService shop/broken"));
    assert!(want.field.is_some(), "the error names the field: {want}");
    assert_eq!(
        snapshot.mesh.virtual_services.len(),
        1,
        "the good VirtualService applies"
    );
    assert_eq!(pod_names(&snapshot).len(), 3);
}

#[tokio::test]
async fn nothing_is_published_before_every_watch_has_listed() {
    let server = FakeApiServer::start().await;
    seed(&server);
    server.hold_pages(PODS);
    let (mut source, _dir) = source_on(&server, 1).await;
    let first = tokio::spawn(async move {
        let snapshot = listed(&mut source).await;
        (source, snapshot)
    });
    server
        .wait_for("every other list done and a pod page held", |served| {
            let held = served
                .iter()
                .any(|s| s.resource == PODS && s.page.is_some());
            held && WATCHED
                .iter()
                .all(|r| served.iter().any(|s| s.resource == *r && s.watch))
        })
        .await;
    // Every other watch is at InitDone and the pods' first pages are in: still nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.is_finished(),
        "a snapshot came before the pods were listed"
    );
    server.release(PODS);
    let (_source, snapshot) = first.await.unwrap();
    assert_eq!(
        pod_names(&snapshot),
        ["istio-system/ingress-1", "shop/cart", "shop/db"],
        "every page of the pod lists"
    );
    assert_eq!(snapshot.errors, vec![]);
}

#[tokio::test]
async fn a_custom_resource_without_its_crd_counts_as_none() {
    let server = FakeApiServer::start().await;
    seed(&server);
    server.unserve(RATE_LIMIT_POLICIES);
    server.unserve(PEER_AUTHENTICATIONS);
    let (mut source, _dir) = source_on(&server, 500).await;
    let snapshot = listed(&mut source).await;
    assert_eq!(snapshot.config.shunt, vec![]);
    assert_eq!(
        istio_names(&snapshot),
        [
            "Gateway istio-system/shop",
            "VirtualService shop/cart-routes"
        ]
    );
    assert_eq!(pod_names(&snapshot).len(), 3, "everything else applies");
    assert_eq!(snapshot.errors, vec![]);
}

#[tokio::test]
async fn the_secrets_watched_follow_the_gateways() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut running = running(&server).await;
    let snapshots = &mut running.snapshots;
    let cert = |s: &Snapshot, name: &str| {
        s.secret("istio-system", name)
            .and_then(|secret| secret.get("tls.crt"))
            .map(<[u8]>::to_vec)
    };

    // "bmV3" is "new".
    server.apply(SECRETS, tls_secret("shop-cert", "bmV3"));
    published(snapshots, "the Secret's new certificate", |s| {
        cert(s, "shop-cert").as_deref() == Some(b"new")
    })
    .await;

    // The Gateway names another Secret: it is watched, and the first one no longer.
    server.apply(GATEWAYS, gateway("next-cert"));
    let snapshot = published(snapshots, "the newly named Secret", |s| {
        cert(s, "next-cert").is_some()
    })
    .await;
    assert_eq!(secret_names(&snapshot), ["istio-system/next-cert"]);
    assert_eq!(snapshot.errors, vec![]);
    running.stop().await;
}
