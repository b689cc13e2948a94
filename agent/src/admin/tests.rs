use std::path::Path;

use super::*;
use crate::capture::ebpf::CaptureOptions;
use shunt_api::admin_client::{self as client, AdminClient};

const CONFIG: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: http}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec: {hosts: [web]}
";

fn workload() -> api::Workload {
    api::Workload {
        namespace: "shop".into(),
        name: "web".into(),
        uid: "shop/web".into(),
        ip: Some("10.0.0.5".parse().unwrap()),
        node: Some("local".into()),
        captured: false,
        reason: "not opted in".into(),
        netns: None,
        netns_cookie: None,
        proxy: "n/a".into(),
    }
}

/// An admin server over a capture that is already uninstalled (nothing eBPF is needed).
struct Admin {
    _dir: tempfile::TempDir,
    client: AdminClient,
    shutdown: CancellationToken,
}

async fn start() -> Admin {
    start_with(CONFIG).await
}

async fn start_with(config_text: &str) -> Admin {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir(&config_dir).unwrap();
    std::fs::write(config_dir.join("node.yaml"), config_text).unwrap();
    let snapshot = crate::source::local_dir::load(&config_dir, &Default::default()).unwrap();
    let (_, config) = watch::channel(Arc::new(snapshot));
    let (_, node) = watch::channel(NodeView {
        proxy: api::ProxyStatus {
            connected: true,
            pid: Some(9),
            refused: None,
        },
        workloads: vec![workload()],
        pods: Default::default(),
    });
    let context = Arc::new(AdminContext {
        capture: Capture::uninstalled(),
        installed: Installed {
            ebpf: CaptureOptions {
                instance: "test".into(),
                bpffs: None,
                cgroup: None,
                sockmap_shortcut: true,
            },
            iptables_records: dir.path().join("iptables"),
        },
        config,
        node,
        uninstalled: CancellationToken::new(),
        ca: None,
    });
    let socket = dir.path().join("admin.sock");
    let server = AdminServer::bind(&socket).unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(server.run(context, shutdown.clone()));
    Admin {
        client: AdminClient::new(&socket, None),
        _dir: dir,
        shutdown,
    }
}

#[tokio::test]
async fn workloads_and_config_are_served_as_json() {
    let admin = start().await;
    let workloads: Vec<api::Workload> = admin.client.get("/workloads").await.unwrap();
    assert_eq!(workloads, vec![workload()]);

    let dump: api::ConfigDump = admin.client.get("/config").await.unwrap();
    assert_eq!(dump.config.pods.len(), 1);
    assert_eq!(
        dump.config.services.len(),
        0,
        "the bad Service is not loaded"
    );
    assert_eq!(dump.config.istio[0].object["kind"], "VirtualService");
    let errors: Vec<_> = dump.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        errors,
        vec![format!(
            "{}: Service shop/web: spec.ports[0].port: invalid type: string \"http\", expected i32",
            dump.dir.join("node.yaml").display()
        )]
    );
    admin.shutdown.cancel();
}

#[tokio::test]
async fn errors_are_json_with_a_status_that_fits() {
    let admin = start().await;
    let cases = [
        (
            Method::GET,
            "/status",
            503,
            "capture was uninstalled; the agent is stopping",
        ),
        (
            Method::GET,
            "/maps/MESHED_NETNS",
            503,
            "capture was uninstalled; the agent is stopping",
        ),
        (
            Method::POST,
            "/uninstall",
            503,
            "capture was uninstalled; the agent is stopping",
        ),
        (
            Method::POST,
            "/workloads",
            405,
            "/workloads takes GET, not POST",
        ),
        (
            Method::GET,
            "/uninstall",
            405,
            "/uninstall takes POST, not GET",
        ),
        (
            Method::GET,
            "/nope",
            404,
            "no such endpoint GET /nope; there are GET /status, GET /workloads, GET /config, \
             GET /maps/<NAME>, GET /routes/<NAMESPACE>/<POD>, GET /policies/<NAMESPACE>/<POD>, POST /explain and POST /uninstall",
        ),
        (
            Method::GET,
            "/routes/shop/nobody",
            404,
            "no pod shop/nobody in the config",
        ),
        (
            Method::GET,
            "/routes/web",
            400,
            "\"web\": name the pod as NAMESPACE/NAME",
        ),
        (Method::GET, "/explain", 405, "/explain takes POST, not GET"),
    ];
    for (method, path, status, message) in cases {
        let result = if method == Method::GET {
            admin.client.get::<serde_json::Value>(path).await
        } else {
            admin.client.post::<serde_json::Value>(path).await
        };
        match result {
            Err(client::Error::Refused {
                status: got,
                message: got_message,
            }) => {
                assert_eq!(
                    (got.as_u16(), got_message.as_str()),
                    (status, message),
                    "{method} {path}"
                );
            }
            other => panic!("{method} {path}: {other:?}"),
        }
    }
    admin.shutdown.cancel();
}

