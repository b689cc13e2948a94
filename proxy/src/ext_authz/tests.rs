use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::Method;
use http_body_util::Full;
use hyper::service::service_fn;
use serde_json::{Value, json};
use shunt_mesh::ext_authz::{ProviderKind, extension_providers};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// A provider as MeshConfig would give it: `service` and `port` are filled in.
fn provider(fields: Value) -> ExtAuthzHttp {
    let mut config = json!({"service": "ext-authz.foo.svc.cluster.local", "port": 8000});
    config
        .as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    let entry = json!({"name": "p", "envoyExtAuthzHttp": config});
    match extension_providers(&[entry], "extensionProviders")
        .0
        .remove(0)
        .kind
    {
        ProviderKind::EnvoyExtAuthzHttp(http) => http,
        other => panic!("{other:?}"),
    }
}

fn parts(method: Method, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap().into_parts().0
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_check_request_carries_what_envoy_sends() {
    let provider = provider(json!({
        "pathPrefix": "/check",
        "includeRequestHeadersInCheck": ["x-ext-authz", "X-Trace-*", "transfer-encoding", "x-static"],
        "includeAdditionalHeadersInCheck": {"x-static": "fixed", "x-added": "1"},
    }));
    let request = parts(
        Method::POST,
        "/admin/users?id=7&x=y",
        &[
            ("host", "httpbin.foo:8000"),
            ("authorization", "Bearer abc"),
            ("x-ext-authz", "allow"),
            ("x-ext-authz", "again"),
            ("x-trace-id", "t1"),
            ("x-static", "from the client"),
            ("cookie", "session=secret"),
            ("content-length", "12"),
            ("transfer-encoding", "chunked"),
            ("connection", "keep-alive"),
        ],
    );
    let check = check_request(&provider, &request).unwrap();
    assert_eq!(check.method(), Method::POST);
    assert_eq!(check.uri(), "/check/admin/users?id=7&x=y");
    let headers = check.headers();
    let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "authorization",
            "content-length",
            "host",
            "x-added",
            "x-ext-authz",
            "x-static",
            "x-trace-id"
        ]
    );
    for (name, expected) in [
        ("host", "httpbin.foo:8000"),
        ("content-length", "0"),
        ("authorization", "Bearer abc"),
        // Repeated values are one entry of Envoy's check request, joined with ",".
        ("x-ext-authz", "allow,again"),
        ("x-trace-id", "t1"),
        // The fixed headers win over the client's.
        ("x-static", "fixed"),
        ("x-added", "1"),
    ] {
        assert_eq!(values(headers, name), [expected], "{name}");
    }
}

#[test]
fn the_check_request_takes_an_h2_authority_and_needs_no_prefix() {
    let provider = provider(json!({}));
    let request = parts(
        Method::GET,
        "http://cart.shop:8080/",
        &[("x-ext-authz", "allow")],
    );
    let check = check_request(&provider, &request).unwrap();
    assert_eq!(check.uri(), "/");
    assert_eq!(values(check.headers(), "host"), ["cart.shop:8080"]);
    // Not asked for: only the headers Envoy always sends.
    assert!(!check.headers().contains_key("x-ext-authz"));
}

/// An answer: status, headers, body.
fn answer(status: u16, headers: &[(&str, &str)], body: &str) -> (StatusCode, HeaderMap, Bytes) {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    (
        StatusCode::from_u16(status).unwrap(),
        map,
        Bytes::from(body.to_owned()),
    )
}

