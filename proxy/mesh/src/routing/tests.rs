use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::istio;
use crate::model::{MeshState, TargetPort, Workload};
use crate::testing::{labels, pod, service};

fn vs(namespace: &str, name: &str, spec: serde_json::Value) -> istio::VirtualService {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec}),
    )
    .unwrap()
}

fn dr(namespace: &str, name: &str, spec: serde_json::Value) -> istio::DestinationRule {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec}),
    )
    .unwrap()
}

fn se(namespace: &str, name: &str, spec: serde_json::Value) -> istio::ServiceEntry {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec}),
    )
    .unwrap()
}

fn rl(namespace: &str, name: &str, spec: serde_json::Value) -> istio::RateLimitPolicy {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec}),
    )
    .unwrap()
}

fn versioned(name: &str, ip: [u8; 4], version: &str) -> Workload {
    let mut w = pod("shop", name, ip, "cart");
    w.labels.insert("version".into(), version.into());
    w
}

/// shop: web (10.0.0.1), cart v1 (10.0.0.2), cart v2 (10.0.0.3); Service cart 10.96.0.20:80.
fn base() -> MeshState {
    let mut cart = service(
        "shop",
        "cart",
        [10, 96, 0, 20],
        "cart",
        &[(80, TargetPort::Number(8080))],
    );
    cart.ports[0].name = Some("http".into());
    MeshState {
        workloads: vec![
            pod("shop", "web", [10, 0, 0, 1], "web"),
            versioned("cart-v1", [10, 0, 0, 2], "v1"),
            versioned("cart-v2", [10, 0, 0, 3], "v2"),
            pod("other", "client", [10, 0, 1, 1], "client"),
        ],
        services: vec![cart],
        ..MeshState::default()
    }
}

/// `base()` with a DestinationRule defining cart's subsets v1 and v2.
fn with_versions() -> MeshState {
    let mut state = base();
    state.destination_rules.push(dr(
        "shop",
        "cart-versions",
        json!({"host": "cart", "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}}
        ]}),
    ));
    state
}

fn table(state: &MeshState) -> RouteTable {
    let (table, errors) = RouteTable::build(state);
    assert_eq!(errors, vec![], "unexpected config errors");
    table
}

fn addr(s: &str) -> SocketAddrV4 {
    s.parse().unwrap()
}

struct Req<'a> {
    method: &'a str,
    uri: &'a str,
    authority: &'a str,
    headers: &'a [(&'a str, &'a str)],
    source: &'a str,
}

const GET: Req<'static> = Req {
    method: "GET",
    uri: "/",
    authority: "cart",
    headers: &[],
    source: "web",
};

