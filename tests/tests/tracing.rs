//! End to end, tracing (issue 19 §1): a captured client calls a captured backend through its
//! Service, and the proxy's spans reach real receivers on loopback (the proxy runs in the
//! test's netns and exports from it): a Zipkin v2 JSON receiver that checks every span
//! against the v2 schema, an OTLP HTTP/protobuf receiver that decodes each export with
//! `opentelemetry-proto` (the Rust crate), and an OTLP gRPC collector made of PyPI's
//! `opentelemetry-proto` and `grpcio` (`tracing/otlp_grpc_receiver.py`, in the venv `cargo
//! xtask setup` installs). Runs as root (skipping, saying so, otherwise).

#[expect(
    dead_code,
    reason = "the TCP echo helpers of the shared module are for e2e.rs"
)]
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::{OrPanic, pod_ip};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use serde_json::{Value, json};
use shunt_tests::{AgentOptions, ClusterConfig, NamespaceConfig, Node, Pod, ServiceConfig};

const MESH: &str = "mesh";
const HTTP_PORT: u16 = 8080;
const SERVICE_PORT: u16 = 80;
const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const BACKEND_HOST: &str = "backend.mesh.svc.cluster.local";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
/// For spans to arrive (the exporter flushes a partial batch each second) or a config to
/// apply.
const REPORT_TIMEOUT: Duration = Duration::from_secs(20);
/// One receiver request's head and body at most.
const MAX_REQUEST: usize = 16 << 20;

/// What a receiver got: each POST's path and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A plain HTTP/1.1 receiver on loopback: it keeps each request's path and body and answers
/// 202, one request per connection. Stops with the test.
struct Receiver {
    addr: SocketAddr,
    received: Received,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").or_panic("receiver bind");
        listener.set_nonblocking(true).or_panic("nonblocking");
        let addr = listener.local_addr().or_panic("receiver addr");
        let received: Received = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (received, stop) = (received.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Some(request) = read_request(stream) {
                                received
                                    .lock()
                                    .unwrap_or_else(PoisonError::into_inner)
                                    .push(request);
                            }
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Self {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    fn bodies(&self, path: &str) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, body)| body.clone())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request's path and body (`Content-Length` framing, as the exporter sends), answered
/// 202.
fn read_request(mut stream: TcpStream) -> Option<(String, Vec<u8>)> {
    stream.set_nonblocking(false).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 || data.len() > MAX_REQUEST {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let path = head.split_whitespace().nth(1)?.to_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while data.len() < head_end + length.min(MAX_REQUEST) {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let _ = stream
        .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    Some((path, data[head_end..head_end + length].to_vec()))
}

/// The Python OTLP gRPC collector: its port and the spans it printed.
struct GrpcReceiver {
    port: u16,
    spans: Arc<Mutex<Vec<Value>>>,
    child: std::process::Child,
}

impl GrpcReceiver {
    fn start() -> Self {
        let python = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/tools/otlp-receiver/bin/python"
        );
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tracing/otlp_grpc_receiver.py"
        );
        let mut child = std::process::Command::new(python)
            .arg(script)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{python} {script}: {e} (`cargo xtask setup` installs its venv)")
            });
        let mut lines = BufReader::new(
            child
                .stdout
                .take()
                .unwrap_or_else(|| panic!("piped stdout")),
        )
        .lines();
        let first = lines
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("the OTLP gRPC receiver printed nothing"));
        let port = first
            .strip_prefix("LISTENING ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the OTLP gRPC receiver said {first:?}"));
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        {
            let spans = spans.clone();
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    if let Ok(span) = serde_json::from_str(&line) {
                        spans
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(span);
                    }
                }
            });
        }
        Self { port, spans, child }
    }

    fn spans_of_trace(&self, trace_id: &str) -> Vec<Value> {
        self.spans
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|s| s["trace_id"] == trace_id)
            .cloned()
            .collect()
    }
}

