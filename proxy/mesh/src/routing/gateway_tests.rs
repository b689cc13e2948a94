//! The gateway compiler and lookups: servers merged per gateway pod, conflicts, VirtualService
//! binding (`gateways:` forms and per-match `gateways`), host and SNI choice, redirects.

use serde_json::{Value, json};

use super::*;
use crate::gateway::{GatewayProtocol, ServerTlsMode};
use crate::istio;
use crate::model::{MeshState, TargetPort, Workload};
use crate::testing::{labels, pod, service};

fn object<T: serde::de::DeserializeOwned>(namespace: &str, name: &str, spec: Value) -> T {
    serde_json::from_value(
        json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec}),
    )
    .unwrap()
}

fn gateway_pod() -> Workload {
    let mut w = pod(
        "istio-system",
        "ingress",
        [10, 0, 0, 5],
        "istio-ingressgateway",
    );
    w.labels = labels(&[("istio", "ingressgateway")]);
    w.captured = false;
    w.node = Some("local".into());
    w
}

fn state(gateways: &[Value], virtual_services: &[(&str, &str, Value)]) -> MeshState {
    let mut web = service(
        "shop",
        "web",
        [10, 96, 0, 10],
        "web",
        &[(80, TargetPort::Number(8080))],
    );
    web.ports[0].name = Some("http".into());
    let mut api = service(
        "shop",
        "api",
        [10, 96, 0, 11],
        "api",
        &[(80, TargetPort::Number(8080))],
    );
    api.ports[0].name = Some("http".into());
    MeshState {
        workloads: vec![
            gateway_pod(),
            pod("shop", "web-1", [10, 0, 0, 10], "web"),
            pod("shop", "api-1", [10, 0, 0, 11], "api"),
        ],
        services: vec![web, api],
        gateways: gateways
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let mut g: istio::Gateway = object("istio-system", &format!("gw{i}"), spec.clone());
                g.metadata.creation_timestamp = Some(format!("2026-01-0{}T00:00:00Z", i + 1));
                g
            })
            .collect(),
        virtual_services: virtual_services
            .iter()
            .map(|(ns, name, spec)| object(ns, name, spec.clone()))
            .collect(),
        ..MeshState::default()
    }
}

fn http_server(port: u16, hosts: &[&str]) -> Value {
    json!({"port": {"number": port, "name": "http", "protocol": "HTTP"}, "hosts": hosts})
}

fn build(state: &MeshState) -> (RouteTable, Vec<Error>) {
    RouteTable::build(state)
}

/// Where an HTTP request to `authority` on gateway port `port` goes: the route's destination
/// host, or the decision's name.
fn route(table: &RouteTable, port: u16, authority: &str, path: &str) -> String {
    let uid = gateway_pod().uid;
    let Some(target) = table.gateway_target(&uid, port, None) else {
        return "no port".into();
    };
    let uri: http::Uri = path.parse().unwrap();
    let headers = http::HeaderMap::new();
    let facts = RequestFacts {
        method: &http::Method::GET,
        uri: &uri,
        authority: Some(authority),
        headers: &headers,
        port,
        source: None,
    };
    match table.http_route(&target, &facts) {
        HttpDecision::Route(route) => match &route.action {
            HttpAction::Forward(list) => list[0].destination.host.to_string(),
            HttpAction::Redirect(_) => "redirect".into(),
            HttpAction::DirectResponse { status, .. } => format!("direct {}", status.as_u16()),
        },
        HttpDecision::NoRouteMatched { .. } => "404 no route".into(),
        HttpDecision::NoVirtualHost { .. } => "404 no virtual host".into(),
        HttpDecision::HttpsRedirect => "301".into(),
        HttpDecision::BlockedByRegistryOnly { .. } => "502".into(),
    }
}

const WEB: &str = "web.shop.svc.cluster.local";
const API: &str = "api.shop.svc.cluster.local";

