//! The demo's edge act: an outside netns, acting as a browser, reaches the ingress gateway
//! pod over HTTP and HTTPS (a certificate from Secret `istio-system/shop-cert`, made here),
//! and the gateway routes to the shop's `cart-api` v1 pods.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use shunt_tests::certs::{TestCa, Usage};
use shunt_tests::{Node, Pod};

const HOST: &str = "shop.example.test";
const GATEWAY_IP: &str = "10.244.0.5";

/// The Secret the Gateway's HTTPS server names, written next to the demo's config.
pub fn write_secret(node: &Node) -> Result<TestCa> {
    let dir = node.dir().join("edge-ca");
    let mut ca = TestCa::new(&dir, "demo edge CA")?;
    let issued = ca.issue("shop", &[HOST], Usage::Server)?;
    let (cert, key) = issued.pem()?;
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    let secret = format!(
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata:\n  name: shop-cert\n  \
         namespace: istio-system\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(&cert),
        indent(&key)
    );
    std::fs::write(node.config_dir().join("edge-secret.yaml"), secret)?;
    Ok(ca)
}

/// curl from the outside pod, over HTTP and HTTPS; prints what answered.
pub fn act(node: &Node, outside: &Pod, cart1: &Pod, ca: &TestCa) -> Result<()> {
    println!(
        "\n==> demo: the edge (Gateway istio-system/shop on the ingress gateway pod {GATEWAY_IP})"
    );
    // cart-api's v1 pod, as in the L7 act.
    let _cart1_http =
        node.start_httppod_server(cart1, &["serve", "--port", "8081", "--name", "cart-v1"])?;
    let cacert = ca.cert().display().to_string();
    for (scheme, port) in [("http", 80), ("https", 443)] {
        let url = format!("{scheme}://{HOST}/items");
        let mut last = String::new();
        let mut answered = false;
        // The gateway's ports open once the proxy has the state; give it a moment.
        for _ in 0..40 {
            let mut curl = Command::new("curl");
            curl.args(["-sS", "--max-time", "5", "--cacert", &cacert, "--resolve"])
                .arg(format!("{HOST}:{port}:{GATEWAY_IP}"))
                .args(["-w", "\n%{http_code} %{http_version}", &url]);
            let out = node
                .spawn_in_pod(outside, "curl", curl)?
                .finish(Duration::from_secs(15))?;
            last = format!("{}{}", out.stdout, out.stderr);
            if out.status.success() {
                let status = out.stdout.lines().last().unwrap_or_default().to_owned();
                let body: serde_json::Value = out
                    .stdout
                    .lines()
                    .next()
                    .and_then(|l| serde_json::from_str(l).ok())
                    .unwrap_or_default();
                println!(
                    "    outside → {url} (curl, resolved to the gateway pod): {status}, served by {}",
                    body["name"].as_str().unwrap_or("?")
                );
                answered = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if !answered {
            bail!("the gateway never answered {url}: {last}");
        }
    }
    node.admin()
        .workloads()
        .context("listing workloads")?
        .iter()
        .filter(|w| w.namespace == "istio-system")
        .for_each(|w| println!("    gateway pod {}/{}: {}", w.namespace, w.name, w.reason));
    Ok(())
}