/// Routes one request sent to `dst` and names the outcome: the route name (and destination
/// subsets), `404`, or `502`.
fn route(table: &RouteTable, dst: &str, req: &Req<'_>) -> String {
    let method: http::Method = req.method.parse().unwrap();
    let uri: http::Uri = req.uri.parse().unwrap();
    let mut headers = http::HeaderMap::new();
    for (k, v) in req.headers {
        headers.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let source = table
        .workloads_by_ip
        .values()
        .find(|w| w.name == req.source)
        .cloned();
    let target = table.outbound_target(addr(dst), source.as_deref());
    let facts = RequestFacts {
        method: &method,
        uri: &uri,
        authority: Some(req.authority),
        headers: &headers,
        port: addr(dst).port(),
        source: source.as_deref(),
    };
    match table.http_route(&target, &facts) {
        HttpDecision::Route(route) => {
            let to = match &route.action {
                HttpAction::Forward(list) => list
                    .iter()
                    .map(|d| {
                        format!(
                            "{}/{}:{}",
                            d.destination.host,
                            d.destination.subset.as_deref().unwrap_or("-"),
                            d.weight
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                HttpAction::Redirect(r) => format!("redirect {}", r.status.as_u16()),
                HttpAction::DirectResponse { status, .. } => format!("direct {}", status.as_u16()),
            };
            format!("{} -> {to}", route.name)
        }
        HttpDecision::NoRouteMatched { virtual_service } => format!("404 {virtual_service}"),
        HttpDecision::BlockedByRegistryOnly { authority } => format!("502 {authority}"),
        HttpDecision::NoVirtualHost { authority } => format!("404 no virtual host {authority}"),
        HttpDecision::HttpsRedirect => "301 https".into(),
    }
}

fn matching_state() -> MeshState {
    let mut state = with_versions();
    let to = |subset: &str| json!([{"destination": {"host": "cart", "subset": subset}}]);
    state.virtual_services.push(vs("shop", "cart", json!({
        "hosts": ["cart"],
        "http": [
            {"name": "exact", "match": [{"uri": {"exact": "/exact"}}], "route": to("v1")},
            {"name": "prefix-ci", "match": [{"uri": {"prefix": "/API"}, "ignoreUriCase": true}], "route": to("v2")},
            {"name": "regex", "match": [{"uri": {"regex": "/r/[0-9]+"}}], "route": to("v1")},
            {"name": "header-and-method", "match": [{"headers": {"x-user": {"exact": "jason"}}, "method": {"exact": "POST"}}], "route": to("v2")},
            {"name": "cookie-or-query", "match": [
                {"headers": {"cookie": {"regex": ".*user=v2.*"}}},
                {"queryParams": {"canary": {"exact": "yes"}}}
            ], "route": to("v2")},
            {"name": "authority", "match": [{"authority": {"prefix": "cart.shop"}}], "route": to("v1")},
            {"name": "presence", "match": [{"headers": {"x-debug": {}}}], "directResponse": {"status": 418}},
            {"name": "without", "match": [{"withoutHeaders": {"x-tenant": {}}, "uri": {"prefix": "/anon"}}], "route": to("v1")},
            {"name": "port", "match": [{"port": 8080}], "route": to("v2")},
            {"name": "source", "match": [{"sourceLabels": {"app": "client"}, "sourceNamespace": "other"}], "route": to("v2")},
            {"name": "only-gateway", "match": [{"gateways": ["public-gw"], "uri": {"prefix": "/gw"}}], "route": to("v2")},
            {"name": "rest", "route": to("v1")}
        ]
    })));
    state
}

#[test]
fn http_matching() {
    let table = table(&matching_state());
    let cart = "cart.shop.svc.cluster.local";
    let v1 = format!("{cart}/v1:100");
    let v2 = format!("{cart}/v2:100");
    for (req, expected) in [
        (
            Req {
                uri: "/exact",
                ..GET
            },
            format!("exact -> {v1}"),
        ),
        // Exact means exact: a longer path falls through.
        (
            Req {
                uri: "/exact/more",
                ..GET
            },
            format!("rest -> {v1}"),
        ),
        (
            Req {
                uri: "/api/items",
                ..GET
            },
            format!("prefix-ci -> {v2}"),
        ),
        (
            Req {
                uri: "/Api/items?x=1",
                ..GET
            },
            format!("prefix-ci -> {v2}"),
        ),
        (
            Req {
                uri: "/r/123",
                ..GET
            },
            format!("regex -> {v1}"),
        ),
        // Regexes are anchored: a partial match is no match.
        (
            Req {
                uri: "/r/123/x",
                ..GET
            },
            format!("rest -> {v1}"),
        ),
        // Fields inside a block are ANDed.
        (
            Req {
                method: "POST",
                headers: &[("x-user", "jason")],
                ..GET
            },
            format!("header-and-method -> {v2}"),
        ),
        (
            Req {
                method: "GET",
                headers: &[("x-user", "jason")],
                ..GET
            },
            format!("rest -> {v1}"),
        ),
        // Blocks are ORed.
        (
            Req {
                headers: &[("cookie", "a=b; user=v2")],
                ..GET
            },
            format!("cookie-or-query -> {v2}"),
        ),
        (
            Req {
                uri: "/?canary=yes",
                ..GET
            },
            format!("cookie-or-query -> {v2}"),
        ),
        (
            Req {
                uri: "/?canary=no",
                ..GET
            },
            format!("rest -> {v1}"),
        ),
        (
            Req {
                authority: "cart.shop:80",
                ..GET
            },
            format!("authority -> {v1}"),
        ),
        (
            Req {
                headers: &[("x-debug", "")],
                ..GET
            },
            "presence -> direct 418".to_owned(),
        ),
        (
            Req {
                uri: "/anon",
                ..GET
            },
            format!("without -> {v1}"),
        ),
        (
            Req {
                uri: "/anon",
                headers: &[("x-tenant", "a")],
                ..GET
            },
            format!("rest -> {v1}"),
        ),
        (
            Req {
                source: "client",
                ..GET
            },
            format!("source -> {v2}"),
        ),
        // A match block bound only to a gateway never matches mesh traffic.
        (Req { uri: "/gw", ..GET }, format!("rest -> {v1}")),
    ] {
        assert_eq!(
            route(&table, "10.96.0.20:80", &req),
            expected,
            "{} {} {:?}",
            req.method,
            req.uri,
            req.headers
        );
    }
}

#[test]
fn first_match_wins_and_merged_virtual_services_keep_their_order() {
    let mut state = with_versions();
    let route_to = |subset: &str| json!([{"destination": {"host": "cart.shop.svc.cluster.local", "subset": subset}}]);
    // "b" sorts after "a": its catch-all comes after a's specific route.
    state.virtual_services.push(vs(
        "shop",
        "b",
        json!({"hosts": ["cart"], "http": [{"name": "b-all", "route": route_to("v1")}]}),
    ));
    state.virtual_services.push(vs("shop", "a", json!({"hosts": ["cart.shop.svc.cluster.local"], "http": [
        {"name": "a-api", "match": [{"uri": {"prefix": "/api"}}], "route": route_to("v2")},
        {"name": "a-shadowed", "match": [{"uri": {"prefix": "/api/x"}}], "route": route_to("v1")}
    ]})));
    let table = table(&state);
    assert_eq!(
        route(
            &table,
            "10.96.0.20:80",
            &Req {
                uri: "/api/x",
                ..GET
            }
        ),
        "a-api -> cart.shop.svc.cluster.local/v2:100"
    );
    assert_eq!(
        route(
            &table,
            "10.96.0.20:80",
            &Req {
                uri: "/other",
                ..GET
            }
        ),
        "b-all -> cart.shop.svc.cluster.local/v1:100"
    );
}

#[test]
fn a_virtual_service_without_a_matching_route_answers_no_route() {
    let mut state = base();
    state.virtual_services.push(vs(
        "shop",
        "cart",
        json!({"hosts": ["cart"], "http": [
            {"match": [{"uri": {"exact": "/only"}}], "route": [{"destination": {"host": "cart"}}]}
        ]}),
    ));
    let table = table(&state);
    assert_eq!(
        route(
            &table,
            "10.96.0.20:80",
            &Req {
                uri: "/only",
                ..GET
            }
        ),
        "cart.0 -> cart.shop.svc.cluster.local/-:100"
    );
    assert_eq!(
        route(&table, "10.96.0.20:80", &GET),
        "404 VirtualService shop/cart"
    );
}

#[test]
fn host_resolution() {
    let mut state = base();
    state.service_entries.push(se("shop", "ext", json!({
        "hosts": ["api.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}], "resolution": "DNS"
    })));
    state.service_entries.push(se("shop", "wild", json!({
        "hosts": ["*.wild.example"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]
    })));
    state.virtual_services.push(vs("shop", "ext", json!({"hosts": ["api.example.com"], "http": [{"name": "ext", "route": [{"destination": {"host": "api.example.com"}}]}]})));
    state.virtual_services.push(vs("shop", "wild", json!({"hosts": ["*.wild.example"], "http": [{"name": "wild", "directResponse": {"status": 204}}]})));
    let table = table(&state);
    let cart = "default -> cart.shop.svc.cluster.local/-:100";
    for (dst, authority, source, expected) in [
        // A ClusterIP decides, whatever the Host header says.
        ("10.96.0.20:80", "whatever", "web", cart),
        // An unknown address is routed by the Host header, every spelling of the Service.
        ("192.0.2.9:80", "cart", "web", cart),
        ("192.0.2.9:80", "cart:80", "web", cart),
        ("192.0.2.9:80", "cart.shop", "client", cart),
        ("192.0.2.9:80", "cart.shop.svc", "client", cart),
        (
            "192.0.2.9:80",
            "cart.shop.svc.cluster.local",
            "client",
            cart,
        ),
        ("192.0.2.9:80", "10.96.0.20:80", "client", cart),
        // A short name is the source's namespace.
        (
            "192.0.2.9:80",
            "cart",
            "client",
            "allow_any -> 192.0.2.9/-:100",
        ),
        // ServiceEntry hosts, exact and wildcard.
        (
            "192.0.2.9:80",
            "api.example.com",
            "web",
            "ext -> api.example.com/-:100",
        ),
        (
            "192.0.2.9:80",
            "a.b.wild.example",
            "web",
            "wild -> direct 204",
        ),
        // The port is part of the key.
        (
            "192.0.2.9:8080",
            "cart",
            "web",
            "allow_any -> 192.0.2.9/-:100",
        ),
    ] {
        assert_eq!(
            route(
                &table,
                dst,
                &Req {
                    authority,
                    source,
                    ..GET
                }
            ),
            expected,
            "{dst} Host: {authority} from {source}"
        );
    }
}

#[test]
fn registry_only_blocks_unknown_destinations() {
    let mut state = base();
    state.mesh.outbound_traffic_policy = OutboundTrafficPolicy::RegistryOnly;
    state.service_entries.push(se("shop", "ext", json!({
        "hosts": ["api.example.com"], "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}, {"number": 80, "protocol": "HTTP"}]
    })));
    let table = table(&state);
    assert_eq!(
        route(
            &table,
            "192.0.2.9:80",
            &Req {
                authority: "nope.example.com",
                ..GET
            }
        ),
        "502 nope.example.com"
    );
    assert_eq!(
        route(
            &table,
            "192.0.2.9:80",
            &Req {
                authority: "api.example.com",
                ..GET
            }
        ),
        "default -> api.example.com/-:100"
    );
    let unknown = table.outbound_target(addr("192.0.2.9:443"), None);
    assert!(
        matches!(
            table.tcp_route(&unknown, None, None),
            TcpDecision::Forward { .. }
        ),
        "a ServiceEntry without addresses claims its port"
    );
    assert!(matches!(
        table.tcp_route(
            &table.outbound_target(addr("192.0.2.9:5432"), None),
            None,
            None
        ),
        TcpDecision::BlockedByRegistryOnly
    ));
    assert!(matches!(
        table.tcp_route(&unknown, Some("api.example.com"), None),
        TcpDecision::Forward { .. }
    ));
    // The host's cluster dials what the app dialled (resolution NONE).
    let cluster = table
        .cluster(
            &Destination {
                host: Host("api.example.com".into()),
                subset: None,
                port: None,
            },
            443,
            None,
        )
        .unwrap();
    assert_eq!(cluster.policy.load_balancer, LoadBalancer::Passthrough);
    // ALLOW_ANY passes unknown TCP through.
    let mut allow = base();
    allow.mesh.outbound_traffic_policy = OutboundTrafficPolicy::AllowAny;
    let table = super::RouteTable::build(&allow).0;
    assert!(matches!(
        table.tcp_route(
            &table.outbound_target(addr("192.0.2.9:5432"), None),
            None,
            None
        ),
        TcpDecision::Passthrough
    ));
}

#[test]
fn tcp_and_tls_routes() {
    let mut state = base();
    state.service_entries.push(se("shop", "db", json!({
        "hosts": ["db.internal"], "ports": [{"number": 5432, "protocol": "TCP"}],
        "resolution": "STATIC", "endpoints": [{"address": "10.0.0.7", "labels": {"version": "a"}}, {"address": "10.0.0.8", "labels": {"version": "b"}}]
    })));
    state.service_entries.push(se("shop", "mysql", json!({
        "hosts": ["mysql.internal"], "addresses": ["10.98.0.0/16"], "ports": [{"number": 3306, "protocol": "TCP"}]
    })));
    state.service_entries.push(se(
        "shop",
        "tls",
        json!({
            "hosts": ["*.secure.example"], "ports": [{"number": 443, "protocol": "TLS"}]
        }),
    ));
    state.destination_rules.push(dr("shop", "db", json!({"host": "db.internal", "subsets": [{"name": "a", "labels": {"version": "a"}}, {"name": "b", "labels": {"version": "b"}}]})));
    state.virtual_services.push(vs("shop", "db", json!({"hosts": ["db.internal"], "tcp": [
        {"match": [{"port": 5432, "destinationSubnets": ["10.99.0.128/25"]}], "route": [{"destination": {"host": "db.internal", "subset": "b"}}]},
        {"route": [{"destination": {"host": "db.internal", "subset": "a"}, "weight": 80}, {"destination": {"host": "db.internal", "subset": "b"}, "weight": 20}]}
    ]})));
    state.virtual_services.push(vs("shop", "tls", json!({"hosts": ["*.secure.example"], "tls": [
        {"match": [{"sniHosts": ["a.secure.example"]}], "route": [{"destination": {"host": "*.secure.example"}}]}
    ]})));
    let table = table(&state);
    let describe = |d: TcpDecision| match d {
        TcpDecision::Forward {
            route_name,
            destinations,
            ..
        } => format!(
            "{route_name}: {}",
            destinations
                .iter()
                .map(|d| format!(
                    "{}={}",
                    d.destination.subset.as_deref().unwrap_or("-"),
                    d.weight
                ))
                .collect::<Vec<_>>()
                .join(",")
        ),
        TcpDecision::Passthrough => "passthrough".into(),
        TcpDecision::BlockedByRegistryOnly => "blocked".into(),
        TcpDecision::NoRoute => "no route".into(),
    };
    for (dst, sni, expected) in [
        ("10.99.0.200:5432", None, "db.tcp.0: b=100"),
        ("10.99.0.5:5432", None, "db.tcp.1: a=80,b=20"),
        (
            "192.0.2.1:443",
            Some("a.secure.example"),
            "tls.tls.0: -=100",
        ),
        ("192.0.2.1:443", Some("b.secure.example"), "default: -=100"),
        ("192.0.2.1:443", Some("elsewhere.example"), "passthrough"),
        // A CIDR address names its entry before any byte is read.
        ("10.98.7.7:3306", None, "default: -=100"),
    ] {
        let target = table.outbound_target(addr(dst), None);
        assert_eq!(
            describe(table.tcp_route(&target, sni, None)),
            expected,
            "{dst} {sni:?}"
        );
    }
    assert!(
        matches!(table.outbound_target(addr("10.98.7.7:3306"), None), OutboundTarget::Service(t) if &*t.host.0 == "mysql.internal")
    );
    let cluster = table
        .cluster(
            &Destination {
                host: Host("db.internal".into()),
                subset: Some("b".into()),
                port: None,
            },
            5432,
            None,
        )
        .unwrap();
    assert_eq!(
        cluster
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect::<Vec<_>>(),
        vec!["10.0.0.8:5432"]
    );
    assert_eq!(cluster.version.as_deref(), Some("b"));
}

#[test]
fn weights_and_subsets() {
    let mut state = base();
    state.destination_rules.push(dr(
        "shop",
        "cart",
        json!({"host": "cart", "subsets": [
            {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}
        ]}),
    ));
    state.virtual_services.push(vs(
        "shop",
        "cart",
        json!({"hosts": ["cart"], "http": [{"route": [
            {"destination": {"host": "cart", "subset": "v1"}, "weight": 80},
            {"destination": {"host": "cart", "subset": "v2"}, "weight": 20}
        ]}]}),
    ));
    let table = table(&state);
    assert_eq!(
        route(&table, "10.96.0.20:80", &GET),
        "cart.0 -> cart.shop.svc.cluster.local/v1:80,cart.shop.svc.cluster.local/v2:20"
    );
    let host = Host("cart.shop.svc.cluster.local".into());
    for (subset, expected) in [
        (Some("v1"), Ok(vec!["10.0.0.2:8080"])),
        (Some("v2"), Ok(vec!["10.0.0.3:8080"])),
        (None, Ok(vec!["10.0.0.2:8080", "10.0.0.3:8080"])),
        (Some("v3"), Err(())),
    ] {
        let got = table
            .cluster(
                &Destination {
                    host: host.clone(),
                    subset: subset.map(Into::into),
                    port: None,
                },
                80,
                None,
            )
            .map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| e.addr.to_string())
                    .collect::<Vec<_>>()
            })
            .map_err(|_| ());
        assert_eq!(
            got,
            expected.map(|v| v.into_iter().map(String::from).collect()),
            "{subset:?}"
        );
    }
    assert_eq!(
        table
            .cluster(
                &Destination {
                    host: host.clone(),
                    subset: Some("v3".into()),
                    port: None
                },
                80,
                None,
            )
            .unwrap_err()
            .to_string(),
        "host cart.shop.svc.cluster.local has no subset \"v3\" (no DestinationRule in force for the source's namespace defines it)"
    );
    assert_eq!(
        table
            .cluster(
                &Destination {
                    host,
                    subset: None,
                    port: Some(81)
                },
                80,
                None,
            )
            .unwrap_err()
            .to_string(),
        "host cart.shop.svc.cluster.local has no port 81"
    );
}

#[test]
fn destination_rule_policies_merge_top_subset_and_port() {
    let mut state = base();
    state.destination_rules.push(dr("shop", "cart", json!({
        "host": "cart.shop.svc.cluster.local",
        "trafficPolicy": {
            "loadBalancer": {"simple": "LEAST_CONN"},
            "connectionPool": {"tcp": {"maxConnections": 10}},
            "outlierDetection": {"consecutive5xxErrors": 3, "interval": "1s", "baseEjectionTime": "0.5s"},
            "portLevelSettings": [{"port": {"number": 80}, "connectionPool": {"http": {"http1MaxPendingRequests": 1}}}]
        },
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpCookie": {"name": "user", "ttl": "60s"}}}}}
        ]
    })));
    let table = table(&state);
    let policy = |subset: Option<&str>| {
        table
            .cluster(
                &Destination {
                    host: Host("cart.shop.svc.cluster.local".into()),
                    subset: subset.map(Into::into),
                    port: None,
                },
                80,
                None,
            )
            .unwrap()
            .policy
            .clone()
    };
    let top = policy(None);
    assert_eq!(top.load_balancer, LoadBalancer::LeastRequest);
    // The port level replaces the whole connectionPool of its level.
    assert_eq!(
        top.connection_pool,
        ConnectionPool {
            http1_max_pending_requests: Some(1),
            ..ConnectionPool::default()
        }
    );
    assert_eq!(
        top.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx_errors: Some(3),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_millis(500),
            max_ejection_percent: 10,
            min_health_percent: 0,
        })
    );
    assert_eq!(
        top.source.as_ref().map(ToString::to_string).as_deref(),
        Some("DestinationRule shop/cart")
    );
    assert_eq!(policy(Some("v1")).load_balancer, LoadBalancer::LeastRequest);
    let v2 = policy(Some("v2"));
    assert_eq!(
        v2.load_balancer,
        LoadBalancer::ConsistentHash {
            key: HashKey::Cookie {
                name: "user".into(),
                path: None,
                ttl: Some(Duration::from_secs(60))
            },
            algorithm: HashAlgorithm::RingHash {
                minimum_ring_size: 1024
            },
        }
    );
    // Fields the subset does not set come from the top level.
    assert_eq!(v2.connection_pool, top.connection_pool);
}

