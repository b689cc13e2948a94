//! End to end, gateways (issue 17): a gateway pod (labels `istio: ingressgateway`, a netns
//! with nothing running in it, as a pause container) whose Gateways' ports the node proxy
//! serves in its netns, reached from an "outside" netns that is not in the mesh config, with
//! real clients: curl (`--resolve`, `--cacert`, `--cert`, `--http2`) and openssl `s_client`.
//! Backends are captured pods running `shunt-httppod serve`. Every test runs as root (skipping,
//! saying so, otherwise) on its own node named after it.

#[expect(
    dead_code,
    reason = "the TCP echo helpers of the shared module are for e2e.rs"
)]
mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{OrPanic, pod_ip};
use serde_json::{Value, json};
use shunt_tests::certs::{Issued, TestCa, Usage};
use shunt_tests::istio::{self, ISTIO_SYSTEM};
use shunt_tests::wait::Check;
use shunt_tests::{AgentOptions, ClusterConfig, NamespaceConfig, Node, Pod, ServiceConfig};

/// The injected namespace of the backends.
const MESH: &str = "mesh";
/// Where `shunt-httppod serve` listens in every backend pod.
const HTTP_PORT: u16 = 8080;
/// Every backend also serves gRPC Health here; the Service of app [`GRPC_APP`] (only: a
/// second port would make the other tests' port-less destinations ambiguous) has port `grpc`
/// 9090 for it.
const GRPC_PORT: u16 = 9090;
const GRPC_APP: &str = "greeter";
/// For a client run, or for the proxy to apply a config change.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The gateway pod's address.
fn gateway_ip() -> Ipv4Addr {
    pod_ip(5)
}

/// A backend: pod `name` with labels `app` and `version`, behind Service `app` on port 80.
struct Backend {
    name: &'static str,
    app: &'static str,
    version: &'static str,
}

const fn backend(name: &'static str, app: &'static str, version: &'static str) -> Backend {
    Backend { name, app, version }
}

/// A node with the gateway pod (`istio-system/ingress`, 10.244.0.5), an outside client pod
/// that the mesh config does not know (10.244.0.99), and captured backends.
struct Edge {
    node: Node,
    outside: Pod,
    pods: BTreeMap<&'static str, Pod>,
    servers: Vec<shunt_tests::Process>,
    /// Certificates and other files of the test.
    dir: PathBuf,
}

/// What curl saw.
#[derive(Debug)]
struct Curl {
    /// The HTTP status, `0` when there was no response.
    status: u16,
    /// curl's `%{http_version}`: `1.1`, `2`.
    version: String,
    /// Everything curl printed.
    raw: String,
    body: String,
    /// Response headers, lowercase names.
    headers: BTreeMap<String, String>,
    exit: Option<i32>,
    #[expect(dead_code, reason = "read through Debug, in assertion messages")]
    stderr: String,
}

impl Curl {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {self:?}"))
    }

    /// The backend pod that answered (`shunt-httppod serve --name`).
    fn served_by(&self) -> String {
        self.json()["name"].as_str().unwrap_or_default().to_owned()
    }
}

impl Edge {
    /// Starts agent and proxy with the backends, one Service per distinct `app`, and the Istio
    /// objects, then waits for capture and for the gateway pod to be served. `None` when not
    /// root.
    fn start(test: &str, backends: &[Backend], objects: &[Value]) -> Option<Self> {
        Self::start_with(test, backends, objects, &[])
    }