#[test]
fn an_ok_answer_allows_and_passes_the_listed_headers() {
    let provider = provider(json!({
        "headersToUpstreamOnAllow": ["x-ext-authz-check-result", "x-user-*"],
        "headersToDownstreamOnAllow": ["set-cookie"],
    }));
    let (status, headers, body) = answer(
        200,
        &[
            ("x-ext-authz-check-result", "allowed"),
            ("x-user-id", "first"),
            ("x-user-id", "last"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-other", "kept out"),
            ("content-length", "0"),
            (HEADERS_TO_REMOVE.as_str(), "cookie, x-secret,,host"),
        ],
        "",
    );
    let ExtAuthzOutcome::Allow(allowed) = decide(&provider, status, headers, body) else {
        panic!("denied");
    };
    let mut upstream: Vec<(String, String)> = allowed
        .upstream_headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    upstream.sort();
    // The last of a repeated header wins, as Envoy's setCopy.
    assert_eq!(
        upstream,
        [
            ("x-ext-authz-check-result".to_owned(), "allowed".to_owned()),
            ("x-user-id".to_owned(), "last".to_owned()),
        ]
    );
    assert_eq!(
        values(&allowed.downstream_headers, "set-cookie"),
        ["a=1", "b=2"]
    );
    assert_eq!(allowed.downstream_headers.len(), 2);
    // `Host` is never removed.
    assert_eq!(allowed.remove_upstream, ["cookie", "x-secret"]);
    assert!(allowed.failed_open.is_none());

    let mut request = parts(
        Method::GET,
        "/",
        &[
            ("host", "a"),
            ("cookie", "c"),
            ("x-secret", "s"),
            ("x-user-id", "forged"),
        ],
    );
    allowed.apply_to_request(&mut request.headers);
    assert_eq!(values(&request.headers, "x-user-id"), ["last"]);
    assert_eq!(values(&request.headers, "host"), ["a"]);
    assert!(!request.headers.contains_key("cookie"));
    assert!(!request.headers.contains_key("x-secret"));
    let mut response = HeaderMap::new();
    response.insert("set-cookie", HeaderValue::from_static("app=1"));
    allowed.apply_to_response(&mut response);
    assert_eq!(values(&response, "set-cookie"), ["app=1", "a=1", "b=2"]);
}

#[test]
fn other_answers_deny_with_the_services_status_body_and_headers() {
    struct Case {
        deny_list: Value,
        status: u16,
        headers: &'static [(&'static str, &'static str)],
        body: &'static str,
        /// The client's headers, sorted.
        expected: &'static [(&'static str, &'static str)],
    }
    let cases = [
        // No list: every header but Host (and the framing ones).
        Case {
            deny_list: json!([]),
            status: 403,
            headers: &[
                ("x-ext-authz-check-result", "denied"),
                ("host", "authz"),
                ("content-length", "6"),
                ("connection", "keep-alive"),
                ("date", "today"),
            ],
            body: "denied",
            expected: &[
                ("content-type", "text/plain"),
                ("date", "today"),
                ("x-ext-authz-check-result", "denied"),
            ],
        },
        // A list: those, plus WWW-Authenticate and Location.
        Case {
            deny_list: json!(["x-ext-authz-check-result"]),
            status: 401,
            headers: &[
                ("x-ext-authz-check-result", "denied"),
                ("www-authenticate", "Bearer"),
                ("content-type", "application/json"),
                ("date", "today"),
            ],
            body: "{}",
            // The service's content type is not listed: the local reply names one.
            expected: &[
                ("content-type", "text/plain"),
                ("www-authenticate", "Bearer"),
                ("x-ext-authz-check-result", "denied"),
            ],
        },
        // A redirect to a login page (oauth2-proxy's way).
        Case {
            deny_list: json!(["content-type"]),
            status: 302,
            headers: &[("location", "https://login.example.com/"), ("x-other", "1")],
            body: "",
            expected: &[("location", "https://login.example.com/")],
        },
        // Only 200 allows.
        Case {
            deny_list: json!([]),
            status: 204,
            headers: &[],
            body: "",
            expected: &[],
        },
    ];
    for case in cases {
        let provider = provider(json!({"headersToDownstreamOnDeny": case.deny_list}));
        let (status, headers, body) = answer(case.status, case.headers, case.body);
        let outcome = decide(&provider, status, headers, body);
        assert_eq!(outcome.response_code_details(), Some("ext_authz_denied"));
        let ExtAuthzOutcome::Deny(denied) = outcome else {
            panic!("{}: allowed", case.status);
        };
        assert!(denied.error.is_none());
        let response = denied.into_response();
        assert_eq!(response.status().as_u16(), case.status);
        assert_eq!(response.body(), case.body.as_bytes());
        let mut got: Vec<(&str, &str)> = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        got.sort_unstable();
        assert_eq!(got, case.expected, "{}", case.status);
    }
}

#[test]
fn errors_fail_open_or_answer_status_on_error() {
    // (failOpen, statusOnError, allowed, status)
    let cases = [
        (false, None, false, 403),
        (false, Some("503"), false, 503),
        (true, None, true, 200),
        (true, Some("503"), true, 200),
    ];
    for (fail_open, status_on_error, allowed, status) in cases {
        let mut fields = json!({"failOpen": fail_open});
        if let Some(status) = status_on_error {
            fields["statusOnError"] = json!(status);
        }
        let provider = provider(fields);
        // A 5xx answer is an error, like no answer at all.
        let (answer_status, headers, body) = answer(500, &[("x-a", "1")], "boom");
        let outcome = decide(&provider, answer_status, headers, body);
        assert_eq!(
            outcome.allowed(),
            allowed,
            "{fail_open} {status_on_error:?}"
        );
        match outcome {
            ExtAuthzOutcome::Allow(allowed) => {
                assert!(matches!(
                    allowed.failed_open,
                    Some(CheckError::ServerError { status, .. }) if status == 500
                ));
                assert_eq!(
                    values(&allowed.upstream_headers, FAILURE_MODE_ALLOWED.as_str()),
                    ["true"]
                );
            }
            denied @ ExtAuthzOutcome::Deny(_) => {
                assert_eq!(denied.response_code_details(), Some("ext_authz_error"));
                let ExtAuthzOutcome::Deny(denied) = denied else {
                    unreachable!()
                };
                assert!(denied.error.is_some());
                let response = denied.into_response();
                assert_eq!(response.status().as_u16(), status);
                assert!(response.body().is_empty());
                assert!(response.headers().is_empty());
            }
        }
    }
}

// ---- against a real ext_authz HTTP server on loopback ----

/// What the test server saw of one check.
#[derive(Clone, Debug)]
struct Seen {
    method: Method,
    uri: String,
    headers: HeaderMap,
}

struct Authorizer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
}