#[test]
fn virtual_services_bind_to_gateways_by_each_form_and_route_by_host() {
    let to = |host: &str| json!([{"route": [{"destination": {"host": host}}]}]);
    let gateways =
        [json!({"selector": {"istio": "ingressgateway"}, "servers": [http_server(80, &["*"])]})];
    /// (case, VirtualService spec, [(authority, path, where it goes)])
    type Case<'a> = (&'a str, Value, &'a [(&'a str, &'a str, &'a str)]);
    let cases: &[Case<'_>] = &[
        // ns/name
        (
            "ns/name",
            json!({"hosts": ["*"], "gateways": ["istio-system/gw0"], "http": to("web")}),
            &[("any.example.test", "/", WEB)],
        ),
        // a bare name is in the VirtualService's namespace: shop/gw0 does not exist.
        (
            "bare name elsewhere",
            json!({"hosts": ["*"], "gateways": ["gw0"], "http": to("web")}),
            &[("any.example.test", "/", "404 no virtual host")],
        ),
        // no gateways: the mesh only.
        (
            "mesh only",
            json!({"hosts": ["*"], "http": to("web")}),
            &[("any.example.test", "/", "404 no virtual host")],
        ),
        (
            "mesh and gateway",
            json!({"hosts": ["a.example.test"], "gateways": ["mesh", "istio-system/gw0"], "http": to("api")}),
            &[
                ("a.example.test", "/", API),
                ("a.example.test:80", "/", API),
                ("b.example.test", "/", "404 no virtual host"),
            ],
        ),
        // per-match gateways: the first route only at the gateway, the second only in the mesh.
        (
            "per match",
            json!({"hosts": ["*"], "gateways": ["mesh", "istio-system/gw0"], "http": [
               {"match": [{"gateways": ["istio-system/gw0"], "uri": {"prefix": "/gw"}}], "route": [{"destination": {"host": "api"}}]},
               {"match": [{"gateways": ["mesh"]}], "route": [{"destination": {"host": "web"}}]},
            ]}),
            &[
                ("x.example.test", "/gw/1", API),
                ("x.example.test", "/other", "404 no route"),
            ],
        ),
    ];
    for (what, spec, requests) in cases {
        let state = state(&gateways, &[("shop", "vs", spec.clone())]);
        let (table, errors) = build(&state);
        assert_eq!(errors, vec![], "{what}");
        for (authority, path, want) in *requests {
            assert_eq!(
                route(&table, 80, authority, path),
                *want,
                "{what}: {authority}{path}"
            );
        }
    }
}

#[test]
fn the_most_specific_host_wins_and_server_hosts_limit_namespaces() {
    let gateways = [json!({"selector": {"istio": "ingressgateway"}, "servers": [
        http_server(80, &["*.example.test"]),
        http_server(8080, &["other-ns/*"]),
    ]})];
    let vss = [
        (
            "shop",
            "wild",
            json!({"hosts": ["*.example.test"], "gateways": ["istio-system/gw0"], "http": [{"route": [{"destination": {"host": "web"}}]}]}),
        ),
        (
            "shop",
            "exact",
            json!({"hosts": ["a.example.test"], "gateways": ["istio-system/gw0"], "http": [{"route": [{"destination": {"host": "api"}}]}]}),
        ),
    ];
    let (table, errors) = build(&state(&gateways, &vss));
    assert_eq!(errors, vec![]);
    let cases = [
        (80, "a.example.test", API),
        (80, "b.example.test", WEB),
        (80, "A.Example.Test", API),
        // Not a host of the server.
        (80, "example.org", "404 no virtual host"),
        // The server admits only VirtualServices of other-ns.
        (8080, "a.example.test", "404 no virtual host"),
        (9999, "a.example.test", "no port"),
    ];
    for (port, authority, want) in cases {
        assert_eq!(
            route(&table, port, authority, "/"),
            want,
            "{port} {authority}"
        );
    }
}

