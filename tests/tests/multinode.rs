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
    if security == Security::Mtls {
        wait_certs(&mut cluster, &[(0, "sa-a"), (1, "sa-b")]);
    }
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
    wait_certs(
        &mut cluster,
        &[(0, "sa-client"), (1, "sa-web-v1"), (1, "sa-web-v2")],
    );
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
    wait_certs(&mut cluster, &[(0, "sa-client"), (1, "sa-web")]);
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

// ----- HBONE on the wire: shunt-hbonepeer against (or instead of) the node proxies. -----

/// Every captured pod's HBONE listener, `<pod IP>:15008`.
const HBONE_PORT: u16 = 15008;
const FAILURES: &str = "shunt_hbone_handshake_failures_total";
/// What every accepted tunnel in these tests echoes.
const ECHO_BYTES: &str = "65536";
/// The suites shunt offers and accepts: TLS 1.3's AES-GCM, nothing else.
const HBONE_SUITES: [&str; 2] = ["TLS13_AES_128_GCM_SHA256", "TLS13_AES_256_GCM_SHA384"];

/// Waits until node `index` holds a valid certificate for each `(index, service account)`. A
/// pod is served (and its 15008 open) before its certificate comes from the CA; until then
/// its tunnels and its listener fail.
fn wait_certs(cluster: &mut Cluster, wanted: &[(usize, &str)]) {
    for &(index, sa) in wanted {
        let identity = spiffe(sa);
        cluster
            .node_mut(index)
            .or_panic("node")
            .wait_while_running(
                &format!("node-{index}'s certificate for {identity}"),
                shunt_tests::node::START_TIMEOUT,
                |node| match leaf_serial(node, &identity) {
                    Some(serial) => shunt_tests::wait::Check::Done(serial),
                    None => shunt_tests::wait::Check::NotYet("no valid certificate yet".into()),
                },
            )
            .or_panic("waiting for the certificates");
    }
}

/// [`two_nodes_one_pod_each`] with mTLS and an echo server on b's [`ECHO_PORT`], after
/// checking that `shunt-hbonepeer` is built, once each node proxy holds its pod's
/// certificate.
fn wire_cluster(test: &str) -> Option<(Cluster, Pod, Pod, shunt_tests::Process)> {
    let (mut cluster, a, b) = two_nodes_one_pod_each(test, Security::Mtls)?;
    common::binaries()
        .hbonepeer()
        .or_panic("shunt-hbonepeer (cargo +1.99.0 build -p shunt-hbonepeer)");
    wait_certs(&mut cluster, &[(0, "sa-a"), (1, "sa-b")]);
    let echo = cluster
        .node_of(&b)
        .or_panic("b's node")
        .start_server(&b, &["echo-server", "--port", &ECHO_PORT.to_string()])
        .or_panic("echo server on b");
    Some((cluster, a, b, echo))
}

/// `base` flags with `changes` replacing (or added to) them.
fn with_flags(base: &[(&str, String)], changes: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut flags: Vec<(String, String)> = base
        .iter()
        .map(|(f, v)| ((*f).to_owned(), v.clone()))
        .collect();
    for &(flag, value) in changes {
        match flags.iter_mut().find(|(f, _)| f == flag) {
            Some(slot) => slot.1 = value.to_owned(),
            None => flags.push((flag.to_owned(), value.to_owned())),
        }
    }
    flags
}

/// The flags of a well-behaved client from pod `a` to pod `b`: a's identity from the cluster's CA, b's
/// identity required of the server, one `CONNECT` to b's echo server.
fn good_client(b: &Pod) -> Vec<(&'static str, String)> {
    vec![
        ("--identity", spiffe("sa-a")),
        ("--expect-server", spiffe("sa-b")),
        ("--authority", b.addr(ECHO_PORT).to_string()),
    ]
}

