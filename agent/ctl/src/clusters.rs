//! `shuntctl clusters`: the proxy's upstream clusters per pod, read live from the proxy's
//! metrics endpoint rather than from the agent.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context as _;
use shunt_api::clusters::{ClusterDump, ClustersDump};

use crate::output::{self, Output};
use crate::proxy_client;
use crate::table::{Table, count};

const PATH: &str = "/debug/clusters";

/// `pod` (`namespace/name`) keeps only that pod.
pub async fn run(addr: SocketAddr, pod: Option<&str>, output: Output) -> anyhow::Result<String> {
    let body = proxy_client::get_json(addr, PATH).await?;
    let pods = serde_json::Value::Object(select_pod(body, pod, addr)?);
    match output {
        Output::Json => Ok(output::json(&pods)),
        Output::Table => {
            let pods: BTreeMap<String, ClustersDump> =
                serde_json::from_value(pods).with_context(|| {
                    format!(
                        "unexpected answer from the proxy's {PATH} (a shunt-proxy of another \
                         version?)"
                    )
                })?;
            Ok(clusters(&pods))
        }
    }
}

/// The pods of the answer, or only `pod` (an error naming the pods served if it is not).
fn select_pod(
    body: serde_json::Value,
    pod: Option<&str>,
    addr: SocketAddr,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let serde_json::Value::Object(mut pods) = body else {
        anyhow::bail!("unexpected answer from the proxy's {PATH}: {body}");
    };
    let Some(pod) = pod else {
        return Ok(pods);
    };
    match pods.remove(pod) {
        Some(clusters) => Ok(serde_json::Map::from_iter([(pod.to_owned(), clusters)])),
        None => {
            let served: Vec<&str> = pods.keys().map(String::as_str).collect();
            anyhow::bail!(
                "the proxy at {addr} does not serve pod {pod} (serves: {})",
                if served.is_empty() {
                    "none".to_owned()
                } else {
                    served.join(", ")
                }
            )
        }
    }
}

fn clusters(pods: &BTreeMap<String, ClustersDump>) -> String {
    if pods.is_empty() {
        return "the proxy serves no pod\n".to_owned();
    }
    let mut out = String::new();
    for (pod, dump) in pods {
        if dump.clusters.is_empty() {
            out.push_str(&format!("{pod}: no upstream cluster in use\n"));
            continue;
        }
        out.push_str(&format!(
            "{pod}: {}\n",
            count(dump.clusters.len(), "upstream cluster", "upstream clusters")
        ));
        for (name, cluster) in &dump.clusters {
            cluster_state(&mut out, name, cluster);
        }
    }
    out
}

