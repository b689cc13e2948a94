//! `VirtualService`, `DestinationRule` and `ServiceEntry` specs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::decimal::Decimal;

istio_struct! {
    /// `VirtualService.spec`.
    pub struct VirtualServiceSpec {
        /// `hosts`: the hosts the routes apply to; a short name is in the VirtualService's
        /// namespace.
        pub hosts: Vec<String>,
        /// Absent, or containing `mesh`: the routes apply to sidecar (here: captured pod)
        /// traffic. Bound only to named gateways: ignored by shunt.
        pub gateways: Vec<String>,
        /// `http`: routes for HTTP traffic, tried in order; the first match wins.
        pub http: Vec<HttpRoute>,
        /// `tls`: routes for TLS traffic by SNI (passthrough; shunt does not terminate TLS).
        pub tls: Vec<TlsRoute>,
        /// `tcp`: routes for opaque TCP traffic.
        pub tcp: Vec<TcpRoute>,
        /// `exportTo`: the namespaces whose pods see the routes; empty: all.
        pub export_to: Vec<String>,
    }
}

istio_struct! {
    /// Istio's `StringMatch`: exactly one of the three (none: presence, for headers).
    pub struct StringMatch {
        /// `exact`: the whole value equals it.
        pub exact: Option<String>,
        /// `prefix`: the value starts with it.
        pub prefix: Option<String>,
        /// `regex`: RE2 syntax, matched against the whole value.
        pub regex: Option<String>,
    }
}

istio_struct! {
    /// `spec.http[]`: one HTTP route.
    pub struct HttpRoute {
        /// `name`: the route's `route_name` in logs; what a `RateLimitPolicy` names.
        pub name: Option<String>,
        /// `match`: blocks ORed, fields within one ANDed; empty: every request.
        #[serde(rename = "match")]
        pub matches: Vec<HttpMatchRequest>,
        /// `route`: weighted destinations. One of `route`, `redirect` and `directResponse`.
        pub route: Vec<HttpRouteDestination>,
        /// `redirect`: answer with a redirect instead of forwarding.
        pub redirect: Option<HttpRedirect>,
        /// `directResponse`: answer with a fixed response instead of forwarding.
        pub direct_response: Option<HttpDirectResponse>,
        /// Delegation is a gateway feature; rejected.
        pub delegate: Option<serde_json::Value>,
        /// `rewrite`: path and authority changes before forwarding.
        pub rewrite: Option<HttpRewrite>,
        /// `timeout`: the whole request's deadline, retries included; absent: none.
        pub timeout: Option<String>,
        /// `retries`; absent: Istio's default (2 attempts).
        pub retries: Option<HttpRetry>,
        /// `fault`: delays and aborts to inject.
        pub fault: Option<HttpFaultInjection>,
        /// `mirror`: one destination to shadow requests to.
        pub mirror: Option<Destination>,
        /// `mirrorPercentage`: the share of requests `mirror` copies; absent: 100%.
        pub mirror_percentage: Option<Percent>,
        /// Deprecated integer form of `mirrorPercentage`.
        pub mirror_percent: Option<i64>,
        /// `mirrors`: destinations to shadow requests to, each with its percentage.
        pub mirrors: Vec<HttpMirrorPolicy>,
        /// `corsPolicy`: answers preflights and adds CORS response headers.
        pub cors_policy: Option<CorsPolicy>,
        /// `headers`: request and response header edits of the route.
        pub headers: Option<Headers>,
    }
}