    fn start_with(
        test: &str,
        backends: &[Backend],
        objects: &[Value],
        gateway_labels: &[(&str, &str)],
    ) -> Option<Self> {
        if shunt_tests::skip_unless_root(test) {
            return None;
        }
        let binaries = common::binaries();
        binaries.require_all().or_panic("binaries under test");
        binaries.httppod().or_panic("shunt-httppod");
        let mut node = Node::with_binaries(test, binaries).or_panic("creating the node");
        let dir = node.dir().join("files");
        std::fs::create_dir_all(&dir).or_panic("test files dir");
        let gateway = node
            .add_pod("ingress", gateway_ip())
            .or_panic("gateway pod");
        let outside = node.add_pod("outside", pod_ip(99)).or_panic("outside pod");
        let mut gateway_config = node
            .pod_config(&gateway, ISTIO_SYSTEM)
            .label("istio", "ingressgateway")
            .label("app", "istio-ingressgateway");
        for (key, value) in gateway_labels {
            gateway_config = gateway_config.label(key, value);
        }
        let mut config = ClusterConfig::new()
            .namespace(&NamespaceConfig::injected(MESH))
            .namespace(&NamespaceConfig::new(ISTIO_SYSTEM))
            .pod(&gateway_config);
        let mut pods = BTreeMap::new();
        let mut apps = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let last = 21 + u8::try_from(i).or_panic("backend count");
            let pod = node.add_pod(b.name, pod_ip(last)).or_panic(b.name);
            let mut pod_config = node
                .pod_config(&pod, MESH)
                .label("app", b.app)
                .label("version", b.version)
                .port("http", HTTP_PORT);
            if b.app == GRPC_APP {
                pod_config = pod_config.port("grpc", GRPC_PORT);
            }
            config = config.pod(&pod_config);
            pods.insert(b.name, pod);
            if !apps.contains(&b.app) {
                apps.push(b.app);
            }
        }
        for (i, app) in apps.iter().enumerate() {
            let last = 10 + u8::try_from(i).or_panic("service count");
            let mut service = ServiceConfig::new(MESH, app, Ipv4Addr::new(10, 96, 0, last))
                .select("app", app)
                .port("http", 80, HTTP_PORT);
            if *app == GRPC_APP {
                service = service.port("grpc", GRPC_PORT, GRPC_PORT);
            }
            config = config.service(&service);
        }
        node.write_config(&config)
            .or_panic("writing the cluster config");
        node.write_istio(objects)
            .or_panic("writing the Istio config");
        node.start_agent(&AgentOptions::default())
            .or_panic("starting the agent");
        node.start_proxy().or_panic("starting the proxy");
        let captured: Vec<&Pod> = pods.values().collect();
        node.wait_captured(&captured)
            .or_panic("waiting for capture");
        let mut edge = Self {
            node,
            outside,
            pods,
            servers: Vec::new(),
            dir,
        };
        // Tests that write their Gateways later wait for the gateway port instead.
        if objects.iter().any(|o| o["kind"] == "Gateway") {
            edge.wait_gateway_served();
        }
        let names: Vec<&'static str> = edge.pods.keys().copied().collect();
        for name in names {
            edge.serve(name);
        }
        Some(edge)
    }

    /// The agent's errors for the config, which must be none.
    fn assert_config_accepted(&self) {
        let loaded = self.node.admin().config().or_panic("GET /config");
        assert_eq!(
            loaded["errors"],
            json!([]),
            "the agent rejected part of the config: {loaded}"
        );
    }

    fn wait_gateway_served(&mut self) {
        let admin = self.node.admin();
        self.node
            .wait_while_running("the gateway pod to be served", TIMEOUT, |_| {
                let workloads = match admin.workloads() {
                    Ok(workloads) => workloads,
                    Err(e) => return Check::NotYet(e.to_string()),
                };
                match workloads.iter().find(|w| w.name == "ingress") {
                    Some(w) if w.proxy == "ready" && !w.captured => Check::Done(()),
                    other => Check::NotYet(format!("{other:?}")),
                }
            })
            .or_panic("gateway pod served");
    }

    fn serve(&mut self, name: &'static str) {
        let pod = &self.pods[name];
        let port = HTTP_PORT.to_string();
        let grpc = GRPC_PORT.to_string();
        let server = self
            .node
            .start_httppod_server(
                pod,
                &[
                    "serve",
                    "--port",
                    &port,
                    "--grpc-port",
                    &grpc,
                    "--name",
                    name,
                ],
            )
            .or_panic(&format!("httppod server in {name}"));
        self.servers.push(server);
    }

    /// Rewrites the Istio objects (the agent picks the change up by itself).
    fn rewrite(&self, objects: &[Value]) {
        self.node
            .write_istio(objects)
            .or_panic("rewriting the Istio config");
    }

    /// Runs curl in the outside pod: `args` then the URL, with `--resolve` for `host`s on the
    /// gateway's address.
    fn curl(&self, resolve: &[(&str, u16)], args: &[&str], url: &str) -> Curl {
        let marker = "\n--shunt-curl--";
        let mut curl = Command::new("curl");
        curl.args(["-sS", "--max-time", "10", "-D", "-", "-o", "-"]);
        curl.args(["-w", &format!("{marker}%{{http_code}} %{{http_version}}")]);
        for (host, port) in resolve {
            curl.arg("--resolve")
                .arg(format!("{host}:{port}:{}", gateway_ip()));
        }
        curl.args(args).arg(url);
        let output = self
            .node
            .spawn_in_pod(&self.outside, "curl", curl)
            .and_then(|p| Ok(p.finish(TIMEOUT)?))
            .or_panic("curl");
        let (response, trailer) = output
            .stdout
            .rsplit_once(marker)
            .unwrap_or((output.stdout.as_str(), "0 0"));
        let (status, version) = trailer.trim().split_once(' ').unwrap_or(("0", "0"));
        // Headers (of the last response), a blank line, the body.
        let (head, body) = response
            .rsplit_once("\r\n\r\n")
            .map_or(("", response), |(h, b)| (h, b));
        let head = head.rsplit("\r\n\r\n").next().unwrap_or(head);
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Curl {
            status: status.trim().parse().unwrap_or(0),
            version: version.to_owned(),
            raw: output.stdout.clone(),
            body: body.to_owned(),
            headers,
            exit: output.status.code(),
            stderr: output.stderr,
        }
    }

    /// `curl http://<host><path>` through the gateway's port 80.
    fn http(&self, host: &str, path: &str) -> Curl {
        self.curl(&[(host, 80)], &[], &format!("http://{host}{path}"))
    }

    /// Retries `http` until the gateway answers with something other than a refused
    /// connection (its listener opens when the proxy applies the state).
    fn wait_listening(&self, host: &str, port: u16, scheme: &str, args: &[&str]) -> Curl {
        let mut last = None;
        for _ in 0..60 {
            let got = self.curl(&[(host, port)], args, &format!("{scheme}://{host}:{port}/"));
            if got.exit != Some(7) {
                return got;
            }
            last = Some(got);
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("the gateway never listened on port {port}: {last:?}");
    }

    /// A CA with server certificates for `hosts` (one certificate per entry, named by its
    /// first host).
    fn server_certs(&self, ca_name: &str, certs: &[&[&str]]) -> (TestCa, Vec<Issued>) {
        let mut ca = TestCa::new(&self.dir.join(ca_name), ca_name).or_panic("test CA");
        let issued = certs
            .iter()
            .map(|hosts| {
                ca.issue(hosts[0], hosts, Usage::Server)
                    .or_panic("server cert")
            })
            .collect();
        (ca, issued)
    }
}

fn gateway(name: &str, servers: Value) -> Value {
    istio::object(
        istio::NETWORKING,
        "Gateway",
        ISTIO_SYSTEM,
        name,
        json!({"selector": {"istio": "ingressgateway"}, "servers": servers}),
    )
}

/// A `kubernetes.io/tls` Secret in `istio-system`, from `issued` (and `ca` as `ca.crt`).
fn tls_secret(name: &str, issued: &Issued, ca: Option<&TestCa>) -> Value {
    let (cert, key) = issued.pem().or_panic("reading the certificate");
    let mut data = json!({"tls.crt": cert, "tls.key": key});
    if let Some(ca) = ca {
        data["ca.crt"] = json!(std::fs::read_to_string(ca.cert()).or_panic("CA file"));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": ISTIO_SYSTEM},
        "stringData": data,
    })
}

