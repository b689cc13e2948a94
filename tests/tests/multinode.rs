//! End to end across nodes: a cluster of two nodes joined by an underlay, each running its own
//! agent and proxy over one shared config dir. Runs as root (and skips, saying so, otherwise).

#[expect(
    dead_code,
    reason = "the single-node helpers of the shared module are for e2e.rs"
)]
mod common;

use common::{MIB, OrPanic, send_ok_with};
use serde_json::{Value, json};
use shunt_tests::admin::{self, WorkloadView};
use shunt_tests::istio::{subsets_by_version, virtual_service};
use shunt_tests::{
    AgentOptions, Cluster, ClusterConfig, Metrics, NamespaceConfig, Node, Pod, ServiceConfig,
};

/// The injected namespace every test pod lives in.
const MESH: &str = "mesh";
const ECHO_PORT: u16 = 8080;
/// What the client's stream starts with, for the underlay capture to look for.
const MARKER: &str = "shunt-multinode-marker-7f3a9c";

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
const RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";
/// Upper bound for a proxy to report what a client already finished.
const REPORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// A cluster of `count` nodes for `test`, or `None` (after printing why) when not root.
fn new_cluster(test: &str, count: usize) -> Option<Cluster> {
    if shunt_tests::skip_unless_root(test) {
        return None;
    }
    let binaries = common::binaries();
    binaries.require_all().or_panic("binaries under test");
    Some(Cluster::with_binaries(test, count, binaries).or_panic("creating the cluster"))
}

/// The labels of one connection's series: reporter and both workloads, all in `mesh`.
fn flow<'a>(reporter: &'a str, source: &'a str, destination: &'a str) -> [(&'a str, &'a str); 5] {
    [
        ("reporter", reporter),
        ("source_workload", source),
        ("source_workload_namespace", MESH),
        ("destination_workload", destination),
        ("destination_workload_namespace", MESH),
    ]
}

fn sum(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    let value = metrics.sum(name, labels);
    assert!(
        value >= 0.0 && value.fract() == 0.0,
        "{name} {labels:?} = {value}"
    );
    // Counters here stay far below 2^53, so the float holds them exactly.
    value as u64
}

fn view<'a>(workloads: &'a [WorkloadView], pod: &Pod) -> &'a WorkloadView {
    workloads
        .iter()
        .find(|w| w.name == pod.name)
        .unwrap_or_else(|| panic!("no workload {} in {workloads:?}", pod.name))
}

/// Whether the cluster runs a CA and the proxies take certificates from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Security {
    Plaintext,
    Mtls,
}

/// The SPIFFE id of service account `sa` in the test namespace.
fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{MESH}/sa/{sa}")
}

/// Pod `a` (10.244.0.10, service account `sa-a`) on node-0, pod `b` (10.244.1.20, `sa-b`) on
/// node-1, both captured by their own node's agent; the config written once, to the shared
/// dir. With [`Security::Mtls`], node-0's agent is also the CA.
fn two_nodes_one_pod_each(test: &str, security: Security) -> Option<(Cluster, Pod, Pod)> {
    let mut cluster = new_cluster(test, 2)?;
    let a = cluster.add_pod(0, "a", 10).or_panic("pod a");
    let b = cluster.add_pod(1, "b", 20).or_panic("pod b");
    let config = [&a, &b].iter().fold(
        ClusterConfig::new().namespace(&NamespaceConfig::injected(MESH)),
        |config, pod| {
            let mut pod_config = cluster.pod_config(pod, MESH).or_panic("pod config");
            pod_config.service_account = format!("sa-{}", pod.name);
            config.pod(&pod_config.port("tcp-echo", ECHO_PORT))
        },
    );
    cluster.write_config(&config).or_panic("writing the config");
    match security {
        Security::Plaintext => cluster
            .start(&AgentOptions::default())
            .or_panic("starting the agents and proxies"),
        Security::Mtls => {
            cluster
                .start_with_mtls(&AgentOptions::default())
                .or_panic("starting the CA, the agents and proxies");
        }
    }
    for node in cluster.nodes() {
        let loaded = node.admin().config().or_panic("GET /config");
        assert_eq!(
            loaded["errors"],
            serde_json::json!([]),
            "{}'s agent rejected part of the config",
            node.names().prefix()
        );
    }
    cluster
        .wait_captured(&[&a, &b])
        .or_panic("waiting for capture");
    Some((cluster, a, b))
}