istio_struct! {
    /// `http[].match[]`: one match block.
    pub struct HttpMatchRequest {
        /// `name`: shown by `shuntctl explain`.
        pub name: Option<String>,
        /// `uri`: the path (without the query).
        pub uri: Option<StringMatch>,
        /// `scheme`: the request URI's scheme; `http` when it has none.
        pub scheme: Option<StringMatch>,
        /// `method`: the HTTP method, e.g. `exact: GET`.
        pub method: Option<StringMatch>,
        /// `authority`: the `Host`/`:authority` header.
        pub authority: Option<StringMatch>,
        /// `headers`: each named header must be present and match (empty matcher: present).
        pub headers: BTreeMap<String, StringMatch>,
        /// `port`: the destination port dialled.
        pub port: Option<i64>,
        /// `sourceLabels`: the client pod must carry these labels.
        pub source_labels: BTreeMap<String, String>,
        /// `gateways`: not empty and without `mesh`: the block never matches mesh traffic.
        pub gateways: Vec<String>,
        /// `queryParams`: each named query parameter must be present and match.
        pub query_params: BTreeMap<String, StringMatch>,
        /// `ignoreUriCase`: `uri` matches ignore ASCII case.
        pub ignore_uri_case: bool,
        /// `withoutHeaders`: each named header must be absent or not match.
        pub without_headers: BTreeMap<String, StringMatch>,
        /// `sourceNamespace`: the client pod's namespace.
        pub source_namespace: Option<String>,
    }
}

istio_struct! {
    /// A route destination: host, subset and port.
    pub struct Destination {
        /// `host`: a Service (short or full name) or ServiceEntry host.
        pub host: String,
        /// `subset`: a subset name of the host's DestinationRule.
        pub subset: Option<String>,
        /// `port`: needed when the host has several ports and the request's port is not one.
        pub port: Option<PortSelector>,
    }
}

istio_struct! {
    /// `destination.port` (and `portLevelSettings[].port`).
    pub struct PortSelector {
        /// `number`: the port number.
        pub number: Option<i64>,
    }
}

istio_struct! {
    /// `http[].route[]`: one weighted destination.
    pub struct HttpRouteDestination {
        /// `destination`: where this share of requests goes.
        pub destination: Destination,
        /// `weight`: 0–100; several destinations' weights must sum to 100.
        pub weight: Option<i64>,
        /// `headers`: edits applied only when this destination is picked.
        pub headers: Option<Headers>,
    }
}

istio_struct! {
    /// `headers` of a route or destination.
    pub struct Headers {
        /// `request`: edits to the request sent upstream.
        pub request: Option<HeaderOperations>,
        /// `response`: edits to the response sent back.
        pub response: Option<HeaderOperations>,
    }
}

istio_struct! {
    /// `headers.request` / `headers.response`: edits applied in the order remove, set, add.
    pub struct HeaderOperations {
        /// `set`: replace the header's value.
        pub set: BTreeMap<String, String>,
        /// `add`: append a value.
        pub add: BTreeMap<String, String>,
        /// `remove`: drop the header.
        pub remove: Vec<String>,
    }
}

istio_struct! {
    /// `http[].redirect`: what the redirect's `Location` changes.
    pub struct HttpRedirect {
        /// `uri`: the path; absent: the request's.
        pub uri: Option<String>,
        /// `authority`: the host; absent: the request's.
        pub authority: Option<String>,
        /// `port`: the port; absent: the request's (unless `authority` is set).
        pub port: Option<i64>,
        /// `scheme`: absent: `http`.
        pub scheme: Option<String>,
        /// `redirectCode`: 301 (default), 302, 303, 307 or 308.
        pub redirect_code: Option<i64>,
    }
}

istio_struct! {
    /// `http[].directResponse`.
    pub struct HttpDirectResponse {
        /// `status`: 200–599, required.
        pub status: Option<i64>,
        /// `body`; absent: empty.
        pub body: Option<HttpBody>,
    }
}

istio_struct! {
    /// One of `string` and `bytes` (base64).
    pub struct HttpBody {
        /// `string`: the body as text.
        pub string: Option<String>,
        /// `bytes`: the body, base64.
        pub bytes: Option<String>,
    }
}

istio_struct! {
    /// `http[].rewrite`.
    pub struct HttpRewrite {
        /// `uri`: replaces the matched prefix (or the whole path for an exact or regex match).
        pub uri: Option<String>,
        /// `authority`: the `Host`/`:authority` sent upstream.
        pub authority: Option<String>,
        /// `uriRegexRewrite`: a regex replacement on the path.
        pub uri_regex_rewrite: Option<RegexRewrite>,
    }
}

