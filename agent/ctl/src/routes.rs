//! `shuntctl routes` (one pod's effective routes) and `shuntctl explain` (a dry run of one
//! request), which render the same routes and clusters.

use shunt_api::admin::{
    ClusterView, DestinationView, ExplainQuery, ExplainRequest, Explanation, PodRoutes, RouteView,
};

use crate::output::Output;
use shunt_api::admin_client::AdminClient;

pub async fn routes(agent: &AdminClient, pod: &str, output: Output) -> anyhow::Result<String> {
    let path = format!("/routes/{pod}");
    let body = agent.get(&path).await?;
    output.show(body, &path, |routes: PodRoutes| pod_routes(&routes))
}

/// `from` is the sending pod, `namespace/name`.
pub async fn explain(
    agent: &AdminClient,
    from: String,
    request: ExplainRequest,
    output: Output,
) -> anyhow::Result<String> {
    let body = agent
        .post_json("/explain", &ExplainQuery { from, request })
        .await?;
    output.show(body, "/explain", |answer: Explanation| explanation(&answer))
}

fn destinations(list: &[DestinationView]) -> String {
    list.iter()
        .map(|d| {
            let mut text = d.host.clone();
            if let Some(port) = d.port {
                text.push_str(&format!(":{port}"));
            }
            if let Some(subset) = &d.subset {
                text.push_str(&format!(" ({subset})"));
            }
            format!("{text} {}%", d.weight)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn route_lines(out: &mut String, route: &RouteView, indent: &str) {
    out.push_str(&format!(
        "{indent}{} [{}{}]\n",
        route.name,
        route.section,
        route
            .virtual_service
            .as_ref()
            .map(|vs| format!(", {vs}"))
            .unwrap_or_default()
    ));
    if route.matches.is_empty() {
        out.push_str(&format!("{indent}  match: everything\n"));
    }
    for (i, block) in route.matches.iter().enumerate() {
        let or = if i == 0 { "match:" } else { "   or:" };
        out.push_str(&format!("{indent}  {or} {}\n", block.join(" AND ")));
    }
    if route.destinations.is_empty() {
        out.push_str(&format!("{indent}  then: {}\n", route.action));
    } else {
        out.push_str(&format!(
            "{indent}  to: {}\n",
            destinations(&route.destinations)
        ));
    }
    for policy in &route.policies {
        out.push_str(&format!("{indent}  - {policy}\n"));
    }
}

fn cluster_lines(out: &mut String, cluster: &ClusterView, indent: &str) {
    out.push_str(&format!(
        "{indent}{}: {}\n",
        cluster.name, cluster.load_balancer
    ));
    let endpoints = if cluster.endpoints.is_empty() {
        "(none)".to_owned()
    } else {
        cluster.endpoints.join(", ")
    };
    out.push_str(&format!("{indent}  endpoints: {endpoints}\n"));
    if let Some(pool) = &cluster.connection_pool {
        out.push_str(&format!("{indent}  connection pool: {pool}\n"));
    }
    if let Some(outlier) = &cluster.outlier_detection {
        out.push_str(&format!("{indent}  outlier detection: {outlier}\n"));
    }
}

fn pod_routes(routes: &PodRoutes) -> String {
    if routes.hosts.is_empty() {
        return format!(
            "{}: no host it reaches has a VirtualService or DestinationRule (default routes only)\n",
            routes.pod
        );
    }
    let mut out = String::new();
    for host in &routes.hosts {
        out.push_str(&format!(
            "{}:{} ({})\n",
            host.host, host.port, host.protocol
        ));
        if let Some(rule) = &host.destination_rule {
            out.push_str(&format!("  policy from {rule}\n"));
        }
        out.push_str("  routes, first match wins:\n");
        for route in &host.routes {
            route_lines(&mut out, route, "    ");
        }
        out.push_str("  clusters:\n");
        for cluster in &host.clusters {
            cluster_lines(&mut out, cluster, "    ");
        }
    }
    out
}

fn explanation(answer: &Explanation) -> String {
    let mut out = format!("{} from {}\n", answer.request, answer.source);
    out.push_str(&format!("dials: {}\n", answer.destination));
    if let Some(host) = &answer.host {
        out.push_str(&format!("host: {host} ({})\n", answer.resolved_by));
    } else if !answer.resolved_by.is_empty() {
        out.push_str(&format!("host: none ({})\n", answer.resolved_by));
    }
    if !answer.virtual_services.is_empty() {
        out.push_str(&format!(
            "virtual services, in merge order: {}\n",
            answer.virtual_services.join(", ")
        ));
    }
    out.push_str(&format!("outcome: {}\n", answer.outcome));
    if let Some(matched) = &answer.matched {
        out.push_str(&format!("why: {matched}\n"));
    }
    if let Some(route) = &answer.route {
        out.push_str("route:\n");
        route_lines(&mut out, route, "  ");
    }
    if answer.weighted_pick {
        out.push_str("destination: a weighted pick per request among:\n");
    } else if !answer.destinations.is_empty() {
        out.push_str("destination:\n");
    }
    for d in &answer.destinations {
        out.push_str(&format!(
            "  {}\n",
            destinations(std::slice::from_ref(&d.destination))
        ));
        if let Some(cluster) = &d.cluster {
            cluster_lines(&mut out, cluster, "    ");
        }
        if let Some(key) = &d.hash_key {
            out.push_str(&format!("    hashed: {key}\n"));
        }
        if let Some(limit) = &d.rate_limit {
            out.push_str(&format!("    rate limit: {limit}\n"));
        }
        if let Some(error) = &d.error {
            out.push_str(&format!("    cannot dial: {error}\n"));
        }
    }
    if !answer.authorization.is_empty() {
        out.push_str("authorization, at each endpoint:\n");
    }
    for authz in &answer.authorization {
        let assumed = |value: &Option<String>| value.as_deref().unwrap_or("none").to_owned();
        out.push_str(&format!(
            "  {} ({}): {}\n    assumed: principal {}, request principal {}\n",
            authz.endpoint,
            authz.pod,
            authz.decision,
            assumed(&authz.principal),
            assumed(&authz.request_principal)
        ));
        for custom in &authz.custom {
            out.push_str(&format!("    first asks: {custom}\n"));
        }
        for reported in &authz.reported {
            out.push_str(&format!("    reported by: {reported}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route() -> RouteView {
        RouteView {
            name: "canary".into(),
            virtual_service: Some("shop/cart".into()),
            section: "http[0]".into(),
            matches: vec![
                vec!["uri prefix /v2".into(), "header x-canary=1".into()],
                vec!["uri prefix /beta".into()],
            ],
            action: "route".into(),
            destinations: vec![
                DestinationView {
                    host: "cart.shop.svc.cluster.local".into(),
                    subset: Some("v2".into()),
                    port: Some(8080),
                    weight: 90,
                },
                DestinationView {
                    host: "cart.shop.svc.cluster.local".into(),
                    subset: None,
                    port: None,
                    weight: 10,
                },
            ],
            policies: vec!["timeout 2s".into()],
        }
    }

    fn cluster() -> ClusterView {
        ClusterView {
            name: "outbound|8080|v2|cart.shop.svc.cluster.local".into(),
            endpoints: vec![],
            load_balancer: "RoundRobin".into(),
            connection_pool: Some("max 10 connections".into()),
            outlier_detection: None,
            policy_source: None,
            version: None,
        }
    }

    #[test]
    fn pod_routes_list_each_hosts_routes_then_its_clusters() {
        let fallback = RouteView {
            name: "default".into(),
            virtual_service: None,
            section: "default".into(),
            matches: vec![],
            action: "pass through".into(),
            destinations: vec![],
            policies: vec![],
        };
        let host = shunt_api::admin::HostRoutes {
            host: "cart.shop.svc.cluster.local".into(),
            port: 8080,
            protocol: "http".into(),
            virtual_services: vec!["shop/cart".into()],
            destination_rule: Some("shop/cart".into()),
            routes: vec![route(), fallback],
            clusters: vec![cluster()],
        };
        for (hosts, expected) in [
            (
                vec![],
                "shop/web: no host it reaches has a VirtualService or DestinationRule (default \
                 routes only)\n",
            ),
            (
                vec![host],
                "cart.shop.svc.cluster.local:8080 (http)\n\
                 \x20 policy from shop/cart\n\
                 \x20 routes, first match wins:\n\
                 \x20   canary [http[0], shop/cart]\n\
                 \x20     match: uri prefix /v2 AND header x-canary=1\n\
                 \x20        or: uri prefix /beta\n\
                 \x20     to: cart.shop.svc.cluster.local:8080 (v2) 90%, cart.shop.svc.cluster.local 10%\n\
                 \x20     - timeout 2s\n\
                 \x20   default [default]\n\
                 \x20     match: everything\n\
                 \x20     then: pass through\n\
                 \x20 clusters:\n\
                 \x20   outbound|8080|v2|cart.shop.svc.cluster.local: RoundRobin\n\
                 \x20     endpoints: (none)\n\
                 \x20     connection pool: max 10 connections\n",
            ),
        ] {
            let routes = PodRoutes {
                pod: "shop/web".into(),
                hosts,
            };
            assert_eq!(pod_routes(&routes), expected);
        }
    }

    #[test]
    fn an_explanation_shows_the_route_and_each_destination() {
        let answer = Explanation {
            source: "shop/web".into(),
            request: "GET http://cart.shop:8080/v2/items".into(),
            destination: "10.96.0.10:8080".into(),
            host: Some("cart.shop.svc.cluster.local".into()),
            resolved_by: "service IP".into(),
            virtual_services: vec!["shop/cart".into()],
            outcome: "routed".into(),
            matched: Some("uri prefix /v2".into()),
            route: Some(route()),
            weighted_pick: true,
            destinations: vec![shunt_api::admin::DestinationExplanation {
                destination: route().destinations[0].clone(),
                cluster: Some(ClusterView {
                    endpoints: vec!["10.0.0.5:8080".into(), "10.0.0.6:8080".into()],
                    ..cluster()
                }),
                hash_key: None,
                error: Some("no healthy endpoint".into()),
                rate_limit: Some("10/s".into()),
            }],
            authorization: vec![shunt_api::admin::AuthzExplanation {
                endpoint: "10.0.0.5:8080".into(),
                pod: "shop/cart-v2".into(),
                decision: "denied by shop/deny-admin rule 0".into(),
                allowed: false,
                custom: vec![],
                reported: vec!["AUDIT shop/audit rule 0".into()],
                principal: Some("spiffe://cluster.local/ns/shop/sa/web".into()),
                request_principal: None,
            }],
        };
        assert_eq!(
            explanation(&answer),
            "GET http://cart.shop:8080/v2/items from shop/web\n\
             dials: 10.96.0.10:8080\n\
             host: cart.shop.svc.cluster.local (service IP)\n\
             virtual services, in merge order: shop/cart\n\
             outcome: routed\n\
             why: uri prefix /v2\n\
             route:\n\
             \x20 canary [http[0], shop/cart]\n\
             \x20   match: uri prefix /v2 AND header x-canary=1\n\
             \x20      or: uri prefix /beta\n\
             \x20   to: cart.shop.svc.cluster.local:8080 (v2) 90%, cart.shop.svc.cluster.local 10%\n\
             \x20   - timeout 2s\n\
             destination: a weighted pick per request among:\n\
             \x20 cart.shop.svc.cluster.local:8080 (v2) 90%\n\
             \x20   outbound|8080|v2|cart.shop.svc.cluster.local: RoundRobin\n\
             \x20     endpoints: 10.0.0.5:8080, 10.0.0.6:8080\n\
             \x20     connection pool: max 10 connections\n\
             \x20   rate limit: 10/s\n\
             \x20   cannot dial: no healthy endpoint\n\
             authorization, at each endpoint:\n\
             \x20 10.0.0.5:8080 (shop/cart-v2): denied by shop/deny-admin rule 0\n\
             \x20   assumed: principal spiffe://cluster.local/ns/shop/sa/web, request principal none\n\
             \x20   reported by: AUDIT shop/audit rule 0\n"
        );
    }
}