fn svc(app: &str) -> String {
    format!("{app}.{MESH}.svc.cluster.local")
}

#[test]
fn a_gateway_on_port_80_routes_by_path_and_by_virtual_host() {
    let objects = [
        gateway(
            "web",
            json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]),
        ),
        // By path, on every host.
        istio::virtual_service(
            MESH,
            "by-path",
            json!({
                "hosts": ["*"],
                "gateways": ["istio-system/web"],
                "http": [
                    {"match": [{"uri": {"prefix": "/one"}}], "route": [{"destination": {"host": svc("svc1")}}]},
                    {"match": [{"uri": {"prefix": "/two"}}], "route": [{"destination": {"host": svc("svc2")}}]},
                ],
            }),
        ),
        // Virtual hosts: more specific than `*`, so they win for their hosts.
        istio::virtual_service(
            MESH,
            "host-a",
            json!({
                "hosts": ["a.example.test"],
                "gateways": ["istio-system/web"],
                "http": [{"route": [{"destination": {"host": svc("svc1")}}]}],
            }),
        ),
        istio::virtual_service(
            MESH,
            "host-b",
            json!({
                "hosts": ["b.example.test"],
                "gateways": ["istio-system/web"],
                "http": [{"route": [{"destination": {"host": svc("svc2")}}]}],
            }),
        ),
    ];
    let Some(mut edge) = Edge::start(
        "gateway::http_routes",
        &[backend("one", "svc1", "v1"), backend("two", "svc2", "v1")],
        &objects,
    ) else {
        return;
    };
    edge.assert_config_accepted();
    edge.wait_listening("labo.local", 80, "http", &[]);
    let cases = [
        ("labo.local", "/one/x", 200, "one"),
        ("labo.local", "/two", 200, "two"),
        ("a.example.test", "/anything", 200, "one"),
        ("b.example.test", "/anything", 200, "two"),
        // `*` matches the host, but no route of it matches the path.
        ("labo.local", "/three", 404, ""),
    ];
    for (host, path, status, served_by) in cases {
        let got = edge.http(host, path);
        assert_eq!(got.status, status, "{host}{path}: {got:?}");
        if !served_by.is_empty() {
            assert_eq!(got.served_by(), served_by, "{host}{path}: {got:?}");
            assert_eq!(got.json()["path"], path, "{got:?}");
        }
    }

    // Only named hosts: an unknown host has no virtual host at all, 404.
    edge.rewrite(&[objects[0].clone(), objects[2].clone(), objects[3].clone()]);
    let mut got = edge.http("unknown.example.test", "/");
    for _ in 0..40 {
        if got.status == 404 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        got = edge.http("unknown.example.test", "/");
    }
    assert_eq!(got.status, 404, "unknown host: {got:?}");
    assert_eq!(edge.http("a.example.test", "/").served_by(), "one");

    // One access log line per request, reported by the gateway as the source.
    let log = edge
        .node
        .wait_access_log("gateway lines", TIMEOUT, |log| {
            !log.matching(&[("authority", "b.example.test")]).is_empty()
        })
        .or_panic("access log");
    let line = &log.matching(&[("authority", "b.example.test")])[0];
    assert_eq!(line["reporter"], "source", "{line}");
    assert_eq!(line["response_code"], 200, "{line}");
    let metrics = edge.node.metrics().or_panic("metrics");
    let labels = [
        ("reporter", "source"),
        ("source_workload", "ingress"),
        ("destination_service_name", "svc2"),
        ("response_code", "200"),
    ];
    assert!(
        metrics.sum("istio_requests_total", &labels) >= 1.0,
        "{}",
        metrics.describe("istio_requests_total")
    );
}

/// gRPC from the outside through a Gateway `GRPC` port (h2c, prior knowledge, as gRPC clients
/// speak it), routed by a VirtualService to a Service's `grpc` port: the calls succeed, the
/// server sees them, and the access log shows HTTP/2 at the gateway.
#[test]
fn grpc_goes_through_a_gateway_grpc_port() {
    const EDGE_PORT: u16 = 9000;
    let objects = [
        gateway(
            "grpc",
            json!([{"port": {"number": EDGE_PORT, "name": "grpc", "protocol": "GRPC"}, "hosts": ["*"]}]),
        ),
        istio::virtual_service(
            MESH,
            "greeter-at-the-edge",
            json!({
                "hosts": ["*"],
                "gateways": ["istio-system/grpc"],
                "http": [{"route": [{"destination": {"host": svc(GRPC_APP), "port": {"number": GRPC_PORT}}}]}],
            }),
        ),
    ];
    let Some(mut edge) = Edge::start(
        "gateway::grpc",
        &[backend("greeter-v1", GRPC_APP, "v1")],
        &objects,
    ) else {
        return;
    };
    edge.assert_config_accepted();
    let addr = format!("{}:{EDGE_PORT}", gateway_ip());
    let outside = edge.outside.clone();
    edge.node
        .poll_httppod(
            &outside,
            &["grpc", "--addr", &addr, "-n", "1"],
            "the gateway's gRPC port to serve",
            TIMEOUT,
            |r| r["codes"] == json!({"Ok": 1}),
        )
        .or_panic("gRPC through the gateway");
    let report = edge
        .node
        .run_httppod(&outside, &["grpc", "--addr", &addr, "-n", "5"], TIMEOUT)
        .or_panic("gRPC client")
        .json()
        .or_panic("gRPC report");
    assert_eq!(report["codes"], json!({"Ok": 5}), "{report}");
    assert_eq!(report["serving"], json!({"SERVING": 5}), "{report}");
    let log = edge
        .node
        .wait_access_log("the gateway's gRPC lines", TIMEOUT, |log| {
            log.matching(&[("reporter", "source"), ("protocol", "HTTP/2")])
                .len()
                >= 6
        })
        .or_panic("access log");
    let line = &log.matching(&[("reporter", "source"), ("protocol", "HTTP/2")])[0];
    assert_eq!(line["response_code"], 200, "{line}");
    assert!(
        line["path"]
            .as_str()
            .is_some_and(|p| p.starts_with("/grpc.health.v1.Health/")),
        "{line}"
    );
}

