//! What routing decides, as the data path consumes it: the compiled, validated form of
//! VirtualService routes, DestinationRule traffic policies, ServiceEntry hosts and
//! RateLimitPolicies. Nothing here parses YAML or touches a socket; [`super::RouteTable`]
//! produces these values and `crate::http` / `crate::proxy` act on them.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use crate::ids::EndpointAddr;
use crate::model::{Service, Workload};
pub use crate::settings::{AccessLogOutput, MeshSettings, OutboundTrafficPolicy};

/// A fully qualified host as Istio names it: `cart.shop.svc.cluster.local` for a Kubernetes
/// Service, the ServiceEntry host as written otherwise (may be a wildcard `*.example.com`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Host(pub Arc<str>);

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub use crate::ids::ObjectRef;

/// How a port's traffic is handled, from the Service port's name (`http-*`, `grpc-*`,
/// `tcp-*`, ...) or `appProtocol`; `Sniff` when neither says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortProtocol {
    /// HTTP/1.1, or HTTP/2 with prior knowledge if the client opens with the preface.
    Http,
    /// HTTP/2 (`http2-*`, `grpc-*`, `grpc-web-*`, appProtocol `http2`/`grpc`/`kubernetes.io/h2c`).
    Http2,
    /// Opaque TCP: `tcp-*`, `mongo-*`, `mysql-*`, `redis-*`, ... no sniffing.
    Tcp,
    /// `tls-*` / `https-*`: TLS passthrough, routed by SNI.
    Tls,
    /// Nothing declared: detect from the first bytes (bounded by the detection timeout).
    Sniff,
}

/// What is at an outbound connection's original destination, known before reading a byte.
#[derive(Clone, Debug)]
pub enum OutboundTarget {
    /// A Service ClusterIP:port or a ServiceEntry address:port.
    Service(Arc<ServiceTarget>),
    /// No Service or ServiceEntry has this address:port. HTTP on it is still routed by the
    /// `Host` header over every host with this port (Istio's per-port route config).
    Unknown {
        /// The connection's original destination.
        dst: SocketAddrV4,
        /// The pod with that IP, if any (for labels only).
        workload: Option<Arc<Workload>>,
        /// [`PortProtocol::Sniff`]: nothing declares the port's protocol.
        protocol: PortProtocol,
    },
    /// A gateway pod's Gateway port: routed by the VirtualServices bound to its Gateways.
    Gateway(Arc<GatewayTarget>),
}

/// One Gateway port of one gateway pod, as a connection reached it.
#[derive(Clone, Debug)]
pub struct GatewayTarget {
    /// The gateway pod: the source of what it forwards, and the workload its own policies
    /// select.
    pub workload: Arc<Workload>,
    /// The port, with every server on it.
    pub port: Arc<crate::gateway::GatewayPort>,
    /// On a terminated (or passed-through) TLS port, the server the SNI chose: only its
    /// hosts route. `None` on a plaintext port, where every server's hosts do.
    pub server: Option<Arc<crate::gateway::GatewayServer>>,
}

/// One port of one registry host (Kubernetes Service or ServiceEntry).
#[derive(Clone, Debug)]
pub struct ServiceTarget {
    /// The registry host: a Service's FQDN or a ServiceEntry host.
    pub host: Host,
    /// The port as the host declares it (the Service or ServiceEntry port number).
    pub port: u16,
    /// The connection's original destination, which found this target (a ClusterIP, a
    /// ServiceEntry address inside one of its CIDRs, or, for a host named by `Host`/SNI, the
    /// address the client dialled): what `tcp[]`/`tls[]` `destinationSubnets` compare.
    pub dst: SocketAddrV4,
    /// From the port's name or `appProtocol` (Service) or `ports[].protocol` (ServiceEntry).
    pub protocol: PortProtocol,
    /// The Kubernetes Service, for telemetry; `None` for a ServiceEntry host.
    pub service: Option<Arc<Service>>,
    /// The ServiceEntry that defines the host, if it came from one.
    pub service_entry: Option<ObjectRef>,
}

