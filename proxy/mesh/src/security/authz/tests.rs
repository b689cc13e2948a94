use std::net::Ipv4Addr;

use serde_json::json;

use super::*;
use crate::istio::{self, RejectedAuthorizationPolicy, RejectedSelector};
use crate::model::{MeshState, Workload};
use crate::security::Error;
use crate::spiffe::SpiffeId;
use crate::testing::pod;

fn policy(namespace: &str, name: &str, spec: serde_json::Value) -> istio::AuthorizationPolicy {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .unwrap()
}

fn dry_run(mut written: istio::AuthorizationPolicy) -> istio::AuthorizationPolicy {
    written.metadata.annotations.dry_run = Some("true".into());
    written
}

/// shop: cart (app=cart, version=v1), web (app=web); other: client (app=client);
/// istio-system: gw (app=gw).
fn workloads() -> Vec<Workload> {
    let mut cart = pod("shop", "cart", [10, 0, 0, 2], "cart");
    cart.labels.insert("version".into(), "v1".into());
    vec![
        cart,
        pod("shop", "web", [10, 0, 0, 1], "web"),
        pod("other", "client", [10, 0, 1, 1], "client"),
        pod("istio-system", "gw", [10, 0, 2, 1], "gw"),
    ]
}

fn state(policies: Vec<istio::AuthorizationPolicy>) -> MeshState {
    MeshState {
        workloads: workloads(),
        authorization_policies: policies,
        ..MeshState::default()
    }
}

fn build(policies: Vec<istio::AuthorizationPolicy>) -> (MeshState, AuthzTable, Vec<Error>) {
    let state = state(policies);
    let (table, errors) = AuthzTable::build(&state);
    (state, table, errors)
}

fn workload<'a>(state: &'a MeshState, name: &str) -> &'a Workload {
    state.workloads.iter().find(|w| w.name == name).unwrap()
}

/// One connection or request, owning what [`Facts`] borrows.
#[derive(Clone)]
struct Req {
    peer: Option<SpiffeId>,
    source_ip: Ipv4Addr,
    destination_ip: Ipv4Addr,
    port: u16,
    sni: Option<&'static str>,
    http: Option<HttpReq>,
}

#[derive(Clone)]
struct HttpReq {
    host: &'static str,
    method: &'static str,
    path: &'static str,
    headers: http::HeaderMap,
    remote_ip: RemoteIp,
    auth: Option<RequestAuth>,
}

fn spiffe(namespace: &str, account: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", namespace, account).unwrap()
}

/// A plaintext TCP connection from 10.0.9.9 to shop/cart:8080.
fn tcp() -> Req {
    Req {
        peer: None,
        source_ip: Ipv4Addr::new(10, 0, 9, 9),
        destination_ip: Ipv4Addr::new(10, 0, 0, 2),
        port: 8080,
        sni: None,
        http: None,
    }
}

/// `GET /` with `Host: cart.shop`, otherwise as [`tcp`].
fn get() -> Req {
    Req {
        http: Some(HttpReq {
            host: "cart.shop",
            method: "GET",
            path: "/",
            headers: http::HeaderMap::new(),
            remote_ip: RemoteIp::Peer,
            auth: None,
        }),
        ..tcp()
    }
}

impl Req {
    fn peer(mut self, namespace: &str, account: &str) -> Self {
        self.peer = Some(spiffe(namespace, account));
        self
    }
    fn source(mut self, ip: [u8; 4]) -> Self {
        self.source_ip = Ipv4Addr::from(ip);
        self
    }
    fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }
    fn sni(mut self, sni: &'static str) -> Self {
        self.sni = Some(sni);
        self
    }
    fn http(mut self, edit: impl FnOnce(&mut HttpReq)) -> Self {
        if let Some(http) = self.http.as_mut() {
            edit(http);
        }
        self
    }
    fn host(self, host: &'static str) -> Self {
        self.http(|h| h.host = host)
    }
    fn method(self, method: &'static str) -> Self {
        self.http(|h| h.method = method)
    }
    fn path(self, path: &'static str) -> Self {
        self.http(|h| h.path = path)
    }
    fn header(self, name: &'static str, value: &'static str) -> Self {
        self.http(|h| {
            h.headers
                .append(name, http::HeaderValue::from_static(value));
        })
    }
    fn remote(self, ip: [u8; 4]) -> Self {
        self.http(|h| h.remote_ip = RemoteIp::Addr(Ipv4Addr::from(ip)))
    }
    /// The client address cannot be known (a gateway's invalid `numTrustedProxies`).
    fn remote_unknown(self) -> Self {
        self.http(|h| h.remote_ip = RemoteIp::Unknown)
    }
    fn jwt(self, claims: serde_json::Value) -> Self {
        let iss = claims["iss"].as_str().unwrap_or_default().to_owned();
        let sub = claims["sub"].as_str().unwrap_or_default().to_owned();
        let audiences = match &claims["aud"] {
            serde_json::Value::String(aud) => vec![aud.clone()],
            serde_json::Value::Array(auds) => auds
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect(),
            _ => vec![],
        };
        let auth = RequestAuth {
            principal: format!("{iss}/{sub}"),
            audiences,
            presenter: claims["azp"].as_str().map(str::to_owned),
            claims,
        };
        self.http(|h| h.auth = Some(auth))
    }
}

fn decide(table: &AuthzTable, workload: &Workload, req: &Req) -> Decision {
    let http = req.http.as_ref().map(|h| HttpFacts {
        host: h.host,
        method: h.method,
        path: h.path,
        headers: &h.headers,
        remote_ip: h.remote_ip,
        auth: h.auth.as_ref(),
    });
    let facts = Facts {
        peer: req.peer.as_ref(),
        source_ip: req.source_ip,
        destination_ip: req.destination_ip,
        destination_port: req.port,
        sni: req.sni,
        http,
    };
    table.evaluate(workload, &facts)
}

fn jwt() -> serde_json::Value {
    json!({
        "iss": "https://idp.example.com",
        "sub": "user-1",
        "aud": ["shop", "cart"],
        "azp": "web-app",
        "groups": ["dev", "admin"],
        "org": {"team": {"name": "payments"}},
        "level": 3,
    })
}