#[test]
fn each_agent_captures_only_its_own_nodes_pods() {
    const TEST: &str = "multinode::each_agent_captures_only_its_own_nodes_pods";
    let Some((cluster, a, b)) = two_nodes_one_pod_each(TEST, Security::Plaintext) else {
        return;
    };
    for (index, own, other) in [(0, &a, &b), (1, &b, &a)] {
        let node = cluster.node(index).or_panic("node");
        let admin = node.admin();
        let workloads = admin.workloads().or_panic("GET /workloads");
        let (own_view, other_view) = (view(&workloads, own), view(&workloads, other));
        let own_node = Cluster::node_name(index);
        let other_node = Cluster::node_name(1 - index);
        assert!(own_view.is_ready(), "{own_node}: {own_view:?}");
        assert_eq!(own_view.node.as_deref(), Some(own_node.as_str()));
        assert!(own_view.netns_cookie.is_some(), "{own_view:?}");
        // Captured by its own node's shunt, but not by this agent: no netns, nothing handed
        // to this node's proxy.
        assert!(other_view.captured, "{own_node}: {other_view:?}");
        assert_eq!(other_view.node.as_deref(), Some(other_node.as_str()));
        assert_eq!(
            (other_view.netns_cookie, other_view.proxy.as_str()),
            (None, "n/a"),
            "{own_node}: {other_view:?}"
        );
        let meshed = admin.map("MESHED_NETNS").or_panic("MESHED_NETNS");
        let pod_ips: Vec<&str> = admin::entries(&meshed)
            .into_iter()
            .filter_map(|(_, value)| value.get("pod_ip")?.as_str())
            .collect();
        assert_eq!(
            pod_ips,
            vec![own.ip.to_string()],
            "{own_node} captures exactly its own pod: {meshed}"
        );
    }
}

