//! The HTTP proxy of one connection: hyper serves the client (HTTP/1.1 with keep-alive,
//! HTTP/2 when the client opens with the preface), and each request goes on by the side that
//! accepted the connection ([`Side`]).
//!
//! Outbound, every request is routed, has its route's policies applied in Envoy's order, and
//! is forwarded to an upstream cluster: route → CORS preflight → rate limit → fault delay →
//! fault abort → redirect / direct response → rewrite, header edits, forwarded headers →
//! weighted destination → cluster → attempts (retries, per-try timeout) under the route
//! timeout → mirrors (fire and forget) → response header edits.
//!
//! Inbound, as Envoy's sidecar inbound listener: every request goes to the app at the
//! connection's original destination as it came (no routing, no retries; `x-forwarded-for`
//! untouched, `x-request-id` kept or generated), over the pod's `inbound|port||` cluster.
//!
//! Either way, one access log line and the `istio_request*` metrics (`reporter` per side) are
//! recorded when the response body ends, or when the client goes away first (flag DC). A
//! request delivered straight to a pod this proxy serves ([`crate::upstream::local`]) never
//! reaches that pod's inbound listener, so its outbound handler also records the line and
//! metrics the inbound side would have (`reporter="destination"`).
#![forbid(unsafe_code)]

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};

use super::headers;
use super::route_policy::{self as policy, AttemptOutcome};
use crate::ratelimit::RateLimitOutcome;
use super::replay::Replay;
use crate::upstream::{
    self, Body, Upstreams, BoxError, ClusterState, Delivery, HttpVersion, Picked, UpstreamError,
};
use crate::addrs::ClientAddr;
use crate::context::ProxyContext;
use crate::pod::Pod;
use shunt_mesh::routing::{
    Cluster, Destination, HttpAction, HttpDecision, HttpRoute, LoadBalancer, OutboundTarget,
    PortProtocol, RequestFacts, RouteSource, Routes, TrafficPolicy, WeightedDestination,
};
use shunt_mesh::index::MeshIndex;
use shunt_mesh::model::{Service, Workload};
use crate::telemetry::Reporter;
use crate::telemetry::access_log::{Direction, HttpEntry};
use crate::telemetry::metrics::{HttpLabels, RequestMetrics, RequestSample, UNKNOWN};

/// Request bodies up to this size are kept as they stream by when a retry or a mirror may
/// resend them; beyond it, a body is neither retried nor mirrored.
pub const MAX_BUFFERED_BODY: usize = 1024 * 1024;

/// Envoy's default base interval between retries (doubling, with jitter, capped at 10×).
const RETRY_BASE_INTERVAL: Duration = Duration::from_millis(25);

/// Envoy appends this to the authority of mirrored requests.
const SHADOW_SUFFIX: &str = "-shadow";

/// The HTTP side of one accepted connection.
pub struct HttpConnection {
    pub proxy: Arc<ProxyContext>,
    pub side: Side,
    pub pod: Arc<Pod>,
    /// The upstream clusters of the pod whose netns requests are dialled from.
    pub upstreams: Arc<Upstreams>,
    /// `namespace/name` of the pod (its uid if the state lacks it).
    pub pod_name: String,
    pub client: ClientAddr,
    /// Outbound, where the app was going; inbound, the app's own address and port.
    pub orig_dst: SocketAddrV4,
    /// The client's workload: outbound, the captured pod itself; inbound, the pod at the
    /// client's address when the mesh knows it.
    pub source: Option<Arc<Workload>>,
    /// What repeats request after request on this connection.
    pub memo: ConnectionMemo,
}

/// What a keep-alive connection's requests share, kept so each request need not work it out
/// again.
#[derive(Default)]
pub struct ConnectionMemo {
    /// The destination side of the last same-node delivery.
    destination_side: Mutex<Option<DestinationSide>>,
    /// The metric series recorded into last.
    request_series: Mutex<Vec<(SeriesKey, RequestMetrics)>>,
    /// `src_addr` and `dst_addr` of the access log, formatted once.
    addresses: std::sync::OnceLock<(String, String)>,
}

/// Label sets a connection keeps metric handles for: a few response codes and flags.
const CACHED_SERIES: usize = 4;

/// What, besides the connection itself, decides a request's `istio_request*` labels
/// ([`HttpConnection::http_labels`]). Comparing it is cheaper than building the labels and
/// hashing them into four metric families on every request.
struct SeriesKey {
    destination: Option<Arc<Workload>>,
    cluster: Option<Arc<Cluster>>,
    target_service: Option<Arc<Service>>,
    grpc: bool,
    status: u16,
    grpc_status: Option<u32>,
    flags: Vec<&'static str>,
}

impl SeriesKey {
    /// The same objects (kept alive by the key, so an address is never reused) and values.
    fn matches(&self, other: &Self) -> bool {
        fn same<T>(a: Option<&Arc<T>>, b: Option<&Arc<T>>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
        }
        same(self.destination.as_ref(), other.destination.as_ref())
            && same(self.cluster.as_ref(), other.cluster.as_ref())
            && same(self.target_service.as_ref(), other.target_service.as_ref())
            && self.grpc == other.grpc
            && self.status == other.status
            && self.grpc_status == other.grpc_status
            && self.flags == other.flags
    }
}

/// [`HttpConnection::destination_side`] for one pod and address, valid while the mesh state
/// it was built from is the current one.
struct DestinationSide {
    index: Arc<MeshIndex>,
    pod: Arc<Pod>,
    addr: SocketAddrV4,
    side: Arc<HttpConnection>,
}

/// Which of the pod's listeners accepted the connection, and what that means for a request.
pub enum Side {
    /// The pod is the client: each request is routed, from a routing snapshot it takes here.
    Outbound { routes: Arc<dyn RouteSource> },
    /// The pod is the server: each request is handed to its app.
    Inbound(InboundApp),
}

/// The app behind an inbound connection.
pub struct InboundApp {
    /// The pod itself (`destination_workload`).
    pub workload: Option<Arc<Workload>>,
    /// `inbound|port||`: passthrough to the original destination, named for the logs and
    /// `/debug/clusters`, with the Service that reaches the port (`destination_service`),
    /// the port's declared protocol and the pod's `version` label.
    pub cluster: Arc<Cluster>,
}