impl Drop for GrpcReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every Zipkin span received so far, each checked against the Zipkin v2 schema.
fn zipkin_spans(receiver: &Receiver) -> Vec<Value> {
    let mut spans = Vec::new();
    for body in receiver.bodies("/api/v2/spans") {
        let batch: Value = serde_json::from_slice(&body).or_panic("Zipkin body is JSON");
        let batch = batch
            .as_array()
            .unwrap_or_else(|| panic!("a Zipkin v2 body is a list of spans"));
        for span in batch {
            check_zipkin_v2(span);
            spans.push(span.clone());
        }
    }
    spans
}

fn is_hex(value: &Value, lengths: &[usize]) -> bool {
    value.as_str().is_some_and(|text| {
        lengths.contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The Zipkin v2 `Span` model (zipkin2-api.yaml): its fields and their types, nothing else.
fn check_zipkin_v2(span: &Value) {
    const FIELDS: [&str; 13] = [
        "traceId",
        "name",
        "parentId",
        "id",
        "kind",
        "timestamp",
        "duration",
        "debug",
        "shared",
        "localEndpoint",
        "remoteEndpoint",
        "annotations",
        "tags",
    ];
    let object = span.as_object().unwrap_or_else(|| panic!("span {span}"));
    for key in object.keys() {
        assert!(
            FIELDS.contains(&key.as_str()),
            "unknown field {key}: {span}"
        );
    }
    assert!(is_hex(&span["traceId"], &[16, 32]), "traceId: {span}");
    assert!(is_hex(&span["id"], &[16]), "id: {span}");
    if let Some(parent) = object.get("parentId") {
        assert!(is_hex(parent, &[16]), "parentId: {span}");
    }
    assert!(
        ["CLIENT", "SERVER", "PRODUCER", "CONSUMER"].contains(&span["kind"].as_str().unwrap_or("")),
        "kind: {span}"
    );
    assert!(span["name"].is_string(), "name: {span}");
    assert!(
        span["timestamp"].as_u64().is_some_and(|t| t > 0),
        "timestamp: {span}"
    );
    assert!(
        span["duration"].as_u64().is_some_and(|d| d >= 1),
        "duration: {span}"
    );
    for endpoint in ["localEndpoint", "remoteEndpoint"] {
        let Some(endpoint) = object.get(endpoint) else {
            continue;
        };
        let endpoint = endpoint
            .as_object()
            .unwrap_or_else(|| panic!("endpoint {span}"));
        for (key, value) in endpoint {
            match key.as_str() {
                "serviceName" => assert!(value.is_string(), "serviceName: {span}"),
                "ipv4" => assert!(
                    value
                        .as_str()
                        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                        .is_some(),
                    "ipv4: {span}"
                ),
                "ipv6" => assert!(
                    value
                        .as_str()
                        .and_then(|ip| ip.parse::<std::net::Ipv6Addr>().ok())
                        .is_some(),
                    "ipv6: {span}"
                ),
                "port" => assert!(
                    value.as_u64().is_some_and(|p| (1..=65535).contains(&p)),
                    "port: {span}"
                ),
                other => panic!("unknown endpoint field {other}: {span}"),
            }
        }
    }
    assert!(
        span["localEndpoint"]["serviceName"].is_string(),
        "localEndpoint.serviceName: {span}"
    );
    let tags = span["tags"]
        .as_object()
        .unwrap_or_else(|| panic!("tags: {span}"));
    assert!(
        tags.values().all(Value::is_string),
        "tags are strings: {span}"
    );
}

/// The OTLP spans received so far: (trace id hex, span id hex, parent hex, kind, service).
fn otlp_spans(receiver: &Receiver) -> Vec<(String, String, String, i32, String)> {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut spans = Vec::new();
    for body in receiver.bodies("/v1/traces") {
        let request =
            ExportTraceServiceRequest::decode(body.as_slice()).or_panic("OTLP body decodes");
        for resource in request.resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .and_then(|a| a.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("every OTLP resource names its service.name"));
            for scope in resource.scope_spans {
                for span in scope.spans {
                    assert_eq!(span.trace_id.len(), 16, "OTLP trace ids are 16 bytes");
                    assert_eq!(span.span_id.len(), 8, "OTLP span ids are 8 bytes");
                    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
                    spans.push((
                        hex(&span.trace_id),
                        hex(&span.span_id),
                        hex(&span.parent_span_id),
                        span.kind,
                        service.clone(),
                    ));
                }
            }
        }
    }
    spans
}

fn mesh_config(providers: &str, sampling: f64) -> [Value; 2] {
    [
        shunt_tests::istio::istio_system_namespace(),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": "istio-system"},
            "data": {"mesh": format!(
                "{providers}defaultConfig:\n  tracing:\n    sampling: {sampling}\n"
            )},
        }),
    ]
}