#[test]
fn pod_to_pod_across_nodes_goes_through_both_node_proxies() {
    const TEST: &str = "multinode::pod_to_pod_across_nodes_goes_through_both_node_proxies";
    let Some((mut cluster, a, b)) = two_nodes_one_pod_each(TEST, Security::Plaintext) else {
        return;
    };
    let mut capture = cluster.start_capture("a-to-b").or_panic("underlay capture");
    let _echo = cluster
        .node_of(&b)
        .or_panic("b's node")
        .start_server(&b, &["echo-server", "--port", &ECHO_PORT.to_string()])
        .or_panic("echo server on b");

    let client_node = cluster.node_of(&a).or_panic("a's node");
    send_ok_with(
        client_node,
        &a,
        b.addr(ECHO_PORT),
        MIB,
        1,
        &["--marker", MARKER],
    );

    // The source side is reported by a's node proxy only, the destination side by b's.
    let reported = [(0, "source", "destination"), (1, "destination", "source")];
    for (index, reporter, not_reporter) in reported {
        let node = cluster.node_mut(index).or_panic("node");
        let metrics = node
            .wait_metrics(
                &format!("the {reporter} report of a → b"),
                REPORT_TIMEOUT,
                |m| sum(m, CLOSED, &flow(reporter, "a", "b")) >= 1,
            )
            .or_panic("metrics");
        let labels = flow(reporter, "a", "b");
        let described = metrics.describe(OPENED);
        for (name, want) in [
            (OPENED, 1),
            (CLOSED, 1),
            (SENT_BYTES, MIB),
            (RECEIVED_BYTES, MIB),
        ] {
            assert_eq!(
                sum(&metrics, name, &labels),
                want,
                "node-{index} {reporter} {name}: {described}"
            );
        }
        assert_eq!(
            sum(&metrics, OPENED, &flow(not_reporter, "a", "b")),
            0,
            "node-{index} must not report the {not_reporter} side: {described}"
        );
    }

    // Plaintext between the nodes today: the capture sees the stream. (HBONE will turn this
    // into the opposite assertion.)
    assert!(
        capture
            .contains(MARKER.as_bytes())
            .or_panic("reading the capture"),
        "the marker did not cross the underlay in the clear ({})",
        capture.pcap_path().display()
    );
    drop(capture);
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

#[test]
fn a_connection_across_nodes_is_mutual_tls_with_both_principals() {
    const TEST: &str = "multinode::a_connection_across_nodes_is_mutual_tls_with_both_principals";
    let Some((mut cluster, a, b)) = two_nodes_one_pod_each(TEST, Security::Mtls) else {
        return;
    };
    let mut capture = cluster
        .start_capture("a-to-b-mtls")
        .or_panic("underlay capture");
    let _echo = cluster
        .node_of(&b)
        .or_panic("b's node")
        .start_server(&b, &["echo-server", "--port", &ECHO_PORT.to_string()])
        .or_panic("echo server on b");
    let client_node = cluster.node_of(&a).or_panic("a's node");
    send_ok_with(
        client_node,
        &a,
        b.addr(ECHO_PORT),
        MIB,
        1,
        &["--marker", MARKER],
    );

    for (index, reporter) in [(0, "source"), (1, "destination")] {
        let node = cluster.node_mut(index).or_panic("node");
        let mut labels = flow(reporter, "a", "b").to_vec();
        let (source, destination) = (spiffe("sa-a"), spiffe("sa-b"));
        labels.push(("destination_principal", &destination));
        if reporter == "destination" {
            // The source's identity is what its certificate proved; the source reporter
            // leaves it to the destination, as Istio's does.
            labels.push(("source_principal", &source));
            labels.push(("connection_security_policy", "mutual_tls"));
        }
        let metrics = node
            .wait_metrics(
                &format!("the {reporter} report of a → b over mTLS"),
                REPORT_TIMEOUT,
                |m| sum(m, CLOSED, &labels) >= 1,
            )
            .or_panic("metrics");
        assert_eq!(
            sum(&metrics, SENT_BYTES, &labels),
            MIB,
            "node-{index}: {}",
            metrics.describe(SENT_BYTES)
        );
        let direction = if index == 0 { "outbound" } else { "inbound" };
        assert!(
            sum(
                &metrics,
                "shunt_hbone_connections_opened_total",
                &[("direction", direction)]
            ) >= 1,
            "node-{index} opened no {direction} HBONE connection: {}",
            metrics.describe("shunt_hbone_connections_opened_total")
        );
    }
    assert!(
        !capture
            .contains(MARKER.as_bytes())
            .or_panic("reading the capture"),
        "the marker crossed the underlay in plaintext ({})",
        capture.pcap_path().display()
    );
    drop(capture);
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

fn httppod_json(node: &Node, pod: &Pod, args: &[&str]) -> Value {
    let output = node
        .run_httppod(pod, args, std::time::Duration::from_secs(90))
        .or_panic(&format!("running shunt-httppod {args:?} in {}", pod.name));
    assert!(
        output.status.success(),
        "shunt-httppod {args:?} in {} failed ({}): {}",
        pod.name,
        output.status,
        output.stderr
    );
    output
        .json()
        .or_panic(&format!("report of {args:?} (stderr: {})", output.stderr))
}

fn served_by(report: &Value, name: &str) -> u64 {
    report["served_by"][name].as_u64().unwrap_or(0)
}

#[test]
fn http_routing_holds_across_nodes_over_hbone() {
    const TEST: &str = "multinode::http_routing_holds_across_nodes_over_hbone";
    const WEB_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 10);
    const HTTP_PORT: u16 = 8080;
    let Some(mut cluster) = new_cluster(TEST, 2) else {
        return;
    };
    let client = cluster.add_pod(0, "client", 10).or_panic("client pod");
    let v1 = cluster.add_pod(1, "web-v1", 21).or_panic("web-v1 pod");
    let v2 = cluster.add_pod(1, "web-v2", 22).or_panic("web-v2 pod");
    let mut config = ClusterConfig::new()
        .namespace(&NamespaceConfig::injected(MESH))
        .service(
            &ServiceConfig::new(MESH, "web", WEB_IP)
                .select("app", "web")
                .port("http", 80, HTTP_PORT),
        );
    for (pod, version) in [(&client, None), (&v1, Some("v1")), (&v2, Some("v2"))] {
        let mut pod_config = cluster.pod_config(pod, MESH).or_panic("pod config");
        pod_config.service_account = format!("sa-{}", pod.name);
        pod_config = match version {
            Some(version) => pod_config
                .label("app", "web")
                .label("version", version)
                .port("http", HTTP_PORT),
            None => pod_config.label("app", "client"),
        };
        config = config.pod(&pod_config);
    }
    cluster.write_config(&config).or_panic("writing the config");
    cluster
        .write_istio(&[
            subsets_by_version(MESH, "web", &["v1", "v2"], Value::Null),
            virtual_service(
                MESH,
                "web",
                json!({"hosts": ["web"], "http": [
                    {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
                     "route": [{"destination": {"host": "web", "subset": "v2"}}]},
                    {"route": [
                        {"destination": {"host": "web", "subset": "v1"}, "weight": 80},
                        {"destination": {"host": "web", "subset": "v2"}, "weight": 20},
                    ]},
                ]}),
            ),
        ])
        .or_panic("writing the Istio config");
    cluster
        .start_with_mtls(&AgentOptions::default())
        .or_panic("starting the CA, the agents and proxies");
    cluster
        .wait_captured(&[&client, &v1, &v2])
        .or_panic("waiting for capture");
    let server_node = cluster.node(1).or_panic("node-1");
    let _servers: Vec<_> = [(&v1, "web-v1"), (&v2, "web-v2")]
        .into_iter()
        .map(|(pod, name)| {
            server_node
                .start_httppod_server(
                    pod,
                    &["serve", "--port", &HTTP_PORT.to_string(), "--name", name],
                )
                .or_panic("httppod server")
        })
        .collect();
    let mut capture = cluster
        .start_capture("http-mtls")
        .or_panic("underlay capture");
    let client_node = cluster.node(0).or_panic("node-0");
    let marker_header = format!("x-marker: {MARKER}");
    let url = format!("http://{WEB_IP}/split");
    let split = httppod_json(
        client_node,
        &client,
        &[
            "http",
            "--url",
            &url,
            "-n",
            "400",
            "-c",
            "4",
            "-H",
            &marker_header,
        ],
    );
    assert_eq!(split["status"], json!({"200": 400}), "{split}");
    let (got_v1, got_v2) = (served_by(&split, "web-v1"), served_by(&split, "web-v2"));
    assert_eq!(got_v1 + got_v2, 400, "{split}");
    assert!(
        (280..=360).contains(&got_v1),
        "v1 got {got_v1} of 400 (want 320 ± 40): {split}"
    );
    let jason = httppod_json(
        client_node,
        &client,
        &[
            "http",
            "--url",
            &url,
            "-n",
            "20",
            "-H",
            "end-user: jason",
            "-H",
            &marker_header,
        ],
    );
    assert_eq!(served_by(&jason, "web-v2"), 20, "{jason}");

    // The destination node's proxy reports every request, with both principals, over mTLS.
    let labels = [
        ("reporter", "destination"),
        ("source_workload", "client"),
        ("destination_app", "web"),
        ("source_principal", &spiffe("sa-client")),
        ("connection_security_policy", "mutual_tls"),
    ];
    let metrics = cluster
        .node_mut(1)
        .or_panic("node-1")
        .wait_metrics("the destination's request reports", REPORT_TIMEOUT, |m| {
            sum(m, "istio_requests_total", &labels) >= 420
        })
        .or_panic("metrics");
    assert_eq!(
        sum(&metrics, "istio_requests_total", &labels),
        420,
        "{}",
        metrics.describe("istio_requests_total")
    );
    assert!(
        !capture
            .contains(MARKER.as_bytes())
            .or_panic("reading the capture"),
        "a request header crossed the underlay in plaintext ({})",
        capture.pcap_path().display()
    );
    drop(capture);
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

/// The node proxy's certificate for `identity`: its leaf serial (from `GET /debug/certs`).
fn leaf_serial(node: &Node, identity: &str) -> Option<String> {
    let response = shunt_tests::http::get_tcp(node.metrics_addr(), "/debug/certs")
        .or_panic("GET /debug/certs");
    let certs: Value = serde_json::from_str(&response.text()).or_panic("/debug/certs JSON");
    certs
        .as_array()?
        .iter()
        .find(|c| c["identity"] == identity && c["state"] == "valid")
        .and_then(|c| c["serial"].as_str().map(str::to_owned))
}

#[test]
fn certificates_rotate_under_load_without_a_failed_request() {
    const TEST: &str = "multinode::certificates_rotate_under_load_without_a_failed_request";
    const WEB_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 11);
    const HTTP_PORT: u16 = 8080;
    /// Rotation at half of it: 60 s into the run, which lasts 75 s.
    const LIFETIME_SECS: &str = "120";
    let Some(mut cluster) = new_cluster(TEST, 2) else {
        return;
    };
    let client = cluster.add_pod(0, "client", 10).or_panic("client pod");
    let web = cluster.add_pod(1, "web", 21).or_panic("web pod");
    let mut config = ClusterConfig::new()
        .namespace(&NamespaceConfig::injected(MESH))
        .service(
            &ServiceConfig::new(MESH, "web", WEB_IP)
                .select("app", "web")
                .port("http", 80, HTTP_PORT),
        );
    for pod in [&client, &web] {
        let mut pod_config = cluster.pod_config(pod, MESH).or_panic("pod config");
        pod_config.service_account = format!("sa-{}", pod.name);
        config = config.pod(&pod_config.label("app", &pod.name).port("http", HTTP_PORT));
    }
    cluster.write_config(&config).or_panic("writing the config");
    cluster.add_proxy_args(&["--cert-lifetime", LIFETIME_SECS]);
    cluster
        .start_with_mtls(&AgentOptions::default())
        .or_panic("starting the CA, the agents and proxies");
    cluster
        .wait_captured(&[&client, &web])
        .or_panic("waiting for capture");
    let server_node = cluster.node(1).or_panic("node-1");
    let _server = server_node
        .start_httppod_server(
            &web,
            &["serve", "--port", &HTTP_PORT.to_string(), "--name", "web"],
        )
        .or_panic("httppod server");
    let (client_id, web_id) = (spiffe("sa-client"), spiffe("sa-web"));
    let before = (
        leaf_serial(cluster.node(0).or_panic("node-0"), &client_id),
        leaf_serial(server_node, &web_id),
    );
    assert!(
        before.0.is_some() && before.1.is_some(),
        "no certificates yet: {before:?}"
    );
    let url = format!("http://{WEB_IP}/");
    let report = httppod_json(
        cluster.node(0).or_panic("node-0"),
        &client,
        &["http", "--url", &url, "--rps", "200", "--duration", "75"],
    );
    let after = (
        leaf_serial(cluster.node(0).or_panic("node-0"), &client_id),
        leaf_serial(cluster.node(1).or_panic("node-1"), &web_id),
    );
    assert!(
        after.0.is_some() && after.0 != before.0 && after.1.is_some() && after.1 != before.1,
        "both certificates must have rotated during the run: before {before:?}, after {after:?}"
    );
    let statuses = report["status"]
        .as_object()
        .or_panic_none("status", &report);
    assert_eq!(statuses.keys().collect::<Vec<_>>(), vec!["200"], "{report}");
    assert!(
        report["status"]["200"].as_u64().unwrap_or(0) >= 14_000,
        "about 15000 requests expected: {report}"
    );
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

trait OrPanicNone<T> {
    fn or_panic_none(self, what: &str, context: &Value) -> T;
}

impl<T> OrPanicNone<T> for Option<T> {
    fn or_panic_none(self, what: &str, context: &Value) -> T {
        self.unwrap_or_else(|| panic!("no {what} in {context}"))
    }
}
