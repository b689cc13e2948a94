//! `shuntctl routes` and `shuntctl explain`: the routes one pod sees, and a dry run of one
//! request. Both read the same [`RouteTable`] lookups the data path calls (with a trace), so
//! they cannot disagree with it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::{Deserialize, Serialize};

use super::compile::{CompiledHttpRoute, CompiledL4Route, RouteTable};
use super::convert::grpc_status_name;
use super::decision::{
    AbortKind, Cluster, Destination, HashAlgorithm, HashKey, HttpAction, HttpDecision, HttpRoute,
    LoadBalancer, OutboundTarget, PortProtocol, RequestFacts, TcpDecision, TrafficPolicy,
    WeightedDestination,
};
use super::table::{Trace, describe_http_match, describe_l4_match, describe_string_match};
use crate::model::Workload;

/// Why [`explain`] cannot run a request: what was asked is malformed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL does not parse or has no host.
    #[error("{url:?} is not a URL like http://cart.shop:8080/path: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `-H` header is not `name: value` with a valid name and value.
    #[error("-H {header:?}: expected 'name: value' with a valid header name and value")]
    Header {
        /// The header as given.
        header: String,
    },
    /// The `-X` method is not a valid HTTP method token.
    #[error("-X {method:?} is not an HTTP method")]
    Method {
        /// The method as given.
        method: String,
    },
}

/// The routes of one host and port, as one pod sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoutes {
    /// The registry host: a Service's FQDN or a ServiceEntry host.
    pub host: String,
    /// The host's port number.
    pub port: u16,
    /// `HTTP`, `HTTP2`, `TCP`, `TLS` or `auto-detect` (nothing declares it).
    pub protocol: String,
    /// The VirtualServices for the host, in merge order (`VirtualService namespace/name`).
    pub virtual_services: Vec<String>,
    /// The DestinationRule in force for the pod, if any.
    pub destination_rule: Option<String>,
    /// In the order they are tried; the first that matches wins.
    pub routes: Vec<RouteView>,
    /// Each subset's (and the whole host's) endpoints and traffic policy.
    pub clusters: Vec<ClusterView>,
}

/// One route as `shuntctl` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    /// `route_name`: the route's `name`, else `<vs name>.<index>` (`.tcp.<i>`, `.tls.<i>` at
    /// L4), or `default`.
    pub name: String,
    /// The route's VirtualService (`VirtualService namespace/name`); `None` for a default route.
    pub virtual_service: Option<String>,
    /// `http`, `tcp`, `tls` or `default`.
    pub section: String,
    /// Match blocks (ORed), each a list of fields (ANDed); empty: matches everything.
    pub matches: Vec<Vec<String>>,
    /// `forward`, `redirect ...` or `direct response ...`.
    pub action: String,
    /// Where a `forward` route sends traffic; empty for a redirect or direct response.
    pub destinations: Vec<DestinationView>,
    /// Retry, timeout, fault, mirror, CORS, rewrite, headers, rate limit.
    pub policies: Vec<String>,
}

/// One destination of a route, as `shuntctl` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationView {
    /// `destination.host`, fully qualified.
    pub host: String,
    /// `destination.subset`.
    pub subset: Option<String>,
    /// `destination.port.number`; `None`: the request's port.
    pub port: Option<u16>,
    /// `route[].weight` (100 for a lone destination).
    pub weight: u32,
}

/// One upstream cluster: its endpoints and traffic policy, described.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// `outbound|80|v1|cart.shop.svc.cluster.local`.
    pub name: String,
    /// `address:port (namespace/pod)` per endpoint, then each DNS name the proxy resolves.
    pub endpoints: Vec<String>,
    /// `ROUND_ROBIN`, `LEAST_REQUEST`, `RANDOM`, `PASSTHROUGH ...` or the consistent hash's key and
    /// algorithm.
    pub load_balancer: String,
    /// The `connectionPool` limits that are set; `None`: none is.
    pub connection_pool: Option<String>,
    /// The `outlierDetection` in force; `None`: endpoints are never ejected.
    pub outlier_detection: Option<String>,
    /// The DestinationRule the policy comes from (`DestinationRule namespace/name`), if any.
    pub policy_source: Option<String>,
    /// The `destination_version` label: the subset's `version`, else the endpoints' common one.
    pub version: Option<String>,
}

