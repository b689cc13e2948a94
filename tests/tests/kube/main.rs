//! The agent's Kubernetes source (`shunt-agent --source kube`) against a FAKE API server
//! ([`fake_apiserver`]: a test double on loopback, not a kube-apiserver), driven in-process:
//! no netns, no privileges. What the fake leaves untested is in the README, "Kubernetes mode".

mod ca;
mod fake_apiserver;
mod install;
mod model_equivalence;

use std::sync::Arc;
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Resource};
use k8s_openapi::api::rbac::v1::ClusterRole;
use serde_json::{Value, json};
use shunt_agent::config::{LoadOptions, Snapshot};
use shunt_agent::pod_marks;
use shunt_agent::pods::{NodeView, PodState, PodStatus};
use shunt_agent::source::kube::{self as source, KubeSource};
use shunt_api::k8s::NodeName;
use shunt_mesh::ids::PodUid;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const PODS: Resource = "/v1/pods";
const NAMESPACES: Resource = "/v1/namespaces";
const SERVICES: Resource = "/v1/services";
const ENDPOINT_SLICES: Resource = "discovery.k8s.io/v1/endpointslices";
const CONFIG_MAPS: Resource = "/v1/configmaps";
const SECRETS: Resource = "/v1/secrets";
const VIRTUAL_SERVICES: Resource = "networking.istio.io/v1/virtualservices";
const GATEWAYS: Resource = "networking.istio.io/v1/gateways";
const PEER_AUTHENTICATIONS: Resource = "security.istio.io/v1/peerauthentications";
const RATE_LIMIT_POLICIES: Resource = "shunt.io/v1alpha1/ratelimitpolicies";
const INGRESSES: Resource = "networking.k8s.io/v1/ingresses";
const EVENTS: Resource = "events.k8s.io/v1/events";
/// Every resource the source watches besides pods (and the gateways' Secrets).
const WATCHED: [Resource; 13] = [
    NAMESPACES,
    SERVICES,
    ENDPOINT_SLICES,
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

/// A client of `server`, and the directory of its kubeconfig.
async fn client_of(server: &FakeApiServer) -> (kube::Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary dir: {e}"));
    let client = source::connect(Some(&server.kubeconfig(dir.path())))
        .await
        .unwrap_or_else(|e| panic!("a client for the fake API server: {e}"));
    (client, dir)
}

/// The source on `server`, its initial lists paginated `page_size` objects at a time.
async fn source_on(server: &FakeApiServer, page_size: u32) -> (KubeSource, tempfile::TempDir) {
    let (client, dir) = client_of(server).await;
    (KubeSource::start(client, options(), page_size), dir)
}

async fn listed(source: &mut KubeSource) -> Snapshot {
    tokio::time::timeout(Duration::from_secs(60), source.listed())
        .await
        .unwrap_or_else(|_| panic!("the fake API server's objects were not listed in 60 s"))
}

/// The source listing in the background; its first snapshot when every watch has listed.
fn listing(mut source: KubeSource) -> tokio::task::JoinHandle<(KubeSource, Snapshot)> {
    tokio::spawn(async move {
        let snapshot = listed(&mut source).await;
        (source, snapshot)
    })
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
    let (source, _dir) = source_on(&server, 1).await;
    let first = listing(source);
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
    // No CRD: none of its versions is served.
    server.unserve(PEER_AUTHENTICATIONS);
    server.unserve("security.istio.io/v1beta1/peerauthentications");
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

/// Istio before 1.22 serves no `v1`: each kind is read at the newest version that is served,
/// and its objects apply as they do at `v1`.
#[tokio::test]
async fn an_istio_older_than_v1_is_watched_at_the_newest_version_it_serves() {
    let server = FakeApiServer::start().await;
    seed(&server);
    for resource in [
        VIRTUAL_SERVICES,
        "networking.istio.io/v1beta1/virtualservices",
        PEER_AUTHENTICATIONS,
    ] {
        server.unserve(resource);
    }
    let mut routes = good_routes();
    routes["apiVersion"] = "networking.istio.io/v1alpha3".into();
    server.apply("networking.istio.io/v1alpha3/virtualservices", routes);
    server.apply(
        "security.istio.io/v1beta1/peerauthentications",
        json!({"apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
               "metadata": {"name": "default", "namespace": "shop"},
               "spec": {"mtls": {"mode": "STRICT"}}}),
    );
    let (mut source, _dir) = source_on(&server, 500).await;
    let snapshot = listed(&mut source).await;

    assert_eq!(snapshot.errors, vec![]);
    let versions: Vec<(String, String)> = snapshot
        .config
        .istio
        .iter()
        .map(|o| {
            let text = |v: &Value| v.as_str().unwrap_or("?").to_owned();
            (text(&o.object["kind"]), text(&o.object["apiVersion"]))
        })
        .collect();
    for (kind, version) in [
        ("VirtualService", "networking.istio.io/v1alpha3"),
        ("PeerAuthentication", "security.istio.io/v1beta1"),
        ("Gateway", "networking.istio.io/v1"),
    ] {
        assert!(
            versions.contains(&(kind.to_owned(), version.to_owned())),
            "{kind} read at {version}: {versions:?}"
        );
    }
    let mtls = &snapshot.mesh.peer_authentications;
    assert_eq!(
        mtls.len(),
        1,
        "the v1beta1 PeerAuthentication applies: {mtls:?}"
    );
    assert_eq!(
        istio_names(&snapshot),
        [
            "Gateway istio-system/shop",
            "PeerAuthentication shop/default",
            "VirtualService shop/cart-routes"
        ]
    );
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

#[tokio::test]
async fn this_nodes_pods_are_listed_and_watched_with_a_node_field_selector() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let (mut source, _dir) = source_on(&server, 500).await;
    listed(&mut source).await;
    server
        .wait_for("both pod watches", |served| {
            served
                .iter()
                .filter(|s| s.resource == PODS && s.watch)
                .count()
                >= 2
        })
        .await;
    let pods: Vec<_> = server
        .served()
        .into_iter()
        .filter(|s| s.resource == PODS)
        .collect();
    let node_selector = format!("spec.nodeName={NODE}");
    for verb in ["list", "watch"] {
        let selectors: Vec<Option<&str>> = pods
            .iter()
            .filter(|s| s.verb == verb)
            .map(|s| s.fields.as_deref())
            .collect();
        assert!(
            selectors.contains(&Some(node_selector.as_str())),
            "this node's pods: a {verb} with fieldSelector={node_selector}: {selectors:?}"
        );
        assert!(
            selectors.contains(&None),
            "every pod (trimmed): a {verb} without a field selector: {selectors:?}"
        );
        assert!(
            selectors
                .iter()
                .all(|s| s.is_none() || *s == Some(node_selector.as_str())),
            "no other pod selector: {selectors:?}"
        );
    }
}

#[tokio::test]
async fn a_resource_answering_500_is_retried_with_kube_backoff_and_recovers() {
    let server = FakeApiServer::start().await;
    seed(&server);
    server.fail(SERVICES);
    let (source, _dir) = source_on(&server, 500).await;
    let first = listing(source);
    let failures = |served: &[fake_apiserver::Served]| -> Vec<std::time::Instant> {
        served
            .iter()
            .filter(|s| s.resource == SERVICES && s.status == 500)
            .map(|s| s.at)
            .collect()
    };
    // kube's DefaultBackoff waits 0.8 s, then twice as long each time (plus up to as much
    // again of jitter), up to 30 s: four attempts take at least 0.8 + 1.6 + 3.2 s.
    server
        .wait_for("four failed Service requests", |served| {
            failures(served).len() >= 4
        })
        .await;
    let at = failures(&server.served());
    // Lower bounds only: a slow machine makes the gaps longer, never shorter.
    for (i, pair) in at.windows(2).take(3).enumerate() {
        let gap = pair[1] - pair[0];
        let floor = Duration::from_millis(500) * 2u32.pow(u32::try_from(i).unwrap_or(0));
        assert!(
            gap >= floor,
            "retry {} came {gap:?} after the one before; the backoff waits at least {floor:?}",
            i + 1
        );
    }
    let window = Duration::from_secs(5);
    let early = at.iter().filter(|t| **t - at[0] < window).count();
    assert!(
        early <= 3,
        "{early} Service requests within {window:?} of the first failure: no backoff"
    );
    assert!(!first.is_finished(), "listed while Services answered 500");

    server.heal(SERVICES);
    let (_source, snapshot) = first.await.unwrap();
    assert_eq!(
        snapshot.config.services.len(),
        1,
        "the Services after recovery"
    );
    assert_eq!(pod_names(&snapshot).len(), 3);
    assert_eq!(snapshot.errors, vec![]);
}

/// A pod of this node that shunt captures (its netns left to discovery).
fn captured_pod(name: &str, ip: &str) -> Value {
    pod(
        "shop",
        name,
        NODE,
        ip,
        json!({"app": name, "shunt.io/capture": "enabled"}),
    )
}

/// The reconciler's view of this node as the pod marks read it: `web` in `status`.
fn web_view(status: PodStatus) -> NodeView {
    let state = PodState {
        netns: None,
        status,
    };
    NodeView {
        pods: [(PodUid::from("uid-web"), state)].into_iter().collect(),
        ..NodeView::default()
    }
}

fn web_mark(snapshot: &Snapshot) -> Option<String> {
    pod_named(snapshot, "web")
        .metadata
        .annotations
        .get("shunt.io/captured")
        .cloned()
}

/// `pod_marks::run` on `server`'s client, following `snapshots` and a view the test sets.
struct Marking {
    view: watch::Sender<NodeView>,
    shutdown: CancellationToken,
    uninstalled: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _kubeconfig: tempfile::TempDir,
}

async fn marking(
    server: &FakeApiServer,
    snapshots: &watch::Receiver<Arc<Snapshot>>,
    status: PodStatus,
) -> Marking {
    let (client, kubeconfig) = client_of(server).await;
    let (view, view_rx) = watch::channel(web_view(status));
    let (shutdown, uninstalled) = (CancellationToken::new(), CancellationToken::new());
    let task = tokio::spawn(pod_marks::run(
        client,
        snapshots.clone(),
        view_rx,
        shutdown.clone(),
        uninstalled.clone(),
    ));
    Marking {
        view,
        shutdown,
        uninstalled,
        task,
        _kubeconfig: kubeconfig,
    }
}

#[tokio::test]
async fn a_captured_pod_is_marked_through_pods_status_until_it_is_not() {
    let server = FakeApiServer::start().await;
    seed(&server);
    server.apply(PODS, captured_pod("web", "10.244.0.12"));
    let mut running = running(&server).await;
    let marks = marking(&server, &running.snapshots, PodStatus::Ready).await;
    let snapshots = &mut running.snapshots;

    published(snapshots, "web marked", |s| {
        web_mark(s).as_deref() == Some("true")
    })
    .await;
    let patches: Vec<_> = server
        .served()
        .into_iter()
        .filter(|s| s.verb == "patch")
        .collect();
    assert!(
        patches.iter().all(|p| p.resource == PODS
            && p.subresource.as_deref() == Some("status")
            && p.status == 200),
        "merge patches of pods/status only: {patches:?}"
    );
    assert_eq!(
        server.object(PODS, "shop/cart").unwrap()["metadata"]["annotations"]
            .get("shunt.io/captured"),
        None,
        "a pod shunt does not capture is not marked"
    );

    // Capture failed: the mark goes.
    marks
        .view
        .send_replace(web_view(PodStatus::Failed("netns gone".into())));
    published(snapshots, "web unmarked", |s| web_mark(s).is_none()).await;

    // Captured again, then the agent is uninstalled: the mark goes too.
    marks.view.send_replace(web_view(PodStatus::Ready));
    published(snapshots, "web marked again", |s| {
        web_mark(s).as_deref() == Some("true")
    })
    .await;
    marks.uninstalled.cancel();
    marks.shutdown.cancel();
    marks.task.await.unwrap();
    published(snapshots, "web unmarked by the uninstall", |s| {
        web_mark(s).is_none()
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn another_nodes_pod_marked_by_its_shunt_or_ztunnel_is_an_hbone_peer() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let marked = |name: &str, ip: &str, annotation: (&str, &str)| {
        let mut pod = pod("shop", name, "node-b", ip, json!({"app": name}));
        pod["metadata"]["annotations"][annotation.0] = annotation.1.into();
        pod
    };
    server.apply(
        PODS,
        marked(
            "ztunneled",
            "10.244.1.21",
            ("ambient.istio.io/redirection", "enabled"),
        ),
    );
    server.apply(
        PODS,
        marked("shunted", "10.244.1.22", ("shunt.io/captured", "true")),
    );
    let (mut source, _dir) = source_on(&server, 500).await;
    let snapshot = listed(&mut source).await;
    let captured = |name: &str| {
        snapshot
            .mesh
            .workloads
            .iter()
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no workload {name}"))
            .captured
    };
    assert!(
        captured("ztunneled"),
        "ambient's redirection: an HBONE peer"
    );
    assert!(captured("shunted"), "shunt's mark: an HBONE peer");
    assert!(!captured("db"), "no mark, no opt-in: plaintext");
    let kept: Vec<&String> = pod_named(&snapshot, "ztunneled")
        .metadata
        .annotations
        .keys()
        .collect();
    assert_eq!(
        kept,
        ["ambient.istio.io/redirection"],
        "the trimmed pod keeps only the marks"
    );
}

#[tokio::test]
async fn an_invalid_object_gets_one_warning_event_per_version_and_message() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let mut broken = virtual_service(
        "broken",
        json!({"hosts": ["cart"], "http": [{"route": [{"destination": {"host": 7}}]}]}),
    );
    broken["metadata"]["uid"] = "uid-broken".into();
    let version = server.apply(VIRTUAL_SERVICES, broken.clone());
    let mut running = running(&server).await;
    let creates = |served: &[fake_apiserver::Served]| {
        served
            .iter()
            .filter(|s| s.resource == EVENTS && s.verb == "create")
            .count()
    };
    server
        .wait_for("an Event created", |served| creates(served) >= 1)
        .await;
    let events: Vec<Value> = server.objects(EVENTS).into_values().collect();
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    let want_regarding = json!({"apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService", "namespace": "shop", "name": "broken", "uid": "uid-broken",
        "resourceVersion": version.to_string()});
    assert_eq!(event["regarding"], want_regarding);
    assert_eq!(event["metadata"]["namespace"], "shop");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidConfig");
    assert_eq!(event["reportingController"], "shunt.io/agent");
    assert_eq!(event["reportingInstance"], NODE);
    let error = running.snapshots.borrow().errors[0].clone();
    assert_eq!(
        event["note"].as_str(),
        Some(format!("{}: {}", error.field.unwrap(), error.message).as_str()),
        "the loader's message, with the field"
    );

    // A snapshot rebuilt for another object's change reports nothing again...
    server.apply(
        SERVICES,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "other", "namespace": "shop"},
               "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}}),
    );
    published(&mut running.snapshots, "the new Service", |s| {
        s.config.services.len() == 2
    })
    .await;
    // ...while a new version of the object, still invalid, is reported. The Events are
    // written in order, so a repeat from the rebuild would be written before this one.
    broken["metadata"]["labels"] = json!({"edited": "yes"});
    let next = server.apply(VIRTUAL_SERVICES, broken);
    let written = |served: &[fake_apiserver::Served]| {
        served
            .iter()
            .filter(|s| s.resource == EVENTS && s.verb == "create" && s.status == 201)
            .count()
    };
    server
        .wait_for("a second Event written", |served| written(served) >= 2)
        .await;
    let events: Vec<Value> = server.objects(EVENTS).into_values().collect();
    let versions: Vec<&Value> = events
        .iter()
        .map(|e| &e["regarding"]["resourceVersion"])
        .collect();
    assert!(
        versions.contains(&&Value::from(next.to_string())),
        "{events:#?}"
    );
    assert_eq!(
        creates(&server.served()),
        2,
        "one Event per version, none for the rebuild: {:#?}",
        server.served()
    );
    running.stop().await;
}

/// The rules of the committed rendered ClusterRole, as (verb, group, resource) triples, with
/// the names a rule limits its resources to.
fn cluster_role_triples() -> (
    std::collections::BTreeSet<fake_apiserver::RbacTriple>,
    Vec<(fake_apiserver::RbacTriple, Vec<String>)>,
) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/base/clusterrole-shunt-agent.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let role: ClusterRole = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a ClusterRole: {e}", path.display()));
    let mut triples = std::collections::BTreeSet::new();
    let mut named = Vec::new();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    let triple = (verb.clone(), group.clone(), resource.clone());
                    if let Some(names) = &rule.resource_names {
                        named.push((triple.clone(), names.clone()));
                    }
                    triples.insert(triple);
                }
            }
        }
    }
    (triples, named)
}