istio_struct! {
    /// `uriRegexRewrite`.
    pub struct RegexRewrite {
        /// `match`: the RE2 regex.
        #[serde(rename = "match")]
        pub pattern: Option<String>,
        /// `rewrite`: its replacement (`\1` for groups).
        pub rewrite: Option<String>,
    }
}

istio_struct! {
    /// `http[].retries`.
    pub struct HttpRetry {
        /// `attempts`: retries after the first try; 0 or absent: none.
        pub attempts: Option<i64>,
        /// `perTryTimeout`: each attempt's deadline; absent or 0: none but the route's `timeout`.
        pub per_try_timeout: Option<String>,
        /// `retryOn`: comma-separated conditions (Envoy's names, HTTP statuses, gRPC codes).
        pub retry_on: Option<String>,
    }
}

istio_struct! {
    /// `http[].fault`.
    pub struct HttpFaultInjection {
        /// `delay`: hold requests before forwarding.
        pub delay: Option<Delay>,
        /// `abort`: answer requests with an error, without forwarding.
        pub abort: Option<Abort>,
    }
}

istio_struct! {
    /// `fault.delay`.
    pub struct Delay {
        /// `fixedDelay`: how long; required.
        pub fixed_delay: Option<String>,
        /// `exponentialDelay`: not supported (rejected).
        pub exponential_delay: Option<String>,
        /// `percentage`: the share of requests delayed; absent: 100%.
        pub percentage: Option<Percent>,
        /// Deprecated integer percentage.
        pub percent: Option<i64>,
    }
}

istio_struct! {
    /// `fault.abort`: exactly one of `httpStatus` and `grpcStatus`.
    pub struct Abort {
        /// `httpStatus`: 200–599.
        pub http_status: Option<i64>,
        /// A gRPC status name, e.g. `UNAVAILABLE`.
        pub grpc_status: Option<String>,
        /// `http2Error`: not supported (rejected).
        pub http2_error: Option<String>,
        /// `percentage`: the share of requests aborted; absent: 100%.
        pub percentage: Option<Percent>,
    }
}

istio_struct! {
    /// Istio's `Percent`.
    pub struct Percent {
        /// `value`: 0.0–100.0.
        pub value: Decimal,
    }
}

istio_struct! {
    /// `http[].mirrors[]`.
    pub struct HttpMirrorPolicy {
        /// `destination`: where the copies go.
        pub destination: Destination,
        /// `percentage`: the share of requests copied; absent: 100%.
        pub percentage: Option<Percent>,
    }
}

istio_struct! {
    /// `http[].corsPolicy`.
    pub struct CorsPolicy {
        /// `allowOrigins`: origins allowed, as `StringMatch`es.
        pub allow_origins: Vec<StringMatch>,
        /// Deprecated: exact origins (`*` for any).
        pub allow_origin: Vec<String>,
        /// `allowMethods`: `Access-Control-Allow-Methods`.
        pub allow_methods: Vec<String>,
        /// `allowHeaders`: `Access-Control-Allow-Headers`.
        pub allow_headers: Vec<String>,
        /// `exposeHeaders`: `Access-Control-Expose-Headers`.
        pub expose_headers: Vec<String>,
        /// `maxAge`: how long a preflight answer may be cached.
        pub max_age: Option<String>,
        /// `allowCredentials`: `Access-Control-Allow-Credentials`.
        pub allow_credentials: Option<bool>,
    }
}

istio_struct! {
    /// `spec.tcp[]`: one TCP route.
    pub struct TcpRoute {
        /// `match`: blocks ORed; empty: every connection.
        #[serde(rename = "match")]
        pub matches: Vec<L4MatchAttributes>,
        /// `route`: weighted destinations.
        pub route: Vec<RouteDestination>,
    }
}

istio_struct! {
    /// `spec.tls[]`: one TLS route.
    pub struct TlsRoute {
        /// `match`: blocks ORed; empty: every connection.
        #[serde(rename = "match")]
        pub matches: Vec<TlsMatchAttributes>,
        /// `route`: weighted destinations.
        pub route: Vec<RouteDestination>,
    }
}

