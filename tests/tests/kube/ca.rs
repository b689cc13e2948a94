//! The CA-only process (`shunt-agent --ca-only`) against the FAKE API server: nodes are
//! authenticated by TokenReviews of their proxies' projected tokens, a node has only its own
//! pods' identities, and the trust bundle is published in a ConfigMap. The client is the
//! proxy's (shunt-identity's `CaClient`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use serde::Deserialize as _;
use serde_json::{Value, json};
use shunt_agent::ca::token_review::{ReviewOptions, ServiceAccountRef};
use shunt_agent::ca::{self, CaOptions, Cluster, ROOT_FILE};
use shunt_agent::config::LoadOptions;
use shunt_agent::source::kube as source;
use shunt_api::admin::CaStatus;
use shunt_identity::SpiffeId;
use shunt_identity::grpc::{CaClient, CaClientConfig, ClientError};
use shunt_identity::trust::TrustBundle;
use shunt_tests::binaries::Binaries;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Code;

use super::fake_apiserver::{FakeApiServer, TOKEN_REVIEWS};
use super::{CONFIG_MAPS, PODS, pod};

const SYSTEM: &str = "shunt-system";
const ROOT_CONFIG_MAP: &str = "istio-ca-root-cert";
const AUDIENCE: &str = "istio-ca";
const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";

/// `status.user` of a token of `account` bound to pod `namespace/name` (its uid as
/// [`pod`] makes it).
fn bound(account: &str, name: &str) -> Value {
    json!({"username": format!("system:serviceaccount:{account}"),
           "uid": "sa-uid",
           "extra": {"authentication.kubernetes.io/pod-name": [name],
                     "authentication.kubernetes.io/pod-uid": [format!("uid-{name}")]}})
}

/// Apps on two nodes, a proxy on each, and the tokens their pods were given.
fn seed(server: &FakeApiServer) {
    server.apply(
        PODS,
        pod("shop", "cart", "node-a", "10.244.0.10", json!({})),
    );
    server.apply(PODS, pod("shop", "db", "node-b", "10.244.1.20", json!({})));
    for (name, node) in [("proxy-a", "node-a"), ("proxy-b", "node-b")] {
        let mut proxy = pod(SYSTEM, name, node, "192.0.2.1", json!({}));
        proxy["spec"]["serviceAccountName"] = "shunt-proxy".into();
        server.apply(PODS, proxy);
    }
    let proxy = format!("{SYSTEM}:shunt-proxy");
    server.token("token-a", AUDIENCE, bound(&proxy, "proxy-a"));
    server.token("token-a-again", AUDIENCE, bound(&proxy, "proxy-a"));
    server.token("token-b", AUDIENCE, bound(&proxy, "proxy-b"));
    // An app's own token: valid, but not a node proxy's.
    server.token("token-cart", AUDIENCE, bound("shop:cart", "cart"));
    // A proxy's token for the API server, not for the CA.
    server.token(
        "token-api",
        "https://kubernetes.default.svc",
        bound(&proxy, "proxy-a"),
    );
    // A proxy's token whose pod was replaced (another uid).
    let mut replaced = bound(&proxy, "proxy-b");
    replaced["extra"]["authentication.kubernetes.io/pod-uid"] = json!(["old-uid"]);
    server.token("token-replaced", AUDIENCE, replaced);
}

async fn serving(status: &mut watch::Receiver<CaStatus>) -> SocketAddr {
    let waited = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Some(addr) = status.borrow_and_update().serving {
                return addr;
            }
            assert!(status.changed().await.is_ok(), "the CA stopped");
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("the CA did not serve in 60 s: {:?}", status.borrow()))
}