impl InboundApp {
    /// The app at `port` of `workload`, reached through `service` (when one selects it) whose
    /// port declares `protocol`.
    #[must_use]
    pub fn new(
        workload: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
        port: u16,
        protocol: PortProtocol,
    ) -> Self {
        let version = workload
            .as_ref()
            .and_then(|w| w.labels.get("version"))
            .map(|v| Arc::from(v.as_str()));
        let cluster = Arc::new(Cluster {
            key: upstream::inbound_cluster_key(port),
            protocol,
            service,
            endpoints: Vec::new(),
            dns: Vec::new(),
            service_entry: None,
            policy: TrafficPolicy {
                load_balancer: LoadBalancer::Passthrough,
                ..TrafficPolicy::default()
            },
            version,
        });
        Self { workload, cluster }
    }
}

/// Serves HTTP on `io` until the client closes or the pod's drain forces it closed.
pub async fn serve<IO>(connection: Arc<HttpConnection>, io: IO)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drain = connection.pod.drain.clone();
    let service = hyper::service::service_fn(move |request| {
        let connection = connection.clone();
        async move { Ok::<_, Infallible>(connection.handle(request).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // As for upstream connections (`upstream/pool.rs`): flat writes, `send(2)`.
    builder.http1().writev(false);
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(served);
    let ended = tokio::select! {
        biased;
        () = drain.force_closed() => return,
        () = drain.accepting_stopped() => None,
        ended = served.as_mut() => Some(ended),
    };
    let ended = match ended {
        Some(ended) => ended,
        None => {
            // Draining: requests in flight finish, then the connection closes (GOAWAY on h2,
            // `Connection: close` on HTTP/1) so the client reconnects elsewhere.
            served.as_mut().graceful_shutdown();
            tokio::select! {
                biased;
                () = drain.force_closed() => return,
                ended = served => ended,
            }
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "HTTP connection ended with an error");
    }
}

/// Everything known about one request by the time it is logged. Dropped unrecorded (the
/// client went away before the response started), it records itself with flag DC.
struct Exchange {
    /// Where to record it; taken when recorded.
    recorder: Option<Arc<HttpConnection>>,
    /// The destination pod's inbound side, when the response came straight from a pod served
    /// here: recorded there too, after the source side.
    delivered: Option<Arc<HttpConnection>>,
    started: Instant,
    start_time: SystemTime,
    method: Method,
    path: String,
    protocol: &'static str,
    grpc: bool,
    authority: Option<String>,
    user_agent: Option<String>,
    request_id: String,
    x_forwarded_for: Option<String>,
    request_header_bytes: u64,
    request_body_bytes: Arc<AtomicU64>,
    flags: Vec<&'static str>,
    route_name: Option<String>,
    /// The registry host the request was for, when known before a cluster was chosen.
    target_service: Option<Arc<Service>>,
    cluster: Option<Arc<Cluster>>,
    upstream: Option<Picked>,
    upstream_service_time: Option<Duration>,
    /// Whether the mesh config has the access log on (`accessLogFile`), as of the request.
    access_log: bool,
}

impl Exchange {
    fn flag(&mut self, flag: &'static str) {
        if flag != "-" && !self.flags.contains(&flag) {
            self.flags.push(flag);
        }
    }

    fn flags(&self) -> String {
        if self.flags.is_empty() {
            "-".to_owned()
        } else {
            self.flags.join(",")
        }
    }
}

impl Exchange {
    /// Counts and logs the exchange once (later calls do nothing).
    fn record(
        &mut self,
        status: u16,
        grpc_status: Option<u32>,
        response_header_bytes: u64,
        response_body_bytes: u64,
    ) {
        let Some(connection) = self.recorder.take() else {
            return;
        };
        #[expect(
            clippy::cast_precision_loss,
            reason = "a duration in milliseconds fits an f64 exactly for any real request"
        )]
        let duration_ms = self.started.elapsed().as_micros() as f64 / 1000.0;
        connection.record_request(
            self,
            status,
            grpc_status,
            &RequestSample {
                duration_ms,
                request_bytes: self.request_header_bytes
                    + self.request_body_bytes.load(Ordering::Relaxed),
                response_bytes: response_header_bytes + response_body_bytes,
            },
        );
        connection.log_request(self, status, response_body_bytes);
        if let Some(delivered) = self.delivered.take()
            && let Side::Inbound(app) = &delivered.side
        {
            // As the inbound listener would have seen it: its own cluster, no route, and only
            // the flags of its own leg.
            self.cluster = Some(app.cluster.clone());
            self.target_service.clone_from(&app.cluster.service);
            self.route_name = None;
            self.flags.retain(|flag| matches!(*flag, "DC" | "UC"));
            self.recorder = Some(delivered);
            self.record(
                status,
                grpc_status,
                response_header_bytes,
                response_body_bytes,
            );
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.recorder.is_some() {
            // The request's future was dropped: the client closed before any response.
            self.flag("DC");
            self.record(0, None, 0, 0);
        }
    }
}

impl HttpConnection {
    async fn handle(self: Arc<Self>, mut request: Request<Incoming>) -> Response<Body> {
        let upgrade = (headers::wants_upgrade(request.headers())
            || request.method() == Method::CONNECT)
            .then(|| hyper::upgrade::on(&mut request));
        let (mut parts, incoming) = request.into_parts();
        let request_id = headers::ensure_request_id(&mut parts.headers);
        let mut exchange = Exchange {
            recorder: Some(self.clone()),
            delivered: None,
            started: Instant::now(),
            start_time: SystemTime::now(),
            method: parts.method.clone(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.to_string(), |path| path.as_str().to_owned()),
            protocol: protocol_name(parts.version),
            grpc: policy::is_grpc(&parts.headers),
            authority: authority(&parts).map(str::to_owned),
            user_agent: header_text(&parts.headers, &header::USER_AGENT),
            request_id,
            x_forwarded_for: None,
            request_header_bytes: header_bytes(&parts.headers),
            request_body_bytes: Arc::new(AtomicU64::new(0)),
            flags: Vec::new(),
            route_name: None,
            target_service: None,
            cluster: None,
            upstream: None,
            upstream_service_time: None,
            access_log: true,
        };
        let body = Counted::new(incoming, exchange.request_body_bytes.clone());
        let (response, grpc_status) = match &self.side {
            Side::Outbound { routes } => {
                let routes = routes.routes();
                exchange.access_log = routes.mesh().access_log_on();
                self.route(&*routes, parts, body, upgrade, &mut exchange)
                    .await
            }
            Side::Inbound(app) => {
                exchange.access_log = self.proxy.access_log_on();
                self.deliver(app, parts, body, upgrade, &mut exchange).await
            }
        };
        let (response, grpc_status) = if exchange.grpc {
            grpc_local_reply((response, grpc_status))
        } else {
            (response, grpc_status)
        };
        self.track(response, grpc_status, exchange)
    }

    /// Routes an outbound request by the routing snapshot `routes`.
    async fn route(
        &self,
        routes: &dyn Routes,
        parts: http::request::Parts,
        body: Counted,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        exchange: &mut Exchange,
    ) -> Reply {
        let target = routes.outbound_target(self.orig_dst, self.source.as_deref());
        if let OutboundTarget::Service(service) = &target {
            exchange.target_service.clone_from(&service.service);
        }
        let decision = routes.http_route(
            &target,
            &RequestFacts {
                method: &parts.method,
                uri: &parts.uri,
                authority: exchange.authority.as_deref(),
                headers: &parts.headers,
                port: self.orig_dst.port(),
                source: self.source.as_deref(),
            },
        );
        match decision {
            HttpDecision::NoRouteMatched { virtual_service } => {
                exchange.flag("NR");
                exchange.route_name = Some(virtual_service.to_string());
                local_reply(StatusCode::NOT_FOUND, "route not found")
            }
            HttpDecision::BlockedByRegistryOnly { authority } => {
                exchange.flag("NR");
                self.proxy.metrics.registry_only_blocked("http");
                tracing::debug!(%authority, "REGISTRY_ONLY: host is not in the registry");
                local_reply(
                    StatusCode::BAD_GATEWAY,
                    "destination not in the service registry",
                )
            }
            HttpDecision::Route(route) => {
                exchange.route_name = Some(route.name.to_string());
                let request = Downstream {
                    parts,
                    body,
                    upgrade,
                    target: &target,
                };
                self.apply_route(routes, &route, request, exchange).await
            }
        }
    }

    /// Hands an inbound request to the app as Envoy's inbound listener does: one attempt, no
    /// timeout, headers as received but for hop-by-hop ones; `x-forwarded-for` is left alone
    /// (Istio's inbound does not use the remote address, so the client's own proxy's entry is
    /// the only one) and `x-forwarded-proto` set only when absent.
    async fn deliver(
        &self,
        app: &InboundApp,
        mut parts: http::request::Parts,
        body: Counted,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        exchange: &mut Exchange,
    ) -> Reply {
        exchange.cluster = Some(app.cluster.clone());
        exchange.target_service.clone_from(&app.cluster.service);
        let state = self.upstreams.cluster(&app.cluster);
        let upgrading = upgrade.is_some();
        let version = upstream_version(upgrading, app.cluster.protocol, parts.version);
        headers::remove_hop_by_hop(&mut parts.headers, upgrading);
        exchange.x_forwarded_for = headers::keep_forwarded(&mut parts.headers);
        let template = RequestTemplate {
            parts,
            authority: exchange.authority.clone(),
            version,
        };
        let picked = state.passthrough(self.orig_dst, app.workload.clone());
        exchange.upstream = Some(picked.clone());
        let sent_at = Instant::now();
        let request = template.build(body.map_err(Into::into).boxed());
        let response = match state.send(&picked, request, version).await {
            Ok(response) => response,
            Err(error) => {
                exchange.flag(error.response_flag());
                tracing::debug!(%error, "inbound request to the app failed");
                return local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("upstream connect error or disconnect/reset before headers: {error}"),
                );
            }
        };
        exchange.upstream_service_time = Some(sent_at.elapsed());
        let (head, body, grpc) = self.relay(response, upgrade, &template.parts.method);
        (
            Response::from_parts(head, body.map_err(Into::into).boxed()),
            grpc,
        )
    }

    /// The upstream's response as the client gets it: without hop-by-hop headers, and, when
    /// it accepted the client's upgrade (101, or 2xx to CONNECT), with the two upgraded
    /// connections joined.
    fn relay(
        &self,
        mut response: Response<upstream::UpstreamBody>,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        method: &Method,
    ) -> (http::response::Parts, upstream::UpstreamBody, Option<u32>) {
        let grpc = policy::grpc_status(response.headers());
        let switched = upgrade.is_some()
            && (response.status() == StatusCode::SWITCHING_PROTOCOLS
                || (method == Method::CONNECT && response.status().is_success()));
        if switched && let Some(downstream) = upgrade {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let drain = self.pod.drain.clone();
            // Tracked by the pod's drain, and cut with it, like any forwarded connection.
            self.pod.drain.spawn(async move {
                tokio::select! {
                    biased;
                    () = drain.force_closed() => {}
                    () = tunnel(downstream, upstream_upgrade) => {}
                }
            });
        }
        let (mut head, body) = response.into_parts();
        headers::remove_hop_by_hop(&mut head.headers, switched);
        (head, body, grpc)
    }

    /// Applies `route` to the request, in Envoy's filter order.
    async fn apply_route(
        &self,
        routes: &dyn Routes,
        route: &HttpRoute,
        request: Downstream<'_>,
        exchange: &mut Exchange,
    ) -> Reply {
        if let Some(cors) = &route.cors
            && let Some(answer) =
                policy::cors_preflight(cors, &request.parts.method, &request.parts.headers)
        {
            let mut response = empty_response(StatusCode::OK);
            response.headers_mut().extend(answer);
            return (response, None);
        }
        if let Some(limit) = &route.rate_limit {
            match self.proxy.rate_limiter.check(limit) {
                RateLimitOutcome::Allowed { .. } => {}
                RateLimitOutcome::Limited { limit, reset } => {
                    exchange.flag("RL");
                    let (mut response, grpc) =
                        local_reply(StatusCode::TOO_MANY_REQUESTS, "local_rate_limited");
                    let headers = response.headers_mut();
                    headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
                    headers.insert("x-ratelimit-remaining", HeaderValue::from(0u32));
                    // Whole seconds, rounded up: a client that waits this long gets a token.
                    let reset = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
                    headers.insert("x-ratelimit-reset", HeaderValue::from(reset));
                    return (response, grpc);
                }
            }
        }
        if let Some(fault) = &route.fault {
            if let Some(delay) = &fault.delay
                && policy::roll(delay.percentage, &mut rand::rng())
            {
                exchange.flag("DI");
                tokio::time::sleep(delay.fixed_delay).await;
            }
            if let Some(abort) = &fault.abort
                && policy::roll(abort.percentage, &mut rand::rng())
            {
                exchange.flag("FI");
                let (status, headers) = policy::abort_head(abort.kind);
                let grpc = policy::grpc_status(&headers);
                let mut response = if grpc.is_some() {
                    empty_response(status)
                } else {
                    local_reply(status, "fault filter abort").0
                };
                response.headers_mut().extend(headers);
                return (response, grpc);
            }
        }
        let destinations = match &route.action {
            HttpAction::Redirect(redirect) => {
                let location = policy::redirect_location(
                    redirect,
                    &request.parts.uri,
                    exchange.authority.as_deref(),
                );
                let mut response = empty_response(redirect.status);
                if let Ok(location) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(header::LOCATION, location);
                }
                return (response, None);
            }
            HttpAction::DirectResponse { status, body } => {
                let mut response = Response::new(full(body.clone().unwrap_or_default()));
                *response.status_mut() = *status;
                route.response_headers.apply(response.headers_mut());
                return (response, None);
            }
            HttpAction::Forward(destinations) => destinations,
        };
        let Some(destination) = policy::pick_weighted(destinations, &mut rand::rng()) else {
            exchange.flag("NR");
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "route has no destination");
        };
        let cors_headers = route
            .cors
            .as_ref()
            .and_then(|cors| policy::cors_response_headers(cors, &request.parts.headers));
        let (mut response, grpc) = self
            .forward(routes, route, destination, request, exchange)
            .await;
        if let Some(cors_headers) = cors_headers {
            response.headers_mut().extend(cors_headers);
        }
        (response, grpc)
    }

    /// Sends the request to `destination`, with the route's retries, timeout and mirrors.
    async fn forward(
        &self,
        routes: &dyn Routes,
        route: &HttpRoute,
        destination: &WeightedDestination,
        Downstream {
            mut parts,
            body,
            upgrade,
            target,
        }: Downstream<'_>,
        exchange: &mut Exchange,
    ) -> Reply {
        let cluster = match routes.cluster(
            &destination.destination,
            self.orig_dst.port(),
            self.source.as_deref(),
        ) {
            Ok(cluster) => cluster,
            Err(error) => {
                tracing::debug!(%error, "no cluster for the route's destination");
                exchange.flag("NC");
                return local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no cluster for destination",
                );
            }
        };
        exchange.cluster = Some(cluster.clone());
        let state = self.upstreams.cluster(&cluster);
        let upgrading = upgrade.is_some();
        let version = upstream_version(upgrading, cluster.protocol, parts.version);

        // The request as the upstream sees it.
        let mut upstream_authority = exchange.authority.clone();
        if let Some(rewrite) = &route.rewrite {
            if let Some(path) = policy::rewrite_path(rewrite, &parts.uri)
                && let Ok(path) = path.parse::<http::uri::PathAndQuery>()
            {
                let mut uri = parts.uri.clone().into_parts();
                uri.path_and_query = Some(path);
                if let Ok(uri) = Uri::from_parts(uri) {
                    parts.uri = uri;
                }
            }
            if let Some(authority) = &rewrite.authority {
                upstream_authority = authority.to_str().ok().map(str::to_owned);
            }
        }
        headers::remove_hop_by_hop(&mut parts.headers, upgrading);
        route.request_headers.apply(&mut parts.headers);
        destination.request_headers.apply(&mut parts.headers);
        let client_ip = self
            .source
            .as_ref()
            .and_then(|w| w.ip)
            .or(match self.client.0 {
                std::net::SocketAddr::V4(addr) => Some(*addr.ip()),
                std::net::SocketAddr::V6(_) => None,
            });
        exchange.x_forwarded_for = headers::add_forwarded(&mut parts.headers, client_ip);

        let (hash, set_cookie) = match &cluster.policy.load_balancer {
            LoadBalancer::ConsistentHash { key, .. } => upstream::hash_key(key, &parts, client_ip),
            _ => (None, None),
        };
        let may_resend = route.retries.attempts > 0 || !route.mirrors.is_empty();
        let body = if may_resend && !upgrading {
            Resend::Replay(Replay::new(body, MAX_BUFFERED_BODY))
        } else {
            Resend::Once(Mutex::new(Some(body.map_err(Into::into).boxed())))
        };
        let template = RequestTemplate {
            parts,
            authority: upstream_authority,
            version,
        };
        let attempts = Attempts {
            state: &state,
            route,
            template: &template,
            body: &body,
            hash,
            passthrough: (cluster.policy.load_balancer == LoadBalancer::Passthrough)
                .then_some(self.orig_dst),
            destination_workload: match target {
                OutboundTarget::Unknown { workload, .. } => workload.clone(),
                OutboundTarget::Service(_) => None,
            },
        };
        let overall = route.timeout;
        let outcome = match overall {
            Some(timeout) => tokio::time::timeout(timeout, attempts.run(exchange))
                .await
                .unwrap_or_else(|_| {
                    exchange.flag("UT");
                    Err(Box::new(local_reply(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream request timeout",
                    )))
                }),
            None => attempts.run(exchange).await,
        };
        let mirror_body = match &body {
            Resend::Replay(replay) if !route.mirrors.is_empty() => replay.complete(),
            _ => None,
        };
        // Mirrors go once the primary has its answer, with the body if it came whole.
        if let Some(bytes) = mirror_body {
            self.mirror(routes, route, &template, &bytes);
        }
        let response = match outcome {
            Ok(response) => response,
            Err(reply) => return *reply,
        };
        exchange.delivered = response
            .body()
            .delivered()
            .and_then(Delivery::pod)
            .zip(exchange.upstream.as_ref())
            .map(|(pod, picked)| self.destination_side(pod, picked.addr));
        let (mut head, upstream_body, grpc) = self.relay(response, upgrade, &template.parts.method);
        route.response_headers.apply(&mut head.headers);
        destination.response_headers.apply(&mut head.headers);
        if let Some(cookie) = set_cookie {
            head.headers.append(header::SET_COOKIE, cookie);
        }
        (
            Response::from_parts(head, upstream_body.map_err(Into::into).boxed()),
            grpc,
        )
    }

    /// Sends a copy of the request to each mirror whose percentage rolls, and forgets it.
    fn mirror(
        &self,
        routes: &dyn Routes,
        route: &HttpRoute,
        template: &RequestTemplate,
        body: &Bytes,
    ) {
        for mirror in &route.mirrors {
            if !policy::roll(mirror.percentage, &mut rand::rng()) {
                continue;
            }
            let cluster = match routes.cluster(
                &mirror.destination,
                self.orig_dst.port(),
                self.source.as_deref(),
            ) {
                Ok(cluster) => cluster,
                Err(error) => {
                    tracing::debug!(%error, "mirror destination has no cluster; not mirrored");
                    continue;
                }
            };
            let state = self.upstreams.cluster(&cluster);
            let mut copy = template.clone_for_mirror();
            copy.version = if cluster.protocol == PortProtocol::Http2 {
                HttpVersion::Http2
            } else {
                copy.version
            };
            let body = body.clone();
            let destination = mirror.destination.clone();
            tokio::spawn(async move {
                send_mirror(state, copy, body, destination).await;
            });
        }
    }

    /// Wraps `response` so the exchange is logged and measured when its body ends.
    fn track(
        &self,
        response: Response<Body>,
        grpc_status: Option<u32>,
        exchange: Exchange,
    ) -> Response<Body> {
        let (head, body) = response.into_parts();
        let status = head.status.as_u16();
        let response_header_bytes = header_bytes(&head.headers);
        let tracked = Tracked {
            inner: body,
            bytes: 0,
            finish: Some(Finish {
                exchange,
                status,
                grpc_status,
                response_header_bytes,
            }),
        };
        Response::from_parts(head, tracked.boxed())
    }

    /// The inbound side of `pod`, a pod served here that a request was delivered to at
    /// `addr`, as its inbound listener ([`crate::conn::inbound`]) would have built it.
    fn destination_side(&self, pod: Arc<Pod>, addr: SocketAddrV4) -> Arc<Self> {
        let index = self.proxy.state.load();
        let mut memo = self
            .memo
            .destination_side
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = memo.as_ref()
            && Arc::ptr_eq(&known.index, &index)
            && Arc::ptr_eq(&known.pod, &pod)
            && known.addr == addr
        {
            return known.side.clone();
        }
        let side = self.new_destination_side(&index, pod.clone(), addr);
        *memo = Some(DestinationSide {
            index,
            pod,
            addr,
            side: side.clone(),
        });
        side
    }

    fn new_destination_side(
        &self,
        index: &MeshIndex,
        pod: Arc<Pod>,
        addr: SocketAddrV4,
    ) -> Arc<Self> {
        let workload = index.workload_by_uid(&pod.uid).cloned();
        let service = workload
            .as_ref()
            .and_then(|w| index.destination_service(w, addr.port()))
            .cloned();
        let declared = shunt_mesh::routing::declared_protocol(
            service.as_deref(),
            workload.as_deref(),
            addr.port(),
        );
        let pod_name = workload.as_ref().map_or_else(
            || pod.uid.clone(),
            |w| format!("{}/{}", w.namespace, w.name),
        );
        Arc::new(Self {
            proxy: self.proxy.clone(),
            side: Side::Inbound(InboundApp::new(workload, service, addr.port(), declared)),
            pod,
            // A delivered request's destination side only reports: it dials nothing.
            upstreams: self.upstreams.clone(),
            pod_name,
            // As the TCP delivery does (`proxy/connection.rs`): the app's own address, so both
            // access log lines of a request name the same client.
            client: self.client,
            orig_dst: addr,
            source: self.source.clone(),
            memo: ConnectionMemo::default(),
        })
    }

    fn reporter(&self) -> Reporter {
        match self.side {
            Side::Outbound { .. } => Reporter::Source,
            Side::Inbound(_) => Reporter::Destination,
        }
    }

    /// The pod that served the request: inbound, this one; outbound, the endpoint picked.
    fn destination_workload(&self, exchange: &Exchange) -> Option<Arc<Workload>> {
        match &self.side {
            Side::Inbound(app) => app.workload.clone(),
            Side::Outbound { .. } => exchange.upstream.as_ref().and_then(|p| p.workload.clone()),
        }
    }

    /// Counts a finished request in its `istio_request*` series.
    fn record_request(
        &self,
        exchange: &Exchange,
        status: u16,
        grpc_status: Option<u32>,
        sample: &RequestSample,
    ) {
        let key = SeriesKey {
            destination: self.destination_workload(exchange),
            cluster: exchange.cluster.clone(),
            target_service: exchange.target_service.clone(),
            grpc: exchange.grpc,
            status,
            grpc_status,
            flags: exchange.flags.clone(),
        };
        let mut cached = self
            .memo
            .request_series
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, series)) = cached.iter().find(|(known, _)| known.matches(&key)) {
            series.record(sample);
            return;
        }
        let series =
            self.proxy
                .metrics
                .request_metrics(&self.http_labels(exchange, status, grpc_status));
        series.record(sample);
        if cached.len() == CACHED_SERIES {
            cached.remove(0);
        }
        cached.push((key, series));
    }

    fn http_labels(
        &self,
        exchange: &Exchange,
        status: u16,
        grpc_status: Option<u32>,
    ) -> HttpLabels {
        let (source_workload, source_workload_namespace) = workload_names(self.source.as_deref());
        let destination = self.destination_workload(exchange);
        let (destination_workload, destination_workload_namespace) =
            workload_names(destination.as_deref());
        let service = exchange
            .cluster
            .as_ref()
            .and_then(|c| c.service.clone())
            .or_else(|| exchange.target_service.clone());
        let (destination_service, destination_service_name, destination_service_namespace) =
            match (&service, &exchange.cluster) {
                (Some(s), _) => (s.hostname(), s.name.clone(), s.namespace.clone()),
                // A ServiceEntry host: Istio names it in all three... but the namespace.
                (None, Some(c)) if !c.key.host.0.is_empty() => (
                    c.key.host.to_string(),
                    c.key.host.to_string(),
                    UNKNOWN.into(),
                ),
                (None, _) => (UNKNOWN.into(), UNKNOWN.into(), UNKNOWN.into()),
            };
        let cluster = exchange.cluster.as_deref();
        HttpLabels {
            reporter: self.reporter(),
            source_workload,
            source_workload_namespace,
            source_principal: UNKNOWN.into(),
            destination_workload,
            destination_workload_namespace,
            destination_service,
            destination_service_name,
            destination_service_namespace,
            destination_version: cluster
                .and_then(|c| c.version.as_deref())
                .unwrap_or(UNKNOWN)
                .to_owned(),
            destination_subset: cluster
                .and_then(|c| c.key.subset.as_deref())
                .unwrap_or(UNKNOWN)
                .to_owned(),
            request_protocol: if exchange.grpc { "grpc" } else { "http" },
            response_code: status,
            grpc_response_status: grpc_status.map(|g| g.to_string()).unwrap_or_default(),
            response_flags: exchange.flags(),
        }
    }

    /// Writes the request's access log line.
    fn log_request(&self, exchange: &Exchange, status: u16, response_body_bytes: u64) {
        if !exchange.access_log {
            return;
        }
        let destination = self.destination_workload(exchange);
        let (src_workload, src_namespace) = borrowed_workload_names(self.source.as_deref());
        let (dst_workload, dst_namespace) = borrowed_workload_names(destination.as_deref());
        let (src_addr, dst_addr) = self
            .memo
            .addresses
            .get_or_init(|| (self.client.to_string(), self.orig_dst.to_string()));
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let cluster = exchange.cluster.as_deref();
        let dst_service = cluster
            .and_then(|c| c.service.as_ref().map(|s| Cow::Owned(s.hostname())))
            .or_else(|| {
                cluster
                    .map(|c| &*c.key.host.0)
                    .filter(|host| !host.is_empty())
                    .map(Cow::Borrowed)
            })
            .or_else(|| {
                exchange
                    .target_service
                    .as_ref()
                    .map(|s| Cow::Owned(s.hostname()))
            })
            .unwrap_or(Cow::Borrowed(UNKNOWN));
        let entry = HttpEntry {
            start_time: exchange.start_time,
            method: exchange.method.as_str(),
            path: &exchange.path,
            protocol: exchange.protocol,
            response_code: status,
            response_flags: if exchange.flags.is_empty() {
                Cow::Borrowed("-")
            } else {
                Cow::Owned(exchange.flags.join(","))
            },
            bytes_sent: response_body_bytes,
            bytes_received: exchange.request_body_bytes.load(Ordering::Relaxed),
            duration: millis(exchange.started.elapsed()),
            upstream_service_time: exchange.upstream_service_time.map(millis),
            upstream_host: exchange.upstream.as_ref().map(|p| p.addr),
            upstream_cluster: cluster.map(|c| upstream::ClusterName(&c.key)),
            x_forwarded_for: exchange.x_forwarded_for.as_deref(),
            user_agent: exchange.user_agent.as_deref(),
            request_id: &exchange.request_id,
            authority: exchange.authority.as_deref(),
            route_name: exchange.route_name.as_deref(),
            direction: match self.side {
                Side::Outbound { .. } => Direction::Outbound,
                Side::Inbound(_) => Direction::Inbound,
            },
            reporter: self.reporter(),
            pod: &self.pod_name,
            src_addr,
            dst_addr,
            src_workload,
            src_namespace,
            dst_workload,
            dst_namespace,
            dst_service,
        };
        if let Err(error) = self.proxy.access_log.record(&entry) {
            tracing::warn!(%error, "access log entry lost");
        }
    }
}