/// Facts about one HTTP request that routes may match on.
#[derive(Clone, Copy, Debug)]
pub struct RequestFacts<'a> {
    /// `:method`, for `match[].method`.
    pub method: &'a http::Method,
    /// The request URI: path for `match[].uri`, scheme (else `http`) for `match[].scheme`,
    /// query for `match[].queryParams`.
    pub uri: &'a http::Uri,
    /// `:authority` or `Host`, as sent.
    pub authority: Option<&'a str>,
    /// The request headers, for `match[].headers` and `match[].withoutHeaders`.
    pub headers: &'a http::HeaderMap,
    /// The original destination port (what `http[].match[].port` compares).
    pub port: u16,
    /// The captured pod that sent it.
    pub source: Option<&'a Workload>,
}

/// The outcome of routing one HTTP request.
#[derive(Clone, Debug)]
pub enum HttpDecision {
    /// A route matched, or the host's default route applies (no HTTP routes, or ALLOW_ANY).
    Route(Arc<HttpRoute>),
    /// No VirtualService route matched and there is no default (a VirtualService matched the
    /// host but none of its routes matched the request): 404 NR, as Envoy answers.
    NoRouteMatched {
        /// The first VirtualService for the host (in merge order), for the log.
        virtual_service: ObjectRef,
    },
    /// The host is unknown and the mesh is REGISTRY_ONLY: 502 NR.
    BlockedByRegistryOnly {
        /// The request's `:authority`/`Host`, for the log; empty when it had none.
        authority: String,
    },
    /// At a gateway: no server on the port, or no VirtualService bound to its Gateways, has
    /// the request's host: 404 NR, as Envoy answers for a missing virtual host.
    NoVirtualHost {
        /// The request's `:authority`/`Host`, for the log; empty when it had none.
        authority: String,
    },
    /// At a gateway: the server of the request's host has `tls.httpsRedirect`: 301 to the
    /// same URL over https.
    HttpsRedirect,
}

/// One route of a VirtualService (or the implicit default route of a host).
#[derive(Clone, Debug)]
pub struct HttpRoute {
    /// `route_name` in logs: the VirtualService route's `name`, else `<vs name>.<index>`, or
    /// `default` for a host without a VirtualService.
    pub name: Arc<str>,
    /// The VirtualService the route is in; `None` for a default or `allow_any` route.
    pub virtual_service: Option<ObjectRef>,
    /// What the route does: forward, redirect or answer directly.
    pub action: HttpAction,
    /// `timeout`: the whole request, retries included. `None`: no timeout (Istio's default).
    pub timeout: Option<Duration>,
    /// `retries`; Istio's default policy when the route has none.
    pub retries: RetryPolicy,
    /// `fault`: delay and/or abort injected before forwarding.
    pub fault: Option<Fault>,
    /// `mirror`/`mirrors`: shadow copies of each request; their responses are discarded.
    pub mirrors: Vec<Mirror>,
    /// `corsPolicy`; `None`: the proxy adds no CORS headers.
    pub cors: Option<CorsPolicy>,
    /// `headers.request` / `headers.response` at route level; each destination may add its own.
    pub request_headers: HeaderOps,
    /// `headers.response` at route level.
    pub response_headers: HeaderOps,
    /// `rewrite`, applied before forwarding.
    pub rewrite: Option<Rewrite>,
    /// The RateLimitPolicy bucket that applies to this route, if any.
    pub rate_limit: Option<Arc<RateLimit>>,
}

/// What an HTTP route does with a request; exactly one of Istio's `route`, `redirect` and
/// `directResponse`.
#[derive(Clone, Debug)]
pub enum HttpAction {
    /// Pick one destination per request, by weight. Never empty; weights sum to > 0.
    Forward(Vec<WeightedDestination>),
    /// `redirect`: answer with a redirect to the location it builds.
    Redirect(Redirect),
    /// `directResponse`: answer with a fixed status and body, contacting no upstream.
    DirectResponse {
        /// `directResponse.status`, 200–599.
        status: StatusCode,
        /// `directResponse.body` (`string`, or `bytes` base64-decoded); `None`: an empty body.
        body: Option<bytes::Bytes>,
    },
}

/// One `route[]` entry of an HTTP, TCP or TLS route.
#[derive(Clone, Debug)]
pub struct WeightedDestination {
    /// `route[].destination`.
    pub destination: Destination,
    /// `route[].weight`, 0–100; a lone destination gets 100.
    pub weight: u32,
    /// `route[].headers.request`, applied after the route's own.
    pub request_headers: HeaderOps,
    /// `route[].headers.response`, applied after the route's own.
    pub response_headers: HeaderOps,
}

