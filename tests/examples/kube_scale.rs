//! The Kubernetes source at scale, for `cargo xtask bench --kube-scale`: the FAKE API server
//! of the kube tests (a test double on loopback, not a kube-apiserver) serves a cluster of
//! 10k Services, 50k endpoints (10k EndpointSlices of 5) and 20k pods, 200 of them on this
//! node, times `--scale`. A real `shunt-agent --source kube` and a real `shunt-proxy` run
//! against it, each in a cgroup of its own; this prints one JSON line:
//!
//! - `first_state_seconds`: from the agent's start until the proxy logs a mesh state with
//!   every Service and pod (the first complete state that reaches it);
//! - `agent_rss_mib` (after the state settled) and `agent_peak_rss_mib` (VmHWM).
//!
//! Root only (the agent attaches its programs to the cgroup made for it). Bounded: it gives
//! up after `--timeout` seconds.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a bench driver: a failure ends the run with its message"
)]

#[expect(
    dead_code,
    reason = "the test double serves more than this driver asks of it"
)]
#[path = "../tests/kube/fake_apiserver.rs"]
mod fake_apiserver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};
use shunt_tests::cgroup::Cgroup;
use shunt_tests::process::Placement;
use shunt_tests::{Binaries, Process};

const NODE: &str = "node-a";
const NAMESPACES: usize = 100;
const SERVICES: usize = 10_000;
const ENDPOINTS_PER_SLICE: usize = 5;
const PODS: usize = 20_000;
const NODE_PODS: usize = 200;
/// How long the settled agent is left alone before its RSS is read.
const SETTLE: Duration = Duration::from_secs(5);

struct Args {
    bin_dir: PathBuf,
    scale: f64,
    timeout: Duration,
}

fn args() -> Args {
    let mut args = Args {
        bin_dir: PathBuf::from("target/release"),
        scale: 1.0,
        timeout: Duration::from_secs(120),
    };
    let mut given = std::env::args().skip(1);
    while let Some(flag) = given.next() {
        let value = given
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--bin-dir" => args.bin_dir = value.into(),
            "--scale" => args.scale = value.parse().expect("--scale: a number, e.g. 0.01"),
            "--timeout" => {
                args.timeout = Duration::from_secs(value.parse().expect("--timeout: seconds"));
            }
            other => panic!("unknown flag {other} (--bin-dir, --scale, --timeout)"),
        }
    }
    args
}

fn scaled(count: usize, scale: f64) -> usize {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss,
        reason = "counts far below 2^52, scale positive"
    )]
    let n = (count as f64 * scale).round() as usize;
    n.max(1)
}

/// The cluster, as counts.
#[derive(Clone, Copy)]
struct Size {
    services: usize,
    pods: usize,
    node_pods: usize,
}