/// The downstream request, as routing hands it to the route's policies.
struct Downstream<'a> {
    parts: http::request::Parts,
    body: Counted,
    /// The client's side of an upgrade (WebSocket, CONNECT), when it asked for one.
    upgrade: Option<hyper::upgrade::OnUpgrade>,
    target: &'a OutboundTarget,
}

/// The request body for the attempts: replayable, or a stream that can be sent once.
enum Resend {
    Replay(Replay<Counted>),
    Once(Mutex<Option<Body>>),
}

/// What every attempt's request is built from.
struct RequestTemplate {
    parts: http::request::Parts,
    /// `:authority` / `Host` for the upstream (after an authority rewrite).
    authority: Option<String>,
    version: HttpVersion,
}

impl RequestTemplate {
    /// The request for one attempt: origin-form over HTTP/1.1 with `Host`, absolute URI
    /// (`:scheme`, `:authority`) over HTTP/2.
    fn build(&self, body: Body) -> Request<Body> {
        let mut request = Request::new(body);
        *request.method_mut() = self.parts.method.clone();
        *request.headers_mut() = self.parts.headers.clone();
        let path = self
            .parts
            .uri
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let authority = self
            .authority
            .clone()
            .or_else(|| self.parts.uri.authority().map(ToString::to_string));
        match self.version {
            HttpVersion::Http1 => {
                *request.version_mut() = Version::HTTP_11;
                // CONNECT keeps its authority-form target.
                *request.uri_mut() = if self.parts.method == Method::CONNECT {
                    self.parts.uri.clone()
                } else {
                    path.parse().unwrap_or_default()
                };
                if let Some(value) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
                    request.headers_mut().insert(header::HOST, value);
                }
            }
            HttpVersion::Http2 => {
                *request.version_mut() = Version::HTTP_2;
                request.headers_mut().remove(header::HOST);
                let authority = authority.unwrap_or_else(|| "localhost".to_owned());
                *request.uri_mut() = format!("http://{authority}{path}")
                    .parse()
                    .unwrap_or_else(|_| self.parts.uri.clone());
            }
        }
        request
    }

    fn clone_for_mirror(&self) -> Self {
        let mut parts = Request::new(()).into_parts().0;
        parts.method = self.parts.method.clone();
        parts.uri = self.parts.uri.clone();
        parts.version = self.parts.version;
        parts.headers = self.parts.headers.clone();
        Self {
            parts,
            authority: self.authority.as_deref().map(shadow_authority),
            version: self.version,
        }
    }
}

