//! PeerAuthentication on one node, end to end: which plaintext connections reach a pod, and
//! what happens to them when the proxy is gone (fail closed under STRICT). Runs as root (and
//! skips, saying so, otherwise). mTLS between nodes is in `multinode.rs`.

#[expect(
    dead_code,
    reason = "the shared module's helpers are for several test binaries"
)]
mod common;

use std::time::{Duration, Instant};

use common::{OrPanic, client, pod_ip, send_ok};
use serde_json::{Value, json};
use shunt_tests::admin;
use shunt_tests::{AgentOptions, ClusterConfig, NamespaceConfig, Node, Pod};

const MESH: &str = "mesh";
const LEGACY: &str = "legacy";
const APP_PORT: u16 = 8080;
const ADMIN_PORT: u16 = 9090;
/// How long a config change may take to reach the agent, the proxy and the maps.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

fn new_node(test: &str) -> Option<Node> {
    if shunt_tests::skip_unless_root(test) {
        return None;
    }
    let binaries = common::binaries();
    binaries.require_all().or_panic("binaries under test");
    Some(Node::with_binaries(test, binaries).or_panic("creating the node"))
}

fn peer_authentication(namespace: &str, name: &str, created: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created},
        "spec": spec,
    })
}

/// Whether a 4 KiB echo from `pod` to `to` comes back: the connection reached the app.
fn reaches(node: &Node, pod: &Pod, to: std::net::SocketAddr) -> bool {
    let to = to.to_string();
    let report = client(
        node,
        pod,
        &["send", "--to", &to, "--bytes", "4096", "--seed", "7"],
    );
    report["ok"] == true
}