fn cluster_state(out: &mut String, name: &str, cluster: &ClusterDump) {
    out.push_str(&format!("  {name}\n"));
    out.push_str(&format!(
        "    load balancer {}; {}; requests: {} pending, {} active, {} retrying\n",
        cluster.load_balancer,
        count(
            usize::try_from(cluster.connections).unwrap_or(usize::MAX),
            "connection",
            "connections"
        ),
        cluster.pending_requests,
        cluster.active_requests,
        cluster.active_retries,
    ));
    if cluster.endpoints.is_empty() {
        out.push_str("    no endpoint\n");
        return;
    }
    let mut table = Table::new(&[
        "ENDPOINT",
        "WEIGHT",
        "ACTIVE",
        "EJECTED",
        "TIMES EJECTED",
        "5XX IN A ROW",
        "GATEWAY ERRORS IN A ROW",
        "IDLE CONNS",
        "H2 CONNS",
    ]);
    for endpoint in &cluster.endpoints {
        table.row(vec![
            endpoint.addr.clone(),
            endpoint.weight.to_string(),
            endpoint.active_requests.to_string(),
            match (endpoint.ejected, endpoint.ejected_until) {
                (true, Some(left)) => format!("yes, {left:.1}s left"),
                (true, None) => "yes".to_owned(),
                (false, _) => "no".to_owned(),
            },
            endpoint.times_ejected.to_string(),
            endpoint.consecutive_5xx.to_string(),
            endpoint.consecutive_gateway_errors.to_string(),
            endpoint.idle_connections.to_string(),
            endpoint.h2_connections.to_string(),
        ]);
    }
    for line in table.render().lines() {
        out.push_str(&format!("    {line}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_clusters() -> serde_json::Value {
        serde_json::json!({
            "shop/web-1": {"clusters": {
                "outbound|8080||cart.shop.svc.cluster.local": {
                    "load_balancer": "RoundRobin",
                    "connections": 2,
                    "pending_requests": 1,
                    "active_requests": 3,
                    "active_retries": 0,
                    "endpoints": [
                        {"addr": "10.0.0.5:8080", "weight": 1, "active_requests": 3,
                         "ejected": false, "ejected_until": null, "times_ejected": 1,
                         "consecutive_5xx": 2, "consecutive_gateway_errors": 0,
                         "idle_connections": 1, "h2_connections": 0},
                        {"addr": "10.0.0.6:8080", "weight": 1, "active_requests": 0,
                         "ejected": true, "ejected_until": 12.34, "times_ejected": 2,
                         "consecutive_5xx": 0, "consecutive_gateway_errors": 0,
                         "idle_connections": 0, "h2_connections": 0},
                    ],
                },
                "outbound|80||10.1.2.3": {
                    "load_balancer": "RoundRobin",
                    "connections": 1,
                    "pending_requests": 0,
                    "active_requests": 0,
                    "active_retries": 0,
                    "endpoints": [],
                },
            }},
            "shop/idle": {"clusters": {}},
        })
    }

    #[test]
    fn clusters_render_per_pod_cluster_and_endpoint() {
        let pods: BTreeMap<String, ClustersDump> =
            serde_json::from_value(sample_clusters()).unwrap();
        assert_eq!(
            clusters(&pods),
            "shop/idle: no upstream cluster in use\n\
             shop/web-1: 2 upstream clusters\n\
             \x20 outbound|8080||cart.shop.svc.cluster.local\n\
             \x20   load balancer RoundRobin; 2 connections; requests: 1 pending, 3 active, 0 retrying\n\
             \x20   ENDPOINT       WEIGHT  ACTIVE  EJECTED          TIMES EJECTED  5XX IN A ROW  GATEWAY ERRORS IN A ROW  IDLE CONNS  H2 CONNS\n\
             \x20   10.0.0.5:8080  1       3       no               1              2             0                        1           0\n\
             \x20   10.0.0.6:8080  1       0       yes, 12.3s left  2              0             0                        0           0\n\
             \x20 outbound|80||10.1.2.3\n\
             \x20   load balancer RoundRobin; 1 connection; requests: 0 pending, 0 active, 0 retrying\n\
             \x20   no endpoint\n"
        );
        assert_eq!(clusters(&BTreeMap::new()), "the proxy serves no pod\n");
    }

    #[test]
    fn a_pod_filter_keeps_that_pod_or_names_the_pods_served() {
        let addr: SocketAddr = "127.0.0.1:15020".parse().unwrap();
        for (pod, expected) in [
            (None, Ok(vec!["shop/idle", "shop/web-1"])),
            (Some("shop/web-1"), Ok(vec!["shop/web-1"])),
            (
                Some("shop/web-2"),
                Err(
                    "the proxy at 127.0.0.1:15020 does not serve pod shop/web-2 \
                     (serves: shop/idle, shop/web-1)",
                ),
            ),
        ] {
            let selected = select_pod(sample_clusters(), pod, addr)
                .map(|pods| pods.keys().cloned().collect::<Vec<_>>())
                .map_err(|e| e.to_string());
            assert_eq!(
                selected,
                expected
                    .map(|pods| pods.into_iter().map(str::to_owned).collect())
                    .map_err(str::to_owned),
                "{pod:?}"
            );
        }
        let error = select_pod(serde_json::json!({}), Some("shop/web-1"), addr).unwrap_err();
        assert!(error.to_string().ends_with("(serves: none)"), "{error}");
    }
}