istio_struct! {
    /// `tcp[].match[]`.
    pub struct L4MatchAttributes {
        /// `destinationSubnets`: the original destination IP is in one of these (IPv4 CIDRs).
        pub destination_subnets: Vec<String>,
        /// `port`: the destination port dialled.
        pub port: Option<i64>,
        /// `sourceLabels`: the client pod must carry these labels.
        pub source_labels: BTreeMap<String, String>,
        /// `gateways`: not empty and without `mesh`: the block never matches mesh traffic.
        pub gateways: Vec<String>,
        /// `sourceNamespace`: the client pod's namespace.
        pub source_namespace: Option<String>,
    }
}

istio_struct! {
    /// `tls[].match[]`.
    pub struct TlsMatchAttributes {
        /// `sniHosts`: the ClientHello's SNI matches one (wildcards allowed).
        pub sni_hosts: Vec<String>,
        /// `destinationSubnets`: the original destination IP is in one of these (IPv4 CIDRs).
        pub destination_subnets: Vec<String>,
        /// `port`: the destination port dialled.
        pub port: Option<i64>,
        /// `sourceLabels`: the client pod must carry these labels.
        pub source_labels: BTreeMap<String, String>,
        /// `gateways`: not empty and without `mesh`: the block never matches mesh traffic.
        pub gateways: Vec<String>,
        /// `sourceNamespace`: the client pod's namespace.
        pub source_namespace: Option<String>,
    }
}

istio_struct! {
    /// `tcp[].route[]` / `tls[].route[]`: one weighted destination.
    pub struct RouteDestination {
        /// `destination`: where this share of connections goes.
        pub destination: Destination,
        /// `weight`: 0–100; several destinations' weights must sum to 100.
        pub weight: Option<i64>,
    }
}

istio_struct! {
    /// `DestinationRule.spec`.
    pub struct DestinationRuleSpec {
        /// `host`: the Service (short or full name) or ServiceEntry host the rule is for.
        pub host: String,
        /// `trafficPolicy`: the host's policy; subsets and ports override it.
        pub traffic_policy: Option<TrafficPolicy>,
        /// `subsets`: named groups of the host's endpoints, by label.
        pub subsets: Vec<Subset>,
        /// `exportTo`: the namespaces whose pods the rule applies to; empty: all.
        pub export_to: Vec<String>,
        /// `workloadSelector`: not supported (rejected).
        pub workload_selector: Option<serde_json::Value>,
    }
}

istio_struct! {
    /// `subsets[]`: a named group of endpoints.
    pub struct Subset {
        /// `name`: what `destination.subset` names.
        pub name: String,
        /// `labels`: the endpoints (pods, ServiceEntry endpoints) that carry all of these.
        pub labels: BTreeMap<String, String>,
        /// `trafficPolicy`: overrides the rule's, field by field.
        pub traffic_policy: Option<TrafficPolicy>,
    }
}

istio_struct! {
    /// `trafficPolicy` of a DestinationRule or of one of its subsets.
    pub struct TrafficPolicy {
        /// `loadBalancer`: how an endpoint is picked; absent: round robin.
        pub load_balancer: Option<LoadBalancerSettings>,
        /// `connectionPool`: limits on connections and requests to the cluster.
        pub connection_pool: Option<ConnectionPoolSettings>,
        /// `outlierDetection`: ejection of failing endpoints; absent: none.
        pub outlier_detection: Option<OutlierDetection>,
        /// `tls`: how connections to the endpoints are secured; absent: the data path's default.
        pub tls: Option<ClientTlsSettings>,
        /// `portLevelSettings`: per-port overrides.
        pub port_level_settings: Vec<PortTrafficPolicy>,
    }
}

istio_struct! {
    /// `portLevelSettings[]`: overrides for one port.
    pub struct PortTrafficPolicy {
        /// `port`: the port they apply to.
        pub port: Option<PortSelector>,
        /// `loadBalancer` for this port.
        pub load_balancer: Option<LoadBalancerSettings>,
        /// `connectionPool` for this port.
        pub connection_pool: Option<ConnectionPoolSettings>,
        /// `outlierDetection` for this port.
        pub outlier_detection: Option<OutlierDetection>,
        /// `tls` for this port.
        pub tls: Option<ClientTlsSettings>,
    }
}