/// Each case: one ALLOW rule on shop/cart; the request; whether the rule matches it (the
/// request is allowed).
#[test]
fn the_matcher_reads_every_field_as_istio_does() {
    let src = |s: serde_json::Value| json!({"from": [{"source": s}]});
    let op = |o: serde_json::Value| json!({"to": [{"operation": o}]});
    let when = |key: &str, values: &[&str]| json!({"when": [{"key": key, "values": values}]});
    let when_not =
        |key: &str, values: &[&str]| json!({"when": [{"key": key, "notValues": values}]});
    let cases: Vec<(&str, serde_json::Value, Req, bool)> = vec![
        // principals
        (
            "principal exact",
            src(json!({"principals": ["cluster.local/ns/other/sa/client"]})),
            get().peer("other", "client"),
            true,
        ),
        (
            "principal other",
            src(json!({"principals": ["cluster.local/ns/other/sa/client"]})),
            get().peer("other", "web"),
            false,
        ),
        (
            "principal prefix",
            src(json!({"principals": ["cluster.local/ns/other/*"]})),
            get().peer("other", "x"),
            true,
        ),
        (
            "principal suffix",
            src(json!({"principals": ["*/sa/client"]})),
            get().peer("shop", "client"),
            true,
        ),
        (
            "principal present",
            src(json!({"principals": ["*"]})),
            get().peer("a", "b"),
            true,
        ),
        (
            "principal present, plaintext",
            src(json!({"principals": ["*"]})),
            get(),
            false,
        ),
        (
            "notPrincipals, plaintext",
            src(json!({"notPrincipals": ["*"]})),
            get(),
            true,
        ),
        (
            "notPrincipals, a peer",
            src(json!({"notPrincipals": ["*"]})),
            get().peer("a", "b"),
            false,
        ),
        (
            "notPrincipals, another peer",
            src(json!({"notPrincipals": ["cluster.local/ns/a/sa/b"]})),
            get().peer("a", "c"),
            true,
        ),
        // namespaces
        (
            "namespace exact",
            src(json!({"namespaces": ["other"]})),
            get().peer("other", "x"),
            true,
        ),
        (
            "namespace not it",
            src(json!({"namespaces": ["other"]})),
            get().peer("others", "x"),
            false,
        ),
        (
            "namespace prefix",
            src(json!({"namespaces": ["oth*"]})),
            get().peer("other", "x"),
            true,
        ),
        (
            "namespace suffix",
            src(json!({"namespaces": ["*her"]})),
            get().peer("other", "x"),
            true,
        ),
        (
            "namespace inner glob",
            src(json!({"namespaces": ["o*r"]})),
            get().peer("other", "x"),
            true,
        ),
        (
            "namespace inner glob, no",
            src(json!({"namespaces": ["o*x"]})),
            get().peer("other", "x"),
            false,
        ),
        (
            "namespace, plaintext",
            src(json!({"namespaces": ["*"]})),
            get(),
            false,
        ),
        (
            "notNamespaces, plaintext",
            src(json!({"notNamespaces": ["other"]})),
            get(),
            true,
        ),
        (
            "notNamespaces, it",
            src(json!({"notNamespaces": ["other"]})),
            get().peer("other", "x"),
            false,
        ),
        // serviceAccounts
        (
            "serviceAccount ns/sa",
            src(json!({"serviceAccounts": ["other/client"]})),
            get().peer("other", "client"),
            true,
        ),
        (
            "serviceAccount in the policy's namespace",
            src(json!({"serviceAccounts": ["client"]})),
            get().peer("shop", "client"),
            true,
        ),
        (
            "serviceAccount elsewhere",
            src(json!({"serviceAccounts": ["client"]})),
            get().peer("other", "client"),
            false,
        ),
        (
            "notServiceAccounts, plaintext",
            src(json!({"notServiceAccounts": ["client"]})),
            get(),
            true,
        ),
        // trustDomains
        (
            "trust domain",
            src(json!({"trustDomains": ["cluster.local"]})),
            get().peer("a", "b"),
            true,
        ),
        (
            "trust domain, plaintext",
            src(json!({"trustDomains": ["*"]})),
            get(),
            false,
        ),
        (
            "notTrustDomains",
            src(json!({"notTrustDomains": ["other.td"]})),
            get().peer("a", "b"),
            true,
        ),
        // ipBlocks
        (
            "ipBlocks CIDR",
            src(json!({"ipBlocks": ["10.0.9.0/24"]})),
            get(),
            true,
        ),
        (
            "ipBlocks single IP",
            src(json!({"ipBlocks": ["10.0.9.9"]})),
            get(),
            true,
        ),
        (
            "ipBlocks host bits ignored",
            src(json!({"ipBlocks": ["10.0.9.77/24"]})),
            get(),
            true,
        ),
        (
            "ipBlocks miss",
            src(json!({"ipBlocks": ["10.0.8.0/24", "192.168.0.0/16"]})),
            get(),
            false,
        ),
        (
            "ipBlocks /0",
            src(json!({"ipBlocks": ["0.0.0.0/0"]})),
            get(),
            true,
        ),
        (
            "ipBlocks IPv6 never matches",
            src(json!({"ipBlocks": ["::/0"]})),
            get(),
            false,
        ),
        (
            "notIpBlocks",
            src(json!({"notIpBlocks": ["10.0.9.9"]})),
            get().source([10, 0, 9, 8]),
            true,
        ),
        (
            "notIpBlocks, it",
            src(json!({"notIpBlocks": ["10.0.9.9"]})),
            get(),
            false,
        ),
        // remoteIpBlocks
        (
            "remoteIpBlocks from X-Forwarded-For",
            src(json!({"remoteIpBlocks": ["203.0.113.0/24"]})),
            get().remote([203, 0, 113, 7]),
            true,
        ),
        (
            "remoteIpBlocks is not the direct peer",
            src(json!({"remoteIpBlocks": ["10.0.9.9"]})),
            get().remote([203, 0, 113, 7]),
            false,
        ),
        (
            "remoteIpBlocks falls back to the peer",
            src(json!({"remoteIpBlocks": ["10.0.9.9"]})),
            get(),
            true,
        ),
        (
            "notRemoteIpBlocks",
            src(json!({"notRemoteIpBlocks": ["203.0.113.0/24"]})),
            get().remote([203, 0, 113, 7]),
            false,
        ),
        // requestPrincipals: iss and sub apart, split at the last '/'
        (
            "requestPrincipal exact",
            src(json!({"requestPrincipals": ["https://idp.example.com/user-1"]})),
            get().jwt(jwt()),
            true,
        ),
        (
            "requestPrincipal other sub",
            src(json!({"requestPrincipals": ["https://idp.example.com/user-2"]})),
            get().jwt(jwt()),
            false,
        ),
        (
            "requestPrincipal any",
            src(json!({"requestPrincipals": ["*"]})),
            get().jwt(jwt()),
            true,
        ),
        (
            "requestPrincipal any, no token",
            src(json!({"requestPrincipals": ["*"]})),
            get(),
            false,
        ),
        (
            "requestPrincipal issuer, any sub",
            src(json!({"requestPrincipals": ["https://idp.example.com/*"]})),
            get().jwt(jwt()),
            true,
        ),
        (
            "requestPrincipal issuer, sub prefix",
            src(json!({"requestPrincipals": ["https://idp.example.com/user*"]})),
            get().jwt(jwt()),
            true,
        ),
        (
            "requestPrincipal issuer suffix",
            src(json!({"requestPrincipals": ["*example.com/user-1"]})),
            get().jwt(jwt()),
            true,
        ),
        (
            "requestPrincipal any issuer",
            src(json!({"requestPrincipals": ["*/user-1"]})),
            get().jwt(jwt()),
            true,
        ),
        (
            "requestPrincipal sub suffix, no '/'",
            src(json!({"requestPrincipals": ["*-1"]})),
            get().jwt(jwt()),
            true,
        ),
        // The last '/' splits: this is issuer "https:/" and a sub prefix.
        (
            "requestPrincipal issuer prefix needs no '/'",
            src(json!({"requestPrincipals": ["https://idp*"]})),
            get().jwt(jwt()),
            false,
        ),
        (
            "notRequestPrincipals, no token",
            src(json!({"notRequestPrincipals": ["*"]})),
            get(),
            true,
        ),
        (
            "notRequestPrincipals, a token",
            src(json!({"notRequestPrincipals": ["*"]})),
            get().jwt(jwt()),
            false,
        ),
        // fields of one source are ANDed, values ORed
        (
            "source AND",
            src(json!({"namespaces": ["other"], "ipBlocks": ["10.0.9.0/24"]})),
            get().peer("other", "x").source([10, 1, 1, 1]),
            false,
        ),
        (
            "source OR",
            src(json!({"namespaces": ["nope", "other"]})),
            get().peer("other", "x"),
            true,
        ),
        (
            "from entries ORed",
            json!({"from": [{"source": {"namespaces": ["nope"]}}, {"source": {"ipBlocks": ["10.0.9.9"]}}]}),
            get(),
            true,
        ),
        // hosts: case-insensitive, exact (no port stripping)
        (
            "host exact",
            op(json!({"hosts": ["cart.shop"]})),
            get(),
            true,
        ),
        (
            "host case",
            op(json!({"hosts": ["CART.Shop"]})),
            get(),
            true,
        ),
        (
            "host with a port is another host",
            op(json!({"hosts": ["example.com"]})),
            get().host("example.com:8080"),
            false,
        ),
        (
            "host suffix",
            op(json!({"hosts": ["*.EXAMPLE.com"]})),
            get().host("api.example.com"),
            true,
        ),
        (
            "host prefix",
            op(json!({"hosts": ["api.*"]})),
            get().host("API.example.com"),
            true,
        ),
        (
            "notHosts",
            op(json!({"notHosts": ["cart.*"]})),
            get(),
            false,
        ),
        // ports
        ("port", op(json!({"ports": ["8080"]})), get(), true),
        ("port other", op(json!({"ports": ["80"]})), get(), false),
        ("notPorts", op(json!({"notPorts": ["80"]})), get(), true),
        // methods: case-sensitive
        (
            "method",
            op(json!({"methods": ["GET", "HEAD"]})),
            get(),
            true,
        ),
        ("method case", op(json!({"methods": ["get"]})), get(), false),
        (
            "notMethods",
            op(json!({"notMethods": ["POST"]})),
            get(),
            true,
        ),
        // paths
        (
            "path exact",
            op(json!({"paths": ["/admin"]})),
            get().path("/admin"),
            true,
        ),
        (
            "path exact, not a prefix",
            op(json!({"paths": ["/admin"]})),
            get().path("/admin/x"),
            false,
        ),
        (
            "path prefix",
            op(json!({"paths": ["/p/*"]})),
            get().path("/p/x/y"),
            true,
        ),
        (
            "path prefix is /p/",
            op(json!({"paths": ["/p/*"]})),
            get().path("/p"),
            false,
        ),
        (
            "path suffix",
            op(json!({"paths": ["*.png"]})),
            get().path("/img/a.png"),
            true,
        ),
        ("path any", op(json!({"paths": ["*"]})), get(), true),
        (
            "notPaths",
            op(json!({"notPaths": ["/admin*"]})),
            get().path("/admin/x"),
            false,
        ),
        // path templates: Envoy's URI template
        (
            "{*} one segment",
            op(json!({"paths": ["/foo/{*}"]})),
            get().path("/foo/bar"),
            true,
        ),
        (
            "{*} not two",
            op(json!({"paths": ["/foo/{*}"]})),
            get().path("/foo/bar/baz"),
            false,
        ),
        (
            "{*} not none",
            op(json!({"paths": ["/foo/{*}"]})),
            get().path("/foo/"),
            false,
        ),
        (
            "{**}/ with one",
            op(json!({"paths": ["/foo/{**}/"]})),
            get().path("/foo/bar/"),
            true,
        ),
        (
            "{**}/ with none",
            op(json!({"paths": ["/foo/{**}/"]})),
            get().path("/foo//"),
            true,
        ),
        (
            "{**}/ needs the slash",
            op(json!({"paths": ["/foo/{**}/"]})),
            get().path("/foo/bar"),
            false,
        ),
        (
            "{*} then {**}",
            op(json!({"paths": ["/foo/{*}/bar/{**}"]})),
            get().path("/foo/buzz/bar/"),
            true,
        ),
        (
            "{*} then {**}, deeper",
            op(json!({"paths": ["/foo/{*}/bar/{**}"]})),
            get().path("/foo/buzz/bar/baz/q"),
            true,
        ),
        (
            "a template's literal",
            op(json!({"paths": ["/foo/{*}/bar"]})),
            get().path("/foo/x/baz"),
            false,
        ),
        (
            "notPaths template",
            op(json!({"notPaths": ["/api/{*}/admin"]})),
            get().path("/api/v1/admin"),
            false,
        ),
        // operation fields ANDed
        (
            "operation AND",
            op(json!({"methods": ["GET"], "paths": ["/x"]})),
            get().path("/y"),
            false,
        ),
        // when: headers
        (
            "header",
            when("request.headers[x-user]", &["alice"]),
            get().header("x-user", "alice"),
            true,
        ),
        (
            "header name case",
            when("request.headers[X-User]", &["alice"]),
            get().header("x-user", "alice"),
            true,
        ),
        (
            "header absent",
            when("request.headers[x-user]", &["*"]),
            get(),
            false,
        ),
        (
            "header present, empty",
            when("request.headers[x-user]", &["*"]),
            get().header("x-user", ""),
            true,
        ),
        (
            "header prefix",
            when("request.headers[x-user]", &["al*"]),
            get().header("x-user", "alice"),
            true,
        ),
        (
            "repeated header: any value",
            when("request.headers[x-user]", &["bob"]),
            get().header("x-user", "alice").header("x-user", "bob"),
            true,
        ),
        (
            "repeated header: notValues sees every value",
            when_not("request.headers[x-user]", &["bob"]),
            get().header("x-user", "alice").header("x-user", "bob"),
            false,
        ),
        (
            "header notValues, absent",
            when_not("request.headers[x-user]", &["bob"]),
            get(),
            true,
        ),
        (
            "header host is the authority",
            when("request.headers[Host]", &["cart.*"]),
            get(),
            true,
        ),
        (
            "header :method",
            when("request.headers[:method]", &["GET"]),
            get(),
            true,
        ),
        // when: the rest
        (
            "source.ip",
            when("source.ip", &["10.0.9.0/24"]),
            get(),
            true,
        ),
        (
            "remote.ip",
            when("remote.ip", &["203.0.113.7"]),
            get().remote([203, 0, 113, 7]),
            true,
        ),
        (
            "source.namespace",
            when("source.namespace", &["other"]),
            get().peer("other", "x"),
            true,
        ),
        (
            "source.principal",
            when("source.principal", &["cluster.local/ns/other/sa/x"]),
            get().peer("other", "x"),
            true,
        ),
        (
            "source.principal, plaintext",
            when_not("source.principal", &["*"]),
            get(),
            true,
        ),
        (
            "request.auth.principal",
            when(
                "request.auth.principal",
                &["https://idp.example.com/user-1"],
            ),
            get().jwt(jwt()),
            true,
        ),
        (
            "request.auth.audiences",
            when("request.auth.audiences", &["cart"]),
            get().jwt(jwt()),
            true,
        ),
        (
            "request.auth.audiences miss",
            when("request.auth.audiences", &["web"]),
            get().jwt(jwt()),
            false,
        ),
        (
            "request.auth.presenter",
            when("request.auth.presenter", &["web-*"]),
            get().jwt(jwt()),
            true,
        ),
        (
            "claim list: any element",
            when("request.auth.claims[groups]", &["admin"]),
            get().jwt(jwt()),
            true,
        ),
        (
            "claim list: none",
            when("request.auth.claims[groups]", &["ops"]),
            get().jwt(jwt()),
            false,
        ),
        (
            "claim string",
            when("request.auth.claims[iss]", &["https://idp.example.com"]),
            get().jwt(jwt()),
            true,
        ),
        (
            "claim nested",
            when("request.auth.claims[org][team][name]", &["pay*"]),
            get().jwt(jwt()),
            true,
        ),
        (
            "claim nested, missing",
            when("request.auth.claims[org][nope]", &["*"]),
            get().jwt(jwt()),
            false,
        ),
        (
            "claim not a string",
            when("request.auth.claims[level]", &["3"]),
            get().jwt(jwt()),
            false,
        ),
        (
            "claim, no token",
            when("request.auth.claims[groups]", &["admin"]),
            get(),
            false,
        ),
        (
            "claim notValues, no token",
            when_not("request.auth.claims[groups]", &["admin"]),
            get(),
            true,
        ),
        (
            "destination.ip",
            when("destination.ip", &["10.0.0.0/24"]),
            get(),
            true,
        ),
        (
            "destination.port",
            when("destination.port", &["8080"]),
            get(),
            true,
        ),
        (
            "destination.port miss",
            when("destination.port", &["9090"]),
            get(),
            false,
        ),
        (
            "connection.sni",
            when("connection.sni", &["*.shop"]),
            get().sni("cart.shop"),
            true,
        ),
        (
            "connection.sni, none",
            when("connection.sni", &["*"]),
            get(),
            false,
        ),
        // when: ANDed with each other and the rest
        (
            "when AND",
            json!({"when": [{"key": "source.ip", "values": ["10.0.9.9"]}, {"key": "destination.port", "values": ["1"]}]}),
            get(),
            false,
        ),
        (
            "from AND to AND when",
            json!({"from": [{"source": {"ipBlocks": ["10.0.9.9"]}}], "to": [{"operation": {"methods": ["GET"]}}], "when": [{"key": "request.headers[x]", "values": ["1"]}]}),
            get().header("x", "1"),
            true,
        ),
        ("an empty rule", json!({}), get(), true),
    ];
    for (name, rule, req, want) in cases {
        let (state, table, errors) = build(vec![policy("shop", "p", json!({"rules": [rule]}))]);
        assert_eq!(errors, vec![], "{name}");
        let decision = decide(&table, workload(&state, "cart"), &req);
        assert_eq!(decision.allowed, want, "{name}: {}", decision.reason);
        if want {
            assert_eq!(decision.reason, "allowed by shop/p rule 0", "{name}");
        }
    }
}