/// `destination` of a route: which host, which subset, which port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    /// `destination.host`, fully qualified as the registry names it (`cart` in namespace `shop`
    /// is `cart.shop.svc.cluster.local`).
    pub host: Host,
    /// `destination.subset`: a subset name of the DestinationRule in force for the host.
    pub subset: Option<Arc<str>>,
    /// `None`: the request's original port (or the host's only port).
    pub port: Option<u16>,
}

/// Identifies an upstream cluster; the data path keys its per-cluster state (pools, LB,
/// outlier detection) on it, so that state survives a config reload.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    /// The registry host.
    pub host: Host,
    /// The subset name, `None` for the whole host.
    pub subset: Option<Arc<str>>,
    /// `destination.port.number`; else the request's port if the host has it, else the host's
    /// only port.
    pub port: u16,
}

impl fmt::Display for ClusterKey {
    /// Envoy's cluster name shape: `outbound|8080|v1|cart.shop.svc.cluster.local`.
    /// Piece by piece: access-log lines write it per request, and `write!`'s argument
    /// handling cost more than the text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut digits = itoa::Buffer::new();
        let subset = self.subset.as_deref().unwrap_or("");
        [
            "outbound|",
            digits.format(self.port),
            "|",
            subset,
            "|",
            &self.host.0,
        ]
        .into_iter()
        .try_for_each(|piece| f.write_str(piece))
    }
}

/// The endpoints and traffic policy of one destination.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// The cluster's identity, and its name in logs and metrics.
    pub key: ClusterKey,
    /// The protocol of the host's port.
    pub protocol: PortProtocol,
    /// The Kubernetes Service behind the host, for telemetry; `None` for a ServiceEntry host.
    pub service: Option<Arc<Service>>,
    /// Ready endpoints matching the subset, sorted by address. May be empty.
    pub endpoints: Vec<ClusterEndpoint>,
    /// Hostnames a `resolution: DNS` ServiceEntry's cluster resolves at run time (Envoy's
    /// STRICT_DNS): their addresses join `endpoints`. Sorted by name.
    pub dns: Vec<DnsEndpoint>,
    /// The ServiceEntry behind the cluster, for errors about it.
    pub service_entry: Option<ObjectRef>,
    /// The traffic policy in force for this host, subset and port.
    pub policy: TrafficPolicy,
    /// `destination_version` label: the subset's `version` label, else the workloads'.
    pub version: Option<Arc<str>>,
}

/// A hostname to resolve (an endpoint's `address`, or the entry's host when it has no
/// endpoints) and the port its addresses are dialled on.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DnsEndpoint {
    /// The hostname to resolve.
    pub name: Arc<str>,
    /// The endpoint's `ports` entry for this port's name, else the port's `targetPort`, else its
    /// `number`.
    pub port: u16,
    /// The endpoint's `weight` (1 when unset), given to each address it resolves to.
    pub weight: u32,
}

/// One endpoint of a [`Cluster`]: an address to dial and its weight.
#[derive(Clone, Debug)]
pub struct ClusterEndpoint {
    /// Pod IP and resolved `targetPort`, or a ServiceEntry endpoint's address and port.
    pub addr: EndpointAddr,
    /// The pod, for a Kubernetes endpoint or a ServiceEntry endpoint that is a known pod IP.
    pub workload: Option<Arc<Workload>>,
    /// ServiceEntry endpoint `weight` (1 when unset); Kubernetes endpoints weigh 1.
    pub weight: u32,
}

/// Why a destination cannot be dialled.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// The host is in no registry the source sees.
    #[error(
        "host {0} is not a Kubernetes Service or ServiceEntry host (or its ServiceEntry's \
         exportTo leaves out the source's namespace)"
    )]
    UnknownHost(Host),
    /// No DestinationRule in force for the source's namespace defines the subset.
    #[error(
        "host {host} has no subset {subset:?} (no DestinationRule in force for the source's \
         namespace defines it)"
    )]
    UnknownSubset {
        /// The host.
        host: Host,
        /// The subset the route names.
        subset: Arc<str>,
    },
    /// The host does not declare the port.
    #[error("host {host} has no port {port}")]
    UnknownPort {
        /// The host.
        host: Host,
        /// The port asked for.
        port: u16,
    },
}