/// Polls until every `(port, reachable)` holds for `pod` → `server`, or panics with what was
/// seen: a changed config takes a moment to reach the agent and the proxy.
fn wait_reachability(node: &Node, case: &str, pod: &Pod, server: &Pod, expected: &[(u16, bool)]) {
    let deadline = Instant::now() + APPLY_TIMEOUT;
    loop {
        let seen: Vec<(u16, bool)> = expected
            .iter()
            .map(|(port, _)| (*port, reaches(node, pod, server.addr(*port))))
            .collect();
        if seen == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{case}: {} → {} expected {expected:?}, saw {seen:?}",
            pod.name,
            server.name
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `server` (captured, in `mesh`, echo on 8080 and 9090), `client` (captured, same node) and
/// `outsider` (not captured, in `legacy`), agent and proxy running.
fn node_with_server(test: &str) -> Option<(Node, Pod, Pod, Pod, Vec<shunt_tests::Process>)> {
    let mut node = new_node(test)?;
    let server = node.add_pod("server", pod_ip(20)).or_panic("server pod");
    let inside = node.add_pod("client", pod_ip(10)).or_panic("client pod");
    let outsider = node
        .add_pod("outsider", pod_ip(30))
        .or_panic("outsider pod");
    let config = ClusterConfig::new()
        .namespace(&NamespaceConfig::injected(MESH))
        .namespace(&NamespaceConfig::new(LEGACY))
        .pod(
            &node
                .pod_config(&server, MESH)
                .label("app", "server")
                .port("tcp-app", APP_PORT)
                .port("tcp-admin", ADMIN_PORT),
        )
        .pod(&node.pod_config(&inside, MESH))
        .pod(&node.pod_config(&outsider, LEGACY));
    node.write_config(&config).or_panic("writing the config");
    node.write_istio(&[]).or_panic("writing no policy");
    node.start_agent(&AgentOptions::default())
        .or_panic("starting the agent");
    node.start_proxy().or_panic("starting the proxy");
    node.wait_captured(&[&server, &inside])
        .or_panic("waiting for capture");
    let servers = [APP_PORT, ADMIN_PORT]
        .iter()
        .map(|port| {
            node.start_server(&server, &["echo-server", "--port", &port.to_string()])
                .or_panic("echo server")
        })
        .collect();
    Some((node, server, inside, outsider, servers))
}

#[test]
fn peer_authentication_decides_which_plaintext_reaches_a_pod() {
    const TEST: &str = "security::peer_authentication_decides_which_plaintext_reaches_a_pod";
    let Some((node, server, inside, outsider, _servers)) = node_with_server(TEST) else {
        return;
    };
    let older = "2020-01-01T00:00:00Z";
    let newer = "2024-01-01T00:00:00Z";
    let mode = |mode: &str| json!({"mtls": {"mode": mode}});
    // (case, policies, plaintext from the outsider reaches (8080, 9090))
    let cases: Vec<(&str, Vec<Value>, [bool; 2])> = vec![
        ("no policy: PERMISSIVE", vec![], [true, true]),
        (
            "namespace PERMISSIVE",
            vec![peer_authentication(
                MESH,
                "default",
                older,
                mode("PERMISSIVE"),
            )],
            [true, true],
        ),
        (
            "namespace STRICT",
            vec![peer_authentication(MESH, "default", older, mode("STRICT"))],
            [false, false],
        ),
        (
            "workload STRICT with portLevelMtls 9090 DISABLE",
            vec![peer_authentication(
                MESH,
                "server",
                older,
                json!({
                    "selector": {"matchLabels": {"app": "server"}},
                    "mtls": {"mode": "STRICT"},
                    "portLevelMtls": {"9090": {"mode": "DISABLE"}},
                }),
            )],
            [false, true],
        ),
        (
            "two namespace policies: the older (STRICT) wins",
            vec![
                peer_authentication(MESH, "newer", newer, mode("PERMISSIVE")),
                peer_authentication(MESH, "older", older, mode("STRICT")),
            ],
            [false, false],
        ),
        (
            "two namespace policies: the older (PERMISSIVE) wins",
            vec![
                peer_authentication(MESH, "newer", newer, mode("STRICT")),
                peer_authentication(MESH, "older", older, mode("PERMISSIVE")),
            ],
            [true, true],
        ),
    ];
    for (case, policies, [app, admin]) in cases {
        node.write_istio(&policies).or_panic("writing the policies");
        wait_reachability(
            &node,
            case,
            &outsider,
            &server,
            &[(APP_PORT, app), (ADMIN_PORT, admin)],
        );
        // A meshed pod of this node is authenticated (same-node delivery): never refused.
        send_ok(&node, &inside, server.addr(APP_PORT), 4096, 1);
    }
    let metrics = node.metrics().or_panic("metrics");
    assert!(
        metrics.sum("shunt_peer_authentication_refused_total", &[]) >= 1.0,
        "{}",
        metrics.describe("shunt_peer_authentication_refused_total")
    );
    let problems = node.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

fn fail_closed_pods(node: &Node) -> Vec<String> {
    let map = node
        .admin()
        .map("INBOUND_FAIL_CLOSED")
        .or_panic("INBOUND_FAIL_CLOSED");
    admin::entries(&map)
        .into_iter()
        .filter_map(|(key, _)| Some(key.get("pod_ip")?.as_str()?.to_owned()))
        .collect()
}

#[test]
fn without_its_proxy_a_strict_pod_fails_closed_and_a_permissive_one_open() {
    const TEST: &str =
        "security::without_its_proxy_a_strict_pod_fails_closed_and_a_permissive_one_open";
    let Some((mut node, server, _inside, outsider, _servers)) = node_with_server(TEST) else {
        return;
    };
    let strict = peer_authentication(
        MESH,
        "default",
        "2020-01-01T00:00:00Z",
        json!({"mtls": {"mode": "STRICT"}}),
    );
    node.write_istio(&[strict]).or_panic("writing STRICT");
    let server_ip = server.ip.to_string();
    shunt_tests::wait::until("the pod marked fail-closed", APPLY_TIMEOUT, || {
        let pods = fail_closed_pods(&node);
        if pods.contains(&server_ip) {
            shunt_tests::wait::Check::Done(())
        } else {
            shunt_tests::wait::Check::NotYet(format!("INBOUND_FAIL_CLOSED has {pods:?}"))
        }
    })
    .or_panic("fail-closed entry");
    wait_reachability(
        &node,
        "STRICT, proxy up",
        &outsider,
        &server,
        &[(APP_PORT, false)],
    );

    if let Some(proxy) = node.proxy_process() {
        proxy.kill();
    }
    // The agent, too, lets go of the listener (it keeps one only for a proxy's successor).
    let admin = node.admin();
    shunt_tests::wait::until(
        "the agent to see the proxy gone",
        APPLY_TIMEOUT,
        || match admin.status() {
            Ok(status) if status["proxy"]["connected"] == false => {
                shunt_tests::wait::Check::Done(())
            }
            other => shunt_tests::wait::Check::NotYet(format!("{other:?}")),
        },
    )
    .or_panic("proxy gone");
    // With its listener gone, the kernel drops the SYN instead of handing it to the app.
    let before = stat(&node, "inbound_fail_closed_drops");
    assert!(
        !reaches(&node, &outsider, server.addr(APP_PORT)),
        "STRICT without a proxy: the plaintext connection reached the app"
    );
    assert!(
        stat(&node, "inbound_fail_closed_drops") > before,
        "the drop was not counted"
    );

    // PERMISSIVE (no policy): the pod fails open, as before shunt, straight to the app.
    node.write_istio(&[]).or_panic("removing the policy");
    shunt_tests::wait::until("the pod no longer fail-closed", APPLY_TIMEOUT, || {
        let pods = fail_closed_pods(&node);
        if pods.is_empty() {
            shunt_tests::wait::Check::Done(())
        } else {
            shunt_tests::wait::Check::NotYet(format!("INBOUND_FAIL_CLOSED has {pods:?}"))
        }
    })
    .or_panic("fail-closed entry removed");
    wait_reachability(
        &node,
        "PERMISSIVE, proxy down",
        &outsider,
        &server,
        &[(APP_PORT, true)],
    );
    let problems = node.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

/// The programs' `STATS` counter `name`.
fn stat(node: &Node, name: &str) -> u64 {
    let admin = node.admin();
    let stats = admin.map("STATS").or_panic("STATS");
    admin::counter(&stats, name).unwrap_or_else(|| panic!("no {name} counter in STATS: {stats}"))
}