#[test]
fn https_redirect_answers_before_routing() {
    let gateways = [json!({"selector": {"istio": "ingressgateway"}, "servers": [
        {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"], "tls": {"httpsRedirect": true}},
    ]})];
    let vss = [(
        "shop",
        "vs",
        json!({"hosts": ["*"], "gateways": ["istio-system/gw0"], "http": [{"route": [{"destination": {"host": "web"}}]}]}),
    )];
    let (table, errors) = build(&state(&gateways, &vss));
    assert_eq!(errors, vec![]);
    assert_eq!(route(&table, 80, "a.example.test", "/x"), "301");
}

#[test]
fn servers_merge_per_port_and_conflicts_name_both_gateways() {
    let gateways = [
        json!({"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 443, "name": "https-a", "protocol": "HTTPS"}, "hosts": ["a.example.test"],
             "tls": {"mode": "SIMPLE", "credentialName": "a-cert"}}]}),
        json!({"selector": {"istio": "ingressgateway"}, "servers": [
            {"port": {"number": 443, "name": "https-b", "protocol": "HTTPS"}, "hosts": ["b.example.test"],
             "tls": {"mode": "SIMPLE", "credentialName": "b-cert"}},
            // The same host again on the same port: a conflict with gw0.
            {"port": {"number": 443, "name": "https-a2", "protocol": "HTTPS"}, "hosts": ["a.example.test"],
             "tls": {"mode": "SIMPLE", "credentialName": "a2-cert"}},
            // Another protocol on a port gw0 opened as HTTPS: a conflict.
            {"port": {"number": 443, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]}]}),
    ];
    let (table, errors) = build(&state(&gateways, &[]));
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    assert!(
        messages[0].contains("Gateway istio-system/gw1: spec.servers[1].hosts")
            && messages[0].contains("Gateway istio-system/gw0 spec.servers[0]"),
        "{messages:#?}"
    );
    assert!(
        messages[1].contains("spec.servers[2].port.protocol")
            && messages[1].contains("Gateway istio-system/gw0"),
        "{messages:#?}"
    );
    let listeners = table.gateway_listeners(&gateway_pod().uid).unwrap();
    assert_eq!(listeners.ports.len(), 1);
    let port = &listeners.ports[0];
    assert_eq!(port.protocol, GatewayProtocol::Https);
    assert_eq!(port.servers.len(), 2);
    // SNI picks the server; no SNI finds none (no `*` host).
    let name = |sni: Option<&str>| {
        port.server_for_sni(sni)
            .and_then(|s| s.name.as_deref().map(str::to_owned))
    };
    assert_eq!(name(Some("b.example.test")).as_deref(), Some("https-b"));
    assert_eq!(name(Some("A.example.test")).as_deref(), Some("https-a"));
    assert_eq!(name(Some("c.example.test")), None);
    assert_eq!(name(None), None);
    // The credentials this node's servers need.
    assert_eq!(
        table.gateway_credentials("local"),
        vec![
            ("istio-system".into(), "a-cert".into()),
            ("istio-system".into(), "b-cert".into())
        ]
    );
    assert!(matches!(
        port.servers[0].tls.as_ref().unwrap().mode,
        Some(ServerTlsMode::Simple(_))
    ));
}

#[test]
fn bad_servers_are_named_by_field() {
    let cases: &[(Value, &str)] = &[
        (
            json!({"servers": [http_server(80, &["*"])]}),
            "spec.selector: required",
        ),
        (
            json!({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "protocol": "HTTQ"}, "hosts": ["*"]}]}),
            "spec.servers[0].port.protocol: unknown protocol \"HTTQ\"",
        ),
        (
            json!({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 443, "protocol": "HTTPS"}, "hosts": ["a.test"]}]}),
            "spec.servers[0].tls: required for an HTTPS server",
        ),
        (
            json!({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 443, "protocol": "HTTPS"}, "hosts": ["a.test"], "tls": {"mode": "SIMPLE"}}]}),
            "spec.servers[0].tls.credentialName: required",
        ),
        (
            json!({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 443, "protocol": "HTTPS"}, "hosts": ["a.test"], "tls": {"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["RC4-MD5"]}}]}),
            "spec.servers[0].tls.cipherSuites[0]: unsupported cipher suite \"RC4-MD5\"",
        ),
        (
            json!({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["a.*.test"]}]}),
            "spec.servers[0].hosts[0]: invalid host",
        ),
        (
            json!({"selector": {"istio": "ingressgateway"}, "servers": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*"], "bind": "127.0.0.1"}]}),
            "spec.servers[0].bind: not supported",
        ),
    ];
    for (spec, want) in cases {
        let (table, errors) = build(&state(std::slice::from_ref(spec), &[]));
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            messages.iter().any(|m| m.contains(want)),
            "{want}: {messages:#?}"
        );
        assert!(
            table.gateway_listeners(&gateway_pod().uid).is_none(),
            "{want}: an invalid Gateway serves nothing"
        );
    }
}