/// `host[:port]` → `host-shadow[:port]`, as Envoy names mirrored requests.
fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{host}{SHADOW_SUFFIX}:{port}")
        }
        _ => format!("{authority}{SHADOW_SUFFIX}"),
    }
}

async fn send_mirror(
    state: Arc<ClusterState>,
    template: RequestTemplate,
    body: Bytes,
    destination: Destination,
) {
    let picked = match state.resolve().await.and_then(|()| state.pick(None, &[])) {
        Ok(picked) => picked,
        Err(error) => {
            tracing::debug!(host = %destination.host, %error, "mirror not sent");
            return;
        }
    };
    let request = template.build(full(body));
    match state.send(&picked, request, template.version).await {
        // Read to the end so the connection goes back to the pool; the answer is ignored.
        Ok(response) => {
            if let Err(error) = response.into_body().collect().await {
                tracing::debug!(%error, "mirror response body failed");
            }
        }
        Err(error) => tracing::debug!(host = %destination.host, %error, "mirror failed"),
    }
}

/// The attempts of one request against one cluster.
struct Attempts<'a> {
    state: &'a ClusterState,
    route: &'a HttpRoute,
    template: &'a RequestTemplate,
    body: &'a Resend,
    hash: Option<u64>,
    /// `Some(original destination)` under `PASSTHROUGH` load balancing.
    passthrough: Option<SocketAddrV4>,
    /// The pod at the original destination, for a passthrough's labels.
    destination_workload: Option<Arc<Workload>>,
}

