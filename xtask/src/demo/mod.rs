//! `cargo xtask demo`: shunt on a small node, end to end, leaving nothing behind.
//!
//! The node (a netns with a bridge) has four pods, each in its own netns: `frontend`, two
//! `cart` replicas behind the `cart` Service (ClusterIP 10.96.0.20), all in the injected `shop`
//! namespace, and `batch` in the uncaptured `legacy` namespace. The cart pods also serve HTTP
//! behind `cart-api` (10.96.0.21), routed by a VirtualService: a weighted split, a header
//! route and a fault. The config is `config.yaml` beside this file, embedded in xtask. Then
//! a second act (`cross_node.rs`): two nodes, mTLS between them, both principals.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use shunt_tests::{AgentOptions, Binaries, Node, Pod};

mod cross_node;
mod edge;

use crate::build::{self, bin_dir};
use crate::cmd::{Privilege, elevate, is_root};
use crate::toolchain;

const CONFIG: &str = include_str!("config.yaml");
const CART_SERVICE: &str = "10.96.0.20:80";
const CART_API_SERVICE: &str = "10.96.0.21";
const FRONTEND: &str = "shop/frontend-7d4b9c-x2x8q";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds as the invoking user, then runs the node part as root (sudo only when needed).
pub fn run() -> Result<()> {
    toolchain::setup()?;
    build::build_ebpf()?;
    build::build_user(false)?;
    if is_root() {
        return run_node();
    }
    println!("==> demo: the node part needs root; running it under sudo");
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let mut node_part = Command::new(exe);
    node_part.arg("demo-node");
    let status = elevate(&node_part, Privilege::Root).status()?;
    if !status.success() {
        bail!("demo failed ({status})");
    }
    Ok(())
}

/// The privileged part: build the node, run traffic, report, tear down.
pub fn run_node() -> Result<()> {
    println!("==> demo: creating a node with 6 pods in network namespaces (one outside the mesh)");
    let mut node = Node::with_binaries("xtask-demo", Binaries::in_dir(bin_dir(false)))?;
    let outcome = exercise(&mut node);
    if outcome.is_err() {
        node.print_logs();
    }
    println!("\n==> demo: tearing down");
    let instance = node.instance();
    let leftovers = node.teardown();
    if leftovers.is_empty() {
        println!("    removed every netns, cgroup, pin, link and process of {instance}");
    } else {
        println!("    could not remove: {}", leftovers.join("; "));
    }
    outcome?;
    if !leftovers.is_empty() {
        bail!("the demo left things behind");
    }
    cross_node::run(Binaries::in_dir(bin_dir(false)))
}

