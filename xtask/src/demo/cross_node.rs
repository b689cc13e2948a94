//! The demo's cross-node act: two nodes joined by an underlay, node 0's agent also the CA,
//! a pod on each, and one connection between them over HBONE (mTLS), with both principals
//! in both node proxies' metrics and nothing readable on the wire.

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use shunt_tests::{AgentOptions, Binaries, Cluster, ClusterConfig, Metrics, NamespaceConfig};

const MESH: &str = "shop";
const PORT: u16 = 8080;
const MARKER: &str = "shunt-demo-secret-order-4711";

/// Builds the cluster, runs the act, tears everything down.
pub fn run(binaries: Binaries) -> Result<()> {
    println!("\n==> demo: two nodes, mTLS between them (HBONE, as ztunnel speaks it)");
    let mut cluster = Cluster::with_binaries("xtask-demo-x", 2, binaries)?;
    let outcome = act(&mut cluster);
    if outcome.is_err() {
        cluster.print_logs();
    }
    let leftovers = cluster.teardown();
    outcome?;
    if !leftovers.is_empty() {
        bail!(
            "the cross-node act left things behind: {}",
            leftovers.join("; ")
        );
    }
    println!("    removed both nodes, the underlay and the CA");
    Ok(())
}

fn act(cluster: &mut Cluster) -> Result<()> {
    let checkout = cluster.add_pod(0, "checkout", 10)?;
    let payments = cluster.add_pod(1, "payments", 20)?;
    let mut config = ClusterConfig::new().namespace(&NamespaceConfig::injected(MESH));
    for pod in [&checkout, &payments] {
        let mut pod_config = cluster.pod_config(pod, MESH)?;
        pod_config.service_account = pod.name.clone();
        config = config.pod(&pod_config.label("app", &pod.name).port("tcp", PORT));
    }
    cluster.write_config(&config)?;
    let ca = cluster.start_with_mtls(&AgentOptions::default())?;
    cluster.wait_captured(&[&checkout, &payments])?;
    println!(
        "    node-0: checkout {} | node-1: payments {}",
        checkout.ip, payments.ip
    );
    println!("    CA (istiod's protocol) on {ca}, run by node-0's agent");
    let _echo = cluster
        .node_of(&payments)?
        .start_server(&payments, &["echo-server", "--port", &PORT.to_string()])?;
    let mut capture = cluster.start_capture("demo")?;
    let to = payments.addr(PORT).to_string();
    let sent = cluster.node_of(&checkout)?.run_testpod(
        &checkout,
        &[
            "send", "--to", &to, "--bytes", "65536", "--seed", "1", "--marker", MARKER,
        ],
        std::time::Duration::from_secs(60),
    )?;
    let report = sent.json()?;
    if report["ok"] != true {
        bail!("checkout → payments failed: {report}");
    }
    println!("    checkout → payments:{PORT}: 64 KiB echoed back intact");
    let plaintext = capture.contains(MARKER.as_bytes())?;
    println!(
        "    the payload's marker seen on the underlay in plaintext: {}",
        if plaintext {
            "YES (not encrypted!)"
        } else {
            "no (tcpdump saw only TLS)"
        }
    );
    if plaintext {
        bail!("the cross-node connection was not encrypted");
    }
    for (index, reporter) in [(0, "source"), (1, "destination")] {
        let node = cluster.node(index)?;
        let metrics = Metrics::scrape(node.metrics_addr())?;
        let sample = metrics
            .samples
            .iter()
            .find(|s| {
                s.name == "istio_tcp_connections_closed_total"
                    && s.labels.get("reporter").map(String::as_str) == Some(reporter)
                    && s.labels.get("destination_workload").map(String::as_str) == Some("payments")
            })
            .with_context(|| format!("node-{index} reported no {reporter} side"))?;
        let label = |key: &str| sample.labels.get(key).map_or("-", String::as_str);
        println!(
            "    node-{index} proxy, reporter={reporter}: source_principal={} \
             destination_principal={} connection_security_policy={}",
            label("source_principal"),
            label("destination_principal"),
            label("connection_security_policy"),
        );
    }
    let node = cluster.node(1)?;
    println!("\n$ shuntctl certs   # on node-1");
    let out = Command::new(node.binaries().shuntctl()?)
        .arg("certs")
        .arg("--proxy-addr")
        .arg(node.metrics_addr().to_string())
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!(
            "shuntctl certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