impl Attempts<'_> {
    /// Tries until a response is final or the retries run out. `Err` is a local reply.
    async fn run(
        self,
        exchange: &mut Exchange,
    ) -> Result<Response<upstream::UpstreamBody>, Box<Reply>> {
        let retries = &self.route.retries;
        let mut tried: Vec<SocketAddrV4> = Vec::new();
        let mut retried = 0u32;
        // Held until the request is over: `maxRetries` bounds concurrent retries.
        let mut retry_permits: Vec<upstream::RetryPermit> = Vec::new();
        if self.passthrough.is_none()
            && let Err(error) = self.state.resolve().await
        {
            tracing::debug!(%error, "no endpoint: the cluster's DNS names do not resolve");
            exchange.flag(error.response_flag());
            return Err(Box::new(local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
            )));
        }
        loop {
            let picked = match self.pick(&tried) {
                Ok(picked) => picked,
                Err(error) => {
                    exchange.flag(error.response_flag());
                    return Err(Box::new(local_reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "no healthy upstream",
                    )));
                }
            };
            let Some(body) = self.body_for_attempt() else {
                // A streamed body was already sent once; nothing more can be tried.
                exchange.flag("URX");
                return Err(Box::new(local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "retry limit exceeded",
                )));
            };
            let request = self.template.build(body);
            exchange.upstream = Some(picked.clone());
            let sent_at = Instant::now();
            let sent = self.state.send(&picked, request, self.template.version);
            let result = match retries.per_try_timeout {
                Some(timeout) => tokio::time::timeout(timeout, sent).await.ok(),
                None => Some(sent.await),
            };
            let (outcome, result) = match result {
                None => (AttemptOutcome::Timeout, Err(None)),
                Some(Ok(response)) => {
                    exchange.upstream_service_time = Some(sent_at.elapsed());
                    let outcome = AttemptOutcome::Response {
                        status: response.status(),
                        grpc_status: policy::grpc_status(response.headers()),
                    };
                    (outcome, Ok(response))
                }
                Some(Err(error)) => (attempt_outcome(&error), Err(Some(error))),
            };
            if let Some(outcome) = outlier_outcome(outcome) {
                self.state.record(&picked, outcome);
            }
            let retryable = policy::should_retry(&retries.retry_on, outcome);
            if !retryable {
                return result.map_err(|error| Box::new(self.failure(error, exchange)));
            }
            let can_resend = matches!(self.body, Resend::Replay(replay) if replay.can_replay());
            let permit = (retried < retries.attempts && can_resend)
                .then(|| self.state.try_retry())
                .flatten();
            let Some(permit) = permit else {
                if retries.attempts > 0 {
                    exchange.flag("URX");
                }
                return result.map_err(|error| Box::new(self.failure(error, exchange)));
            };
            retry_permits.push(permit);
            if let Ok(response) = result {
                // Dropping the body hands the connection back (HTTP/1) or resets the stream.
                drop(response);
            }
            retried += 1;
            tried.push(picked.addr);
            tokio::time::sleep(backoff(retried)).await;
        }
    }

    fn pick(&self, tried: &[SocketAddrV4]) -> Result<Picked, UpstreamError> {
        if let Some(addr) = self.passthrough {
            return Ok(self
                .state
                .passthrough(addr, self.destination_workload.clone()));
        }
        // Istio's retries prefer another host (`previous_hosts`); when every host was tried,
        // any will do.
        self.state
            .pick(self.hash, tried)
            .or_else(|_| self.state.pick(self.hash, &[]))
    }

    fn body_for_attempt(&self) -> Option<Body> {
        match self.body {
            Resend::Replay(replay) => replay.attempt(),
            Resend::Once(body) => body.lock().unwrap_or_else(PoisonError::into_inner).take(),
        }
    }

    /// The local reply for a failed final attempt (`None`: the per-try timeout).
    fn failure(&self, error: Option<UpstreamError>, exchange: &mut Exchange) -> Reply {
        match error {
            None => {
                exchange.flag("UT");
                local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
            }
            Some(error) => {
                exchange.flag(error.response_flag());
                tracing::debug!(%error, "upstream request failed");
                local_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("upstream connect error or disconnect/reset before headers: {error}"),
                )
            }
        }
    }
}

