//! `shunt-httppod` on loopback: the server and every client against each other, so the L7
//! end-to-end tests can trust what the pods report.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_shunt-httppod");

/// A running `serve`, killed on drop.
struct Server {
    child: Child,
    port: u16,
    grpc_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value, or a panic naming what failed (helpers are not `#[test]`s, where unwrap is fine).
fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn free_port() -> u16 {
    let listener = must(
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)),
        "binding a port",
    );
    must(listener.local_addr(), "its address").port()
}

fn serve(extra: &[&str]) -> Server {
    let (port, grpc_port) = (free_port(), free_port());
    let mut child = Command::new(BIN);
    child
        .args(["serve", "--port", &port.to_string(), "--grpc-port"])
        .arg(grpc_port.to_string())
        .args(["--name", "pod-a", "--ws"])
        .args(extra)
        .stdout(Stdio::piped());
    let mut child = must(child.spawn(), "spawning serve");
    let Some(stdout) = child.stdout.take() else {
        panic!("serve has no stdout pipe");
    };
    let mut line = String::new();
    must(BufReader::new(stdout).read_line(&mut line), "reading ready");
    assert_eq!(line.trim(), "ready");
    Server {
        child,
        port,
        grpc_port,
    }
}

/// Runs a client subcommand to completion and parses its JSON line.
fn client(args: &[&str]) -> Value {
    let mut child = must(
        Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn(),
        "spawning the client",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while must(child.try_wait(), "waiting for the client").is_none() {
        assert!(std::time::Instant::now() < deadline, "{args:?} hung");
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = must(child.wait_with_output(), "the client's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{args:?}: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {stdout}"))
}

fn url(server: &Server, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", server.port)
}

fn count(server: &Server, extra: &[&str]) -> Value {
    let addr = format!("127.0.0.1:{}", server.port);
    let mut args = vec!["count", "--addr", &addr];
    args.extend_from_slice(extra);
    client(&args)
}

#[test]
fn http1_keep_alive_fail_pattern_and_count() {
    let server = serve(&[]);
    let report = client(&[
        "http",
        "--url",
        &url(&server, "/a/b?x=1"),
        "-n",
        "6",
        "-H",
        "x-fail-pattern: 2/3",
        "-H",
        "x-request-id: abc",
    ]);
    assert_eq!(report["status"], json!({"200": 2, "503": 4}), "{report}");
    assert_eq!(report["served_by"], json!({"pod-a": 6}), "{report}");
    assert_eq!(report["body_names"], json!({"pod-a": 6}), "{report}");
    assert_eq!(report["paths"], json!({"/a/b?x=1": 6}), "{report}");
    assert_eq!(
        report["connections"], 1,
        "one keep-alive connection: {report}"
    );
    assert_eq!(report["failures"], 0, "{report}");
    let first = &report["first_response"];
    assert_eq!(first["status"], 503, "the pattern fails first: {report}");
    assert_eq!(first["headers"]["x-served-by"], "pod-a");
    assert_eq!(first["body"]["headers"]["x-request-id"], "abc");

    let seen = count(&server, &["--prefix", "/a/", "--reset"]);
    assert_eq!(seen["total"], 6, "{seen}");
    assert_eq!(seen["matching"], 6, "{seen}");
    assert_eq!(seen["requests"][0]["headers"]["x-request-id"], "abc");
    assert_eq!(seen["requests"][0]["version"], "HTTP/1.1");
    assert_eq!(count(&server, &[])["total"], 0, "reset forgets");
}

#[test]
fn http2_prior_knowledge_shares_one_connection() {
    let server = serve(&[]);
    let report = client(&[
        "http",
        "--url",
        &url(&server, "/h2"),
        "--http2",
        "-n",
        "9",
        "-c",
        "3",
        "-X",
        "POST",
        "--body-bytes",
        "1000",
    ]);
    assert_eq!(report["status"], json!({"200": 9}), "{report}");
    assert_eq!(report["connections"], 1, "{report}");
    assert_eq!(report["first_response"]["body"]["body_bytes"], 1000);
    assert_eq!(report["first_response"]["body"]["method"], "POST");
    let seen = count(&server, &[]);
    assert_eq!(seen["requests"][0]["version"], "HTTP/2.0", "{seen}");
}

#[test]
fn status_delay_and_rate_come_from_the_request_and_flags() {
    let server = serve(&["--delay-ms", "0"]);
    let report = client(&[
        "http",
        "--url",
        &url(&server, "/slow"),
        "-n",
        "2",
        "-H",
        "x-status: 418",
        "-H",
        "x-delay-ms: 300",
    ]);
    assert_eq!(report["status"], json!({"418": 2}), "{report}");
    assert!(
        report["latency_ms"]["min"].as_f64().unwrap() >= 300.0,
        "{report}"
    );
    assert!(report["by_status"]["418"]["headers"]["x-served-by"] == "pod-a");

    let paced = client(&[
        "http",
        "--url",
        &url(&server, "/paced"),
        "--rps",
        "40",
        "--duration",
        "1",
    ]);
    assert_eq!(paced["requests"], 40, "{paced}");
    assert_eq!(paced["status"], json!({"200": 40}), "{paced}");
    let elapsed = paced["elapsed_ms"].as_u64().unwrap();
    assert!((900..3000).contains(&elapsed), "{paced}");
    let buckets = paced["timeline"].as_array().unwrap();
    assert!(buckets.len() >= 2, "{paced}");

    let slow_server = serve(&["--status", "500", "--delay-ms", "200"]);
    let report = client(&["http", "--url", &url(&slow_server, "/"), "-n", "1"]);
    assert_eq!(report["status"], json!({"500": 1}), "{report}");
    assert!(
        report["latency_ms"]["min"].as_f64().unwrap() >= 200.0,
        "{report}"
    );
}

#[test]
fn timeouts_and_refused_connections_are_failures() {
    let server = serve(&[]);
    let report = client(&[
        "http",
        "--url",
        &url(&server, "/"),
        "-H",
        "x-delay-ms: 2000",
        "--timeout-ms",
        "300",
    ]);
    assert_eq!(report["failures"], 1, "{report}");
    assert_eq!(report["status"], json!({}), "{report}");
    let closed = format!("http://127.0.0.1:{}/", free_port());
    let report = client(&["http", "--url", &closed, "-n", "3"]);
    assert_eq!(report["failures"], 3, "{report}");
    assert_eq!(report["errors"].as_array().unwrap().len(), 3, "{report}");
}

#[test]
fn connect_overrides_the_url_host_which_stays_the_authority() {
    let server = serve(&[]);
    let connect = format!("127.0.0.1:{}", server.port);
    for extra in [&[][..], &["--http2"][..]] {
        let mut args = vec![
            "http",
            "--url",
            "http://cart.shop:80/x",
            "--connect",
            &connect,
        ];
        args.extend_from_slice(extra);
        let report = client(&args);
        assert_eq!(report["status"], json!({"200": 1}), "{report}");
        assert_eq!(
            report["first_response"]["body"]["authority"], "cart.shop:80",
            "{report}"
        );
    }
}

#[test]
fn cookie_jar_sends_set_cookie_back() {
    let server = serve(&[]);
    let report = client(&[
        "http",
        "--url",
        &url(&server, "/c"),
        "-n",
        "3",
        "--cookie-jar",
        "-H",
        "x-set-cookie: session=s1; Path=/; Max-Age=60",
    ]);
    assert_eq!(
        report["set_cookies"].as_array().map(Vec::len),
        Some(3),
        "{report}"
    );
    let seen = count(&server, &[]);
    let cookies: Vec<&Value> = seen["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["headers"]["cookie"])
        .collect();
    assert_eq!(
        cookies,
        [&Value::Null, &json!("session=s1"), &json!("session=s1")],
        "{seen}"
    );
}

#[test]
fn grpc_health_check_counts_codes_and_calls() {
    let server = serve(&[]);
    let addr = format!("127.0.0.1:{}", server.grpc_port);
    let report = client(&["grpc", "--addr", &addr, "-n", "3"]);
    assert_eq!(report["codes"], json!({"Ok": 3}), "{report}");
    assert_eq!(report["serving"], json!({"SERVING": 3}), "{report}");
    let unknown = client(&["grpc", "--addr", &addr, "-n", "1", "--service", "nope"]);
    assert_eq!(unknown["codes"], json!({"NotFound": 1}), "{unknown}");
    assert_eq!(count(&server, &[])["grpc_calls"], 4);
    let refused = format!("127.0.0.1:{}", free_port());
    let report = client(&["grpc", "--addr", &refused, "-n", "2"]);
    assert_eq!(report["codes"], json!({"Unavailable": 2}), "{report}");
}

#[test]
fn websocket_echo() {
    let server = serve(&[]);
    let ws = format!("ws://127.0.0.1:{}/ws", server.port);
    let report = client(&["ws", "--url", &ws, "-n", "5"]);
    assert_eq!(report["status"], 101, "{report}");
    assert_eq!(report["echoed"], 5, "{report}");
    assert_eq!(report["served_by"], "pod-a", "{report}");
    assert_eq!(report["mismatches"], json!([]), "{report}");
}