#[test]
fn https_serves_a_certificate_per_sni_redirects_http_and_refuses_clients_mutual_needs() {
    let Some(edge) = Edge::start(
        "gateway::https",
        &[backend("one", "svc1", "v1"), backend("two", "svc2", "v1")],
        &[],
    ) else {
        return;
    };
    let (ca, issued) = edge.server_certs("site-ca", &[&["a.example.test"], &["b.example.test"]]);
    let mut client_ca = TestCa::new(&edge.dir.join("client-ca"), "client-ca").or_panic("client CA");
    let client = client_ca
        .issue("client", &["client.example.test"], Usage::Client)
        .or_panic("client cert");
    let objects = vec![
        tls_secret("a-cert", &issued[0], None),
        tls_secret("b-cert", &issued[1], None),
        tls_secret("m-cert", &issued[0], Some(&client_ca)),
        gateway(
            "sites",
            json!([
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*.example.test"],
                 "tls": {"httpsRedirect": true}},
                {"port": {"number": 443, "name": "https-a", "protocol": "HTTPS"}, "hosts": ["a.example.test"],
                 "tls": {"mode": "SIMPLE", "credentialName": "a-cert"}},
                {"port": {"number": 443, "name": "https-b", "protocol": "HTTPS"}, "hosts": ["b.example.test"],
                 "tls": {"mode": "SIMPLE", "credentialName": "b-cert"}},
                {"port": {"number": 8443, "name": "https-m", "protocol": "HTTPS"}, "hosts": ["a.example.test"],
                 "tls": {"mode": "MUTUAL", "credentialName": "m-cert", "subjectAltNames": ["client.example.test"]}},
            ]),
        ),
        istio::virtual_service(
            MESH,
            "sites",
            json!({
                "hosts": ["a.example.test", "b.example.test"],
                "gateways": ["istio-system/sites"],
                "http": [
                    {"match": [{"authority": {"exact": "b.example.test"}}], "route": [{"destination": {"host": svc("svc2")}}]},
                    {"route": [{"destination": {"host": svc("svc1")}}]},
                ],
            }),
        ),
    ];
    edge.rewrite(&objects);
    let cacert = ca.cert().to_string_lossy().into_owned();
    edge.wait_listening("a.example.test", 443, "https", &["--cacert", &cacert]);
    edge.assert_config_accepted();

    // Each SNI gets its own certificate, which curl verifies against the CA.
    for (host, served_by) in [("a.example.test", "one"), ("b.example.test", "two")] {
        for http2 in [false, true] {
            let mut args = vec!["--cacert", cacert.as_str()];
            if http2 {
                args.push("--http2");
            }
            let got = edge.curl(&[(host, 443)], &args, &format!("https://{host}/x"));
            assert_eq!(got.status, 200, "{host} http2={http2}: {got:?}");
            assert_eq!(got.served_by(), served_by, "{got:?}");
            // The gateway appends its client once, and says the scheme it terminated.
            let seen = &got.json()["headers"];
            assert_eq!(seen["x-forwarded-for"], "10.244.0.99", "{got:?}");
            assert_eq!(seen["x-forwarded-proto"], "https", "{got:?}");
            if http2 {
                assert_eq!(got.version, "2", "ALPN h2 at the gateway: {got:?}");
            }
        }
    }
    // The certificate served for b is b's (openssl shows the subject).
    let shown = s_client(&edge, "b.example.test", 443, &[]);
    assert!(
        shown.contains("CN=b.example.test") || shown.contains("CN = b.example.test"),
        "{shown}"
    );

    // httpsRedirect: a 301 to https, same host and path.
    let got = edge.http("a.example.test", "/path?q=1");
    assert_eq!(got.status, 301, "{got:?}");
    assert_eq!(
        got.headers.get("location").map(String::as_str),
        Some("https://a.example.test/path?q=1"),
        "{got:?}"
    );

    // MUTUAL: no client certificate, no response; with one, served.
    let got = edge.curl(
        &[("a.example.test", 8443)],
        &["--cacert", &cacert],
        "https://a.example.test:8443/",
    );
    assert_eq!(
        got.status, 0,
        "MUTUAL without a client certificate: {got:?}"
    );
    let (cert, key) = (
        client.cert.to_string_lossy().into_owned(),
        client.key.to_string_lossy().into_owned(),
    );
    let got = edge.curl(
        &[("a.example.test", 8443)],
        &["--cacert", &cacert, "--cert", &cert, "--key", &key],
        "https://a.example.test:8443/",
    );
    assert_eq!(got.status, 200, "MUTUAL with a client certificate: {got:?}");
}

/// `openssl s_client` from the outside pod to the gateway; its output.
fn s_client(edge: &Edge, sni: &str, port: u16, extra: &[&str]) -> String {
    let mut openssl = Command::new("sh");
    let extra = extra.join(" ");
    openssl.args([
        "-c",
        &format!(
            "echo | timeout 10 openssl s_client -connect {}:{port} -servername {sni} {extra} 2>&1",
            gateway_ip()
        ),
    ]);
    let output = edge
        .node
        .spawn_in_pod(&edge.outside, "openssl", openssl)
        .and_then(|p| Ok(p.finish(TIMEOUT)?))
        .or_panic("openssl s_client");
    output.stdout
}