fn exercise(node: &mut Node) -> Result<()> {
    let frontend = node.add_pod("frontend", "10.244.0.10".parse()?)?;
    let cart1 = node.add_pod("cart1", "10.244.0.21".parse()?)?;
    let cart2 = node.add_pod("cart2", "10.244.0.22".parse()?)?;
    let batch = node.add_pod("batch", "10.244.0.30".parse()?)?;
    let ingress = node.add_pod("ingress", "10.244.0.5".parse()?)?;
    // Not in the config: the internet, as far as the mesh knows.
    let outside = node.add_pod("outside", "10.244.0.99".parse()?)?;

    let mut config = CONFIG.to_owned();
    for pod in [&frontend, &cart1, &cart2, &batch, &ingress] {
        config = config.replace(
            &format!("@NETNS_{}@", pod.name),
            &pod.netns_path().display().to_string(),
        );
    }
    std::fs::write(node.config_dir().join("mesh.yaml"), config)?;
    println!("    config: {}/mesh.yaml", node.config_dir().display());
    let edge_ca = edge::write_secret(node)?;

    println!("==> demo: starting shunt-agent and shunt-proxy (local mode)");
    node.start_agent(&AgentOptions::default())?;
    node.start_proxy()?;
    wait_shop_captured(node)?;
    shuntctl(node, &["workloads"])?;

    let _cart1_whoami = node.start_server(
        &cart1,
        &["whoami-server", "--port", "8080", "--name", "cart-v1"],
    )?;
    let _cart2_whoami = node.start_server(
        &cart2,
        &["whoami-server", "--port", "8080", "--name", "cart-v2"],
    )?;
    let _cart2_echo = node.start_server(&cart2, &["echo-server", "--port", "9000"])?;

    println!("\n==> demo: traffic");
    // The cart Service's targetPort is the container port named http (8080) on both pods.
    let fetched = node.run_testpod(
        &frontend,
        &["fetch", "--to", CART_SERVICE, "--count", "6"],
        CLIENT_TIMEOUT,
    )?;
    println!("    frontend → cart Service {CART_SERVICE} ×6 (round robin):");
    println!("      {}", replies_by_name(&fetched.json()?));

    let to_cart2 = cart2.addr(9000).to_string();
    let sent = node.run_testpod(
        &frontend,
        &[
            "send", "--to", &to_cart2, "--bytes", "1048576", "--seed", "7",
        ],
        CLIENT_TIMEOUT,
    )?;
    println!(
        "    frontend → cart-v2 pod {to_cart2}, 1 MiB echo: {}",
        one_line(&sent.json()?)
    );

    let from_legacy = node.run_testpod(
        &batch,
        &["send", "--to", &to_cart2, "--bytes", "65536", "--seed", "8"],
        CLIENT_TIMEOUT,
    )?;
    println!(
        "    legacy/batch (not captured) → cart-v2 {to_cart2}, 64 KiB echo, captured inbound only: {}",
        one_line(&from_legacy.json()?)
    );

    let direct = node.run_testpod(
        &frontend,
        &["connect", "--to", "127.0.0.1:15001"],
        CLIENT_TIMEOUT,
    );
    let direct = match direct {
        Ok(out) => one_line(&out.json().unwrap_or(Value::Null)),
        Err(e) => e.to_string(),
    };
    println!("    frontend → 127.0.0.1:15001 directly (must be refused): {direct}");

    l7_act(node, &frontend, &cart1, &cart2)?;
    edge::act(node, &outside, &cart1, &edge_ca)?;

    println!("\n==> demo: what the proxy saw");
    let log = node.wait_access_log(
        "access log lines for the demo traffic",
        Duration::from_secs(10),
        |log| log.entries.len() >= 10,
    )?;
    print_access_log_summary(&log.entries);
    let metrics = node.metrics()?;
    println!("\n    per-pod metrics (istio_tcp_*, by reporter → source → destination):");
    let mut rows: BTreeMap<(String, String, String, String), [f64; 3]> = BTreeMap::new();
    for sample in &metrics.samples {
        let column = match sample.name.as_str() {
            "istio_tcp_connections_opened_total" => 0,
            "istio_tcp_received_bytes_total" => 1,
            "istio_tcp_sent_bytes_total" => 2,
            _ => continue,
        };
        let label = |k: &str| sample.labels.get(k).cloned().unwrap_or_default();
        let key = (
            label("reporter"),
            format!(
                "{}/{}",
                label("source_workload_namespace"),
                label("source_workload")
            ),
            format!(
                "{}/{}",
                label("destination_workload_namespace"),
                label("destination_workload")
            ),
            label("destination_service"),
        );
        rows.entry(key).or_default()[column] += sample.value;
    }
    println!(
        "      {:<12} {:<20} {:<16} {:<32} {:>6} {:>10} {:>10}",
        "REPORTER", "SOURCE", "DESTINATION", "SERVICE", "CONNS", "RECEIVED", "SENT"
    );
    for ((reporter, source, destination, service), [opened, received, sent]) in &rows {
        println!(
            "      {reporter:<12} {source:<20} {destination:<16} {service:<32} {opened:>6} {received:>10} {sent:>10}"
        );
    }

    println!();
    shuntctl(node, &["status"])?;
    Ok(())
}

