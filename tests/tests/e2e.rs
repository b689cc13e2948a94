//! End to end: the real agent, proxy and capture on a node of pods in network namespaces.
//! Every test runs as root (and skips, saying so, otherwise) on its own node. Each case runs
//! twice, as `<case>::ebpf` and `<case>::iptables` (see [`in_both_capture_modes`]), except the
//! sockmap shortcut, which only eBPF capture has.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use common::{MIB, OrPanic, client, pod_ip, send_ok, send_ok_with};
use serde_json::Value;
use shunt_tests::config::{EXCLUDE_INBOUND_PORTS, EXCLUDE_OUTBOUND_PORTS};
use shunt_tests::kernel::{self, Needs};
use shunt_tests::wait::Check;
use shunt_tests::{
    AgentOptions, CaptureMode, ClusterConfig, Metrics, NamespaceConfig, Node, Pod, ServiceConfig,
    admin,
};

/// Turns each `fn case(test: &str, capture: CaptureMode)` into two tests, `case::ebpf` and
/// `case::iptables`, each on its own node (named after the test).
macro_rules! in_both_capture_modes {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            use super::CaptureMode;

            #[test]
            fn ebpf() {
                super::$case(concat!("e2e::", stringify!($case), "::ebpf"), CaptureMode::Ebpf);
            }

            #[test]
            fn iptables() {
                super::$case(
                    concat!("e2e::", stringify!($case), "::iptables"),
                    CaptureMode::Iptables,
                );
            }
        }
    )*};
}

in_both_capture_modes!(
    pod_to_pod_echo_goes_through_the_proxy,
    service_cluster_ip_round_robins_over_both_backends,
    service_endpoints_come_from_its_endpoint_slice,
    uncaptured_client_is_captured_only_inbound,
    thousand_sequential_connections_are_each_counted_once,
    excluded_ports_bypass_capture,
    pod_removed_from_config_is_released,
    agent_sigkill_and_restart_keep_capture_without_failures,
    proxy_rollout_refuses_no_connection,
);

/// The agent's options for `capture`, everything else default.
fn options(capture: CaptureMode) -> AgentOptions {
    AgentOptions {
        capture,
        ..AgentOptions::default()
    }
}

/// Upper bound for the proxy to report what clients already finished.
const REPORT_TIMEOUT: Duration = Duration::from_secs(15);

const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
const RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";

/// The injected namespace every captured test pod lives in.
const MESH: &str = "mesh";
/// The identity of a pod of [`MESH`] without a service account of its own.
const MESH_DEFAULT_SA: &str = "spiffe://cluster.local/ns/mesh/sa/default";
const ECHO_PORT: u16 = 8080;

/// A node for an end-to-end test, or `None` (after printing why) when not root. Fails when
/// the agent or the proxy has not been built.
fn new_node(test: &str) -> Option<Node> {
    if shunt_tests::skip_unless_root(test) {
        return None;
    }
    let binaries = common::binaries();
    binaries.require_all().or_panic("binaries under test");
    Some(Node::with_binaries(test, binaries).or_panic("creating the node"))
}