#[test]
fn a_rotated_secret_is_served_to_new_connections_and_a_missing_one_fails_only_its_server() {
    let Some(edge) = Edge::start("gateway::rotation", &[backend("one", "svc1", "v1")], &[]) else {
        return;
    };
    let (ca, issued) = edge.server_certs(
        "ca",
        &[
            &["a.example.test"],
            &["rotated.example.test", "a.example.test"],
        ],
    );
    let servers = json!([
        {"port": {"number": 443, "name": "https-a", "protocol": "HTTPS"}, "hosts": ["a.example.test"],
         "tls": {"mode": "SIMPLE", "credentialName": "a-cert"}},
        {"port": {"number": 443, "name": "https-c", "protocol": "HTTPS"}, "hosts": ["c.example.test"],
         "tls": {"mode": "SIMPLE", "credentialName": "missing-cert"}},
    ]);
    let route = istio::virtual_service(
        MESH,
        "sites",
        json!({
            "hosts": ["*"],
            "gateways": ["istio-system/sites"],
            "http": [{"route": [{"destination": {"host": svc("svc1")}}]}],
        }),
    );
    edge.rewrite(&[
        tls_secret("a-cert", &issued[0], None),
        gateway("sites", servers.clone()),
        route.clone(),
    ]);
    let cacert = ca.cert().to_string_lossy().into_owned();
    edge.wait_listening("a.example.test", 443, "https", &["--cacert", &cacert]);

    // A keep-alive connection opened before the rotation: one request now, one after the
    // rotation, on the same TLS connection.
    let script = format!(
        "(printf 'GET /before HTTP/1.1\\r\\nHost: a.example.test\\r\\n\\r\\n'; sleep 4; \
         printf 'GET /after HTTP/1.1\\r\\nHost: a.example.test\\r\\nConnection: close\\r\\n\\r\\n'; sleep 2) \
         | timeout 20 openssl s_client -quiet -connect {}:443 -servername a.example.test -CAfile {cacert} 2>&1",
        gateway_ip()
    );
    let mut held = Command::new("sh");
    held.args(["-c", &script]);
    let held = edge
        .node
        .spawn_in_pod(&edge.outside, "held connection", held)
        .or_panic("held connection");
    std::thread::sleep(Duration::from_millis(500));
    edge.rewrite(&[
        tls_secret("a-cert", &issued[1], None),
        gateway("sites", servers),
        route,
    ]);
    let mut rotated = false;
    for _ in 0..100 {
        if s_client(&edge, "a.example.test", 443, &[]).contains("rotated.example.test") {
            rotated = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(rotated, "new handshakes never got the rotated certificate");
    let held = held.finish(TIMEOUT).or_panic("held connection client");
    assert_eq!(
        held.stdout.matches("HTTP/1.1 200").count(),
        2,
        "both requests of the connection opened before the rotation were served: {}",
        held.stdout
    );

    // The server whose Secret is missing fails its handshakes; the other one still works.
    let got = edge.curl(
        &[("c.example.test", 443)],
        &["-k"],
        "https://c.example.test/",
    );
    assert_eq!(got.status, 0, "missing Secret: {got:?}");
    let got = edge.curl(
        &[("a.example.test", 443)],
        &["--cacert", &cacert],
        "https://a.example.test/",
    );
    assert_eq!(got.status, 200, "{got:?}");
    let metrics = edge.node.metrics().or_panic("metrics");
    let errors = "shunt_gateway_credential_errors_total";
    assert!(
        metrics.describe(errors).contains("missing-cert"),
        "the failing Secret is named: {}",
        metrics.describe(errors)
    );
}

#[test]
fn passthrough_routes_tls_by_sni_without_terminating_it() {
    let Some(mut edge) = Edge::start("gateway::passthrough", &[backend("one", "svc1", "v1")], &[])
    else {
        return;
    };
    // A TLS server of its own in the backend pod, which the gateway must not terminate.
    let (ca, issued) = edge.server_certs("ca", &[&["tls.example.test"]]);
    let pod = edge.pods["one"].clone();
    let mut server = Command::new("openssl");
    server.args(["s_server", "-accept", "8443", "-www", "-cert"]);
    server.arg(&issued[0].cert).arg("-key").arg(&issued[0].key);
    let server = edge
        .node
        .spawn_in_pod(&pod, "openssl s_server", server)
        .or_panic("s_server");
    edge.servers.push(server);
    edge.rewrite(&[
        gateway(
            "pass",
            json!([{"port": {"number": 443, "name": "tls", "protocol": "TLS"}, "hosts": ["tls.example.test"],
                    "tls": {"mode": "PASSTHROUGH"}}]),
        ),
        istio::virtual_service(
            MESH,
            "pass",
            json!({
                "hosts": ["tls.example.test"],
                "gateways": ["istio-system/pass"],
                "tls": [{"match": [{"port": 443, "sniHosts": ["tls.example.test"]}],
                         "route": [{"destination": {"host": pod_addr_host(&pod), "port": {"number": 8443}}}]}],
            }),
        ),
        istio::service_entry(
            MESH,
            "one-tls",
            json!({"hosts": [pod_addr_host(&pod)], "location": "MESH_INTERNAL", "resolution": "STATIC",
                   "ports": [{"number": 8443, "name": "tls", "protocol": "TLS"}],
                   "endpoints": [{"address": pod.ip.to_string()}]}),
        ),
    ]);
    let cacert = ca.cert().to_string_lossy().into_owned();
    let got = edge.wait_listening("tls.example.test", 443, "https", &["--cacert", &cacert]);
    // `s_server -www` answers with its status page: the backend's own TLS, end to end.
    assert_eq!(got.status, 200, "{got:?}");
    assert!(
        got.raw
            .contains("Ciphers common between both SSL end points"),
        "not the backend's s_server page: {got:?}"
    );
}

fn pod_addr_host(pod: &Pod) -> String {
    format!("{}.tls.internal", pod.name)
}

#[test]
fn routing_at_the_gateway_splits_rewrites_sticks_by_cookie_and_injects_faults() {
    let objects = [
        gateway(
            "web",
            json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]),
        ),
        istio::virtual_service(
            MESH,
            "web",
            json!({
                "hosts": ["*"],
                "gateways": ["istio-system/web"],
                "http": [
                    {"match": [{"uri": {"prefix": "/split/"}}], "rewrite": {"uri": "/"},
                     "route": [
                        {"destination": {"host": svc("web"), "subset": "v1"}, "weight": 50},
                        {"destination": {"host": svc("web"), "subset": "v2"}, "weight": 50}]},
                    {"match": [{"uri": {"prefix": "/abort"}}],
                     "fault": {"abort": {"httpStatus": 418, "percentage": {"value": 100}}},
                     "route": [{"destination": {"host": svc("web")}}]},
                    {"route": [{"destination": {"host": svc("web")}}]},
                ],
            }),
        ),
        istio::subsets_by_version(
            MESH,
            &svc("web"),
            &["v1", "v2"],
            json!({"loadBalancer": {"consistentHash": {"httpCookie": {"name": "session", "ttl": "3600s"}}}}),
        ),
    ];
    let Some(edge) = Edge::start(
        "gateway::routing",
        &[
            backend("web-v1-a", "web", "v1"),
            backend("web-v1-b", "web", "v1"),
            backend("web-v2", "web", "v2"),
        ],
        &objects,
    ) else {
        return;
    };
    edge.assert_config_accepted();
    edge.wait_listening("labo.local", 80, "http", &[]);

    // A weighted split with a rewrite: both subsets answer, at `/` + the rest.
    let mut by_version: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..40 {
        let got = edge.http("labo.local", &format!("/split/{i}"));
        assert_eq!(got.status, 200, "{got:?}");
        assert_eq!(got.json()["path"], format!("/{i}"), "rewritten: {got:?}");
        let version = if got.served_by().starts_with("web-v1") {
            "v1"
        } else {
            "v2"
        };
        *by_version.entry(version.to_owned()).or_default() += 1;
    }
    assert_eq!(
        by_version.len(),
        2,
        "both subsets serve a 50/50 split: {by_version:?}"
    );

    // Session affinity: the cookie the gateway sets pins 50 requests to one pod.
    let jar = edge.dir.join("cookies.txt").to_string_lossy().into_owned();
    let mut served = BTreeMap::new();
    for _ in 0..50 {
        let got = edge.curl(
            &[("labo.local", 80)],
            &["-b", &jar, "-c", &jar],
            "http://labo.local/sticky",
        );
        assert_eq!(got.status, 200, "{got:?}");
        *served.entry(got.served_by()).or_insert(0) += 1;
    }
    assert_eq!(served.len(), 1, "one pod for the whole session: {served:?}");

    // A fault abort at the gateway.
    let got = edge.http("labo.local", "/abort");
    assert_eq!(got.status, 418, "{got:?}");
}