/// A DestinationRule's `trafficPolicy` after top-level, subset and port overrides are merged
/// (Istio: a subset's policy overrides the top level field by field; `portLevelSettings`
/// overrides within each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficPolicy {
    /// `loadBalancer`; round robin when unset.
    pub load_balancer: LoadBalancer,
    /// `connectionPool`.
    pub connection_pool: ConnectionPool,
    /// `outlierDetection`; `None`: endpoints are never ejected.
    pub outlier_detection: Option<OutlierDetection>,
    /// `tls`; `None`: no DestinationRule says, and the data path's default applies.
    pub tls: Option<UpstreamTls>,
    /// The DestinationRule that supplied it, for `shuntctl explain`.
    pub source: Option<ObjectRef>,
}

/// `trafficPolicy.tls` (Istio's `ClientTLSSettings`), checked: how the proxy secures its
/// connections to a cluster's endpoints. The app's bytes are plaintext to the proxy in every
/// case; this says what the proxy sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamTls {
    /// `DISABLE`: the app's bytes as they are, whatever the mesh would do by default.
    Disable,
    /// `SIMPLE` or `MUTUAL`: the proxy originates TLS to the endpoint.
    Originate(TlsOrigination),
    /// `ISTIO_MUTUAL`: the mesh's mTLS, with the source workload's own certificate.
    IstioMutual {
        /// `sni`; `None`: the data path's choice (Istio sends the cluster's name).
        sni: Option<Arc<str>>,
        /// `subjectAltNames`; empty: the identities the destination's workloads run as.
        subject_alt_names: Vec<Arc<str>>,
    },
    /// The DestinationRule in force here asked for TLS and was rejected (its error names the
    /// field): every connection is refused, never sent in plaintext, until it is fixed.
    Refuse {
        /// The rejected DestinationRule.
        rule: ObjectRef,
    },
}

/// `SIMPLE` / `MUTUAL` TLS origination.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsOrigination {
    /// `MUTUAL`: the certificate the proxy presents; `None`: `SIMPLE`.
    pub client_certificate: Option<ClientCertificate>,
    /// How the server's certificate is checked.
    pub verify: ServerVerification,
    /// `sni`; `None`: the data path sends the destination's host name (Istio's auto SNI
    /// sends the request's `Host`, which for a registry host is the same name).
    pub sni: Option<Arc<str>>,
}

/// Where a `MUTUAL` client certificate comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCertificate {
    /// `clientCertificate` and `privateKey`: absolute paths of PEM files on the node, read by
    /// the proxy.
    Files {
        /// `clientCertificate`: the certificate chain.
        certificate_chain: Arc<str>,
        /// `privateKey`.
        private_key: Arc<str>,
    },
    /// `credentialName`: the Secret of that name in the source workload's namespace. Local
    /// mode reads no Secrets: a data path that cannot find it refuses the connection.
    Credential(Arc<str>),
}

/// How a server's certificate is checked under `SIMPLE` / `MUTUAL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerVerification {
    /// The chain must lead to one of `roots`, and the certificate must carry one of
    /// `subject_alt_names`, or, when there are none, be valid for the SNI sent.
    Verify {
        /// Which CAs are trusted.
        roots: TrustRoots,
        /// `subjectAltNames`.
        subject_alt_names: Vec<Arc<str>>,
    },
    /// `insecureSkipVerify: true`: any certificate is accepted (the bytes are encrypted, the
    /// server is not authenticated).
    InsecureSkipVerify,
}

/// The CAs that verify a server's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustRoots {
    /// `caCertificates`: the absolute path of a PEM file on the node.
    CaFile(Arc<str>),
    /// `credentialName`: the CA (`ca.crt` / `cacert`) of that Secret, in the source workload's
    /// namespace.
    Credential(Arc<str>),
    /// Neither: the node's system trust roots, as Istio verifies against the OS bundle. A
    /// test (or a node) with no system roots must name `caCertificates` instead.
    System,
}

/// `trafficPolicy.loadBalancer`: how an endpoint is picked.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LoadBalancer {
    /// `simple: ROUND_ROBIN` (or `UNSPECIFIED`); also shunt's default when none is set.
    #[default]
    RoundRobin,
    /// Also what `LEAST_CONN` means.
    LeastRequest,
    /// `simple: RANDOM`.
    Random,
    /// Dial the original destination address unchanged.
    Passthrough,
    /// `consistentHash`: the same key goes to the same endpoint while the endpoint set holds.
    ConsistentHash {
        /// What the hash is computed over.
        key: HashKey,
        /// `ringHash` or `maglev`.
        algorithm: HashAlgorithm,
    },
}

