//! The HTTP proxy end to end in one process: a hyper client over `tokio::io::duplex`, the
//! proxy's `serve`, fixed routes, and hyper backends on loopback.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use http::header::HeaderName;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpListener;

use super::*;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, Version};
use http_body_util::{Empty, Full};
use hyper::body::Frame;

use crate::addrs::ClientAddr;
use crate::context::PodContext;
use crate::socket::{CurrentNetnsSocketFactory, SocketFactory};
use crate::testing::{TestProxy, own_netns, served_pod};
use crate::upstream;
use shunt_mesh::model::Workload;
use shunt_mesh::routing::{
    AbortKind, AccessLogOutput, Destination, Fault, FaultAbort, FaultDelay, HeaderOps, Host,
    MeshSettings, Mirror, ObjectRef, RateLimit, RetryOn, RetryPolicy, Rewrite, ServiceTarget,
    TcpDecision, TrafficPolicy,
};
use shunt_mesh::routing::{
    Cluster, HttpAction, HttpDecision, HttpRoute, LoadBalancer, OutboundTarget, PortProtocol,
    RequestFacts, RouteSource, Routes, WeightedDestination,
};
use shunt_mesh::testing as fixtures;

const HOST: &str = "web.shop.svc.cluster.local";

/// Routes with fixed answers: every request gets `route`; clusters by host.
struct TestRoutes {
    decision: HttpDecision,
    clusters: HashMap<String, Arc<Cluster>>,
    mesh: MeshSettings,
}

impl Routes for TestRoutes {
    fn outbound_target(&self, dst: SocketAddrV4, _: Option<&Workload>) -> OutboundTarget {
        OutboundTarget::Service(Arc::new(ServiceTarget {
            host: Host(HOST.into()),
            port: dst.port(),
            dst,
            protocol: PortProtocol::Http,
            service: None,
            service_entry: None,
        }))
    }

    fn http_route(&self, _: &OutboundTarget, _: &RequestFacts<'_>) -> HttpDecision {
        self.decision.clone()
    }

    fn tcp_route(&self, _: &OutboundTarget, _: Option<&str>, _: Option<&Workload>) -> TcpDecision {
        TcpDecision::Passthrough
    }

    fn cluster(
        &self,
        destination: &Destination,
        _: u16,
        _: Option<&Workload>,
    ) -> Result<Arc<Cluster>, shunt_mesh::routing::ClusterError> {
        self.clusters
            .get(&*destination.host.0)
            .cloned()
            .ok_or_else(|| shunt_mesh::routing::ClusterError::UnknownHost(destination.host.clone()))
    }

    fn mesh(&self) -> &MeshSettings {
        &self.mesh
    }

    fn gateway_target(
        &self,
        _: &shunt_mesh::ids::PodUid,
        _: u16,
        _: Option<Arc<shunt_mesh::gateway::GatewayServer>>,
    ) -> Option<OutboundTarget> {
        None
    }
}

struct Fixed(Arc<TestRoutes>);

impl RouteSource for Fixed {
    fn routes(&self) -> Arc<dyn Routes> {
        self.0.clone()
    }
}