/// A test-only RSA key of the httppod crate, and another signer.
const JWT_KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/httppod/testdata/rsa-2048.pem");
const OTHER_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../proxy/src/authn/testdata/rsa-other.pem"
);
const ISSUER: &str = "https://issuer.shunt.test";

impl Edge {
    /// `shunt-httppod jwks ARGS` (no network), its JSON.
    fn jwks_tool(&self, args: &[&str]) -> Value {
        let mut all = vec!["jwks"];
        all.extend_from_slice(args);
        let output = self
            .node
            .run_httppod(&self.outside, &all, TIMEOUT)
            .or_panic("shunt-httppod jwks");
        assert!(output.status.success(), "jwks {args:?}: {}", output.stderr);
        output.json().or_panic("jwks output")
    }

    fn token(&self, key: &str) -> String {
        let minted = self.jwks_tool(&[
            "mint", "--key", key, "--alg", "RS256", "--kid", "k1", "--iss", ISSUER, "--sub",
            "alice", "--aud", "edge",
        ]);
        minted["token"].as_str().or_panic("token").to_owned()
    }

    /// Waits until `host`/ with `args` answers `want` (a policy change applies shortly).
    fn expect_status(&self, args: &[&str], want: u16) -> Curl {
        let mut got = None;
        for _ in 0..60 {
            let now = self.curl(&[("labo.local", 80)], args, "http://labo.local/");
            if now.status == want {
                return now;
            }
            got = Some(now);
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("never {want} for {args:?}: {got:?}");
    }
}

trait OrPanicOption<T> {
    fn or_panic(self, what: &str) -> T;
}

impl<T> OrPanicOption<T> for Option<T> {
    fn or_panic(self, what: &str) -> T {
        self.unwrap_or_else(|| panic!("no {what}"))
    }
}

fn security_object(kind: &str, name: &str, spec: Value) -> Value {
    istio::object("security.istio.io/v1", kind, ISSUER_NAMESPACE, name, spec)
}

/// Policies for the gateway live with it, selecting it by its labels.
const ISSUER_NAMESPACE: &str = ISTIO_SYSTEM;

#[test]
fn the_gateways_own_policies_check_jwts_and_client_addresses_behind_a_trusted_hop() {
    let web = [
        gateway(
            "web",
            json!([{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]),
        ),
        istio::virtual_service(
            MESH,
            "web",
            json!({"hosts": ["*"], "gateways": ["istio-system/web"],
                   "http": [{"route": [{"destination": {"host": svc("svc1")}}]}]}),
        ),
    ];
    let Some(edge) = Edge::start("gateway::security", &[backend("one", "svc1", "v1")], &web) else {
        return;
    };
    edge.wait_listening("labo.local", 80, "http", &[]);
    let selector = json!({"matchLabels": {"istio": "ingressgateway"}});
    let jwks = edge.jwks_tool(&["export", "--key", JWT_KEY, "--alg", "RS256", "--kid", "k1"]);
    let mut objects = web.to_vec();
    objects.push(security_object(
        "RequestAuthentication",
        "edge-jwt",
        json!({"selector": selector, "jwtRules": [{"issuer": ISSUER, "audiences": ["edge"], "jwks": jwks.to_string()}]}),
    ));
    objects.push(security_object(
        "AuthorizationPolicy",
        "require-jwt",
        json!({"selector": selector, "action": "DENY",
               "rules": [{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]}),
    ));
    edge.rewrite(&objects);
    let good = format!("authorization: Bearer {}", edge.token(JWT_KEY));
    let forged = format!("authorization: Bearer {}", edge.token(OTHER_KEY));
    edge.expect_status(&[], 403);
    let cases = [
        ("no token", vec![], 403),
        ("a valid token", vec!["-H", good.as_str()], 200),
        (
            "a token of another signer",
            vec!["-H", forged.as_str()],
            401,
        ),
    ];
    for (what, args, want) in cases {
        let got = edge.curl(&[("labo.local", 80)], &args, "http://labo.local/");
        assert_eq!(got.status, want, "{what}: {got:?}");
    }
    edge.assert_config_accepted();

    // An IP allow-list by the client's address, behind one trusted proxy (a load balancer
    // that appends the client to X-Forwarded-For).
    let mut objects = web.to_vec();
    objects.push(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": ISTIO_SYSTEM},
        "data": {"mesh": "defaultConfig:\n  gatewayTopology:\n    numTrustedProxies: 1\n"},
    }));
    objects.push(security_object(
        "AuthorizationPolicy",
        "allow-office",
        json!({"selector": selector, "action": "ALLOW",
               "rules": [{"from": [{"source": {"remoteIpBlocks": ["203.0.113.0/24"]}}]}]}),
    ));
    edge.rewrite(&objects);
    // Applied once the office is let in without a token.
    edge.expect_status(&["-H", "x-forwarded-for: 203.0.113.7"], 200);
    let cases = [
        (
            "the office, behind the balancer",
            "x-forwarded-for: 203.0.113.7",
            200,
        ),
        (
            "elsewhere, behind the balancer",
            "x-forwarded-for: 198.51.100.9",
            403,
        ),
        // The balancer's own hop is what is trusted: a forged first entry does not count.
        (
            "a forged entry before the real one",
            "x-forwarded-for: 203.0.113.7, 198.51.100.9",
            403,
        ),
    ];
    for (what, header, want) in cases {
        let got = edge.curl(&[("labo.local", 80)], &["-H", header], "http://labo.local/");
        assert_eq!(got.status, want, "{what}: {got:?}");
        if want == 200 {
            let seen = &got.json()["headers"];
            assert_eq!(seen["x-envoy-external-address"], "203.0.113.7", "{got:?}");
        }
    }
    edge.assert_config_accepted();

    // An invalid numTrustedProxies fails closed: the client's address is unknown, so a
    // DENY by remote address denies everyone (never judging the balancer's address), and
    // the ConfigMap's field is reported.
    let mut objects = web.to_vec();
    objects.push(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "istio", "namespace": ISTIO_SYSTEM},
        "data": {"mesh": "defaultConfig:\n  gatewayTopology:\n    numTrustedProxies: -1\n"},
    }));
    objects.push(security_object(
        "AuthorizationPolicy",
        "deny-blocked",
        json!({"selector": selector, "action": "DENY",
               "rules": [{"from": [{"source": {"remoteIpBlocks": ["192.0.2.0/24"]}}]}]}),
    ));
    edge.rewrite(&objects);
    // The office was let in until now: its 403 says the new config applies.
    edge.expect_status(&["-H", "x-forwarded-for: 203.0.113.7"], 403);
    for header in [
        "x-forwarded-for: 198.51.100.9",
        "x-forwarded-for: 192.0.2.1, 203.0.113.7",
    ] {
        let got = edge.curl(&[("labo.local", 80)], &["-H", header], "http://labo.local/");
        assert_eq!(got.status, 403, "{header}: {got:?}");
    }
    let got = edge.curl(&[("labo.local", 80)], &[], "http://labo.local/");
    assert_eq!(got.status, 403, "no X-Forwarded-For: {got:?}");
    let loaded = edge.node.admin().config().or_panic("GET /config");
    let errors = loaded["errors"].to_string();
    assert!(
        errors.contains("ConfigMap istio-system/istio")
            && errors.contains("data.mesh.defaultConfig.gatewayTopology.numTrustedProxies"),
        "{errors}"
    );
}