#[test]
fn consistent_hash_settings() {
    let header =
        |name: &str| HashKey::Header(http::HeaderName::from_bytes(name.as_bytes()).unwrap());
    for (hash, expected) in [
        (
            json!({"httpHeaderName": "x-user"}),
            LoadBalancer::ConsistentHash {
                key: header("x-user"),
                algorithm: HashAlgorithm::RingHash {
                    minimum_ring_size: 1024,
                },
            },
        ),
        (
            json!({"useSourceIp": true, "ringHash": {"minimumRingSize": 64}}),
            LoadBalancer::ConsistentHash {
                key: HashKey::SourceIp,
                algorithm: HashAlgorithm::RingHash {
                    minimum_ring_size: 64,
                },
            },
        ),
        (
            json!({"httpQueryParameterName": "u", "minimumRingSize": 32}),
            LoadBalancer::ConsistentHash {
                key: HashKey::QueryParameter("u".into()),
                algorithm: HashAlgorithm::RingHash {
                    minimum_ring_size: 32,
                },
            },
        ),
        (
            json!({"httpHeaderName": "x", "maglev": {}}),
            LoadBalancer::ConsistentHash {
                key: header("x"),
                algorithm: HashAlgorithm::Maglev { table_size: 65537 },
            },
        ),
        (
            json!({"httpHeaderName": "x", "maglev": {"tableSize": 251}}),
            LoadBalancer::ConsistentHash {
                key: header("x"),
                algorithm: HashAlgorithm::Maglev { table_size: 251 },
            },
        ),
    ] {
        let mut state = base();
        state.destination_rules.push(dr(
            "shop",
            "cart",
            json!({"host": "cart", "trafficPolicy": {"loadBalancer": {"consistentHash": hash}}}),
        ));
        let table = table(&state);
        let cluster = table
            .cluster(
                &Destination {
                    host: Host("cart.shop.svc.cluster.local".into()),
                    subset: None,
                    port: None,
                },
                80,
                None,
            )
            .unwrap();
        assert_eq!(cluster.policy.load_balancer, expected, "{hash}");
    }
}

