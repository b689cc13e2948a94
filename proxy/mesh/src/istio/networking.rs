//! `VirtualService`, `DestinationRule` and `ServiceEntry` specs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Decimal;

/// Derives shared by every spec type: absent fields take their default, as in Istio.
macro_rules! istio_struct {
    ($(#[$meta:meta])* pub struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default, rename_all = "camelCase")]
        pub struct $name { $($body)* }
    };
}

istio_struct! {
    /// `VirtualService.spec`.
    pub struct VirtualServiceSpec {
        pub hosts: Vec<String>,
        /// Absent, or containing `mesh`: the routes apply to sidecar (here: captured pod)
        /// traffic. Bound only to named gateways: ignored by shunt.
        pub gateways: Vec<String>,
        pub http: Vec<HttpRoute>,
        pub tls: Vec<TlsRoute>,
        pub tcp: Vec<TcpRoute>,
        pub export_to: Vec<String>,
    }
}

istio_struct! {
    /// Istio's `StringMatch`: exactly one of the three (none: presence, for headers).
    pub struct StringMatch {
        pub exact: Option<String>,
        pub prefix: Option<String>,
        pub regex: Option<String>,
    }
}

istio_struct! {
    pub struct HttpRoute {
        pub name: Option<String>,
        #[serde(rename = "match")]
        pub matches: Vec<HttpMatchRequest>,
        pub route: Vec<HttpRouteDestination>,
        pub redirect: Option<HttpRedirect>,
        pub direct_response: Option<HttpDirectResponse>,
        /// Delegation is a gateway feature; rejected.
        pub delegate: Option<serde_json::Value>,
        pub rewrite: Option<HttpRewrite>,
        pub timeout: Option<String>,
        pub retries: Option<HttpRetry>,
        pub fault: Option<HttpFaultInjection>,
        pub mirror: Option<Destination>,
        pub mirror_percentage: Option<Percent>,
        /// Deprecated integer form of `mirrorPercentage`.
        pub mirror_percent: Option<i64>,
        pub mirrors: Vec<HttpMirrorPolicy>,
        pub cors_policy: Option<CorsPolicy>,
        pub headers: Option<Headers>,
    }
}

istio_struct! {
    pub struct HttpMatchRequest {
        pub name: Option<String>,
        pub uri: Option<StringMatch>,
        pub scheme: Option<StringMatch>,
        pub method: Option<StringMatch>,
        pub authority: Option<StringMatch>,
        pub headers: BTreeMap<String, StringMatch>,
        pub port: Option<i64>,
        pub source_labels: BTreeMap<String, String>,
        pub gateways: Vec<String>,
        pub query_params: BTreeMap<String, StringMatch>,
        pub ignore_uri_case: bool,
        pub without_headers: BTreeMap<String, StringMatch>,
        pub source_namespace: Option<String>,
    }
}

istio_struct! {
    pub struct Destination {
        pub host: String,
        pub subset: Option<String>,
        pub port: Option<PortSelector>,
    }
}

istio_struct! {
    pub struct PortSelector {
        pub number: Option<i64>,
    }
}

istio_struct! {
    pub struct HttpRouteDestination {
        pub destination: Destination,
        pub weight: Option<i64>,
        pub headers: Option<Headers>,
    }
}

istio_struct! {
    pub struct Headers {
        pub request: Option<HeaderOperations>,
        pub response: Option<HeaderOperations>,
    }
}

istio_struct! {
    pub struct HeaderOperations {
        pub set: BTreeMap<String, String>,
        pub add: BTreeMap<String, String>,
        pub remove: Vec<String>,
    }
}

istio_struct! {
    pub struct HttpRedirect {
        pub uri: Option<String>,
        pub authority: Option<String>,
        pub port: Option<i64>,
        pub scheme: Option<String>,
        pub redirect_code: Option<i64>,
    }
}

istio_struct! {
    pub struct HttpDirectResponse {
        pub status: Option<i64>,
        pub body: Option<HttpBody>,
    }
}

istio_struct! {
    /// One of `string` and `bytes` (base64).
    pub struct HttpBody {
        pub string: Option<String>,
        pub bytes: Option<String>,
    }
}

istio_struct! {
    pub struct HttpRewrite {
        pub uri: Option<String>,
        pub authority: Option<String>,
        pub uri_regex_rewrite: Option<RegexRewrite>,
    }
}

istio_struct! {
    pub struct RegexRewrite {
        #[serde(rename = "match")]
        pub pattern: Option<String>,
        pub rewrite: Option<String>,
    }
}

istio_struct! {
    pub struct HttpRetry {
        pub attempts: Option<i64>,
        pub per_try_timeout: Option<String>,
        pub retry_on: Option<String>,
    }
}

istio_struct! {
    pub struct HttpFaultInjection {
        pub delay: Option<Delay>,
        pub abort: Option<Abort>,
    }
}

istio_struct! {
    pub struct Delay {
        pub fixed_delay: Option<String>,
        pub exponential_delay: Option<String>,
        pub percentage: Option<Percent>,
        /// Deprecated integer percentage.
        pub percent: Option<i64>,
    }
}

istio_struct! {
    pub struct Abort {
        pub http_status: Option<i64>,
        /// A gRPC status name, e.g. `UNAVAILABLE`.
        pub grpc_status: Option<String>,
        pub http2_error: Option<String>,
        pub percentage: Option<Percent>,
    }
}

istio_struct! {
    pub struct Percent {
        pub value: Decimal,
    }
}

istio_struct! {
    pub struct HttpMirrorPolicy {
        pub destination: Destination,
        pub percentage: Option<Percent>,
    }
}

istio_struct! {
    pub struct CorsPolicy {
        pub allow_origins: Vec<StringMatch>,
        /// Deprecated: exact origins (`*` for any).
        pub allow_origin: Vec<String>,
        pub allow_methods: Vec<String>,
        pub allow_headers: Vec<String>,
        pub expose_headers: Vec<String>,
        pub max_age: Option<String>,
        pub allow_credentials: Option<bool>,
    }
}

istio_struct! {
    pub struct TcpRoute {
        #[serde(rename = "match")]
        pub matches: Vec<L4MatchAttributes>,
        pub route: Vec<RouteDestination>,
    }
}

istio_struct! {
    pub struct TlsRoute {
        #[serde(rename = "match")]
        pub matches: Vec<TlsMatchAttributes>,
        pub route: Vec<RouteDestination>,
    }
}

istio_struct! {
    pub struct L4MatchAttributes {
        pub destination_subnets: Vec<String>,
        pub port: Option<i64>,
        pub source_labels: BTreeMap<String, String>,
        pub gateways: Vec<String>,
        pub source_namespace: Option<String>,
    }
}

istio_struct! {
    pub struct TlsMatchAttributes {
        pub sni_hosts: Vec<String>,
        pub destination_subnets: Vec<String>,
        pub port: Option<i64>,
        pub source_labels: BTreeMap<String, String>,
        pub gateways: Vec<String>,
        pub source_namespace: Option<String>,
    }
}

istio_struct! {
    pub struct RouteDestination {
        pub destination: Destination,
        pub weight: Option<i64>,
    }
}

istio_struct! {
    /// `DestinationRule.spec`.
    pub struct DestinationRuleSpec {
        pub host: String,
        pub traffic_policy: Option<TrafficPolicy>,
        pub subsets: Vec<Subset>,
        pub export_to: Vec<String>,
        pub workload_selector: Option<serde_json::Value>,
    }
}

istio_struct! {
    pub struct Subset {
        pub name: String,
        pub labels: BTreeMap<String, String>,
        pub traffic_policy: Option<TrafficPolicy>,
    }
}

istio_struct! {
    pub struct TrafficPolicy {
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
        pub port_level_settings: Vec<PortTrafficPolicy>,
    }
}

istio_struct! {
    pub struct PortTrafficPolicy {
        pub port: Option<PortSelector>,
        pub load_balancer: Option<LoadBalancerSettings>,
        pub connection_pool: Option<ConnectionPoolSettings>,
        pub outlier_detection: Option<OutlierDetection>,
    }
}

istio_struct! {
    pub struct LoadBalancerSettings {
        /// `ROUND_ROBIN`, `LEAST_REQUEST`, `LEAST_CONN`, `RANDOM`, `PASSTHROUGH`.
        pub simple: Option<String>,
        pub consistent_hash: Option<ConsistentHash>,
    }
}

istio_struct! {
    pub struct ConsistentHash {
        pub http_header_name: Option<String>,
        pub http_cookie: Option<HttpCookie>,
        pub use_source_ip: Option<bool>,
        pub http_query_parameter_name: Option<String>,
        pub ring_hash: Option<RingHash>,
        pub maglev: Option<Maglev>,
        /// Deprecated form of `ringHash.minimumRingSize`.
        pub minimum_ring_size: Option<i64>,
    }
}

istio_struct! {
    pub struct HttpCookie {
        pub name: String,
        pub path: Option<String>,
        pub ttl: Option<String>,
    }
}

istio_struct! {
    pub struct RingHash {
        pub minimum_ring_size: Option<i64>,
    }
}

istio_struct! {
    pub struct Maglev {
        pub table_size: Option<i64>,
    }
}

istio_struct! {
    pub struct ConnectionPoolSettings {
        pub tcp: Option<TcpSettings>,
        pub http: Option<HttpSettings>,
    }
}

istio_struct! {
    pub struct TcpSettings {
        pub max_connections: Option<i64>,
        pub connect_timeout: Option<String>,
    }
}

istio_struct! {
    pub struct HttpSettings {
        pub http1_max_pending_requests: Option<i64>,
        pub http2_max_requests: Option<i64>,
        pub max_requests_per_connection: Option<i64>,
        pub max_retries: Option<i64>,
        pub idle_timeout: Option<String>,
    }
}

istio_struct! {
    pub struct OutlierDetection {
        #[serde(rename = "consecutive5xxErrors")]
        pub consecutive_5xx_errors: Option<i64>,
        pub consecutive_gateway_errors: Option<i64>,
        pub interval: Option<String>,
        pub base_ejection_time: Option<String>,
        pub max_ejection_percent: Option<i64>,
        pub min_health_percent: Option<i64>,
    }
}

istio_struct! {
    /// `ServiceEntry.spec`.
    pub struct ServiceEntrySpec {
        pub hosts: Vec<String>,
        pub addresses: Vec<String>,
        pub ports: Vec<ServiceEntryPort>,
        /// `MESH_EXTERNAL` (default) or `MESH_INTERNAL`.
        pub location: Option<String>,
        /// `NONE` (default), `STATIC`, `DNS`, `DNS_ROUND_ROBIN`.
        pub resolution: Option<String>,
        pub endpoints: Vec<WorkloadEntry>,
        pub workload_selector: Option<serde_json::Value>,
        pub export_to: Vec<String>,
    }
}

istio_struct! {
    pub struct ServiceEntryPort {
        pub number: Option<i64>,
        pub protocol: Option<String>,
        pub name: Option<String>,
        pub target_port: Option<i64>,
    }
}

istio_struct! {
    pub struct WorkloadEntry {
        pub address: Option<String>,
        pub ports: BTreeMap<String, i64>,
        pub labels: BTreeMap<String, String>,
        pub weight: Option<i64>,
    }
}