/// What outlier detection learns from an attempt; overflows and local failures teach nothing.
fn outlier_outcome(outcome: AttemptOutcome) -> Option<upstream::Outcome> {
    match outcome {
        AttemptOutcome::Response { status, .. } => Some(upstream::Outcome::Status(status)),
        AttemptOutcome::ConnectFailure
        | AttemptOutcome::RefusedStream
        | AttemptOutcome::Reset
        | AttemptOutcome::Timeout => Some(upstream::Outcome::GatewayError),
        AttemptOutcome::Other => None,
    }
}

fn attempt_outcome(error: &UpstreamError) -> AttemptOutcome {
    if error.is_connect_failure() {
        AttemptOutcome::ConnectFailure
    } else if error.is_refused_stream() {
        AttemptOutcome::RefusedStream
    } else if error.is_reset() {
        AttemptOutcome::Reset
    } else {
        AttemptOutcome::Other
    }
}

/// Envoy's retry back-off: a random time up to `base × 2^(n-1)`, capped at 10 × base.
fn backoff(retry: u32) -> Duration {
    use rand::Rng;
    let ceiling = RETRY_BASE_INTERVAL
        .saturating_mul(1 << retry.saturating_sub(1).min(4))
        .min(RETRY_BASE_INTERVAL * 10);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(250);
    Duration::from_millis(rand::rng().random_range(0..=millis))
}