/// Each case: one policy's action and rules; a TCP connection (and, for comparison, a GET);
/// whether each is allowed.
#[test]
fn tcp_reads_http_only_fields_as_the_sidecar_does() {
    let peer = || tcp().peer("other", "client");
    let cases: Vec<(&str, &str, serde_json::Value, Req, bool)> = vec![
        // ALLOW: a rule with any HTTP-only field is dropped.
        (
            "ALLOW of methods only denies all TCP",
            "ALLOW",
            json!([{"to": [{"operation": {"methods": ["GET"]}}]}]),
            tcp(),
            false,
        ),
        (
            "ALLOW of a JWT only denies all TCP",
            "ALLOW",
            json!([{"from": [{"source": {"requestPrincipals": ["*"]}}]}]),
            peer(),
            false,
        ),
        (
            "ALLOW of notPaths denies all TCP",
            "ALLOW",
            json!([{"to": [{"operation": {"notPaths": ["/admin"]}}]}]),
            tcp(),
            false,
        ),
        (
            "ALLOW of a header condition denies all TCP",
            "ALLOW",
            json!([{"when": [{"key": "request.headers[x]", "values": ["1"]}]}]),
            tcp(),
            false,
        ),
        (
            "ALLOW of remote.ip denies all TCP",
            "ALLOW",
            json!([{"when": [{"key": "remote.ip", "values": ["10.0.9.9"]}]}]),
            tcp(),
            false,
        ),
        (
            "ALLOW of remoteIpBlocks denies all TCP",
            "ALLOW",
            json!([{"from": [{"source": {"remoteIpBlocks": ["10.0.9.9"]}}]}]),
            tcp(),
            false,
        ),
        (
            "ALLOW drops the whole rule, its L4 part too",
            "ALLOW",
            json!([{"from": [{"source": {"namespaces": ["other"]}}], "to": [{"operation": {"methods": ["GET"]}}]}]),
            peer(),
            false,
        ),
        (
            "ALLOW keeps rules without HTTP-only fields",
            "ALLOW",
            json!([{"to": [{"operation": {"methods": ["GET"]}}]}, {"to": [{"operation": {"ports": ["8080"]}}]}]),
            tcp(),
            true,
        ),
        (
            "ALLOW's L4 rule still has to match",
            "ALLOW",
            json!([{"to": [{"operation": {"methods": ["GET"]}}]}, {"to": [{"operation": {"ports": ["8080"]}}]}]),
            tcp().port(9090),
            false,
        ),
        (
            "ALLOW of L4 fields",
            "ALLOW",
            json!([{"from": [{"source": {"principals": ["cluster.local/ns/other/sa/client"]}}], "when": [{"key": "connection.sni", "values": ["*"]}]}]),
            peer().sni("x"),
            true,
        ),
        // DENY: only the HTTP-only field is dropped, which widens the rule.
        (
            "DENY of methods denies all TCP",
            "DENY",
            json!([{"to": [{"operation": {"methods": ["GET"]}}]}]),
            tcp(),
            false,
        ),
        (
            "DENY of notRequestPrincipals denies all TCP",
            "DENY",
            json!([{"from": [{"source": {"notRequestPrincipals": ["*"]}}]}]),
            peer(),
            false,
        ),
        (
            "DENY of a claim denies all TCP",
            "DENY",
            json!([{"when": [{"key": "request.auth.claims[groups]", "values": ["x"]}]}]),
            tcp(),
            false,
        ),
        (
            "DENY keeps its L4 part: another peer passes",
            "DENY",
            json!([{"from": [{"source": {"namespaces": ["other"]}}], "to": [{"operation": {"paths": ["/admin"]}}]}]),
            tcp().peer("shop", "web"),
            true,
        ),
        (
            "DENY keeps its L4 part: the peer named is denied",
            "DENY",
            json!([{"from": [{"source": {"namespaces": ["other"]}}], "to": [{"operation": {"paths": ["/admin"]}}]}]),
            peer(),
            false,
        ),
        (
            "DENY of a port and a method: other ports pass",
            "DENY",
            json!([{"to": [{"operation": {"ports": ["9090"], "methods": ["POST"]}}]}]),
            tcp(),
            true,
        ),
    ];
    for (name, action, rules, conn, want) in cases {
        let written = policy("shop", "p", json!({"action": action, "rules": rules}));
        let (state, table, errors) = build(vec![written]);
        assert_eq!(errors, vec![], "{name}");
        let decision = decide(&table, workload(&state, "cart"), &conn);
        assert_eq!(decision.allowed, want, "{name}: {}", decision.reason);
        assert!(
            table.needs_http(workload(&state, "cart")) || name.contains("L4"),
            "{name}"
        );
    }

    // The same policies over HTTP read every field.
    let (state, table, _) = build(vec![policy(
        "shop",
        "p",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]}),
    )]);
    let cart = workload(&state, "cart");
    assert!(decide(&table, cart, &get()).allowed);
    assert!(!decide(&table, cart, &get().method("POST")).allowed);
    assert!(!decide(&table, cart, &tcp()).allowed);

    // AUDIT widens like DENY.
    let (state, table, _) = build(vec![policy(
        "shop",
        "a",
        json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}),
    )]);
    let decision = decide(&table, workload(&state, "cart"), &tcp());
    assert!(decision.allowed);
    assert_eq!(decision.audits.len(), 1);
}

