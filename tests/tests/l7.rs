//! End to end, L7 (issue 3): Istio VirtualService, DestinationRule, ServiceEntry and shunt's
//! RateLimitPolicy applied by the node proxy to captured HTTP/1.1, h2, gRPC, WebSocket, TLS and
//! TCP traffic. Every test runs as root (skipping, saying so, otherwise) on its own node named
//! after it, in eBPF capture mode. Clients and servers run in pods: `shunt-httppod` (HTTP,
//! gRPC, WebSocket), `shunt-testpod` (TCP), curl, and openssl (TLS).
//!
//! The routing is at the source (the client pod's outbound listener), so the source reporter's
//! metrics and outbound access log lines carry the L7 labels and flags checked here.

#[expect(
    dead_code,
    reason = "the TCP echo helpers of the shared module are for e2e.rs"
)]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{OrPanic, pod_ip};
use serde_json::{Value, json};
use shunt_tests::istio::{self, destination_rule, subsets_by_version, virtual_service};
use shunt_tests::{
    AccessLog, AgentOptions, ClusterConfig, Metrics, NamespaceConfig, Node, Pod, ServiceConfig,
};

/// The injected namespace of the client and the backends.
const MESH: &str = "mesh";
/// Where `shunt-httppod serve` listens in every backend pod.
const HTTP_PORT: u16 = 8080;
/// Where the backends' gRPC Health server listens.
const GRPC_PORT: u16 = 9090;
/// Every Service's HTTP port.
const SERVICE_PORT: u16 = 80;
/// One client run (the longest sends 1000 requests).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// For the proxy to report what the clients already finished, or apply a config change.
const REPORT_TIMEOUT: Duration = Duration::from_secs(15);

const REQUESTS: &str = "istio_requests_total";

/// A backend pod: `app` and `version` labels, `http` (8080) and `grpc` (9090) ports.
struct Backend {
    name: &'static str,
    app: &'static str,
    version: &'static str,
    /// [`MESH`] (captured), or a namespace without injection.
    namespace: &'static str,
}

const fn backend(name: &'static str, app: &'static str, version: &'static str) -> Backend {
    Backend {
        name,
        app,
        version,
        namespace: MESH,
    }
}

/// A ClusterIP Service selecting `app`, port 80 named `port_name` to `target_port`.
struct Svc {
    name: &'static str,
    ip: Ipv4Addr,
    port: u16,
    port_name: &'static str,
    target_port: u16,
}

const fn http_service(name: &'static str, last: u8) -> Svc {
    Svc {
        name,
        ip: Ipv4Addr::new(10, 96, 0, last),
        port: SERVICE_PORT,
        port_name: "http",
        target_port: HTTP_PORT,
    }
}

/// A node with a captured `client` pod (10.244.0.10) and the backends (10.244.0.21, .22, ...).
struct L7 {
    node: Node,
    client: Pod,
    pods: BTreeMap<&'static str, Pod>,
    servers: Vec<shunt_tests::Process>,
}

impl L7 {
    /// Starts agent and proxy with the cluster objects and `istio` (in their own file, which a
    /// test may rewrite), and waits for capture. `None` when not root.
    fn start(test: &str, services: &[Svc], backends: &[Backend], istio: &[Value]) -> Option<Self> {
        if shunt_tests::skip_unless_root(test) {
            return None;
        }
        let binaries = common::binaries();
        binaries.require_all().or_panic("binaries under test");
        binaries.httppod().or_panic("shunt-httppod");
        let mut node = Node::with_binaries(test, binaries).or_panic("creating the node");
        let client = node.add_pod("client", pod_ip(10)).or_panic("client pod");
        let mut config = ClusterConfig::new()
            .namespace(&NamespaceConfig::injected(MESH))
            .pod(&node.pod_config(&client, MESH).label("app", "client"));
        let mut pods = BTreeMap::new();
        let mut captured = vec![client.clone()];
        let other_namespaces: BTreeSet<&str> = backends
            .iter()
            .map(|b| b.namespace)
            .filter(|ns| *ns != MESH)
            .collect();
        for namespace in other_namespaces {
            config = config.namespace(&NamespaceConfig::new(namespace));
        }
        for (i, b) in backends.iter().enumerate() {
            let last = 21 + u8::try_from(i).or_panic("backend count");
            let pod = node.add_pod(b.name, pod_ip(last)).or_panic(b.name);
            if b.namespace == MESH {
                captured.push(pod.clone());
            }
            config = config.pod(
                &node
                    .pod_config(&pod, b.namespace)
                    .label("app", b.app)
                    .label("version", b.version)
                    .port("http", HTTP_PORT)
                    .port("grpc", GRPC_PORT),
            );
            pods.insert(b.name, pod);
        }
        for s in services {
            config = config.service(
                &ServiceConfig::new(MESH, s.name, s.ip)
                    .select("app", s.name)
                    .port(s.port_name, s.port, s.target_port),
            );
        }
        node.write_config(&config)
            .or_panic("writing the cluster config");
        node.write_istio(istio).or_panic("writing the Istio config");
        node.start_agent(&AgentOptions::default())
            .or_panic("starting the agent");
        let loaded = node.admin().config().or_panic("GET /config");
        assert_eq!(
            loaded["errors"],
            json!([]),
            "the agent rejected part of the config: {loaded}"
        );
        node.start_proxy().or_panic("starting the proxy");
        let captured: Vec<&Pod> = captured.iter().collect();
        node.wait_captured(&captured)
            .or_panic("waiting for capture");
        Some(Self {
            node,
            client,
            pods,
            servers: Vec::new(),
        })
    }