/// What asking for `identity` with `token` gets, and the CA's reason.
async fn ask(
    addr: SocketAddr,
    roots: &TrustBundle,
    dir: &Path,
    token: &str,
    identity: &str,
) -> (Code, String) {
    let token_path = dir.join(format!("{token}.token"));
    std::fs::write(&token_path, token).unwrap_or_else(|e| panic!("{e}"));
    let client = CaClient::new(CaClientConfig {
        token_path: Some(token_path),
        ..CaClientConfig::new(format!("https://{addr}"), roots.clone())
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let id: SpiffeId = identity.parse().unwrap_or_else(|e| panic!("{e}"));
    match client.fetch(&id).await {
        Ok(cert) => {
            assert_eq!(cert.identity(), &id);
            (Code::Ok, String::new())
        }
        Err(ClientError::Rpc { code, message, .. }) => (code, message),
        Err(e) => panic!("{token} {identity}: {e}"),
    }
}

#[tokio::test]
async fn the_cluster_ca_reviews_tokens_and_issues_only_a_nodes_own_pods() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let client = source::connect(Some(&server.kubeconfig(dir.path())))
        .await
        .unwrap_or_else(|e| panic!("a client for the fake API server: {e}"));
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}"));
    let options = CaOptions::new(listen, dir.path().join("ca"));
    let cluster = Cluster {
        client,
        review: ReviewOptions {
            audience: AUDIENCE.to_owned(),
            trusted: vec![ServiceAccountRef {
                namespace: SYSTEM.to_owned(),
                name: "shunt-proxy".to_owned(),
            }],
        },
        root_config_map: Some((SYSTEM.to_owned(), ROOT_CONFIG_MAP.to_owned())),
    };
    let shutdown = CancellationToken::new();
    let (mut status, task) =
        ca::spawn_in_cluster(options, cluster, LoadOptions::default(), shutdown.clone());
    let addr = serving(&mut status).await;

    let published = server
        .object(CONFIG_MAPS, &format!("{SYSTEM}/{ROOT_CONFIG_MAP}"))
        .unwrap_or_else(|| panic!("no ConfigMap {SYSTEM}/{ROOT_CONFIG_MAP}"));
    let pem = published["data"][ROOT_FILE]
        .as_str()
        .unwrap_or_else(|| panic!("no {ROOT_FILE} in {published}"));
    let roots = TrustBundle::from_pem(pem).unwrap_or_else(|e| panic!("{e}"));

    // (case, token, identity, code, what the reason says)
    for (case, token, identity, code, reason) in [
        ("a pod on the proxy's node", "token-a", CART, Code::Ok, ""),
        ("the other node's own pod", "token-b", DB, Code::Ok, ""),
        (
            "a pod on another node",
            "token-a",
            DB,
            Code::PermissionDenied,
            "scheduled on node-b, not on node-a",
        ),
        (
            "an unknown token",
            "nobody",
            CART,
            Code::Unauthenticated,
            "does not authenticate the token for audience istio-ca (invalid bearer token)",
        ),
        (
            "another service account's token",
            "token-cart",
            CART,
            Code::Unauthenticated,
            "\"system:serviceaccount:shop:cart\"'s, not a node proxy's",
        ),
        (
            "a token for another audience",
            "token-api",
            CART,
            Code::Unauthenticated,
            "token audiences are invalid",
        ),
        (
            "a token of a replaced pod",
            "token-replaced",
            DB,
            Code::Unauthenticated,
            "it was replaced",
        ),
    ] {
        let (got, message) = ask(addr, &roots, dir.path(), token, identity).await;
        assert_eq!(got, code, "{case}: {message}");
        assert!(message.contains(reason), "{case}: {message}");
    }
    let reviews = server
        .served()
        .iter()
        .filter(|s| s.resource == TOKEN_REVIEWS)
        .count();
    assert_eq!(
        reviews, 6,
        "one review per new token; token-a's second use was cached"
    );

    // The API server fails: a token not reviewed before is refused, never taken as valid.
    server.fail_token_reviews(true);
    let (got, message) = ask(addr, &roots, dir.path(), "token-a-again", CART).await;
    assert_eq!(got, Code::Unavailable, "fails closed: {message}");
    assert!(message.contains("may create tokenreviews"), "{message}");
    server.fail_token_reviews(false);
    let (got, message) = ask(addr, &roots, dir.path(), "token-a-again", CART).await;
    assert_eq!(
        got,
        Code::Ok,
        "reviewed again once the API server answers: {message}"
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap_or_else(|_| panic!("the CA did not stop"))
        .unwrap_or_else(|e| panic!("the CA's task: {e}"));
}

/// The CA Deployment's container args, as `shuntctl install --render --set ca.mode=shunt`
/// renders them.
fn rendered_ca_args() -> Vec<String> {
    let shuntctl = Binaries::from_env()
        .shuntctl()
        .unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(shuntctl)
        .args(["install", "--render", "--set", "ca.mode=shunt"])
        .output()
        .unwrap_or_else(|e| panic!("running shuntctl: {e}"));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(document).unwrap_or_else(|e| panic!("{e}"));
        if value["kind"] != "Deployment" {
            continue;
        }
        let deployment: Deployment =
            serde_json::from_value(value).unwrap_or_else(|e| panic!("{e}"));
        let spec = deployment.spec.template.spec;
        let container = spec.and_then(|s| s.containers.into_iter().next());
        return container
            .and_then(|c| c.args)
            .unwrap_or_else(|| panic!("the CA Deployment's container has no args"));
    }
    panic!("no Deployment rendered with ca.mode=shunt");
}