/// The routes `source` sees: every registry host and port in its registry (ServiceEntry
/// `exportTo`) with a VirtualService or a DestinationRule in force for it, sorted by host
/// then port.
#[must_use]
pub fn pod_routes(table: &RouteTable, source: &Workload) -> Vec<HostRoutes> {
    let mut out = Vec::new();
    let namespace = Some(source.namespace.as_str());
    for entry in table.registry.values() {
        if !entry.visibility.allows(namespace) {
            continue;
        }
        let virtual_services = table.virtual_services_for(&entry.host, namespace);
        let (rule_index, rule) = table.destination_rule(entry, namespace).unzip();
        if virtual_services.is_empty() && rule.is_none() {
            continue;
        }
        for port in &entry.ports {
            let mut routes = Vec::new();
            let l4 = matches!(port.protocol, PortProtocol::Tcp | PortProtocol::Tls);
            for vs in &virtual_services {
                if !l4 {
                    routes.extend(vs.http.iter().map(http_route_view));
                }
                if port.protocol != PortProtocol::Tls {
                    routes.extend(
                        vs.tcp
                            .iter()
                            .map(|r| l4_route_view(r, "tcp", &vs.object.to_string())),
                    );
                }
                routes.extend(
                    vs.tls
                        .iter()
                        .map(|r| l4_route_view(r, "tls", &vs.object.to_string())),
                );
            }
            if routes.is_empty()
                && let Some(default) = table.default_routes.get(&(entry.host.clone(), port.port))
            {
                routes.push(route_view(default, "default", Vec::new()));
            }
            let mut clusters: Vec<&Arc<Cluster>> = table
                .clusters
                .iter()
                .filter(|((key, rule), _)| {
                    key.host == entry.host && key.port == port.port && *rule == rule_index
                })
                .map(|(_, cluster)| cluster)
                .collect();
            clusters.sort_by(|a, b| a.key.cmp(&b.key));
            out.push(HostRoutes {
                host: entry.host.to_string(),
                port: port.port,
                protocol: protocol_name(port.protocol).into(),
                virtual_services: virtual_services
                    .iter()
                    .map(|vs| vs.object.to_string())
                    .collect(),
                destination_rule: rule.map(|r| r.object.to_string()),
                routes,
                clusters: clusters.into_iter().map(|c| cluster_view(c)).collect(),
            });
        }
    }
    out
}

fn protocol_name(protocol: PortProtocol) -> &'static str {
    match protocol {
        PortProtocol::Http => "HTTP",
        PortProtocol::Http2 => "HTTP2",
        PortProtocol::Tcp => "TCP",
        PortProtocol::Tls => "TLS",
        PortProtocol::Sniff => "auto-detect",
    }
}

fn http_route_view(route: &CompiledHttpRoute) -> RouteView {
    route_view(
        &route.route,
        "http",
        route.matches.iter().map(describe_http_match).collect(),
    )
}

fn l4_route_view(route: &CompiledL4Route, section: &str, vs: &str) -> RouteView {
    RouteView {
        name: route.name.to_string(),
        virtual_service: Some(vs.to_owned()),
        section: section.into(),
        matches: route.matches.iter().map(describe_l4_match).collect(),
        action: "forward".into(),
        destinations: route.destinations.iter().map(destination_view).collect(),
        policies: Vec::new(),
    }
}

fn destination_view(d: &WeightedDestination) -> DestinationView {
    DestinationView {
        host: d.destination.host.to_string(),
        subset: d.destination.subset.as_deref().map(str::to_owned),
        port: d.destination.port,
        weight: d.weight,
    }
}