/// Zipkin at `zipkin`, OTLP HTTP at `otlp` and OTLP gRPC on loopback's `grpc_port`, all
/// the mesh's default providers.
fn all_providers(zipkin: SocketAddr, otlp: SocketAddr, grpc_port: u16) -> String {
    format!(
        "extensionProviders:\n\
         - name: zipkin\n\
         \x20 zipkin:\n\
         \x20   service: \"{}\"\n\
         \x20   port: {}\n\
         - name: otel\n\
         \x20 opentelemetry:\n\
         \x20   service: \"{}\"\n\
         \x20   port: {}\n\
         \x20   http:\n\
         \x20     path: /v1/traces\n\
         - name: otel-grpc\n\
         \x20 opentelemetry:\n\
         \x20   service: \"127.0.0.1\"\n\
         \x20   port: {grpc_port}\n\
         defaultProviders:\n\
         \x20 tracing: [zipkin, otel, otel-grpc]\n",
        zipkin.ip(),
        zipkin.port(),
        otlp.ip(),
        otlp.port()
    )
}

struct Traced {
    node: Node,
    client: Pod,
    _server: shunt_tests::Process,
}

impl Traced {
    fn start(test: &str, istio: &[Value]) -> Option<Self> {
        if shunt_tests::skip_unless_root(test) {
            return None;
        }
        let binaries = common::binaries();
        binaries.require_all().or_panic("binaries under test");
        binaries.httppod().or_panic("shunt-httppod");
        let mut node = Node::with_binaries(test, binaries).or_panic("creating the node");
        let client = node.add_pod("client", pod_ip(10)).or_panic("client pod");
        let backend = node.add_pod("backend", pod_ip(21)).or_panic("backend pod");
        let config = ClusterConfig::new()
            .namespace(&NamespaceConfig::injected(MESH))
            .pod(&node.pod_config(&client, MESH).label("app", "client"))
            .pod(
                &node
                    .pod_config(&backend, MESH)
                    .label("app", "backend")
                    .label("version", "v1")
                    .port("http", HTTP_PORT),
            )
            .service(
                &ServiceConfig::new(MESH, "backend", SERVICE_IP)
                    .select("app", "backend")
                    .port("http", SERVICE_PORT, HTTP_PORT),
            );
        node.write_config(&config).or_panic("cluster config");
        node.write_istio(istio).or_panic("Istio config");
        node.start_agent(&AgentOptions::default()).or_panic("agent");
        let loaded = node.admin().config().or_panic("GET /config");
        assert_eq!(loaded["errors"], json!([]), "config rejected: {loaded}");
        node.start_proxy().or_panic("proxy");
        node.wait_captured(&[&client, &backend]).or_panic("capture");
        let port = HTTP_PORT.to_string();
        let server = node
            .start_httppod_server(&backend, &["serve", "--port", &port, "--name", "backend"])
            .or_panic("backend server");
        Some(Self {
            node,
            client,
            _server: server,
        })
    }