/// An unknown client address: every remote-IP field holds in a DENY and none in an ALLOW,
/// negated or not; the other fields still count.
#[test]
fn an_unknown_remote_address_fails_closed() {
    let src = |s: serde_json::Value| json!([{"from": [{"source": s}]}]);
    let when = |half: &str| json!([{"when": [{"key": "remote.ip", half: ["203.0.113.7"]}]}]);
    let cases: Vec<(&str, &str, serde_json::Value, Req, bool)> = vec![
        (
            "DENY remoteIpBlocks denies",
            "DENY",
            src(json!({"remoteIpBlocks": ["203.0.113.0/24"]})),
            get().remote_unknown(),
            false,
        ),
        (
            "DENY notRemoteIpBlocks denies",
            "DENY",
            src(json!({"notRemoteIpBlocks": ["203.0.113.0/24"]})),
            get().remote_unknown(),
            false,
        ),
        (
            "DENY remote.ip denies",
            "DENY",
            when("values"),
            get().remote_unknown(),
            false,
        ),
        (
            "DENY remote.ip notValues denies",
            "DENY",
            when("notValues"),
            get().remote_unknown(),
            false,
        ),
        (
            "DENY remoteIpBlocks and a path: other paths pass",
            "DENY",
            json!([{"from": [{"source": {"remoteIpBlocks": ["203.0.113.0/24"]}}], "to": [{"operation": {"paths": ["/admin"]}}]}]),
            get().remote_unknown(),
            true,
        ),
        (
            "DENY remoteIpBlocks, the address known and outside",
            "DENY",
            src(json!({"remoteIpBlocks": ["203.0.113.0/24"]})),
            get().remote([198, 51, 100, 1]),
            true,
        ),
        (
            "ALLOW remoteIpBlocks does not match",
            "ALLOW",
            src(json!({"remoteIpBlocks": ["0.0.0.0/0"]})),
            get().remote_unknown(),
            false,
        ),
        (
            "ALLOW notRemoteIpBlocks does not match",
            "ALLOW",
            src(json!({"notRemoteIpBlocks": ["203.0.113.0/24"]})),
            get().remote_unknown(),
            false,
        ),
        (
            "ALLOW remote.ip notValues does not match",
            "ALLOW",
            when("notValues"),
            get().remote_unknown(),
            false,
        ),
        (
            "ALLOW of ipBlocks still reads the peer",
            "ALLOW",
            src(json!({"ipBlocks": ["10.0.9.9"]})),
            get().remote_unknown(),
            true,
        ),
    ];
    for (name, action, rules, req, want) in cases {
        let written = policy("shop", "p", json!({"action": action, "rules": rules}));
        let (state, table, errors) = build(vec![written]);
        assert_eq!(errors, vec![], "{name}");
        let decision = decide(&table, workload(&state, "cart"), &req);
        assert_eq!(decision.allowed, want, "{name}: {}", decision.reason);
    }
}