fn route_view(route: &HttpRoute, section: &str, matches: Vec<Vec<String>>) -> RouteView {
    let (action, destinations) = match &route.action {
        HttpAction::Forward(list) => (
            "forward".to_owned(),
            list.iter().map(destination_view).collect(),
        ),
        HttpAction::Redirect(r) => (
            format!(
                "redirect {} to {}{}{}",
                r.status.as_u16(),
                r.authority.as_deref().unwrap_or("(same host)"),
                r.port.map(|p| format!(":{p}")).unwrap_or_default(),
                r.uri.as_deref().unwrap_or("(same path)")
            ),
            Vec::new(),
        ),
        HttpAction::DirectResponse { status, body } => (
            format!(
                "direct response {}{}",
                status.as_u16(),
                body.as_ref()
                    .map(|b| format!(" ({} bytes)", b.len()))
                    .unwrap_or_default()
            ),
            Vec::new(),
        ),
    };
    RouteView {
        name: route.name.to_string(),
        virtual_service: route.virtual_service.as_ref().map(ToString::to_string),
        section: section.into(),
        matches,
        action,
        destinations,
        policies: route_policies(route),
    }
}

fn route_policies(route: &HttpRoute) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(timeout) = route.timeout {
        out.push(format!("timeout {timeout:?} (504 UT on expiry)"));
    }
    let retries = &route.retries;
    if retries.attempts == 0 {
        out.push("retries off".into());
    } else {
        let on = &retries.retry_on;
        let mut conditions: Vec<String> = [
            (on.five_xx, "5xx"),
            (on.gateway_error, "gateway-error"),
            (on.connect_failure, "connect-failure"),
            (on.reset, "reset"),
            (on.refused_stream, "refused-stream"),
            (on.retriable_4xx, "retriable-4xx"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| (*name).to_owned())
        .collect();
        if !on.retriable_status_codes.is_empty() {
            conditions.push(format!(
                "retriable-status-codes {:?}",
                on.retriable_status_codes
            ));
        }
        conditions.extend(
            on.grpc_codes
                .iter()
                .map(|c| format!("grpc {}", grpc_status_name(*c))),
        );
        out.push(format!(
            "retry {} attempts on {}{}",
            retries.attempts,
            conditions.join(","),
            retries
                .per_try_timeout
                .map(|t| format!(", per try {t:?}"))
                .unwrap_or_default()
        ));
    }
    if let Some(fault) = &route.fault {
        if let Some(delay) = &fault.delay {
            out.push(format!(
                "fault delay {:?} for {}% of requests (DI)",
                delay.fixed_delay, delay.percentage
            ));
        }
        if let Some(abort) = &fault.abort {
            let what = match abort.kind {
                AbortKind::Http(status) => format!("HTTP {}", status.as_u16()),
                AbortKind::Grpc(code) => format!("grpc-status {code} ({})", grpc_status_name(code)),
            };
            out.push(format!(
                "fault abort {what} for {}% of requests (FI)",
                abort.percentage
            ));
        }
    }
    for mirror in &route.mirrors {
        out.push(format!(
            "mirror {}% to {}",
            mirror.percentage,
            describe_destination(&mirror.destination)
        ));
    }
    if let Some(cors) = &route.cors {
        let origins: Vec<String> = cors
            .allow_origins
            .iter()
            .map(describe_string_match)
            .collect();
        out.push(format!(
            "CORS origins [{}] methods [{}]",
            origins.join(", "),
            cors.allow_methods
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if let Some(rewrite) = &route.rewrite {
        if let Some(uri) = &rewrite.uri {
            out.push(format!("rewrite uri {uri:?}"));
        }
        if let Some((re, to)) = &rewrite.uri_regex {
            out.push(format!("rewrite uri regex {:?} -> {to:?}", re.as_str()));
        }
        if let Some(authority) = &rewrite.authority {
            out.push(format!("rewrite authority {authority:?}"));
        }
    }
    if !route.request_headers.is_empty() {
        out.push("request header edits".into());
    }
    if !route.response_headers.is_empty() {
        out.push("response header edits".into());
    }
    if let Some(limit) = &route.rate_limit {
        out.push(format!(
            "rate limit {} rps, burst {} ({}; 429 RL over it)",
            limit.requests_per_second, limit.burst, limit.policy
        ));
    }
    out
}

fn describe_destination(d: &Destination) -> String {
    let mut text = d.host.to_string();
    if let Some(port) = d.port {
        text.push_str(&format!(":{port}"));
    }
    if let Some(subset) = &d.subset {
        text.push_str(&format!(" subset {subset}"));
    }
    text
}

fn describe_lb(lb: &LoadBalancer) -> String {
    match lb {
        LoadBalancer::RoundRobin => "ROUND_ROBIN".into(),
        LoadBalancer::LeastRequest => "LEAST_REQUEST".into(),
        LoadBalancer::Random => "RANDOM".into(),
        LoadBalancer::Passthrough => "PASSTHROUGH (the original destination address)".into(),
        LoadBalancer::ConsistentHash { key, algorithm } => {
            let key = match key {
                HashKey::Header(name) => format!("header {name}"),
                HashKey::Cookie { name, path, ttl } => format!(
                    "cookie {name}{}{}",
                    path.as_deref()
                        .map(|p| format!(" path {p}"))
                        .unwrap_or_default(),
                    ttl.map(|t| format!(" ttl {t:?} (issued when absent)"))
                        .unwrap_or_default()
                ),
                HashKey::SourceIp => "source IP".into(),
                HashKey::QueryParameter(name) => format!("query parameter {name}"),
            };
            let algorithm = match algorithm {
                HashAlgorithm::RingHash { minimum_ring_size } => {
                    format!("ring hash, minimum ring {minimum_ring_size}")
                }
                HashAlgorithm::Maglev { table_size } => format!("maglev, table {table_size}"),
            };
            format!("consistent hash on {key} ({algorithm})")
        }
    }
}

fn describe_policy(policy: &TrafficPolicy) -> (Option<String>, Option<String>) {
    let pool = &policy.connection_pool;
    let mut parts = Vec::new();
    let mut push = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    };
    push(
        "maxConnections",
        pool.max_connections.map(|v| v.to_string()),
    );
    push(
        "connectTimeout",
        pool.connect_timeout.map(|v| format!("{v:?}")),
    );
    push(
        "http1MaxPendingRequests",
        pool.http1_max_pending_requests.map(|v| v.to_string()),
    );
    push(
        "http2MaxRequests",
        pool.http2_max_requests.map(|v| v.to_string()),
    );
    push(
        "maxRequestsPerConnection",
        pool.max_requests_per_connection.map(|v| v.to_string()),
    );
    push("maxRetries", pool.max_retries.map(|v| v.to_string()));
    push("idleTimeout", pool.idle_timeout.map(|v| format!("{v:?}")));
    let pool = (!parts.is_empty()).then(|| format!("{} (overflow: 503 UO)", parts.join(", ")));
    let outlier = policy.outlier_detection.as_ref().map(|o| {
        format!(
            "eject after {} consecutive 5xx / {} gateway errors, every {:?}, for {:?} x ejections, \
             at most {}% ejected, off below {}% healthy",
            o.consecutive_5xx_errors
                .map_or_else(|| "-".into(), |v| v.to_string()),
            o.consecutive_gateway_errors
                .map_or_else(|| "-".into(), |v| v.to_string()),
            o.interval,
            o.base_ejection_time,
            o.max_ejection_percent,
            o.min_health_percent
        )
    });
    (pool, outlier)
}

fn cluster_view(cluster: &Cluster) -> ClusterView {
    let (connection_pool, outlier_detection) = describe_policy(&cluster.policy);
    ClusterView {
        name: cluster.key.to_string(),
        endpoints: cluster
            .endpoints
            .iter()
            .map(|e| match &e.workload {
                Some(w) => format!("{} ({}/{})", e.addr, w.namespace, w.name),
                None => e.addr.to_string(),
            })
            .chain(cluster.dns.iter().map(|d| {
                format!(
                    "{}:{} (resolved by the proxy's DNS, IPv4 answers, every 30s{})",
                    d.name,
                    d.port,
                    if d.weight == 1 {
                        String::new()
                    } else {
                        format!(", weight {}", d.weight)
                    }
                )
            }))
            .collect(),
        load_balancer: describe_lb(&cluster.policy.load_balancer),
        connection_pool,
        outlier_detection,
        policy_source: cluster.policy.source.as_ref().map(ToString::to_string),
        version: cluster.version.as_deref().map(str::to_owned),
    }
}

/// One request to explain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplainRequest {
    /// The request's URL, e.g. `http://cart.shop:8080/path`; the host is looked up as the client's
    /// DNS would (a Service's ClusterIP, or routed by `Host`).
    pub url: String,
    /// `-X`; `None`: GET.
    #[serde(default)]
    pub method: Option<String>,
    /// `name: value`, as given to `-H`.
    #[serde(default)]
    pub headers: Vec<String>,
    /// The peer the destination's AuthorizationPolicies are asked about: `None`, the sending
    /// pod's own identity (a meshed pod is authenticated, by HBONE or same-node delivery);
    /// `none`, a plaintext client; else a principal (`cluster.local/ns/x/sa/y`, with or
    /// without `spiffe://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The claims of a JWT assumed valid (RequestAuthentication's result): its request
    /// principal `iss/sub`, `request.auth.*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt_claims: Option<serde_json::Value>,
}

/// What the data path would do with one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// `namespace/name` of the pod sending the request.
    pub source: String,
    /// `METHOD url`, as asked.
    pub request: String,
    /// The address the client would dial, and what it is.
    pub destination: String,
    /// The registry host the request is routed as; `None` when none matches.
    pub host: Option<String>,
    /// How the host was found (at L4: that the port is TCP or TLS).
    pub resolved_by: String,
    /// The VirtualServices that applied to the host, in merge order.
    pub virtual_services: Vec<String>,
    /// `route`, `no route matched: 404 NR`, `blocked by REGISTRY_ONLY: 502 NR`, ...
    pub outcome: String,
    /// The route matched and why: which VirtualService, which route, which match block.
    pub matched: Option<String>,
    /// The route taken (HTTP only).
    pub route: Option<RouteView>,
    /// Several destinations: one is picked per request, by weight.
    pub weighted_pick: bool,
    /// Each destination of the route, with the cluster it reaches.
    pub destinations: Vec<DestinationExplanation>,
    /// What each endpoint pod's AuthorizationPolicies decide for this request (filled by the
    /// agent, which holds the policies).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<AuthzExplanation>,
}