/// Writes `config`, starts agent and proxy, and waits until `captured` are captured.
fn start(node: &mut Node, config: &ClusterConfig, captured: &[&Pod], options: &AgentOptions) {
    node.write_config(config).or_panic("writing the config");
    node.start_agent(options).or_panic("starting the agent");
    let loaded = node.admin().config().or_panic("GET /config");
    assert_eq!(
        loaded["errors"],
        serde_json::json!([]),
        "the agent rejected part of the config"
    );
    node.start_proxy().or_panic("starting the proxy");
    node.wait_captured(captured).or_panic("waiting for capture");
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

fn mesh_namespace() -> NamespaceConfig {
    NamespaceConfig::injected(MESH)
}

/// A config with the mesh namespace and `pods` in it.
fn mesh_config(node: &Node, pods: &[&Pod]) -> ClusterConfig {
    pods.iter().fold(
        ClusterConfig::new().namespace(&mesh_namespace()),
        |config, pod| config.pod(&node.pod_config(pod, MESH).port("tcp-echo", ECHO_PORT)),
    )
}

/// Pods `a` (10.244.0.10) and `b` (10.244.0.20), both captured, agent and proxy running.
fn two_captured_pods(test: &str, options: &AgentOptions) -> Option<(Node, Pod, Pod)> {
    let mut node = new_node(test)?;
    let a = node.add_pod("a", pod_ip(10)).or_panic("pod a");
    let b = node.add_pod("b", pod_ip(20)).or_panic("pod b");
    let config = mesh_config(&node, &[&a, &b]);
    start(&mut node, &config, &[&a, &b], options);
    Some((node, a, b))
}

/// Two captured pods with the sockmap shortcut on, and an echo server on `b`'s `ECHO_PORT`;
/// `None` (after printing why) when not root or when the kernel lacks what the shortcut needs.
fn shortcut_pods(test: &str) -> Option<(Node, Pod, Pod, shunt_tests::Process)> {
    if shunt_tests::skip_unless_root(test)
        || kernel::skip_unless_supported(test, &common::binaries(), Needs::SockmapShortcut)
    {
        return None;
    }
    let options = AgentOptions {
        sockmap_shortcut: true,
        ..AgentOptions::default()
    };
    let (node, a, b) = two_captured_pods(test, &options)?;
    let echo = echo_server(&node, &b, ECHO_PORT, &[]);
    Some((node, a, b, echo))
}

/// Prints where a shortcut client retried the sockmap receive path's spurious `EAGAIN`s
/// (`--retry-spurious-eagain`), which `--show-output` (the kernel matrix) shows per kernel.
fn print_retries(report: &Value) {
    println!(
        "spurious EAGAIN retried: {} while reading, {} at the half-close ({})",
        report["eagain_retries_read"], report["eagain_retries_close"], report["to"]
    );
}

/// The programs' `STATS` counter `name`.
fn stat(admin: &shunt_tests::admin::Admin, name: &str) -> u64 {
    let stats = admin.map("STATS").or_panic("STATS");
    admin::counter(&stats, name).unwrap_or_else(|| panic!("no {name} counter in STATS: {stats}"))
}

fn echo_server(node: &Node, pod: &Pod, port: u16, extra: &[&str]) -> shunt_tests::Process {
    let port = port.to_string();
    let mut args = vec!["echo-server", "--port", port.as_str()];
    args.extend_from_slice(extra);
    node.start_server(pod, &args)
        .or_panic(&format!("echo server on {}:{port}", pod.name))
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

fn field_u64(entry: &Value, field: &str) -> Option<u64> {
    entry.get(field).and_then(Value::as_u64)
}

fn pod_to_pod_echo_goes_through_the_proxy(test: &str, capture: CaptureMode) {
    let Some((mut node, a, b)) = two_captured_pods(test, &options(capture)) else {
        return;
    };
    let _streaming = echo_server(&node, &b, ECHO_PORT, &[]);
    // Answers only after the client's FIN: the reply must cross a half-closed connection.
    let _held = echo_server(&node, &b, 8081, &["--hold-until-eof"]);

    send_ok(&node, &a, b.addr(ECHO_PORT), MIB, 1);
    send_ok(&node, &a, b.addr(8081), MIB, 2);

    let both_closed = |m: &Metrics| {
        sum(m, CLOSED, &flow("source", "a", "b")) >= 2
            && sum(m, CLOSED, &flow("destination", "a", "b")) >= 2
    };
    let metrics = node
        .wait_metrics(
            "both connections closed on both reporters",
            REPORT_TIMEOUT,
            both_closed,
        )
        .or_panic("metrics");
    for reporter in ["source", "destination"] {
        let labels = flow(reporter, "a", "b");
        let described = metrics.describe(OPENED);
        assert_eq!(sum(&metrics, OPENED, &labels), 2, "{reporter}: {described}");
        assert_eq!(sum(&metrics, CLOSED, &labels), 2, "{reporter}: {described}");
        assert_eq!(
            sum(&metrics, RECEIVED_BYTES, &labels),
            2 * MIB,
            "{reporter}"
        );
        assert_eq!(sum(&metrics, SENT_BYTES, &labels), 2 * MIB, "{reporter}");
        // Delivered on the node: both pods' identities, known from their netns, and
        // `mutual_tls` where Istio's destination reporter says so for authenticated peers.
        let policy = if reporter == "source" {
            "unknown"
        } else {
            "mutual_tls"
        };
        let labelled = [
            ("source_principal", MESH_DEFAULT_SA),
            ("destination_principal", MESH_DEFAULT_SA),
            ("connection_security_policy", policy),
            ("source_canonical_service", "a"),
            ("source_canonical_revision", "latest"),
            ("destination_canonical_service", "b"),
            ("source_cluster", "Kubernetes"),
            ("destination_cluster", "Kubernetes"),
            ("destination_service", "unknown"),
            ("request_protocol", "tcp"),
            ("response_flags", "-"),
        ];
        let mut all = labels.to_vec();
        all.extend_from_slice(&labelled);
        assert_eq!(sum(&metrics, OPENED, &all), 2, "{reporter}: {described}");
    }

    let log = node
        .wait_access_log("4 access log lines", REPORT_TIMEOUT, |log| {
            log.entries.len() >= 4
        })
        .or_panic("access log");
    assert_eq!(log.entries.len(), 4, "{}", log.describe());
    for (direction, reporter, pod) in [
        ("outbound", "source", "mesh/a"),
        ("inbound", "destination", "mesh/b"),
    ] {
        for port in [ECHO_PORT, 8081] {
            let dst = b.addr(port).to_string();
            let lines = log.matching(&[
                ("direction", direction),
                ("reporter", reporter),
                ("pod", pod),
                ("src_workload", "a"),
                ("src_namespace", MESH),
                ("dst_workload", "b"),
                ("dst_namespace", MESH),
                ("dst_addr", &dst),
                ("upstream_addr", &dst),
                ("dst_service", "unknown"),
                ("close_reason", "eof"),
                ("src_principal", MESH_DEFAULT_SA),
                ("dst_principal", MESH_DEFAULT_SA),
                ("peer_security", "same_node"),
                ("response_flags", "-"),
            ]);
            assert_eq!(lines.len(), 1, "{direction} to {dst}:\n{}", log.describe());
            let line = lines[0];
            assert_eq!(field_u64(line, "bytes_received"), Some(MIB), "{line}");
            assert_eq!(field_u64(line, "bytes_sent"), Some(MIB), "{line}");
            // Both sides name the app in a by its pod IP and its own port (not the loopback
            // source eBPF capture gives the app's socket, nor port 0).
            let src = line["src_addr"].as_str().unwrap_or_default();
            let port = src.strip_prefix(&format!("{}:", a.ip));
            assert!(
                port.is_some_and(|port| port.parse::<u16>().is_ok_and(|port| port != 0)),
                "src_addr of {line}"
            );
        }
    }
    // One connection's two lines share their client, so they can be matched up.
    for port in [ECHO_PORT, 8081] {
        let dst = b.addr(port).to_string();
        let srcs: Vec<&str> = log
            .matching(&[("dst_addr", &dst)])
            .iter()
            .map(|line| line["src_addr"].as_str().unwrap_or_default())
            .collect();
        assert!(
            srcs.len() == 2 && srcs[0] == srcs[1],
            "src_addr of the two lines to {dst}: {srcs:?}"
        );
    }
}

fn service_cluster_ip_round_robins_over_both_backends(test: &str, capture: CaptureMode) {
    let Some(mut node) = new_node(test) else {
        return;
    };
    let client_pod = node.add_pod("client", pod_ip(10)).or_panic("client pod");
    let backends = [
        node.add_pod("backend-1", pod_ip(21)).or_panic("backend-1"),
        node.add_pod("backend-2", pod_ip(22)).or_panic("backend-2"),
    ];
    let cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
    let service = ServiceConfig::new(MESH, "backend", cluster_ip)
        .select("app", "backend")
        .named_port("tcp-whoami", 80, "whoami");
    let mut config = ClusterConfig::new()
        .namespace(&mesh_namespace())
        .pod(&node.pod_config(&client_pod, MESH))
        .service(&service);
    for backend in &backends {
        config = config.pod(
            &node
                .pod_config(backend, MESH)
                .label("app", "backend")
                .port("whoami", ECHO_PORT),
        );
    }
    start(
        &mut node,
        &config,
        &[&client_pod, &backends[0], &backends[1]],
        &options(capture),
    );
    let _servers: Vec<_> = backends
        .iter()
        .map(|pod| {
            node.start_server(
                pod,
                &["whoami-server", "--port", "8080", "--name", &pod.name],
            )
            .or_panic("whoami server")
        })
        .collect();

    let to = format!("{cluster_ip}:80");
    let report = client(&node, &client_pod, &["fetch", "--to", &to, "--count", "10"]);
    assert_eq!(report["ok"], true, "{report}");
    let names: Vec<&str> = report["replies"]
        .as_array()
        .map(|replies| replies.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names.len(), 10, "{report}");
    let mut counts = BTreeMap::new();
    for name in &names {
        *counts.entry(*name).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([("backend-1", 5), ("backend-2", 5)]),
        "replies: {names:?}"
    );
    assert!(
        names.windows(2).all(|pair| pair[0] != pair[1]),
        "round robin alternates backends: {names:?}"
    );

    let hostname = service.hostname();
    let metrics = node
        .wait_metrics("10 connections closed at the source", REPORT_TIMEOUT, |m| {
            sum(m, CLOSED, &[("reporter", "source")]) >= 10
        })
        .or_panic("metrics");
    for backend in &backends {
        let labels = [
            ("reporter", "source"),
            ("source_workload", "client"),
            ("destination_workload", backend.name.as_str()),
            ("destination_service", hostname.as_str()),
            ("destination_service_name", "backend"),
            ("destination_service_namespace", MESH),
        ];
        assert_eq!(
            sum(&metrics, OPENED, &labels),
            5,
            "{}",
            metrics.describe(OPENED)
        );
    }
    let log = node
        .wait_access_log("10 outbound lines", REPORT_TIMEOUT, |log| {
            log.matching(&[("reporter", "source")]).len() >= 10
        })
        .or_panic("access log");
    for backend in &backends {
        let upstream = backend.addr(ECHO_PORT).to_string();
        let lines = log.matching(&[
            ("reporter", "source"),
            ("dst_addr", &to),
            ("upstream_addr", &upstream),
            ("dst_service", &hostname),
        ]);
        assert_eq!(lines.len(), 5, "to {upstream}:\n{}", log.describe());
    }
}

/// Two pods match the Service's selector, but its EndpointSlice says otherwise: backend-1 is
/// listed not ready, backend-2 (named by its address alone) ready, at the slice's port. Every
/// connection goes to backend-2, labelled with its workload.
fn service_endpoints_come_from_its_endpoint_slice(test: &str, capture: CaptureMode) {
    let Some(mut node) = new_node(test) else {
        return;
    };
    let client_pod = node.add_pod("client", pod_ip(10)).or_panic("client pod");
    let backends = [
        node.add_pod("backend-1", pod_ip(21)).or_panic("backend-1"),
        node.add_pod("backend-2", pod_ip(22)).or_panic("backend-2"),
    ];
    let cluster_ip = Ipv4Addr::new(10, 96, 0, 10);
    // The Service's targetPort names no container port: only the slice gives the port.
    let service = ServiceConfig::new(MESH, "backend", cluster_ip)
        .select("app", "backend")
        .named_port("tcp-whoami", 80, "unlisted");
    let slice = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "backend-x1", "namespace": MESH,
                     "labels": {"kubernetes.io/service-name": "backend"}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp-whoami", "port": ECHO_PORT}],
        "endpoints": [
            {"addresses": [backends[0].ip.to_string()], "conditions": {"ready": false},
             "targetRef": {"kind": "Pod", "namespace": MESH, "name": backends[0].name}},
            {"addresses": [backends[1].ip.to_string()]}
        ]
    });
    let mut config = ClusterConfig::new()
        .namespace(&mesh_namespace())
        .pod(&node.pod_config(&client_pod, MESH))
        .service(&service)
        .raw(slice);
    for backend in &backends {
        config = config.pod(&node.pod_config(backend, MESH).label("app", "backend"));
    }
    start(
        &mut node,
        &config,
        &[&client_pod, &backends[0], &backends[1]],
        &options(capture),
    );
    let _servers: Vec<_> = backends
        .iter()
        .map(|pod| {
            node.start_server(
                pod,
                &["whoami-server", "--port", "8080", "--name", &pod.name],
            )
            .or_panic("whoami server")
        })
        .collect();

    let to = format!("{cluster_ip}:80");
    let report = client(&node, &client_pod, &["fetch", "--to", &to, "--count", "6"]);
    assert_eq!(report["ok"], true, "{report}");
    let names: Vec<&str> = report["replies"]
        .as_array()
        .map(|replies| replies.iter().filter_map(|r| r["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names, ["backend-2"; 6], "{report}");
    let labels = [
        ("reporter", "source"),
        ("destination_workload", "backend-2"),
        ("destination_service_name", "backend"),
    ];
    let metrics = node
        .wait_metrics("6 connections to backend-2", REPORT_TIMEOUT, |m| {
            sum(m, OPENED, &labels) >= 6
        })
        .or_panic("metrics");
    assert_eq!(
        sum(&metrics, OPENED, &labels),
        6,
        "{}",
        metrics.describe(OPENED)
    );
}

fn uncaptured_client_is_captured_only_inbound(test: &str, capture: CaptureMode) {
    let Some(mut node) = new_node(test) else {
        return;
    };
    let server = node.add_pod("server", pod_ip(20)).or_panic("server pod");
    let outsider = node
        .add_pod("outsider", pod_ip(30))
        .or_panic("outsider pod");
    let plain = node
        .add_pod("plain", pod_ip(40))
        .or_panic("plain server pod");
    let config = ClusterConfig::new()
        .namespace(&mesh_namespace())
        .namespace(&NamespaceConfig::new("legacy"))
        .pod(&node.pod_config(&server, MESH).port("tcp-echo", ECHO_PORT))
        .pod(&node.pod_config(&outsider, "legacy"))
        .pod(
            &node
                .pod_config(&plain, "legacy")
                .port("tcp-echo", ECHO_PORT),
        );
    start(&mut node, &config, &[&server], &options(capture));
    let workloads = node.admin().workloads().or_panic("workloads");
    for name in ["outsider", "plain"] {
        let view = workloads.iter().find(|w| w.name == name);
        assert!(
            view.is_some_and(|w| !w.captured),
            "{name} must not be captured: {workloads:?}"
        );
    }
    let _captured_echo = echo_server(&node, &server, ECHO_PORT, &[]);
    let _plain_echo = echo_server(&node, &plain, ECHO_PORT, &[]);

    send_ok(&node, &outsider, server.addr(ECHO_PORT), 64 << 10, 3);
    send_ok(&node, &outsider, plain.addr(ECHO_PORT), 64 << 10, 4);

    let inbound = [
        ("reporter", "destination"),
        ("source_workload", "outsider"),
        ("source_workload_namespace", "legacy"),
        ("destination_workload", "server"),
        ("destination_workload_namespace", MESH),
    ];
    let metrics = node
        .wait_metrics("the inbound connection closed", REPORT_TIMEOUT, |m| {
            sum(m, CLOSED, &inbound) >= 1
        })
        .or_panic("metrics");
    let described = metrics.describe(OPENED);
    assert_eq!(sum(&metrics, OPENED, &inbound), 1, "{described}");
    assert_eq!(
        sum(&metrics, RECEIVED_BYTES, &inbound),
        64 << 10,
        "{described}"
    );
    assert_eq!(
        sum(&metrics, OPENED, &[("reporter", "source")]),
        0,
        "{described}"
    );
    assert_eq!(
        sum(&metrics, OPENED, &[("destination_workload", "plain")]),
        0,
        "{described}"
    );
    assert_eq!(
        sum(&metrics, OPENED, &[]),
        1,
        "only the inbound connection: {described}"
    );

    let log = node.access_log().or_panic("access log");
    assert_eq!(log.entries.len(), 1, "{}", log.describe());
    let dst = server.addr(ECHO_PORT).to_string();
    let lines = log.matching(&[
        ("direction", "inbound"),
        ("reporter", "destination"),
        ("pod", "mesh/server"),
        ("src_workload", "outsider"),
        ("dst_workload", "server"),
        ("dst_addr", &dst),
        // Plaintext from a pod the proxy does not serve: nobody authenticated.
        ("src_principal", "unknown"),
        ("connection_security_policy", "none"),
        ("peer_security", "none"),
    ]);
    assert_eq!(lines.len(), 1, "{}", log.describe());
}

fn thousand_sequential_connections_are_each_counted_once(test: &str, capture: CaptureMode) {
    let Some((mut node, a, b)) = two_captured_pods(test, &options(capture)) else {
        return;
    };
    let _echo = echo_server(&node, &b, ECHO_PORT, &[]);
    let to = b.addr(ECHO_PORT).to_string();
    let report = client(
        &node,
        &a,
        &[
            "churn",
            "--to",
            &to,
            "--count",
            "1000",
            "--interval-ms",
            "0",
        ],
    );
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["succeeded"], 1000, "{report}");

    let metrics = node
        .wait_metrics(
            "1000 connections closed on both reporters",
            REPORT_TIMEOUT,
            |m| {
                sum(m, CLOSED, &flow("source", "a", "b")) >= 1000
                    && sum(m, CLOSED, &flow("destination", "a", "b")) >= 1000
            },
        )
        .or_panic("metrics");
    let described = metrics.describe(OPENED);
    for reporter in ["source", "destination"] {
        assert_eq!(
            sum(&metrics, OPENED, &flow(reporter, "a", "b")),
            1000,
            "{described}"
        );
    }
    // A loop (the proxy capturing its own dials) would show up as extra connections.
    assert_eq!(sum(&metrics, OPENED, &[]), 2000, "{described}");

    match capture {
        CaptureMode::Ebpf => connect4_refuses_direct_connections_to_the_proxy(&node, &a),
        CaptureMode::Iptables => proxy_refuses_direct_connections_as_loops(&mut node, &a),
    }
    let after = node.metrics().or_panic("metrics");
    let loop_refusals = match capture {
        CaptureMode::Ebpf => 0,
        CaptureMode::Iptables => 2,
    };
    assert_eq!(
        sum(&after, OPENED, &[]),
        2000 + loop_refusals,
        "{}",
        after.describe(OPENED)
    );
}

/// eBPF: `connect4` refuses an app's connect to 15001/15006 before any packet is sent.
fn connect4_refuses_direct_connections_to_the_proxy(node: &Node, pod: &Pod) {
    let admin = node.admin();
    let refusals = || {
        let stats = admin.map("STATS").or_panic("STATS");
        admin::counter(&stats, "direct_proxy_connect_refused")
            .unwrap_or_else(|| panic!("no direct_proxy_connect_refused in STATS: {stats}"))
    };
    let refused_before = refusals();
    for port in ["15001", "15006"] {
        let target = format!("127.0.0.1:{port}");
        let direct = client(node, pod, &["connect", "--to", &target]);
        assert_eq!(
            direct["connected"], false,
            "a direct connect to {target} must be refused: {direct}"
        );
    }
    assert_eq!(
        refusals() - refused_before,
        2,
        "both refusals came from connect4"
    );
}

/// iptables: loopback is never redirected, so an app's connect to 15001/15006 reaches the
/// proxy, which finds its own listener as the original destination and refuses, once each.
fn proxy_refuses_direct_connections_as_loops(node: &mut Node, pod: &Pod) {
    for port in ["15001", "15006"] {
        let target = format!("127.0.0.1:{port}");
        client(node, pod, &["connect", "--to", &target]);
    }
    let loops = |log: &shunt_tests::AccessLog| -> Vec<String> {
        log.entries
            .iter()
            .filter(|line| {
                line["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("refused to avoid a loop"))
            })
            .filter_map(|line| line["dst_addr"].as_str().map(str::to_owned))
            .collect()
    };
    let log = node
        .wait_access_log("both loop refusals", REPORT_TIMEOUT, |log| {
            loops(log).len() >= 2
        })
        .or_panic("access log");
    // A loop would keep adding lines: give it time to show.
    std::thread::sleep(Duration::from_millis(300));
    let log = node.access_log().unwrap_or(log);
    let mut refused = loops(&log);
    refused.sort();
    assert_eq!(
        refused,
        ["127.0.0.1:15001", "127.0.0.1:15006"],
        "{}",
        log.describe()
    );
    assert_eq!(log.entries.len(), 2002, "{}", log.describe());
}

fn excluded_ports_bypass_capture(test: &str, capture: CaptureMode) {
    let Some(mut node) = new_node(test) else {
        return;
    };
    let a = node.add_pod("a", pod_ip(10)).or_panic("pod a");
    let b = node.add_pod("b", pod_ip(20)).or_panic("pod b");
    // 9090: a skips it outbound; 9091: b skips it inbound; 9092: both.
    let config = ClusterConfig::new()
        .namespace(&mesh_namespace())
        .pod(
            &node
                .pod_config(&a, MESH)
                .annotation(EXCLUDE_OUTBOUND_PORTS, "9090,9092"),
        )
        .pod(
            &node
                .pod_config(&b, MESH)
                .annotation(EXCLUDE_INBOUND_PORTS, "9091,9092"),
        );
    start(&mut node, &config, &[&a, &b], &options(capture));
    let ports = [ECHO_PORT, 9090, 9091, 9092];
    let _servers: Vec<_> = ports
        .iter()
        .map(|&port| echo_server(&node, &b, port, &[]))
        .collect();
    for (seed, port) in (10..).zip(ports) {
        send_ok(&node, &a, b.addr(port), 64 << 10, seed);
    }

    let expected = |reporter: &str| -> BTreeSet<String> {
        let ports: &[u16] = if reporter == "source" {
            &[ECHO_PORT, 9091]
        } else {
            &[ECHO_PORT, 9090]
        };
        ports.iter().map(|&p| b.addr(p).to_string()).collect()
    };
    let log = node
        .wait_access_log("4 access log lines", REPORT_TIMEOUT, |log| {
            log.entries.len() >= 4
        })
        .or_panic("access log");
    // Give a wrongly captured connection's line time to show up before judging.
    std::thread::sleep(Duration::from_millis(500));
    let log = node.access_log().unwrap_or(log);
    for reporter in ["source", "destination"] {
        let seen: BTreeSet<String> = log
            .matching(&[("reporter", reporter)])
            .iter()
            .filter_map(|line| line["dst_addr"].as_str().map(str::to_owned))
            .collect();
        assert_eq!(seen, expected(reporter), "{reporter}:\n{}", log.describe());
    }
    assert_eq!(log.entries.len(), 4, "{}", log.describe());
    let metrics = node.metrics().or_panic("metrics");
    for reporter in ["source", "destination"] {
        assert_eq!(
            sum(&metrics, OPENED, &flow(reporter, "a", "b")),
            2,
            "{}",
            metrics.describe(OPENED)
        );
    }
}

/// `<bpffs>/shunt/<instance>`: the node's pin folder.
fn pin_dir(node: &Node) -> PathBuf {
    let bpffs = shunt_tests::mounts::bpffs()
        .or_panic("/proc/mounts")
        .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"));
    bpffs.join("shunt").join(node.instance())
}

/// `<bpffs>/shunt/<instance>/links/sk_lookup-<cookie>`: the pinned inbound link of one pod.
fn sk_lookup_pin(node: &Node, netns_cookie: u64) -> PathBuf {
    pin_dir(node)
        .join("links")
        .join(format!("sk_lookup-{netns_cookie}"))
}

fn pod_removed_from_config_is_released(test: &str, capture: CaptureMode) {
    let Some((mut node, a, b)) = two_captured_pods(test, &options(capture)) else {
        return;
    };
    let views = node.wait_captured(&[&a]).or_panic("a captured");
    let cookie = views[0]
        .netns_cookie
        .unwrap_or_else(|| panic!("captured pod a has no netns cookie: {views:?}"));
    let admin = node.admin();
    let status = admin.status().or_panic("status");
    assert_eq!(status["capture_mode"], capture.name(), "{status}");
    let pin = sk_lookup_pin(&node, cookie);
    match capture {
        CaptureMode::Ebpf => {
            let meshed = admin.map("MESHED_NETNS").or_panic("MESHED_NETNS");
            assert!(
                admin::mentions_u64(&meshed, cookie),
                "a's cookie {cookie} in {meshed}"
            );
            assert!(
                pin.exists(),
                "{} should be pinned while a is captured",
                pin.display()
            );
        }
        CaptureMode::Iptables => {
            for pod in [&a, &b] {
                let rules = node.nat_table(pod).or_panic("nat table");
                assert!(
                    has_shunt_rules(&rules),
                    "{}'s nat table:\n{rules}",
                    pod.name
                );
            }
            // No eBPF at all in this mode.
            assert!(status["pin_dir"].is_null(), "{status}");
            assert!(admin.map("MESHED_NETNS").is_err(), "no maps under iptables");
        }
    }

    let _echo = echo_server(&node, &b, ECHO_PORT, &[]);
    send_ok(&node, &a, b.addr(ECHO_PORT), 4096, 20);
    node.wait_access_log(
        "a's first connection, on both reporters",
        REPORT_TIMEOUT,
        |log| log.entries.len() >= 2,
    )
    .or_panic("access log");

    node.write_config(&mesh_config(&node, &[&b]))
        .or_panic("config without a");
    node.wait_while_running(
        "a to leave /workloads and its capture state to go",
        REPORT_TIMEOUT,
        |n| {
            let workloads = match n.admin().workloads() {
                Ok(w) => w,
                Err(e) => return Check::NotYet(e.to_string()),
            };
            if workloads.iter().any(|w| w.name == "a" && w.captured) {
                return Check::NotYet(format!("{workloads:?}"));
            }
            match capture_state_left(n, capture, &a, cookie) {
                Some(left) => Check::NotYet(left),
                None => Check::Done(()),
            }
        },
    )
    .or_panic("releasing a");
    match capture {
        CaptureMode::Ebpf => {
            assert!(!pin.exists(), "{} should be unpinned", pin.display());
            let listeners = admin.map("INBOUND_LISTENERS").or_panic("INBOUND_LISTENERS");
            let listener_ips: Vec<&str> = admin::entries(&listeners)
                .into_iter()
                .filter_map(|(key, _)| key["pod_ip"].as_str())
                .collect();
            assert_eq!(
                listener_ips,
                [b.ip.to_string()],
                "only b's listener is left: {listeners}"
            );
        }
        CaptureMode::Iptables => {
            let rules = node.nat_table(&b).or_panic("b's nat table");
            assert!(has_shunt_rules(&rules), "b keeps its rules:\n{rules}");
        }
    }

    // a's connections now leave uncaptured: only b's inbound side reports them.
    send_ok(&node, &a, b.addr(ECHO_PORT), 4096, 21);
    let log = node
        .wait_access_log(
            "a's second connection, inbound at b",
            REPORT_TIMEOUT,
            |log| log.entries.len() >= 3,
        )
        .or_panic("access log");
    std::thread::sleep(Duration::from_millis(300));
    let log = node.access_log().unwrap_or(log);
    assert_eq!(
        log.matching(&[("reporter", "source")]).len(),
        1,
        "{}",
        log.describe()
    );
    assert_eq!(
        log.matching(&[("reporter", "destination")]).len(),
        2,
        "{}",
        log.describe()
    );
    // And the proxy closed its listeners in a's netns.
    let direct = client(&node, &a, &["connect", "--to", "127.0.0.1:15001"]);
    assert_eq!(direct["kind"], "ConnectionRefused", "{direct}");
}

/// Whether a nat table listing holds any of shunt's chains.
fn has_shunt_rules(nat_table: &str) -> bool {
    nat_table.lines().any(|line| line.contains("SHUNT_"))
}

/// What is left of pod `pod`'s capture state (netns `cookie`), or `None` when nothing is.
fn capture_state_left(node: &Node, capture: CaptureMode, pod: &Pod, cookie: u64) -> Option<String> {
    match capture {
        CaptureMode::Ebpf => {
            let admin = node.admin();
            for map in [
                "MESHED_NETNS",
                "OUTBOUND_EXCLUDED_PORTS",
                "ORIG_DST_BY_CLIENT",
            ] {
                match admin.map(map) {
                    Ok(dump) if admin::mentions_u64(&dump, cookie) => {
                        return Some(format!("{map} still has {cookie}: {dump}"));
                    }
                    Ok(_) => {}
                    Err(e) => return Some(e.to_string()),
                }
            }
            None
        }
        CaptureMode::Iptables => match node.nat_table(pod) {
            Ok(rules) if has_shunt_rules(&rules) => Some(format!(
                "{}'s nat table still has shunt's rules:\n{rules}",
                pod.name
            )),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        },
    }
}

fn agent_sigkill_and_restart_keep_capture_without_failures(test: &str, capture: CaptureMode) {
    /// Churn connections the proxy must see before the kill, and again after the restart.
    const CHURN_STEP: u64 = 20;
    let options = options(capture);
    let Some((mut node, a, b)) = two_captured_pods(test, &options) else {
        return;
    };
    let _echo = echo_server(&node, &b, ECHO_PORT, &[]);
    let to = b.addr(ECHO_PORT).to_string();
    let stop_file = node.dir().join("stop-clients");
    let stop = stop_file.to_string_lossy().into_owned();
    let churn = node
        .testpod(
            &a,
            &[
                "churn",
                "--to",
                &to,
                "--count",
                "100000",
                "--interval-ms",
                "10",
                "--until-file",
                &stop,
            ],
        )
        .or_panic("churn");
    let hold = node
        .testpod(
            &a,
            &[
                "hold",
                "--to",
                &to,
                "--seconds",
                "120",
                "--until-file",
                &stop,
            ],
        )
        .or_panic("hold");
    // Connections the proxy has seen open (the held one among them), before the kill and
    // again after the restart: how far the churn has got, whatever the machine's speed (no
    // timings are asserted).
    let opened = |m: &Metrics| sum(m, OPENED, &flow("source", "a", "b"));
    node.wait_metrics("the churn under way", REPORT_TIMEOUT, |m| {
        opened(m) > CHURN_STEP
    })
    .or_panic("metrics");

    node.kill_agent().or_panic("SIGKILL agent");
    // Capture has to carry on with no agent at all.
    std::thread::sleep(Duration::from_millis(500));
    node.start_agent(&options).or_panic("restarting the agent");
    node.wait_captured(&[&a, &b])
        .or_panic("capture after restart");
    let at_restart = opened(&node.metrics().or_panic("metrics"));
    node.wait_metrics(
        "the churn going on after the restart",
        REPORT_TIMEOUT,
        |m| opened(m) >= at_restart + CHURN_STEP,
    )
    .or_panic("metrics");
    std::fs::write(&stop_file, "").or_panic("stop file");

    let churn = churn
        .finish(common::CLIENT_TIMEOUT)
        .or_panic("churn")
        .json()
        .or_panic("churn report");
    let hold = hold
        .finish(common::CLIENT_TIMEOUT)
        .or_panic("hold")
        .json()
        .or_panic("hold report");
    assert_eq!(churn["failed"], 0, "{churn}");
    assert_eq!(churn["ok"], true, "{churn}");
    assert_eq!(hold["ok"], true, "{hold}");
    let succeeded = churn["succeeded"].as_u64().unwrap_or_default();
    assert!(
        succeeded >= 2 * CHURN_STEP,
        "churn ran across the restart: {churn}"
    );

    // Every connection went through the proxy: capture never lapsed.
    let expected = succeeded + 1;
    let metrics = node
        .wait_metrics(
            "every churn connection and the held one closed",
            REPORT_TIMEOUT,
            |m| sum(m, CLOSED, &flow("source", "a", "b")) >= expected,
        )
        .or_panic("metrics");
    for reporter in ["source", "destination"] {
        assert_eq!(
            sum(&metrics, OPENED, &flow(reporter, "a", "b")),
            expected,
            "{reporter}: churn {succeeded} + 1 held\n{}",
            metrics.describe(OPENED)
        );
    }
}

/// A proxy rollout as the DaemonSet's `maxSurge: 1` makes it: a second proxy starts beside
/// the first and takes over the pods (the agent hands it the first one's listening sockets),
/// then the first is SIGTERMed and drains. A churn of short connections runs throughout: not
/// one may fail.
fn proxy_rollout_refuses_no_connection(test: &str, capture: CaptureMode) {
    /// Churn connections each proxy must see before the next step.
    const CHURN_STEP: u64 = 20;
    let options = options(capture);
    let Some((mut node, a, b)) = two_captured_pods(test, &options) else {
        return;
    };
    let _echo = echo_server(&node, &b, ECHO_PORT, &[]);
    let to = b.addr(ECHO_PORT).to_string();
    let stop_file = node.dir().join("stop-clients");
    let stop = stop_file.to_string_lossy().into_owned();
    let churn = node
        .testpod(
            &a,
            &[
                "churn",
                "--to",
                &to,
                "--count",
                "100000",
                "--interval-ms",
                "10",
                "--until-file",
                &stop,
            ],
        )
        .or_panic("churn");
    let opened = |m: &Metrics| sum(m, OPENED, &flow("source", "a", "b"));
    node.wait_metrics("the churn under way", REPORT_TIMEOUT, |m| {
        opened(m) > CHURN_STEP
    })
    .or_panic("metrics");

    let mut old = node.start_next_proxy().or_panic("the second proxy");
    node.wait_captured(&[&a, &b])
        .or_panic("the pods handed to the second proxy");
    // The new proxy's own counters: it serves the churn while the old one still runs.
    node.wait_metrics("the second proxy serving the churn", REPORT_TIMEOUT, |m| {
        opened(m) >= CHURN_STEP
    })
    .or_panic("metrics");
    let status = old.stop(Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "the old proxy drains and exits cleanly on SIGTERM: {status:?}"
    );
    let at_stop = opened(&node.metrics().or_panic("metrics"));
    node.wait_metrics(
        "the churn going on after the old proxy left",
        REPORT_TIMEOUT,
        |m| opened(m) >= at_stop + CHURN_STEP,
    )
    .or_panic("metrics");
    std::fs::write(&stop_file, "").or_panic("stop file");

    let churn = churn
        .finish(common::CLIENT_TIMEOUT)
        .or_panic("churn")
        .json()
        .or_panic("churn report");
    assert_eq!(churn["failed"], 0, "{churn}");
    assert_eq!(churn["ok"], true, "{churn}");
    assert!(
        churn["succeeded"].as_u64().unwrap_or_default() >= 3 * CHURN_STEP,
        "churn ran across the rollout: {churn}"
    );
}

#[test]
fn sockmap_shortcut_on_and_off_deliver_identical_bytes() {
    let Some((mut node, a, b, _echo)) =
        shortcut_pods("e2e::sockmap_shortcut_on_and_off_deliver_identical_bytes")
    else {
        return;
    };
    let admin = node.admin();
    let redirects = || stat(&admin, "shortcut_redirects");
    let shortcut_setting = || admin.status().or_panic("status")["sockmap_shortcut"].clone();

    assert_eq!(shortcut_setting(), true);
    let before = redirects();
    // The kernel's sockmap receive path can fail a blocking read with a spurious EAGAIN (why
    // the shortcut is off by default); this client retries those, so what is compared here is
    // the bytes the shortcut delivers.
    let on = send_ok_with(
        &node,
        &a,
        b.addr(ECHO_PORT),
        MIB,
        8,
        &["--retry-spurious-eagain"],
    );
    print_retries(&on);
    let with_shortcut = redirects();
    assert!(
        with_shortcut > before,
        "the shortcut redirected nothing ({before} → {with_shortcut})"
    );

    node.stop_agent().or_panic("stopping the agent");
    let off_options = AgentOptions {
        sockmap_shortcut: false,
        ..AgentOptions::default()
    };
    node.start_agent(&off_options)
        .or_panic("agent without the shortcut");
    node.wait_captured(&[&a, &b])
        .or_panic("capture after restart");
    assert_eq!(shortcut_setting(), false);
    let off = send_ok(&node, &a, b.addr(ECHO_PORT), MIB, 8);
    assert_eq!(
        redirects(),
        with_shortcut,
        "redirects while the shortcut is off"
    );

    assert_eq!(
        on["received_hash"], off["received_hash"],
        "on: {on}\noff: {off}"
    );
    assert_eq!(on["sent_hash"], off["sent_hash"]);
}

/// With the shortcut on, an opaque TCP connection between two pods of the node is spliced
/// once the proxy has forwarded each direction twice: the apps' messages then go straight into
/// each other's receive queues. The bytes arrive whole and in order, each reporter still counts
/// every byte, and the connection leaves no splice route behind.
#[test]
fn sockmap_shortcut_splices_opaque_tcp_and_counts_every_byte() {
    const CHUNK: u64 = 64;
    const ROUNDS: u64 = 1024;
    let Some((mut node, a, b, _echo)) =
        shortcut_pods("e2e::sockmap_shortcut_splices_opaque_tcp_and_counts_every_byte")
    else {
        return;
    };
    let admin = node.admin();
    let counter = |name: &str| stat(&admin, name);
    let before = counter("splice_redirects");
    // One chunk out, its echo back, ROUNDS times: after the second round both directions
    // are spliced, so nearly every later message skips the proxy.
    let (lockstep, chunk) = (ROUNDS * CHUNK, CHUNK.to_string());
    print_retries(&send_ok_with(
        &node,
        &a,
        b.addr(ECHO_PORT),
        lockstep,
        11,
        &["--retry-spurious-eagain", "--lockstep", &chunk],
    ));
    let spliced = counter("splice_redirects") - before;
    assert!(
        spliced >= ROUNDS,
        "only {spliced} of {} messages were spliced",
        2 * ROUNDS
    );
    // Both ways at once, 64 KiB writes: the splice starts while bytes are in flight.
    print_retries(&send_ok_with(
        &node,
        &a,
        b.addr(ECHO_PORT),
        8 * MIB,
        12,
        &["--retry-spurious-eagain"],
    ));

    let log = node
        .wait_access_log("4 access log lines", REPORT_TIMEOUT, |log| {
            log.entries.len() >= 4
        })
        .or_panic("access log");
    for (reporter, pod) in [("source", "mesh/a"), ("destination", "mesh/b")] {
        for bytes in [lockstep, 8 * MIB] {
            let bytes = bytes.to_string();
            let lines = log.matching(&[
                ("reporter", reporter),
                ("pod", pod),
                ("bytes_received", &bytes),
                ("bytes_sent", &bytes),
                ("close_reason", "eof"),
            ]);
            assert_eq!(lines.len(), 1, "{reporter}, {bytes} B:\n{}", log.describe());
        }
    }
    let metrics = node
        .wait_metrics("both connections closed", REPORT_TIMEOUT, |m| {
            sum(m, CLOSED, &flow("destination", "a", "b")) >= 2
        })
        .or_panic("metrics");
    for reporter in ["source", "destination"] {
        let labels = flow(reporter, "a", "b");
        assert_eq!(
            sum(&metrics, RECEIVED_BYTES, &labels),
            lockstep + 8 * MIB,
            "{reporter}: {}",
            metrics.describe(RECEIVED_BYTES)
        );
        assert_eq!(sum(&metrics, SENT_BYTES, &labels), lockstep + 8 * MIB);
    }
    // Short connections, one exchange each, are never spliced: only the programs' own
    // cleanup at close removes their sockets' counts.
    for seed in 0..10 {
        print_retries(&send_ok_with(
            &node,
            &a,
            b.addr(ECHO_PORT),
            100,
            20 + seed,
            &["--retry-spurious-eagain"],
        ));
    }
    // The proxy removes what it splices with; the programs drop a socket's counts when it
    // closes, so nothing of the connections outlives them.
    let deadline = std::time::Instant::now() + REPORT_TIMEOUT;
    for map in ["SPLICE_ROUTES", "SPLICED_BYTES", "SHORTCUT_BYTES"] {
        loop {
            let entries = admin.map(map).or_panic(map);
            if entries == serde_json::json!([]) {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{map} kept entries of closed connections: {entries}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A spliced connection's bytes reach its counters while it lasts, as a proxied one's do:
/// every 5 s (Istio's TCP reporting interval), not only when it closes.
#[test]
fn sockmap_shortcut_counts_spliced_bytes_while_the_connection_lasts() {
    /// Pings of 8 bytes every 20 ms for 9 s: about 3.6 KB each way, nearly all spliced.
    const HOLD_SECONDS: &str = "9";
    /// Well above what the proxy forwards itself before the splice (two pings each way).
    const COUNTED_BEFORE_CLOSE: u64 = 1024;
    let Some((mut node, a, b, _echo)) =
        shortcut_pods("e2e::sockmap_shortcut_counts_spliced_bytes_while_the_connection_lasts")
    else {
        return;
    };
    let admin = node.admin();
    let redirects = || stat(&admin, "splice_redirects");
    let before = redirects();
    let to = b.addr(ECHO_PORT).to_string();
    let mut hold = node
        .testpod(
            &a,
            &[
                "hold",
                "--to",
                &to,
                "--seconds",
                HOLD_SECONDS,
                "--interval-ms",
                "20",
                "--retry-spurious-eagain",
            ],
        )
        .or_panic("hold");
    let labels = flow("source", "a", "b");
    let metrics = node
        .wait_metrics("spliced bytes counted", REPORT_TIMEOUT, |m| {
            sum(m, RECEIVED_BYTES, &labels) >= COUNTED_BEFORE_CLOSE
                && sum(m, SENT_BYTES, &labels) >= COUNTED_BEFORE_CLOSE
        })
        .or_panic("metrics");
    assert_eq!(
        hold.exit_status().or_panic("hold status"),
        None,
        "the connection closed before its spliced bytes were counted: {}",
        metrics.describe(RECEIVED_BYTES)
    );
    assert_eq!(
        sum(&metrics, CLOSED, &labels),
        0,
        "{}",
        metrics.describe(CLOSED)
    );
    let hold = hold
        .finish(common::CLIENT_TIMEOUT)
        .or_panic("hold")
        .json()
        .or_panic("hold report");
    assert_eq!(hold["ok"], true, "{hold}");
    print_retries(&hold);
    assert!(
        redirects() - before >= 100,
        "the pings were not spliced: {hold}"
    );
    // At close the rest is added, and every byte is counted once.
    let pinged = hold["pings"].as_u64().unwrap_or_default() * 8;
    let metrics = node
        .wait_metrics("the connection closed", REPORT_TIMEOUT, |m| {
            sum(m, CLOSED, &labels) >= 1
        })
        .or_panic("metrics");
    assert_eq!(sum(&metrics, RECEIVED_BYTES, &labels), pinged);
    assert_eq!(sum(&metrics, SENT_BYTES, &labels), pinged);
}

#[test]
fn iptables_rules_outlive_the_agent_until_uninstall() {
    let Some((mut node, a, b)) = two_captured_pods(
        "e2e::iptables_rules_outlive_the_agent_until_uninstall",
        &options(CaptureMode::Iptables),
    ) else {
        return;
    };
    let pin_dir = pin_dir(&node);
    assert!(
        !pin_dir.exists(),
        "iptables capture loads no eBPF, yet {} exists",
        pin_dir.display()
    );
    let records = node.run_dir().join("iptables");
    let installed: BTreeMap<String, String> = [&a, &b]
        .into_iter()
        .map(|pod| (pod.name.clone(), node.nat_table(pod).or_panic("nat table")))
        .collect();

    node.stop_agent().or_panic("stopping the agent");
    for pod in [&a, &b] {
        let rules = node.nat_table(pod).or_panic("nat table");
        assert_eq!(
            rules, installed[&pod.name],
            "{}'s rules stay while the agent is away",
            pod.name
        );
    }
    let _echo = echo_server(&node, &b, ECHO_PORT, &[]);
    send_ok(&node, &a, b.addr(ECHO_PORT), 4096, 30);

    // eBPF capture on top would capture the same pods twice: the agent refuses to start.
    let refused = node
        .start_agent(&options(CaptureMode::Ebpf))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        refused.contains("would capture its pods twice"),
        "an eBPF agent must refuse while iptables capture is installed: {refused:?}"
    );
    assert!(
        !pin_dir.exists(),
        "the refused agent pinned nothing at {}",
        pin_dir.display()
    );

    // No agent running: uninstall finds the pods from the records in the run dir.
    node.uninstall().or_panic("shunt-agent --uninstall");
    for pod in [&a, &b] {
        let rules = node.nat_table(pod).or_panic("nat table");
        assert!(
            !has_shunt_rules(&rules),
            "{}'s nat table:\n{rules}",
            pod.name
        );
    }
    assert!(!records.exists(), "{} was removed", records.display());
}

in_both_capture_modes!(same_node_tcp_takes_one_proxy_pass);

/// a → b on the same node: the proxy dials b's app from b's netns (b's inbound listener is
/// skipped), and still reports each connection once per reporter.
fn same_node_tcp_takes_one_proxy_pass(test: &str, capture: CaptureMode) {
    let Some((mut node, a, b)) = two_captured_pods(test, &options(capture)) else {
        return;
    };
    let _echo = echo_server(&node, &b, ECHO_PORT, &[]);
    for seed in 0..3 {
        send_ok(&node, &a, b.addr(ECHO_PORT), 4096, 40 + seed);
    }
    let metrics = node
        .wait_metrics("3 connections on both reporters", REPORT_TIMEOUT, |m| {
            sum(m, CLOSED, &flow("source", "a", "b")) >= 3
                && sum(m, CLOSED, &flow("destination", "a", "b")) >= 3
        })
        .or_panic("metrics");
    for reporter in ["source", "destination"] {
        assert_eq!(
            sum(&metrics, OPENED, &flow(reporter, "a", "b")),
            3,
            "{}",
            metrics.describe(OPENED)
        );
    }
    assert_eq!(
        sum(&metrics, "shunt_same_node_connections_total", &[]),
        3,
        "{}",
        metrics.describe("shunt_same_node_connections_total")
    );
    let log = node
        .wait_access_log("6 access log lines", REPORT_TIMEOUT, |log| {
            log.entries.len() >= 6
        })
        .or_panic("access log");
    assert_eq!(log.entries.len(), 6, "{}", log.describe());
    let inbound = log.matching(&[
        ("direction", "inbound"),
        ("reporter", "destination"),
        ("pod", "mesh/b"),
        ("src_workload", "a"),
        ("bytes_received", "4096"),
        ("bytes_sent", "4096"),
        ("close_reason", "eof"),
    ]);
    assert_eq!(inbound.len(), 3, "{}", log.describe());
}

/// `shunt-agent --bpf-log warn`: an app dialling the proxy's outbound port itself is refused by
/// `cgroup/connect4`, which reports it; the agent's log says so, naming the pod.
#[test]
fn bpf_log_reports_a_refused_direct_connect_with_its_pod() {
    let options = AgentOptions {
        extra_args: vec!["--bpf-log".into(), "warn".into()],
        ..AgentOptions::default()
    };
    let Some((mut node, a, _b)) = two_captured_pods(
        "e2e::bpf_log_reports_a_refused_direct_connect_with_its_pod",
        &options,
    ) else {
        return;
    };
    let direct = client(&node, &a, &["connect", "--to", "127.0.0.1:15001"]);
    assert_eq!(direct["os_error"], libc::EPERM, "{direct}");
    let Some(agent) = node.agent_process() else {
        panic!("the agent is not running");
    };
    let line = shunt_tests::wait::until("the agent's log line", REPORT_TIMEOUT, || {
        let log = agent.stderr();
        match log
            .lines()
            .find(|line| line.contains("refused an app's connect to 127.0.0.1:15001"))
        {
            Some(line) => Check::Done(line.to_owned()),
            None => Check::NotYet(shunt_tests::process::tail_of(&log, 5)),
        }
    })
    .or_panic("the refusal in the agent's log");
    println!("agent: {line}");
    for field in ["WARN", "pod=\"mesh/a\"", "program=\"shunt_ebpf::connect\""] {
        assert!(line.contains(field), "{field} in {line}");
    }
}