fn rule_ref(namespace: &str, name: &str, action: AuthzAction, rule: Option<usize>) -> RuleRef {
    RuleRef {
        policy: crate::routing::ObjectRef {
            kind: "AuthorizationPolicy",
            namespace: namespace.into(),
            name: name.into(),
        },
        action,
        rule,
    }
}

/// Each case: the policies; the pod and request; allowed, and the reason.
#[test]
fn evaluation_follows_istios_order_and_empty_cases() {
    let allow_get = || {
        policy(
            "shop",
            "allow-get",
            json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
        )
    };
    let deny_admin = || {
        policy(
            "shop",
            "deny-admin",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}),
        )
    };
    /// (name, policies, pod, request, allowed, reason)
    type Case = (
        &'static str,
        Vec<istio::AuthorizationPolicy>,
        &'static str,
        Req,
        bool,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "no policy",
            vec![],
            "cart",
            get(),
            true,
            "allowed: no ALLOW policy applies",
        ),
        (
            "no policy, TCP",
            vec![],
            "cart",
            tcp(),
            true,
            "allowed: no ALLOW policy applies",
        ),
        (
            "spec: {} allows nothing",
            vec![policy("shop", "none", json!({}))],
            "cart",
            get(),
            false,
            "denied: no ALLOW policy matched (shop/none)",
        ),
        (
            "spec: {} allows no TCP",
            vec![policy("shop", "none", json!({}))],
            "cart",
            tcp(),
            false,
            "denied: no ALLOW policy matched (shop/none)",
        ),
        (
            "ALLOW rules: [{}] allows all",
            vec![policy("shop", "all", json!({"rules": [{}]}))],
            "cart",
            tcp(),
            true,
            "allowed by shop/all rule 0",
        ),
        (
            "DENY rules: [{}] denies all",
            vec![policy(
                "shop",
                "all",
                json!({"action": "DENY", "rules": [{}]}),
            )],
            "cart",
            get(),
            false,
            "denied by shop/all rule 0",
        ),
        (
            "DENY with no rules has no effect",
            vec![policy("shop", "nothing", json!({"action": "DENY"}))],
            "cart",
            get(),
            true,
            "allowed: no ALLOW policy applies",
        ),
        (
            "an ALLOW matches",
            vec![allow_get()],
            "cart",
            get(),
            true,
            "allowed by shop/allow-get rule 0",
        ),
        (
            "no ALLOW matches",
            vec![allow_get()],
            "cart",
            get().method("PUT"),
            false,
            "denied: no ALLOW policy matched (shop/allow-get)",
        ),
        (
            "DENY over ALLOW on the same path",
            vec![allow_get(), deny_admin()],
            "cart",
            get().path("/admin"),
            false,
            "denied by shop/deny-admin rule 0",
        ),
        (
            "ALLOW where DENY does not match",
            vec![allow_get(), deny_admin()],
            "cart",
            get().path("/"),
            true,
            "allowed by shop/allow-get rule 0",
        ),
        (
            "any ALLOW allows",
            vec![
                allow_get(),
                policy(
                    "shop",
                    "allow-put",
                    json!({"rules": [{"to": [{"operation": {"methods": ["PUT"]}}]}]}),
                ),
            ],
            "cart",
            get().method("PUT"),
            true,
            "allowed by shop/allow-put rule 0",
        ),
        (
            "the first matching rule is named",
            vec![policy(
                "shop",
                "two",
                json!({"rules": [{"to": [{"operation": {"methods": ["PUT"]}}]}, {}]}),
            )],
            "cart",
            get(),
            true,
            "allowed by shop/two rule 1",
        ),
        (
            "AUDIT changes nothing",
            vec![policy(
                "shop",
                "audit",
                json!({"action": "AUDIT", "rules": [{}]}),
            )],
            "cart",
            get(),
            true,
            "allowed: no ALLOW policy applies",
        ),
        (
            "AUDIT is not an ALLOW",
            vec![
                allow_get(),
                policy("shop", "audit", json!({"action": "AUDIT", "rules": [{}]})),
            ],
            "cart",
            get().method("PUT"),
            false,
            "denied: no ALLOW policy matched (shop/allow-get)",
        ),
        (
            "a dry-run DENY does not deny",
            vec![dry_run(deny_admin())],
            "cart",
            get().path("/admin"),
            true,
            "allowed: no ALLOW policy applies",
        ),
        (
            "a dry-run ALLOW does not deny",
            vec![dry_run(allow_get())],
            "cart",
            get().method("PUT"),
            true,
            "allowed: no ALLOW policy applies",
        ),
        (
            "a CUSTOM match is the caller's to ask",
            vec![policy(
                "shop",
                "ext",
                json!({"action": "CUSTOM", "provider": {"name": "authz"}, "rules": [{}]}),
            )],
            "cart",
            get(),
            true,
            "allowed: no ALLOW policy applies",
        ),
        // scope
        (
            "a namespace's policy stays in it",
            vec![policy("shop", "none", json!({}))],
            "client",
            get(),
            true,
            "allowed: no ALLOW policy applies",
        ),
        (
            "a selector picks its pods",
            vec![policy(
                "shop",
                "none",
                json!({"selector": {"matchLabels": {"app": "web"}}}),
            )],
            "cart",
            get(),
            true,
            "allowed: no ALLOW policy applies",
        ),
        (
            "a selector with every label",
            vec![policy(
                "shop",
                "none",
                json!({"selector": {"matchLabels": {"app": "cart", "version": "v1"}}}),
            )],
            "cart",
            get(),
            false,
            "denied: no ALLOW policy matched (shop/none)",
        ),
        (
            "the root namespace is mesh-wide",
            vec![policy("istio-system", "none", json!({}))],
            "client",
            get(),
            false,
            "denied: no ALLOW policy matched (istio-system/none)",
        ),
        (
            "a root selector reaches every namespace",
            vec![policy(
                "istio-system",
                "d",
                json!({"action": "DENY", "selector": {"matchLabels": {"app": "client"}}, "rules": [{}]}),
            )],
            "client",
            get(),
            false,
            "denied by istio-system/d rule 0",
        ),
        (
            "a root selector only its pods",
            vec![policy(
                "istio-system",
                "d",
                json!({"action": "DENY", "selector": {"matchLabels": {"app": "client"}}, "rules": [{}]}),
            )],
            "cart",
            get(),
            true,
            "allowed: no ALLOW policy applies",
        ),
        (
            "a root DENY with a namespace ALLOW",
            vec![
                policy(
                    "istio-system",
                    "d",
                    json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}),
                ),
                allow_get(),
            ],
            "cart",
            get().path("/admin"),
            false,
            "denied by istio-system/d rule 0",
        ),
    ];
    for (name, policies, pod, req, allowed, reason) in cases {
        let (state, table, _) = build(policies);
        let decision = decide(&table, workload(&state, pod), &req);
        assert_eq!(
            (decision.allowed, decision.reason.as_str()),
            (allowed, reason),
            "{name}"
        );
        assert_eq!(decision.by.is_some(), reason.contains(" by "), "{name}");
    }
}