/// What a backend saw of one request.
#[derive(Clone, Debug)]
struct Seen {
    version: Version,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A loopback HTTP/1.1 + h2 backend: answers `name` (status from `/status/<code>` paths,
/// failing the first `fail_first` requests with 503, sleeping on `/slow`) and records requests.
struct Backend {
    addr: SocketAddrV4,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn backend(name: &'static str, fail_first: usize) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let recorded = seen.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (recorded, count) = (recorded.clone(), count.clone());
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (recorded, count) = (recorded.clone(), count.clone());
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await.unwrap().to_bytes();
                    let path = parts.uri.path().to_owned();
                    recorded.lock().unwrap().push(Seen {
                        version: parts.version,
                        path: parts
                            .uri
                            .path_and_query()
                            .map(ToString::to_string)
                            .unwrap_or_default(),
                        headers: parts.headers.clone(),
                        body,
                    });
                    let n = count.fetch_add(1, Ordering::SeqCst);
                    if path == "/slow" {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    let mut status = path
                        .strip_prefix("/status/")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(200);
                    let failing = n < fail_first;
                    if failing && !path.starts_with("/grpc") {
                        status = 503;
                    }
                    let mut response = Response::new(Full::new(Bytes::from(name)));
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    if failing && path.starts_with("/grpc") {
                        // Trailers-only gRPC failure: UNAVAILABLE.
                        response
                            .headers_mut()
                            .insert("grpc-status", HeaderValue::from_static("14"));
                    }
                    response
                        .headers_mut()
                        .insert("x-backend", HeaderValue::from_static(name));
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Backend { addr, seen }
}

fn cluster(host: &str, endpoints: &[SocketAddrV4]) -> Arc<Cluster> {
    Arc::new(Cluster {
        key: shunt_mesh::routing::ClusterKey {
            host: Host(host.into()),
            subset: Some("v1".into()),
            port: 80,
        },
        protocol: PortProtocol::Http,
        service: None,
        endpoints: endpoints
            .iter()
            .map(|addr| shunt_mesh::routing::ClusterEndpoint {
                addr: (*addr).into(),
                workload: None,
                weight: 1,
            })
            .collect(),
        dns: Vec::new(),
        service_entry: None,
        policy: TrafficPolicy::default(),
        version: Some("v1".into()),
    })
}

fn destination(host: &str) -> WeightedDestination {
    WeightedDestination {
        destination: Destination {
            host: Host(host.into()),
            subset: Some("v1".into()),
            port: None,
        },
        weight: 100,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

fn route(action: HttpAction) -> HttpRoute {
    shunt_mesh::testing::http_route(action)
}

fn forward_to(host: &str) -> HttpRoute {
    route(HttpAction::Forward(vec![destination(host)]))
}

/// A proxy for pod `shop/client-1` (10.1.0.5) with `decision` for every request.
struct Harness {
    test: TestProxy,
    connection: Arc<HttpConnection>,
}

async fn harness(decision: HttpDecision, clusters: Vec<Arc<Cluster>>) -> Harness {
    harness_with_mesh(decision, clusters, MeshSettings::default()).await
}

async fn harness_with_mesh(
    decision: HttpDecision,
    clusters: Vec<Arc<Cluster>>,
    mesh: MeshSettings,
) -> Harness {
    let test = TestProxy::new(false);
    let sockets = CurrentNetnsSocketFactory
        .enter(own_netns(), "shop/client-1")
        .await
        .unwrap();
    let upstreams = Arc::new(upstream::Upstreams::new(
        sockets.clone(),
        Duration::from_secs(2),
        test.proxy.metrics.upstream.clone(),
        Arc::default(),
    ));
    let pod = Arc::new(PodContext {
        pod: served_pod("uid-client-1", sockets),
        upstreams,
    });
    let routes = TestRoutes {
        decision,
        clusters: clusters
            .into_iter()
            .map(|c| (c.key.host.0.to_string(), c))
            .collect(),
        mesh,
    };
    let connection = Arc::new(HttpConnection {
        proxy: test.proxy.clone(),
        side: Side::Outbound {
            routes: Arc::new(Fixed(Arc::new(routes))),
            gateway: None,
        },
        pod: pod.pod.clone(),
        upstreams: pod.upstreams.clone(),
        pod_name: "shop/client-1".into(),
        client: ClientAddr("10.1.0.5:40000".parse().unwrap()),
        orig_dst: "10.96.0.10:80".parse().unwrap(),
        source: Some(Arc::new(fixtures::pod(
            "shop",
            "client-1",
            [10, 1, 0, 5],
            "client",
        ))),
        memo: Default::default(),
    });
    Harness { test, connection }
}

impl Harness {
    /// Sends `request` over a fresh HTTP/1.1 connection; returns status, headers and body.
    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(self.connection.clone(), server));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn);
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .unwrap()
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header(header::HOST, "web.shop:80")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn a_forwarded_request_gets_rewrites_header_edits_and_forwarded_headers() {
    let web = backend("web", 0).await;
    let mut route = forward_to(HOST);
    route.rewrite = Some(Rewrite {
        uri: Some("/v2/".into()),
        authority: None,
        uri_regex: None,
        matched_prefix: Some("/api/".into()),
    });
    route.request_headers.set.push((
        HeaderName::from_static("x-route"),
        HeaderValue::from_static("yes"),
    ));
    route
        .response_headers
        .remove
        .push(HeaderName::from_static("x-backend"));
    let harness = harness(
        HttpDecision::Route(Arc::new(route)),
        vec![cluster(HOST, &[web.addr])],
    )
    .await;
    let request = Request::builder()
        .uri("/api/items?q=1")
        .header(header::HOST, "web.shop:80")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .header("x-b3-traceid", "463ac35c9f6413ad")
        .header(header::CONNECTION, "x-secret")
        .header("x-secret", "hop")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = harness.send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "web");
    assert!(!headers.contains_key("x-backend"), "{headers:?}");

    let seen = web.seen.lock().unwrap()[0].clone();
    assert_eq!(seen.path, "/v2/items?q=1");
    assert_eq!(seen.headers["x-route"], "yes");
    assert_eq!(seen.headers["x-forwarded-for"], "10.1.0.5");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers[header::HOST], "web.shop:80");
    assert_eq!(
        seen.headers["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    assert_eq!(seen.headers["x-b3-traceid"], "463ac35c9f6413ad");
    assert!(!seen.headers.contains_key("x-secret"), "{:?}", seen.headers);
    let request_id = seen.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&request_id)
            .unwrap()
            .get_version_num(),
        4
    );

    let line = &harness.test.log_lines(1).await[0];
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/api/items?q=1");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["response_code"], 200);
    assert_eq!(line["response_flags"], "-");
    assert_eq!(line["bytes_sent"], 3);
    assert_eq!(line["upstream_host"], web.addr.to_string());
    assert_eq!(line["upstream_cluster"], format!("outbound|80|v1|{HOST}"));
    assert_eq!(line["x_forwarded_for"], "10.1.0.5");
    assert_eq!(line["request_id"], request_id.as_str());
    assert_eq!(line["authority"], "web.shop:80");
    assert_eq!(line["route_name"], "web.0");
    assert_eq!(line["src_workload"], "client");
    // Plaintext to a pod not served here: nobody authenticated.
    for (field, expected) in [
        ("src_principal", "unknown"),
        ("dst_principal", "unknown"),
        ("connection_security_policy", "unknown"),
        ("peer_security", "none"),
    ] {
        assert_eq!(line[field], expected, "{field} in {line}");
    }
    assert!(line["upstream_service_time"].is_u64(), "{line}");
    assert_eq!(
        harness.test.metric(
            "istio_requests_total",
            &[
                ("reporter", "source"),
                ("source_workload", "client"),
                ("response_code", "200"),
                ("response_flags", "-"),
                ("request_protocol", "http"),
                ("destination_version", "v1"),
                ("destination_subset", "v1"),
            ]
        ),
        Some(1)
    );
    assert_eq!(
        harness.test.metric(
            "istio_request_duration_milliseconds_count",
            &[("response_code", "200")]
        ),
        Some(1)
    );
}

/// A request goes upstream framed as it came: a GET without a body gains no
/// `content-length: 0`, whether the route may retry (a replayable body) or not (streamed once).
#[tokio::test]
async fn the_upstream_request_keeps_the_framing_of_the_downstream_one() {
    struct Case {
        name: &'static str,
        retries: u32,
        method: Method,
        body: &'static str,
        content_length: Option<&'static str>,
    }
    let cases = [
        Case {
            name: "GET, no retries",
            retries: 0,
            method: Method::GET,
            body: "",
            content_length: None,
        },
        Case {
            name: "GET, retries",
            retries: 2,
            method: Method::GET,
            body: "",
            content_length: None,
        },
        Case {
            name: "POST, no retries",
            retries: 0,
            method: Method::POST,
            body: "payload",
            content_length: Some("7"),
        },
        Case {
            name: "POST, retries",
            retries: 2,
            method: Method::POST,
            body: "payload",
            content_length: Some("7"),
        },
    ];
    for case in cases {
        let web = backend("web", 0).await;
        let mut route = forward_to(HOST);
        route.retries.attempts = case.retries;
        let harness = harness(
            HttpDecision::Route(Arc::new(route)),
            vec![cluster(HOST, &[web.addr])],
        )
        .await;
        let request = Request::builder()
            .method(case.method.clone())
            .uri("/items")
            .header(header::HOST, "web.shop:80")
            .body(Full::new(Bytes::from_static(case.body.as_bytes())))
            .unwrap();
        let (status, _, _) = harness.send(request).await;
        assert_eq!(status, StatusCode::OK, "{}", case.name);
        let seen = web.seen.lock().unwrap()[0].clone();
        assert_eq!(
            seen.headers
                .get(header::CONTENT_LENGTH)
                .map(|v| v.to_str().unwrap()),
            case.content_length,
            "{}: {:?}",
            case.name,
            seen.headers
        );
        assert!(
            !seen.headers.contains_key(header::TRANSFER_ENCODING),
            "{}: {:?}",
            case.name,
            seen.headers
        );
        assert_eq!(seen.body, case.body, "{}", case.name);
    }
}

/// `accessLogFile: ""` turns the access log off; the request metrics are recorded all the same.
#[tokio::test]
async fn access_log_file_off_writes_no_line_but_counts_the_request() {
    let web = backend("web", 0).await;
    let off = MeshSettings {
        access_log: AccessLogOutput::Off,
        ..MeshSettings::default()
    };
    let harness = harness_with_mesh(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![cluster(HOST, &[web.addr])],
        off,
    )
    .await;
    let (status, _, _) = harness.send(get("/")).await;
    assert_eq!(status, StatusCode::OK);
    // Recorded as the response body ends, which can be just after the client has it.
    let labels = [("reporter", "source"), ("response_code", "200")];
    let deadline = Instant::now() + Duration::from_secs(5);
    while harness
        .test
        .metric("istio_requests_total", &labels)
        .is_none()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        harness.test.metric("istio_requests_total", &labels),
        Some(1)
    );
    assert_eq!(harness.test.log.lines(), Vec::<serde_json::Value>::new());
}

/// A connection keeps handles on the series it recorded into; each outcome still gets its own.
#[tokio::test]
async fn one_connections_requests_count_in_the_series_of_their_outcome() {
    let web = backend("web", 0).await;
    let harness = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![cluster(HOST, &[web.addr])],
    )
    .await;
    // Interleaved, so the per-connection handles are found again, not just the latest.
    let paths = [
        "/",
        "/status/404",
        "/",
        "/status/503",
        "/",
        "/status/404",
        "/status/201",
    ];
    for path in paths {
        harness.send(get(path)).await;
    }
    harness.test.log_lines(paths.len()).await;
    let cases = [("200", 3), ("404", 2), ("503", 1), ("201", 1)];
    for (code, count) in cases {
        for name in [
            "istio_requests_total",
            "istio_request_duration_milliseconds_count",
            "istio_request_bytes_count",
            "istio_response_bytes_count",
        ] {
            let labels = [("reporter", "source"), ("response_code", code)];
            assert_eq!(
                harness.test.metric(name, &labels),
                Some(count),
                "{name} {code}"
            );
        }
    }
}

#[tokio::test]
async fn local_answers_carry_their_status_and_flags() {
    let web = backend("web", 0).await;
    let abort = |kind, delay: Option<Duration>| {
        let mut route = forward_to(HOST);
        route.fault = Some(Fault {
            delay: delay.map(|fixed_delay| FaultDelay {
                fixed_delay,
                percentage: 100.0,
            }),
            abort: Some(FaultAbort {
                kind,
                percentage: 100.0,
            }),
        });
        HttpDecision::Route(Arc::new(route))
    };
    let limited = {
        let mut route = forward_to(HOST);
        route.rate_limit = Some(Arc::new(RateLimit {
            policy: ObjectRef {
                kind: "RateLimitPolicy",
                namespace: "shop".into(),
                name: "web".into(),
            },
            requests_per_second: 0.001,
            burst: 1,
        }));
        HttpDecision::Route(Arc::new(route))
    };
    // (case, decision, requests sent, last status, last flags, a header of the last answer)
    type Case = (
        &'static str,
        HttpDecision,
        usize,
        StatusCode,
        &'static str,
        Option<(&'static str, &'static str)>,
    );
    let cases: Vec<Case> = vec![
        (
            "no route matched",
            HttpDecision::NoRouteMatched {
                virtual_service: ObjectRef {
                    kind: "VirtualService",
                    namespace: "shop".into(),
                    name: "web".into(),
                },
            },
            1,
            StatusCode::NOT_FOUND,
            "NR",
            None,
        ),
        (
            "registry only",
            HttpDecision::BlockedByRegistryOnly {
                authority: "example.com".into(),
            },
            1,
            StatusCode::BAD_GATEWAY,
            "NR",
            None,
        ),
        (
            "http abort",
            abort(AbortKind::Http(StatusCode::IM_A_TEAPOT), None),
            1,
            StatusCode::IM_A_TEAPOT,
            "FI",
            None,
        ),
        (
            "grpc abort after a delay",
            abort(AbortKind::Grpc(14), Some(Duration::from_millis(50))),
            1,
            StatusCode::OK,
            "DI,FI",
            Some(("grpc-status", "14")),
        ),
        (
            "rate limited on the second request",
            limited,
            2,
            StatusCode::TOO_MANY_REQUESTS,
            "RL",
            Some(("x-ratelimit-remaining", "0")),
        ),
    ];
    for (name, decision, requests, status, flags, header) in cases {
        let harness = harness(decision, vec![cluster(HOST, &[web.addr])]).await;
        let mut last = None;
        for _ in 0..requests {
            last = Some(harness.send(get("/")).await);
        }
        let (got, headers, _) = last.unwrap();
        assert_eq!(got, status, "{name}");
        if let Some((header, value)) = header {
            assert_eq!(headers[header], value, "{name}: {headers:?}");
        }
        let lines = harness.test.log_lines(requests).await;
        assert_eq!(lines[requests - 1]["response_flags"], flags, "{name}");
        let blocked = harness
            .test
            .metric("shunt_registry_only_blocked_total", &[("protocol", "http")]);
        let expected = (name == "registry only").then_some(1);
        assert_eq!(blocked, expected, "{name}");
    }
    assert!(web.seen.lock().unwrap().iter().all(|s| s.path == "/"));
    // Only the rate-limited case's first request reached the backend.
    assert_eq!(web.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn retries_turn_failures_into_success_and_run_out_with_urx() {
    let retry = |attempts| {
        let mut route = forward_to(HOST);
        route.retries = RetryPolicy {
            attempts,
            per_try_timeout: None,
            retry_on: RetryOn {
                retriable_status_codes: vec![503],
                ..RetryOn::default()
            },
        };
        HttpDecision::Route(Arc::new(route))
    };
    for (attempts, expected, flags, tries) in [
        (2, StatusCode::OK, "-", 3),
        (1, StatusCode::SERVICE_UNAVAILABLE, "URX", 2),
    ] {
        let flaky = backend("flaky", 2).await;
        let harness = harness(retry(attempts), vec![cluster(HOST, &[flaky.addr])]).await;
        let (status, _, _) = harness.send(get("/")).await;
        assert_eq!(status, expected, "attempts {attempts}");
        assert_eq!(
            flaky.seen.lock().unwrap().len(),
            tries,
            "attempts {attempts}"
        );
        assert_eq!(harness.test.log_lines(1).await[0]["response_flags"], flags);
    }
}

#[tokio::test]
async fn the_route_timeout_answers_504_ut() {
    let web = backend("web", 0).await;
    let mut route = forward_to(HOST);
    route.timeout = Some(Duration::from_millis(100));
    let harness = harness(
        HttpDecision::Route(Arc::new(route)),
        vec![cluster(HOST, &[web.addr])],
    )
    .await;
    let started = Instant::now();
    let (status, _, body) = harness.send(get("/slow")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream request timeout");
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(harness.test.log_lines(1).await[0]["response_flags"], "UT");
}

#[tokio::test]
async fn a_mirror_gets_a_shadow_copy_and_the_client_only_the_primary() {
    let web = backend("web", 0).await;
    let shadow = backend("shadow", 0).await;
    let mut route = forward_to(HOST);
    route.mirrors.push(Mirror {
        destination: Destination {
            host: Host("shadow.shop.svc.cluster.local".into()),
            subset: None,
            port: None,
        },
        percentage: 100.0,
    });
    let harness = harness(
        HttpDecision::Route(Arc::new(route)),
        vec![
            cluster(HOST, &[web.addr]),
            cluster("shadow.shop.svc.cluster.local", &[shadow.addr]),
        ],
    )
    .await;
    let request = Request::builder()
        .method(Method::POST)
        .uri("/orders")
        .header(header::HOST, "web.shop:80")
        .body(Full::new(Bytes::from_static(b"order-1")))
        .unwrap();
    let (status, _, body) = harness.send(request).await;
    assert_eq!((status, body), (StatusCode::OK, Bytes::from_static(b"web")));
    for _ in 0..200 {
        if !shadow.seen.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let copy = shadow.seen.lock().unwrap()[0].clone();
    assert_eq!(copy.path, "/orders");
    assert_eq!(copy.body, "order-1");
    assert_eq!(copy.headers[header::HOST], "web.shop-shadow:80");
    assert_eq!(web.seen.lock().unwrap()[0].body, "order-1");
}

#[tokio::test]
async fn redirects_and_direct_responses_never_reach_a_backend() {
    let cases = [
        (
            HttpAction::Redirect(shunt_mesh::routing::Redirect {
                uri: Some("/new".into()),
                authority: None,
                port: None,
                scheme: None,
                status: StatusCode::MOVED_PERMANENTLY,
            }),
            StatusCode::MOVED_PERMANENTLY,
            Some("http://web.shop:80/new"),
            "",
        ),
        (
            HttpAction::DirectResponse {
                status: StatusCode::SERVICE_UNAVAILABLE,
                body: Some(Bytes::from_static(b"maintenance")),
            },
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "maintenance",
        ),
    ];
    for (action, status, location, body) in cases {
        let harness = harness(HttpDecision::Route(Arc::new(route(action))), vec![]).await;
        let (got, headers, got_body) = harness.send(get("/old")).await;
        assert_eq!(got, status);
        assert_eq!(
            headers.get(header::LOCATION).map(|v| v.to_str().unwrap()),
            location
        );
        assert_eq!(got_body, body);
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_503_uf() {
    // A port nothing listens on: bind, note it, close.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        addr
    };
    let harness = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![cluster(HOST, &[closed])],
    )
    .await;
    let (status, _, _) = harness.send(get("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(harness.test.log_lines(1).await[0]["response_flags"], "UF");
}

#[tokio::test]
async fn a_cluster_whose_tls_is_refused_is_503_uf_naming_the_rule_and_never_dialled() {
    let web = backend("web", 0).await;
    let mut refused = (*cluster(HOST, &[web.addr])).clone();
    refused.policy.tls = Some(shunt_mesh::routing::UpstreamTls::Refuse {
        rule: ObjectRef {
            kind: "DestinationRule",
            namespace: "shop".into(),
            name: "web-tls".into(),
        },
    });
    let harness = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![Arc::new(refused)],
    )
    .await;
    let (status, _, body) = harness.send(get("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("DestinationRule shop/web-tls asks for TLS but was rejected"),
        "{body}"
    );
    assert_eq!(harness.test.log_lines(1).await[0]["response_flags"], "UF");
    assert!(
        web.seen.lock().unwrap().is_empty(),
        "never sent in plaintext"
    );
}

#[tokio::test]
async fn a_dns_name_that_does_not_resolve_is_503_uh_and_one_that_does_is_dialled() {
    let named = |name: &str, port: u16| {
        Arc::new(Cluster {
            endpoints: Vec::new(),
            dns: vec![shunt_mesh::routing::DnsEndpoint {
                name: name.into(),
                port,
                weight: 1,
            }],
            ..Arc::unwrap_or_clone(cluster(HOST, &[]))
        })
    };
    let broken = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![named("does-not-exist.invalid", 80)],
    )
    .await;
    let (status, _, _) = broken.send(get("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(broken.test.log_lines(1).await[0]["response_flags"], "UH");

    // `localhost` (the proxy's /etc/hosts) is the loopback backend.
    let web = backend("web", 0).await;
    let harness = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![named("localhost", web.addr.port())],
    )
    .await;
    let (status, _, body) = harness.send(get("/")).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert_eq!(
        harness.test.log_lines(1).await[0]["upstream_host"],
        web.addr.to_string()
    );
}

/// A backend that accepts upgrades (`Upgrade: echo` → 101) and CONNECT (→ 200), then echoes
/// the tunnelled bytes.
async fn upgrade_backend() -> SocketAddrV4 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = hyper::service::service_fn(|mut request: Request<Incoming>| async move {
                let on_upgrade = hyper::upgrade::on(&mut request);
                tokio::spawn(async move {
                    let mut upgraded = TokioIo::new(on_upgrade.await.unwrap());
                    let (mut rx, mut tx) = tokio::io::split(&mut upgraded);
                    tokio::io::copy(&mut rx, &mut tx).await.unwrap();
                });
                let mut response = Response::new(Empty::<Bytes>::new());
                if request.method() == Method::CONNECT {
                    *response.status_mut() = StatusCode::OK;
                } else {
                    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    let headers = response.headers_mut();
                    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    headers.insert(header::UPGRADE, HeaderValue::from_static("echo"));
                }
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upgrades_and_connect_tunnel_bytes_both_ways() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = upgrade_backend().await;
    let harness = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![cluster(HOST, &[backend])],
    )
    .await;
    let upgrade = Request::builder()
        .uri("/ws")
        .header(header::HOST, "web.shop")
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "echo")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let connect = Request::builder()
        .method(Method::CONNECT)
        .uri("web.shop:443")
        .body(Empty::<Bytes>::new())
        .unwrap();
    for (name, request, status) in [
        ("upgrade", upgrade, StatusCode::SWITCHING_PROTOCOLS),
        ("connect", connect, StatusCode::OK),
    ] {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(harness.connection.clone(), server));
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), status, "{name}");
        let mut tunnel = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
        tunnel.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), tunnel.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&echoed, b"ping", "{name}");
    }
}

#[tokio::test]
async fn an_h2_client_is_served_over_h2_end_to_end() {
    let web = backend("web", 0).await;
    let harness = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![cluster(HOST, &[web.addr])],
    )
    .await;
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve(harness.connection.clone(), server));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client))
            .await
            .unwrap();
    tokio::spawn(conn);
    for path in ["/one", "/two"] {
        let request = Request::builder()
            .uri(format!("http://web.shop{path}"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "web"
        );
    }
    let seen = web.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|s| s.version == Version::HTTP_2),
        "{seen:?}"
    );
    assert_eq!(seen[0].headers[header::TE], "trailers");
    assert_eq!(seen[1].path, "/two");
    let lines = harness.test.log_lines(2).await;
    assert_eq!(lines[0]["protocol"], "HTTP/2");
    assert_eq!(lines[0]["authority"], "web.shop");
    assert_eq!(
        harness
            .test
            .metric("istio_requests_total", &[("request_protocol", "grpc")]),
        Some(2)
    );
}