fn ip(prefix: u8, n: usize) -> String {
    format!(
        "{prefix}.{}.{}.{}",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

fn namespace(n: usize) -> String {
    format!("ns-{}", n % NAMESPACES)
}

fn pod(n: usize, size: Size) -> Value {
    let node = if n < size.node_pods { NODE } else { "node-b" };
    let app = format!("app-{}", n % size.services);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{n}"), "namespace": namespace(n % size.services),
                     "uid": format!("uid-pod-{n}"),
                     "labels": {"app": app, "version": "v1"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": format!("{app}-5d9c7"), "uid": "rs",
                                          "controller": true}],
                     "managedFields": [{"manager": "kube-controller-manager",
                                        "operation": "Update"}]},
        "spec": {"nodeName": node, "serviceAccountName": app,
                 "containers": [{"name": "app", "image": "example/app:1",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip(10, n + 1), "hostIP": "192.0.2.1",
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn service(n: usize) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{n}"), "namespace": namespace(n),
                     "uid": format!("uid-svc-{n}")},
        "spec": {"clusterIP": ip(11, n + 1), "selector": {"app": format!("app-{n}")},
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    })
}

/// Service `n`'s slice: 5 endpoints, the pods `n`, `n + services`, … (wrapping).
fn endpoint_slice(n: usize, size: Size) -> Value {
    let endpoints: Vec<Value> = (0..ENDPOINTS_PER_SLICE)
        .map(|k| {
            let pod = (n + k * size.services) % size.pods;
            json!({"addresses": [ip(10, pod + 1)], "conditions": {"ready": true},
                   "targetRef": {"kind": "Pod", "namespace": namespace(pod % size.services),
                                 "name": format!("pod-{pod}")}})
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{n}-abcde"), "namespace": namespace(n),
                     "labels": {"kubernetes.io/service-name": format!("svc-{n}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn fill(server: &FakeApiServer, size: Size) {
    for n in 0..NAMESPACES {
        server.apply(
            "/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": namespace(n), "labels": {"istio-injection": "enabled"}}}),
        );
    }
    for n in 0..size.services {
        server.apply("/v1/services", service(n));
        server.apply(
            "discovery.k8s.io/v1/endpointslices",
            endpoint_slice(n, size),
        );
    }
    for n in 0..size.pods {
        server.apply("/v1/pods", pod(n, size));
    }
}

/// Reads `VmRSS` or `VmHWM` of `pid`, in MiB.
fn rss_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib / 1024.0
}

/// A number anywhere in a JSON log line under `key`.
fn field(line: &Value, key: &str) -> Option<u64> {
    match line {
        Value::Object(map) => map
            .get(key)
            .and_then(Value::as_u64)
            .or_else(|| map.values().find_map(|v| field(v, key))),
        _ => None,
    }
}

/// Whether the proxy logged a mesh state holding every Service and pod.
fn complete_state_logged(proxy: &Process, size: Size) -> bool {
    let text = proxy.stdout() + &proxy.stderr();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .any(|line| {
            field(&line, "services").is_some_and(|s| s >= size.services as u64)
                && field(&line, "workloads").is_some_and(|w| w >= size.pods as u64)
        })
}

fn uninstall(binaries: &Binaries, instance: &str, run_dir: &Path, logs: &Path) {
    let mut command = Command::new(binaries.agent().unwrap());
    command
        .args(["--uninstall", "--instance", instance])
        .arg("--run-dir")
        .arg(run_dir);
    let done = Process::spawn("uninstall", command, &Placement::default(), logs)
        .and_then(|p| p.finish(Duration::from_secs(30)));
    if let Err(e) = done {
        eprintln!("kube-scale: shunt-agent --uninstall --instance {instance} failed: {e}");
    }
}

#[tokio::main]
async fn main() {
    let args = args();
    assert!(
        shunt_tests::is_root(),
        "kube-scale attaches capture to a cgroup: run it as root"
    );
    let size = Size {
        services: scaled(SERVICES, args.scale),
        pods: scaled(PODS, args.scale),
        node_pods: scaled(NODE_PODS, args.scale),
    };
    let binaries = Binaries::in_dir(&args.bin_dir);
    let dir = tempfile::tempdir().unwrap();
    let (run_dir, logs) = (dir.path().join("run"), dir.path().join("logs"));
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::create_dir_all(&logs).unwrap();

    let server = FakeApiServer::start().await;
    fill(&server, size);
    let kubeconfig = server.kubeconfig(dir.path());

    let id = std::process::id();
    let instance = format!("kscale{id}");
    let node_cgroup = Cgroup::create(&format!("shunt-kscale-{id}-node")).unwrap();
    let agent_cgroup = Cgroup::create(&format!("shunt-kscale-{id}-agent")).unwrap();

    let mut agent = Command::new(binaries.agent().unwrap());
    agent
        .args([
            "--source",
            "kube",
            "--node-name",
            NODE,
            "--instance",
            &instance,
        ])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--run-dir")
        .arg(&run_dir)
        .arg("--cgroup")
        .arg(node_cgroup.path())
        .env("RUST_LOG", "warn");
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    drop(metrics);
    let mut proxy = Command::new(binaries.proxy().unwrap());
    proxy
        .arg("--control-socket")
        .arg(run_dir.join("control.sock"))
        .args([
            "--metrics-addr",
            &metrics_addr.to_string(),
            "--log-format",
            "json",
        ]);

    let started = Instant::now();
    let placed = |cgroup: &Cgroup| Placement {
        netns: None,
        cgroup: Some(cgroup.path().to_path_buf()),
    };
    let mut agent = Process::spawn("agent", agent, &placed(&agent_cgroup), &logs).unwrap();
    let mut proxy = Process::spawn("proxy", proxy, &placed(&node_cgroup), &logs).unwrap();

    let mut outcome = Err(format!(
        "no complete state reached the proxy within {:?}",
        args.timeout
    ));
    while started.elapsed() < args.timeout {
        if complete_state_logged(&proxy, size) {
            outcome = Ok(started.elapsed());
            break;
        }
        if let Ok(Some(status)) = agent.exit_status() {
            outcome = Err(format!("the agent exited ({status}): {}", agent.tail()));
            break;
        }
        if let Ok(Some(status)) = proxy.exit_status() {
            outcome = Err(format!("the proxy exited ({status}): {}", proxy.tail()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = outcome.map(|first_state| {
        std::thread::sleep(SETTLE);
        json!({
            "services": size.services,
            "endpoints": size.services * ENDPOINTS_PER_SLICE,
            "pods": size.pods,
            "node_pods": size.node_pods,
            "first_state_seconds": first_state.as_secs_f64(),
            "agent_rss_mib": rss_mib(agent.pid(), "VmRSS"),
            "agent_peak_rss_mib": rss_mib(agent.pid(), "VmHWM"),
        })
    });
    proxy.stop(Duration::from_secs(10));
    agent.stop(Duration::from_secs(10));
    uninstall(&binaries, &instance, &run_dir, &logs);
    for cgroup in [&node_cgroup, &agent_cgroup] {
        if let Err(e) = cgroup.kill_all().and_then(|()| cgroup.remove()) {
            eprintln!("kube-scale: {e}");
        }
    }
    match report {
        Ok(report) => println!("{report}"),
        Err(why) => {
            eprintln!(
                "kube-scale: {why}\n--- agent ---\n{}\n--- proxy ---\n{}",
                agent.tail(),
                proxy.tail()
            );
            std::process::exit(1);
        }
    }
}