#[tokio::test]
async fn the_rendered_cluster_role_allows_exactly_what_the_agent_calls() {
    let server = FakeApiServer::start().await;
    seed(&server);
    server.apply(PODS, captured_pod("web", "10.244.0.12"));
    server.apply(
        VIRTUAL_SERVICES,
        virtual_service(
            "broken",
            json!({"hosts": ["cart"], "http": [{"route": [{"destination": {"host": 7}}]}]}),
        ),
    );
    // Every watch (a gateway's Secret too), a pod mark, an Event.
    let mut running = running(&server).await;
    let marks = marking(&server, &running.snapshots, PodStatus::Ready).await;
    server
        .wait_for("every watch, a mark and an Event", |served| {
            let did = |resource: &str, verb: &str| {
                served
                    .iter()
                    .any(|s| s.resource == resource && s.verb == verb)
            };
            WATCHED
                .iter()
                .chain([&PODS, &SECRETS])
                .all(|r| did(r, "watch"))
                && did(PODS, "patch")
                && did(EVENTS, "create")
        })
        .await;
    published(&mut running.snapshots, "web marked", |s| {
        web_mark(s).as_deref() == Some("true")
    })
    .await;
    marks.shutdown.cancel();
    marks.task.await.unwrap();
    running.stop().await;
    // What the agent asks at SIGTERM: is its own DaemonSet still there?
    let dir = tempfile::tempdir().unwrap();
    let client = shunt_agent::source::kube::connect(Some(&server.kubeconfig(dir.path())))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    shunt_agent::own_daemon_set::check(&client, "shunt-system").await;

    let served = server.served();
    let got = server.rbac();
    let (allowed, named) = cluster_role_triples();
    let missing: Vec<_> = got.difference(&allowed).collect();
    let unused: Vec<_> = allowed.difference(&got).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "the ClusterRole (deploy/base) and the agent's calls differ:\n  called, not allowed: \
         {missing:?}\n  allowed, never called: {unused:?}"
    );
    // A rule limited to names: every such call names one (a watch of one object, or a
    // request about one object).
    for (triple, names) in named {
        for call in served.iter().filter(|s| s.rbac() == triple) {
            let name = call.name.as_deref().or_else(|| {
                call.fields
                    .as_deref()
                    .and_then(|f| f.strip_prefix("metadata.name="))
            });
            assert!(
                name.is_some_and(|n| names.iter().any(|want| want == n)),
                "{triple:?} is allowed for {names:?} only, but was called with {call:?}"
            );
        }
    }
}