/// Runs `shunt-hbonepeer client` in `from`'s netns, uncaptured, against `to`'s port 15008,
/// with `flags`; its JSON report.
fn peer_client(cluster: &Cluster, from: &Pod, to: &Pod, flags: &[(String, String)]) -> Value {
    let to_addr = to.addr(HBONE_PORT).to_string();
    let ca_dir = cluster.ca_root_dir().display().to_string();
    let mut args = vec![
        "client",
        "--to",
        &to_addr,
        "--ca-dir",
        &ca_dir,
        "--send-bytes",
        ECHO_BYTES,
    ];
    for (flag, value) in flags {
        args.push(flag);
        args.push(value);
    }
    let output = cluster
        .run_hbonepeer(from, &args, common::CLIENT_TIMEOUT)
        .or_panic(&format!("shunt-hbonepeer {args:?} in {}", from.name));
    assert!(
        output.status.success(),
        "shunt-hbonepeer {args:?} could not run ({}): {}",
        output.status,
        output.stderr
    );
    output
        .json()
        .or_panic(&format!("report of shunt-hbonepeer {args:?}"))
}

/// Asserts `report` is a full success: handshake, and every stream 200 with its echo.
fn assert_tunnelled(report: &Value, what: &str) {
    assert_eq!(report["failed"], Value::Null, "{what}: {report}");
    let streams = report["streams"].as_array().or_panic_none(what, report);
    assert!(!streams.is_empty(), "{what}: {report}");
    for stream in streams {
        assert_eq!(stream["status"], 200, "{what}: {stream}");
        assert_eq!(stream["echo_ok"], true, "{what}: {stream}");
    }
}

/// Asserts the client failed the handshake (or was refused right after it) with `error`.
fn assert_refused(report: &Value, what: &str, error: &str) {
    assert_eq!(report["failed"], "tls", "{what}: {report}");
    let text = report["error"].as_str().unwrap_or_default();
    assert!(
        text.contains(error),
        "{what}: expected {error:?} in {text:?} ({report})"
    );
    assert_eq!(report["streams"], serde_json::json!([]), "{what}: {report}");
}

/// Waits until node `index` has counted at least `at_least` handshake failures of
/// `direction` for `reason`.
fn wait_failures(
    cluster: &mut Cluster,
    index: usize,
    direction: &str,
    reason: &str,
    at_least: u64,
) {
    let labels = [("direction", direction), ("reason", reason)];
    cluster
        .node_mut(index)
        .or_panic("node")
        .wait_metrics(
            &format!("{at_least} {direction} HBONE handshake failures ({reason}) on node-{index}"),
            REPORT_TIMEOUT,
            |m| sum(m, FAILURES, &labels) >= at_least,
        )
        .or_panic("metrics");
}

fn failures(cluster: &Cluster, index: usize, direction: &str, reason: &str) -> u64 {
    let metrics = cluster
        .node(index)
        .or_panic("node")
        .metrics()
        .or_panic("metrics");
    sum(
        &metrics,
        FAILURES,
        &[("direction", direction), ("reason", reason)],
    )
}

/// One changed flag per case: (case, the flag, the alert the listener sends).
type Refusal<'a> = (&'a str, (&'a str, &'a str), &'a str);