istio_struct! {
    /// `tls` of a traffic policy or of its port-level settings: Istio's `ClientTLSSettings`.
    pub struct ClientTlsSettings {
        /// `DISABLE` (also when absent), `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
        pub mode: Option<String>,
        /// `clientCertificate`: a PEM certificate chain file on the node; `MUTUAL` needs it
        /// (or `credentialName`).
        pub client_certificate: Option<String>,
        /// `privateKey`: the PEM private key file of `clientCertificate`.
        pub private_key: Option<String>,
        /// `caCertificates`: a PEM file of the CAs that verify the server's certificate.
        pub ca_certificates: Option<String>,
        /// `credentialName`: a Secret holding the client certificate, key and CAs.
        pub credential_name: Option<String>,
        /// `subjectAltNames`: the server's certificate must carry one of them.
        pub subject_alt_names: Vec<String>,
        /// `sni`: the server name sent in the ClientHello.
        pub sni: Option<String>,
        /// `insecureSkipVerify`: do not verify the server's certificate at all.
        pub insecure_skip_verify: Option<bool>,
        /// `caCrl`: not supported (rejected, as ignoring it would accept revoked certificates).
        pub ca_crl: Option<String>,
    }
}

istio_struct! {
    /// `loadBalancer`: exactly one of `simple` and `consistentHash`.
    pub struct LoadBalancerSettings {
        /// `ROUND_ROBIN`, `LEAST_REQUEST`, `LEAST_CONN`, `RANDOM`, `PASSTHROUGH`.
        pub simple: Option<String>,
        /// `consistentHash`: sticky endpoints by a request key.
        pub consistent_hash: Option<ConsistentHash>,
    }
}

istio_struct! {
    /// `loadBalancer.consistentHash`: one key, one algorithm.
    pub struct ConsistentHash {
        /// `httpHeaderName`: hash this request header.
        pub http_header_name: Option<String>,
        /// `httpCookie`: hash this cookie (issued by the proxy when it has a `ttl`).
        pub http_cookie: Option<HttpCookie>,
        /// `useSourceIp`: hash the client's IP.
        pub use_source_ip: Option<bool>,
        /// `httpQueryParameterName`: hash this query parameter.
        pub http_query_parameter_name: Option<String>,
        /// `ringHash`: the ring hash algorithm (the default).
        pub ring_hash: Option<RingHash>,
        /// `maglev`: the Maglev algorithm.
        pub maglev: Option<Maglev>,
        /// Deprecated form of `ringHash.minimumRingSize`.
        pub minimum_ring_size: Option<i64>,
    }
}

istio_struct! {
    /// `consistentHash.httpCookie`.
    pub struct HttpCookie {
        /// `name`: required.
        pub name: String,
        /// `path`: the issued cookie's `Path`; absent: `/`.
        pub path: Option<String>,
        /// `ttl`: the issued cookie's `Max-Age`; absent: the proxy never issues it.
        pub ttl: Option<String>,
    }
}

istio_struct! {
    /// `consistentHash.ringHash`.
    pub struct RingHash {
        /// `minimumRingSize`: default 1024.
        pub minimum_ring_size: Option<i64>,
    }
}

istio_struct! {
    /// `consistentHash.maglev`.
    pub struct Maglev {
        /// `tableSize`: a prime; default 65537.
        pub table_size: Option<i64>,
    }
}

istio_struct! {
    /// `connectionPool`.
    pub struct ConnectionPoolSettings {
        /// `tcp`: connection limits.
        pub tcp: Option<TcpSettings>,
        /// `http`: request limits.
        pub http: Option<HttpSettings>,
    }
}

istio_struct! {
    /// `connectionPool.tcp`.
    pub struct TcpSettings {
        /// `maxConnections`: upstream connections to the cluster at once.
        pub max_connections: Option<i64>,
        /// `connectTimeout`: absent: the proxy's `--connect-timeout`.
        pub connect_timeout: Option<String>,
    }
}