#[test]
fn rate_limit_policies_attach_to_a_host_or_a_named_route() {
    let mut state = base();
    state.virtual_services.push(vs("shop", "cart", json!({"hosts": ["cart"], "http": [
        {"name": "checkout", "match": [{"uri": {"prefix": "/checkout"}}], "route": [{"destination": {"host": "cart"}}]},
        {"name": "rest", "route": [{"destination": {"host": "cart"}}]}
    ]})));
    state.rate_limit_policies.push(rl(
        "shop",
        "host",
        json!({"service": "cart", "requestsPerSecond": 10}),
    ));
    state.rate_limit_policies.push(rl("shop", "route", json!({"virtualService": {"name": "cart", "route": "checkout"}, "requestsPerSecond": 0.5, "burst": 2})));
    let table = table(&state);
    let limit = |uri: &str| {
        let target = table.outbound_target(addr("10.96.0.20:80"), None);
        let (method, uri, headers) = (
            http::Method::GET,
            uri.parse().unwrap(),
            http::HeaderMap::new(),
        );
        let facts = RequestFacts {
            method: &method,
            uri: &uri,
            authority: None,
            headers: &headers,
            port: 80,
            source: None,
        };
        match table.http_route(&target, &facts) {
            HttpDecision::Route(r) => r
                .rate_limit
                .as_ref()
                .map(|l| (l.policy.to_string(), l.requests_per_second, l.burst)),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        limit("/checkout"),
        Some(("RateLimitPolicy shop/route".into(), 0.5, 2))
    );
    assert_eq!(
        limit("/other"),
        Some(("RateLimitPolicy shop/host".into(), 10.0, 10))
    );
}

#[test]
fn route_policies_compile() {
    let mut state = with_versions();
    state.virtual_services.push(vs("shop", "cart", json!({"hosts": ["cart"], "http": [{
        "match": [{"uri": {"prefix": "/old"}}],
        "rewrite": {"uri": "/new", "authority": "cart.internal"},
        "route": [{"destination": {"host": "cart"}, "headers": {"request": {"set": {"x-a": "1"}}}}],
        "timeout": "1.5s",
        "retries": {"attempts": 3, "perTryTimeout": "100ms", "retryOn": "5xx,reset,unavailable,409"},
        "fault": {"delay": {"fixedDelay": "2s", "percent": 50}, "abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 12.5}}},
        "mirror": {"host": "cart", "subset": "v2"}, "mirrorPercentage": {"value": 10},
        "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}], "allowOrigin": ["*"], "allowMethods": ["GET"], "maxAge": "24h", "allowCredentials": true},
        "headers": {"response": {"remove": ["server"]}}
    }]})));
    let table = table(&state);
    let target = table.outbound_target(addr("10.96.0.20:80"), None);
    let (method, uri, headers) = (
        http::Method::GET,
        "/old/x".parse().unwrap(),
        http::HeaderMap::new(),
    );
    let facts = RequestFacts {
        method: &method,
        uri: &uri,
        authority: None,
        headers: &headers,
        port: 80,
        source: None,
    };
    let HttpDecision::Route(r) = table.http_route(&target, &facts) else {
        panic!()
    };
    assert_eq!(r.timeout, Some(Duration::from_millis(1500)));
    assert_eq!(
        r.retries,
        RetryPolicy {
            attempts: 3,
            per_try_timeout: Some(Duration::from_millis(100)),
            retry_on: RetryOn {
                five_xx: true,
                reset: true,
                retriable_status_codes: vec![409],
                grpc_codes: vec![14],
                ..RetryOn::default()
            },
        }
    );
    assert_eq!(
        r.fault,
        Some(Fault {
            delay: Some(FaultDelay {
                fixed_delay: Duration::from_secs(2),
                percentage: 50.0
            }),
            abort: Some(FaultAbort {
                kind: AbortKind::Grpc(14),
                percentage: 12.5
            }),
        })
    );
    assert_eq!(
        r.mirrors,
        vec![Mirror {
            destination: Destination {
                host: Host("cart.shop.svc.cluster.local".into()),
                subset: Some("v2".into()),
                port: None
            },
            percentage: 10.0
        }]
    );
    let rewrite = r.rewrite.as_ref().unwrap();
    assert_eq!(
        (rewrite.uri.as_deref(), rewrite.matched_prefix.as_deref()),
        (Some("/new"), Some("/old"))
    );
    let cors = r.cors.as_ref().unwrap();
    assert_eq!(
        (
            cors.allow_origins.len(),
            cors.max_age,
            cors.allow_credentials
        ),
        (2, Some(Duration::from_secs(86400)), Some(true))
    );
    assert!(cors.allow_origins[1].matches("https://anything", false));
    assert_eq!(r.response_headers.remove, vec![http::header::SERVER]);
    let HttpAction::Forward(list) = &r.action else {
        panic!()
    };
    assert_eq!(list[0].request_headers.set.len(), 1);
    // No VirtualService: Istio's default retries.
    assert_eq!(default_retry_policy().attempts, 2);
}

#[test]
fn validation_errors_name_the_object_and_the_field() {
    let cases: Vec<(MeshState, Vec<&str>)> = vec![
        (vec![vs("shop", "cart", json!({"hosts": ["cart"], "http": [
            {"route": [{"destination": {"host": "cart"}}]},
            {"route": [{"destination": {"subset": "v1"}}]}
        ]}))], vec!["VirtualService shop/cart: spec.http[1].route[0].destination.host: required field is missing"]),
        (vec![vs("shop", "cart", json!({"hosts": ["cart"], "http": [{"route": [
            {"destination": {"host": "cart", "subset": "v1"}, "weight": 60},
            {"destination": {"host": "cart", "subset": "v2"}, "weight": 30}
        ]}]}))], vec!["VirtualService shop/cart: spec.http[0].route: the weights of several destinations must sum to 100, got 90"]),
        (vec![vs("shop", "cart", json!({"hosts": ["cart"], "http": [{"match": [{"uri": {"regex": "(unclosed"}}], "route": [{"destination": {"host": "cart"}}]}]}))],
            vec!["VirtualService shop/cart: spec.http[0].match[0].uri.regex: regex \"(unclosed\" does not compile"]),
        (vec![vs("shop", "cart", json!({"hosts": ["cart"], "http": [{"route": [{"destination": {"host": "cart"}}], "timeout": "soon", "fault": {"abort": {"httpStatus": 700}}}]}))],
            vec![
                "VirtualService shop/cart: spec.http[0].timeout: \"soon\" is not a duration",
                "VirtualService shop/cart: spec.http[0].fault.abort.httpStatus: expected an integer 200-599, got 700",
            ]),
        (vec![vs("shop", "cart", json!({"hosts": ["cart"], "http": [{"route": [{"destination": {"host": "cart"}}], "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 101}}}}]}))],
            vec!["VirtualService shop/cart: spec.http[0].fault.delay.percentage.value: expected a percentage 0-100, got 101"]),
        (vec![vs("shop", "cart", json!({"hosts": ["cart"], "http": [{"directResponse": {"status": 200}, "redirect": {"uri": "/x"}}]}))],
            vec!["VirtualService shop/cart: spec.http[0]: set exactly one of route, redirect and directResponse"]),
        (vec![vs("shop", "cart", json!({"http": [{"route": [{"destination": {"host": "cart"}}], "retries": {"attempts": 2, "retryOn": "5xx,sometimes"}}]}))],
            vec!["VirtualService shop/cart: spec.hosts: required field is missing", "VirtualService shop/cart: spec.http[0].retries.retryOn: unknown retry condition \"sometimes\""]),
    ]
    .into_iter()
    .map(|(list, errors)| (MeshState { virtual_services: list, ..base() }, errors))
    .chain([
        (MeshState { destination_rules: vec![dr("shop", "cart", json!({"host": "cart", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}, "outlierDetection": {"interval": "1x"}}}))], ..base() },
            vec![
                "DestinationRule shop/cart: spec.trafficPolicy.loadBalancer.simple: unknown load balancer \"FASTEST\"",
                "DestinationRule shop/cart: spec.trafficPolicy.outlierDetection.interval: \"1x\" is not a duration",
            ]),
        (MeshState { destination_rules: vec![dr("shop", "cart", json!({"host": "cart", "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x", "maglev": {"tableSize": 100}}}}}))], ..base() },
            vec!["DestinationRule shop/cart: spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 100 is not a prime number"]),
        (MeshState { service_entries: vec![se("shop", "ext", json!({"hosts": ["a.example"], "addresses": ["2001:db8::/64"], "ports": [{"number": 80, "protocol": "SMTP"}], "workloadSelector": {"labels": {"app": "x"}}}))], ..base() },
            vec![
                "ServiceEntry shop/ext: spec.addresses[0]: \"2001:db8::/64\" is IPv6; shunt captures IPv4 only",
                "ServiceEntry shop/ext: spec.ports[0].protocol: unknown protocol \"SMTP\"",
                "ServiceEntry shop/ext: spec.workloadSelector: workloadSelector is not supported in local mode; list the endpoints instead",
            ]),
        (MeshState { rate_limit_policies: vec![rl("shop", "r", json!({"service": "cart", "virtualService": {"name": "a", "route": "b"}, "requestsPerSecond": 0}))], ..base() },
            vec![
                "RateLimitPolicy shop/r: spec.requestsPerSecond: expected a number > 0, got 0",
                "RateLimitPolicy shop/r: spec: set exactly one of service and virtualService",
            ]),
    ])
    .collect();
    for (state, expected) in cases {
        let errors: Vec<String> = RouteTable::build(&state)
            .1
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (got, want) in errors.iter().zip(&expected) {
            assert!(
                got.starts_with(want),
                "got {got:?}, want it to start with {want:?}"
            );
        }
    }
}

#[test]
fn an_invalid_object_is_dropped_whole_and_the_rest_applies() {
    let mut state = base();
    state.virtual_services.push(vs(
        "shop",
        "bad",
        json!({"hosts": ["cart"], "http": [
            {"name": "never", "route": [{"destination": {"host": "cart"}}]},
            {"route": [{"destination": {"host": "cart"}}], "timeout": "x"}
        ]}),
    ));
    state.virtual_services.push(vs(
        "shop",
        "good",
        json!({"hosts": ["cart"], "http": [{"name": "good", "directResponse": {"status": 200}}]}),
    ));
    state
        .destination_rules
        .push(dr("shop", "a", json!({"host": "cart"})));
    state.destination_rules.push(dr(
        "shop",
        "b",
        json!({"host": "cart.shop.svc.cluster.local"}),
    ));
    let (table, errors) = RouteTable::build(&state);
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        vec![
            "DestinationRule shop/b: spec.host: host cart.shop.svc.cluster.local already has DestinationRule shop/a (in its namespace the first DestinationRule by creationTimestamp, then name, wins); this one is ignored",
            "VirtualService shop/bad: spec.http[1].timeout: \"x\" is not a duration: expected a number with a unit h, m, s, ms, us or ns, e.g. \"1s\", \"0.5s\", \"100ms\"",
        ]
    );
    assert!(errors[1].drops_object() && !errors[0].drops_object());
    assert_eq!(route(&table, "10.96.0.20:80", &GET), "good -> direct 200");
}

#[test]
fn export_to_and_gateways_limit_where_a_virtual_service_applies() {
    let mut state = base();
    state.virtual_services.push(vs("shop", "local", json!({"hosts": ["cart"], "exportTo": ["."], "http": [{"name": "local", "directResponse": {"status": 201}}]})));
    state.virtual_services.push(vs("shop", "gw", json!({"hosts": ["cart"], "gateways": ["ingress"], "http": [{"name": "gw", "directResponse": {"status": 202}}]})));
    let table = table(&state);
    assert_eq!(route(&table, "10.96.0.20:80", &GET), "local -> direct 201");
    assert_eq!(
        route(
            &table,
            "10.96.0.20:80",
            &Req {
                source: "client",
                ..GET
            }
        ),
        "default -> cart.shop.svc.cluster.local/-:100"
    );
}

#[test]
fn explain_says_why() {
    let mut state = matching_state();
    state.destination_rules.clear();
    state.destination_rules.push(dr("shop", "cart", json!({"host": "cart", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}}}
    ]})));
    let table = table(&state);
    let web = table
        .workloads_by_ip
        .values()
        .find(|w| w.name == "web")
        .unwrap()
        .clone();
    let got = explain::explain(
        &table,
        &web,
        &explain::ExplainRequest {
            url: "http://cart.shop/anything".into(),
            method: Some("POST".into()),
            headers: vec!["x-user: jason".into()],
            principal: None,
            jwt_claims: None,
        },
    )
    .unwrap();
    assert_eq!(
        got.destination,
        "10.96.0.20:80 (ClusterIP of cart.shop.svc.cluster.local)"
    );
    assert_eq!(got.outcome, "route header-and-method");
    assert_eq!(
        got.matched.as_deref(),
        Some(
            "VirtualService shop/cart spec.http[3]: match[0] matched: method exact \"POST\" AND header x-user exact \"jason\"; earlier routes did not match"
        )
    );
    let d = &got.destinations[0];
    assert_eq!(
        d.cluster.as_ref().unwrap().endpoints,
        vec!["10.0.0.3:8080 (shop/cart-v2)"]
    );
    assert_eq!(d.hash_key.as_deref(), Some("header x-user: \"jason\""));
    assert!(!got.weighted_pick);

    let routes = explain::pod_routes(&table, &web);
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].routes.len(), 12);
    assert_eq!(
        routes[0].routes[1].matches,
        vec![vec![
            "uri prefix \"/API\"".to_owned(),
            "ignoreUriCase".to_owned()
        ]]
    );
    assert_eq!(
        routes[0]
            .clusters
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        vec![
            "outbound|80||cart.shop.svc.cluster.local",
            "outbound|80|v1|cart.shop.svc.cluster.local",
            "outbound|80|v2|cart.shop.svc.cluster.local",
        ]
    );
    let _ = labels(&[]);
}