/// The authorization decision of one endpoint pod for the explained request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzExplanation {
    /// The endpoint, `ip:port`.
    pub endpoint: String,
    /// Its pod, `namespace/name`.
    pub pod: String,
    /// `allowed by ...`, `denied by ...`, `allowed: no ALLOW policy`, ...
    pub decision: String,
    /// Whether DENY and ALLOW let it through (the CUSTOM checks come on top).
    pub allowed: bool,
    /// The CUSTOM policies whose provider would be asked first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom: Vec<String>,
    /// The AUDIT and dry-run policies that would report it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reported: Vec<String>,
    /// The peer principal assumed; `None`: plaintext.
    pub principal: Option<String>,
    /// The request principal (`iss/sub`) assumed; `None`: no JWT.
    pub request_principal: Option<String>,
}

/// One destination of the explained route, and what dialling it would meet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationExplanation {
    /// The destination as the route names it.
    pub destination: DestinationView,
    /// The cluster it reaches; `None` when it cannot be dialled (see `error`).
    pub cluster: Option<ClusterView>,
    /// For a consistent hash: the value that would be hashed for this request.
    pub hash_key: Option<String>,
    /// Why the destination cannot be dialled (503 UH/NC at request time).
    pub error: Option<String>,
    /// The route's RateLimitPolicy bucket (`rps, burst, policy`), if any.
    pub rate_limit: Option<String>,
}