istio_struct! {
    /// `connectionPool.http`.
    pub struct HttpSettings {
        /// `http1MaxPendingRequests`: requests queued for a connection.
        pub http1_max_pending_requests: Option<i64>,
        /// `http2MaxRequests`: requests in flight to the cluster.
        pub http2_max_requests: Option<i64>,
        /// `maxRequestsPerConnection`: requests per upstream connection; 0 or absent: unlimited.
        pub max_requests_per_connection: Option<i64>,
        /// `maxRetries`: retries in flight to the cluster.
        pub max_retries: Option<i64>,
        /// `idleTimeout`: an idle upstream connection is closed after this long.
        pub idle_timeout: Option<String>,
    }
}

istio_struct! {
    /// `outlierDetection`: ejects endpoints that keep failing.
    pub struct OutlierDetection {
        /// `consecutive5xxErrors`: 5xx in a row that eject; absent: 5; 0: off.
        #[serde(rename = "consecutive5xxErrors")]
        pub consecutive_5xx_errors: Option<i64>,
        /// `consecutiveGatewayErrors`: 502/503/504 in a row that eject; absent or 0: off.
        pub consecutive_gateway_errors: Option<i64>,
        /// `interval`: how often ejections are reviewed; default 10s.
        pub interval: Option<String>,
        /// `baseEjectionTime`: the first ejection's length, longer for each next; default 30s.
        pub base_ejection_time: Option<String>,
        /// `maxEjectionPercent`: the most endpoints ejected at once; default 10.
        pub max_ejection_percent: Option<i64>,
        /// `minHealthPercent`: below this share of healthy endpoints, ejection is off; default 0.
        pub min_health_percent: Option<i64>,
    }
}

istio_struct! {
    /// `ServiceEntry.spec`.
    pub struct ServiceEntrySpec {
        /// `hosts`: the hosts it adds to the registry; wildcards (`*.example.com`) not with `DNS`.
        pub hosts: Vec<String>,
        /// `addresses`: IPv4 addresses or CIDRs whose connections are the entry's.
        pub addresses: Vec<String>,
        /// `ports`: the ports of the hosts; required.
        pub ports: Vec<ServiceEntryPort>,
        /// `MESH_EXTERNAL` (default) or `MESH_INTERNAL`.
        pub location: Option<String>,
        /// `NONE` (default), `STATIC`, `DNS`, `DNS_ROUND_ROBIN`.
        pub resolution: Option<String>,
        /// `endpoints`: where `STATIC` and `DNS` resolution send traffic.
        pub endpoints: Vec<WorkloadEntry>,
        /// `workloadSelector`: not supported (rejected).
        pub workload_selector: Option<serde_json::Value>,
        /// `exportTo`: the namespaces whose pods see the hosts; empty: all.
        pub export_to: Vec<String>,
    }
}

istio_struct! {
    /// `ServiceEntry.spec.ports[]`.
    pub struct ServiceEntryPort {
        /// `number`: the port clients dial.
        pub number: Option<i64>,
        /// `protocol`: `HTTP`, `HTTP2`, `GRPC`, `HTTPS`, `TLS`, `TCP`, ...; absent: detected.
        pub protocol: Option<String>,
        /// `name`: what `endpoints[].ports` keys on.
        pub name: Option<String>,
        /// `targetPort`: the endpoints' port when they do not name one; absent: `number`.
        pub target_port: Option<i64>,
    }
}

istio_struct! {
    /// `ServiceEntry.spec.endpoints[]`.
    pub struct WorkloadEntry {
        /// `address`: an IPv4 address (`STATIC`), or a hostname the proxy resolves (`DNS`).
        pub address: Option<String>,
        /// `ports`: the endpoint's port for each port `name`.
        pub ports: BTreeMap<String, i64>,
        /// `labels`: matched by DestinationRule subsets.
        pub labels: BTreeMap<String, String>,
        /// `weight`: its share when picking an endpoint; absent: 1.
        pub weight: Option<i64>,
    }
}