/// A request body of unknown length (sent chunked), all of it ready at once.
struct Chunks(std::collections::VecDeque<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

#[tokio::test]
async fn a_chunked_body_that_has_arrived_is_resent_on_a_grpc_status_retry() {
    let flaky = backend("grpc", 2).await;
    let mut route = forward_to(HOST);
    route.retries = RetryPolicy {
        attempts: 3,
        per_try_timeout: Some(Duration::from_secs(2)),
        retry_on: RetryOn {
            grpc_codes: vec![14],
            ..RetryOn::default()
        },
    };
    let harness = harness(
        HttpDecision::Route(Arc::new(route)),
        vec![cluster(HOST, &[flaky.addr])],
    )
    .await;
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve(harness.connection.clone(), server));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .unwrap();
    tokio::spawn(conn);
    let body = Chunks(
        [Bytes::from_static(b"call-"), Bytes::from_static(b"1")]
            .into_iter()
            .collect(),
    );
    let request = Request::builder()
        .method(Method::POST)
        .uri("/grpc.Svc/Call")
        .header(header::HOST, "web.shop")
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(body)
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(!response.headers().contains_key("grpc-status"));
    let seen = flaky.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body == "call-1"), "{seen:?}");
    drop(response);
    let line = &harness.test.log_lines(1).await[0];
    assert_eq!(line["bytes_received"], 6);
    assert_eq!(line["response_flags"], "-");
}

