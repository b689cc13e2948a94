//! End to end, the limits of every HTTP listener (issue 17, "The edge is hostile"): clients
//! that send what a well-behaved client would not, over raw sockets and a hand-driven HTTP/2
//! client, against a captured pod's inbound listener (mesh listeners and gateway listeners
//! share the serve loop). Every case asserts the status or the close, that the next
//! well-formed request on a new connection is served, and that the proxy's memory stays
//! bounded. Every test runs as root (skipping, saying so, otherwise) on its own node.

#[expect(
    dead_code,
    reason = "the TCP echo helpers of the shared module are for e2e.rs"
)]
mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{OrPanic, pod_ip};
use serde_json::{Value, json};
use shunt_tests::netns::in_netns;
use shunt_tests::{AgentOptions, ClusterConfig, NamespaceConfig, Node, Pod, ServiceConfig};

const MESH: &str = "mesh";
const HTTP_PORT: u16 = 8080;
/// A client gives up reading after this (every case's close comes well before).
const READ_TIMEOUT: Duration = Duration::from_secs(20);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
const REPORT_TIMEOUT: Duration = Duration::from_secs(15);
/// What the proxy may grow by over a test's abuse: generous, it only has to be bounded.
const RSS_GROWTH_BOUND_KIB: u64 = 96 * 1024;
const LIMITS: &str = "shunt_http_limit_rejections_total";

/// A node with a captured client pod and a captured `web` backend serving HTTP on 8080.
struct Edge {
    node: Node,
    client: Pod,
    web: Pod,
    _server: shunt_tests::Process,
}

impl Edge {
    fn start(test: &str, proxy_args: &[&str]) -> Option<Self> {
        if shunt_tests::skip_unless_root(test) {
            return None;
        }
        let binaries = common::binaries();
        binaries.require_all().or_panic("binaries under test");
        binaries.httppod().or_panic("shunt-httppod");
        let mut node = Node::with_binaries(test, binaries).or_panic("creating the node");
        let client = node.add_pod("client", pod_ip(10)).or_panic("client pod");
        let web = node.add_pod("web", pod_ip(21)).or_panic("web pod");
        let config = ClusterConfig::new()
            .namespace(&NamespaceConfig::injected(MESH))
            .pod(&node.pod_config(&client, MESH).label("app", "client"))
            .pod(
                &node
                    .pod_config(&web, MESH)
                    .label("app", "web")
                    .port("http", HTTP_PORT),
            )
            .service(
                &ServiceConfig::new(MESH, "web", std::net::Ipv4Addr::new(10, 96, 0, 1))
                    .select("app", "web")
                    .port("http", 80, HTTP_PORT),
            );
        node.write_config(&config)
            .or_panic("writing the cluster config");
        node.write_istio(&[]).or_panic("writing the Istio config");
        node.start_agent(&AgentOptions::default())
            .or_panic("starting the agent");
        node.set_proxy_args(proxy_args.iter().map(|a| (*a).to_owned()).collect());
        node.start_proxy().or_panic("starting the proxy");
        node.wait_captured(&[&client, &web])
            .or_panic("waiting for capture");
        let port = HTTP_PORT.to_string();
        let server = node
            .start_httppod_server(&web, &["serve", "--port", &port, "--name", "web"])
            .or_panic("httppod server in web");
        let edge = Self {
            node,
            client,
            web,
            _server: server,
        };
        // The app answers (straight, over the pod's loopback) before any case runs.
        edge.seen_total();
        Some(edge)
    }

    /// The web pod's inbound listener, as the client pod reaches it.
    fn target(&self) -> SocketAddr {
        self.web.addr(HTTP_PORT)
    }

    fn client_netns(&self) -> PathBuf {
        self.client.netns_path()
    }

    /// Requests the app has seen (asked over its own loopback, not captured).
    fn seen_total(&self) -> u64 {
        let addr = format!("127.0.0.1:{HTTP_PORT}");
        let output = self
            .node
            .run_httppod(&self.web, &["count", "--addr", &addr], CLIENT_TIMEOUT)
            .or_panic("shunt-httppod count");
        assert!(output.status.success(), "count: {}", output.stderr);
        let seen = output.json().or_panic("count report");
        seen["total"]
            .as_u64()
            .unwrap_or_else(|| panic!("count report: {seen}"))
    }