#[test]
fn audits_dry_runs_and_custom_checks_are_reported() {
    let (state, table, errors) = build(vec![
        policy(
            "shop",
            "audit",
            json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}, {}]}),
        ),
        dry_run(policy(
            "shop",
            "shadow-deny",
            json!({"action": "DENY", "rules": [{}]}),
        )),
        dry_run(policy(
            "shop",
            "shadow-allow",
            json!({"rules": [{"to": [{"operation": {"methods": ["PUT"]}}]}]}),
        )),
        policy(
            "shop",
            "ext",
            json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
        ),
        dry_run(policy(
            "shop",
            "ext-shadow",
            json!({"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]}),
        )),
    ]);
    assert_eq!(errors, vec![]);
    let cart = workload(&state, "cart");

    let decision = decide(&table, cart, &get().path("/admin/users"));
    assert!(decision.allowed);
    assert_eq!(decision.by, None);
    assert_eq!(
        decision.audits,
        vec![rule_ref("shop", "audit", AuthzAction::Audit, Some(1))]
    );
    assert_eq!(
        decision.custom,
        vec![CustomCheck {
            provider: "opa".into(),
            policy: rule_ref("shop", "ext", AuthzAction::Custom, Some(0)),
        }]
    );
    // The shadow DENY would deny; the shadow ALLOW matched nothing, so enforced it would deny
    // too; the CUSTOM shadow is reported, its provider not asked.
    assert_eq!(
        decision.dry_run,
        vec![
            (
                rule_ref("shop", "ext-shadow", AuthzAction::Custom, Some(0)),
                false
            ),
            (
                rule_ref("shop", "shadow-deny", AuthzAction::Deny, Some(0)),
                true
            ),
            (
                rule_ref("shop", "shadow-allow", AuthzAction::Allow, None),
                true
            ),
        ]
    );
    // On TCP an HTTP provider is not asked (Istio leaves it out of TCP chains).
    let decision = decide(&table, cart, &tcp());
    assert!(decision.custom.is_empty());
    assert!(
        !decision
            .dry_run
            .iter()
            .any(|(r, _)| r.action == AuthzAction::Custom)
    );
    assert_eq!(
        decision.audits,
        vec![rule_ref("shop", "audit", AuthzAction::Audit, Some(0))]
    );

    let decision = decide(&table, cart, &get().method("PUT"));
    assert!(decision.custom.is_empty());
    assert!(decision.dry_run.contains(&(
        rule_ref("shop", "shadow-allow", AuthzAction::Allow, Some(0)),
        false
    )));
    assert!(!decision.dry_run.iter().any(|(r, _)| r.rule.is_none()));
}

#[test]
fn denials_name_the_policy_as_envoy_does() {
    let (state, table, _) = build(vec![
        policy(
            "shop",
            "deny-admin",
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}),
        ),
        policy(
            "shop",
            "allow-get",
            json!({"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
        ),
    ]);
    let cart = workload(&state, "cart");
    let details = |req: Req| decide(&table, cart, &req).response_code_details();
    assert_eq!(
        details(get().path("/admin")).as_deref(),
        Some("rbac_access_denied_matched_policy[ns[shop]-policy[deny-admin]-rule[0]]")
    );
    assert_eq!(
        details(get().method("POST")).as_deref(),
        Some("rbac_access_denied_matched_policy[none]")
    );
    assert_eq!(details(get()), None);
    let stand_in = rule_ref("shop", "bad", AuthzAction::Deny, None);
    assert_eq!(stand_in.envoy_policy_id(), "ns[shop]-policy[bad]");
    assert_eq!(stand_in.to_string(), "shop/bad");
}