#[test]
fn tcp_and_passthrough_servers_route_by_tcp_and_tls_routes() {
    let gateways = [json!({"selector": {"istio": "ingressgateway"}, "servers": [
        {"port": {"number": 443, "name": "tls", "protocol": "TLS"}, "hosts": ["*.example.test"], "tls": {"mode": "PASSTHROUGH"}},
        {"port": {"number": 5432, "name": "tcp", "protocol": "TCP"}, "hosts": ["*"]},
    ]})];
    let vss = [
        (
            "shop",
            "vs",
            json!({
                "hosts": ["*.example.test"], "gateways": ["istio-system/gw0"],
                "tls": [{"match": [{"port": 443, "sniHosts": ["a.example.test"]}], "route": [{"destination": {"host": "api"}}]}],
            }),
        ),
        (
            "shop",
            "db",
            json!({
                "hosts": ["*"], "gateways": ["istio-system/gw0"],
                "tcp": [{"match": [{"port": 5432}], "route": [{"destination": {"host": "web"}}]}],
            }),
        ),
    ];
    let (table, errors) = build(&state(&gateways, &vss));
    assert_eq!(errors, vec![]);
    let uid = gateway_pod().uid;
    let decide = |port: u16, sni: Option<&str>| {
        let listeners = table.gateway_listeners(&uid).unwrap();
        let server = listeners
            .ports
            .iter()
            .find(|p| p.port == port)
            .and_then(|p| p.server_for_sni(sni).cloned());
        let target = table.gateway_target(&uid, port, server).unwrap();
        match table.tcp_route(&target, sni, None) {
            TcpDecision::Forward { destinations, .. } => {
                destinations[0].destination.host.to_string()
            }
            TcpDecision::NoRoute => "no route".into(),
            other => format!("{other:?}"),
        }
    };
    assert_eq!(decide(443, Some("a.example.test")), API);
    assert_eq!(decide(443, Some("b.example.test")), "no route");
    assert_eq!(decide(5432, None), WEB);
}

#[test]
fn ingresses_of_the_mesh_class_become_a_gateway_and_routes() {
    let v1beta1: istio::IngressV1beta1 = serde_json::from_value(json!({
        "metadata": {"name": "old", "namespace": "shop", "annotations": {"kubernetes.io/ingress.class": "istio"}},
        "spec": {"rules": [{"host": "old.example.test", "http": {"paths": [
            {"path": "/", "backend": {"serviceName": "api", "servicePort": "http"}}]}}]},
    }))
    .unwrap();
    let v1: istio::Ingress = serde_json::from_value(json!({
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {
            "ingressClassName": "istio",
            "defaultBackend": {"service": {"name": "api", "port": {"number": 80}}},
            "rules": [{"host": "shop.example.test", "http": {"paths": [
                {"path": "/exact", "pathType": "Exact", "backend": {"service": {"name": "api", "port": {"number": 80}}}},
                {"path": "/web/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}},
            ]}}],
        },
    }))
    .unwrap();
    let other: istio::Ingress = serde_json::from_value(json!({
        "metadata": {"name": "nginx", "namespace": "shop"},
        "spec": {"ingressClassName": "nginx", "rules": [{"host": "nginx.example.test", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]},
    }))
    .unwrap();
    let mut state = state(&[], &[]);
    state.ingresses = vec![v1, v1beta1.into_v1(), other];
    let (table, errors) = build(&state);
    assert_eq!(errors, vec![]);
    let cases = [
        ("shop.example.test", "/exact", API),
        ("shop.example.test", "/exact/more", API), // the default backend
        ("shop.example.test", "/web", WEB),
        ("shop.example.test", "/web/x", WEB),
        ("shop.example.test", "/webx", API), // not a whole segment: the default backend
        ("old.example.test", "/anything", API),
        ("nginx.example.test", "/", API), // not served: only the default backend's `*`
    ];
    for (host, path, want) in cases {
        assert_eq!(route(&table, 80, host, path), want, "{host}{path}");
    }
}