#[tokio::test]
async fn a_missing_agent_is_named_with_its_instance() {
    let socket = Path::new("/nonexistent/shunt/admin.sock");
    let err = AdminClient::new(socket, Some("blue"))
        .get::<serde_json::Value>("/status")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no agent at /nonexistent/shunt/admin.sock: is shunt-agent running with --instance blue?"
    );
}

const ROUTES: &str = "
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-v1, namespace: shop, labels: {app: cart, version: v1}}
status: {podIP: 10.0.0.6}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-v2, namespace: shop, labels: {app: cart, version: v2}}
status: {podIP: 10.0.0.7}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: cart}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: cart, namespace: shop}
spec:
  hosts: [cart]
  http:
    - name: jason
      match: [{headers: {end-user: {exact: jason}}}]
      route: [{destination: {host: cart, subset: v2}}]
      fault: {abort: {httpStatus: 503, percentage: {value: 10}}}
    - route:
        - {destination: {host: cart, subset: v1}, weight: 80}
        - {destination: {host: cart, subset: v2}, weight: 20}
      timeout: 2s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: cart, namespace: shop}
spec:
  host: cart
  trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: user, ttl: 10s}}}}
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";

#[tokio::test]
async fn routes_and_explain_answer_from_the_current_config() {
    let admin = start_with(ROUTES).await;
    let routes: api::PodRoutes = admin.client.get("/routes/shop/web").await.unwrap();
    assert_eq!(routes.pod, "shop/web");
    let cart = &routes.hosts[0];
    assert_eq!(
        (cart.host.as_str(), cart.port, cart.protocol.as_str()),
        ("cart.shop.svc.cluster.local", 80, "HTTP")
    );
    assert_eq!(
        cart.routes
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        vec!["jason", "cart.1"]
    );
    assert_eq!(
        cart.routes[0].matches,
        vec![vec!["header end-user exact \"jason\"".to_owned()]]
    );
    assert!(
        cart.routes[0]
            .policies
            .contains(&"fault abort HTTP 503 for 10% of requests (FI)".to_owned()),
        "{:?}",
        cart.routes[0].policies
    );
    assert_eq!(
        cart.routes[1]
            .destinations
            .iter()
            .map(|d| d.weight)
            .collect::<Vec<_>>(),
        vec![80, 20]
    );
    assert_eq!(
        cart.destination_rule.as_deref(),
        Some("DestinationRule shop/cart")
    );

    let query = api::ExplainQuery {
        from: "shop/web".into(),
        request: api::ExplainRequest {
            url: "http://cart/items".into(),
            method: None,
            headers: vec!["Cookie: user=abc".into()],
            principal: None,
            jwt_claims: None,
        },
    };
    let answer: api::Explanation = admin.client.post_json("/explain", &query).await.unwrap();
    assert_eq!(answer.outcome, "route cart.1");
    assert_eq!(
        answer.destination,
        "10.96.0.20:80 (ClusterIP of cart.shop.svc.cluster.local)"
    );
    assert!(answer.weighted_pick);
    assert_eq!(
        answer.matched.as_deref(),
        Some(
            "VirtualService shop/cart spec.http[1]: it has no match block, so it matches every request; earlier routes did not match"
        )
    );
    let v1 = &answer.destinations[0];
    assert_eq!(
        v1.cluster.as_ref().map(|c| c.endpoints.clone()),
        Some(vec!["10.0.0.6:8080 (shop/cart-v1)".to_owned()])
    );
    assert_eq!(v1.hash_key.as_deref(), Some("cookie user=\"abc\""));

    let bad = api::ExplainQuery {
        from: "shop/web".into(),
        request: api::ExplainRequest {
            url: "http://cart/".into(),
            method: None,
            headers: vec!["no colon".into()],
            principal: None,
            jwt_claims: None,
        },
    };
    match admin
        .client
        .post_json::<_, api::Explanation>("/explain", &bad)
        .await
    {
        Err(client::Error::Refused { status, message }) => assert_eq!(
            (status.as_u16(), message.as_str()),
            (
                400,
                "-H \"no colon\": expected 'name: value' with a valid header name and value"
            )
        ),
        other => panic!("{other:?}"),
    }
    admin.shutdown.cancel();
}