/// Each case: the policy (in shop); the field of each problem, in order.
#[test]
fn invalid_policies_are_named_by_field() {
    let rules = |r: serde_json::Value| json!({"rules": [r]});
    let src = |s: serde_json::Value| rules(json!({"from": [{"source": s}]}));
    let op = |o: serde_json::Value| rules(json!({"to": [{"operation": o}]}));
    let when = |key: &str| rules(json!({"when": [{"key": key, "values": ["x"]}]}));
    let cases: Vec<(serde_json::Value, Vec<&str>)> = vec![
        (json!({"action": "ALOW"}), vec!["spec.action"]),
        (
            json!({"action": "DENY", "provider": {"name": "x"}, "rules": [{}]}),
            vec!["spec.provider"],
        ),
        (
            json!({"action": "CUSTOM", "rules": [{}]}),
            vec!["spec.provider.name"],
        ),
        (
            json!({"selector": {"matchLabels": {"app": "c*"}}}),
            vec!["spec.selector.matchLabels.app"],
        ),
        (rules(json!({"from": []})), vec!["spec.rules[0].from"]),
        (rules(json!({"to": []})), vec!["spec.rules[0].to"]),
        (
            rules(json!({"from": [{}]})),
            vec!["spec.rules[0].from[0].source"],
        ),
        (
            rules(json!({"to": [{}]})),
            vec!["spec.rules[0].to[0].operation"],
        ),
        (src(json!({})), vec!["spec.rules[0].from[0].source"]),
        (op(json!({})), vec!["spec.rules[0].to[0].operation"]),
        (
            src(json!({"principals": [""]})),
            vec!["spec.rules[0].from[0].source.principals[0]"],
        ),
        (
            src(json!({"ipBlocks": ["10.0.0.0/8", "10.0.0.300"]})),
            vec!["spec.rules[0].from[0].source.ipBlocks[1]"],
        ),
        (
            src(json!({"notRemoteIpBlocks": ["10.0.0.0/33"]})),
            vec!["spec.rules[0].from[0].source.notRemoteIpBlocks[0]"],
        ),
        (
            src(json!({"serviceAccounts": ["ns/sa/x"]})),
            vec!["spec.rules[0].from[0].source.serviceAccounts[0]"],
        ),
        (
            src(json!({"serviceAccounts": ["*"]})),
            vec!["spec.rules[0].from[0].source.serviceAccounts[0]"],
        ),
        (
            src(json!({"serviceAccounts": ["sa"], "namespaces": ["ns"]})),
            vec!["spec.rules[0].from[0].source.serviceAccounts"],
        ),
        (
            op(json!({"ports": ["+80"]})),
            vec!["spec.rules[0].to[0].operation.ports[0]"],
        ),
        (
            op(json!({"notPorts": ["65536"]})),
            vec!["spec.rules[0].to[0].operation.notPorts[0]"],
        ),
        (
            op(json!({"paths": ["/foo/{*}.txt"]})),
            vec!["spec.rules[0].to[0].operation.paths[0]"],
        ),
        (
            op(json!({"paths": ["/{**}/foo/{*}"]})),
            vec!["spec.rules[0].to[0].operation.paths[0]"],
        ),
        (
            op(json!({"paths": ["/*/baz/{*}"]})),
            vec!["spec.rules[0].to[0].operation.paths[0]"],
        ),
        (
            op(json!({"paths": ["/foo//{*}"]})),
            vec!["spec.rules[0].to[0].operation.paths[0]"],
        ),
        (
            op(json!({"notPaths": ["foo/{*}"]})),
            vec!["spec.rules[0].to[0].operation.notPaths[0]"],
        ),
        (
            op(json!({"paths": ["/foo/{id}/{*}"]})),
            vec!["spec.rules[0].to[0].operation.paths[0]"],
        ),
        (when("request.header[x]"), vec!["spec.rules[0].when[0].key"]),
        (when("request.headers[]"), vec!["spec.rules[0].when[0].key"]),
        (
            when("request.headers[a b]"),
            vec!["spec.rules[0].when[0].key"],
        ),
        (
            when("request.auth.claims[a]b"),
            vec!["spec.rules[0].when[0].key"],
        ),
        (
            when("request.auth.claims"),
            vec!["spec.rules[0].when[0].key"],
        ),
        (
            when("destination.namespace"),
            vec!["spec.rules[0].when[0].key"],
        ),
        (
            when("destination.labels[app]"),
            vec!["spec.rules[0].when[0].key"],
        ),
        (
            when("experimental.envoy.filters.a[b]"),
            vec!["spec.rules[0].when[0].key"],
        ),
        (
            when("source.serviceAccount"),
            vec!["spec.rules[0].when[0].key"],
        ),
        (
            rules(json!({"when": [{"key": "source.ip"}]})),
            vec!["spec.rules[0].when[0]"],
        ),
        (
            rules(json!({"when": [{"values": ["x"]}]})),
            vec!["spec.rules[0].when[0].key"],
        ),
        (
            rules(
                json!({"when": [{"key": "source.ip", "values": ["x"], "notValues": ["10.0.0.1", ""]}]}),
            ),
            vec![
                "spec.rules[0].when[0].values[0]",
                "spec.rules[0].when[0].notValues[1]",
            ],
        ),
        (
            rules(json!({"when": [{"key": "destination.port", "values": ["http"]}]})),
            vec!["spec.rules[0].when[0].values[0]"],
        ),
        (
            json!({"action": "CUSTOM", "provider": {"name": "x"}, "rules": [{"from": [{"source": {"principals": ["a"], "ipBlocks": ["1.2.3.4"]}}], "when": [{"key": "request.auth.claims[a]", "values": ["b"]}]}]}),
            vec![
                "spec.rules[0].from[0].source.principals",
                "spec.rules[0].when[0].key",
            ],
        ),
    ];
    for (spec, fields) in cases {
        let (state, table, errors) = build(vec![policy("shop", "p", spec.clone())]);
        let got: Vec<(&str, bool)> = errors
            .iter()
            .map(|e| (e.field(), e.drops_object()))
            .collect();
        let want: Vec<(&str, bool)> = fields.iter().map(|f| (*f, true)).collect();
        assert_eq!(got, want, "{spec}: {errors:?}");
        assert!(
            errors
                .iter()
                .all(|e| e.object().to_string() == "AuthorizationPolicy shop/p")
        );
        // It fails closed: the namespace's pods (or the selected ones) deny everything.
        let decision = decide(&table, workload(&state, "web"), &get());
        let selects_web = !spec["selector"].is_object();
        assert_eq!(decision.allowed, !selects_web, "{spec}");
        if selects_web {
            assert_eq!(
                decision.reason,
                "denied by shop/p: the AuthorizationPolicy is invalid and fails closed until it \
                 is fixed",
                "{spec}"
            );
        }
    }
}

#[test]
fn what_is_wrong_but_harmless_stays_in() {
    let mut bad_annotation = policy("shop", "p", json!({"action": "DENY", "rules": [{}]}));
    bad_annotation.metadata.annotations.dry_run = Some("yes".into());
    let cases: Vec<(istio::AuthorizationPolicy, &str, bool)> = vec![
        // Enforced, not a dry run, as Istio does.
        (
            bad_annotation,
            "metadata.annotations.istio.io/dry-run",
            false,
        ),
        (
            policy("shop", "p", json!({"action": "DENY"})),
            "spec.rules",
            true,
        ),
        (
            policy("shop", "p", json!({"action": "AUDIT"})),
            "spec.rules",
            true,
        ),
        (
            policy(
                "shop",
                "p",
                json!({"action": "CUSTOM", "provider": {"name": "x"}}),
            ),
            "spec.rules",
            true,
        ),
    ];
    for (written, field, allowed) in cases {
        let (state, table, errors) = build(vec![written]);
        assert_eq!(errors.len(), 1, "{field}: {errors:?}");
        assert_eq!(
            (errors[0].field(), errors[0].drops_object()),
            (field, false)
        );
        assert_eq!(
            decide(&table, workload(&state, "web"), &get()).allowed,
            allowed,
            "{field}"
        );
    }
}