#[test]
fn a_kubernetes_ingress_of_class_istio_serves_prefix_and_exact_paths_and_tls() {
    let Some(edge) = Edge::start(
        "gateway::ingress",
        &[backend("one", "svc1", "v1"), backend("two", "svc2", "v1")],
        &[],
    ) else {
        return;
    };
    let (ca, issued) = edge.server_certs("ca", &[&["shop.example.test"]]);
    let mut secret = tls_secret("shop-cert", &issued[0], None);
    secret["metadata"]["namespace"] = json!(MESH);
    let ingress = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": MESH},
        "spec": {
            "ingressClassName": "istio",
            "tls": [{"hosts": ["shop.example.test"], "secretName": "shop-cert"}],
            "rules": [{"host": "shop.example.test", "http": {"paths": [
                {"path": "/exact", "pathType": "Exact", "backend": {"service": {"name": "svc2", "port": {"number": 80}}}},
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "svc1", "port": {"number": 80}}}},
            ]}}],
        },
    });
    // Another class: not shunt's to serve.
    let other = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": "other", "namespace": MESH},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "other.example.test", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "svc2", "port": {"number": 80}}}}]}}]},
    });
    edge.rewrite(&[secret, ingress, other]);
    edge.wait_listening("shop.example.test", 80, "http", &[]);
    edge.assert_config_accepted();
    let cacert = ca.cert().to_string_lossy().into_owned();
    let cases = [
        ("http", 80, "/exact", 200, "two"),
        ("http", 80, "/exact/more", 200, "one"),
        ("http", 80, "/other", 200, "one"),
        ("https", 443, "/exact", 200, "two"),
    ];
    for (scheme, port, path, status, served_by) in cases {
        let got = edge.curl(
            &[("shop.example.test", port)],
            &["--cacert", &cacert],
            &format!("{scheme}://shop.example.test:{port}{path}"),
        );
        assert_eq!(got.status, status, "{scheme} {path}: {got:?}");
        assert_eq!(got.served_by(), served_by, "{scheme} {path}: {got:?}");
    }
    let got = edge.http("other.example.test", "/");
    assert_eq!(
        got.status, 404,
        "an nginx-class Ingress is not served: {got:?}"
    );
}