#[tokio::test]
async fn a_client_that_leaves_before_the_response_is_logged_with_dc() {
    let web = backend("web", 0).await;
    let harness = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![cluster(HOST, &[web.addr])],
    )
    .await;
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve(harness.connection.clone(), server));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let pending = tokio::spawn(async move { sender.send_request(get("/slow")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The client goes away while the backend is still thinking.
    pending.abort();
    conn.abort();
    let line = &harness.test.log_lines(1).await[0];
    assert_eq!(line["response_flags"], "DC", "{line}");
    assert_eq!(line["response_code"], 0, "{line}");
    assert_eq!(line["upstream_host"], web.addr.to_string(), "{line}");
}

#[tokio::test]
async fn a_hash_cookie_is_issued_once_and_then_keeps_requests_on_one_endpoint() {
    let (a, b) = (backend("a", 0).await, backend("b", 0).await);
    let mut sticky = (*cluster(HOST, &[a.addr, b.addr])).clone();
    sticky.policy.load_balancer = LoadBalancer::ConsistentHash {
        key: shunt_mesh::routing::HashKey::Cookie {
            name: "sticky".into(),
            path: Some("/".into()),
            ttl: Some(Duration::from_secs(60)),
        },
        algorithm: shunt_mesh::routing::HashAlgorithm::RingHash {
            minimum_ring_size: 1024,
        },
    };
    let harness = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![Arc::new(sticky)],
    )
    .await;
    let (_, headers, first) = harness.send(get("/")).await;
    let set_cookie = headers[header::SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("sticky="), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    for _ in 0..20 {
        let mut request = get("/");
        request
            .headers_mut()
            .insert(header::COOKIE, HeaderValue::from_str(&cookie).unwrap());
        let (_, headers, body) = harness.send(request).await;
        assert_eq!(body, first, "the cookie's endpoint answers every time");
        assert!(!headers.contains_key(header::SET_COOKIE));
    }
    let counts = (a.seen.lock().unwrap().len(), b.seen.lock().unwrap().len());
    assert!(counts == (21, 0) || counts == (0, 21), "{counts:?}");
}

#[tokio::test]
async fn draining_lets_the_request_in_flight_finish_then_closes_the_connection() {
    let web = backend("web", 0).await;
    let harness = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        vec![cluster(HOST, &[web.addr])],
    )
    .await;
    let (client, server) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve(harness.connection.clone(), server));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let in_flight = tokio::spawn(async move {
        let response = sender.send_request(get("/slow")).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    harness.connection.pod.drain.stop_accepting();
    let body = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, "web");
    // The proxy closed the keep-alive connection once the request was done.
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn local_replies_to_grpc_requests_are_grpc_statuses() {
    let harness = harness(
        HttpDecision::Route(Arc::new(forward_to(HOST))),
        // The destination has no endpoint: 503 UH, which a gRPC client gets as UNAVAILABLE.
        vec![cluster(HOST, &[])],
    )
    .await;
    let mut request = get("/pkg.Svc/Call");
    request.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    let (status, headers, body) = harness.send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "14");
    assert_eq!(headers[header::CONTENT_TYPE], "application/grpc");
    assert_eq!(headers["grpc-message"], "no healthy upstream");
    assert!(body.is_empty());
    let line = &harness.test.log_lines(1).await[0];
    assert_eq!(line["response_flags"], "UH");
    assert_eq!(
        harness.test.metric(
            "istio_requests_total",
            &[("grpc_response_status", "14"), ("request_protocol", "grpc")]
        ),
        Some(1)
    );
}

/// Writes `bytes` on a fresh connection to `serve` and reads until the proxy closes.
async fn raw_exchange(harness: &Harness, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut client, server) = tokio::io::duplex(256 * 1024);
    tokio::spawn(serve(harness.connection.clone(), server));
    // The proxy may close before taking it all (a refused head): fine.
    let _ = client.write_all(bytes).await;
    let mut read = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut read)).await;
    String::from_utf8_lossy(&read).into_owned()
}