/// A workload of `base()` by name.
fn workload(table: &RouteTable, name: &str) -> Arc<Workload> {
    table
        .workloads_by_ip
        .values()
        .find(|w| w.name == name)
        .cloned()
        .unwrap()
}

#[test]
fn service_entry_export_to_limits_whose_registry_has_it() {
    use OutboundTrafficPolicy::{AllowAny, RegistryOnly};
    // web is in shop (the entry's namespace), client in other.
    for (export_to, mode, source, expected) in [
        (
            json!(null),
            RegistryOnly,
            "client",
            "default -> api.example.com/-:100",
        ),
        (
            json!(["*"]),
            RegistryOnly,
            "client",
            "default -> api.example.com/-:100",
        ),
        (
            json!(["."]),
            RegistryOnly,
            "web",
            "default -> api.example.com/-:100",
        ),
        (json!(["."]), RegistryOnly, "client", "502 api.example.com"),
        (json!(["."]), AllowAny, "client", "allow_any -> {dst}/-:100"),
        (
            json!(["other"]),
            RegistryOnly,
            "client",
            "default -> api.example.com/-:100",
        ),
        (json!(["other"]), RegistryOnly, "web", "502 api.example.com"),
        (json!(["~"]), RegistryOnly, "web", "502 api.example.com"),
    ] {
        let mut state = base();
        state.mesh.outbound_traffic_policy = mode;
        let mut spec = json!({
            "hosts": ["api.example.com"], "addresses": ["240.0.0.1"],
            "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
            "resolution": "STATIC", "endpoints": [{"address": "10.0.0.2"}]
        });
        if !export_to.is_null() {
            spec["exportTo"] = export_to.clone();
        }
        state.service_entries.push(se("shop", "api", spec));
        let table = table(&state);
        let req = Req {
            authority: "api.example.com",
            source,
            ..GET
        };
        // By its address, and by the Host header on an address nothing names.
        for dst in ["240.0.0.1:80", "192.0.2.1:80"] {
            let want = expected.replace("{dst}", dst.trim_end_matches(":80"));
            assert_eq!(route(&table, dst, &req), want, "{export_to} {source} {dst}");
        }
        let visible = !expected.starts_with('5') && !expected.starts_with("allow_any");
        let source = workload(&table, source);
        assert_eq!(
            matches!(
                table.outbound_target(addr("240.0.0.1:80"), Some(&source)),
                OutboundTarget::Service(_)
            ),
            visible,
            "{export_to} {}",
            source.name
        );
        let cluster = table.cluster(
            &Destination {
                host: Host("api.example.com".into()),
                subset: None,
                port: None,
            },
            80,
            Some(&source),
        );
        assert_eq!(
            cluster.err(),
            (!visible).then(|| ClusterError::UnknownHost(Host("api.example.com".into()))),
            "{export_to} {}",
            source.name
        );
    }
}

#[test]
fn service_entry_export_to_hides_tcp_and_tls_hosts() {
    use OutboundTrafficPolicy::{AllowAny, RegistryOnly};
    for (export_to, mode, source, expected) in [
        (json!(["."]), RegistryOnly, "web", "forward"),
        (json!(["."]), RegistryOnly, "client", "blocked"),
        (json!(["."]), AllowAny, "client", "passthrough"),
        (json!(["other"]), RegistryOnly, "client", "forward"),
    ] {
        let mut state = base();
        state.mesh.outbound_traffic_policy = mode;
        // No addresses: the entry claims its port on every unknown address, and its SNI.
        state.service_entries.push(se(
            "shop",
            "tls",
            json!({
                "hosts": ["api.secure.example"], "ports": [{"number": 443, "protocol": "TLS"}],
                "exportTo": export_to
            }),
        ));
        let table = table(&state);
        let source = workload(&table, source);
        for sni in [Some("api.secure.example"), None] {
            let target = table.outbound_target(addr("192.0.2.1:443"), Some(&source));
            let got = match table.tcp_route(&target, sni, Some(&source)) {
                TcpDecision::Forward { .. } => "forward",
                TcpDecision::Passthrough => "passthrough",
                TcpDecision::BlockedByRegistryOnly => "blocked",
                TcpDecision::NoRoute => "no route",
            };
            assert_eq!(got, expected, "{export_to} {} {sni:?}", source.name);
        }
    }
}