/// Istio's sample ext_authz server: allows `x-ext-authz: allow`, answers 500 to
/// `x-ext-authz: error`, waits `x-delay-ms` first; otherwise 403 with a body.
async fn authorizer() -> Authorizer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let (seen_by_server, connections_by_server) = (Arc::clone(&seen), Arc::clone(&connections));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            connections_by_server.fetch_add(1, Ordering::SeqCst);
            let seen = Arc::clone(&seen_by_server);
            let service = service_fn(move |request: Request<hyper::body::Incoming>| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push(Seen {
                        method: request.method().clone(),
                        uri: request.uri().to_string(),
                        headers: request.headers().clone(),
                    });
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned()
                    };
                    if let Ok(ms) = header("x-delay-ms").parse::<u64>() {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let response = match header("x-ext-authz").as_str() {
                        "allow" => Response::builder()
                            .header("x-ext-authz-check-result", "allowed")
                            .header("x-downstream", "on allow")
                            .body(Full::new(Bytes::new())),
                        "error" => Response::builder()
                            .status(500)
                            .body(Full::new(Bytes::from_static(b"broken"))),
                        _ => Response::builder()
                            .status(403)
                            .header("x-ext-authz-check-result", "denied")
                            .header("x-internal", "not for clients")
                            .body(Full::new(Bytes::from_static(
                                b"denied by ext_authz for not found header \
                                  `x-ext-authz: allow` in the request",
                            ))),
                    };
                    Ok::<_, Infallible>(response.unwrap())
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Authorizer {
        addr,
        seen,
        connections,
    }
}