#[test]
fn an_egress_gateway_carries_mesh_traffic_to_an_external_host_and_originates_tls() {
    const EXTERNAL_HOST: &str = "api.external.test";
    const EXTERNAL_ADDRESS: &str = "10.250.0.7";
    let Some(mut edge) = Edge::start_with(
        "gateway::egress",
        &[backend("client", "client", "v1")],
        &[],
        &[("istio", "egressgateway")],
    ) else {
        return;
    };
    // The "external" server: a pod the mesh config does not know, speaking only HTTPS.
    let external = edge
        .node
        .add_pod("external", pod_ip(60))
        .or_panic("external pod");
    let mut ca = TestCa::new(&edge.dir.join("external-ca"), "external CA").or_panic("CA");
    let issued = ca
        .issue("server", &[EXTERNAL_HOST], Usage::Server)
        .or_panic("server cert");
    let (cert, key) = (
        issued.cert.to_string_lossy().into_owned(),
        issued.key.to_string_lossy().into_owned(),
    );
    let server = edge
        .node
        .start_httppod_server(
            &external,
            &[
                "serve",
                "--port",
                "8080",
                "--name",
                "external",
                "--tls-port",
                "8443",
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ],
        )
        .or_panic("external server");
    edge.servers.push(server);
    let ca_file = ca.cert().to_string_lossy().into_owned();
    let egress_service = "istio-egressgateway.istio-system.svc.cluster.local";
    let objects = [
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "istio-egressgateway", "namespace": ISTIO_SYSTEM},
            "spec": {"clusterIP": "10.96.0.50", "selector": {"istio": "egressgateway"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 80}]},
        }),
        istio::object(
            istio::NETWORKING,
            "Gateway",
            ISTIO_SYSTEM,
            "egress",
            json!({"selector": {"istio": "egressgateway"}, "servers": [
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": [EXTERNAL_HOST]}]}),
        ),
        istio::service_entry(
            MESH,
            "external-api",
            json!({"hosts": [EXTERNAL_HOST], "addresses": [EXTERNAL_ADDRESS],
                   "ports": [{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 8443}],
                   "resolution": "STATIC", "location": "MESH_EXTERNAL",
                   "endpoints": [{"address": external.ip.to_string()}]}),
        ),
        // TLS origination, used where the route reaches the host: at the egress gateway.
        istio::destination_rule(
            MESH,
            "external-api-tls",
            json!({"host": EXTERNAL_HOST, "trafficPolicy": {"portLevelSettings": [
                {"port": {"number": 80}, "tls": {"mode": "SIMPLE", "caCertificates": ca_file}}]}}),
        ),
        // Istio's egress pattern: mesh traffic to the gateway, the gateway's to the host.
        istio::virtual_service(
            MESH,
            "external-via-egress",
            json!({"hosts": [EXTERNAL_HOST], "gateways": ["mesh", "istio-system/egress"], "http": [
                {"match": [{"gateways": ["mesh"], "port": 80}],
                 "route": [{"destination": {"host": egress_service, "port": {"number": 80}}}]},
                {"match": [{"gateways": ["istio-system/egress"], "port": 80}],
                 "route": [{"destination": {"host": EXTERNAL_HOST, "port": {"number": 80}}}]},
            ]}),
        ),
    ];
    edge.rewrite(&objects);
    edge.wait_gateway_served();
    let connect = format!("{EXTERNAL_ADDRESS}:80");
    let url = format!("http://{EXTERNAL_HOST}/egress");
    let client = edge.pods["client"].clone();
    let mut report = Value::Null;
    for _ in 0..40 {
        let output = edge
            .node
            .run_httppod(
                &client,
                &["http", "--url", &url, "--connect", &connect, "-n", "3"],
                TIMEOUT,
            )
            .or_panic("client");
        report = output.json().unwrap_or(Value::Null);
        if report["status"] == json!({"200": 3}) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(report["status"], json!({"200": 3}), "{report}");
    assert_eq!(report["served_by"], json!({"external": 3}), "{report}");
    // The external server saw TLS with the host's SNI, from the gateway pod.
    let seen = edge
        .node
        .run_httppod(&external, &["count", "--addr", "127.0.0.1:8080"], TIMEOUT)
        .or_panic("count")
        .json()
        .or_panic("count report");
    let requests = seen["requests"].as_array().cloned().unwrap_or_default();
    assert!(!requests.is_empty(), "{seen}");
    for request in &requests {
        assert_eq!(
            request["tls"]["sni"], EXTERNAL_HOST,
            "originated at the gateway: {seen}"
        );
    }
    // Both hops in the telemetry: the client to the gateway, the gateway to the host.
    let log = edge
        .node
        .wait_access_log("both hops", TIMEOUT, |log| {
            !log.matching(&[("upstream_cluster", "outbound|80||api.external.test")])
                .is_empty()
        })
        .or_panic("access log");
    assert!(
        !log.matching(&[(
            "upstream_cluster",
            &format!("outbound|80||{egress_service}")
        )])
        .is_empty(),
        "{}",
        log.describe()
    );
}