#[tokio::test]
async fn a_head_refused_before_parsing_is_counted_and_logged_as_envoy_would() {
    let oversized = format!("GET / HTTP/1.1\r\nx-big: {}\r\n\r\n", "b".repeat(61 * 1024));
    let long_line = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(61 * 1024));
    let cases: [(&str, &[u8], u16, &str, &str); 3] = [
        (
            "oversized head",
            oversized.as_bytes(),
            431,
            "request_headers_size",
            "http1.headers_too_large",
        ),
        (
            "request line too long",
            long_line.as_bytes(),
            414,
            "request_line_size",
            "http1.uri_too_long",
        ),
        (
            "CL.TE",
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
            "request_framing",
            "http1.content_length_and_chunked_not_allowed",
        ),
    ];
    for (name, bytes, status, limit, details) in cases {
        let harness = harness(HttpDecision::Route(Arc::new(forward_to(HOST))), vec![]).await;
        let answer = raw_exchange(&harness, bytes).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{name}: {answer}"
        );
        let line = &harness.test.log_lines(1).await[0];
        for (field, want) in [
            ("method", "-"),
            ("path", "-"),
            ("request_id", "-"),
            ("protocol", "HTTP/1.1"),
            ("response_flags", "DPE"),
            ("response_code_details", details),
        ] {
            assert_eq!(line[field], want, "{name}: {field}: {line}");
        }
        assert_eq!(line["response_code"], status, "{name}: {line}");
        assert_eq!(line["authority"], serde_json::Value::Null, "{name}: {line}");
        assert_eq!(
            harness
                .test
                .metric("shunt_http_limit_rejections_total", &[("limit", limit)]),
            Some(1),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_pipelined_request_behind_a_good_one_gets_the_same_refusals() {
    let first = "POST /first HTTP/1.1\r\nhost: web.shop:80\r\ncontent-length: 5\r\n\r\nhello";
    let many_headers: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let cases: [(&str, String, u16, &str); 5] = [
        (
            "oversized",
            format!("GET /second HTTP/1.1\r\nx-big: {}\r\n\r\n", "b".repeat(61 * 1024)),
            431,
            "http1.headers_too_large",
        ),
        (
            "too many headers",
            format!("GET /second HTTP/1.1\r\n{many_headers}\r\n"),
            431,
            "too_many_headers",
        ),
        (
            "CL.TE",
            "POST /second HTTP/1.1\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n".to_owned(),
            400,
            "http1.content_length_and_chunked_not_allowed",
        ),
        (
            "after a chunked body",
            format!("GET /second HTTP/1.1\r\nx-big: {}\r\n\r\n", "b".repeat(61 * 1024)),
            431,
            "http1.headers_too_large",
        ),
        // What follows a head that may upgrade waits for its answer: not upgraded, it is
        // the next head, judged as any.
        (
            "after an upgrade not taken",
            format!("GET /second HTTP/1.1\r\nx-big: {}\r\n\r\n", "b".repeat(61 * 1024)),
            431,
            "http1.headers_too_large",
        ),
    ];
    for (name, second, status, details) in cases {
        let web = backend("web", 0).await;
        let harness = harness(
            HttpDecision::Route(Arc::new(forward_to(HOST))),
            vec![cluster(HOST, &[web.addr])],
        )
        .await;
        let first = match name {
            "after a chunked body" => {
                "POST /first HTTP/1.1\r\nhost: web.shop:80\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            }
            "after an upgrade not taken" => {
                "GET /first HTTP/1.1\r\nhost: web.shop:80\r\nupgrade: h2c\r\n\r\n"
            }
            _ => first,
        };
        let answer = raw_exchange(&harness, format!("{first}{second}").as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{name}: {answer}");
        let second_status = answer
            .match_indices("HTTP/1.1 ")
            .nth(1)
            .map(|(at, _)| &answer[at..at + 12]);
        assert_eq!(
            second_status,
            Some(format!("HTTP/1.1 {status}").as_str()),
            "{name}: {answer}"
        );
        let seen = web.seen.lock().unwrap().len();
        assert_eq!(seen, 1, "{name}: the backend saw only the first request");
        let lines = harness.test.log_lines(2).await;
        let refused = lines
            .iter()
            .find(|line| line["response_code"] == status)
            .unwrap_or_else(|| panic!("{name}: {lines:?}"));
        assert_eq!(refused["response_flags"], "DPE", "{name}: {refused}");
        assert_eq!(
            refused["response_code_details"], details,
            "{name}: {refused}"
        );
    }
}