/// Dials one address on loopback.
struct Loopback {
    addr: SocketAddr,
    key: Option<String>,
    dials: AtomicUsize,
}

impl Loopback {
    fn new(addr: SocketAddr, key: Option<&str>) -> Self {
        Self {
            addr,
            key: key.map(str::to_owned),
            dials: AtomicUsize::new(0),
        }
    }
}

impl Connector for Loopback {
    fn connect<'a>(&'a self, _provider: &'a ExtAuthzHttp) -> Connecting<'a> {
        Box::pin(async move {
            self.dials.fetch_add(1, Ordering::SeqCst);
            let stream = TcpStream::connect(self.addr).await?;
            Ok(Box::new(stream) as Stream)
        })
    }

    fn reuse_key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

fn sample_provider() -> ExtAuthzHttp {
    provider(json!({
        "pathPrefix": "/check",
        "includeRequestHeadersInCheck": ["x-ext-authz", "x-delay-ms"],
        "includeAdditionalHeadersInCheck": {"x-from-proxy": "shunt"},
        "headersToUpstreamOnAllow": ["x-ext-authz-check-result"],
        "headersToDownstreamOnAllow": ["x-downstream"],
        "headersToDownstreamOnDeny": ["x-ext-authz-check-result"],
        "timeout": "5s",
    }))
}

#[tokio::test]
async fn a_real_server_allows_and_its_headers_go_both_ways() {
    let server = authorizer().await;
    let connector = Loopback::new(server.addr, None);
    let client = ExtAuthz::new();
    let request = parts(
        Method::GET,
        "/headers?q=1",
        &[
            ("host", "httpbin.foo:8000"),
            ("x-ext-authz", "allow"),
            ("cookie", "not sent"),
        ],
    );
    let outcome = client.check(&sample_provider(), &request, &connector).await;
    let ExtAuthzOutcome::Allow(allowed) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(allowed.failed_open.is_none());
    assert_eq!(
        values(&allowed.upstream_headers, "x-ext-authz-check-result"),
        ["allowed"]
    );
    assert_eq!(
        values(&allowed.downstream_headers, "x-downstream"),
        ["on allow"]
    );

    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, Method::GET);
    assert_eq!(seen[0].uri, "/check/headers?q=1");
    for (name, value) in [
        ("host", "httpbin.foo:8000"),
        ("content-length", "0"),
        ("x-ext-authz", "allow"),
        ("x-from-proxy", "shunt"),
    ] {
        assert_eq!(values(&seen[0].headers, name), [value], "{name}");
    }
    assert!(!seen[0].headers.contains_key("cookie"));
}

#[tokio::test]
async fn a_real_server_denies_with_its_status_body_and_listed_headers() {
    let server = authorizer().await;
    let connector = Loopback::new(server.addr, None);
    let request = parts(Method::POST, "/admin", &[("host", "httpbin.foo:8000")]);
    let outcome = ExtAuthz::new()
        .check(&sample_provider(), &request, &connector)
        .await;
    assert_eq!(outcome.response_code_details(), Some("ext_authz_denied"));
    let ExtAuthzOutcome::Deny(denied) = outcome else {
        panic!("allowed");
    };
    let response = denied.into_response();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.body(),
        "denied by ext_authz for not found header `x-ext-authz: allow` in the request"
    );
    assert_eq!(
        values(response.headers(), "x-ext-authz-check-result"),
        ["denied"]
    );
    assert!(!response.headers().contains_key("x-internal"));
    // The method is the client's, the body is not sent.
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen[0].method, Method::POST);
    assert_eq!(values(&seen[0].headers, "content-length"), ["0"]);
}

/// What happens, the connector's address, the request's headers.
type ErrorCase = (
    &'static str,
    SocketAddr,
    &'static [(&'static str, &'static str)],
);