/// Explains `request` sent by `source`.
pub fn explain(
    table: &RouteTable,
    source: &Workload,
    request: &ExplainRequest,
) -> Result<Explanation, Error> {
    let url_error = |reason: &str| Error::Url {
        url: request.url.clone(),
        reason: reason.to_owned(),
    };
    let uri: Uri = request
        .url
        .parse()
        .map_err(|e: http::uri::InvalidUri| url_error(&e.to_string()))?;
    let name = uri
        .host()
        .ok_or_else(|| url_error("it has no host"))?
        .to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let method = match &request.method {
        None => Method::GET,
        Some(m) => {
            Method::from_bytes(m.as_bytes()).map_err(|_| Error::Method { method: m.clone() })?
        }
    };
    let mut headers = HeaderMap::new();
    for header in &request.headers {
        let parsed = header.split_once(':').and_then(|(n, v)| {
            Some((
                HeaderName::from_bytes(n.trim().as_bytes()).ok()?,
                HeaderValue::from_str(v.trim()).ok()?,
            ))
        });
        let (name, value) = parsed.ok_or_else(|| Error::Header {
            header: header.clone(),
        })?;
        headers.append(name, value);
    }
    let authority = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            uri.authority()
                .map(|a| a.to_string())
                .unwrap_or_else(|| name.clone())
        });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let origin: Uri = path
        .parse()
        .map_err(|e: http::uri::InvalidUri| url_error(&e.to_string()))?;

    // What the client's DNS lookup would give: a Service's ClusterIP, a ServiceEntry address.
    let (dst, destination) = match name.parse::<Ipv4Addr>() {
        Ok(ip) => (SocketAddrV4::new(ip, port), format!("{ip}:{port}")),
        Err(_) => match table.host_by_name(
            &name,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            Some(source),
        ) {
            Some(target) => match target.service.as_ref().and_then(|s| s.cluster_ip) {
                Some(ip) => (
                    SocketAddrV4::new(ip, port),
                    format!("{ip}:{port} (ClusterIP of {})", target.host),
                ),
                None => (
                    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
                    format!(
                        "whatever DNS gives for {name} (port {port}); routed by the Host header"
                    ),
                ),
            },
            None => (
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
                format!("whatever DNS gives for {name} (port {port}): not a registry host"),
            ),
        },
    };
    let target = table.target(dst, Some(source));
    let protocol = match &target {
        OutboundTarget::Service(t) => t.protocol,
        OutboundTarget::Unknown { protocol, .. } => *protocol,
        // A mesh pod's connection never reaches a gateway target.
        OutboundTarget::Gateway(_) => PortProtocol::Sniff,
    };
    let mut explanation = Explanation {
        source: format!("{}/{}", source.namespace, source.name),
        request: format!("{method} {}", request.url),
        destination,
        host: None,
        resolved_by: String::new(),
        virtual_services: Vec::new(),
        outcome: String::new(),
        matched: None,
        route: None,
        weighted_pick: false,
        destinations: Vec::new(),
        authorization: Vec::new(),
    };
    let mut trace = Trace::default();
    if matches!(protocol, PortProtocol::Tcp | PortProtocol::Tls) {
        let sni = (protocol == PortProtocol::Tls).then_some(name.as_str());
        let decision = table.route_tcp(&target, sni, Some(source), Some(&mut trace));
        fill_trace(&mut explanation, &trace);
        explanation.resolved_by =
            format!("port {port} is {} (routed at L4)", protocol_name(protocol));
        match decision {
            TcpDecision::Forward {
                route_name,
                destinations,
                ..
            } => {
                explanation.outcome = format!("forward (route {route_name})");
                explanation.weighted_pick = destinations.len() > 1;
                explanation.destinations = destinations
                    .iter()
                    .map(|d| explain_destination(table, d, port, None, source))
                    .collect();
            }
            TcpDecision::Passthrough => {
                explanation.outcome = "passthrough to the original destination (ALLOW_ANY)".into()
            }
            TcpDecision::BlockedByRegistryOnly => {
                explanation.outcome = "blocked by REGISTRY_ONLY: the connection is closed".into()
            }
            TcpDecision::NoRoute => {
                explanation.outcome = "no tcp or tls route matched: the connection is closed".into()
            }
        }
        return Ok(explanation);
    }
    let facts = RequestFacts {
        method: &method,
        uri: &origin,
        authority: Some(&authority),
        headers: &headers,
        port,
        source: Some(source),
    };
    let decision = table.route_http(&target, &facts, Some(&mut trace));
    fill_trace(&mut explanation, &trace);
    match decision {
        HttpDecision::Route(route) => {
            explanation.outcome = format!("route {}", route.name);
            let matches = trace
                .matched
                .as_ref()
                .map(|m| vec![m.fields.clone()])
                .unwrap_or_default();
            let section = if route.virtual_service.is_some() {
                "http"
            } else {
                "default"
            };
            explanation.route = Some(route_view(&route, section, matches));
            if let HttpAction::Forward(list) = &route.action {
                explanation.weighted_pick = list.len() > 1;
                explanation.destinations = list
                    .iter()
                    .map(|d| explain_destination(table, d, port, Some(&facts), source))
                    .collect();
                for d in &mut explanation.destinations {
                    d.rate_limit = route.rate_limit.as_ref().map(|l| {
                        format!(
                            "{} rps, burst {} ({})",
                            l.requests_per_second, l.burst, l.policy
                        )
                    });
                }
            }
        }
        HttpDecision::NoVirtualHost { authority } => {
            explanation.outcome = format!("no virtual host for {authority:?}: 404 NR");
        }
        HttpDecision::HttpsRedirect => {
            explanation.outcome = "the server has httpsRedirect: 301 to https".into();
        }
        HttpDecision::NoRouteMatched { virtual_service } => {
            explanation.outcome = format!(
                "no route of {virtual_service} (or the VirtualServices merged with it) matched: 404 NR"
            );
        }
        HttpDecision::BlockedByRegistryOnly { authority } => {
            explanation.outcome =
                format!("blocked by REGISTRY_ONLY: {authority} is not in the registry: 502 NR");
        }
    }
    Ok(explanation)
}

