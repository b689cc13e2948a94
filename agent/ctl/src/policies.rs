//! `shuntctl policies`: one pod's effective security policies, each kind in its evaluation
//! order, as the proxy compiles them from the same config.

use shunt_api::admin::PodPolicies;
use shunt_api::admin_client::AdminClient;

use crate::output::Output;

pub async fn policies(agent: &AdminClient, pod: &str, output: Output) -> anyhow::Result<String> {
    let path = format!("/policies/{pod}");
    let body = agent.get(&path).await?;
    output.show(body, &path, |policies: PodPolicies| text(&policies))
}

fn text(policies: &PodPolicies) -> String {
    let mut out = format!("{}\n  PeerAuthentication:\n", policies.pod);
    for port in &policies.peer_authentication {
        let which = port
            .port
            .map_or_else(|| "other ports".to_owned(), |port| format!("port {port}"));
        out.push_str(&format!("    {which}: {}\n", port.decision));
    }
    let list = |out: &mut String, title: &str, items: &[String], none: &str| {
        out.push_str(&format!("  {title}:\n"));
        if items.is_empty() {
            out.push_str(&format!("    {none}\n"));
        }
        for (index, item) in items.iter().enumerate() {
            out.push_str(&format!("    {}. {item}\n", index + 1));
        }
    };
    list(
        &mut out,
        "RequestAuthentication",
        &policies.request_authentication,
        "none: tokens are neither checked nor removed",
    );
    list(
        &mut out,
        "AuthorizationPolicy (evaluation order)",
        &policies.authorization,
        "none: every request is allowed",
    );
    out
}

#[cfg(test)]
mod tests {
    use shunt_api::admin::PortMtls;

    use super::*;

    #[test]
    fn policies_read_in_evaluation_order_with_the_empty_kinds_explained() {
        let policies = PodPolicies {
            pod: "shop/cart".into(),
            peer_authentication: vec![
                PortMtls {
                    port: Some(8080),
                    decision: "STRICT by shop/default (namespace-wide)".into(),
                },
                PortMtls {
                    port: None,
                    decision: "STRICT by shop/default (namespace-wide)".into(),
                },
            ],
            request_authentication: vec![],
            authorization: vec![
                "DENY shop/deny-admin (namespace-wide, 1 rule)".into(),
                "ALLOW shop/readers (workload selector, 2 rules)".into(),
            ],
        };
        assert_eq!(
            text(&policies),
            "shop/cart\n  PeerAuthentication:\n    port 8080: STRICT by shop/default \
             (namespace-wide)\n    other ports: STRICT by shop/default (namespace-wide)\n  \
             RequestAuthentication:\n    none: tokens are neither checked nor removed\n  \
             AuthorizationPolicy (evaluation order):\n    1. DENY shop/deny-admin \
             (namespace-wide, 1 rule)\n    2. ALLOW shop/readers (workload selector, 2 \
             rules)\n"
        );
    }
}