#[tokio::test]
async fn timeouts_unreachable_services_and_5xx_fail_open_or_closed() {
    let server = authorizer().await;
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let cases: [ErrorCase; 3] = [
        (
            "timeout",
            server.addr,
            &[("x-ext-authz", "allow"), ("x-delay-ms", "3000")],
        ),
        ("refused", closed_port, &[("x-ext-authz", "allow")]),
        ("5xx", server.addr, &[("x-ext-authz", "error")]),
    ];
    for (what, addr, headers) in cases {
        for fail_open in [false, true] {
            let provider = provider(json!({
                "includeRequestHeadersInCheck": ["x-ext-authz", "x-delay-ms"],
                "timeout": "200ms",
                "failOpen": fail_open,
                "statusOnError": "503",
            }));
            let connector = Loopback::new(addr, None);
            let started = Instant::now();
            let outcome = ExtAuthz::new()
                .check(&provider, &parts(Method::GET, "/", headers), &connector)
                .await;
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{what}: took {:?}",
                started.elapsed()
            );
            let error = match outcome {
                ExtAuthzOutcome::Allow(allowed) => {
                    assert!(fail_open, "{what}: allowed while failing closed");
                    assert_eq!(
                        values(&allowed.upstream_headers, FAILURE_MODE_ALLOWED.as_str()),
                        ["true"]
                    );
                    allowed.failed_open.unwrap()
                }
                ExtAuthzOutcome::Deny(denied) => {
                    assert!(!fail_open, "{what}: denied while failing open");
                    assert_eq!(denied.status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
                    assert!(denied.body.is_empty());
                    denied.error.unwrap()
                }
            };
            let matches = match what {
                "timeout" => matches!(error, CheckError::Timeout { .. }),
                "refused" => matches!(error, CheckError::Connect { .. }),
                _ => matches!(error, CheckError::ServerError { .. }),
            };
            assert!(matches, "{what}: {error}");
        }
    }
}

#[tokio::test]
async fn idle_connections_are_reused_only_under_a_key() {
    let server = authorizer().await;
    let provider = sample_provider();
    let request = parts(Method::GET, "/", &[("x-ext-authz", "allow")]);
    let client = ExtAuthz::new();

    let keyed = Loopback::new(server.addr, Some("pod-a"));
    for _ in 0..3 {
        assert!(client.check(&provider, &request, &keyed).await.allowed());
    }
    assert_eq!(keyed.dials.load(Ordering::SeqCst), 1);
    assert_eq!(client.idle_connections(), 1);

    let unkeyed = Loopback::new(server.addr, None);
    for _ in 0..2 {
        assert!(client.check(&provider, &request, &unkeyed).await.allowed());
    }
    assert_eq!(unkeyed.dials.load(Ordering::SeqCst), 2);
    assert_eq!(server.connections.load(Ordering::SeqCst), 3);
}

/// A server that answers the first request of each connection (keeping it open, as
/// keep-alive allows) and drops the connection when a second request arrives, as a server
/// closing an idle connection just as it is reused does.
async fn dropping_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = vec![0_u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                }
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                // The next request gets no answer: the connection closes under it.
                let _ = stream.read(&mut buf).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_connection_dropped_as_it_is_reused_costs_a_redial_not_a_denial() {
    let addr = dropping_server().await;
    let provider = provider(json!({}));
    let request = parts(Method::GET, "/", &[]);
    let client = ExtAuthz::new();
    let connector = Loopback::new(addr, Some("pod-a"));
    for attempt in 0..3 {
        let outcome = client.check(&provider, &request, &connector).await;
        assert!(outcome.allowed(), "check {attempt}: {outcome:?}");
    }
    // Checks 2 and 3 were sent on the kept connection, lost, and asked again on a new one.
    assert_eq!(connector.dials.load(Ordering::SeqCst), 3);
}