#[test]
fn destination_rule_lookup_follows_namespaces_and_export_to() {
    // (namespace, name, host, exportTo) of each rule; the pod asking; the rule in force.
    type Rule = (&'static str, &'static str, &'static str, serde_json::Value);
    let cases: Vec<(Vec<Rule>, &str, Option<&str>)> = vec![
        // The host's namespace serves every client.
        (
            vec![("shop", "a", "cart", json!(null))],
            "web",
            Some("shop/a"),
        ),
        (
            vec![("shop", "a", "cart", json!(null))],
            "client",
            Some("shop/a"),
        ),
        // The client's own namespace first, even over an exact host elsewhere and even with a
        // wildcard.
        (
            vec![
                ("shop", "a", "cart", json!(null)),
                ("other", "o", "cart.shop.svc.cluster.local", json!(null)),
            ],
            "client",
            Some("other/o"),
        ),
        (
            vec![
                ("shop", "a", "cart", json!(null)),
                ("other", "o", "cart.shop.svc.cluster.local", json!(null)),
            ],
            "web",
            Some("shop/a"),
        ),
        (
            vec![
                ("shop", "a", "cart", json!(null)),
                ("other", "w", "*.shop.svc.cluster.local", json!(null)),
            ],
            "client",
            Some("other/w"),
        ),
        // Within one namespace, the exact host beats a wildcard.
        (
            vec![
                ("shop", "w", "*.svc.cluster.local", json!(null)),
                ("shop", "z", "cart", json!(null)),
            ],
            "web",
            Some("shop/z"),
        ),
        // Not exported to the client: not in force for it.
        (vec![("shop", "a", "cart", json!(["."]))], "client", None),
        (
            vec![("shop", "a", "cart", json!(["."]))],
            "web",
            Some("shop/a"),
        ),
        (
            vec![("shop", "a", "cart", json!(["third"]))],
            "client",
            None,
        ),
        (
            vec![("shop", "a", "cart", json!(["third"]))],
            "t",
            Some("shop/a"),
        ),
        // A rule always applies in its own namespace.
        (
            vec![("other", "o", "cart.shop.svc.cluster.local", json!(["shop"]))],
            "client",
            Some("other/o"),
        ),
        (
            vec![("other", "o", "cart.shop.svc.cluster.local", json!(["shop"]))],
            "web",
            Some("other/o"),
        ),
        // Then the root namespace, then the others by namespace/name.
        (
            vec![
                ("aaa", "x", "cart.shop.svc.cluster.local", json!(null)),
                (
                    "istio-system",
                    "root",
                    "cart.shop.svc.cluster.local",
                    json!(null),
                ),
            ],
            "client",
            Some("istio-system/root"),
        ),
        (
            vec![
                ("bbb", "y", "cart.shop.svc.cluster.local", json!(null)),
                ("aaa", "x", "cart.shop.svc.cluster.local", json!(null)),
            ],
            "client",
            Some("aaa/x"),
        ),
        (
            vec![
                ("aaa", "x", "cart.shop.svc.cluster.local", json!(["."])),
                ("bbb", "y", "cart.shop.svc.cluster.local", json!(null)),
            ],
            "client",
            Some("bbb/y"),
        ),
    ];
    for (rules, source, expected) in cases {
        let mut state = base();
        state.workloads.push(pod("third", "t", [10, 0, 2, 1], "t"));
        for (namespace, name, host, export_to) in &rules {
            let mut spec =
                json!({"host": host, "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}});
            if !export_to.is_null() {
                spec["exportTo"] = export_to.clone();
            }
            state.destination_rules.push(dr(namespace, name, spec));
        }
        let table = table(&state);
        let source = workload(&table, source);
        let cluster = table
            .cluster(
                &Destination {
                    host: Host("cart.shop.svc.cluster.local".into()),
                    subset: None,
                    port: None,
                },
                80,
                Some(&source),
            )
            .unwrap();
        let rule = cluster
            .policy
            .source
            .as_ref()
            .map(|r| format!("{}/{}", r.namespace, r.name));
        assert_eq!(rule.as_deref(), expected, "{rules:?} from {}", source.name);
        let expected_lb = if expected.is_some() {
            LoadBalancer::Random
        } else {
            LoadBalancer::RoundRobin
        };
        assert_eq!(cluster.policy.load_balancer, expected_lb);
        // `shuntctl` shows the same rule.
        let shown = explain::pod_routes(&table, &source)
            .into_iter()
            .find(|h| h.host == "cart.shop.svc.cluster.local")
            .and_then(|h| h.destination_rule);
        assert_eq!(
            shown,
            expected.map(|e| format!("DestinationRule {e}")),
            "{rules:?} from {}",
            source.name
        );
    }
}

#[test]
fn a_subset_is_only_there_for_clients_that_see_its_rule() {
    let mut state = base();
    state.destination_rules.push(dr(
        "shop",
        "cart",
        json!({"host": "cart", "exportTo": ["."], "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
    ));
    // Defined somewhere: no load-time warning.
    state.virtual_services.push(vs(
        "shop",
        "cart",
        json!({"hosts": ["cart"], "http": [{"route": [{"destination": {"host": "cart", "subset": "v1"}}]}]}),
    ));
    let table = table(&state);
    for (source, expected) in [
        ("web", Ok(vec!["10.0.0.2:8080".to_owned()])),
        (
            "client",
            Err(ClusterError::UnknownSubset {
                host: Host("cart.shop.svc.cluster.local".into()),
                subset: "v1".into(),
            }),
        ),
    ] {
        let source = workload(&table, source);
        let got = table
            .cluster(
                &Destination {
                    host: Host("cart.shop.svc.cluster.local".into()),
                    subset: Some("v1".into()),
                    port: None,
                },
                80,
                Some(&source),
            )
            .map(|c| {
                c.endpoints
                    .iter()
                    .map(|e| e.addr.to_string())
                    .collect::<Vec<_>>()
            });
        assert_eq!(got, expected, "from {}", source.name);
    }
}

#[test]
fn destination_subnets_match_the_dialled_address() {
    let mut state = base();
    let mut redis = service(
        "shop",
        "redis",
        [10, 96, 0, 30],
        "redis",
        &[(6379, TargetPort::Number(6379))],
    );
    redis.ports[0].name = Some("tcp-redis".into());
    state.services.push(redis);
    // Reached through a CIDR address, and through a single address.
    state.service_entries.push(se(
        "shop",
        "db",
        json!({
            "hosts": ["db.internal"], "addresses": ["10.98.0.0/16", "10.97.0.1"],
            "ports": [{"number": 5432, "protocol": "TCP"}],
            "resolution": "STATIC", "endpoints": [{"address": "10.0.0.7"}]
        }),
    ));
    state.virtual_services.push(vs("shop", "db", json!({"hosts": ["db.internal"], "tcp": [
        {"match": [{"destinationSubnets": ["10.98.1.0/24"]}], "route": [{"destination": {"host": "db.internal"}}]},
        {"match": [{"destinationSubnets": ["10.97.0.1"]}], "route": [{"destination": {"host": "db.internal"}}]},
        {"route": [{"destination": {"host": "db.internal"}}]}
    ]})));
    state.virtual_services.push(vs("shop", "redis", json!({"hosts": ["redis"], "tcp": [
        {"match": [{"destinationSubnets": ["10.96.0.0/24"]}], "route": [{"destination": {"host": "redis"}}]},
        {"route": [{"destination": {"host": "redis"}}]}
    ]})));
    let table = table(&state);
    let web = workload(&table, "web");
    for (dst, expected) in [
        ("10.98.1.7:5432", "db.tcp.0"),
        ("10.98.2.7:5432", "db.tcp.2"),
        ("10.97.0.1:5432", "db.tcp.1"),
        ("10.96.0.30:6379", "redis.tcp.0"),
    ] {
        let target = table.outbound_target(addr(dst), Some(&web));
        let OutboundTarget::Service(service) = &target else {
            panic!("{dst} is not a registry address");
        };
        assert_eq!(service.dst, addr(dst));
        let got = match table.tcp_route(&target, None, Some(&web)) {
            TcpDecision::Forward { route_name, .. } => route_name.to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(got, expected, "{dst}");
    }
}

#[test]
fn a_route_to_an_undefined_subset_is_a_warning() {
    let mut state = base();
    state.destination_rules.push(dr(
        "shop",
        "cart",
        json!({"host": "cart", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
    ));
    state.virtual_services.push(vs(
        "shop",
        "cart",
        json!({"hosts": ["cart"],
            "http": [{
                "route": [
                    {"destination": {"host": "cart", "subset": "v1"}, "weight": 50},
                    {"destination": {"host": "cart", "subset": "v3"}, "weight": 50}
                ],
                "mirror": {"host": "cart.shop.svc.cluster.local", "subset": "v1"},
                "mirrors": [{"destination": {"host": "cart", "subset": "v4"}}]
            }],
            "tcp": [{"route": [{"destination": {"host": "cart", "subset": "v5"}}]}]
        }),
    ));
    let (table, errors) = RouteTable::build(&state);
    let got: Vec<(String, String, bool)> = errors
        .iter()
        .map(|e| {
            (
                e.object().to_string(),
                e.field().to_owned(),
                e.drops_object(),
            )
        })
        .collect();
    let warning = |field: &str| {
        (
            "VirtualService shop/cart".to_owned(),
            field.to_owned(),
            false,
        )
    };
    assert_eq!(
        got,
        vec![
            warning("spec.http[0].route[1].destination.subset"),
            warning("spec.http[0].mirrors[0].destination.subset"),
            warning("spec.tcp[0].route[0].destination.subset"),
        ]
    );
    assert!(matches!(&errors[0], Error::Warning { .. }));
    assert_eq!(
        errors[0].to_string(),
        "VirtualService shop/cart: spec.http[0].route[1].destination.subset: referenced \
         host+subset in destinationrule not found: \"cart.shop.svc.cluster.local+v3\" (IST0101: \
         no DestinationRule for cart.shop.svc.cluster.local defines subset \"v3\"); requests \
         routed there get 503 NC until one does"
    );
    // The object still applies; the undefined subset has no cluster (503 NC at request time).
    assert_eq!(
        route(&table, "10.96.0.20:80", &GET),
        "cart.0 -> cart.shop.svc.cluster.local/v1:50,cart.shop.svc.cluster.local/v3:50"
    );
    let web = workload(&table, "web");
    assert!(matches!(
        table.cluster(
            &Destination {
                host: Host("cart.shop.svc.cluster.local".into()),
                subset: Some("v3".into()),
                port: None,
            },
            80,
            Some(&web),
        ),
        Err(ClusterError::UnknownSubset { .. })
    ));
}

#[test]
fn dns_service_entries_resolve_their_endpoints_or_their_hosts() {
    let mut state = base();
    state.service_entries.push(se(
        "shop",
        "db",
        json!({
            "hosts": ["db.example.internal"], "addresses": ["10.250.0.5"],
            "ports": [{"number": 8080, "name": "http", "protocol": "HTTP"}],
            "resolution": "DNS", "endpoints": [{"address": "localhost"}]
        }),
    ));
    state.service_entries.push(se(
        "shop",
        "api",
        json!({
            "hosts": ["api.example.com", "api2.example.com"],
            "ports": [{"number": 443, "name": "https", "protocol": "TLS", "targetPort": 8443}],
            "resolution": "DNS_ROUND_ROBIN"
        }),
    ));
    state.service_entries.push(se("shop", "mixed", json!({
        "hosts": ["mixed.example"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "resolution": "DNS", "endpoints": [
            {"address": "B.example.net", "ports": {"http": 9090}, "weight": 3, "labels": {"version": "v2"}},
            {"address": "10.0.0.9"},
            {"address": "a.example.net", "labels": {"version": "v1"}}
        ]
    })));
    // With endpoints, a wildcard host is fine: the endpoints are resolved, not the host.
    state.service_entries.push(se("shop", "wild", json!({
        "hosts": ["*.wild.example"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "resolution": "DNS", "endpoints": [{"address": "proxy.wild.example"}]
    })));
    state.destination_rules.push(dr(
        "shop",
        "mixed",
        json!({"host": "mixed.example", "subsets": [
            {"name": "v1", "labels": {"version": "v1"}}
        ]}),
    ));
    let table = table(&state);
    for (host, subset, port, endpoints, names) in [
        (
            "db.example.internal",
            None,
            8080,
            vec![],
            vec!["localhost:8080/1"],
        ),
        (
            "api.example.com",
            None,
            443,
            vec![],
            vec!["api.example.com:8443/1"],
        ),
        (
            "api2.example.com",
            None,
            443,
            vec![],
            vec!["api2.example.com:8443/1"],
        ),
        (
            "mixed.example",
            None,
            80,
            vec!["10.0.0.9:80"],
            vec!["a.example.net:80/1", "b.example.net:9090/3"],
        ),
        (
            "mixed.example",
            Some("v1"),
            80,
            vec![],
            vec!["a.example.net:80/1"],
        ),
        (
            "*.wild.example",
            None,
            80,
            vec![],
            vec!["proxy.wild.example:80/1"],
        ),
    ] {
        let cluster = table
            .cluster(
                &Destination {
                    host: Host(host.into()),
                    subset: subset.map(Into::into),
                    port: Some(port),
                },
                port,
                None,
            )
            .unwrap();
        let got_endpoints: Vec<String> = cluster
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect();
        let got_names: Vec<String> = cluster
            .dns
            .iter()
            .map(|d| format!("{}:{}/{}", d.name, d.port, d.weight))
            .collect();
        assert_eq!(
            (got_endpoints, got_names),
            (
                endpoints.iter().map(ToString::to_string).collect(),
                names.iter().map(ToString::to_string).collect()
            ),
            "{host} {subset:?}"
        );
        // The resolved names are dialled, never the original destination.
        assert_ne!(
            cluster.policy.load_balancer,
            LoadBalancer::Passthrough,
            "{host}"
        );
        assert_eq!(
            cluster.service_entry.as_ref().map(|o| o.kind),
            Some("ServiceEntry"),
            "{host}"
        );
    }
    // `shuntctl explain` names what the proxy resolves.
    let client = workload(&table, "web");
    let explanation = explain::explain(
        &table,
        &client,
        &explain::ExplainRequest {
            method: None,
            url: "http://db.example.internal:8080/".into(),
            headers: Vec::new(),
            principal: None,
            jwt_claims: None,
        },
    )
    .unwrap();
    let cluster = explanation.destinations[0].cluster.as_ref().unwrap();
    assert_eq!(
        cluster.endpoints,
        vec!["localhost:8080 (resolved by the proxy's DNS, IPv4 answers, every 30s)"]
    );
}

#[test]
fn dns_service_entry_validation() {
    for (spec, expected) in [
        (
            json!({"hosts": ["ok.example", "*.wild.example"], "ports": [{"number": 80, "protocol": "HTTP"}], "resolution": "DNS"}),
            "ServiceEntry shop/ext: spec.hosts[1]: \"*.wild.example\" is a wildcard, which resolution DNS cannot resolve",
        ),
        (
            json!({"hosts": ["ok.example"], "ports": [{"number": 80, "protocol": "HTTP"}], "resolution": "DNS", "endpoints": [{"address": "not a name!"}]}),
            "ServiceEntry shop/ext: spec.endpoints[0].address: \"not a name!\" is neither an IPv4 address nor a DNS name",
        ),
    ] {
        let state = MeshState {
            service_entries: vec![se("shop", "ext", spec)],
            ..base()
        };
        let (table, errors) = RouteTable::build(&state);
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].starts_with(expected),
            "got {:?}, want {expected:?}",
            errors[0]
        );
        // Rejected whole, as Istio does.
        let ok = Destination {
            host: Host("ok.example".into()),
            subset: None,
            port: Some(80),
        };
        assert!(table.cluster(&ok, 80, None).is_err());
    }
}

#[test]
fn access_log_file_turns_the_access_log_on_and_off() {
    use crate::istio::MeshConfig;
    let cases = [
        (None, Ok(AccessLogOutput::Stdout)),
        (Some("/dev/stdout"), Ok(AccessLogOutput::Stdout)),
        (Some(""), Ok(AccessLogOutput::Off)),
        (Some("/dev/stderr"), Err("data.mesh.accessLogFile")),
    ];
    for (file, expected) in cases {
        let config = MeshConfig {
            access_log_file: file.map(str::to_owned),
            ..MeshConfig::default()
        };
        let settings = crate::routing::mesh_settings(&config, "data.mesh");
        match expected {
            Ok(output) => assert_eq!(settings.unwrap().access_log, output, "{file:?}"),
            Err(field) => {
                let problems = settings.unwrap_err();
                assert_eq!(problems.len(), 1, "{problems:?}");
                assert_eq!(problems[0].0, field);
                assert!(problems[0].1.contains("/dev/stdout"), "{problems:?}");
            }
        }
    }
}

#[test]
fn num_trusted_proxies_that_is_invalid_fails_closed() {
    use crate::settings::TrustedProxies;
    let hops = |n: serde_json::Value| json!({"defaultConfig": {"gatewayTopology": {"numTrustedProxies": n}}});
    let cases = [
        (json!({}), TrustedProxies::Hops(0)),
        (hops(json!(2)), TrustedProxies::Hops(2)),
        (hops(json!(64)), TrustedProxies::Hops(64)),
        (hops(json!(-1)), TrustedProxies::Invalid),
        (hops(json!(65)), TrustedProxies::Invalid),
        (hops(json!("two")), TrustedProxies::Invalid),
        (hops(json!(1.5)), TrustedProxies::Invalid),
    ];
    for (text, want) in cases {
        let config: crate::istio::MeshConfig = serde_json::from_value(text.clone()).unwrap();
        let (got, problem) = crate::routing::trusted_proxies(&config);
        assert_eq!(got, want, "{text}");
        assert_eq!(problem.is_some(), want == TrustedProxies::Invalid, "{text}");
        if let Some((field, message)) = problem {
            assert_eq!(field, "defaultConfig.gatewayTopology.numTrustedProxies");
            assert!(message.contains("fail closed"), "{message}");
        }
        // The rest of the mesh config still applies, with the value as found.
        let settings = crate::routing::mesh_settings(&config, "data.mesh").unwrap();
        assert_eq!(settings.num_trusted_proxies, want, "{text}");
    }
}

/// What the legacy round-robin router's readiness test checked, on the route table the data
/// path uses: a pod that is not ready is no endpoint of its Service's clusters, and a
/// readiness change takes it in or out with the next state.
#[test]
fn readiness_takes_pods_in_and_out_of_a_services_clusters() {
    let endpoints = |state: &MeshState| -> Vec<String> {
        table(state)
            .cluster(
                &Destination {
                    host: Host("cart.shop.svc.cluster.local".into()),
                    subset: None,
                    port: None,
                },
                80,
                None,
            )
            .unwrap()
            .endpoints
            .iter()
            .map(|e| e.addr.to_string())
            .collect()
    };
    let mut state = base();
    assert_eq!(endpoints(&state), vec!["10.0.0.2:8080", "10.0.0.3:8080"]);
    for (not_ready, expected) in [
        (vec!["cart-v1"], vec!["10.0.0.3:8080"]),
        (vec!["cart-v1", "cart-v2"], vec![]),
        (vec![], vec!["10.0.0.2:8080", "10.0.0.3:8080"]),
    ] {
        for workload in &mut state.workloads {
            workload.ready = !not_ready.contains(&workload.name.as_str());
        }
        assert_eq!(endpoints(&state), expected, "not ready: {not_ready:?}");
    }
}

/// `trafficPolicy.tls` merges like the other parts: a subset's replaces the top level's, a
/// port level's replaces its level's.
#[test]
fn destination_rule_tls_merges_top_subset_and_port() {
    let mut state = base();
    state.services[0].ports.push(crate::model::ServicePort {
        name: Some("https".into()),
        port: 443,
        target_port: TargetPort::Number(8443),
        protocol: "TCP".into(),
        app_protocol: None,
        endpoints: None,
    });
    state.destination_rules.push(dr("shop", "cart", json!({
        "host": "cart",
        "trafficPolicy": {
            "tls": {"mode": "SIMPLE", "caCertificates": "/etc/certs/ca.pem", "sni": "cart.example.com"},
            "portLevelSettings": [{"port": {"number": 443}, "tls": {"mode": "MUTUAL", "clientCertificate": "/etc/certs/c.pem", "privateKey": "/etc/certs/k.pem"}}]
        },
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"}},
            {"name": "v2", "labels": {"version": "v2"}, "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"},
                "portLevelSettings": [{"port": {"number": 80}, "tls": {"mode": "DISABLE"}}]}}
        ]
    })));
    let table = table(&state);
    let tls = |subset: Option<&str>, port: u16| {
        table
            .cluster(
                &Destination {
                    host: Host("cart.shop.svc.cluster.local".into()),
                    subset: subset.map(Into::into),
                    port: Some(port),
                },
                port,
                None,
            )
            .unwrap()
            .policy
            .tls
            .clone()
    };
    let simple = Some(UpstreamTls::Originate(TlsOrigination {
        client_certificate: None,
        verify: ServerVerification::Verify {
            roots: TrustRoots::CaFile("/etc/certs/ca.pem".into()),
            subject_alt_names: vec![],
        },
        sni: Some("cart.example.com".into()),
    }));
    let mutual = Some(UpstreamTls::Originate(TlsOrigination {
        client_certificate: Some(ClientCertificate::Files {
            certificate_chain: "/etc/certs/c.pem".into(),
            private_key: "/etc/certs/k.pem".into(),
        }),
        verify: ServerVerification::Verify {
            roots: TrustRoots::System,
            subject_alt_names: vec![],
        },
        sni: None,
    }));
    let istio_mutual = Some(UpstreamTls::IstioMutual {
        sni: None,
        subject_alt_names: vec![],
    });
    let cases = [
        (None, 80, &simple),
        (None, 443, &mutual),
        (Some("v1"), 80, &simple),
        (Some("v1"), 443, &mutual),
        (Some("v2"), 80, &Some(UpstreamTls::Disable)),
        (Some("v2"), 443, &istio_mutual),
    ];
    for (subset, port, want) in cases {
        assert_eq!(&tls(subset, port), want, "{subset:?}:{port}");
    }
    // No rule: nothing said, the data path's default.
    let (plain, _) = RouteTable::build(&base());
    let cluster = plain
        .cluster(
            &Destination {
                host: Host("cart.shop.svc.cluster.local".into()),
                subset: None,
                port: None,
            },
            80,
            None,
        )
        .unwrap();
    assert_eq!(cluster.policy.tls, None);
}

#[test]
fn destination_rule_tls_problems_reject_the_rule_and_warnings_keep_it() {
    let cases: Vec<(serde_json::Value, Vec<&str>, bool)> = vec![
        (
            json!({"mode": "MUTUAL", "caCertificates": "/ca.pem"}),
            vec![
                "DestinationRule shop/cart: spec.trafficPolicy.tls.clientCertificate: mode MUTUAL needs clientCertificate and privateKey",
                "DestinationRule shop/cart: spec.trafficPolicy.tls.privateKey: mode MUTUAL needs clientCertificate and privateKey",
            ],
            true,
        ),
        (
            json!({"mode": "TLS"}),
            vec![
                "DestinationRule shop/cart: spec.trafficPolicy.tls.mode: unknown TLS mode \"TLS\"",
            ],
            true,
        ),
        (
            json!({"mode": "SIMPLE", "credentialName": "cart-ca"}),
            vec![
                "DestinationRule shop/cart: spec.trafficPolicy.tls.credentialName: local mode reads no Secrets",
            ],
            false,
        ),
        (
            json!({"mode": "DISABLE", "sni": "cart.example.com"}),
            vec![
                "DestinationRule shop/cart: spec.trafficPolicy.tls.sni: mode DISABLE sends no TLS: ignored",
            ],
            false,
        ),
    ];
    for (tls, expected, dropped) in cases {
        let mut state = base();
        state.destination_rules.push(dr(
            "shop",
            "cart",
            json!({"host": "cart", "trafficPolicy": {"tls": tls}}),
        ));
        let errors = RouteTable::build(&state).1;
        let got: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), expected.len(), "{got:#?}");
        for (got, want) in got.iter().zip(&expected) {
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
        assert!(
            errors.iter().all(|e| e.drops_object() == dropped),
            "{errors:?}"
        );
    }
}

/// A rejected DestinationRule that asked for TLS stands where it would have: its clusters
/// refuse connections, for the clients it would have applied to.
#[test]
fn a_rejected_destination_rule_that_asked_for_tls_refuses_connections() {
    let rejected =
        |namespace: &str, name: &str, created: Option<&str>, export_to: Option<Vec<String>>| {
            istio::RejectedDestinationRule {
                metadata: istio::Metadata {
                    name: name.into(),
                    namespace: namespace.into(),
                    creation_timestamp: created.map(str::to_owned),
                },
                host: "cart".into(),
                export_to,
            }
        };
    let refuse = |namespace: &str, name: &str| {
        Some(UpstreamTls::Refuse {
            rule: ObjectRef {
                kind: "DestinationRule",
                namespace: namespace.into(),
                name: name.into(),
            },
        })
    };
    // (valid rules, rejected rules, client pod, the cluster's tls for that client)
    type Case = (
        Vec<istio::DestinationRule>,
        Vec<istio::RejectedDestinationRule>,
        &'static str,
        Option<UpstreamTls>,
    );
    let cases: Vec<Case> = vec![
        (
            vec![],
            vec![rejected("shop", "cart", None, Some(vec![]))],
            "web",
            refuse("shop", "cart"),
        ),
        (
            vec![],
            vec![rejected("shop", "cart", None, Some(vec![]))],
            "client",
            refuse("shop", "cart"),
        ),
        // exportTo as written limits it; unreadable exports it everywhere.
        (
            vec![],
            vec![rejected("shop", "cart", None, Some(vec![".".into()]))],
            "client",
            None,
        ),
        (
            vec![],
            vec![rejected("shop", "cart", None, None)],
            "client",
            refuse("shop", "cart"),
        ),
        // The client's own namespace's valid rule still comes first.
        (
            vec![dr(
                "other",
                "mine",
                json!({"host": "cart.shop.svc.cluster.local", "trafficPolicy": {"tls": {"mode": "DISABLE"}}}),
            )],
            vec![rejected("shop", "cart", None, Some(vec![]))],
            "client",
            Some(UpstreamTls::Disable),
        ),
        // In one namespace the older rule stays: an older valid one beats the stand-in...
        (
            vec![with_created(
                dr("shop", "old", json!({"host": "cart"})),
                "2024-01-01T00:00:00Z",
            )],
            vec![rejected(
                "shop",
                "new",
                Some("2024-06-01T00:00:00Z"),
                Some(vec![]),
            )],
            "web",
            None,
        ),
        // ...and an older stand-in beats a newer valid one.
        (
            vec![with_created(
                dr("shop", "new", json!({"host": "cart"})),
                "2024-06-01T00:00:00Z",
            )],
            vec![rejected(
                "shop",
                "old",
                Some("2024-01-01T00:00:00Z"),
                Some(vec![]),
            )],
            "web",
            refuse("shop", "old"),
        ),
    ];
    for (valid, fail_closed, client, want) in cases {
        let mut state = base();
        state.destination_rules = valid;
        state.fail_closed.destination_rules = fail_closed;
        let (table, _) = RouteTable::build(&state);
        let source = workload(&table, client);
        let cluster = table
            .cluster(
                &Destination {
                    host: Host("cart.shop.svc.cluster.local".into()),
                    subset: None,
                    port: None,
                },
                80,
                Some(&source),
            )
            .unwrap();
        assert_eq!(
            cluster.policy.tls, want,
            "{client}: {:?}",
            state.fail_closed
        );
    }
}

fn with_created(mut rule: istio::DestinationRule, created: &str) -> istio::DestinationRule {
    rule.metadata.creation_timestamp = Some(created.into());
    rule
}

#[test]
fn the_root_namespace_of_destination_rules_comes_from_the_mesh_config() {
    let mut state = base();
    state.destination_rules = vec![
        dr(
            "mesh-root",
            "root",
            json!({"host": "cart.shop.svc.cluster.local"}),
        ),
        dr("aaa", "x", json!({"host": "cart.shop.svc.cluster.local"})),
    ];
    let source_of = |state: &MeshState| {
        let (table, _) = RouteTable::build(state);
        let client = workload(&table, "client");
        table
            .cluster(
                &Destination {
                    host: Host("cart.shop.svc.cluster.local".into()),
                    subset: None,
                    port: None,
                },
                80,
                Some(&client),
            )
            .unwrap()
            .policy
            .source
            .as_ref()
            .map(ToString::to_string)
    };
    assert_eq!(source_of(&state).as_deref(), Some("DestinationRule aaa/x"));
    state.mesh.root_namespace = "mesh-root".into();
    assert_eq!(
        source_of(&state).as_deref(),
        Some("DestinationRule mesh-root/root")
    );
}