/// The `shunt-agent --ca-only` binary, started with exactly the rendered Deployment's args
/// (only the listen address and the state volume's path are this test's), serves a node's
/// own pods, refuses an app's token, and stops cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rendered_ca_deployment_runs_the_ca_only_binary() {
    let server = FakeApiServer::start().await;
    seed(&server);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = server.kubeconfig(dir.path());
    // A free loopback port: the rendered 0.0.0.0:15012 is the pod's.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    let state = dir.path().join("state");
    let args: Vec<String> = rendered_ca_args()
        .into_iter()
        .map(|arg| match arg.split_once('=') {
            Some(("--ca-listen", _)) => format!("--ca-listen={addr}"),
            Some(("--ca-state-dir", _)) => format!("--ca-state-dir={}", state.display()),
            _ => arg,
        })
        .collect();
    assert!(args.iter().any(|a| a == "--ca-only"), "{args:?}");
    let agent = Binaries::from_env()
        .agent()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(agent)
        .args(&args)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running shunt-agent {args:?}: {e}"));

    let mut published = None;
    for _ in 0..600 {
        published = server.object(CONFIG_MAPS, &format!("{SYSTEM}/{ROOT_CONFIG_MAP}"));
        if published.is_some() || child.try_wait().ok().flatten().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(published) = published else {
        let _ = child.kill();
        let output = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
        panic!(
            "no root ConfigMap published within 60 s: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let pem = published["data"][ROOT_FILE].as_str().unwrap_or_default();
    let roots = TrustBundle::from_pem(pem).unwrap_or_else(|e| panic!("{e}"));
    let mut answers = Vec::new();
    for (token, identity) in [("token-a", CART), ("token-cart", CART)] {
        // The listener may come up just after the ConfigMap is written.
        let mut answer = (Code::Unavailable, String::new());
        for _ in 0..100 {
            answer = ask(addr, &roots, dir.path(), token, identity).await;
            if answer.0 != Code::Unavailable {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answers.push((token, answer.0));
    }

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX)),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut status = None;
    for _ in 0..300 {
        status = child.try_wait().ok().flatten();
        if status.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if status.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        answers,
        [("token-a", Code::Ok), ("token-cart", Code::Unauthenticated)],
        "{stderr}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "shunt-agent --ca-only did not stop cleanly within 30 s of SIGTERM ({status:?}): {stderr}"
    );
}