fn fill_trace(explanation: &mut Explanation, trace: &Trace) {
    explanation.host = trace.host.as_ref().map(ToString::to_string);
    explanation.resolved_by = trace.resolved_by.clone();
    explanation.virtual_services = trace
        .virtual_services
        .iter()
        .map(ToString::to_string)
        .collect();
    explanation.matched = trace.matched.as_ref().map(|m| {
        let block = match m.match_index {
            None => "it has no match block, so it matches every request".to_owned(),
            Some(i) => format!(
                "match[{i}]{} matched: {}",
                m.match_name
                    .as_ref()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                if m.fields.is_empty() {
                    "no conditions".to_owned()
                } else {
                    m.fields.join(" AND ")
                }
            ),
        };
        format!(
            "{} spec.{}[{}]: {block}; earlier routes did not match",
            m.virtual_service, m.section, m.route_index
        )
    });
}

fn explain_destination(
    table: &RouteTable,
    d: &WeightedDestination,
    port: u16,
    request: Option<&RequestFacts<'_>>,
    source: &Workload,
) -> DestinationExplanation {
    let (cluster, error) = match table.find_cluster(&d.destination, port, Some(source)) {
        Ok(cluster) => (Some(cluster), None),
        Err(e) => (
            None,
            Some(format!("{e}: the request would get 503 (NC/UH)")),
        ),
    };
    let hash_key = cluster.as_ref().and_then(|c| match &c.policy.load_balancer {
        LoadBalancer::ConsistentHash { key, .. } => Some(match key {
            HashKey::SourceIp => format!("source IP {}", source.ip.map_or_else(|| "(unknown)".into(), |ip| ip.to_string())),
            HashKey::Header(name) => match request.and_then(|r| r.headers.get(name)).and_then(|v| v.to_str().ok()) {
                Some(v) => format!("header {name}: {v:?}"),
                None => format!("header {name} is absent: a random endpoint"),
            },
            HashKey::QueryParameter(name) => {
                let value = request.and_then(|r| r.uri.query()).and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))));
                match value {
                    Some(v) => format!("query parameter {name}={v:?}"),
                    None => format!("query parameter {name} is absent: a random endpoint"),
                }
            }
            HashKey::Cookie { name, ttl, .. } => {
                let value = request.and_then(|r| cookie(r.headers, name));
                match (value, ttl) {
                    (Some(v), _) => format!("cookie {name}={v:?}"),
                    (None, Some(_)) => format!("cookie {name} is absent: the proxy picks an endpoint and issues the cookie"),
                    (None, None) => format!("cookie {name} is absent: a random endpoint"),
                }
            }
        }),
        _ => None,
    });
    DestinationExplanation {
        destination: destination_view(d),
        cluster: cluster.as_deref().map(cluster_view),
        hash_key,
        error,
        rate_limit: None,
    }
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then(|| v.to_owned())
        })
}