/// Each case: the rejected policy the agent recorded; the pods that then deny everything.
#[test]
fn rejected_policies_stand_in_and_deny_what_they_selected() {
    let rejected = |namespace: &str, selector: RejectedSelector| RejectedAuthorizationPolicy {
        metadata: istio::Metadata {
            name: "bad".into(),
            namespace: namespace.into(),
            creation_timestamp: None,
        },
        selector,
    };
    let cart = || RejectedSelector::Labels(crate::testing::labels(&[("app", "cart")]));
    let cases = [
        (
            rejected("shop", RejectedSelector::None),
            vec!["cart", "web"],
        ),
        (rejected("shop", cart()), vec!["cart"]),
        (
            rejected("shop", RejectedSelector::Unreadable),
            vec!["cart", "web"],
        ),
        (
            rejected("istio-system", RejectedSelector::None),
            vec!["cart", "web", "client", "gw"],
        ),
        (rejected("istio-system", cart()), vec!["cart"]),
        // In the root namespace a selector reaches every namespace: an unreadable one, all.
        (
            rejected("istio-system", RejectedSelector::Unreadable),
            vec!["cart", "web", "client", "gw"],
        ),
    ];
    for (stand_in, denied) in cases {
        let mut state = state(vec![policy("shop", "allow-all", json!({"rules": [{}]}))]);
        state
            .fail_closed
            .authorization_policies
            .push(stand_in.clone());
        let (table, errors) = AuthzTable::build(&state);
        assert_eq!(errors, vec![]);
        for w in &state.workloads {
            let want = denied.contains(&w.name.as_str());
            for req in [get(), tcp()] {
                let decision = decide(&table, w, &req);
                assert_eq!(decision.allowed, !want, "{stand_in:?} {}", w.name);
                if want {
                    assert_eq!(
                        decision.by,
                        Some(rule_ref(
                            &stand_in.metadata.namespace,
                            "bad",
                            AuthzAction::Deny,
                            None
                        ))
                    );
                }
            }
            assert_eq!(
                table.enforces(w),
                want || w.namespace == "shop",
                "{}",
                w.name
            );
            if want {
                assert!(
                    table
                        .applicable(w)
                        .iter()
                        .any(|s| s.fail_closed && s.action == AuthzAction::Deny)
                );
            }
        }
    }
    // An invalid policy that reaches the table anyway fails closed there too; an AUDIT or a
    // dry run does not.
    let invalid = |action: &str| {
        policy(
            "shop",
            "bad",
            json!({"action": action, "rules": [{"from": []}]}),
        )
    };
    for (written, fails_closed) in [
        (invalid("ALLOW"), true),
        (invalid("DENY"), true),
        (invalid("CUSTOM"), true),
        (invalid("AUDIT"), false),
        (dry_run(invalid("DENY")), false),
    ] {
        let (state, table, errors) = build(vec![written]);
        assert!(errors.iter().all(Error::drops_object) && !errors.is_empty());
        assert_eq!(
            !decide(&table, workload(&state, "web"), &get()).allowed,
            fails_closed
        );
        assert_eq!(table.enforces(workload(&state, "web")), fails_closed);
    }
}

#[test]
fn enforcement_and_http_needs_follow_the_applicable_policies() {
    let (state, table, _) = build(vec![
        policy(
            "shop",
            "cart-l4",
            json!({"selector": {"matchLabels": {"app": "cart"}}, "rules": [{"from": [{"source": {"namespaces": ["other"]}}]}]}),
        ),
        policy(
            "shop",
            "web-audit",
            json!({"action": "AUDIT", "selector": {"matchLabels": {"app": "web"}}, "rules": [{"to": [{"operation": {"paths": ["/x"]}}]}]}),
        ),
        policy("other", "noop-deny", json!({"action": "DENY"})),
        dry_run(policy(
            "istio-system",
            "shadow",
            json!({"selector": {"matchLabels": {"app": "gw"}}, "rules": [{}]}),
        )),
        policy(
            "istio-system",
            "ext",
            json!({"action": "CUSTOM", "provider": {"name": "opa"}, "selector": {"matchLabels": {"app": "gw"}}, "rules": [{}]}),
        ),
    ]);
    let cases = [
        // (pod, enforces, needs_http, applicable in order)
        (
            "cart",
            true,
            false,
            vec!["ALLOW shop/cart-l4 (workload selector, 1 rule)"],
        ),
        (
            "web",
            false,
            true,
            vec!["AUDIT shop/web-audit (workload selector, 1 rule)"],
        ),
        (
            "client",
            false,
            false,
            vec!["DENY other/noop-deny (namespace-wide, 0 rules)"],
        ),
        (
            "gw",
            true,
            true,
            vec![
                "CUSTOM istio-system/ext (mesh-wide selector, 1 rule, provider opa)",
                "ALLOW istio-system/shadow (mesh-wide selector, 1 rule, dry run)",
            ],
        ),
    ];
    for (pod, enforces, needs_http, applicable) in cases {
        let w = workload(&state, pod);
        assert_eq!(table.enforces(w), enforces, "{pod}");
        assert_eq!(table.needs_http(w), needs_http, "{pod}");
        let got: Vec<String> = table
            .applicable(w)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, applicable, "{pod}");
    }
    // Without HTTP needs, one L4 evaluation decides for every request.
    let cart = workload(&state, "cart");
    for req in [
        tcp().peer("other", "x"),
        get().peer("other", "x").path("/admin"),
    ] {
        assert!(decide(&table, cart, &req).allowed);
    }
    assert!(!decide(&table, cart, &get().peer("shop", "x")).allowed);
}

#[test]
fn policies_are_tried_root_first_then_by_name() {
    let deny = |ns: &str, name: &str| policy(ns, name, json!({"action": "DENY", "rules": [{}]}));
    let (state, table, _) = build(vec![
        deny("shop", "b"),
        deny("shop", "a"),
        deny("istio-system", "z"),
    ]);
    let decision = decide(&table, workload(&state, "cart"), &get());
    assert_eq!(
        decision.by,
        Some(rule_ref("istio-system", "z", AuthzAction::Deny, Some(0)))
    );
    let order: Vec<String> = table
        .applicable(workload(&state, "cart"))
        .iter()
        .map(|s| s.policy.name.to_string())
        .collect();
    assert_eq!(order, ["z", "a", "b"]);
}

#[test]
fn request_principals_read_iss_and_sub_from_the_claims_or_the_principal() {
    let auth = |principal: &str, claims: serde_json::Value| RequestAuth {
        principal: principal.into(),
        audiences: vec![],
        presenter: None,
        claims,
    };
    let cases = [
        // The claims win: an issuer URL with a path keeps its '/'.
        (
            auth(
                "x/y",
                json!({"iss": "https://a.example/tenant", "sub": "u"}),
            ),
            ("https://a.example/tenant", "u"),
        ),
        // Without them, the principal split at its last '/'.
        (
            auth("https://a.example/tenant/u", json!({})),
            ("https://a.example/tenant", "u"),
        ),
        (auth("no-slash", json!(null)), ("no-slash", "")),
    ];
    for (auth, want) in cases {
        assert_eq!(auth.issuer_and_subject(), want, "{}", auth.principal);
    }
}