    /// The proxy's resident memory, in KiB.
    fn proxy_rss_kib(&mut self) -> u64 {
        let pid = self
            .node
            .proxy_process()
            .map(|p| p.pid())
            .unwrap_or_else(|| panic!("the proxy is not running"));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .or_panic("the proxy's /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }

    /// A well-formed request on a new connection is served.
    fn assert_served(&self, after: &str) {
        let answer = raw(
            &self.client_netns(),
            self.target(),
            &Payload::Bytes(
                b"GET /after HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".to_vec(),
            ),
        );
        assert_eq!(
            answer.status(),
            Some(200),
            "a good request after {after}: {}",
            answer.describe()
        );
    }

    fn limit_count(&self, limit: &str) -> u64 {
        let metrics = self.node.metrics().or_panic("metrics");
        count(metrics.sum(LIMITS, &[("limit", limit)]))
    }

    fn wait_limit(&mut self, limit: &str, at_least: u64) {
        self.node
            .wait_metrics(
                &format!("{LIMITS}{{limit={limit}}} >= {at_least}"),
                REPORT_TIMEOUT,
                |m| count(m.sum(LIMITS, &[("limit", limit)])) >= at_least,
            )
            .or_panic("limit metric");
    }
}

fn count(value: f64) -> u64 {
    assert!(value >= 0.0 && value.fract() == 0.0, "{value}");
    // Counters here stay far below 2^53.
    value as u64
}

/// What a raw client sends.
enum Payload {
    Bytes(Vec<u8>),
    /// One byte a second, at most this many (a slowloris).
    Slowly(Vec<u8>),
    /// The bytes, then nothing (the client keeps the connection open and reads).
    ThenStall(Vec<u8>),
}

/// What a raw client read until the proxy closed (or it gave up).
struct Answer {
    text: String,
    closed: bool,
}

impl Answer {
    fn status(&self) -> Option<u16> {
        let line = self.text.lines().next()?;
        line.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
    }

    fn describe(&self) -> String {
        let head: String = self.text.chars().take(300).collect();
        format!("closed={} read={head:?}", self.closed)
    }
}

/// Connects from the netns at `netns` to `to`, sends, and reads until the proxy closes.
fn raw(netns: &Path, to: SocketAddr, send: &Payload) -> Answer {
    in_netns(netns, || {
        let mut stream =
            TcpStream::connect_timeout(&to, Duration::from_secs(5)).or_panic("connecting");
        stream
            .set_read_timeout(Some(Duration::from_secs(1)))
            .or_panic("read timeout");
        let mut read = Vec::new();
        let mut closed = false;
        let mut chunk = [0u8; 16 * 1024];
        let mut read_some = |stream: &mut TcpStream, read: &mut Vec<u8>| -> bool {
            match stream.read(&mut chunk) {
                Ok(0) => true,
                Ok(n) => {
                    read.extend_from_slice(&chunk[..n]);
                    false
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
                // Reset by the proxy: closed as well.
                Err(_) => true,
            }
        };
        match send {
            Payload::Bytes(bytes) | Payload::ThenStall(bytes) => {
                // The proxy may close before taking everything (a refused head): fine.
                let _ = stream.write_all(bytes);
            }
            Payload::Slowly(bytes) => {
                for byte in bytes {
                    if stream.write_all(std::slice::from_ref(byte)).is_err() {
                        break;
                    }
                    if read_some(&mut stream, &mut read) {
                        closed = true;
                        break;
                    }
                }
            }
        }
        let deadline = Instant::now() + READ_TIMEOUT;
        while !closed && Instant::now() < deadline {
            closed = read_some(&mut stream, &mut read);
        }
        Answer {
            text: String::from_utf8_lossy(&read).into_owned(),
            closed,
        }
    })
    .or_panic("entering the client's netns")
}

fn head_with_headers(count: usize, value_len: usize) -> Vec<u8> {
    let mut head = String::from("GET / HTTP/1.1\r\nHost: web\r\n");
    let value = "v".repeat(value_len);
    for i in 0..count {
        head.push_str(&format!("x-h{i}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

struct Case {
    name: &'static str,
    send: Payload,
    /// The status expected before the close; `None`: a close without an answer will do.
    status: Option<u16>,
    /// Also acceptable (the slowloris: 408, or closed).
    or_closed: bool,
    /// `shunt_http_limit_rejections_total{limit}` must count it.
    limit: Option<&'static str>,
    /// The app must not see it (a smuggling attempt: exactly the follow-up request).
    app_sees_none: bool,
    /// The access log line it must get: `(response_flags, response_code_details)`.
    logged: Option<(&'static str, &'static str)>,
}

fn case(
    name: &'static str,
    bytes: &[u8],
    status: u16,
    limit: Option<&'static str>,
    details: Option<&'static str>,
) -> Case {
    Case {
        name,
        send: Payload::Bytes(bytes.to_vec()),
        status: Some(status),
        or_closed: false,
        limit,
        app_sees_none: true,
        logged: details.map(|details| ("DPE", details)),
    }
}

impl Edge {
    /// Access log lines with these flags and details so far.
    fn logged(&self, (flags, details): (&str, &str)) -> usize {
        self.node
            .access_log()
            .or_panic("access log")
            .matching(&[
                ("response_flags", flags),
                ("response_code_details", details),
            ])
            .len()
    }

    /// Waits for the `count`th line with these flags and details; asserts what a line of a
    /// refusal says as Envoy's would (its status; `-` where the head was never parsed).
    fn wait_logged(&mut self, case: &Case, logged: (&str, &str), count: usize) -> Value {
        let (flags, details) = logged;
        let log = self
            .node
            .wait_access_log(case.name, REPORT_TIMEOUT, |log| {
                log.matching(&[
                    ("response_flags", flags),
                    ("response_code_details", details),
                ])
                .len()
                    >= count
            })
            .or_panic("access log");
        let lines = log.matching(&[
            ("response_flags", flags),
            ("response_code_details", details),
        ]);
        let line = lines[count - 1];
        if let Some(status) = case.status {
            assert_eq!(
                line["response_code"],
                json!(status),
                "{}: {line}",
                case.name
            );
        }
        assert_eq!(line["direction"], json!("inbound"), "{}: {line}", case.name);
        // The head scanner's refusals come before hyper parsed anything of the request.
        let unparsed = line["protocol"] == json!("HTTP/1.1")
            && matches!(
                case.limit,
                Some(
                    "request_headers_size"
                        | "request_headers_count"
                        | "request_line_size"
                        | "request_framing"
                        | "request_headers_timeout"
                        | "header_characters"
                )
            );
        let method = line["method"].as_str().unwrap_or_default();
        assert_eq!(method == "-", unparsed, "{}: {line}", case.name);
        line.clone()
    }
}

#[test]
fn http1_limits_answer_close_and_leave_the_listener_serving() {
    let Some(mut edge) = Edge::start(
        "http1_limits_answer_close_and_leave_the_listener_serving",
        &[
            "--reject-header-underscores",
            "--request-headers-timeout",
            "2",
            "--idle-timeout",
            "3",
            "--stream-idle-timeout",
            "2",
        ],
    ) else {
        return;
    };
    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: web\r\n\r\n",
        "a".repeat(61 * 1024)
    );
    let mut cases = vec![
        case(
            "headers over 60 KiB",
            &head_with_headers(70, 1024),
            431,
            Some("request_headers_size"),
            Some("http1.headers_too_large"),
        ),
        case(
            "more than 100 headers",
            &head_with_headers(101, 4),
            431,
            Some("request_headers_count"),
            Some("too_many_headers"),
        ),
        case(
            "a request line over 60 KiB",
            long_line.as_bytes(),
            414,
            Some("request_line_size"),
            Some("http1.uri_too_long"),
        ),
        case(
            "CL.TE",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
            400,
            Some("request_framing"),
            Some("http1.content_length_and_chunked_not_allowed"),
        ),
        case(
            "TE.CL",
            b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST /smuggled HTTP/1.1\r\nHost: web\r\nContent-Length: 15\r\n\r\nx=1\r\n0\r\n\r\n",
            400,
            Some("request_framing"),
            Some("http1.content_length_and_chunked_not_allowed"),
        ),
        case(
            "a duplicate Content-Length",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
            400,
            Some("request_framing"),
            Some("http1.multiple_content_length"),
        ),
        case(
            "mismatched Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
            Some("request_framing"),
            Some("http1.multiple_content_length"),
        ),
        case(
            "an unknown transfer coding",
            b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            400,
            Some("request_framing"),
            Some("http1.invalid_transfer_encoding"),
        ),
        case(
            "an invalid chunk size",
            b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            400,
            Some("request_body_framing"),
            Some("downstream_body_error"),
        ),
        case(
            "NUL in a header value",
            b"GET / HTTP/1.1\r\nHost: web\r\nx-nul: a\0b\r\n\r\n",
            400,
            Some("header_characters"),
            Some("http1.codec_error"),
        ),
        case(
            "CR in a header value",
            b"GET / HTTP/1.1\r\nHost: web\r\nx-cr: a\rb\r\n\r\n",
            400,
            Some("header_characters"),
            Some("http1.codec_error"),
        ),
        case(
            "LF in a header value (a line without a colon)",
            b"GET / HTTP/1.1\r\nHost: web\r\nx-lf: a\nb\r\n\r\n",
            400,
            Some("header_characters"),
            Some("http1.codec_error"),
        ),
        case(
            "an underscore in a header name",
            b"GET / HTTP/1.1\r\nHost: web\r\nx_user: admin\r\n\r\n",
            400,
            Some("header_underscore"),
            Some("unexpected_underscore"),
        ),
    ];
    cases.push(Case {
        name: "a slowloris head (one byte a second)",
        send: Payload::Slowly(
            b"GET / HTTP/1.1\r\nHost: web\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".to_vec(),
        ),
        status: Some(408),
        or_closed: true,
        limit: Some("request_headers_timeout"),
        app_sees_none: true,
        logged: Some(("DPE", "request_header_timeout")),
    });
    cases.push(Case {
        name: "a request body that stalls (stream idle timeout)",
        send: Payload::ThenStall(
            b"POST /stall HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\nabc".to_vec(),
        ),
        status: Some(408),
        or_closed: false,
        limit: Some("stream_idle_timeout"),
        // The app got the head and waited for the body with the proxy.
        app_sees_none: false,
        logged: Some(("SI", "stream_idle_timeout")),
    });
    cases.push(Case {
        name: "an idle keep-alive connection",
        send: Payload::ThenStall(b"GET /keep HTTP/1.1\r\nHost: web\r\n\r\n".to_vec()),
        status: Some(200),
        or_closed: false,
        limit: Some("idle_timeout"),
        app_sees_none: false,
        // The request was served; the connection's close is no request's.
        logged: None,
    });

    let rss_before = edge.proxy_rss_kib();
    for case in &cases {
        let seen_before = edge.seen_total();
        let limit_before = case.limit.map(|limit| edge.limit_count(limit));
        let logged_before = case.logged.map(|logged| edge.logged(logged));
        let answer = raw(&edge.client_netns(), edge.target(), &case.send);
        let status_ok = answer.status() == case.status
            || (case.or_closed && answer.closed && answer.status().is_none());
        assert!(
            status_ok,
            "{}: expected {:?}: {}",
            case.name,
            case.status,
            answer.describe()
        );
        assert_closed(case, &answer);
        if let (Some(limit), Some(before)) = (case.limit, limit_before) {
            edge.wait_limit(limit, before + 1);
        }
        if let (Some(logged), Some(before)) = (case.logged, logged_before) {
            let line = edge.wait_logged(case, logged, before + 1);
            assert_eq!(line["protocol"], json!("HTTP/1.1"), "{}: {line}", case.name);
        }
        edge.assert_served(case.name);
        if case.app_sees_none {
            assert_eq!(
                edge.seen_total(),
                seen_before + 1,
                "{}: the app saw exactly the well-formed request after it",
                case.name
            );
        }
    }
    pipelined_requests_get_the_same_refusals(&mut edge);
    let rss_after = edge.proxy_rss_kib();
    assert!(
        rss_after < rss_before + RSS_GROWTH_BOUND_KIB,
        "the proxy grew from {rss_before} KiB to {rss_after} KiB"
    );
    let log = edge.node.access_log().or_panic("access log");
    assert!(
        log.matching(&[("response_code", "400"), ("response_flags", "UC")])
            .is_empty(),
        "no client error is blamed on the upstream:\n{}",
        log.describe()
    );
}

fn assert_closed(case: &Case, answer: &Answer) {
    assert!(
        answer.closed,
        "{}: the proxy closes: {}",
        case.name,
        answer.describe()
    );
}

/// A good request, then one the limits refuse, sent together: the first is served, the
/// second refused as it would be alone (status, close, metric, line), and the app sees
/// only the first.
fn pipelined_requests_get_the_same_refusals(edge: &mut Edge) {
    let first = b"POST /first HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    let cases = [
        case(
            "pipelined: headers over 60 KiB",
            &head_with_headers(70, 1024),
            431,
            Some("request_headers_size"),
            Some("http1.headers_too_large"),
        ),
        case(
            "pipelined: CL.TE",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
            400,
            Some("request_framing"),
            Some("http1.content_length_and_chunked_not_allowed"),
        ),
        case(
            "pipelined: more than 100 headers",
            &head_with_headers(101, 4),
            431,
            Some("request_headers_count"),
            Some("too_many_headers"),
        ),
    ];
    for case in &cases {
        let Payload::Bytes(second) = &case.send else {
            unreachable!("pipelined cases are bytes")
        };
        let seen_before = edge.seen_total();
        let limit = case.limit.unwrap_or_default();
        let limit_before = edge.limit_count(limit);
        let logged = case.logged.unwrap_or_default();
        let logged_before = edge.logged(logged);
        let answer = raw(
            &edge.client_netns(),
            edge.target(),
            &Payload::Bytes([first.clone(), second.clone()].concat()),
        );
        assert_eq!(
            answer.status(),
            Some(200),
            "{}: {}",
            case.name,
            answer.describe()
        );
        let second_status = answer
            .text
            .match_indices("HTTP/1.1 ")
            .nth(1)
            .and_then(|(at, _)| answer.text.get(at + 9..at + 12));
        let expected = case.status.map(|status| status.to_string());
        assert_eq!(
            second_status,
            expected.as_deref(),
            "{}: {}",
            case.name,
            answer.describe()
        );
        assert_closed(case, &answer);
        assert_eq!(
            edge.seen_total(),
            seen_before + 1,
            "{}: the app saw exactly the first request",
            case.name
        );
        edge.wait_limit(limit, limit_before + 1);
        edge.wait_logged(case, logged, logged_before + 1);
        edge.assert_served(case.name);
    }
}

#[test]
fn http2_limits_host_authority_hpack_settings_flood_and_rapid_reset() {
    let Some(mut edge) = Edge::start(
        "http2_limits_host_authority_hpack_settings_flood_and_rapid_reset",
        &[],
    ) else {
        return;
    };
    let (netns, target) = (edge.client_netns(), edge.target());
    let rss_before = edge.proxy_rss_kib();

    // The server announces the concurrent stream limit; Host must agree with :authority;
    // a header block over the limit gets 431 from HPACK's bound.
    let report = h2_run(&netns, target, |mut client| async move {
        let agreeing = h2_status(&mut client, &[("host", "web")], 0).await;
        // Known once the server's SETTINGS were read, as they were for that answer.
        let max_streams = client.current_max_send_streams();
        let disagreeing = h2_status(&mut client, &[("host", "evil.example")], 0).await;
        let oversized = h2_status(&mut client, &[], 70 * 1024).await;
        json!({
            "max_streams": max_streams,
            "agreeing": agreeing,
            "disagreeing": disagreeing,
            "oversized": oversized,
        })
    });
    assert_eq!(report["max_streams"], json!(100), "{report}");
    assert_eq!(report["agreeing"], json!(200), "{report}");
    assert_eq!(report["disagreeing"], json!(400), "{report}");
    assert_eq!(report["oversized"], json!(431), "{report}");
    edge.wait_limit("host_authority_mismatch", 1);
    // The oversized list is refused by the listener's own check (h2's bound is a ceiling
    // above it): counted and logged as every other refusal.
    edge.wait_limit("request_headers_size", 1);
    let oversized = Case {
        name: "an HTTP/2 header list over 60 KiB",
        send: Payload::Bytes(Vec::new()),
        status: Some(431),
        or_closed: false,
        limit: Some("request_headers_size"),
        app_sees_none: true,
        logged: Some(("DPE", "http2.too_many_headers")),
    };
    let line = edge.wait_logged(&oversized, ("DPE", "http2.too_many_headers"), 1);
    assert_eq!(line["protocol"], json!("HTTP/2"), "{line}");
    assert_eq!(line["method"], json!("GET"), "{line}");
    edge.assert_served("HTTP/2 requests");

    // Streams over the concurrent stream limit, from a client that ignores it: h2 refuses
    // them itself (RST_STREAM REFUSED_STREAM), and the listener counts each.
    let refused = in_netns(&netns, || over_the_stream_limit(target, 110)).or_panic("netns");
    assert!(refused > 0, "streams past the 100th are refused");
    edge.wait_limit("max_concurrent_streams", 1);
    edge.assert_served("streams over the limit");

    // A SETTINGS flood from a client that never reads: h2 acknowledges each SETTINGS before
    // it reads on, so the flood stalls in the client's own socket; memory stays flat.
    let flooded = in_netns(&netns, || settings_flood(target)).or_panic("netns");
    assert!(flooded > 0, "some SETTINGS frames were sent");
    edge.assert_served("a SETTINGS flood");

    // Paced rapid reset: open and reset streams, 10k at most, for 60 s at most; the
    // proxy's own budget (not h2's burst bound) sends GOAWAY.
    let report = h2_run(&netns, target, |client| rapid_reset(client, 10_000));
    assert_eq!(report["goaway"], json!(true), "{report}");
    assert!(
        report["opened"].as_u64().unwrap_or(u64::MAX) < 10_000,
        "the connection went away before the client was done: {report}"
    );
    edge.wait_limit("premature_resets", 1);
    edge.assert_served("a rapid-reset flood");

    let rss_after = edge.proxy_rss_kib();
    assert!(
        rss_after < rss_before + RSS_GROWTH_BOUND_KIB,
        "the proxy grew from {rss_before} KiB to {rss_after} KiB"
    );
}

#[test]
fn a_listener_over_its_connection_limit_refuses_and_counts() {
    let Some(mut edge) = Edge::start(
        "a_listener_over_its_connection_limit_refuses_and_counts",
        &["--max-connections-per-listener", "4"],
    ) else {
        return;
    };
    let (netns, target) = (edge.client_netns(), edge.target());
    let refused = in_netns(&netns, || {
        let held: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect_timeout(&target, Duration::from_secs(5)).or_panic("held"))
            .collect();
        // The kernel completes the handshake; the proxy closes it at accept.
        let mut extra =
            TcpStream::connect_timeout(&target, Duration::from_secs(5)).or_panic("fifth");
        extra
            .set_read_timeout(Some(READ_TIMEOUT))
            .or_panic("read timeout");
        let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n");
        let mut buf = [0u8; 64];
        let closed = matches!(extra.read(&mut buf), Ok(0) | Err(_));
        drop(held);
        closed
    })
    .or_panic("netns");
    assert!(refused, "the fifth connection is closed at accept");
    edge.node
        .wait_metrics(
            "shunt_listener_connections_refused_total{listener=inbound} >= 1",
            REPORT_TIMEOUT,
            |m| {
                m.sum(
                    "shunt_listener_connections_refused_total",
                    &[("listener", "inbound")],
                ) >= 1.0
            },
        )
        .or_panic("refusal metric");
    // The held connections are gone: a new one is served (their slots free as they close).
    let answer = (0..20)
        .map(|_| {
            let answer = raw(
                &netns,
                target,
                &Payload::Bytes(
                    b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n".to_vec(),
                ),
            );
            if answer.status() != Some(200) {
                std::thread::sleep(Duration::from_millis(250));
            }
            answer
        })
        .find(|answer| answer.status() == Some(200));
    assert!(
        answer.is_some(),
        "a new connection is served once the others closed"
    );
}

// --- HTTP/2 clients -----------------------------------------------------------------------

type H2Client = h2::client::SendRequest<bytes::Bytes>;

/// Runs `client` over an HTTP/2 (prior knowledge) connection from the netns at `netns` on a
/// runtime of its own, bounded in time; its JSON report.
fn h2_run<F, Fut>(netns: &Path, target: SocketAddr, client: F) -> Value
where
    F: FnOnce(H2Client) -> Fut + Send,
    Fut: std::future::Future<Output = Value>,
{
    in_netns(netns, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .or_panic("runtime");
        runtime.block_on(async move {
            let tcp = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(target),
            )
            .await
            .or_panic("connect timeout")
            .or_panic("connect");
            let (send, connection) = h2::client::handshake(tcp).await.or_panic("h2 handshake");
            let driver = tokio::spawn(connection);
            let send = send.ready().await.or_panic("h2 ready");
            let report = tokio::time::timeout(CLIENT_TIMEOUT, client(send))
                .await
                .or_panic("the HTTP/2 client took too long");
            driver.abort();
            report
        })
    })
    .or_panic("netns")
}

/// The status of a GET with `headers`, and one header of `padding` bytes when not 0; a
/// reset stream is 0.
async fn h2_status(client: &mut H2Client, headers: &[(&str, &str)], padding: usize) -> u16 {
    let mut request = http::Request::get("http://web/h2").version(http::Version::HTTP_2);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if padding > 0 {
        request = request.header("x-padding", "p".repeat(padding));
    }
    let request = request.body(()).or_panic("request");
    let Ok(ready) = client.clone().ready().await else {
        return 0;
    };
    *client = ready;
    let Ok((response, _)) = client.send_request(request, true) else {
        return 0;
    };
    match response.await {
        Ok(response) => response.status().as_u16(),
        Err(_) => 0,
    }
}

/// Opens streams and resets each at once, until `count` or the server sends GOAWAY.
async fn rapid_reset(mut client: H2Client, count: u64) -> Value {
    let mut opened = 0;
    let mut goaway = false;
    let mut last_error = String::new();
    while opened < count {
        let ready = match client.clone().ready().await {
            Ok(ready) => ready,
            Err(error) => {
                goaway = error.is_go_away() || error.is_remote();
                last_error = error.to_string();
                break;
            }
        };
        client = ready;
        let request = http::Request::post("http://web/reset")
            .version(http::Version::HTTP_2)
            .body(())
            .or_panic("request");
        match client.send_request(request, false) {
            Ok((response, mut stream)) => {
                // Paced, not a burst (a burst is h2's own to stop, before any stream reaches
                // the proxy's service): the server takes the stream, then it is reset.
                tokio::time::sleep(Duration::from_millis(10)).await;
                stream.send_reset(h2::Reason::CANCEL);
                drop(response);
                opened += 1;
            }
            Err(error) => {
                goaway = error.is_go_away() || error.is_remote();
                last_error = error.to_string();
                break;
            }
        }
    }
    json!({ "opened": opened, "goaway": goaway, "error": last_error })
}

/// Opens `streams` HTTP/2 streams at once over raw frames (each a GET whose body never
/// comes, so none ends); how many RST_STREAM(REFUSED_STREAM) frames came back within 10 s.
fn over_the_stream_limit(target: SocketAddr, streams: u32) -> usize {
    let mut stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).or_panic("connect");
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .or_panic("read timeout");
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    // :method GET, :path /, :scheme http (static table), :authority web (literal).
    let block = [0x82, 0x84, 0x86, 0x01, 0x03, b'w', b'e', b'b'];
    for i in 0..streams {
        let id = (2 * i + 1).to_be_bytes();
        // HEADERS, END_HEADERS only: the stream stays open.
        out.extend_from_slice(&[0, 0, 8, 1, 4, id[0], id[1], id[2], id[3]]);
        out.extend_from_slice(&block);
    }
    stream.write_all(&out).or_panic("writing the streams");
    let mut read = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut refused = 0;
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => read.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        refused = refused_streams(&read);
        if refused > 0 {
            break;
        }
    }
    refused
}

/// RST_STREAM frames with REFUSED_STREAM among the complete frames of `bytes`.
fn refused_streams(mut bytes: &[u8]) -> usize {
    let mut refused = 0;
    while bytes.len() >= 9 {
        let len = usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
        let Some(payload) = bytes.get(9..9 + len) else {
            break;
        };
        if bytes[3] == 3 && payload == [0, 0, 0, 7] {
            refused += 1;
        }
        bytes = &bytes[9 + len..];
    }
    refused
}

/// Sends the HTTP/2 preface and SETTINGS frames without ever reading, for at most 10 s or
/// 100k frames; how many went out.
fn settings_flood(target: SocketAddr) -> u64 {
    let mut stream =
        TcpStream::connect_timeout(&target, Duration::from_secs(5)).or_panic("connect");
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .or_panic("write timeout");
    let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    // An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
    let frame = [0u8, 0, 0, 4, 0, 0, 0, 0, 0];
    let batch: Vec<u8> = frame
        .iter()
        .copied()
        .cycle()
        .take(frame.len() * 1000)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = 0;
    while sent < 100_000 && Instant::now() < deadline {
        if stream.write_all(&batch).is_err() {
            break;
        }
        sent += 1000;
    }
    sent
}