/// HTTP through the proxy's L7 path: the `cart-api` VirtualService's weighted split, header
/// route and fault, the request metrics, and `shuntctl explain` for one request.
fn l7_act(node: &Node, frontend: &Pod, cart1: &Pod, cart2: &Pod) -> Result<()> {
    println!("\n==> demo: L7 traffic management (VirtualService shop/cart-api)");
    let _cart1_http =
        node.start_httppod_server(cart1, &["serve", "--port", "8081", "--name", "cart-v1"])?;
    let _cart2_http =
        node.start_httppod_server(cart2, &["serve", "--port", "8081", "--name", "cart-v2"])?;
    let url = format!("http://{CART_API_SERVICE}/items");
    for (what, args) in [
        (
            "100 requests, route split (80/20 by weight)",
            vec!["-n", "100"],
        ),
        (
            "10 requests with x-beta: 1, route beta (v2)",
            vec!["-n", "10", "-H", "x-beta: 1"],
        ),
        (
            "5 requests to /teapot, route teapot (fault abort 418)",
            vec!["-n", "5"],
        ),
    ] {
        let target = if what.contains("teapot") {
            format!("http://{CART_API_SERVICE}/teapot")
        } else {
            url.clone()
        };
        let mut all = vec!["http", "--url", target.as_str()];
        all.extend(args);
        let report = node.run_httppod(frontend, &all, CLIENT_TIMEOUT)?.json()?;
        println!(
            "    frontend → cart-api, {what}: status {} served by {}",
            report["status"], report["served_by"]
        );
    }
    shuntctl(
        node,
        &[
            "explain",
            "--from",
            FRONTEND,
            "http://cart-api.shop/items",
            "-H",
            "x-beta: 1",
        ],
    )?;

    let metrics = node.metrics()?;
    println!("\n    istio_requests_total, by reporter, destination version, code and flags:");
    let mut rows: BTreeMap<(String, String, String, String, String), f64> = BTreeMap::new();
    for sample in metrics
        .samples
        .iter()
        .filter(|s| s.name == "istio_requests_total")
    {
        let label = |k: &str| sample.labels.get(k).cloned().unwrap_or_default();
        let key = (
            label("reporter"),
            label("destination_workload"),
            label("destination_version"),
            label("response_code"),
            label("response_flags"),
        );
        *rows.entry(key).or_default() += sample.value;
    }
    println!(
        "      {:<12} {:<16} {:<8} {:<5} {:<6} {:>8}",
        "REPORTER", "DESTINATION", "VERSION", "CODE", "FLAGS", "REQUESTS"
    );
    for ((reporter, workload, version, code, flags), requests) in &rows {
        println!(
            "      {reporter:<12} {workload:<16} {version:<8} {code:<5} {flags:<6} {requests:>8}"
        );
    }
    Ok(())
}

/// Waits until the three `shop` pods are captured and the proxy serves them.
fn wait_shop_captured(node: &Node) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workloads = node.admin().workloads();
        if let Ok(workloads) = &workloads {
            let ready = workloads
                .iter()
                .filter(|w| w.namespace == "shop" && w.captured && w.is_ready())
                .count();
            if ready == 3 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the shop pods were not captured within 30 s; last seen: {workloads:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn shuntctl(node: &Node, args: &[&str]) -> Result<()> {
    let admin_socket = node.run_dir().join("admin.sock");
    println!("\n$ shuntctl {}", args.join(" "));
    let out = Command::new(node.binaries().shuntctl()?)
        .arg("--admin-socket")
        .arg(&admin_socket)
        .args(args)
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "shuntctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `fetch` output → "cart-v1 ×3, cart-v2 ×3".
fn replies_by_name(fetched: &Value) -> String {
    let mut names: BTreeMap<String, usize> = BTreeMap::new();
    if let Some(replies) = fetched.get("replies").and_then(Value::as_array) {
        for reply in replies {
            let text = reply
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| reply.to_string());
            let name = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or(text);
            *names.entry(name).or_default() += 1;
        }
    }
    if names.is_empty() {
        return one_line(fetched);
    }
    names
        .iter()
        .map(|(name, n)| format!("{name} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn one_line(value: &Value) -> String {
    value.to_string()
}

fn print_access_log_summary(entries: &[Value]) {
    // Per-request lines (the L7 act) carry a method; this table is about connections.
    let entries: Vec<&Value> = entries
        .iter()
        .filter(|e| e.get("method").is_none())
        .collect();
    let text = |e: &Value, k: &str| e.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    let num = |e: &Value, k: &str| e.get(k).and_then(Value::as_u64).unwrap_or(0);
    println!("    access log ({} connections):", entries.len());
    println!(
        "      {:<9} {:<27} {:<21} {:<21} {:>9} {:>9} {:<6}",
        "DIRECTION", "POD", "SOURCE", "DESTINATION", "RECEIVED", "SENT", "CLOSE"
    );
    for e in entries {
        println!(
            "      {:<9} {:<27} {:<21} {:<21} {:>9} {:>9} {:<6}",
            text(e, "direction"),
            text(e, "pod"),
            text(e, "src_addr"),
            text(e, "upstream_addr"),
            num(e, "bytes_received"),
            num(e, "bytes_sent"),
            text(e, "close_reason"),
        );
    }
}