/// `consistentHash`'s key: exactly one of `httpHeaderName`, `httpCookie`, `useSourceIp` and
/// `httpQueryParameterName`.
#[derive(Clone, Debug, PartialEq)]
pub enum HashKey {
    /// `httpHeaderName`: the value of this request header.
    Header(HeaderName),
    /// The proxy issues the cookie (`Set-Cookie`) when the request lacks it and `ttl` is set.
    Cookie {
        /// `httpCookie.name`.
        name: Arc<str>,
        /// `httpCookie.path`: the `Path` of an issued cookie (`/` when unset).
        path: Option<Arc<str>>,
        /// `httpCookie.ttl`: the `Max-Age` of an issued cookie (0: a session cookie); `None`: the
        /// proxy never issues one.
        ttl: Option<Duration>,
    },
    /// `useSourceIp`: the client's IP address.
    SourceIp,
    /// `httpQueryParameterName`: the value of this query parameter.
    QueryParameter(Arc<str>),
}

/// `consistentHash`'s algorithm: `ringHash` (also the legacy top-level `minimumRingSize`) or
/// `maglev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashAlgorithm {
    /// Istio's default; `minimum_ring_size` defaults to 1024.
    RingHash {
        /// `minimumRingSize`: the least number of virtual nodes on the ring.
        minimum_ring_size: u64,
    },
    /// `table_size` defaults to 65537 and must be prime.
    Maglev {
        /// `maglev.tableSize`: the lookup table's size.
        table_size: u64,
    },
}

/// `connectionPool`; `None` fields are Envoy's defaults (effectively unlimited).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`: upstream connections to the whole cluster; beyond it, HTTP
    /// requests queue (`http1_max_pending_requests`) and TCP connections fail as an overflow.
    pub max_connections: Option<u32>,
    /// `tcp.connectTimeout`; `None`: the proxy's `--connect-timeout` (10 s by default).
    pub connect_timeout: Option<Duration>,
    /// `http.http1MaxPendingRequests`: requests queued for a connection at `maxConnections`;
    /// beyond it, an overflow (503 UO).
    pub http1_max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: requests in flight to the whole cluster (HTTP/1 too); beyond it,
    /// an overflow.
    pub http2_max_requests: Option<u32>,
    /// `http.maxRequestsPerConnection`: a connection is closed after this many requests.
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxRetries`: retries in flight to the whole cluster; beyond it, a failure is final.
    pub max_retries: Option<u32>,
    /// `http.idleTimeout`: a pooled connection idle this long is closed; `None` or 0: never.
    pub idle_timeout: Option<Duration>,
}

/// `outlierDetection`, with Istio's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlierDetection {
    /// `None`: this kind of error never ejects.
    pub consecutive_5xx_errors: Option<u32>,
    /// `consecutiveGatewayErrors`: 502, 503, 504 or failed attempts in a row; `None`: off.
    pub consecutive_gateway_errors: Option<u32>,
    /// Default 10 s.
    pub interval: Duration,
    /// Default 30 s; the n-th ejection of one endpoint lasts n × this.
    pub base_ejection_time: Duration,
    /// Default 10.
    pub max_ejection_percent: u32,
    /// Default 0: below this share of healthy endpoints, ejection is off (panic mode).
    pub min_health_percent: u32,
}

/// `retries`. Istio's default when a route says nothing: 2 attempts on
/// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try; 0 disables retrying.
    pub attempts: u32,
    /// `perTryTimeout`: each attempt's deadline; `None`: only the route's `timeout` bounds it.
    pub per_try_timeout: Option<Duration>,
    /// `retryOn`: which outcomes are retried.
    pub retry_on: RetryOn,
}

/// `retryOn`, parsed, with Envoy's meanings (`5xx` also covers connect failures and resets).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx, connect failure, refused stream, reset or per-try timeout.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504, connect failure or per-try timeout.
    pub gateway_error: bool,
    /// `connect-failure`: the dial failed or timed out.
    pub connect_failure: bool,
    /// `reset`: the upstream reset the stream or dropped the connection.
    pub reset: bool,
    /// `refused-stream`: the upstream refused the HTTP/2 stream (`REFUSED_STREAM`).
    pub refused_stream: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// Statuses retried under `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// gRPC status codes (`cancelled`, `deadline-exceeded`, `internal`,
    /// `resource-exhausted`, `unavailable`) as numbers.
    pub grpc_codes: Vec<u32>,
}