const POLICIES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio-injection: enabled}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: shop
  labels: {app: web}
  annotations: {shunt.io/netns: /run/netns/web}
spec: {serviceAccountName: web}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: cart}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, labels: {app: cart}}
spec: {containers: [{name: app, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.6}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  jwtRules: [{issuer: https://issuer.example, jwksUri: http://jwks.shop.svc.cluster.local/keys.json}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: readers, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
";

#[tokio::test]
async fn policies_lists_each_kind_in_evaluation_order() {
    let admin = start_with(POLICIES).await;
    let policies: api::PodPolicies = admin.client.get("/policies/shop/cart").await.unwrap();
    assert_eq!(policies.pod, "shop/cart");
    let ports: Vec<(Option<u16>, bool)> = policies
        .peer_authentication
        .iter()
        .map(|p| (p.port, p.decision.starts_with("STRICT by shop/default")))
        .collect();
    assert_eq!(ports, [(Some(8080), true), (None, true)], "{policies:?}");
    assert_eq!(policies.request_authentication, ["shop/jwt"]);
    let order: Vec<bool> = ["DENY shop/deny-admin", "ALLOW shop/readers"]
        .iter()
        .zip(&policies.authorization)
        .map(|(wanted, seen)| seen.starts_with(wanted))
        .collect();
    assert_eq!(order, [true, true], "{policies:?}");
    assert_eq!(policies.authorization.len(), 2, "{policies:?}");
}

#[tokio::test]
async fn explain_adds_each_endpoints_authorization_decision() {
    let admin = start_with(POLICIES).await;
    // (path, principal, allowed, decision starts with)
    let cases = [
        ("/items", None, true, "allowed by shop/readers"),
        ("/admin", None, false, "denied by shop/deny-admin"),
        ("/a/../admin", None, false, "denied by shop/deny-admin"),
    ];
    for (path, principal, allowed, decision) in cases {
        let query = api::ExplainQuery {
            from: "shop/web".into(),
            request: api::ExplainRequest {
                url: format!("http://cart.shop{path}"),
                method: None,
                headers: Vec::new(),
                principal,
                jwt_claims: Some(serde_json::json!({"iss": "https://issuer.example", "sub": "u1"})),
            },
        };
        let answer: api::Explanation = admin.client.post_json("/explain", &query).await.unwrap();
        let authz = &answer.authorization;
        assert_eq!(authz.len(), 1, "{path}: {answer:?}");
        assert_eq!(authz[0].endpoint, "10.0.0.6:8080");
        assert_eq!(authz[0].allowed, allowed, "{path}: {authz:?}");
        assert!(authz[0].decision.starts_with(decision), "{path}: {authz:?}");
        assert_eq!(
            authz[0].principal.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/web"),
            "the sending pod's own identity"
        );
        assert_eq!(
            authz[0].request_principal.as_deref(),
            Some("https://issuer.example/u1")
        );
    }
}
