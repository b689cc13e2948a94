//! What the harness self-test and the end-to-end tests share: running clients in pods.

use std::fmt::Display;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use shunt_tests::{Binaries, Node, Pod};

pub const MIB: u64 = 1 << 20;
/// Upper bound for one client run (a 1 MiB echo takes well under a second).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Failing with the error's message (its `Display`, which carries process log tails), not
/// its `Debug`.
pub trait OrPanic<T> {
    fn or_panic(self, what: &str) -> T;
}

impl<T, E: Display> OrPanic<T> for Result<T, E> {
    fn or_panic(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// The binaries under test; `shunt-testpod` is the one cargo just built for this test run.
pub fn binaries() -> Binaries {
    Binaries::from_env().with_testpod(env!("CARGO_BIN_EXE_shunt-testpod"))
}

/// `10.244.0.<last>`.
pub fn pod_ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, last)
}

/// Runs a `shunt-testpod` client in `pod` and returns its JSON report (not checked).
pub fn client(node: &Node, pod: &Pod, args: &[&str]) -> Value {
    let output = node
        .run_testpod(pod, args, CLIENT_TIMEOUT)
        .or_panic(&format!("running {args:?} in {}", pod.name));
    output
        .json()
        .or_panic(&format!("report of {args:?} (stderr: {})", output.stderr))
}

/// `send` of `bytes` seeded bytes to `to`, asserting the echo came back intact.
pub fn send_ok(node: &Node, pod: &Pod, to: SocketAddr, bytes: u64, seed: u64) -> Value {
    send_ok_with(node, pod, to, bytes, seed, &[])
}

/// [`send_ok`] with extra `shunt-testpod send` flags.
pub fn send_ok_with(
    node: &Node,
    pod: &Pod,
    to: SocketAddr,
    bytes: u64,
    seed: u64,
    extra: &[&str],
) -> Value {
    let to = to.to_string();
    let (bytes_arg, seed_arg) = (bytes.to_string(), seed.to_string());
    let mut args = vec![
        "send", "--to", &to, "--bytes", &bytes_arg, "--seed", &seed_arg,
    ];
    args.extend_from_slice(extra);
    let report = client(node, pod, &args);
    assert_eq!(report["ok"], true, "{} → {to}: {report}", pod.name);
    assert_eq!(report["received"], bytes, "{report}");
    assert_eq!(report["received_hash"], report["sent_hash"], "{report}");
    report
}