/// The protocol to the upstream: h2 when the cluster's port is declared `http2`/`grpc` or the
/// client spoke h2, HTTP/1.1 otherwise and for every upgrade (101 and CONNECT are HTTP/1).
fn upstream_version(upgrading: bool, cluster: PortProtocol, downstream: Version) -> HttpVersion {
    if upgrading {
        HttpVersion::Http1
    } else if cluster == PortProtocol::Http2 || downstream == Version::HTTP_2 {
        HttpVersion::Http2
    } else {
        HttpVersion::Http1
    }
}

/// Joins the client's and the upstream's upgraded connections and copies bytes both ways.
async fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, "upgrade failed");
            return;
        }
    };
    let mut downstream = TokioIo::new(downstream);
    let mut upstream = TokioIo::new(upstream);
    if let Err(error) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        tracing::debug!(%error, "upgraded connection ended with an error");
    }
}

/// `:authority`, else `Host`.
fn authority(parts: &http::request::Parts) -> Option<&str> {
    parts
        .uri
        .authority()
        .map(http::uri::Authority::as_str)
        .or_else(|| parts.headers.get(header::HOST)?.to_str().ok())
}

fn header_text(headers: &HeaderMap, name: &header::HeaderName) -> Option<String> {
    headers.get(name)?.to_str().ok().map(str::to_owned)
}