    /// `count` GETs of `path` from the client through the Service; the report.
    fn get(&self, path: &str, count: u64, headers: &[&str]) -> Value {
        let url = format!("http://{BACKEND_HOST}:{SERVICE_PORT}{path}");
        let connect = SocketAddr::from((SERVICE_IP, SERVICE_PORT)).to_string();
        let count = count.to_string();
        let mut args = vec![
            "http",
            "--url",
            &url,
            "--connect",
            &connect,
            "-n",
            &count,
            "-c",
            "4",
        ];
        for header in headers {
            args.extend(["-H", header]);
        }
        let output = self
            .node
            .run_httppod(&self.client, &args, CLIENT_TIMEOUT)
            .or_panic("httppod client");
        assert!(output.status.success(), "client failed: {}", output.stderr);
        output.json().or_panic("client report")
    }

    /// Waits for the spans whose `http.url` ends with `path`, until `done` says so.
    fn spans_of(
        &self,
        zipkin: &Receiver,
        path: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + REPORT_TIMEOUT;
        loop {
            let spans: Vec<Value> = zipkin_spans(zipkin)
                .into_iter()
                .filter(|s| {
                    s["tags"]["http.url"]
                        .as_str()
                        .is_some_and(|url| url.ends_with(path))
                })
                .collect();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "spans of {path} never arrived; have {spans:#?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn ok_count(report: &Value) -> u64 {
    report["status"]["200"].as_u64().unwrap_or(0)
}

fn tag<'a>(span: &'a Value, key: &str) -> &'a str {
    span["tags"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no tag {key}: {span}"))
}

fn of_kind<'a>(spans: &'a [Value], kind: &str) -> &'a Value {
    spans
        .iter()
        .find(|s| s["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} span in {spans:#?}"))
}