/// The well-behaved client gets through (so each refusal is the listener's verdict on the one
/// flag its case changes), every case is refused with its alert, and node-1 counts each one
/// as an inbound TLS handshake failure.
fn assert_listener_refuses(test: &str, baseline: &str, cases: &[Refusal<'_>]) {
    let Some((mut cluster, a, b, _echo)) = wire_cluster(test) else {
        return;
    };
    let before = failures(&cluster, 1, "inbound", "tls");
    let good = good_client(&b);
    assert_tunnelled(
        &peer_client(&cluster, &a, &b, &with_flags(&good, &[])),
        baseline,
    );
    for (case, flag, alert) in cases {
        let report = peer_client(&cluster, &a, &b, &with_flags(&good, &[*flag]));
        assert_refused(&report, case, alert);
    }
    let refused = u64::try_from(cases.len()).or_panic("case count");
    wait_failures(&mut cluster, 1, "inbound", "tls", before + refused);
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

#[test]
fn hbone_listener_refuses_tls12_and_chacha20_clients() {
    assert_listener_refuses(
        "multinode::hbone_listener_refuses_tls12_and_chacha20_clients",
        "TLS 1.3, every suite",
        &[
            ("TLS 1.2 only", ("--tls", "1.2"), "ProtocolVersion"),
            (
                "ChaCha20 only",
                ("--ciphers", "chacha20"),
                "HandshakeFailure",
            ),
        ],
    );
}

#[test]
fn hbone_listener_presents_the_destination_pods_identity_over_h2() {
    const TEST: &str = "multinode::hbone_listener_presents_the_destination_pods_identity_over_h2";
    let Some((cluster, a, b, _echo)) = wire_cluster(TEST) else {
        return;
    };
    let good = good_client(&b);
    let report = peer_client(&cluster, &a, &b, &with_flags(&good, &[]));
    assert_tunnelled(&report, "expecting b's identity");
    assert_eq!(report["server_identity"], spiffe("sa-b"), "{report}");
    let tls = &report["tls"];
    assert_eq!(tls["version"], "TLSv1_3", "{report}");
    assert_eq!(tls["alpn"], "h2", "{report}");
    assert_eq!(tls["peer_identity"], spiffe("sa-b"), "{report}");
    let suite = tls["cipher_suite"].as_str().unwrap_or_default();
    assert!(HBONE_SUITES.contains(&suite), "{report}");

    // Offered everything (TLS 1.2 and 1.3, ChaCha20 too), the listener still picks 1.3 and
    // AES-GCM.
    let report = peer_client(
        &cluster,
        &a,
        &b,
        &with_flags(&good, &[("--tls", "any"), ("--ciphers", "default")]),
    );
    assert_tunnelled(&report, "offering everything");
    assert_eq!(report["tls"]["version"], "TLSv1_3", "{report}");
    let suite = report["tls"]["cipher_suite"].as_str().unwrap_or_default();
    assert!(HBONE_SUITES.contains(&suite), "{report}");

    let another = spiffe("sa-a");
    let report = peer_client(
        &cluster,
        &a,
        &b,
        &with_flags(&good, &[("--expect-server", &another)]),
    );
    assert_refused(
        &report,
        "expecting another identity",
        &format!(
            "the server presented {}, but {another} was expected",
            spiffe("sa-b")
        ),
    );
    assert_eq!(report["server_identity"], spiffe("sa-b"), "{report}");

    let report = peer_client(
        &cluster,
        &a,
        &b,
        &with_flags(&good, &[("--alpn", "http/1.1")]),
    );
    assert_refused(&report, "offering only http/1.1", "NoApplicationProtocol");

    // Each pod's listener is its own identity's, not its node's: a's (node-0) presents a's.
    let report = peer_client(
        &cluster,
        &b,
        &a,
        &[
            ("--identity".to_owned(), spiffe("sa-b")),
            ("--expect-server".to_owned(), spiffe("sa-a")),
        ],
    );
    assert_eq!(report["failed"], Value::Null, "b → a's listener: {report}");
    assert_eq!(report["tls"]["peer_identity"], spiffe("sa-a"), "{report}");
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

#[test]
fn hbone_listener_refuses_client_certificates_it_cannot_trust() {
    assert_listener_refuses(
        "multinode::hbone_listener_refuses_client_certificates_it_cannot_trust",
        "a's certificate from the cluster's CA",
        &[
            (
                "a certificate from another CA",
                ("--cert", "other-ca"),
                "UnknownCA",
            ),
            (
                "the cluster CA's certificate for another trust domain",
                ("--identity", "spiffe://evil.local/ns/mesh/sa/sa-a"),
                "CertificateUnknown",
            ),
            (
                "an expired certificate",
                ("--cert", "expired"),
                "CertificateExpired",
            ),
            ("no certificate", ("--cert", "none"), "CertificateRequired"),
        ],
    );
}

#[test]
fn hbone_connect_gets_400_503_or_200_on_one_connection() {
    const TEST: &str = "multinode::hbone_connect_gets_400_503_or_200_on_one_connection";
    let Some((cluster, a, b, _echo)) = wire_cluster(TEST) else {
        return;
    };
    let echo = b.addr(ECHO_PORT).to_string();
    // (the CONNECT's :authority, the status it must get), in order on one connection: the
    // refusals end their stream only, so the last good one still gets through.
    let streams = [
        (echo.clone(), 200),
        // Another IP than the TCP destination's: in b's subnet, and a's own.
        (format!("{}:{ECHO_PORT}", Cluster::pod_ip(1, 99)), 400),
        (a.addr(ECHO_PORT).to_string(), 400),
        // Nothing listens there.
        (b.addr(9).to_string(), 503),
        // The HBONE port itself, and a name instead of an IP.
        (b.addr(HBONE_PORT).to_string(), 400),
        (format!("b.{MESH}.svc.cluster.local:{ECHO_PORT}"), 400),
        (echo.clone(), 200),
    ];
    let mut flags = vec![
        ("--identity".to_owned(), spiffe("sa-a")),
        ("--expect-server".to_owned(), spiffe("sa-b")),
    ];
    flags.extend(
        streams
            .iter()
            .map(|(authority, _)| ("--authority".to_owned(), authority.clone())),
    );
    let report = peer_client(&cluster, &a, &b, &flags);
    assert_eq!(report["failed"], Value::Null, "{report}");
    let got = report["streams"]
        .as_array()
        .or_panic_none("streams", &report);
    assert_eq!(got.len(), streams.len(), "{report}");
    for ((authority, status), stream) in streams.iter().zip(got) {
        assert_eq!(stream["authority"], authority.as_str(), "{stream}");
        assert_eq!(stream["status"], *status, "CONNECT {authority}: {stream}");
        assert_eq!(
            stream["echo_ok"],
            *status == 200,
            "CONNECT {authority}: {stream}"
        );
    }
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

/// The JSON events `server` printed so far named `event`.
fn server_events(server: &shunt_tests::Process, event: &str) -> Vec<Value> {
    server
        .stdout()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|value| value["event"] == event)
        .collect()
}

/// Waits until `server` has printed an `event` event; all of them.
fn wait_server_events(server: &shunt_tests::Process, event: &str) -> Vec<Value> {
    shunt_tests::wait::until(
        &format!("a {event:?} event from {}", server.label()),
        REPORT_TIMEOUT,
        || {
            let events = server_events(server, event);
            if events.is_empty() {
                shunt_tests::wait::Check::NotYet(server.stdout())
            } else {
                shunt_tests::wait::Check::Done(events)
            }
        },
    )
    .or_panic("server events")
}

/// A `shunt-hbonepeer server` on `pod`'s 15008, in its netns, presenting a certificate for
/// `identity` from the cluster's CA.
fn stand_in(cluster: &Cluster, pod: &Pod, identity: &str) -> shunt_tests::Process {
    let listen = pod.addr(HBONE_PORT).to_string();
    let ca_dir = cluster.ca_root_dir().display().to_string();
    let args = [
        "server",
        "--listen",
        &listen,
        "--ca-dir",
        &ca_dir,
        "--identity",
        identity,
    ];
    cluster
        .start_hbonepeer_server(pod, &args)
        .or_panic(&format!(
            "a stand-in HBONE server on {listen} as {identity}"
        ))
}

#[test]
fn shunts_client_aborts_when_the_server_is_not_the_destination() {
    const TEST: &str = "multinode::shunts_client_aborts_when_the_server_is_not_the_destination";
    let Some((mut cluster, a, b, _echo)) = wire_cluster(TEST) else {
        return;
    };
    // b's node proxy goes (and its listener on b's 15008 with it); a stand-in takes b's
    // 15008, while node-0 still knows b as a pod captured on node-1.
    cluster
        .node_mut(1)
        .or_panic("node-1")
        .stop_proxy()
        .or_panic("stopping node-1's proxy");
    let client_node = cluster.node_of(&a).or_panic("a's node");
    let before = failures(&cluster, 0, "outbound", "tls");

    // A certificate from the cluster's own CA, but for another identity than b's.
    let impostor = stand_in(&cluster, &b, &spiffe("sa-impostor"));
    let report = common::client(
        client_node,
        &a,
        &[
            "send",
            "--to",
            &b.addr(ECHO_PORT).to_string(),
            "--bytes",
            ECHO_BYTES,
            "--seed",
            "1",
        ],
    );
    assert_ne!(
        report["ok"], true,
        "a reached b through an impostor: {report}"
    );
    // What shunt's client offered: no SNI, h2, TLS 1.3's AES-GCM suites only.
    let hello = &wait_server_events(&impostor, "client_hello")[0];
    assert_eq!(hello["sni"], Value::Null, "{hello}");
    assert_eq!(hello["alpn"], serde_json::json!(["h2"]), "{hello}");
    let mut suites: Vec<&str> = hello["cipher_suites"]
        .as_array()
        .or_panic_none("cipher_suites", hello)
        .iter()
        .filter_map(Value::as_str)
        .filter(|suite| !suite.contains("EMPTY_RENEGOTIATION_INFO"))
        .collect();
    suites.sort_unstable();
    assert_eq!(suites, HBONE_SUITES, "{hello}");
    let handshake = &wait_server_events(&impostor, "handshake")[0];
    assert_eq!(
        handshake["ok"], false,
        "shunt's client went on: {handshake}"
    );
    assert!(
        server_events(&impostor, "connect").is_empty(),
        "shunt sent a CONNECT to an impostor: {}",
        impostor.stdout()
    );
    drop(impostor);
    wait_failures(&mut cluster, 0, "outbound", "tls", before + 1);

    // The same stand-in with b's identity is accepted: the refusal above was the SAN's.
    let genuine = stand_in(&cluster, &b, &spiffe("sa-b"));
    let client_node = cluster.node_of(&a).or_panic("a's node");
    send_ok_with(client_node, &a, b.addr(ECHO_PORT), 65_536, 2, &[]);
    let handshake = &wait_server_events(&genuine, "handshake")[0];
    assert_eq!(handshake["ok"], true, "{handshake}");
    let negotiated = &handshake["negotiated"];
    assert_eq!(negotiated["peer_identity"], spiffe("sa-a"), "{handshake}");
    assert_eq!(negotiated["alpn"], "h2", "{handshake}");
    assert_eq!(negotiated["version"], "TLSv1_3", "{handshake}");
    let connect = &wait_server_events(&genuine, "connect")[0];
    assert_eq!(connect["method"], "CONNECT", "{connect}");
    assert_eq!(
        connect["authority"],
        b.addr(ECHO_PORT).to_string(),
        "{connect}"
    );
    let forwarded = connect["forwarded"].as_str().unwrap_or_default();
    assert!(
        forwarded.starts_with(&format!("for=\"{}:", a.ip)),
        "forwarded names a's address: {connect}"
    );
    let end = &wait_server_events(&genuine, "stream_end")[0];
    assert_eq!(end["echoed"], 65_536, "{end}");
    drop(genuine);
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

#[test]
fn hbone_listener_names_the_source_by_its_connection_not_by_a_forwarded_header() {
    const TEST: &str =
        "multinode::hbone_listener_names_the_source_by_its_connection_not_by_a_forwarded_header";
    let Some((mut cluster, a, b, _echo)) = wire_cluster(TEST) else {
        return;
    };
    // a proves a's identity and dials from a's address, but its CONNECT claims to be for a
    // client at b's address. ztunnel looks the source workload up by the connection's
    // address; a header the peer writes must not make a's connection b's.
    let forged = format!("forwarded: for=\"{}:4000\"", b.ip);
    let good = good_client(&b);
    let report = peer_client(
        &cluster,
        &a,
        &b,
        &with_flags(&good, &[("--header", &forged)]),
    );
    assert_tunnelled(&report, "a CONNECT with a forged forwarded header");
    let principal = spiffe("sa-a");
    let by_principal = [
        ("reporter", "destination"),
        ("source_principal", principal.as_str()),
    ];
    let metrics = cluster
        .node_mut(1)
        .or_panic("node-1")
        .wait_metrics("node-1's report of a's tunnel", REPORT_TIMEOUT, |m| {
            sum(m, CLOSED, &by_principal) >= 1
        })
        .or_panic("metrics");
    let described = metrics.describe(OPENED);
    assert_eq!(
        sum(&metrics, OPENED, &flow("destination", "a", "b")),
        1,
        "a's tunnel must be reported as from a: {described}"
    );
    assert_eq!(
        sum(&metrics, OPENED, &flow("destination", "b", "b")),
        0,
        "a's tunnel was reported as from b, as its forwarded header claimed: {described}"
    );
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

/// An AuthorizationPolicy of `MESH` without a selector (every pod of the namespace).
fn namespace_policy(name: &str, spec: Value) -> Value {
    serde_json::json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": MESH},
        "spec": spec,
    })
}

/// Whether a 4 KiB echo from `from` (through its node's proxy) to `to` comes back.
fn echoes(cluster: &Cluster, from: &Pod, to: &Pod) -> bool {
    let node = cluster.node_of(from).or_panic("the client's node");
    let to = to.addr(ECHO_PORT).to_string();
    let report = common::client(
        node,
        from,
        &["send", "--to", &to, "--bytes", "4096", "--seed", "5"],
    );
    report["ok"] == true
}

/// The status each `CONNECT` of a client presenting `identity` gets from b's listener.
fn connect_status(cluster: &Cluster, a: &Pod, b: &Pod, identity: &str) -> Vec<Value> {
    let flags = with_flags(&good_client(b), &[("--identity", identity)]);
    let report = peer_client(cluster, a, b, &flags);
    assert_eq!(report["failed"], Value::Null, "{identity}: {report}");
    report["streams"]
        .as_array()
        .or_panic_none("streams", &report)
        .iter()
        .map(|stream| stream["status"].clone())
        .collect()
}

#[test]
fn authorization_policies_see_hbone_principals_and_refuse_a_connect_with_401() {
    const TEST: &str =
        "multinode::authorization_policies_see_hbone_principals_and_refuse_a_connect_with_401";
    let Some((cluster, a, b, _echo)) = wire_cluster(TEST) else {
        return;
    };
    let deadline = std::time::Instant::now() + REPORT_TIMEOUT * 2;
    let until = |what: &str, done: &dyn Fn() -> bool| {
        while !done() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };

    // Only a's principal, as its certificate proves it across the nodes.
    let allow_a = namespace_policy(
        "allow-a",
        serde_json::json!({"rules": [{"from": [{"source": {
            "principals": [format!("cluster.local/ns/{MESH}/sa/sa-a")]}}]}]}),
    );
    cluster.write_istio(&[allow_a]).or_panic("the ALLOW");
    let other = spiffe("sa-other");
    until("a stranger's CONNECT is refused with 401", &|| {
        connect_status(&cluster, &a, &b, &other) == [Value::from(401)]
    });
    assert_eq!(
        connect_status(&cluster, &a, &b, &spiffe("sa-a")),
        [Value::from(200)],
        "a's own identity is allowed"
    );
    assert!(echoes(&cluster, &a, &b), "a → b through both proxies");

    // A namespace rule: DENY everything from the mesh namespace, HBONE peers included.
    let deny_mesh = namespace_policy(
        "deny-mesh",
        serde_json::json!({"action": "DENY", "rules": [{"from": [{"source": {
            "namespaces": [MESH]}}]}]}),
    );
    cluster.write_istio(&[deny_mesh]).or_panic("the DENY");
    until("a's connections are denied", &|| !echoes(&cluster, &a, &b));
    assert_eq!(
        connect_status(&cluster, &a, &b, &spiffe("sa-a")),
        [Value::from(401)],
        "a's CONNECT under the DENY"
    );
    let metrics = cluster
        .node(1)
        .or_panic("node-1")
        .metrics()
        .or_panic("metrics");
    let denied = sum(
        &metrics,
        "shunt_authorization_decisions_total",
        &[("action", "DENY"), ("decision", "deny")],
    );
    assert!(
        denied >= 1,
        "{}",
        metrics.describe("shunt_authorization_decisions_total")
    );
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}

/// `iptables -A INPUT` in `pod`'s netns: drops data segments arriving on `eth0` at random
/// (the kernel here has no netem). Pure ACKs and FINs (under 200 bytes) pass, so the end of
/// each connection is never retransmitted after the proxy last read its `TCP_INFO`.
fn drop_data_segments(pod: &Pod, probability: &str) {
    let status = std::process::Command::new("nsenter")
        .arg(format!("--net={}", pod.netns_path().display()))
        .args([
            "iptables",
            "-w",
            "5",
            "-A",
            "INPUT",
            "-i",
            "eth0",
            "-p",
            "tcp",
            "-m",
            "length",
            "--length",
            "200:65535",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
        ])
        .arg(probability)
        .args(["-j", "DROP"])
        .status()
        .or_panic("running iptables");
    assert!(
        status.success(),
        "iptables in {}'s netns: {status}",
        pod.name
    );
}

#[test]
fn kernel_tcp_telemetry_counts_what_tcp_info_says_under_packet_loss() {
    const TEST: &str =
        "multinode::kernel_tcp_telemetry_counts_what_tcp_info_says_under_packet_loss";
    const RTT: &str = "shunt_tcp_rtt_seconds";
    const RETRANSMITS: &str = "shunt_tcp_retransmits_total";
    const LOST: &str = "shunt_tcp_lost_packets_total";
    let Some((mut cluster, a, b)) = two_nodes_one_pod_each(TEST, Security::Plaintext) else {
        return;
    };
    let _echo = cluster
        .node_of(&b)
        .or_panic("b's node")
        .start_server(&b, &["echo-server", "--port", &ECHO_PORT.to_string()])
        .or_panic("echo server on b");
    // Segments a's node proxy sends to b are lost: its upstream socket retransmits.
    drop_data_segments(&b, "0.1");
    let client_node = cluster.node_of(&a).or_panic("a's node");
    send_ok_with(client_node, &a, b.addr(ECHO_PORT), 4 * MIB, 1, &[]);

    let labels = flow("source", "a", "b");
    let node = cluster.node_mut(0).or_panic("node-0");
    // The kernel's event at TCP_CLOSE is what observes the RTT of a connection shorter than
    // the sampling interval.
    let metrics = node
        .wait_metrics("the kernel's event for a → b", REPORT_TIMEOUT, |m| {
            m.sum(&format!("{RTT}_count"), &labels) >= 1.0
        })
        .or_panic("metrics");
    let source_side = [
        ("reporter", "source"),
        ("src_workload", "a"),
        ("dst_workload", "b"),
    ];
    // The line is written on the log's own interval, the event comes on its own.
    let log = node
        .wait_access_log("the source line of a → b", REPORT_TIMEOUT, |log| {
            !log.matching(&source_side).is_empty()
        })
        .or_panic("access log");
    let lines = log.matching(&source_side);
    assert_eq!(lines.len(), 1, "{}", log.describe());
    let line = lines[0];
    let logged = |field: &str| {
        line[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {line}"))
    };
    // TCP_INFO of the upstream socket, as the proxy read it at the end.
    let (rtt_us, retransmits, lost) = (logged("rtt_us"), logged("retransmits"), logged("lost"));
    let described = metrics.describe(RETRANSMITS);
    assert!(
        retransmits > 0,
        "10% of data segments dropped, none retransmitted: {line}"
    );
    assert_eq!(
        sum(&metrics, RETRANSMITS, &labels),
        retransmits,
        "{line} {described}"
    );
    assert_eq!(sum(&metrics, LOST, &labels), lost, "{line} {described}");
    assert_eq!(
        metrics.sum(&format!("{RTT}_count"), &labels),
        1.0,
        "{described}"
    );
    let kernel_rtt_us = metrics.sum(&format!("{RTT}_sum"), &labels) * 1e6;
    assert!(
        (kernel_rtt_us - rtt_us as f64).abs() <= 0.1 * rtt_us as f64,
        "kernel srtt {kernel_rtt_us} µs, TCP_INFO {rtt_us} µs: {line}"
    );
    let problems = cluster.teardown();
    assert!(problems.is_empty(), "cleanup problems: {problems:?}");
}
