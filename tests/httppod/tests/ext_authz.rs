//! `shunt-httppod ext-authz` as a process: the subcommand, its flags and its `ready` line, as
//! the CUSTOM end-to-end tests start it in a pod.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shunt-httppod");

/// A running `ext-authz`, killed on drop.
struct Authorizer {
    child: Child,
    port: u16,
}

impl Drop for Authorizer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value, or a panic naming what failed (helpers are not `#[test]`s, where unwrap is fine).
fn must<T, E: std::fmt::Display>(result: Result<T, E>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn start(extra: &[&str]) -> Authorizer {
    let port = {
        let listener = must(
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)),
            "binding a port",
        );
        must(listener.local_addr(), "its address").port()
    };
    let mut child = must(
        Command::new(BIN)
            .args(["ext-authz", "--port", &port.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn(),
        "spawning ext-authz",
    );
    let Some(stdout) = child.stdout.take() else {
        panic!("ext-authz has no stdout pipe");
    };
    let mut line = String::new();
    must(BufReader::new(stdout).read_line(&mut line), "reading ready");
    assert_eq!(line.trim(), "ready");
    Authorizer { child, port }
}

/// One HTTP/1.1 check with `Connection: close`; the status line and the whole answer.
fn ask(port: u16, extra_header: &str) -> (String, String) {
    let mut stream = must(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
        "connecting",
    );
    must(
        stream.set_read_timeout(Some(Duration::from_secs(10))),
        "a read timeout",
    );
    must(
        write!(
            stream,
            "GET /check/admin HTTP/1.1\r\nhost: httpbin.foo:8000\r\ncontent-length: 0\r\n\
             connection: close\r\n{extra_header}\r\n"
        ),
        "sending the check",
    );
    let mut answer = String::new();
    must(stream.read_to_string(&mut answer), "reading the answer");
    let status = answer.lines().next().unwrap_or_default().to_owned();
    (status, answer.to_ascii_lowercase())
}

#[test]
fn allows_denies_and_waits_as_told() {
    let authorizer = start(&["--deny-status", "401"]);
    let (status, answer) = ask(authorizer.port, "x-ext-authz: allow\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "{answer}");
    assert!(
        answer.contains("x-ext-authz-check-result: allowed"),
        "{answer}"
    );

    let (status, answer) = ask(authorizer.port, "");
    assert_eq!(status, "HTTP/1.1 401 Unauthorized", "{answer}");
    assert!(
        answer.contains("x-ext-authz-check-result: denied"),
        "{answer}"
    );
    assert!(
        answer.ends_with(
            "denied by ext_authz for not found header `x-ext-authz: allow` in the request"
        ),
        "{answer}"
    );

    let started = Instant::now();
    let (status, _) = ask(
        authorizer.port,
        "x-ext-authz: allow\r\nx-ext-authz-delay-ms: 300\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(started.elapsed() >= Duration::from_millis(300));
}