#[test]
fn spans_reach_zipkin_and_otlp_and_continue_incoming_contexts() {
    const TEST: &str = "tracing::spans_reach_zipkin_and_otlp_and_continue_incoming_contexts";
    let zipkin = Receiver::start();
    let otlp = Receiver::start();
    let grpc = GrpcReceiver::start();
    let providers = all_providers(zipkin.addr, otlp.addr, grpc.port);
    let Some(traced) = Traced::start(TEST, &mesh_config(&providers, 100.0)) else {
        return;
    };

    // One request, no context: a new trace, CLIENT at the client, SERVER at the backend.
    let report = traced.get("/plain", 1, &[]);
    assert_eq!(ok_count(&report), 1, "{report}");
    let spans = traced.spans_of(&zipkin, "/plain", |s| s.len() >= 2);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (client, server) = (of_kind(&spans, "CLIENT"), of_kind(&spans, "SERVER"));
    assert_eq!(client["traceId"], server["traceId"], "{spans:#?}");
    assert!(
        client.get("parentId").is_none(),
        "a new trace's root: {client}"
    );
    assert_eq!(
        server["parentId"], client["id"],
        "SERVER is the CLIENT's child"
    );
    let name = format!("{BACKEND_HOST}:{SERVICE_PORT}/*");
    // (span, service name, istio.canonical_service)
    for (span, service, canonical) in [
        (client, "client.mesh", "client"),
        (server, "backend.mesh", "backend"),
    ] {
        assert_eq!(span["localEndpoint"]["serviceName"], service, "{span}");
        for (key, want) in [
            ("http.method", "GET"),
            ("http.protocol", "HTTP/1.1"),
            ("http.status_code", "200"),
            ("component", "proxy"),
            ("response_flags", "-"),
            ("istio.namespace", MESH),
            ("istio.canonical_service", canonical),
            ("istio.mesh_id", "cluster.local"),
        ] {
            assert_eq!(tag(span, key), want, "{key} of {span}");
        }
        assert!(
            span["tags"].get("error").is_none(),
            "a 200 is no error: {span}"
        );
        assert_eq!(
            tag(span, "http.url"),
            format!("http://{BACKEND_HOST}:{SERVICE_PORT}/plain")
        );
        assert!(
            tag(span, "node_id").starts_with("sidecar~10.244.0."),
            "{span}"
        );
    }
    assert_eq!(client["name"], name.as_str(), "{client}");
    assert_eq!(
        tag(client, "guid:x-request-id"),
        tag(server, "guid:x-request-id")
    );
    assert!(
        tag(client, "upstream_cluster")
            .starts_with(&format!("outbound|{SERVICE_PORT}||{BACKEND_HOST}")),
        "{client}"
    );
    assert_eq!(tag(server, "istio.canonical_revision"), "v1", "{server}");
    // The app got the trace, B3 and W3C both (two kinds of provider).
    let seen = &report["first_response"]["body"]["headers"];
    let trace_id = client["traceId"].as_str().unwrap_or_default();
    assert_eq!(seen["x-b3-traceid"], trace_id, "{seen}");
    let ids: BTreeSet<&str> = spans.iter().filter_map(|s| s["id"].as_str()).collect();
    assert!(
        seen["x-b3-spanid"]
            .as_str()
            .is_some_and(|id| ids.contains(id)),
        "the app's parent is one of the request's spans: {seen}"
    );
    assert!(
        seen["traceparent"]
            .as_str()
            .is_some_and(|tp| tp.contains(trace_id)),
        "{seen}"
    );
    // The same spans over OTLP.
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        let exported = otlp_spans(&otlp);
        let of_trace: Vec<_> = exported.iter().filter(|s| s.0 == trace_id).collect();
        if of_trace.len() >= 2 {
            let services: BTreeSet<&str> = of_trace.iter().map(|s| s.4.as_str()).collect();
            assert_eq!(services, BTreeSet::from(["backend.mesh", "client.mesh"]));
            // OTLP SpanKind: SERVER 2, CLIENT 3.
            let kinds: BTreeSet<i32> = of_trace.iter().map(|s| s.3).collect();
            assert_eq!(kinds, BTreeSet::from([2, 3]));
            let server = of_trace
                .iter()
                .find(|s| s.3 == 2)
                .unwrap_or_else(|| panic!("server"));
            assert_eq!(Some(server.2.as_str()), client["id"].as_str());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "OTLP spans never arrived: {exported:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // And over OTLP gRPC, to the collector made of PyPI's packages.
    let deadline = Instant::now() + REPORT_TIMEOUT;
    loop {
        let of_trace = grpc.spans_of_trace(trace_id);
        if of_trace.len() >= 2 {
            let server = of_trace
                .iter()
                .find(|s| s["kind"] == 2)
                .unwrap_or_else(|| panic!("no SERVER span over gRPC: {of_trace:#?}"));
            assert_eq!(server["parent_span_id"], client["id"], "{server}");
            assert_eq!(server["service"], "backend.mesh", "{server}");
            assert_eq!(server["attributes"]["http.status_code"], "200", "{server}");
            let client_span = of_trace
                .iter()
                .find(|s| s["kind"] == 3)
                .unwrap_or_else(|| panic!("CLIENT"));
            assert_eq!(client_span["name"], name.as_str(), "{client_span}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "OTLP gRPC spans never arrived: {of_trace:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Incoming contexts are continued: B3 multi, B3 single, W3C.
    let (trace, parent) = ("463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312");
    let traceparent = format!("traceparent: 00-{trace}-{parent}-01");
    let b3_single = format!("b3: {trace}-{parent}-1");
    let b3_multi = [
        format!("x-b3-traceid: {trace}"),
        format!("x-b3-spanid: {parent}"),
        "x-b3-sampled: 1".to_owned(),
    ];
    // (case, path, headers)
    let cases: [(&str, &str, Vec<&str>); 3] = [
        (
            "b3 multi",
            "/b3-multi",
            b3_multi.iter().map(String::as_str).collect(),
        ),
        ("b3 single", "/b3-single", vec![b3_single.as_str()]),
        ("traceparent", "/w3c", vec![traceparent.as_str()]),
    ];
    for (case, path, headers) in &cases {
        let report = traced.get(path, 1, headers);
        assert_eq!(ok_count(&report), 1, "{case}: {report}");
        let spans = traced.spans_of(&zipkin, path, |s| s.len() >= 2);
        let client = of_kind(&spans, "CLIENT");
        assert_eq!(client["traceId"], trace, "{case}: {client}");
        assert_eq!(client["parentId"], parent, "{case}: {client}");
        assert_eq!(
            of_kind(&spans, "SERVER")["parentId"],
            client["id"],
            "{case}: {spans:#?}"
        );
    }

    // An incoming "not sampled" wins over 100%: the request goes, no span is reported. The
    // queue is FIFO, so once the next request's spans are in, these would be too.
    let report = traced.get("/unsampled", 3, &["x-b3-sampled: 0"]);
    assert_eq!(ok_count(&report), 3, "{report}");
    traced.get("/after-unsampled", 1, &[]);
    traced.spans_of(&zipkin, "/after-unsampled", |s| s.len() >= 2);
    let unsampled = traced.spans_of(&zipkin, "/unsampled", |_| true);
    assert!(
        unsampled.is_empty(),
        "unsampled requests were reported: {unsampled:#?}"
    );

    traced.node.teardown();
}

#[test]
fn one_percent_sampling_and_a_dead_collector_never_fail_requests() {
    const TEST: &str = "tracing::one_percent_sampling_and_a_dead_collector_never_fail_requests";
    const REQUESTS: u64 = 10_000;
    let zipkin = Receiver::start();
    let providers = format!(
        "extensionProviders:\n\
         - name: zipkin\n\
         \x20 zipkin:\n\
         \x20   service: \"{}\"\n\
         \x20   port: {}\n\
         defaultProviders:\n\
         \x20 tracing: [zipkin]\n",
        zipkin.addr.ip(),
        zipkin.addr.port()
    );
    let Some(traced) = Traced::start(TEST, &mesh_config(&providers, 1.0)) else {
        return;
    };
    // 1% of 10k undecided requests: Binomial(10_000, 0.01), mean 100, sigma ~9.95; 5 sigma
    // either side.
    let report = traced.get("/sampled", REQUESTS, &[]);
    assert_eq!(ok_count(&report), REQUESTS, "{report}");
    // A marker request, sampled by its header, flushes behind them.
    traced.get("/marker", 1, &["x-b3-sampled: 1"]);
    traced.spans_of(&zipkin, "/marker", |s| s.len() >= 2);
    let sampled = traced.spans_of(&zipkin, "/sampled", |_| true);
    let traces = sampled.iter().filter(|s| s["kind"] == "CLIENT").count();
    println!("{traces} of {REQUESTS} undecided requests traced at 1%");
    assert!(
        (50..=150).contains(&traces),
        "{traces} of {REQUESTS} traced at 1%"
    );
    assert_eq!(
        sampled.len(),
        2 * traces,
        "each sampled request has both spans"
    );

    // The collector goes away (a port nothing listens on): every request still succeeds
    // and the proxy counts the lost exports.
    let dead = TcpListener::bind("127.0.0.1:0").or_panic("dead port");
    let dead_addr = dead.local_addr().or_panic("dead addr");
    drop(dead);
    let dead_providers = providers.replace(
        &zipkin.addr.port().to_string(),
        &dead_addr.port().to_string(),
    );
    traced
        .node
        .write_istio(&mesh_config(&dead_providers, 100.0))
        .or_panic("dead collector config");
    let deadline = Instant::now() + REPORT_TIMEOUT;
    let mut sent = 0;
    loop {
        let report = traced.get("/dead", 100, &[]);
        assert_eq!(
            ok_count(&report),
            100,
            "a dead collector failed requests: {report}"
        );
        sent += 100;
        let metrics = traced.node.metrics().or_panic("metrics");
        let failed = metrics.sum("shunt_tracing_export_failures_total", &[]);
        if failed > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no export failure counted after {sent} requests to a dead collector"
        );
    }
    traced.node.teardown();
}