/// Roughly what the headers weigh on the wire (`name: value\r\n`), for Istio's byte metrics.
fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
        .sum()
}

fn protocol_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

fn workload_names(workload: Option<&Workload>) -> (String, String) {
    workload.map_or((UNKNOWN.to_owned(), UNKNOWN.to_owned()), |w| {
        (w.workload_name.clone(), w.namespace.clone())
    })
}

fn borrowed_workload_names(workload: Option<&Workload>) -> (&str, &str) {
    workload.map_or((UNKNOWN, UNKNOWN), |w| (&w.workload_name, &w.namespace))
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

fn empty_response(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    response
}

/// A response and its gRPC status (from headers; trailers are read as the body streams).
type Reply = (Response<Body>, Option<u32>);

/// Marks a response the proxy made itself (see [`grpc_local_reply`]).
#[derive(Clone, Copy, Debug)]
struct LocalReply;

/// Why the proxy answered itself (`grpc-message` of a gRPC local reply).
#[derive(Clone, Debug)]
struct LocalReplyReason(String);

/// A reply the proxy makes itself, with a short plain-text reason as Envoy sends.
fn local_reply(status: StatusCode, reason: &str) -> Reply {
    let mut response = Response::new(full(Bytes::from(reason.to_owned())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response.extensions_mut().insert(LocalReply);
    response
        .extensions_mut()
        .insert(LocalReplyReason(reason.to_owned()));
    (response, None)
}

/// A local reply to a gRPC request, as Envoy sends it: HTTP 200, trailers-only, with the
/// gRPC status for the HTTP one (Envoy's `Grpc::Utility::httpToGrpcStatus`) and the reason in
/// `grpc-message`. Other responses pass unchanged.
fn grpc_local_reply((response, grpc_status): Reply) -> Reply {
    if grpc_status.is_some() || response.extensions().get::<LocalReply>().is_none() {
        return (response, grpc_status);
    }
    let code: u32 = match response.status().as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    };
    let (mut head, body) = response.into_parts();
    let reason = head
        .extensions
        .get::<LocalReplyReason>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    drop(body);
    head.status = StatusCode::OK;
    head.headers.remove(header::CONTENT_LENGTH);
    head.headers
        .insert(header::CONTENT_TYPE, policy::APPLICATION_GRPC.clone());
    head.headers
        .insert(policy::GRPC_STATUS.clone(), HeaderValue::from(code));
    if let Ok(message) = HeaderValue::from_str(&reason) {
        head.headers.insert("grpc-message", message);
    }
    (Response::from_parts(head, full(Bytes::new())), Some(code))
}

/// The downstream request body, counting the bytes it yields.
struct Counted {
    inner: Incoming,
    bytes: Arc<AtomicU64>,
}

impl Counted {
    fn new(inner: Incoming, bytes: Arc<AtomicU64>) -> Self {
        Self { inner, bytes }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What to record once the response is over.
struct Finish {
    exchange: Exchange,
    status: u16,
    grpc_status: Option<u32>,
    response_header_bytes: u64,
}

/// The response body on its way to the client; records the exchange when it ends or is
/// dropped unfinished (the client went away: DC).
struct Tracked {
    inner: Body,
    bytes: u64,
    finish: Option<Finish>,
}

impl Tracked {
    fn finish(&mut self, complete: bool) {
        let Some(mut finish) = self.finish.take() else {
            return;
        };
        if !complete {
            finish.exchange.flag("DC");
        }
        finish.exchange.record(
            finish.status,
            finish.grpc_status,
            finish.response_header_bytes,
            self.bytes,
        );
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(grpc) = policy::grpc_status(trailers)
                    && let Some(finish) = &mut self.finish
                {
                    finish.grpc_status = Some(grpc);
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => {
                if let Some(finish) = &mut self.finish {
                    finish.exchange.flag("UC");
                }
                self.finish(true);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // Ended without being read to the end: the client went away (or, for an empty body
        // hyper never polled, the response was complete with its headers).
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}

#[cfg(test)]
mod tests;