    fn pod(&self, name: &str) -> &Pod {
        self.pods
            .get(name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// `shunt-httppod serve` in pod `name` (HTTP 8080, gRPC 9090, WebSocket) plus `extra`.
    fn serve(&mut self, name: &'static str, extra: &[&str]) {
        let (http, grpc) = (HTTP_PORT.to_string(), GRPC_PORT.to_string());
        let mut args = vec![
            "serve",
            "--port",
            &http,
            "--grpc-port",
            &grpc,
            "--ws",
            "--name",
            name,
        ];
        args.extend_from_slice(extra);
        let server = self
            .node
            .start_httppod_server(self.pod(name), &args)
            .or_panic(&format!("httppod server in {name}"));
        self.servers.push(server);
    }

    fn serve_all(&mut self, names: &[&'static str]) {
        for name in names {
            self.serve(name, &[]);
        }
    }

    /// Runs a `shunt-httppod` client in the client pod; its JSON report.
    fn run(&self, args: &[&str]) -> Value {
        httppod_json(&self.node, &self.client, args)
    }

    /// `shunt-httppod http --url URL ARGS...` from the client pod.
    fn http(&self, url: &str, args: &[&str]) -> Value {
        let mut all = vec!["http", "--url", url];
        all.extend_from_slice(args);
        self.run(&all)
    }

    /// What the server in pod `name` has seen (asked over its own loopback, not captured).
    fn seen(&self, name: &str) -> Value {
        let addr = format!("127.0.0.1:{HTTP_PORT}");
        httppod_json(&self.node, self.pod(name), &["count", "--addr", &addr])
    }

    fn seen_total(&self, name: &str) -> u64 {
        let seen = self.seen(name);
        seen["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("count of {name}: {seen}"))
    }

    /// Waits until `istio_requests_total` (source reporter) with `labels` reaches `want`, then
    /// asserts it is exactly `want`; returns the scrape.
    fn expect_requests(&mut self, labels: &[(&str, &str)], want: u64) -> Metrics {
        let mut all = vec![("reporter", "source")];
        all.extend_from_slice(labels);
        let metrics = self
            .node
            .wait_metrics(
                &format!("{REQUESTS} {all:?} >= {want}"),
                REPORT_TIMEOUT,
                |m| sum(m, REQUESTS, &all) >= want,
            )
            .or_panic("metrics");
        assert_eq!(
            sum(&metrics, REQUESTS, &all),
            want,
            "{}",
            metrics.describe(REQUESTS)
        );
        metrics
    }

    /// Waits until the access log has `want` request lines matching `fields`, then asserts it
    /// is exactly `want`; returns the log.
    fn expect_log_lines(&mut self, fields: &[(&str, &str)], want: usize) -> AccessLog {
        let log = self
            .node
            .wait_access_log(
                &format!("{want} access log lines {fields:?}"),
                REPORT_TIMEOUT,
                |log| log.matching(fields).len() >= want,
            )
            .or_panic("access log");
        assert_eq!(
            log.matching(fields).len(),
            want,
            "{fields:?}\n{}",
            log.describe()
        );
        log
    }

    /// Both the metrics and the access log saw `want` requests answered `code` with `flag`.
    fn expect_flag(&mut self, code: &str, flag: &str, want: u64) {
        self.expect_requests(&[("response_code", code), ("response_flags", flag)], want);
        self.expect_log_lines(
            &[("response_code", code), ("response_flags", flag)],
            usize::try_from(want).or_panic("count"),
        );
    }
}

fn httppod_json(node: &Node, pod: &Pod, args: &[&str]) -> Value {
    let output = node
        .run_httppod(pod, args, CLIENT_TIMEOUT)
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

fn sum(metrics: &Metrics, name: &str, labels: &[(&str, &str)]) -> u64 {
    let value = metrics.sum(name, labels);
    assert!(
        value >= 0.0 && value.fract() == 0.0,
        "{name} {labels:?} = {value}"
    );
    // Counters here stay far below 2^53, so the float holds them exactly.
    value as u64
}

/// `report[key][name]` as a count (0 when absent).
fn count_of(report: &Value, key: &str, name: &str) -> u64 {
    report[key][name].as_u64().unwrap_or(0)
}

fn latency(report: &Value, which: &str) -> f64 {
    report["latency_ms"][which]
        .as_f64()
        .unwrap_or_else(|| panic!("no latency_ms.{which}: {report}"))
}

fn url(service: &Svc, path: &str) -> String {
    format!("http://{}{path}", service.ip)
}

/// A route to `host`'s subsets with weights: `[("v1", 80), ("v2", 20)]`.
fn weighted(host: &str, weights: &[(&str, u32)]) -> Value {
    let route: Vec<Value> = weights
        .iter()
        .map(|(subset, weight)| json!({"destination": {"host": host, "subset": subset}, "weight": weight}))
        .collect();
    Value::Array(route)
}

fn to_subset(host: &str, subset: &str) -> Value {
    json!([{"destination": {"host": host, "subset": subset}}])
}

// ---------------------------------------------------------------------------------------------

const WEB: Svc = http_service("web", 10);
const WEB_V1: Backend = backend("web-v1", "web", "v1");
const WEB_V2: Backend = backend("web-v2", "web", "v2");

#[test]
fn http_without_virtual_service_reaches_the_service() {
    let Some(mut l7) = L7::start(
        "l7::http_without_virtual_service_reaches_the_service",
        &[WEB],
        &[WEB_V1],
        &[],
    ) else {
        return;
    };
    l7.serve_all(&["web-v1"]);
    let h1 = l7.http(&url(&WEB, "/hello?x=1"), &["-n", "10"]);
    assert_eq!(h1["status"], json!({"200": 10}), "{h1}");
    assert_eq!(h1["served_by"], json!({"web-v1": 10}), "{h1}");
    assert_eq!(h1["paths"], json!({"/hello?x=1": 10}), "{h1}");
    let h2 = l7.http(&url(&WEB, "/h2"), &["-n", "5", "--http2"]);
    assert_eq!(h2["status"], json!({"200": 5}), "{h2}");
    let seen = l7.seen("web-v1");
    assert_eq!(seen["total"], 15, "{seen}");
    let versions: BTreeSet<&str> = seen["requests"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["version"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        versions,
        BTreeSet::from(["HTTP/1.1", "HTTP/2.0"]),
        "upstream keeps the protocol: {seen}"
    );
}

#[test]
fn weighted_split_80_20_lands_within_5_percent() {
    let istio = [
        subsets_by_version(MESH, "web", &["v1", "v2"], Value::Null),
        virtual_service(
            MESH,
            "web",
            json!({"hosts": ["web"], "http": [{"route": weighted("web", &[("v1", 80), ("v2", 20)])}]}),
        ),
    ];
    let Some(mut l7) = L7::start(
        "l7::weighted_split_80_20",
        &[WEB],
        &[WEB_V1, WEB_V2],
        &istio,
    ) else {
        return;
    };
    l7.serve_all(&["web-v1", "web-v2"]);
    let report = l7.http(&url(&WEB, "/split"), &["-n", "1000", "-c", "4"]);
    assert_eq!(report["status"], json!({"200": 1000}), "{report}");
    let (v1, v2) = (
        count_of(&report, "served_by", "web-v1"),
        count_of(&report, "served_by", "web-v2"),
    );
    assert_eq!(v1 + v2, 1000, "{report}");
    assert!(
        (750..=850).contains(&v1),
        "v1 got {v1} of 1000 (want 800 ± 50): {report}"
    );
    assert_eq!(
        l7.seen_total("web-v1"),
        v1,
        "the backends saw what the client got"
    );
    assert_eq!(l7.seen_total("web-v2"), v2);
    l7.expect_requests(
        &[("destination_version", "v2"), ("response_code", "200")],
        v2,
    );
}

#[test]
fn header_and_cookie_regex_route_to_v2_everything_else_to_v1() {
    let istio = [
        subsets_by_version(MESH, "web", &["v1", "v2"], Value::Null),
        virtual_service(
            MESH,
            "web",
            json!({"hosts": ["web"], "http": [
                {"name": "jason-header", "match": [{"headers": {"end-user": {"exact": "jason"}}}], "route": to_subset("web", "v2")},
                {"name": "jason-cookie", "match": [{"headers": {"cookie": {"regex": "^(.*?;\\s*)?(user=jason)(;.*)?$"}}}], "route": to_subset("web", "v2")},
                {"name": "default", "route": to_subset("web", "v1")},
            ]}),
        ),
    ];
    let Some(mut l7) = L7::start(
        "l7::header_and_cookie_routing",
        &[WEB],
        &[WEB_V1, WEB_V2],
        &istio,
    ) else {
        return;
    };
    l7.serve_all(&["web-v1", "web-v2"]);
    let cases: [(&[&str], &str); 6] = [
        (&["-H", "end-user: jason"], "web-v2"),
        (&["-H", "end-user: jason", "--http2"], "web-v2"),
        (&["-H", "cookie: theme=dark; user=jason; lang=en"], "web-v2"),
        (&["-H", "end-user: bob"], "web-v1"),
        (&["-H", "cookie: user=jasonx"], "web-v1"),
        (&[], "web-v1"),
    ];
    for (headers, want) in cases {
        let mut args = vec!["-n", "10"];
        args.extend_from_slice(headers);
        let report = l7.http(&url(&WEB, "/"), &args);
        assert_eq!(
            report["served_by"],
            json!({want: 10}),
            "{headers:?}: {report}"
        );
        assert_eq!(
            report["body_names"],
            json!({want: 10}),
            "{headers:?}: {report}"
        );
    }
    // A real client: curl, both ways.
    for (header, want) in [
        ("end-user: jason", "web-v2"),
        ("end-user: nobody", "web-v1"),
    ] {
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "-H", header, &url(&WEB, "/curl")]);
        let output = l7
            .node
            .spawn_in_pod(&l7.client, "curl", curl)
            .and_then(|p| Ok(p.finish(CLIENT_TIMEOUT)?))
            .or_panic("curl");
        let body = output
            .json()
            .or_panic(&format!("curl body (stderr: {})", output.stderr));
        assert_eq!(body["name"], want, "curl -H {header:?}: {body}");
        assert_eq!(body["path"], "/curl");
        assert_eq!(
            body["headers"]["user-agent"]
                .as_str()
                .map(|u| u.starts_with("curl/")),
            Some(true)
        );
    }
    assert_eq!(l7.seen_total("web-v2"), 31);
    assert_eq!(l7.seen_total("web-v1"), 31);
}

#[test]
fn uri_prefix_rewrite_reaches_the_backend_rewritten() {
    let istio = [virtual_service(
        MESH,
        "web",
        json!({"hosts": ["web.mesh.svc.cluster.local"], "http": [
            {"name": "api", "match": [{"uri": {"prefix": "/api/v1/"}}], "rewrite": {"uri": "/v2/"}, "route": [{"destination": {"host": "web"}}]},
            {"name": "rest", "route": [{"destination": {"host": "web"}}]},
        ]}),
    )];
    let Some(mut l7) = L7::start("l7::uri_prefix_rewrite", &[WEB], &[WEB_V1], &istio) else {
        return;
    };
    l7.serve_all(&["web-v1"]);
    let rewritten = l7.http(&url(&WEB, "/api/v1/items?id=7"), &["-n", "5"]);
    assert_eq!(rewritten["status"], json!({"200": 5}), "{rewritten}");
    assert_eq!(
        rewritten["paths"],
        json!({"/v2/items?id=7": 5}),
        "{rewritten}"
    );
    let untouched = l7.http(&url(&WEB, "/api/v10/items"), &["-n", "3"]);
    assert_eq!(
        untouched["paths"],
        json!({"/api/v10/items": 3}),
        "{untouched}"
    );
    let seen = l7.seen("web-v1");
    let paths: Vec<&str> = seen["requests"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["path"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        paths.iter().filter(|p| **p == "/v2/items?id=7").count(),
        5,
        "{seen}"
    );
    assert!(!paths.iter().any(|p| p.starts_with("/api/v1/")), "{seen}");
    l7.expect_log_lines(&[("route_name", "api"), ("response_code", "200")], 5);
}

#[test]
fn retries_turn_two_of_three_failures_into_success() {
    let istio = [virtual_service(
        MESH,
        "web",
        json!({"hosts": ["web"], "http": [
            {"name": "no-retries", "match": [{"headers": {"x-case": {"exact": "no-retries"}}}],
             "retries": {"attempts": 0}, "route": [{"destination": {"host": "web"}}]},
            {"name": "retried", "retries": {"attempts": 2, "perTryTimeout": "2s", "retryOn": "5xx"},
             "route": [{"destination": {"host": "web"}}]},
        ]}),
    )];
    let Some(mut l7) = L7::start("l7::retries_two_of_three", &[WEB], &[WEB_V1], &istio) else {
        return;
    };
    l7.serve_all(&["web-v1"]);
    let fails = ["-H", "x-fail-pattern: 2/3"];
    // Without retries the backend's pattern shows through: 2 of every 3 fail.
    let mut args = vec![
        "-n",
        "9",
        "-H",
        "x-case: no-retries",
        "-H",
        "x-fail-key: plain",
    ];
    args.extend_from_slice(&fails);
    let plain = l7.http(&url(&WEB, "/plain"), &args);
    assert_eq!(plain["status"], json!({"200": 3, "503": 6}), "{plain}");

    let mut args = vec!["-n", "10", "-H", "x-fail-key: retried"];
    args.extend_from_slice(&fails);
    let retried = l7.http(&url(&WEB, "/retried"), &args);
    assert_eq!(retried["status"], json!({"200": 10}), "{retried}");
    assert_eq!(retried["failures"], 0, "{retried}");

    let seen = l7.seen("web-v1");
    let attempts: Vec<&Value> = seen["requests"]
        .as_array()
        .map(|r| r.iter().filter(|r| r["path"] == "/retried").collect())
        .unwrap_or_default();
    assert_eq!(
        attempts.len(),
        30,
        "the backend sees every try (3 per request): {seen}"
    );
    // A retry is the same request: 10 request ids, each tried 3 times.
    let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
    for attempt in &attempts {
        let id = attempt["headers"]["x-request-id"]
            .as_str()
            .unwrap_or_else(|| panic!("no x-request-id: {attempt}"));
        *ids.entry(id).or_insert(0) += 1;
    }
    assert_eq!(ids.len(), 10, "{ids:?}");
    assert!(ids.values().all(|n| *n == 3), "{ids:?}");
    l7.expect_requests(
        &[("response_code", "200"), ("destination_workload", "web-v1")],
        13,
    );
}

#[test]
fn route_timeout_gives_504_near_the_configured_time() {
    let istio = [virtual_service(
        MESH,
        "web",
        json!({"hosts": ["web"], "http": [
            {"name": "bounded", "timeout": "1s", "route": [{"destination": {"host": "web"}}]},
        ]}),
    )];
    let Some(mut l7) = L7::start("l7::route_timeout_504", &[WEB], &[WEB_V1], &istio) else {
        return;
    };
    l7.serve_all(&["web-v1"]);
    let fast = l7.http(&url(&WEB, "/fast"), &["-n", "2", "-H", "x-delay-ms: 100"]);
    assert_eq!(fast["status"], json!({"200": 2}), "{fast}");
    let slow = l7.http(&url(&WEB, "/slow"), &["-n", "3", "-H", "x-delay-ms: 3000"]);
    assert_eq!(slow["status"], json!({"504": 3}), "{slow}");
    let (min, max) = (latency(&slow, "min"), latency(&slow, "max"));
    assert!(
        min >= 950.0 && max <= 1800.0,
        "504 after ~1s, took {min}..{max} ms: {slow}"
    );
    l7.expect_flag("504", "UT", 3);
}

#[test]
fn fault_abort_answers_without_reaching_the_backend() {
    let istio = [virtual_service(
        MESH,
        "web",
        json!({"hosts": ["web"], "http": [
            {"name": "healthy", "match": [{"headers": {"x-case": {"exact": "healthy"}}}], "route": [{"destination": {"host": "web"}}]},
            {"name": "aborted", "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
             "route": [{"destination": {"host": "web"}}]},
        ]}),
    )];
    let Some(mut l7) = L7::start("l7::fault_abort", &[WEB], &[WEB_V1], &istio) else {
        return;
    };
    l7.serve_all(&["web-v1"]);
    let aborted = l7.http(&url(&WEB, "/"), &["-n", "20"]);
    assert_eq!(aborted["status"], json!({"418": 20}), "{aborted}");
    assert_eq!(
        aborted["served_by"],
        json!({"-": 20}),
        "the proxy answered: {aborted}"
    );
    assert_eq!(
        l7.seen_total("web-v1"),
        0,
        "an abort never reaches the backend"
    );
    let healthy = l7.http(&url(&WEB, "/"), &["-n", "5", "-H", "x-case: healthy"]);
    assert_eq!(healthy["status"], json!({"200": 5}), "{healthy}");
    assert_eq!(l7.seen_total("web-v1"), 5);
    l7.expect_flag("418", "FI", 20);
}

#[test]
fn fault_delay_adds_the_configured_latency() {
    let istio = [virtual_service(
        MESH,
        "web",
        json!({"hosts": ["web"], "http": [
            {"name": "delayed", "match": [{"headers": {"x-case": {"exact": "delayed"}}}],
             "fault": {"delay": {"fixedDelay": "500ms", "percentage": {"value": 100}}},
             "route": [{"destination": {"host": "web"}}]},
            {"name": "direct", "route": [{"destination": {"host": "web"}}]},
        ]}),
    )];
    let Some(mut l7) = L7::start("l7::fault_delay", &[WEB], &[WEB_V1], &istio) else {
        return;
    };
    l7.serve_all(&["web-v1"]);
    let direct = l7.http(&url(&WEB, "/"), &["-n", "5"]);
    let delayed = l7.http(&url(&WEB, "/"), &["-n", "5", "-H", "x-case: delayed"]);
    for report in [&direct, &delayed] {
        assert_eq!(report["status"], json!({"200": 5}), "{report}");
        assert_eq!(report["served_by"], json!({"web-v1": 5}), "{report}");
    }
    assert!(latency(&delayed, "min") >= 500.0, "{delayed}");
    assert!(
        latency(&delayed, "p50") >= latency(&direct, "p50") + 400.0,
        "delay adds ~500ms: direct {direct} delayed {delayed}"
    );
    assert!(latency(&delayed, "max") < 2000.0, "{delayed}");
    assert_eq!(
        l7.seen_total("web-v1"),
        10,
        "a delayed request still arrives"
    );
    l7.expect_flag("200", "DI", 5);
}

const GREETER: Svc = Svc {
    name: "greeter",
    ip: Ipv4Addr::new(10, 96, 0, 20),
    port: GRPC_PORT,
    port_name: "grpc",
    target_port: GRPC_PORT,
};
const GREETER_V1: Backend = backend("greeter-v1", "greeter", "v1");

#[test]
fn grpc_abort_gives_the_grpc_status() {
    let Some(mut l7) = L7::start("l7::grpc_abort", &[GREETER], &[GREETER_V1], &[]) else {
        return;
    };
    l7.serve_all(&["greeter-v1"]);
    let addr = format!("{}:{GRPC_PORT}", GREETER.ip);
    let healthy = l7.run(&["grpc", "--addr", &addr, "-n", "5"]);
    assert_eq!(healthy["codes"], json!({"Ok": 5}), "{healthy}");
    assert_eq!(healthy["serving"], json!({"SERVING": 5}), "{healthy}");
    assert_eq!(l7.seen("greeter-v1")["grpc_calls"], 5);

    l7.node
        .write_istio(&[virtual_service(MESH, "greeter", json!({"hosts": ["greeter"], "http": [
            {"name": "unavailable", "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 100}}},
             "route": [{"destination": {"host": "greeter"}}]},
        ]}))])
        .or_panic("writing the abort");
    let client = l7.client.clone();
    l7.node
        .poll_httppod(
            &client,
            &["grpc", "--addr", &addr, "-n", "1"],
            "the gRPC abort to apply",
            REPORT_TIMEOUT,
            |r| r["codes"] == json!({"Unavailable": 1}),
        )
        .or_panic("gRPC abort");
    let before = l7.seen("greeter-v1")["grpc_calls"]
        .as_u64()
        .unwrap_or_default();
    let aborted = l7.run(&["grpc", "--addr", &addr, "-n", "10"]);
    assert_eq!(aborted["codes"], json!({"Unavailable": 10}), "{aborted}");
    assert_eq!(
        l7.seen("greeter-v1")["grpc_calls"],
        before,
        "aborted calls never reach the server"
    );
    l7.expect_requests(
        &[
            ("request_protocol", "grpc"),
            ("grpc_response_status", "14"),
            ("response_flags", "FI"),
        ],
        11,
    );
}

const SHADOW: Svc = http_service("shadow", 11);
const SHADOW_V1: Backend = backend("shadow-v1", "shadow", "v1");

#[test]
fn mirror_copies_reach_the_mirror_and_the_client_gets_only_primary_bodies() {
    let istio = [virtual_service(
        MESH,
        "web",
        json!({"hosts": ["web"], "http": [
            {"name": "mirrored", "route": [{"destination": {"host": "web"}}],
             "mirror": {"host": "shadow"}, "mirrorPercentage": {"value": 100.0}},
        ]}),
    )];
    let Some(mut l7) = L7::start("l7::mirror", &[WEB, SHADOW], &[WEB_V1, SHADOW_V1], &istio) else {
        return;
    };
    l7.serve_all(&["web-v1", "shadow-v1"]);
    let report = l7.http(
        &url(&WEB, "/mirrored?n=1"),
        &["-n", "20", "-X", "POST", "--body-bytes", "100"],
    );
    assert_eq!(report["status"], json!({"200": 20}), "{report}");
    assert_eq!(report["served_by"], json!({"web-v1": 20}), "{report}");
    assert_eq!(
        report["body_names"],
        json!({"web-v1": 20}),
        "only the primary's bodies: {report}"
    );
    // Copies are fire-and-forget: wait for them.
    let shadow = l7.pod("shadow-v1").clone();
    let addr = format!("127.0.0.1:{HTTP_PORT}");
    let seen = l7
        .node
        .poll_httppod(
            &shadow,
            &["count", "--addr", &addr],
            "20 mirrored copies",
            REPORT_TIMEOUT,
            |s| s["total"].as_u64() >= Some(20),
        )
        .or_panic("mirror copies");
    assert_eq!(seen["total"], 20, "{seen}");
    for copy in seen["requests"].as_array().into_iter().flatten() {
        assert_eq!(copy["method"], "POST", "{copy}");
        assert_eq!(copy["path"], "/mirrored?n=1", "{copy}");
    }
    assert_eq!(l7.seen_total("web-v1"), 20);
}

const STICKY_PODS: [Backend; 3] = [
    backend("web-1", "web", "v1"),
    backend("web-2", "web", "v1"),
    backend("web-3", "web", "v1"),
];

#[test]
fn consistent_hash_cookie_pins_a_client_to_one_pod() {
    let istio = [destination_rule(
        MESH,
        "web",
        json!({"host": "web", "trafficPolicy": {"loadBalancer": {
            "consistentHash": {"httpCookie": {"name": "shunt-affinity", "ttl": "60s"}},
        }}}),
    )];
    let Some(mut l7) = L7::start("l7::consistent_hash_cookie", &[WEB], &STICKY_PODS, &istio) else {
        return;
    };
    l7.serve_all(&["web-1", "web-2", "web-3"]);
    let pinned = l7.http(
        &url(&WEB, "/"),
        &["-n", "100", "-H", "cookie: shunt-affinity=alice"],
    );
    assert_eq!(pinned["status"], json!({"200": 100}), "{pinned}");
    let served = pinned["served_by"].as_object().map(|m| m.len());
    assert_eq!(served, Some(1), "one cookie, one pod: {pinned}");
    // Different cookies spread (3 pods, 12 values: all on one pod has odds 3^-11).
    let mut pods = BTreeSet::new();
    for i in 0..12 {
        let cookie = format!("cookie: shunt-affinity=user-{i}");
        let report = l7.http(&url(&WEB, "/"), &["-n", "3", "-H", &cookie]);
        let names: Vec<String> = report["served_by"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        assert_eq!(names.len(), 1, "{cookie}: {report}");
        pods.extend(names);
    }
    assert!(pods.len() >= 2, "12 cookies all hashed to {pods:?}");
    // Without a cookie the proxy issues one, and honours it from then on.
    let jar = l7.http(&url(&WEB, "/"), &["-n", "20", "--cookie-jar"]);
    assert_eq!(jar["status"], json!({"200": 20}), "{jar}");
    let cookies = jar["set_cookies"].as_array().cloned().unwrap_or_default();
    assert_eq!(cookies.len(), 1, "issued once, then sent back: {jar}");
    assert!(
        cookies[0]
            .as_str()
            .is_some_and(|c| c.starts_with("shunt-affinity=")),
        "{jar}"
    );
    assert_eq!(
        jar["served_by"].as_object().map(|m| m.len()),
        Some(1),
        "{jar}"
    );
}

const LR_PODS: [Backend; 2] = [
    backend("web-slow", "web", "v1"),
    backend("web-fast", "web", "v1"),
];

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let istio = [destination_rule(
        MESH,
        "web",
        json!({"host": "web", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}),
    )];
    let Some(mut l7) = L7::start("l7::least_request", &[WEB], &LR_PODS, &istio) else {
        return;
    };
    l7.serve("web-slow", &["--delay-ms", "300"]);
    l7.serve("web-fast", &[]);
    let report = l7.http(&url(&WEB, "/"), &["-n", "200", "-c", "8"]);
    assert_eq!(report["status"], json!({"200": 200}), "{report}");
    let fast = count_of(&report, "served_by", "web-fast");
    let slow = count_of(&report, "served_by", "web-slow");
    assert_eq!(fast + slow, 200);
    // Round robin would give exactly 100 each.
    assert!(
        fast >= 130,
        "the idle endpoint got only {fast} of 200: {report}"
    );
    assert!(slow >= 1, "the slow endpoint still gets some: {report}");
}

const OUTLIER_PODS: [Backend; 2] = [
    backend("web-good", "web", "v1"),
    backend("web-bad", "web", "v1"),
];
const EJECTIONS: &str = "shunt_outlier_ejections_total";

#[test]
fn outlier_detection_ejects_a_failing_endpoint_and_returns_it() {
    let istio = [destination_rule(
        MESH,
        "web",
        json!({"host": "web", "trafficPolicy": {"outlierDetection": {
            "consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "2s", "maxEjectionPercent": 100,
        }}}),
    )];
    let Some(mut l7) = L7::start("l7::outlier_detection", &[WEB], &OUTLIER_PODS, &istio) else {
        return;
    };
    l7.serve("web-good", &[]);
    l7.serve("web-bad", &["--status", "500"]);
    let first = l7.http(&url(&WEB, "/"), &["-n", "40"]);
    let bad = count_of(&first, "served_by", "web-bad");
    assert!(
        (3..=5).contains(&bad),
        "ejected after 3 consecutive 500s, got {bad}: {first}"
    );
    assert_eq!(count_of(&first, "status", "500"), bad, "{first}");
    assert_eq!(
        count_of(&first, "served_by", "web-good"),
        40 - bad,
        "{first}"
    );
    let metrics = l7
        .node
        .wait_metrics("an ejection counted", REPORT_TIMEOUT, |m| {
            sum(m, EJECTIONS, &[]) >= 1
        })
        .or_panic("metrics");
    assert_eq!(
        sum(&metrics, EJECTIONS, &[]),
        1,
        "{}",
        metrics.describe(EJECTIONS)
    );

    // baseEjectionTime (2s) plus one interval (1s) and slack: it is back.
    std::thread::sleep(Duration::from_millis(3500));
    let before = l7.seen_total("web-bad");
    let second = l7.http(&url(&WEB, "/"), &["-n", "20"]);
    let returned = count_of(&second, "served_by", "web-bad");
    assert!(returned >= 1, "the ejected endpoint came back: {second}");
    assert_eq!(l7.seen_total("web-bad"), before + returned);
}

#[test]
fn connection_pool_overflow_gives_503_uo() {
    let istio = [
        destination_rule(
            MESH,
            "web",
            json!({"host": "web", "trafficPolicy": {"connectionPool": {
                "tcp": {"maxConnections": 1}, "http": {"http1MaxPendingRequests": 1},
            }}}),
        ),
        virtual_service(
            MESH,
            "web",
            json!({"hosts": ["web"], "http": [{"retries": {"attempts": 0}, "route": [{"destination": {"host": "web"}}]}]}),
        ),
    ];
    let Some(mut l7) = L7::start("l7::connection_pool_overflow", &[WEB], &[WEB_V1], &istio) else {
        return;
    };
    l7.serve_all(&["web-v1"]);
    let report = l7.http(
        &url(&WEB, "/"),
        &["-n", "8", "-c", "8", "-H", "x-delay-ms: 1000"],
    );
    let (ok, overflow) = (
        count_of(&report, "status", "200"),
        count_of(&report, "status", "503"),
    );
    assert_eq!(ok + overflow, 8, "{report}");
    assert!(
        ok >= 1 && overflow >= 4,
        "1 connection + 1 pending, the rest overflow: {report}"
    );
    assert_eq!(
        count_of(&report, "served_by", "-"),
        overflow,
        "the proxy answered the 503s: {report}"
    );
    assert_eq!(
        l7.seen_total("web-v1"),
        ok,
        "overflowed requests never reached the backend"
    );
    l7.expect_flag("503", "UO", overflow);
}

#[test]
fn rate_limit_gives_429_rl_at_the_configured_rate() {
    let istio = [istio::rate_limit_policy(
        MESH,
        "web-limit",
        json!({"service": "web", "requestsPerSecond": 5, "burst": 5}),
    )];
    let Some(mut l7) = L7::start("l7::rate_limit", &[WEB], &[WEB_V1], &istio) else {
        return;
    };
    l7.serve_all(&["web-v1"]);
    let report = l7.http(&url(&WEB, "/"), &["--rps", "20", "--duration", "3"]);
    assert_eq!(report["requests"], 60, "{report}");
    let (ok, limited) = (
        count_of(&report, "status", "200"),
        count_of(&report, "status", "429"),
    );
    assert_eq!(ok + limited, 60, "{report}");
    // burst 5 + 5/s for 3s = 20.
    assert!(
        (15..=23).contains(&ok),
        "{ok} allowed at 5/s burst 5 over 3s: {report}"
    );
    let headers = &report["by_status"]["429"]["headers"];
    for name in [
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(headers[name].is_string(), "429 without {name}: {report}");
    }
    assert_eq!(headers["x-ratelimit-remaining"], "0", "{report}");
    assert_eq!(
        l7.seen_total("web-v1"),
        ok,
        "limited requests never reached the backend"
    );
    l7.expect_flag("429", "RL", limited);
}

/// Not captured, selected by no Service: unknown to the registry.
const OUTSIDE: Backend = Backend {
    name: "outside",
    app: "outside",
    version: "v1",
    namespace: "outside",
};

/// `accessLogFile: ""` in Istio's mesh config turns the access log off, TCP and HTTP; the
/// request metrics are still recorded.
#[test]
fn access_log_file_empty_turns_the_access_log_off() {
    let istio = [
        istio::istio_system_namespace(),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": "accessLogFile: \"\"\n"},
        }),
    ];
    let Some(mut l7) = L7::start("l7::access_log_off", &[WEB], &[WEB_V1], &istio) else {
        return;
    };
    l7.serve_all(&["web-v1"]);
    let answered = l7.http(&url(&WEB, "/quiet"), &["-n", "10"]);
    assert_eq!(answered["status"], json!({"200": 10}), "{answered}");
    l7.expect_requests(&[("response_code", "200")], 10);
    // Past the writer's 100 ms batching interval, with room to spare.
    std::thread::sleep(Duration::from_secs(1));
    let log = l7.node.access_log().or_panic("access log");
    assert_eq!(log.entries.len(), 0, "{}", log.describe());
}

#[test]
fn registry_only_blocks_unknown_destinations_and_passes_service_entries() {
    // The only backend, so its IP is the first backend IP.
    let outside_ip = pod_ip(21);
    let istio = [
        istio::istio_system_namespace(),
        istio::mesh_config("REGISTRY_ONLY"),
        istio::service_entry(
            MESH,
            "external-api",
            json!({
                "hosts": ["api.external.test"],
                "addresses": ["10.250.0.1"],
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": HTTP_PORT}],
                "resolution": "STATIC",
                "location": "MESH_EXTERNAL",
                "endpoints": [{"address": outside_ip.to_string()}],
            }),
        ),
    ];
    let Some(mut l7) = L7::start("l7::registry_only", &[], &[OUTSIDE], &istio) else {
        return;
    };
    let outside = l7.pod("outside").clone();
    assert_eq!(outside.ip, outside_ip);
    l7.serve("outside", &[]);
    let echo = l7
        .node
        .start_server(&outside, &["echo-server", "--port", "9000"])
        .or_panic("outside echo");

    let entry = "http://api.external.test/entry";
    let through = l7.http(entry, &["--connect", "10.250.0.1:80", "-n", "5"]);
    assert_eq!(
        through["status"],
        json!({"200": 5}),
        "a ServiceEntry host passes: {through}"
    );
    assert_eq!(through["served_by"], json!({"outside": 5}), "{through}");
    assert_eq!(through["paths"], json!({"/entry": 5}), "{through}");
    assert_eq!(l7.seen_total("outside"), 5);

    let direct = format!("http://{}/direct", outside.addr(HTTP_PORT));
    let blocked = l7.http(&direct, &["-n", "5"]);
    assert_eq!(
        blocked["status"],
        json!({"502": 5}),
        "an unknown HTTP destination gets 502: {blocked}"
    );
    assert_eq!(
        l7.seen_total("outside"),
        5,
        "nothing reached the unknown destination"
    );
    let to = outside.addr(9000).to_string();
    let tcp = common::client(
        &l7.node,
        &l7.client,
        &["send", "--to", &to, "--bytes", "1000", "--seed", "1"],
    );
    assert_eq!(
        tcp["ok"], false,
        "an unknown TCP destination is closed: {tcp}"
    );
    drop(echo);

    const BLOCKED: &str = "shunt_registry_only_blocked_total";
    let metrics = l7
        .node
        .wait_metrics("both blocks counted", REPORT_TIMEOUT, |m| {
            sum(m, BLOCKED, &[("protocol", "http")]) >= 5
                && sum(m, BLOCKED, &[("protocol", "tcp")]) >= 1
        })
        .or_panic("metrics");
    assert_eq!(
        sum(&metrics, BLOCKED, &[("protocol", "http")]),
        5,
        "{}",
        metrics.describe(BLOCKED)
    );
    l7.expect_flag("502", "NR", 5);
}

const ECHO: Svc = Svc {
    name: "echo",
    ip: Ipv4Addr::new(10, 96, 0, 30),
    port: 9000,
    port_name: "tcp",
    target_port: 9000,
};
const ECHO_PODS: [Backend; 2] = [
    backend("echo-v1", "echo", "v1"),
    backend("echo-v2", "echo", "v2"),
];

#[test]
fn tcp_routes_shift_weighted_over_subsets() {
    let istio = [
        subsets_by_version(MESH, "echo", &["v1", "v2"], Value::Null),
        virtual_service(
            MESH,
            "echo",
            json!({"hosts": ["echo"], "tcp": [
                {"match": [{"port": 9000}], "route": weighted("echo", &[("v1", 80), ("v2", 20)])},
            ]}),
        ),
    ];
    let Some(mut l7) = L7::start("l7::tcp_weighted", &[ECHO], &ECHO_PODS, &istio) else {
        return;
    };
    for name in ["echo-v1", "echo-v2"] {
        let server = l7
            .node
            .start_server(
                l7.pod(name),
                &["whoami-server", "--port", "9000", "--name", name],
            )
            .or_panic("whoami server");
        l7.servers.push(server);
    }
    let to = format!("{}:9000", ECHO.ip);
    let report = common::client(
        &l7.node,
        &l7.client,
        &["fetch", "--to", &to, "--count", "300"],
    );
    assert_eq!(report["ok"], true, "{report}");
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for reply in report["replies"].as_array().into_iter().flatten() {
        *counts
            .entry(reply["name"].as_str().unwrap_or("?"))
            .or_insert(0) += 1;
    }
    let v1 = counts.get("echo-v1").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<u64>(), 300, "{counts:?}");
    assert!(
        (210..=270).contains(&v1),
        "v1 got {v1} of 300 connections (want 240 ± 30): {counts:?}"
    );
}

#[test]
fn websocket_echo_through_the_proxy() {
    let istio = [virtual_service(
        MESH,
        "web",
        json!({"hosts": ["web"], "http": [{"name": "ws", "route": [{"destination": {"host": "web"}}]}]}),
    )];
    let Some(mut l7) = L7::start("l7::websocket_echo", &[WEB], &[WEB_V1], &istio) else {
        return;
    };
    l7.serve_all(&["web-v1"]);
    let ws = format!("ws://{}/ws", WEB.ip);
    let report = l7.run(&["ws", "--url", &ws, "-n", "20"]);
    assert_eq!(report["status"], 101, "{report}");
    assert_eq!(report["served_by"], "web-v1", "{report}");
    assert_eq!(report["echoed"], 20, "{report}");
    assert_eq!(report["mismatches"], json!([]), "{report}");
    let seen = l7.seen("web-v1");
    assert_eq!(seen["total"], 1, "one upgrade request: {seen}");
    assert_eq!(
        seen["requests"][0]["headers"]["upgrade"], "websocket",
        "{seen}"
    );
}

const SECURE: Svc = Svc {
    name: "secure",
    ip: Ipv4Addr::new(10, 96, 0, 40),
    port: 443,
    port_name: "tls",
    target_port: 8443,
};
const SECURE_PODS: [Backend; 2] = [
    backend("tls-v1", "secure", "v1"),
    backend("tls-v2", "secure", "v2"),
];

#[test]
fn tls_routes_by_sni() {
    let istio = [
        subsets_by_version(MESH, "secure", &["v1", "v2"], Value::Null),
        virtual_service(
            MESH,
            "secure",
            json!({"hosts": ["secure", "a.tls.test", "b.tls.test"], "tls": [
                {"match": [{"port": 443, "sniHosts": ["a.tls.test"]}], "route": to_subset("secure", "v1")},
                {"match": [{"port": 443, "sniHosts": ["b.tls.test"]}], "route": to_subset("secure", "v2")},
            ]}),
        ),
    ];
    let Some(mut l7) = L7::start("l7::tls_sni", &[SECURE], &SECURE_PODS, &istio) else {
        return;
    };
    // Each backend's certificate names it, so the handshake tells who answered.
    for name in ["tls-v1", "tls-v2"] {
        let dir = l7.node.dir().join(name);
        std::fs::create_dir_all(&dir).or_panic("cert dir");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "1",
            ])
            .arg("-subj")
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .or_panic("openssl req");
        assert!(
            made.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let mut server = Command::new("openssl");
        server
            .args(["s_server", "-accept", "8443", "-www", "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key);
        let mut process = l7
            .node
            .spawn_in_pod(l7.pod(name), "s_server", server)
            .or_panic("s_server");
        process
            .wait_for_line("ACCEPT", REPORT_TIMEOUT)
            .or_panic("s_server listening");
        l7.servers.push(process);
    }
    let connect = format!("{}:443", SECURE.ip);
    for (sni, want, other) in [
        ("a.tls.test", "tls-v1", "tls-v2"),
        ("b.tls.test", "tls-v2", "tls-v1"),
    ] {
        for _ in 0..3 {
            let mut client = Command::new("openssl");
            client.args(["s_client", "-connect", &connect, "-servername", sni]);
            let output = l7
                .node
                .spawn_in_pod(&l7.client, "s_client", client)
                .and_then(|p| Ok(p.finish(CLIENT_TIMEOUT)?))
                .or_panic("s_client");
            let text: String = output
                .stdout
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            assert!(
                text.contains(&format!("subject=CN={want}")),
                "SNI {sni} → {want}:\n{}\n{}",
                output.stdout,
                output.stderr
            );
            assert!(
                !text.contains(&format!("CN={other}")),
                "SNI {sni}:\n{}",
                output.stdout
            );
        }
    }
}

/// How many mesh states the proxy has taken from the agent (its log says so for each).
fn state_updates(node: &mut shunt_tests::Node) -> usize {
    node.proxy_process()
        .map(|proxy| proxy.stderr().matches("mesh state updated").count())
        .unwrap_or_default()
}

#[test]
fn hot_reload_during_200_rps_loses_nothing_and_new_weights_apply() {
    let routes = |v1: u32, v2: u32| {
        vec![
            subsets_by_version(MESH, "web", &["v1", "v2"], Value::Null),
            virtual_service(
                MESH,
                "web",
                json!({"hosts": ["web"], "http": [{"route": weighted("web", &[("v1", v1), ("v2", v2)])}]}),
            ),
        ]
    };
    let Some(mut l7) = L7::start("l7::hot_reload", &[WEB], &[WEB_V1, WEB_V2], &routes(100, 0))
    else {
        return;
    };
    l7.serve_all(&["web-v1", "web-v2"]);
    let target = url(&WEB, "/reload");
    // Started before the client: a moment measured on this clock is at least as late in the
    // client's timeline (buckets by request start).
    let started = Instant::now();
    let load = l7
        .node
        .httppod(
            &l7.client,
            &[
                "http",
                "--url",
                &target,
                "--rps",
                "200",
                "--duration",
                "8",
                "--bucket-ms",
                "1000",
                // A request fails only when it is lost, however slow the machine (no timing is
                // asserted: under emulation, `cargo xtask kernel-matrix`, answers take seconds).
                "--timeout-ms",
                "60000",
            ],
        )
        .or_panic("starting the load");
    std::thread::sleep(Duration::from_secs(2));
    let before = state_updates(&mut l7.node);
    l7.node
        .write_istio(&routes(0, 100))
        .or_panic("the new weights");
    shunt_tests::wait::until("the proxy's new routes", CLIENT_TIMEOUT, || {
        if state_updates(&mut l7.node) > before {
            shunt_tests::wait::Check::Done(())
        } else {
            shunt_tests::wait::Check::NotYet(format!("{before} state updates"))
        }
    })
    .or_panic("the reload");
    let applied_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let output = load.finish(CLIENT_TIMEOUT).or_panic("the load run");
    let report = output
        .json()
        .or_panic(&format!("load report (stderr: {})", output.stderr));
    assert_eq!(report["requests"], 1600, "{report}");
    assert_eq!(
        report["failures"], 0,
        "no request failed across the reload: {report}"
    );
    assert_eq!(report["status"], json!({"200": 1600}), "{report}");
    // Buckets of 1s by request start: the first is before the reload; those that start once
    // the proxy had the new routes only go to v2.
    let timeline = report["timeline"].as_array().cloned().unwrap_or_default();
    let pods_in = |bucket: &Value| -> Vec<String> {
        bucket["served_by"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let first = timeline
        .first()
        .unwrap_or_else(|| panic!("no timeline: {report}"));
    assert_eq!(
        pods_in(first),
        ["web-v1"],
        "before the reload all go to v1: {report}"
    );
    let after: Vec<&Value> = timeline
        .iter()
        .filter(|b| b["from_ms"].as_u64() >= Some(applied_ms))
        .collect();
    assert!(
        !after.is_empty(),
        "the proxy had the new routes only at {applied_ms} ms, after the load: {report}"
    );
    for bucket in after {
        assert_eq!(
            pods_in(bucket),
            ["web-v2"],
            "after the reload (at {applied_ms} ms) all go to v2: {report}"
        );
    }
    assert!(
        l7.seen_total("web-v2") >= 200,
        "the new weights took effect"
    );
}

#[test]
fn metrics_and_access_log_carry_l7_labels_and_flags() {
    let istio = [
        subsets_by_version(MESH, "web", &["v1", "v2"], Value::Null),
        virtual_service(
            MESH,
            "web",
            json!({"hosts": ["web"], "http": [
                {"name": "to-v2", "match": [{"headers": {"x-route": {"exact": "v2"}}}], "route": to_subset("web", "v2")},
                {"name": "aborted", "match": [{"headers": {"x-route": {"exact": "abort"}}}],
                 "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 100}}}, "route": to_subset("web", "v1")},
                {"name": "default", "route": to_subset("web", "v1")},
            ]}),
        ),
    ];
    let Some(mut l7) = L7::start(
        "l7::metrics_and_access_log",
        &[WEB],
        &[WEB_V1, WEB_V2],
        &istio,
    ) else {
        return;
    };
    l7.serve_all(&["web-v1", "web-v2"]);
    let h1 = l7.http(&url(&WEB, "/m"), &["-n", "10", "-H", "x-route: v2"]);
    let h2 = l7.http(
        &url(&WEB, "/m"),
        &["-n", "5", "-H", "x-route: v2", "--http2"],
    );
    let aborted = l7.http(&url(&WEB, "/m"), &["-n", "4", "-H", "x-route: abort"]);
    assert_eq!(h1["served_by"], json!({"web-v2": 10}), "{h1}");
    assert_eq!(h2["served_by"], json!({"web-v2": 5}), "{h2}");
    assert_eq!(aborted["status"], json!({"503": 4}), "{aborted}");

    let to_v2 = [
        ("response_code", "200"),
        ("response_flags", "-"),
        ("request_protocol", "http"),
        ("destination_version", "v2"),
        ("destination_workload", "web-v2"),
        ("destination_service", "web.mesh.svc.cluster.local"),
        ("source_workload", "client"),
    ];
    let metrics = l7.expect_requests(&to_v2, 15);
    let mut source_v2 = vec![("reporter", "source")];
    source_v2.extend_from_slice(&to_v2);
    for histogram in [
        "istio_request_duration_milliseconds_count",
        "istio_request_bytes_count",
        "istio_response_bytes_count",
    ] {
        assert_eq!(
            sum(&metrics, histogram, &source_v2),
            15,
            "{}",
            metrics.describe(histogram)
        );
    }
    l7.expect_requests(&[("response_code", "503"), ("response_flags", "FI")], 4);

    let log = l7.expect_log_lines(
        &[
            ("route_name", "to-v2"),
            ("response_code", "200"),
            ("response_flags", "-"),
        ],
        15,
    );
    let upstream = l7.pod("web-v2").addr(HTTP_PORT).to_string();
    let lines = log.matching(&[("route_name", "to-v2")]);
    let mut logged_ids = BTreeSet::new();
    for line in &lines {
        assert_eq!(line["upstream_host"], upstream.as_str(), "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], "/m", "{line}");
        let id = line["request_id"].as_str().filter(|id| !id.is_empty());
        logged_ids.insert(
            id.unwrap_or_else(|| panic!("no request_id: {line}"))
                .to_owned(),
        );
    }
    let protocols: BTreeMap<String, usize> = lines.iter().fold(BTreeMap::new(), |mut acc, line| {
        *acc.entry(line["protocol"].as_str().unwrap_or("?").to_owned())
            .or_insert(0) += 1;
        acc
    });
    assert_eq!(
        protocols,
        BTreeMap::from([("HTTP/1.1".to_owned(), 10), ("HTTP/2".to_owned(), 5)]),
        "{}",
        log.describe()
    );
    // The id the proxy logged is the one the backend received.
    let seen = l7.seen("web-v2");
    let received: BTreeSet<String> = seen["requests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["headers"]["x-request-id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(logged_ids, received, "{seen}");
    l7.expect_log_lines(
        &[
            ("route_name", "aborted"),
            ("response_code", "503"),
            ("response_flags", "FI"),
        ],
        4,
    );
}

/// Runs the node's `shuntctl -o json ARGS` against its agent and parses the answer.
fn shuntctl_json(l7: &L7, args: &[&str]) -> Value {
    let shuntctl = l7.node.binaries().shuntctl().or_panic("shuntctl");
    let socket = l7.node.run_dir().join("admin.sock");
    let output = Command::new(shuntctl)
        .arg("--admin-socket")
        .arg(&socket)
        .args(["-o", "json"])
        .args(args)
        .output()
        .or_panic("running shuntctl");
    assert!(
        output.status.success(),
        "shuntctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).or_panic("shuntctl's JSON")
}

#[test]
fn shuntctl_explain_and_routes_agree_with_the_proxy() {
    let istio = [
        subsets_by_version(MESH, "web", &["v1", "v2"], Value::Null),
        virtual_service(
            MESH,
            "web",
            json!({"hosts": ["web"], "http": [
                {"name": "beta", "match": [{"headers": {"x-beta": {"exact": "1"}}}],
                 "retries": {"attempts": 4, "retryOn": "5xx"}, "route": to_subset("web", "v2")},
                {"name": "stable", "route": to_subset("web", "v1")},
            ]}),
        ),
    ];
    let Some(mut l7) = L7::start(
        "l7::shuntctl_explain_and_routes",
        &[WEB],
        &[WEB_V1, WEB_V2],
        &istio,
    ) else {
        return;
    };
    l7.serve_all(&["web-v1", "web-v2"]);
    let from = format!("{MESH}/client");
    let web = url(&WEB, "/items");

    for (header, route, subset, served_by) in [
        (Some("x-beta: 1"), "beta", "v2", "web-v2"),
        (None, "stable", "v1", "web-v1"),
    ] {
        let mut args = vec!["explain", "--from", from.as_str(), web.as_str()];
        let mut client_args = vec!["-n", "5"];
        if let Some(header) = header {
            args.extend(["-H", header]);
            client_args.extend(["-H", header]);
        }
        let explained = shuntctl_json(&l7, &args);
        assert_eq!(explained["route"]["name"], route, "{explained:#}");
        assert_eq!(
            explained["destinations"][0]["destination"]["subset"], subset,
            "{explained:#}"
        );
        let cluster = &explained["destinations"][0]["cluster"];
        let endpoint = format!(
            "{}:{HTTP_PORT} ({MESH}/{served_by})",
            l7.pod(served_by).addr(HTTP_PORT).ip()
        );
        assert_eq!(cluster["endpoints"], json!([endpoint]), "{explained:#}");
        // What the dry run said is what the proxy does.
        let sent = l7.http(&web, &client_args);
        assert_eq!(sent["served_by"], json!({served_by: 5}), "{sent}");
    }

    let routes = shuntctl_json(&l7, &["routes", "--pod", &from]);
    let web_routes = routes["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("routes.hosts is a list: {routes:#}"))
        .iter()
        .find(|host| host["host"] == "web.mesh.svc.cluster.local")
        .unwrap_or_else(|| panic!("routes lists web: {routes:#}"));
    let names: Vec<&Value> = web_routes["routes"]
        .as_array()
        .unwrap_or_else(|| panic!("routes of web: {web_routes:#}"))
        .iter()
        .map(|route| &route["name"])
        .collect();
    assert_eq!(names, [&json!("beta"), &json!("stable")], "{web_routes:#}");
    let beta_policies = web_routes["routes"][0]["policies"].to_string();
    assert!(
        beta_policies.contains('4'),
        "beta's retries listed: {web_routes:#}"
    );
}

#[test]
fn dns_service_entry_dials_the_resolved_name_not_the_original_destination() {
    // `localhost` resolves (the proxy's /etc/hosts) to 127.0.0.1, which the proxy dials from
    // the client pod's netns: the client pod itself. Nothing leaves the test's pods.
    const DB_ADDRESS: &str = "10.250.0.5";
    let db_port = HTTP_PORT;
    let istio = [
        istio::service_entry(
            MESH,
            "db",
            json!({
                "hosts": ["db.example.internal"],
                "addresses": [DB_ADDRESS],
                "ports": [{"number": db_port, "name": "http", "protocol": "HTTP"}],
                "resolution": "DNS",
                "endpoints": [{"address": "localhost"}],
            }),
        ),
        // Requests for Service web go to the DNS entry instead.
        virtual_service(
            MESH,
            "web-to-db",
            json!({"hosts": ["web"], "http": [{"name": "to-db", "route": [
                {"destination": {"host": "db.example.internal", "port": {"number": db_port}}}
            ]}]}),
        ),
    ];
    let Some(mut l7) = L7::start("l7::dns_entry", &[WEB], &[WEB_V1], &istio) else {
        return;
    };
    l7.serve("web-v1", &[]);
    let port = HTTP_PORT.to_string();
    let local = l7
        .node
        .start_httppod_server(
            &l7.client,
            &["serve", "--port", &port, "--name", "client-local"],
        )
        .or_panic("httppod server in the client pod");
    l7.servers.push(local);

    let direct = l7.http(&format!("http://{DB_ADDRESS}:{db_port}/db"), &["-n", "3"]);
    assert_eq!(direct["status"], json!({"200": 3}), "{direct}");
    assert_eq!(
        direct["served_by"],
        json!({"client-local": 3}),
        "the entry's address is served by what localhost resolves to: {direct}"
    );
    let via_web = l7.http(&url(&WEB, "/via-web"), &["-n", "3"]);
    assert_eq!(via_web["status"], json!({"200": 3}), "{via_web}");
    assert_eq!(
        via_web["served_by"],
        json!({"client-local": 3}),
        "the route's DNS destination is dialled, not web's ClusterIP: {via_web}"
    );
    assert_eq!(l7.seen_total("web-v1"), 0, "nothing reached web's pods");
    let log = l7.expect_log_lines(
        &[
            ("upstream_cluster", "outbound|8080||db.example.internal"),
            ("response_code", "200"),
        ],
        6,
    );
    for line in log.matching(&[("upstream_cluster", "outbound|8080||db.example.internal")]) {
        assert_eq!(line["upstream_host"], "127.0.0.1:8080", "{line}");
    }
}

#[test]
fn tcp_max_connections_closes_the_overflowing_connection() {
    let istio = [destination_rule(
        MESH,
        "echo",
        json!({"host": "echo", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 1}}}}),
    )];
    let Some(mut l7) = L7::start("l7::tcp_max_connections", &[ECHO], &ECHO_PODS[..1], &istio)
    else {
        return;
    };
    let server = l7
        .node
        .start_server(l7.pod("echo-v1"), &["echo-server", "--port", "9000"])
        .or_panic("echo server");
    l7.servers.push(server);
    let to = format!("{}:9000", ECHO.ip);
    let stop_file = l7.node.dir().join("stop-hold");
    let stop = stop_file.to_string_lossy().into_owned();
    let hold = l7
        .node
        .testpod(
            &l7.client,
            &[
                "hold",
                "--to",
                &to,
                "--seconds",
                "60",
                "--until-file",
                &stop,
            ],
        )
        .or_panic("hold");
    const OPENED: &str = "istio_tcp_connections_opened_total";
    let reached = |m: &Metrics| sum(m, OPENED, &[("reporter", "destination")]);
    l7.node
        .wait_metrics(
            "the held connection reached the backend",
            REPORT_TIMEOUT,
            |m| reached(m) >= 1,
        )
        .or_panic("metrics");

    let send = ["send", "--to", &to, "--bytes", "1000", "--seed", "1"];
    let overflow = common::client(&l7.node, &l7.client, &send);
    assert_eq!(
        overflow["ok"], false,
        "a second connection is closed while one is open: {overflow}"
    );
    const OVERFLOWS: &str = "shunt_upstream_overflow_total";
    let metrics = l7
        .node
        .wait_metrics("the overflow counted", REPORT_TIMEOUT, |m| {
            sum(m, OVERFLOWS, &[("limit", "max_connections")]) >= 1
        })
        .or_panic("metrics");
    assert_eq!(
        sum(&metrics, OVERFLOWS, &[("limit", "max_connections")]),
        1,
        "{}",
        metrics.describe(OVERFLOWS)
    );
    assert_eq!(
        reached(&metrics),
        1,
        "the closed connection never reached the backend: {}",
        metrics.describe(OPENED)
    );
    let log = l7
        .node
        .wait_access_log("the overflow logged", REPORT_TIMEOUT, |log| {
            log.entries.iter().any(|e| {
                e["error"]
                    .as_str()
                    .is_some_and(|error| error.starts_with("UO: "))
            })
        })
        .or_panic("access log");
    let overflowed: Vec<&Value> = log
        .entries
        .iter()
        .filter(|e| e["error"].as_str().is_some_and(|e| e.starts_with("UO: ")))
        .collect();
    assert_eq!(overflowed.len(), 1, "{}", log.describe());
    assert_eq!(overflowed[0]["direction"], "outbound", "{}", log.describe());

    std::fs::write(&stop_file, "").or_panic("stop file");
    let hold = hold
        .finish(CLIENT_TIMEOUT)
        .or_panic("hold")
        .json()
        .or_panic("hold report");
    assert_eq!(
        hold["ok"], true,
        "the held connection was not disturbed: {hold}"
    );
    // The slot is free once the proxy saw the held connection close.
    l7.node
        .wait_metrics("the held connection closed", REPORT_TIMEOUT, |m| {
            sum(
                m,
                "istio_tcp_connections_closed_total",
                &[("reporter", "source")],
            ) >= 2
        })
        .or_panic("metrics");
    common::send_ok(
        &l7.node,
        &l7.client,
        std::net::SocketAddr::from((ECHO.ip, 9000)),
        1000,
        2,
    );
    let metrics = l7.node.metrics().or_panic("metrics");
    assert_eq!(reached(&metrics), 2, "{}", metrics.describe(OPENED));
}

/// A namespace without injection: its pods are not captured.
const PLAIN: &str = "plain";

#[test]
fn inbound_http_is_reported_by_the_destination() {
    let outsider = Backend {
        name: "outsider",
        app: "outsider",
        version: "v1",
        namespace: PLAIN,
    };
    let Some(mut l7) = L7::start(
        "l7::inbound_http_reported_by_destination",
        &[WEB],
        &[WEB_V1, outsider],
        &[],
    ) else {
        return;
    };
    l7.serve("web-v1", &[]);
    // Captured client → Service: reported by both ends.
    let h1 = l7.http(&url(&WEB, "/in"), &["-n", "4"]);
    let h2 = l7.http(&url(&WEB, "/in"), &["-n", "2", "--http2"]);
    assert_eq!(h1["status"], json!({"200": 4}), "{h1}");
    assert_eq!(h2["status"], json!({"200": 2}), "{h2}");
    // Uncaptured client → the pod IP: only the destination's proxy sees it.
    let direct = format!("http://{}/direct", l7.pod("web-v1").addr(HTTP_PORT));
    let outsider_pod = l7.pod("outsider").clone();
    let ok = httppod_json(
        &l7.node,
        &outsider_pod,
        &["http", "--url", &direct, "-n", "3"],
    );
    let not_found = httppod_json(
        &l7.node,
        &outsider_pod,
        &["http", "--url", &direct, "-n", "2", "-H", "x-status: 404"],
    );
    assert_eq!(ok["status"], json!({"200": 3}), "{ok}");
    assert_eq!(not_found["status"], json!({"404": 2}), "{not_found}");

    let destination = |source: &'static str, code: &'static str| {
        [
            ("reporter", "destination"),
            ("source_workload", source),
            ("destination_workload", "web-v1"),
            ("destination_workload_namespace", MESH),
            ("destination_service", "web.mesh.svc.cluster.local"),
            ("destination_version", "v1"),
            ("request_protocol", "http"),
            ("response_code", code),
            ("response_flags", "-"),
        ]
    };
    let expected = [
        (destination("client", "200"), 6),
        (destination("outsider", "200"), 3),
        (destination("outsider", "404"), 2),
    ];
    let metrics = l7
        .node
        .wait_metrics(
            "reporter=destination requests of both clients",
            REPORT_TIMEOUT,
            |m| {
                expected
                    .iter()
                    .all(|(labels, want)| sum(m, REQUESTS, labels) >= *want)
            },
        )
        .or_panic("metrics");
    for (labels, want) in &expected {
        assert_eq!(
            sum(&metrics, REQUESTS, labels),
            *want,
            "{labels:?}\n{}",
            metrics.describe(REQUESTS)
        );
        assert_eq!(
            sum(
                &metrics,
                "istio_request_duration_milliseconds_count",
                labels
            ),
            *want,
            "{labels:?}"
        );
    }
    // The captured client's own proxy still reports its side, and only its requests.
    l7.expect_requests(
        &[
            ("source_workload", "client"),
            ("destination_workload", "web-v1"),
            ("response_code", "200"),
        ],
        6,
    );
    assert_eq!(
        sum(
            &metrics,
            REQUESTS,
            &[("source_workload", "outsider"), ("reporter", "source")]
        ),
        0
    );

    let log = l7.expect_log_lines(
        &[
            ("direction", "inbound"),
            ("reporter", "destination"),
            ("pod", "mesh/web-v1"),
        ],
        11,
    );
    // Each request's id is the same in the client's and the server's proxy logs.
    let ids = |fields: &[(&str, &str)]| -> BTreeSet<String> {
        log.matching(fields)
            .iter()
            .filter_map(|line| line["request_id"].as_str().map(str::to_owned))
            .collect()
    };
    let outbound = ids(&[("direction", "outbound"), ("path", "/in")]);
    let inbound = ids(&[("direction", "inbound"), ("path", "/in")]);
    assert_eq!(outbound.len(), 6, "{}", log.describe());
    assert_eq!(outbound, inbound, "{}", log.describe());
    assert_eq!(
        log.matching(&[("direction", "inbound"), ("src_workload", "outsider")])
            .len(),
        5,
        "{}",
        log.describe()
    );
}

/// A captured client and its server on the same node: the node proxy delivers each request
/// from the server pod's netns in one pass (the server's inbound listener never sees it), and
/// still reports both sides, each once.
#[test]
fn same_node_requests_take_one_proxy_pass_and_report_both_sides() {
    let Some(mut l7) = L7::start("l7::same_node_one_pass", &[WEB], &[WEB_V1], &[]) else {
        return;
    };
    l7.serve("web-v1", &[]);
    let h1 = l7.http(&url(&WEB, "/one"), &["-n", "5"]);
    let h2 = l7.http(&url(&WEB, "/one"), &["-n", "3", "--http2"]);
    assert_eq!(h1["status"], json!({"200": 5}), "{h1}");
    assert_eq!(h2["status"], json!({"200": 3}), "{h2}");

    let labels = |reporter| {
        [
            ("reporter", reporter),
            ("source_workload", "client"),
            ("destination_workload", "web-v1"),
            ("destination_service", "web.mesh.svc.cluster.local"),
            ("destination_version", "v1"),
            ("response_code", "200"),
            ("response_flags", "-"),
        ]
    };
    let metrics = l7
        .node
        .wait_metrics("both reporters", REPORT_TIMEOUT, |m| {
            sum(m, REQUESTS, &labels("source")) >= 8
                && sum(m, REQUESTS, &labels("destination")) >= 8
        })
        .or_panic("metrics");
    for reporter in ["source", "destination"] {
        assert_eq!(
            sum(&metrics, REQUESTS, &labels(reporter)),
            8,
            "{reporter}: {}",
            metrics.describe(REQUESTS)
        );
    }
    assert!(
        sum(&metrics, "shunt_same_node_connections_total", &[]) >= 1,
        "{}",
        metrics.describe("shunt_same_node_connections_total")
    );
    let log = l7.expect_log_lines(
        &[
            ("direction", "inbound"),
            ("reporter", "destination"),
            ("path", "/one"),
        ],
        8,
    );
    assert!(
        log.matching(&[("direction", "inbound"), ("path", "/one")])
            .iter()
            .all(|line| line["pod"]
                .as_str()
                .is_some_and(|p| p.starts_with("mesh/web-v1"))),
        "{}",
        log.describe()
    );
    // Both lines of a request name the client by its pod IP and its own port, the same on
    // each side (no second connection exists to have a port of its own).
    let client_by_side = |direction| -> BTreeSet<(String, String)> {
        log.matching(&[("direction", direction), ("path", "/one")])
            .iter()
            .map(|line| {
                let field = |name: &str| line[name].as_str().unwrap_or_default().to_owned();
                (field("request_id"), field("src_addr"))
            })
            .collect()
    };
    let outbound = client_by_side("outbound");
    assert_eq!(outbound, client_by_side("inbound"), "{}", log.describe());
    let client_ip = format!("{}:", l7.client.ip);
    for (_, src) in &outbound {
        let port = src.strip_prefix(&client_ip).map(str::parse::<u16>);
        assert!(
            matches!(port, Some(Ok(port)) if port != 0),
            "src_addr {src}, expected {client_ip}<port>\n{}",
            log.describe()
        );
    }

    // Had web-v1's inbound listener handled a request, its proxy side would hold the
    // `inbound|port||` cluster it delivers through.
    let clusters = shunt_tests::http::get_tcp(l7.node.metrics_addr(), "/debug/clusters")
        .or_panic("/debug/clusters");
    let clusters: Value = serde_json::from_slice(&clusters.body).or_panic("clusters JSON");
    let inbound: Vec<&String> = clusters
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(_, pod)| pod["clusters"].as_object().into_iter().flatten())
        .map(|(name, _)| name)
        .filter(|name| name.starts_with("inbound|"))
        .collect();
    assert!(inbound.is_empty(), "inbound clusters in use: {clusters}");
}

/// An HTTPS server outside the mesh (a pod of an uninjected namespace) with a CA of its own.
const EXTERNAL: Backend = Backend {
    name: "external",
    app: "external",
    version: "v1",
    namespace: "outside",
};
const EXTERNAL_HOST: &str = "api.external.test";
const EXTERNAL_ADDRESS: &str = "10.250.0.7";
/// Where the external server speaks HTTPS (and only HTTPS).
const HTTPS_PORT: u16 = 8443;

#[test]
fn tls_origination_sends_the_apps_plain_http_over_tls_to_a_service_entry_host() {
    const TEST: &str = "l7::tls_origination";
    let external_ip = pod_ip(21);
    // In the node's own dir (named after the test), written once the node exists: the proxy
    // reads it when the cluster is first used.
    let ca_dir = shunt_tests::Names::new(TEST).temp_dir().join("external-ca");
    let ca_file = ca_dir.join("ca.pem").to_string_lossy().into_owned();
    // istio.io's "Egress TLS Origination": the app calls port 80 in plain HTTP; the proxy
    // sends TLS to the entry's targetPort.
    let istio = [
        istio::service_entry(
            MESH,
            "external-api",
            json!({
                "hosts": [EXTERNAL_HOST],
                "addresses": [EXTERNAL_ADDRESS],
                "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": HTTPS_PORT}],
                "resolution": "STATIC",
                "location": "MESH_EXTERNAL",
                "endpoints": [{"address": external_ip.to_string()}],
            }),
        ),
        destination_rule(
            MESH,
            "external-api-tls",
            json!({"host": EXTERNAL_HOST, "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 80}, "tls": {"mode": "SIMPLE", "caCertificates": ca_file}}
            ]}}),
        ),
    ];
    let Some(mut l7) = L7::start(TEST, &[], &[EXTERNAL], &istio) else {
        return;
    };
    assert!(
        ca_dir.starts_with(l7.node.dir()),
        "{} is not in the node's dir {}",
        ca_dir.display(),
        l7.node.dir().display()
    );
    let issued = shunt_tests::certs::TestCa::new(&ca_dir, "external test CA")
        .and_then(|mut ca| {
            ca.issue(
                "server",
                &[EXTERNAL_HOST],
                shunt_tests::certs::Usage::Server,
            )
        })
        .or_panic("test certificates");
    let (cert, key) = (
        issued.cert.to_string_lossy().into_owned(),
        issued.key.to_string_lossy().into_owned(),
    );
    let https = HTTPS_PORT.to_string();
    l7.serve(
        "external",
        &["--tls-port", &https, "--tls-cert", &cert, "--tls-key", &key],
    );

    let connect = format!("{EXTERNAL_ADDRESS}:80");
    let url = format!("http://{EXTERNAL_HOST}/originated");
    let report = l7.http(&url, &["--connect", &connect, "-n", "3"]);
    assert_eq!(report["status"], json!({"200": 3}), "{report}");
    assert_eq!(report["served_by"], json!({"external": 3}), "{report}");
    let seen = l7.seen("external");
    let requests = seen["requests"].as_array().cloned().unwrap_or_default();
    assert_eq!(requests.len(), 3, "{seen}");
    for request in &requests {
        assert_eq!(request["path"], "/originated", "{seen}");
        assert_eq!(
            request["tls"],
            json!({"sni": EXTERNAL_HOST, "alpn": "http/1.1"}),
            "over TLS, SNI the entry's host, HTTP/1.1 inside: {seen}"
        );
    }
    l7.expect_log_lines(
        &[
            ("upstream_cluster", "outbound|80||api.external.test"),
            ("response_code", "200"),
            ("upstream_host", &format!("{external_ip}:{HTTPS_PORT}")),
        ],
        3,
    );

    // The control: the same port in plain HTTP, straight to the pod (no rule applies), is
    // not understood there.
    let plain = l7.http(&format!("http://{external_ip}:{HTTPS_PORT}/plain"), &[]);
    assert!(plain["status"].get("200").is_none(), "{plain}");
    assert_eq!(
        l7.seen("external")["total"],
        3,
        "a plaintext request is not served"
    );
}