/// `fault`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// `delay`; `None`: no delay.
    pub delay: Option<FaultDelay>,
    /// `abort`; `None`: no abort.
    pub abort: Option<FaultAbort>,
}

/// `fault.delay`: hold a share of requests before forwarding them.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultDelay {
    /// `fixedDelay`.
    pub fixed_delay: Duration,
    /// 0.0–100.0; absent in the config means 100.
    pub percentage: f64,
}

/// `fault.abort`: answer a share of requests with an error, contacting no upstream.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultAbort {
    /// The error answered.
    pub kind: AbortKind,
    /// 0.0–100.0; absent in the config means 100.
    pub percentage: f64,
}

/// What a `fault.abort` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortKind {
    /// `httpStatus`, 200–599.
    Http(StatusCode),
    /// A gRPC status code: answered as HTTP 200 with `grpc-status` in trailers-only form.
    Grpc(u32),
}

/// `mirror`/`mirrors` with their percentage (absent means 100).
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    /// `destination` of the mirror.
    pub destination: Destination,
    /// 0.0–100.0: the share of requests mirrored.
    pub percentage: f64,
}

/// `corsPolicy`.
#[derive(Clone, Debug)]
pub struct CorsPolicy {
    /// `allowOrigins` (and the deprecated `allowOrigin`, `*` matching any).
    pub allow_origins: Vec<StringMatch>,
    /// `allowMethods`: `Access-Control-Allow-Methods` of a preflight answer.
    pub allow_methods: Vec<http::Method>,
    /// `allowHeaders`: `Access-Control-Allow-Headers` of a preflight answer.
    pub allow_headers: Vec<HeaderName>,
    /// `exposeHeaders`: `Access-Control-Expose-Headers`.
    pub expose_headers: Vec<HeaderName>,
    /// `maxAge`: `Access-Control-Max-Age`, in whole seconds.
    pub max_age: Option<Duration>,
    /// `allowCredentials`: `Some(true)` sends `Access-Control-Allow-Credentials: true`.
    pub allow_credentials: Option<bool>,
}

/// Istio's `StringMatch`, compiled.
#[derive(Clone, Debug)]
pub enum StringMatch {
    /// `exact`: the whole value equals it.
    Exact(Arc<str>),
    /// `prefix`: the value starts with it (`""` matches any value).
    Prefix(Arc<str>),
    /// Anchored: must match the whole value (Envoy's RE2 `full match`).
    Regex(regex::Regex),
}

impl StringMatch {
    /// Whether `value` matches; `ignore_case` lowers both sides for exact and prefix.
    #[must_use]
    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        match self {
            Self::Exact(want) if ignore_case => value.eq_ignore_ascii_case(want),
            Self::Exact(want) => value == &**want,
            Self::Prefix(want) if ignore_case => value
                .get(..want.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(want)),
            Self::Prefix(want) => value.starts_with(&**want),
            Self::Regex(re) => re.is_match(value),
        }
    }
}

/// Header edits: applied in the order remove, set, add.
#[derive(Clone, Debug, Default)]
pub struct HeaderOps {
    /// `set`: replace any value of the header.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// `add`: append a value, keeping the existing ones.
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// `remove`: headers dropped.
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// Whether there is nothing to do.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }

    /// Applies the edits to `headers`: remove, then set, then add.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// `rewrite`.
#[derive(Clone, Debug)]
pub struct Rewrite {
    /// Replaces the part of the path the route's `uri` prefix matched (the whole path for an
    /// exact or regex match), as Envoy's `prefix_rewrite`.
    pub uri: Option<Arc<str>>,
    /// `authority`: the `Host`/`:authority` sent upstream.
    pub authority: Option<HeaderValue>,
    /// `uriRegexRewrite`: every match of `pattern` in the path becomes `rewrite`
    /// (`\1`-style groups as in RE2).
    pub uri_regex: Option<(regex::Regex, Arc<str>)>,
    /// The `uri` prefix of the match that selected this route, if it was a prefix match:
    /// what `uri` replaces. Filled per request by the router.
    pub matched_prefix: Option<Arc<str>>,
}

/// `redirect`.
#[derive(Clone, Debug)]
pub struct Redirect {
    /// `uri`: the path (and query) of the location; `None`: the request's.
    pub uri: Option<Arc<str>>,
    /// `authority`: the location's host; `None`: the request's host (and its port, if any).
    pub authority: Option<Arc<str>>,
    /// `port`: the location's port; `None`: the request's, unless `authority` is set.
    pub port: Option<u16>,
    /// `scheme`: the location's scheme; `None`: `http`.
    pub scheme: Option<Arc<str>>,
    /// Default 301.
    pub status: StatusCode,
}

/// One token bucket of a `shunt.io/v1alpha1 RateLimitPolicy`.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimit {
    /// The `RateLimitPolicy` that defines the bucket.
    pub policy: ObjectRef,
    /// Requests added to the bucket per second.
    pub requests_per_second: f64,
    /// Bucket size: the most requests allowed at once.
    pub burst: u32,
}

/// The outcome of routing an opaque TCP or TLS connection (`tcp[]` / `tls[]` routes).
#[derive(Clone, Debug)]
pub enum TcpDecision {
    /// Pick one destination, by weight.
    Forward {
        /// `route_name` in logs: `<vs name>.tcp.<i>` / `<vs name>.tls.<i>`, or `default`.
        route_name: Arc<str>,
        /// The VirtualService the route is in; `None` for the host's default route.
        virtual_service: Option<ObjectRef>,
        /// `route[]`: one is picked per connection, by weight.
        destinations: Vec<WeightedDestination>,
    },
    /// Dial the original destination unchanged (ALLOW_ANY, or an address nothing routes).
    Passthrough,
    /// REGISTRY_ONLY and the destination is not in the registry: close the connection.
    BlockedByRegistryOnly,
    /// At a gateway: no `tcp[]`/`tls[]` route of a bound VirtualService matches: close the
    /// connection (flag NR).
    NoRoute,
}

/// Everything the data path asks of the routing table. `crate::index::MeshIndex` implements
/// it over the current config; tests implement it over fixed answers.
///
/// `source` is the captured pod that opened the connection (`None` when it is not known):
/// what a pod sees depends on its namespace, through `exportTo` (a ServiceEntry not exported
/// to it is not in its registry; a DestinationRule not exported to it does not apply) and
/// through the DestinationRule lookup order (the client's namespace, then the host's, then
/// the root namespace, then the others by namespace/name).
pub trait Routes: Send + Sync {
    /// What is at `dst` for `source`, before any byte is read.
    fn outbound_target(&self, dst: SocketAddrV4, source: Option<&Workload>) -> OutboundTarget;
    /// The route for one HTTP request to `target`. For a route selected by a `uri` prefix
    /// match, `Rewrite::matched_prefix` is that prefix.
    fn http_route(&self, target: &OutboundTarget, request: &RequestFacts<'_>) -> HttpDecision;
    /// The route for an opaque TCP connection (`sni: None`) or a TLS one (`sni` from its
    /// ClientHello, matched against `tls[].match[].sniHosts`).
    fn tcp_route(
        &self,
        target: &OutboundTarget,
        sni: Option<&str>,
        source: Option<&Workload>,
    ) -> TcpDecision;
    /// The endpoints and policy of `destination` as `source` sees it (the DestinationRule in
    /// force for its namespace); `request_port` fills an absent port.
    fn cluster(
        &self,
        destination: &Destination,
        request_port: u16,
        source: Option<&Workload>,
    ) -> Result<Arc<Cluster>, ClusterError>;
    /// The mesh-wide settings of the same config.
    fn mesh(&self) -> &MeshSettings;
    /// Gateway port `port` of gateway pod `pod`, through `server` when the SNI chose one;
    /// `None` when no Gateway serves that port of that pod.
    fn gateway_target(
        &self,
        pod: &crate::ids::PodUid,
        port: u16,
        server: Option<Arc<crate::gateway::GatewayServer>>,
    ) -> Option<OutboundTarget>;
}

/// Where the data path gets the routes in force now: one snapshot per connection or request,
/// so a reload never changes routes under a request in flight.
pub trait RouteSource: Send + Sync {
    /// The routes in force now, to hold for one connection or request.
    fn routes(&self) -> Arc<dyn Routes>;
}
